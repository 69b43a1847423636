"""The size stage on one tracks table: every track's D and diameter, the
sample's maximum-likelihood size distribution beside the naive histogram, its
bootstrap intervals, the concentration and the ensemble MSD.

:func:`size_tracks` runs these as named steps; each takes arrays and
DataFrames, no files.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .. import __version__
from ..io.provenance import environment_lock_sha256
from ..io.tables import position_columns
from ..physics import stokes_einstein_D, stokes_einstein_diameter
from .conditions import check_interval, pixel_sizes, temperature_and_viscosity
from .diffusion import DISPERSION_MIN_STEPS, blur_factor, shrunk_sigma2, track_diffusion
from .ems import choose_smoothing, fit_distribution
from .distribution import (
    FIGURES,
    binned,
    distribution_figures,
    distribution_peaks,
    grid_mode,
    grid_quantiles,
)
from .ensemble import ensemble_msd, fit_powerlaw, msd_slope_D
from .lag import choose_step_lag, lag_phases, phase_track, step_correlation
from .parameters import check_params
from .steps import track_steps
from .mislinks import jump_log_density, jump_responsibilities, step_log_likelihood, weighted_dispersion
from .walker import diameter_grid, walker_em

__all__ = ["size_tracks", "frame_timing"]

_UM3_PER_ML = 1e12  # 1 mL = 1 cm³ = 1e12 µm³
#: The jump fraction ε the EM starts from, at most how many rounds of
#: (distribution, ε, φ) it takes, and the relative change of ε and φ at
#: which it stops.
INITIAL_JUMP_FRACTION = 0.01
MODEL_MAX_ITER = 30
MODEL_TOL = 0.01
#: At most how many rounds of (per-track estimates without the jumps, which
#: steps are jumps) the mislink model takes.
MODEL_MAX_ROUNDS = 10
#: A step below this fraction of its track's mean squared step is a frozen
#: frame (in 2D a Brownian step is that short 1 time in 10), after which a
#: long step may be the catch-up, not a jump.
FREEZE_FRACTION = 0.1
#: The steps are cut off (the link search range) when the tracks' Brownian
#: steps would put more than this many beyond the longest step (about 1 for
#: an uncut sample; Poisson P(0 | 10) = 5e-5); then the QC flags it, and the
#: mislink model is not used (jumps cannot be told from the cut tail).
TRUNCATED_EXPECTED_BEYOND = 10.0
#: QC: frame intervals flagged as uneven below this p-value, when one of
#: them is off by more than this fraction.
TIMING_FLAG_P = 1e-3
TIMING_FLAG_EXCESS = 0.2
#: QC: steps more overdispersed than this (and 3 standard errors) are flagged.
DISPERSION_FLAG_EXCESS = 0.2
#: QC: a fitted jump fraction above this is a warning (else information).
MISLINK_FLAG_FRACTION = 0.02


def size_tracks(
    tracks: pd.DataFrame,
    *,
    pixel_size_um,
    frame_interval_s: float,
    exposure_s: float | None,
    temperature_K: float,
    viscosity_Pa_s: float | None,
    field_of_view_um2: float | None = None,
    n_frames: int | None = None,
    **params: Any,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Size every track and the whole sample.

    Parameters
    ----------
    tracks : DataFrame
        ``frame, [z,] y, x, particle`` (pixels), optionally flow/drift columns.
    pixel_size_um : float or sequence
        µm per pixel per axis (table order).
    frame_interval_s : float
        Δt, s ('trackflow.frame_interval_s').
    exposure_s : float or None
        Exposure, s (None: R = 0).
    temperature_K : float
        Temperature, K ('trackflow.temperature_K').
    viscosity_Pa_s : float or None
        Viscosity, Pa·s; None: water at ``temperature_K``.
    field_of_view_um2 : float, optional
        Imaged area, µm² (for the concentration).
    n_frames : int, optional
        Frames imaged (dropped ones excluded) for particles per frame; default
        the frame span of the table.
    **params
        The ``size`` section (``workflow/schemas/size.schema.yaml``; missing
        keys take its defaults); ``temperature_K`` and ``viscosity_Pa_s``
        there are ignored here (already resolved).

    Returns
    -------
    sizes : DataFrame
        One row per valid track (see :func:`~pipeline.size.diffusion.track_diffusion`) plus
        ``diameter_nm`` (Stokes–Einstein from its D; NaN when D <= 0) and
        ``posterior_diameter_nm`` (its mean diameter under the Walker
        distribution).
    distribution : DataFrame
        ``histogram_bins`` rows: ``diameter_nm`` (bin centre, geometric),
        ``bin_lo_nm, bin_hi_nm, walker_fraction, walker_density`` (per nm),
        ``walker_count, naive_count, naive_fraction, naive_density``,
        ``concentration_per_ml`` (Walker fraction × concentration; NaN when
        the depth is unknown).
    summary : dict
        The run's figures (see :func:`pipeline.size.run`).
    """
    # the conditions arrive resolved: the section's own are not used here
    p = check_params({k: v for k, v in params.items() if k not in ("temperature_K", "viscosity_Pa_s")})
    dt = check_interval(frame_interval_s)
    T, eta, eta_source = temperature_and_viscosity(temperature_K, viscosity_Pa_s)
    R = blur_factor(exposure_s, dt)
    notes: list[str] = []

    pos = position_columns(tracks)
    ndim = len(pos)
    grid = diameter_grid(p["grid_min_nm"], p["grid_max_nm"], p["grid_points"])
    frame_steps = _track_steps(tracks, p, pixel_size_um)
    correlation = step_correlation(frame_steps)
    if p["step_lag"] == "auto":
        lag, lag_reason = choose_step_lag(correlation, blur_R=R if exposure_s is not None else None)
    else:
        lag, lag_reason = int(p["step_lag"]), "given (size.step_lag)"
    # Steps over `lag` frames: every track taken every lag-th frame from each
    # of its first lag frames, the flow already subtracted, read as a movie
    # of lag x the frame interval; a track's phases share one likelihood row.
    lag_tracks = lag_phases(frame_steps, lag, pos) if lag > 1 else tracks
    step_dt = lag * dt
    step_R = blur_factor(exposure_s, step_dt)
    conditions = dict(frame_interval_s=step_dt, temperature_K=T, viscosity_Pa_s=eta, grid_nm=grid, ndim=ndim,
                      R=step_R)
    steps = _single_frame_steps(_track_steps(lag_tracks, p, pixel_size_um) if lag > 1 else frame_steps)

    frame_counts, excess = None, None
    if lag > 1:
        # The single-frame steps give the cross-checks' pooled estimate and
        # each track's localization error beyond the sample's, which only
        # they show: over several frames σ² is a small part of a step, and
        # a phase's few pairs would shrink every track's to the sample's (a
        # defocused particle's noise then passes for fast motion: a twentieth
        # of bulk_water's tracks, as a peak at 0.4 µm).
        frame_sizes, frame_counts = _track_sizes(
            tracks, p, pixel_size_um=pixel_size_um, frame_interval_s=dt, exposure_s=exposure_s,
            temperature_K=T, viscosity_Pa_s=eta, notes=[],
        )
        if p["distribution"] == "ems" and p["sigma_um"] is None and len(frame_sizes):
            base = _localization_error(frame_sizes, frame_counts, p, R, exposure_s)["sigma_um"] ** 2
            own, spread = shrunk_sigma2(frame_sizes, ndim, R, base)
            codes = np.searchsorted(frame_steps["ids"], frame_sizes["particle"].to_numpy())
            excess = (pd.Series(own - base, index=codes), spread)

    def estimate(jumps, notes, final, start=None):
        sizes, counts = _track_sizes(
            lag_tracks, p, pixel_size_um=pixel_size_um, frame_interval_s=step_dt, exposure_s=exposure_s,
            temperature_K=T, viscosity_Pa_s=eta, notes=notes if lag == 1 else [], exclude_steps=jumps,
        )
        localization = _localization_error(sizes, counts, p, step_R, exposure_s)
        groups = phase_track(sizes["particle"].to_numpy(), lag) if lag > 1 else None
        # Over several frames, positions smoothed in time lower a step's
        # variance as more blur would: the offset 2σ² − 4R·DΔt, which is all
        # the steps tell of σ and R, may then sit below the exposure's blur,
        # so σ² is used as estimated, below zero too, not clipped at 0.
        sigma2 = localization["sigma_um"] ** 2
        if lag > 1 and np.isfinite(localization["sigma2_um2"]):
            sigma2 = localization["sigma2_um2"]
        track_sigma2 = None
        if excess is not None:
            track_sigma2 = (sigma2 + excess[0].reindex(groups).fillna(0.0).to_numpy(), excess[1])
        fit = _distribution_fit(sizes, steps, p, notes, final=final, start=start, sigma2_um2=sigma2,
                                negative_sigma2=lag > 1, groups=groups, track_sigma2=track_sigma2, **conditions)
        return sizes, counts, localization, fit

    # Rounds of (per-track estimates without the jumps, the distribution,
    # which steps are jumps) until the jumps stop changing, so that the
    # covariance estimates and σ are those of the Brownian steps alone; then
    # the final fit, with the smoothing chosen and the intervals.
    jumps = np.zeros(len(steps["ok"]), dtype=bool)
    rounds, pooled_all_steps, start = 0, None, None
    while p["mislink_model"] and rounds < MODEL_MAX_ROUNDS:
        rounds += 1
        _, counts, _, fit = estimate(jumps, [], final=False, start=start)
        start = (fit.get("jump_fraction"), fit.get("step_dispersion"))
        if rounds == 1:
            pooled_all_steps = counts["pooled_D_um2_s"]
        if np.array_equal(fit["jump_steps"], jumps):
            break
        jumps = fit["jump_steps"]
    sizes, counts, localization, fit = estimate(jumps, notes, final=True, start=start)
    fit["model_rounds"] = rounds
    fit["n_jump_steps"] = int(jumps.sum())
    phi_hat = fit.get("step_dispersion_estimate")
    # the clock is the movie's: its single-frame steps (the jumps found
    # among steps over several frames are not theirs)
    timing_steps, timing_jumps = (steps, jumps) if lag == 1 else (
        _single_frame_steps(frame_steps), np.zeros(0, dtype=bool))
    fit["frame_timing"] = frame_timing(timing_steps, timing_jumps, phi_hat if phi_hat and np.isfinite(phi_hat) else 1.0)
    if pooled_all_steps is None:
        pooled_all_steps = counts["pooled_D_um2_s"]
    pooled_lag_D = None
    if lag > 1:
        # the cross-checks' pooled estimate stays that of all single-frame steps
        pooled_lag_D, pooled_all_steps = pooled_all_steps, frame_counts["pooled_D_um2_s"]
    sigma = localization["sigma_um"]
    sizes["posterior_diameter_nm"] = fit["posterior"]
    if lag > 1:
        sizes, counts = _merge_phases(sizes, counts, frame_steps, lag, p, notes, temperature_K=T,
                                      viscosity_Pa_s=eta)
    naive_d = sizes["diameter_nm"].to_numpy()
    figures, n_naive = _figures(grid, fit["weights"], naive_d, notes)
    concentration = _concentration(tracks, p, field_of_view_um2, n_frames, notes)
    distribution = _distribution_table(
        grid, fit["weights"], naive_d, fit["n_valid"], concentration["concentration_per_ml"],
        p["histogram_bins"], notes,
    )
    msd = _ensemble_msd(tracks, p, pixel_size_um=pixel_size_um, frame_interval_s=dt)
    cross_checks = _cross_checks(pooled_all_steps, msd["emsd_D_um2_s"], figures, p, T, eta,
                                 pooled_without_jumps_D=counts["pooled_D_um2_s"] if jumps.any() else None,
                                 pooled_step_lag_D=pooled_lag_D)
    step_lag = {"frames": lag, "source": "auto" if p["step_lag"] == "auto" else "given", "reason": lag_reason,
                "interval_s": step_dt, "blur_R": step_R, "frame_blur_R": R if exposure_s is not None else None,
                "correlation": correlation}
    qc = _qc_flags(localization, cross_checks, counts,
                   {**figures, "grid_min_nm": p["grid_min_nm"], "grid_max_nm": p["grid_max_nm"]},
                   fit, n_valid=fit["n_valid"], outlier_p=p["outlier_p"], step_lag=step_lag)

    summary: dict[str, Any] = {
        **figures,
        "mode_ci_nm": fit["mode_ci"],
        "d50_ci_nm": fit["d50_ci"],
        "ci_level": 0.95,
        "n_bootstrap": p["n_bootstrap"],
        "n_tracks": fit["n_valid"],
        "n_tracks_in": counts["n_tracks_in"],
        "n_tracks_short": counts["n_tracks_short"],
        "n_tracks_naive": n_naive,
        **concentration,
        "temperature_K": T,
        "viscosity_Pa_s": eta,
        "viscosity_source": eta_source,
        "frame_interval_s": dt,
        "exposure_s": exposure_s,
        "blur_R": R,
        "step_lag": step_lag,
        "ndim": ndim,
        "pixel_size_um": [float(v) for v in pixel_sizes(pixel_size_um, ndim)],
        "method": p["method"],
        "distribution_method": p["distribution"],
        "smoothing_ln_d": fit["smoothing"],
        "smoothing_cv": fit["smoothing_cv"],
        "mislink_model": p["mislink_model"],
        "jump_fraction": fit.get("jump_fraction"),
        "n_jumps": fit.get("n_jumps"),
        "n_jump_steps": fit.get("n_jump_steps", 0),
        "jump_rule": (
            "a single-frame step is, with probability ε fitted to the sample, a jump uniform within the longest "
            "step; steps more likely jumps than Brownian are left out of the per-track and pooled covariance "
            "estimates" if p["mislink_model"] else None
        ),
        "step_dispersion": fit.get("step_dispersion"),
        "step_dispersion_estimate": fit.get("step_dispersion_estimate"),
        "step_dispersion_se": fit.get("step_dispersion_se"),
        "sigma_heterogeneity": fit.get("sigma_heterogeneity"),
        "sigma_tau2_um4": fit.get("sigma_tau2_um4"),
        "model_rounds": fit.get("model_rounds"),
        "mislink_model_skipped": fit.get("mislink_model_skipped"),
        "frame_timing": fit.get("frame_timing"),
        "step_truncation": fit.get("truncation"),
        "sigma_um": sigma,
        "sigma_source": localization["source"],
        "localization": localization,
        "cross_checks": cross_checks,
        "n_outlier_steps": counts["n_outlier_steps"],
        "n_tracks_outliers": counts["n_tracks_outliers"],
        "outlier_rule": (
            f"a single-frame step above the (1 - {p['outlier_p']:g}/k) quantile of v·χ²(ndim), v from the "
            "median of the track's k squared steps" + ("; left out" if p["remove_outliers"] else "; counted, kept")
        ),
        "qc": qc,
        "motion_correction": counts["motion"],
        "motion_columns": counts["motion_columns"],
        "steps_missing_flow": counts["steps_missing_flow"],
        "walker_iterations": fit["iterations"],
        "walker_converged": fit["converged"],
        **msd,
        "notes": notes,
        "trackflow_version": __version__,
        "environment_lock_sha256": environment_lock_sha256(),
        "params": p,
    }
    return sizes, distribution, summary


