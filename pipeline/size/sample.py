"""The size stage on one tracks table: every track's D and diameter, the
sample's size distribution (Walker's beside the naive histogram), its
bootstrap intervals, the concentration and the ensemble MSD.

:func:`size_tracks` runs these as named steps; each takes arrays and
DataFrames, no files.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..io.tables import position_columns
from ..physics import stokes_einstein_diameter
from .conditions import check_interval, pixel_sizes, temperature_and_viscosity
from .diffusion import blur_factor, track_diffusion
from .distribution import (
    FIGURES,
    binned,
    distribution_figures,
    distribution_peaks,
    grid_mode,
    grid_quantiles,
)
from .ensemble import ensemble_msd, fit_powerlaw
from .parameters import check_params
from .walker import diameter_grid, walker_em, walker_likelihood

__all__ = ["size_tracks"]

_UM3_PER_ML = 1e12  # 1 mL = 1 cm³ = 1e12 µm³


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

    sizes, counts = _track_sizes(
        tracks, p, pixel_size_um=pixel_size_um, frame_interval_s=dt, exposure_s=exposure_s,
        temperature_K=T, viscosity_Pa_s=eta, notes=notes,
    )
    ndim = len(position_columns(tracks))
    sigma, sigma_source = _localization_error(sizes, p)
    grid = diameter_grid(p["grid_min_nm"], p["grid_max_nm"], p["grid_points"])
    fit = _walker_fit(
        sizes, p, notes, frame_interval_s=dt, temperature_K=T, viscosity_Pa_s=eta, grid_nm=grid, ndim=ndim,
        sigma_um=sigma, R=R,
    )
    sizes["posterior_diameter_nm"] = fit["posterior"]
    naive_d = sizes["diameter_nm"].to_numpy()
    figures, n_naive = _figures(grid, fit["weights"], naive_d, notes)
    concentration = _concentration(tracks, p, field_of_view_um2, n_frames, notes)
    distribution = _distribution_table(
        grid, fit["weights"], naive_d, fit["n_valid"], concentration["concentration_per_ml"],
        p["histogram_bins"], notes,
    )
    msd = _ensemble_msd(tracks, p, pixel_size_um=pixel_size_um, frame_interval_s=dt)

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
        "ndim": ndim,
        "pixel_size_um": [float(v) for v in pixel_sizes(pixel_size_um, ndim)],
        "method": p["method"],
        "sigma_um": sigma,
        "sigma_source": sigma_source,
        "motion_correction": counts["motion"],
        "motion_columns": counts["motion_columns"],
        "steps_missing_flow": counts["steps_missing_flow"],
        "walker_iterations": fit["iterations"],
        "walker_converged": fit["converged"],
        **msd,
        "notes": notes,
        "trackflow_version": __version__,
        "params": p,
    }
    return sizes, distribution, summary


def _track_sizes(
    tracks, p, *, pixel_size_um, frame_interval_s, exposure_s, temperature_K, viscosity_Pa_s, notes
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every track's D (:func:`track_diffusion`, tracks with fewer than
    ``min_steps`` single-frame steps left out, and noted) and its
    Stokes–Einstein ``diameter_nm``; with what track_diffusion reports of the
    motion correction (``motion``, ``motion_columns``,
    ``steps_missing_flow``) and the counts ``n_tracks_in`` and
    ``n_tracks_short``."""
    sizes = track_diffusion(
        tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s, exposure_s=exposure_s,
        method=p["method"], sigma_um=p["sigma_um"], min_steps=p["min_steps"],
        subtract_flow=p["subtract_flow"],
    )
    info = dict(sizes.attrs)
    sizes["diameter_nm"] = stokes_einstein_diameter(sizes["D_um2_s"].to_numpy(), temperature_K, viscosity_Pa_s)
    n_in = int(info["n_tracks_in"])
    n_short = n_in - len(sizes)
    if n_short:
        notes.append(f"{n_short} of {n_in} tracks have fewer than {p['min_steps']} single-frame steps")
    return sizes, {**info, "n_tracks_in": n_in, "n_tracks_short": n_short}