def _track_steps(tracks: pd.DataFrame, p, pixel_size_um) -> dict[str, Any]:
    """:func:`~pipeline.size.steps.track_steps` with the section's settings."""
    return track_steps(tracks, pixel_size_um=pixel_size_um, subtract_flow=p["subtract_flow"],
                       outlier_p=p["outlier_p"], remove_outliers=p["remove_outliers"])


def _single_frame_steps(st: dict[str, Any]) -> dict[str, np.ndarray]:
    """The squared single-frame steps (``sq``, µm²) with their ``particle``,
    and ``ok``: which of :func:`~pipeline.size.steps.track_steps`'s steps
    they are (the likelihood scores them one by one)."""
    ok = st["step_ok"]
    vec = st["steps"][ok]
    # the previous single-frame step of the same track, adjacent (-1: none)
    idx = np.flatnonzero(ok)
    prev = np.full(idx.size, -1)
    adjacent = np.r_[False, st["pair_ok"][idx[1:] - 1] & (np.diff(idx) == 1)] if idx.size else np.zeros(0, bool)
    prev[adjacent] = np.flatnonzero(adjacent) - 1
    return {"sq": np.sum(vec**2, axis=1), "vec": vec, "prev": prev, "particle": st["particle"][:-1][ok],
            "frame": st["frame"][:-1][ok], "ok": ok}


def _track_sizes(
    tracks, p, *, pixel_size_um, frame_interval_s, exposure_s, temperature_K, viscosity_Pa_s, notes,
    exclude_steps=None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every track's D (:func:`track_diffusion`, tracks with fewer than
    ``min_steps`` single-frame steps left out, and noted; ``exclude_steps``
    left out like gaps) and its Stokes–Einstein ``diameter_nm``; with what
    track_diffusion reports of the motion correction (``motion``,
    ``motion_columns``, ``steps_missing_flow``) and the counts
    ``n_tracks_in`` and ``n_tracks_short``."""
    sizes = track_diffusion(
        tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s, exposure_s=exposure_s,
        method=p["method"], sigma_um=p["sigma_um"], min_steps=p["min_steps"],
        subtract_flow=p["subtract_flow"], outlier_p=p["outlier_p"], remove_outliers=p["remove_outliers"],
        exclude_steps=exclude_steps,
    )
    info = dict(sizes.attrs)
    info["n_outlier_steps"] = int(sizes["n_outlier_steps"].sum())
    info["n_tracks_outliers"] = int((sizes["n_outlier_steps"] > 0).sum())
    info["n_tracks_sized"] = len(sizes)
    sizes["diameter_nm"] = stokes_einstein_diameter(sizes["D_um2_s"].to_numpy(), temperature_K, viscosity_Pa_s)
    n_in = int(info["n_tracks_in"])
    n_short = n_in - len(sizes)
    if n_short:
        notes.append(f"{n_short} of {n_in} tracks have fewer than {p['min_steps']} single-frame steps")
    return sizes, {**info, "n_tracks_in": n_in, "n_tracks_short": n_short}


def _localization_error(sizes: pd.DataFrame, counts: dict[str, Any], p, R: float,
                        exposure_s: float | None) -> dict[str, Any]:
    """One localization error per axis (µm) for the size distribution, where
    it comes from, the pooled estimate beside it, and the blur factor assumed.

    The sample's σ: the median of the per-track covariance estimates, the
    typical track's. On real footage σ differs from track to track
    (brightness, focus), and the estimate pooled over every step, dominated
    by the noisiest tracks, makes the others look immobile (measured on
    bulk_water: the distribution then piles up at the grid's end); an
    inverse-variance weighted mean, whose weights (from each track's own
    steps) correlate with its estimate, comes out 1.6x the true σ on
    simulated 100 nm tracks (the median: 1.6x too, but its sizes are 3 %
    closer). The pooled estimate is reported and checked: a negative pooled
    variance means motion blur is not accounted for. A median below zero is
    clipped to 0 and said so.
    """
    blur_source = "exposure_s" if exposure_s is not None else "assumed (exposure unknown: R = 0)"
    pooled = float(counts["pooled_sigma2_um2"])
    if p["sigma_um"] is not None:
        s2, source = float(p["sigma_um"]) ** 2, "given (size.sigma_um)"
    else:
        per_track = sizes["sigma2_um2"].to_numpy()
        per_track = per_track[np.isfinite(per_track)]
        s2 = float(np.median(per_track)) if per_track.size else float("nan")
        source = f"estimated ({p['method']}, median over tracks)"
    sigma = math.sqrt(s2) if np.isfinite(s2) and s2 > 0 else 0.0
    return {
        "sigma_um": sigma, "sigma2_um2": s2, "source": source,
        "pooled_sigma2_um2": pooled, "pooled_sigma2_se_um2": float(counts["pooled_sigma2_se_um2"]),
        "pooled_sigma_um": math.sqrt(pooled) if np.isfinite(pooled) and pooled > 0 else 0.0,
        "blur_R": R, "blur_source": blur_source,
    }


def _distribution_fit(sizes: pd.DataFrame, steps: dict[str, np.ndarray], p, notes, *, final: bool = True,
                      start=None, groups: np.ndarray | None = None, track_sigma2=None,
                      **conditions) -> dict[str, Any]:
    """The maximum-likelihood size distribution over ``conditions["grid_nm"]``
    (``size.distribution``: EMS on the per-track covariance estimates, or
    Walker's EM on the mean squared steps), each track's posterior mean
    diameter under it, and the bootstrap intervals of its mode and D50.

    Returns ``weights`` (per grid point; NaN without tracks), ``iterations``,
    ``converged``, ``posterior`` (per row of ``sizes``, nm), ``mode_ci`` and
    ``d50_ci`` (nm, or None), ``n_valid`` (tracks in the fit), ``smoothing``
    (the EMS kernel width in ln d, None for Walker's), ``smoothing_cv`` and
    what :func:`_likelihood` reports of its model (``jump_fraction``,
    ``step_dispersion``, ...), with ``jump_steps``: which of ``steps["ok"]``'s
    steps are more likely jumps than not. Not ``final``: Walker's EM only
    (no smoothing, no intervals), for the rounds that find the jumps.

    ``groups`` (per row of ``sizes``): rows that are one track seen at
    several phases (:func:`~pipeline.size.lag.lag_phases`) share one row of
    the likelihood, the mean of their log-likelihoods, so that each track
    counts once in the fit, its smoothing and its bootstrap; ``n_valid``
    then counts tracks, not rows. ``track_sigma2``: (σ² per row of
    ``sizes``, the figures of its spread) to use instead of the rows' own
    estimates shrunk towards the sample's.
    """
    grid = conditions["grid_nm"]
    m = sizes["mean_sq_step_um2"].to_numpy()
    usable = np.isfinite(m) & (m > 0)
    if (~usable).any():
        notes.append(f"{int((~usable).sum())} tracks did not move (zero squared steps): left out of the fit")
    out: dict[str, Any] = {
        "weights": np.full(grid.size, np.nan), "iterations": 0, "converged": False,
        "posterior": np.full(len(sizes), np.nan), "mode_ci": None, "d50_ci": None,
        "n_valid": int(usable.sum()), "smoothing": None, "smoothing_cv": None,
        "jump_steps": np.zeros(len(steps["ok"]), dtype=bool),
    }
    if not usable.any():
        notes.append("no valid tracks: no size distribution")
        return out
    valid = sizes[usable]
    given = None if track_sigma2 is None else (np.asarray(track_sigma2[0])[usable], track_sigma2[1])
    P, model, jump_probability = _likelihood(valid, steps, p, start=start, track_sigma2=given, **conditions)
    out.update(model)
    out["jump_steps"] = jump_probability > 0.5
    row_of = np.arange(len(valid))
    if groups is not None:
        P, row_of = _composite_rows(P, np.asarray(groups)[usable])
        out["n_valid"] = int(P.shape[0])
    width = 0.0  # Walker's EM
    if p["distribution"] == "ems" and final:
        width = p["smoothing"]
        if width is None:
            width, out["smoothing_cv"] = choose_smoothing(
                P, grid, folds=p["cv_folds"], seed=p["seed"], max_iter=p["max_iter"], tol=p["tol"]
            )
        out["smoothing"] = float(width)
    weights, out["iterations"], out["converged"] = fit_distribution(
        P, grid, width, max_iter=p["max_iter"], tol=p["tol"]
    )
    out["weights"] = weights
    joint = P * weights[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["posterior"][usable] = ((joint @ grid) / joint.sum(axis=1))[row_of]
    if final and p["n_bootstrap"] > 0 and usable.sum() > 1:
        out["mode_ci"], out["d50_ci"] = _bootstrap_intervals(P, weights, grid, width, p)
    if not out["converged"]:
        notes.append(f"the {p['distribution']} fit stopped at size.max_iter={p['max_iter']} before reaching size.tol")
    return out


def _composite_rows(P: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One likelihood row per group: the mean of its rows' log-likelihoods
    (a composite likelihood with weight 1/n per row, so that n overlapping
    views of one track weigh as one track), and each row's group row."""
    codes, row_of = np.unique(groups, return_inverse=True)
    with np.errstate(divide="ignore"):
        logP = np.log(np.maximum(P, 1e-300))
    summed = np.zeros((codes.size, P.shape[1]))
    np.add.at(summed, row_of, logP)
    mean = summed / np.bincount(row_of)[:, None]
    mean -= mean.max(axis=1, keepdims=True)
    return np.exp(mean), row_of


def _merge_phases(sizes: pd.DataFrame, counts: dict[str, Any], frame_steps: dict[str, Any], lag: int, p,
                  notes: list[str], *, temperature_K: float, viscosity_Pa_s: float):
    """The per-track table of :func:`~pipeline.size.lag.lag_phases`' tracks
    as one row per track: its steps and pairs over all phases summed, D and
    σ² their mean weighted by steps (the covariance estimate of all the
    track's ``lag``-frame steps), the frames its own; and the counts of
    tracks in and too short, in tracks."""
    code = phase_track(sizes["particle"].to_numpy(), lag)
    w = sizes["n_steps"].to_numpy(dtype=float)
    table = sizes.assign(_code=code, _w=w)
    numeric = ["D_um2_s", "sigma2_um2", "mean_sq_step_um2"]
    for col in numeric:
        table[col] = table[col] * table["_w"]
    summed = table.groupby("_code", sort=True)
    merged = summed[["n_steps", "n_pairs", "n_outlier_steps", *numeric, "_w"]].sum(min_count=1)
    for col in numeric:
        merged[col] = merged[col] / merged["_w"]
    merged["posterior_diameter_nm"] = summed["posterior_diameter_nm"].first()
    codes = merged.index.to_numpy()
    ids = frame_steps["ids"]
    frame = frame_steps["frame"]
    bounds = np.r_[0, np.flatnonzero(np.diff(frame_steps["code"])) + 1]
    first, last = frame[bounds], frame[np.r_[bounds[1:] - 1, frame.size - 1]]
    merged.insert(0, "particle", ids[codes])
    merged.insert(1, "first_frame", first[codes])
    merged.insert(2, "last_frame", last[codes])
    merged["sigma_um"] = np.sqrt(np.clip(merged["sigma2_um2"].to_numpy(), 0.0, None))
    merged["diameter_nm"] = stokes_einstein_diameter(merged["D_um2_s"].to_numpy(), temperature_K, viscosity_Pa_s)
    merged = merged.drop(columns="_w").reset_index(drop=True)
    merged = merged[[c for c in sizes.columns if c in merged.columns]]
    n_in = len(ids)
    n_short = n_in - len(merged)
    if n_short:
        notes.append(f"{n_short} of {n_in} tracks have fewer than {p['min_steps']} steps over {lag} frames "
                     "at every phase (size.step_lag)")
    return merged, {**counts, "n_tracks_in": n_in, "n_tracks_short": n_short, "n_tracks_sized": len(merged),
                    "n_tracks_outliers": int((merged["n_outlier_steps"] > 0).sum())}


def _likelihood(valid: pd.DataFrame, steps: dict[str, np.ndarray], p, start=None, track_sigma2=None,
                **conditions) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """The likelihood matrix P[j, l] of each valid track at each grid
    diameter, the figures of its model, and each of ``steps["ok"]``'s steps'
    probability of being a jump (0 for steps not in the fit).

    Walker's likelihood taken step by step (:mod:`pipeline.size.mislinks`):

    - localization error: ``size.distribution: walker``, one σ for all
      tracks (Walker 2012); ``ems``, each track's own covariance estimate
      shrunk towards that σ by how much the tracks' σ truly differ
      (:func:`~pipeline.size.diffusion.shrunk_sigma2`): on real footage a
      dim or defocused track has several times the error of a sharp one,
      and with one σ for all it poses as a small fast particle;
    - ``size.mislink_model``: a fraction ε of steps are jumps, ε fitted with
      the distribution by EM; off, ε = 0 (Walker's likelihood exactly);
    - ``size.step_dispersion``: every track's log-likelihood divided by φ
      (``auto``: estimated from the steps, the jumps left out, never below 1).

    ``start``: (ε, φ) to start the EM from (the previous round's);
    ``track_sigma2``: (σ² per row of ``valid``, its spread figures), given.
    """
    grid = conditions["grid_nm"]
    ndim, dt, R = conditions["ndim"], conditions["frame_interval_s"], conditions["R"]
    T, eta = conditions["temperature_K"], conditions["viscosity_Pa_s"]
    s2_all = conditions["sigma2_um2"]
    k = valid["n_steps"].to_numpy(dtype=float)
    pairs = valid["n_pairs"].to_numpy(dtype=float)
    if track_sigma2 is not None:
        s2, spread = track_sigma2
    elif p["distribution"] == "ems" and p["sigma_um"] is None:
        s2, spread = shrunk_sigma2(valid, ndim, R, s2_all, negative=conditions["negative_sigma2"])
    else:
        s2, spread = np.full(len(valid), s2_all), {"heterogeneity": None, "tau2_um4": None}
    s2 = s2[:, None]
    D = np.asarray(stokes_einstein_D(grid, T, eta))[None, :]
    per_axis = np.maximum(D * dt + s2 - 2.0 * R * D * dt, 1e-12)
    theta = 2.0 * ndim * per_axis
    # adjacent steps correlate through noise and blur: Walker's moment-matched
    # shape over the independent-steps one
    # (|ρ| <= 1/2 for noise and blur; a σ² below zero, over several frames,
    # would otherwise temper away the likelihood where it is implausible)
    rho = np.clip(-(s2 - 2.0 * R * D * dt) / (2.0 * per_axis), -0.5, 0.5)
    if conditions["negative_sigma2"]:
        # one temper per track, at its own D: a factor that changes along the
        # grid reshapes the likelihood, and with σ² below zero it changes fast
        own = np.asarray(valid["D_um2_s"], dtype=float)
        own = np.where(np.isfinite(own) & (own > 0), own, np.nanmedian(np.where(own > 0, own, np.nan)))
        at = np.clip(np.searchsorted(-D[0], -own), 0, D.shape[1] - 1)  # D falls along the grid
        rho = rho[np.arange(len(valid)), at][:, None]
    temper = k[:, None] / (k[:, None] + 2.0 * pairs[:, None] * rho**2)
    rows = np.searchsorted(valid["particle"].to_numpy(), steps["particle"])
    in_fit = rows < len(valid)
    in_fit[in_fit] = valid["particle"].to_numpy()[rows[in_fit]] == steps["particle"][in_fit]
    sq, row = steps["sq"][in_fit], rows[in_fit]
    reach2 = float(sq.max()) * (1 + 1e-9) if sq.size else 1.0  # the linker's reach, squared
    log_jump = jump_log_density(sq, ndim, reach2)
    fixed_phi = None if p["step_dispersion"] == "auto" else float(p["step_dispersion"])
    # Is the longest step a cut-off? Each track's Brownian steps (x/m is
    # χ²(ndim)/ndim, m its mean squared step) would put this many beyond it:
    # about 1 when the longest step is just the largest of the sample, many
    # when the linker's search range cut the steps short.
    m = valid["mean_sq_step_um2"].to_numpy()
    beyond = float(np.sum(k * stats.chi2.sf(ndim * reach2 / m, ndim)))
    truncation = {"reach_um": float(np.sqrt(reach2)), "expected_beyond": beyond,
                  "mean_beyond": float(np.sum(k * m * stats.chi2.sf(ndim * reach2 / m, ndim + 2)) / np.sum(k * m))}
    # jumps can be told from Brownian steps only where the tail is not cut off
    mislinks = bool(p["mislink_model"]) and beyond <= TRUNCATED_EXPECTED_BEYOND

    def matrix(eps, phi: float) -> np.ndarray:
        logL = step_log_likelihood(sq, row, theta, ndim=ndim, jump_fraction=eps, log_jump=log_jump,
                                   temper=temper / phi)
        logL -= logL.max(axis=1, keepdims=True)
        return np.where(logL > -300.0, np.exp(np.maximum(logL, -300.0)), 0.0)

    # ε and φ with the distribution, by EM (Walker's EM inside: the
    # smoothing is chosen afterwards, on the final likelihood). Steps found
    # to be the catch-up of a frozen particle are not candidates for jumps.
    eps = INITIAL_JUMP_FRACTION if mislinks else 0.0
    phi = fixed_phi if fixed_phi is not None else 1.0
    if start is not None:
        eps = start[0] if mislinks and start[0] else eps
        phi = start[1] if fixed_phi is None and start[1] else phi
    phi_raw, phi_se = float("nan"), float("nan")
    catch_up = np.zeros(len(sq), dtype=bool)
    weights, iterations, r = None, 0, np.zeros(len(sq))
    for iterations in range(1, MODEL_MAX_ITER + 1):
        eps_step = np.where(catch_up, 0.0, eps)
        P = matrix(eps_step, phi)
        weights, _, _ = fit_distribution(P, grid, 0.0, max_iter=p["max_iter"], tol=p["tol"], start=weights)
        joint = P * weights[None, :]
        posterior = joint / np.maximum(joint.sum(axis=1, keepdims=True), np.finfo(float).tiny)
        r = jump_responsibilities(sq, row, theta, posterior, ndim=ndim, jump_fraction=eps_step, log_jump=log_jump)
        if mislinks and r.size:
            catch_up = _catch_ups(r, steps, in_fit, row, theta, posterior, ndim=ndim, eps=eps,
                                  log_jump_of=lambda x: jump_log_density(x, ndim, reach2))
            r[catch_up] = 0.0
        phi_raw, phi_se = weighted_dispersion(sq, row, 1.0 - r, len(valid), ndim, DISPERSION_MIN_STEPS)
        candidates = max(int((~catch_up).sum()), 1)
        new_eps = max(float(r.sum()) / candidates, 1e-6) if mislinks and r.size else 0.0
        new_phi = fixed_phi if fixed_phi is not None else (max(1.0, phi_raw) if np.isfinite(phi_raw) else 1.0)
        done = (abs(new_eps - eps) <= MODEL_TOL * max(eps, 1e-3)) and abs(new_phi - phi) <= MODEL_TOL * phi
        eps, phi = new_eps, new_phi
        if done or (not mislinks and fixed_phi is not None):
            break
    P = matrix(np.where(catch_up, 0.0, eps), phi)
    jump_probability = np.zeros(len(steps["ok"]))
    jump_probability[np.flatnonzero(steps["ok"])[in_fit]] = r
    return P, {
        "jump_fraction": eps if mislinks else None,
        "n_jumps": float(r.sum()) if mislinks else None,
        "step_dispersion_estimate": phi_raw,
        "step_dispersion_se": phi_se,
        "step_dispersion": phi,
        "sigma_heterogeneity": spread["heterogeneity"],
        "sigma_tau2_um4": spread["tau2_um4"],
        "model_iterations": iterations,
        "n_catch_up_steps": int(catch_up.sum()),
        "mislink_model_skipped": bool(p["mislink_model"]) and not mislinks,
        "truncation": truncation,
    }, jump_probability


def frame_timing(steps: dict[str, np.ndarray], jumps: np.ndarray, dispersion: float) -> dict[str, Any]:
    """Whether the frames are evenly spaced in time, from the steps themselves.

    Every particle's squared steps scale with the time between the two
    frames, so each frame interval's steps, each divided by its track's mean
    squared step, average to that interval's duration over the mean one
    (1 for a steady clock). Under a steady clock the intervals' averages
    u_f scatter about 1 with variance φ/n_f (n_f steps, φ the step
    dispersion), so Σ n_f (u_f − 1)²/φ is χ²(F − 1) for F intervals; a
    camera or a video conversion that drops or repeats frames makes it far
    larger. Jumps are left out.

    Returns ``ratios`` (interval start frame -> u_f, the five farthest from
    1), ``p_value`` and ``n_intervals``.
    """
    keep = ~jumps[steps["ok"]] if jumps.size else np.ones(steps["sq"].size, dtype=bool)
    sq, particle, frame = steps["sq"][keep], steps["particle"][keep], steps["frame"][keep]
    out: dict[str, Any] = {"ratios": {}, "p_value": None, "n_intervals": 0}
    if sq.size < 50:
        return out
    codes, inverse = np.unique(particle, return_inverse=True)
    track_mean = np.bincount(inverse, weights=sq) / np.bincount(inverse)
    k = np.bincount(inverse)[inverse]
    use = (k >= DISPERSION_MIN_STEPS) & (track_mean[inverse] > 0)
    if use.sum() < 50:
        return out
    u = sq[use] / track_mean[inverse[use]]
    f_codes, f_inverse = np.unique(frame[use], return_inverse=True)
    n_f = np.bincount(f_inverse)
    u_f = np.bincount(f_inverse, weights=u) / n_f
    enough = n_f >= 10
    if enough.sum() < 3:
        return out
    stat = float(np.sum(n_f[enough] * (u_f[enough] - 1.0) ** 2) / max(dispersion, 1.0))
    far = np.argsort(-np.abs(u_f[enough] - 1.0))[:5]
    starts, ratios = f_codes[enough], u_f[enough]
    out.update(
        ratios={int(starts[i]): float(ratios[i]) for i in far},
        p_value=float(stats.chi2.sf(stat, int(enough.sum()) - 1)),
        n_intervals=int(enough.sum()),
    )
    return out


def _catch_ups(r, steps, in_fit, row, theta, posterior, *, ndim, eps, log_jump_of) -> np.ndarray:
    """Which steps are the catch-up of a frozen particle, not jumps.

    In compressed video a macroblock copied from the previous frame freezes
    a particle for a frame (a step of about nothing) and it catches up at
    the next: a long step that the mislink model would call a jump and leave
    out, biasing D low. A step more likely a jump than not is such a
    catch-up when the step before it is frozen (below
    :data:`FREEZE_FRACTION` of the track's mean squared step) and the two
    together are a Brownian two-frame displacement. A jump to a neighbour
    stays a jump (the two-frame displacement carries it too), and so does a
    mislocalized spot (out and back: the step before the return is long).
    """
    catch_up = np.zeros(r.size, dtype=bool)
    fit_index = np.full(in_fit.size, -1)
    fit_index[np.flatnonzero(in_fit)] = np.arange(r.size)
    prev = steps["prev"][in_fit]
    prev = np.where(prev >= 0, fit_index[np.maximum(prev, 0)], -1)
    candidate = np.flatnonzero((r > 0.5) & (prev >= 0))
    if not candidate.size:
        return catch_up
    p = prev[candidate]
    mean_theta = np.sum(posterior * theta, axis=1)  # each track's mean squared step under its posterior
    frozen = steps["sq"][in_fit][p] < FREEZE_FRACTION * mean_theta[row[candidate]]
    candidate, p = candidate[frozen], p[frozen]
    if not candidate.size:
        return catch_up
    vec = steps["vec"][in_fit]
    two = np.sum((vec[candidate] + vec[p]) ** 2, axis=1)
    r2 = jump_responsibilities(two, row[candidate], 2.0 * theta, posterior, ndim=ndim, jump_fraction=eps,
                               log_jump=log_jump_of(two))
    catch_up[candidate[r2 < 0.5]] = True
    return catch_up


def _bootstrap_intervals(P: np.ndarray, weights: np.ndarray, grid: np.ndarray, width: float, p) -> tuple[list, list]:
    """95 % intervals (nm) of the mode and D50 of the distribution, from
    ``size.n_bootstrap`` refits with the tracks (rows of the likelihood
    ``P``) resampled with replacement (seed ``size.seed``)."""
    rng = np.random.default_rng(p["seed"])
    J = P.shape[0]
    W = rng.multinomial(J, np.full(J, 1.0 / J), size=p["n_bootstrap"]).astype(float)
    # Replicates are fitted on the grid points that carry weight in the
    # full fit, widened by 10 points (~15 % in d with the default grid)
    # each side: weight far outside would stay negligible anyway, and
    # the fit runs several times faster.
    near = np.convolve((weights > 1e-6 * weights.max()).astype(float), np.ones(21), mode="same") > 0
    P_near = np.ascontiguousarray(P[:, near])
    pb = np.zeros((len(W), grid.size))
    if width <= 0:
        # Walker's EM fits every replicate at once: one pass over the likelihood per update, not one per replicate
        pb[:, near] = walker_em(P_near, weights=W, max_iter=p["max_iter"], tol=p["tol"])[0]
    else:
        for i, w in enumerate(W):
            pb[i, near] = fit_distribution(P_near, grid[near], width, weights=w, max_iter=p["max_iter"],
                                           tol=p["tol"])[0]
    modes = np.array([grid_mode(grid, row, 1.5) for row in pb])
    d50s = np.array([grid_quantiles(grid, row, [0.5])[0] for row in pb])
    mode_ci = [float(v) for v in np.nanpercentile(modes, [2.5, 97.5])]
    d50_ci = [float(v) for v in np.nanpercentile(d50s, [2.5, 97.5])]
    return mode_ci, d50_ci


def _figures(grid, weights, naive_d, notes) -> tuple[dict[str, Any], int]:
    """The summary's figures of Walker's distribution and of the naive
    per-track diameters (``walker_*_nm``, ``naive_*_nm``, Walker's again
    under the names NTA users look for, up to five peaks of each), and the
    number of tracks with a naive diameter (D > 0)."""
    walker = distribution_figures(grid_nm=grid, weights=weights)
    naive = distribution_figures(diameters_nm=naive_d)
    walker_peaks = distribution_peaks(grid_nm=grid, weights=weights)[:5]
    naive_peaks = distribution_peaks(diameters_nm=naive_d)[:5]
    n_no_size = int(np.sum(~(np.isfinite(naive_d) & (naive_d > 0))))
    if n_no_size:
        notes.append(f"{n_no_size} tracks have D <= 0 or undefined: left out of the naive histogram")
    out: dict[str, Any] = {}
    for name, figs in (("walker", walker), ("naive", naive)):
        for key in FIGURES:
            out[f"{name}_{key}_nm"] = figs[key]
    for key in FIGURES:
        out[f"{key}_nm"] = walker[key]
    out["walker_peaks_nm"] = [float(v) for v in walker_peaks]
    out["naive_peaks_nm"] = [float(v) for v in naive_peaks]
    return out, int(len(naive_d) - n_no_size)


def _concentration(tracks: pd.DataFrame, p, field_of_view_um2, n_frames, notes) -> dict[str, Any]:
    """Particles per frame over ``n_frames`` (default: the table's frame
    span) and the concentration, particles/mL: per frame over the imaged
    volume (field of view × ``size.depth_um``), times ``size.dilution``;
    None without a depth."""
    frames = tracks["frame"].to_numpy() if len(tracks) else np.zeros(0)
    if n_frames is None:
        n_frames = int(frames.max() - frames.min() + 1) if frames.size else 0
    ppf = float(len(tracks) / n_frames) if n_frames else float("nan")
    depth = p["depth_um"]
    concentration = None
    if depth is not None and field_of_view_um2:
        concentration = ppf / (float(field_of_view_um2) * depth / _UM3_PER_ML) * p["dilution"]
    elif depth is None:
        notes.append("concentration not computed: size.depth_um (effective depth of field) is not configured")
    return {
        "particles_per_frame": ppf,
        "n_frames": int(n_frames),
        "concentration_per_ml": concentration,
        "depth_um": depth,
        "dilution": p["dilution"],
        "field_of_view_um2": field_of_view_um2,
    }


def _distribution_table(grid, weights, naive_d, n_valid, concentration, n_bins, notes) -> pd.DataFrame:
    """``distribution.csv``: Walker's distribution and the naive histogram
    on ``n_bins`` log-spaced bins, as fractions, densities per nm, counts and
    (Walker's) particles/mL."""
    edges, walker_frac, naive_counts, outside = binned(grid, weights, naive_d, n_bins)
    if outside:
        notes.append(f"{outside} naive per-track diameters fall outside the grid range")
    width = np.diff(edges)
    naive_total = max(int(naive_counts.sum()), 1)
    return pd.DataFrame(
        {
            "diameter_nm": np.sqrt(edges[:-1] * edges[1:]),
            "bin_lo_nm": edges[:-1],
            "bin_hi_nm": edges[1:],
            "walker_fraction": walker_frac,
            "walker_density": walker_frac / width,
            "walker_count": walker_frac * n_valid,
            "naive_count": naive_counts,
            "naive_fraction": naive_counts / naive_total,
            "naive_density": naive_counts / naive_total / width,
            "concentration_per_ml": walker_frac * concentration if concentration is not None else np.nan,
        }
    )


def _ensemble_msd(tracks: pd.DataFrame, p, *, pixel_size_um, frame_interval_s) -> dict[str, Any]:
    """The ensemble MSD up to ``size.msd_max_lag`` frames and its power-law
    fit, as the summary holds them."""
    emsd = ensemble_msd(
        tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s, max_lag=p["msd_max_lag"],
        subtract_flow=p["subtract_flow"],
    )
    n_pl, A_pl = fit_powerlaw(emsd["lagt_s"], emsd["msd_um2"])
    ndim = len(position_columns(tracks))
    return {
        "msd_powerlaw_n": n_pl,
        "msd_powerlaw_A": A_pl,
        "emsd_D_um2_s": msd_slope_D(emsd["lagt_s"], emsd["msd_um2"], ndim),
        "emsd": [{"lagt_s": float(t), "msd_um2": float(v)} for t, v in zip(emsd["lagt_s"], emsd["msd_um2"])],
    }


def _cross_checks(pooled_D, emsd_D, figures, p, temperature_K, viscosity_Pa_s,
                  pooled_without_jumps_D=None, pooled_step_lag_D=None) -> dict[str, Any]:
    """The sample's size five ways: from the covariance estimator pooled over
    all steps, from the ensemble-MSD slope, and the distribution's mode,
    mean and D50 (and, when the mislink model found jumps, the pooled
    estimate without them; when the steps span several frames, the pooled
    estimate over those steps); the largest relative difference from the pooled
    estimate, and whether it is within ``size.crosscheck_tolerance``. For a
    monodisperse sample all agree; a broad or multimodal one, mislinks, or a
    distribution the estimator got wrong make them differ."""

    def size(D):
        return float(stokes_einstein_diameter(D, temperature_K, viscosity_Pa_s)) if np.isfinite(D) and D > 0 else None

    sizes = {
        "pooled_cve_nm": size(pooled_D),
        "emsd_nm": size(emsd_D),
        "distribution_mode_nm": figures.get("mode_nm"),
        "distribution_mean_nm": figures.get("mean_nm"),
        "distribution_d50_nm": figures.get("d50_nm"),
    }
    if pooled_without_jumps_D is not None:
        sizes["pooled_cve_without_jumps_nm"] = size(pooled_without_jumps_D)
    if pooled_step_lag_D is not None:
        sizes["pooled_cve_step_lag_nm"] = size(pooled_step_lag_D)
    ref = sizes["pooled_cve_nm"]
    deviations = [abs(v / ref - 1.0) for k, v in sizes.items() if k != "pooled_cve_nm" and v and ref]
    worst = max(deviations) if deviations else None
    return {
        **sizes,
        "pooled_cve_D_um2_s": float(pooled_D),
        "emsd_D_um2_s": float(emsd_D),
        "tolerance": p["crosscheck_tolerance"],
        "max_deviation": worst,
        "agree": None if worst is None else bool(worst <= p["crosscheck_tolerance"]),
    }


def _qc_flags(localization, cross_checks, counts, figures, fit, *, n_valid: int,
              outlier_p: float, step_lag: dict[str, Any]) -> list[dict[str, str]]:
    """What a user must know before publishing these sizes: each flag a
    ``code``, a ``level`` (``warning``: the figures may be wrong; ``info``:
    how they were made) and a ``message`` with the figures and what to do."""
    flags = []

    def flag(code, level, message):
        flags.append({"code": code, "level": level, "message": message})

    if localization["blur_source"].startswith("assumed"):
        flag("exposure_unknown", "warning",
             "the exposure time is not recorded, so motion blur is taken as none (R = 0); a camera that "
             "exposes the whole frame interval has R = 1/6: set exposure_s in the run's settings")
    pooled, se = localization["pooled_sigma2_um2"], localization["pooled_sigma2_se_um2"]
    # Over several frames the variance's offset 2σ² − 4R·DΔt is what is measured, and positions smoothed in
    # time lower it as more blur would: below zero it is no sign of a wrong exposure, and σ² is used as it is.
    several = step_lag["frames"] > 1
    if np.isfinite(pooled) and pooled < -2.0 * se:  # below zero by more than its noise
        if several:
            flag("negative_localization_variance", "info",
                 f"the localization variance pooled over all steps of {step_lag['frames']} frames is negative "
                 f"({pooled:.3g} ± {se:.2g} µm²), as positions smoothed in time make it (steps_correlated)")
        else:
            flag("negative_localization_variance", "warning",
                 f"the localization variance pooled over all steps is negative ({pooled:.3g} ± {se:.2g} µm²): "
                 f"motion blur is not accounted for (R = {localization['blur_R']:.3g}); check exposure_s "
                 "(R = exposure / (6 × frame interval))")
    s2 = localization["sigma2_um2"]
    if localization["source"].startswith("estimated") and np.isfinite(s2) and s2 < -2.0 * se:
        if several:
            flag("localization_error_zero", "info",
                 f"over steps of {step_lag['frames']} frames the typical track's localization variance comes out "
                 f"below zero ({s2:.3g} µm²), as positions smoothed in time make it (steps_correlated); it was "
                 "used as it is, the offset of each step's variance, of which it is a small part")
        else:
            flag("localization_error_zero", "warning",
                 f"the typical track's localization variance comes out below zero ({s2:.3g} µm²) and σ = 0 "
                 "was used for the distribution: the blur factor is likely wrong (exposure_s), or give a known "
                 "size.sigma_um")
    peaks = figures.get("walker_peaks_nm") or []
    grid_ends = (figures.get("grid_min_nm"), figures.get("grid_max_nm"))
    if peaks and any(end and abs(peaks[0] / end - 1) < 0.02 for end in grid_ends):
        flag("distribution_at_grid_end", "warning",
             f"the distribution's highest peak ({peaks[0]:.0f} nm) lies at the end of the size grid: tracks move "
             "less (or more) than any diameter on the grid allows with one localization error for all "
             "tracks (size.distribution: walker; ems gives tracks their own σ when the tracks differ), or the grid "
             "(size.grid_min_nm, size.grid_max_nm) is too narrow")
    if cross_checks["agree"] is False:
        named = ", ".join(f"{k.removesuffix('_nm').replace('_', ' ')} {v:.0f} nm"
                          for k, v in cross_checks.items() if k.endswith("_nm") and v)
        flag("sizes_disagree", "warning",
             f"the size estimates differ by up to {100 * cross_checks['max_deviation']:.0f} % (tolerance "
             f"{100 * cross_checks['tolerance']:.0f} %): {named}. Possible causes: a distribution of several "
             f"peaks ({len(peaks)} found), which a single D cannot describe; a broad sample or a tail of fast "
             "or slow tracks (aggregates, mislinks, stuck particles); localization error that differs "
             "between tracks; drift or flow not removed")
    if counts["n_tracks_outliers"] and fit.get("jump_fraction") is None:  # the mislink model's flag instead
        expected = outlier_p * counts["n_tracks_sized"]
        many = counts["n_tracks_outliers"] > max(3.0, 10.0 * expected)
        flag("outlier_steps", "warning" if many else "info",
             f"{counts['n_outlier_steps']} steps in {counts['n_tracks_outliers']} of {counts['n_tracks_sized']} "
             f"tracks are too long for one diffusion coefficient (about {expected:.2g} tracks expected for "
             "Gaussian steps): jumps to a neighbour (mislinks), failed localizations, or steps heavier-tailed "
             "than Brownian motion with Gaussian noise"
             + ("; left out" if counts.get("outliers_removed") else "; kept (size.remove_outliers: false)"))
    phi, phi_se = fit.get("step_dispersion_estimate"), fit.get("step_dispersion_se")
    if phi is not None and np.isfinite(phi) and phi > 1.0 + max(DISPERSION_FLAG_EXCESS, 3.0 * (phi_se or 0.0)):
        used = fit.get("step_dispersion")
        flag("steps_overdispersed", "warning",
             f"the squared steps scatter {phi:.2f} ± {phi_se:.2f} times more about their track's mean than "
             "Brownian motion with Gaussian localization error allows (1 on simulated tracks): likely causes "
             "are compressed video (macroblocks copied between frames freeze a particle, which then catches "
             "up), irregular frame timing, mislocalized spots, or tracks switching between particles. "
             + (f"Every track's likelihood was widened by φ = {used:.2f}, so the distribution does not read "
                "this as polydispersity; its width is an upper bound on the sample's."
                if used and used > 1 else "The distribution was not widened (size.step_dispersion: 1), so its "
                "width overstates the sample's polydispersity."))
    timing = fit.get("frame_timing") or {}
    ratios = timing.get("ratios") or {}
    if timing.get("p_value") is not None and timing["p_value"] < TIMING_FLAG_P and ratios \
            and max(abs(v - 1.0) for v in ratios.values()) > TIMING_FLAG_EXCESS:
        listed = ", ".join(f"{f}→{f + 1}: {v:.2f}×" for f, v in ratios.items())
        flag("frame_timing_irregular", "warning",
             f"the steps say the frames are not evenly spaced in time (p = {timing['p_value']:.1e} over "
             f"{timing['n_intervals']} intervals): the squared steps of every particle between frames {listed} "
             "the usual, as if those intervals were that much longer or shorter. A camera or a video conversion "
             "that drops, repeats or blends frames does this; sizes assume the nominal frame interval, and the "
             "distribution is widened by the extra scatter (step dispersion)")
    lag, corr = step_lag["frames"], step_lag["correlation"]
    if corr["tail"]:
        needed, verdict = choose_step_lag(corr, blur_R=step_lag["frame_blur_R"])
        rho = ", ".join(f"{v:.3f}" for v in corr["rho"][:4])
        low = 2.0 * corr["tail"][0] / max(corr["total"], 1e-9)
        which = (f"the covariance estimator by about {100 * low:.0f} % (the correlation beyond one frame), and "
                 "the likelihood, which trusts the exposure's blur, by more" if low >= 0.01 else
                 "not the covariance estimator, which takes the neighbours' correlation in, but the likelihood, "
                 "which trusts the exposure's blur")
        seen = (f"single-frame steps: {verdict.split('; from ')[0]}; ρ1…ρ4 = {rho}. Positions smoothed in time "
                "(a camera's frame blending or noise filter, compressed video predicting frames from their "
                f"neighbours) or a residual flow do this, and single-frame steps then read D too low: {which}")
        if needed > 1 and lag > 1:
            flag("steps_correlated", "warning",
                 f"{seen}. Sizes are read from steps over {lag} frames ({step_lag['interval_s']:.4g} s; "
                 f"size.step_lag: {step_lag['source']}; each track taken every {lag} frames, from each of its "
                 f"first {lag} frames), beyond which the rest of the correlation is too small to matter; the "
                 "cross-checks' pooled estimate is still that of the single-frame steps")
        elif needed > 1:
            flag("steps_correlated", "warning",
                 f"{seen}. Sizes were read from single-frame steps (size.step_lag: 1) and come out too large; "
                 "size.step_lag: auto reads them over as many frames as the correlation needs")
    if lag > 1 and step_lag["source"] == "given":
        flag("step_lag_given", "info", f"sizes are read from steps over {lag} frames (size.step_lag: {lag})")
    cut = fit.get("truncation")
    if cut and cut["expected_beyond"] > TRUNCATED_EXPECTED_BEYOND:
        flag("steps_truncated", "warning",
             f"no step is longer than {cut['reach_um']:.3g} µm, where Brownian motion would put about "
             f"{cut['expected_beyond']:.0f} of these tracks' steps (carrying {100 * cut['mean_beyond']:.2g} % of "
             "their squared displacement): the link search range cuts the steps short, so D comes out low and "
             "sizes high; increase link.search_range"
             + ("; the mislink model was not used (jumps cannot be told from the cut tail)"
                if fit.get("mislink_model_skipped") else ""))
    eps = fit.get("jump_fraction")
    if eps is not None and fit.get("n_jump_steps"):
        flag("mislinked_steps", "warning" if eps > MISLINK_FLAG_FRACTION else "info",
             f"{fit['n_jump_steps']} {'single-frame steps' if step_lag['frames'] == 1 else 'steps'} "
             f"({100 * eps:.1f} % of steps by the fitted jump "
             "fraction) are more likely jumps (a link to a neighbour, a mislocalized spot) than Brownian "
             "steps: they were scored as jumps and left out of the covariance estimates"
             + ("; that many suggests the link search range is too large or the particles too dense"
                if eps > MISLINK_FLAG_FRACTION else ""))
    if 0 < n_valid < 50:
        flag("few_tracks", "warning", f"only {n_valid} tracks were sized: the distribution is uncertain")
    if fit["iterations"] and not fit["converged"]:
        flag("fit_not_converged", "warning", "the size distribution's fit stopped at size.max_iter")
    return flags