def _localization_error(sizes: pd.DataFrame, p) -> tuple[float, str]:
    """One localization error per axis (µm) for the Walker likelihood of all
    tracks, and where it comes from."""
    if p["sigma_um"] is not None:
        return float(p["sigma_um"]), "given (size.sigma_um)"
    # the median of the per-track estimates: each is unbiased for white
    # Gaussian noise, and the median keeps a few outlying localizations
    # (overlaps, mislinks) from inflating the offset of every track
    s2 = sizes["sigma2_um2"].to_numpy()
    s2 = s2[np.isfinite(s2)]
    sigma = math.sqrt(max(float(np.median(s2)), 0.0)) if s2.size else 0.0
    return sigma, f"estimated ({p['method']}, median over tracks)"


def _walker_fit(sizes: pd.DataFrame, p, notes, **likelihood) -> dict[str, Any]:
    """Walker's distribution over ``likelihood["grid_nm"]`` from the tracks
    that moved, each track's posterior mean diameter under it, and the
    bootstrap intervals of its mode and D50.

    Returns ``weights`` (per grid point; NaN without tracks), ``iterations``,
    ``converged``, ``posterior`` (per row of ``sizes``, nm), ``mode_ci`` and
    ``d50_ci`` (nm, or None) and ``n_valid`` (tracks in the fit).
    """
    grid = likelihood["grid_nm"]
    m = sizes["mean_sq_step_um2"].to_numpy()
    k = sizes["n_steps"].to_numpy()
    usable = np.isfinite(m) & (m > 0)
    if (~usable).any():
        notes.append(f"{int((~usable).sum())} tracks did not move (zero squared steps): left out of the EM")
    mode_ci = d50_ci = None
    posterior = np.full(len(sizes), np.nan)
    if usable.any():
        P = walker_likelihood(m[usable], k[usable], n_pairs=sizes["n_pairs"].to_numpy()[usable], **likelihood)
        pw, it, conv = walker_em(P, max_iter=p["max_iter"], tol=p["tol"])
        weights = pw[0]
        iterations, converged = int(it[0]), bool(conv[0])
        joint = P * weights[None, :]
        posterior[usable] = (joint @ grid) / joint.sum(axis=1)
        if p["n_bootstrap"] > 0 and usable.sum() > 1:
            mode_ci, d50_ci = _bootstrap_intervals(P, weights, grid, p)
        if not converged:
            notes.append(f"Walker EM stopped at size.max_iter={p['max_iter']} before reaching size.tol")
    else:
        weights = np.full(grid.size, np.nan)
        iterations, converged = 0, False
        notes.append("no valid tracks: no size distribution")
    return {
        "weights": weights, "iterations": iterations, "converged": converged, "posterior": posterior,
        "mode_ci": mode_ci, "d50_ci": d50_ci, "n_valid": int(usable.sum()),
    }


def _bootstrap_intervals(P: np.ndarray, weights: np.ndarray, grid: np.ndarray, p) -> tuple[list, list]:
    """95 % intervals (nm) of the mode and D50 of Walker's distribution,
    from ``size.n_bootstrap`` refits with the tracks (rows of the likelihood
    ``P``) resampled with replacement (seed ``size.seed``)."""
    rng = np.random.default_rng(p["seed"])
    J = P.shape[0]
    W = rng.multinomial(J, np.full(J, 1.0 / J), size=p["n_bootstrap"]).astype(float)
    # Replicates are fitted on the grid points that carry weight in the
    # full fit, widened by 10 points (~15 % in d with the default grid)
    # each side: weight far outside would stay negligible anyway, and
    # the EM runs several times faster. One replicate at a time:
    # matrix-vector updates beat batched matrix-matrix ones here.
    near = np.convolve((weights > 1e-6 * weights.max()).astype(float), np.ones(21), mode="same") > 0
    P_near = np.ascontiguousarray(P[:, near])
    pb = np.zeros((len(W), grid.size))
    for i, w in enumerate(W):
        pb[i, near] = walker_em(P_near, weights=w[None, :], max_iter=p["max_iter"], tol=p["tol"])[0][0]
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
    return {
        "msd_powerlaw_n": n_pl,
        "msd_powerlaw_A": A_pl,
        "emsd": [{"lagt_s": float(t), "msd_um2": float(v)} for t, v in zip(emsd["lagt_s"], emsd["msd_um2"])],
    }
