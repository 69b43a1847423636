"""The ``size`` stage: from tracks to diffusion coefficients, hydrodynamic
diameters, a size distribution and a concentration.

What it reads and writes
------------------------
Input is ``tracks.parquet`` (columns ``frame, [z,] y, x, particle``, positions
in pixels) and the run's movie store, for the physical units and conditions:
the per-axis pixel size, the frame interval, ``trackflow.exposure_s``,
``trackflow.temperature_K`` and ``trackflow.viscosity_Pa_s``.

Flow and drift: when the table has ``flow_dy, flow_dx`` (and ``flow_dz`` in
3D) — the predicted displacement of each row to the next frame, in pixels,
as written by the flow linker — that displacement is subtracted from each
step. Otherwise, when it has ``drift_y, drift_x`` (and ``drift_z``) — the
cumulative drift at each row, in pixels, as the nearest linker may write —
the drift difference between the two rows of a step is subtracted. Flow
columns win when both are present (the flow already carries the drift).
Nothing is subtracted with ``subtract_flow: false``.

Outputs: ``sizes.parquet`` (one row per valid track), ``distribution.csv``
(the binned size distribution: Walker's maximum-likelihood estimate beside
the naive per-track histogram, with the concentration per bin) and
``summary.json`` (the run's figures); optionally ``summary.csv``, the
headline figures in the layout of an NTA instrument's export.

The estimators
--------------
- Per track, D and the localization error σ by the covariance estimator
  (CVE; Vestergaard, Blainey & Flyvbjerg 2014), with the motion-blur factor
  R = t_exp / (6 Δt) (Michalet 2010; Berglund 2010), or by a least-squares
  fit of the first p MSD points with p chosen iteratively (Michalet 2010;
  Michalet & Berglund 2012).
- Only single-frame steps enter: a track that skips frames (linking with
  memory) is cut into consecutive pieces for the step statistics, never
  read as a longer single step.
- The size distribution by Walker's (2012) maximum-likelihood EM over a
  log-spaced diameter grid, with each track's number of steps in its
  likelihood and one localization error for all tracks (``size.sigma_um``,
  else the median of the per-track estimates), beside the naive per-track
  histogram; bootstrap over tracks for the intervals of the mode and D50.
- Stokes–Einstein diameters (``pipeline.physics``); concentration from the
  mean number of particles per frame, the field of view and the configured
  depth of field.

All functions take and return plain arrays and DataFrames; :func:`run` and
:func:`run_group` do the file work.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

from . import __version__
from .io.files import atomic_path, atomic_write
from .io.movie import open_movie
from .io.tables import jsonable, position_columns, read_distribution, read_summary, read_table, write_table
from .physics import stokes_einstein_D, stokes_einstein_diameter, water_viscosity

__all__ = [
    "SIZE_DEFAULTS",
    "check_params",
    "blur_factor",
    "cve",
    "msd_fit",
    "optimal_msd_points",
    "track_steps",
    "track_diffusion",
    "ensemble_msd",
    "fit_powerlaw",
    "walker_likelihood",
    "walker_em",
    "walker_distribution",
    "distribution_figures",
    "distribution_peaks",
    "size_tracks",
    "merge_replicates",
    "summary_row",
    "run",
    "run_group",
]

log = logging.getLogger("trackflow.sizing")

#: The ``size`` config section: every key and its default.
SIZE_DEFAULTS: dict[str, Any] = {
    "method": "cve",  # per-track D: "cve" or "msd"
    "min_steps": 5,  # single-frame steps a track needs to be sized
    "sigma_um": None,  # known localization error per axis, µm (None: estimate)
    "temperature_K": None,  # None: the movie's trackflow.temperature_K
    "viscosity_Pa_s": None,  # None: the movie's, else water at T
    "grid_min_nm": 10.0,
    "grid_max_nm": 3000.0,
    "grid_points": 200,
    "max_iter": 2000,
    "tol": 1e-6,
    "n_bootstrap": 100,
    "seed": 0,
    "histogram_bins": 150,
    "depth_um": None,  # effective depth of field, µm (None: no concentration in 2D)
    "dilution": 1.0,
    "subtract_flow": True,
    "msd_max_lag": 100,
}

_FLOW_PREFIX = "flow_d"  # flow_dz, flow_dy, flow_dx
_DRIFT_PREFIX = "drift_"  # drift_z, drift_y, drift_x
_UM3_PER_ML = 1e12  # 1 mL = 1 cm³ = 1e12 µm³


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------


def check_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``size`` section with defaults filled in, validated.

    Unknown keys and out-of-range values raise ValueError naming the key
    (``size.<key>``).
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(SIZE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown size parameter(s) {', '.join(repr('size.' + k) for k in unknown)} "
            f"(known: {', '.join(SIZE_DEFAULTS)})"
        )
    out = {**SIZE_DEFAULTS, **params}

    def bad(key, what):
        raise ValueError(f"size.{key} must be {what}, got {out[key]!r}")

    def number(key, *, minimum=None, strict=False, optional=False, integer=False):
        value = out[key]
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            bad(key, "an integer" if integer else "a number")
        if integer and int(value) != value:
            bad(key, "an integer")
        if not math.isfinite(float(value)):
            bad(key, "finite")
        if minimum is not None and (value < minimum or (strict and value == minimum)):
            bad(key, f"{'>' if strict else '>='} {minimum}")
        out[key] = int(value) if integer else float(value)

    if out["method"] not in ("cve", "msd"):
        bad("method", "'cve' or 'msd'")
    number("min_steps", minimum=1, integer=True)
    number("sigma_um", minimum=0, optional=True)
    number("temperature_K", minimum=0, strict=True, optional=True)
    number("viscosity_Pa_s", minimum=0, strict=True, optional=True)
    number("grid_min_nm", minimum=0, strict=True)
    number("grid_max_nm", minimum=0, strict=True)
    if out["grid_max_nm"] <= out["grid_min_nm"]:
        bad("grid_max_nm", f"larger than size.grid_min_nm ({out['grid_min_nm']})")
    number("grid_points", minimum=2, integer=True)
    number("max_iter", minimum=1, integer=True)
    number("tol", minimum=0, strict=True)
    number("n_bootstrap", minimum=0, integer=True)
    number("seed", minimum=0, integer=True)
    number("histogram_bins", minimum=1, integer=True)
    number("depth_um", minimum=0, strict=True, optional=True)
    number("dilution", minimum=0, strict=True)
    if not isinstance(out["subtract_flow"], (bool, np.bool_)):
        bad("subtract_flow", "true or false")
    number("msd_max_lag", minimum=1, integer=True)
    return out


def blur_factor(exposure_s: float | None, frame_interval_s: float) -> float:
    """Motion-blur factor R = t_exp / (6 Δt) of a rectangular exposure.

    ``exposure_s`` None means an instantaneous exposure (R = 0). The exposure
    cannot exceed the frame interval, so 0 <= R <= 1/6.

    References
    ----------
    Michalet, X. (2010) PRE 82:041914; Berglund, A. J. (2010) PRE 82:011917.
    """
    dt = _check_interval(frame_interval_s)
    if exposure_s is None:
        return 0.0
    t = float(exposure_s)
    if not math.isfinite(t) or t < 0 or t > dt * (1 + 1e-9):
        raise ValueError(
            f"exposure_s (trackflow.exposure_s) must lie between 0 and the frame interval "
            f"{dt} s, got {exposure_s!r}"
        )
    return t / (6.0 * dt)


def _check_interval(frame_interval_s) -> float:
    try:
        dt = float(frame_interval_s)
    except (TypeError, ValueError):
        dt = float("nan")
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(
            "frame interval 'trackflow.frame_interval_s' must be a positive number of seconds, "
            f"got {frame_interval_s!r}"
        )
    return dt


# ---------------------------------------------------------------------------
# per-track diffusion: CVE
# ---------------------------------------------------------------------------


def _cve_from_moments(msq, mcov, dt, R, sigma=None):
    """CVE from the per-axis mean squared step ``msq`` and the mean product
    of adjacent steps ``mcov`` (arrays broadcast)."""
    msq = np.asarray(msq, dtype=float)
    mcov = np.asarray(mcov, dtype=float)
    if sigma is None:
        D = msq / (2.0 * dt) + mcov / dt
        sigma2 = R * msq + (2.0 * R - 1.0) * mcov  # a product, not (2R-1)+cov
    else:
        s2 = float(sigma) ** 2
        D = (msq - 2.0 * s2) / (2.0 * (1.0 - 2.0 * R) * dt)
        sigma2 = np.full(np.shape(D), s2)
    return D, sigma2


def cve(steps: np.ndarray, dt: float, R: float = 0.0, sigma: float | None = None) -> tuple[float, float]:
    """Covariance-based estimator of D and σ² for ONE track.

    Per axis, with Δx_n the single-frame steps (Vestergaard et al. 2014, Eqs.
    14-15; Michalet 2010 for the blur terms)::

        D  = <Δx_n²> / (2 Δt) + <Δx_n Δx_{n+1}> / Δt
        σ² = R <Δx_n²> + (2R − 1) <Δx_n Δx_{n+1}>

    averaged over the axes. With a known σ (per axis)::

        D = (<Δx²> − 2σ²) / (2 (1 − 2R) Δt)

    Parameters
    ----------
    steps : ndarray, (n, ndim)
        Consecutive single-frame displacements of one track, µm (one axis may
        be given as shape (n,)).
    dt : float
        Frame interval Δt, s.
    R : float
        Motion-blur factor t_exp / (6 Δt), 0 <= R <= 1/4.
    sigma : float, optional
        Known static localization error per axis, µm; estimated when None.

    Returns
    -------
    D : float
        Diffusion coefficient, µm²/s (can be negative for short noisy tracks:
        the estimator is unbiased, not constrained).
    sigma2 : float
        Localization variance per axis, µm² (σ² itself when given).

    References
    ----------
    Vestergaard, C. L., Blainey, P. C. & Flyvbjerg, H. (2014) Optimal
    estimation of diffusion coefficients from single-particle trajectories.
    PRE 89:022726. Michalet, X. (2010) PRE 82:041914.
    """
    dt = _check_interval(dt)
    if not 0.0 <= R <= 0.25:
        raise ValueError(f"blur factor R must lie in [0, 1/4], got {R}")
    steps = np.asarray(steps, dtype=float)
    if steps.ndim == 1:
        steps = steps[:, None]
    if steps.ndim != 2 or not np.all(np.isfinite(steps)):
        raise ValueError(f"steps must be a finite (n, ndim) array, got shape {steps.shape}")
    n = steps.shape[0]
    if n < (1 if sigma is not None else 2):
        raise ValueError(f"CVE needs at least {1 if sigma is not None else 2} steps, got {n}")
    msq = float(np.mean(steps**2))
    mcov = float(np.mean(steps[1:] * steps[:-1])) if n > 1 else 0.0
    D, sigma2 = _cve_from_moments(msq, mcov, dt, R, sigma)
    return float(D), float(sigma2)


# ---------------------------------------------------------------------------
# per-track diffusion: optimal-points MSD fit
# ---------------------------------------------------------------------------


def optimal_msd_points(x: float, n_positions: int, target: str = "slope") -> int:
    """Optimal number of MSD points p for an unweighted fit MSD(n) = a + b n.

    p = ⌊f L / (f³ + L³)^(1/3)⌋ with, for the slope b (hence D),
    f_b = 2 + 1.6 x^0.51 and L_b = 3 + (4.5 N^0.4 − 8.5)^1.2, and for the
    offset a (hence σ), f_a = 2 + 1.35 x^0.6 and L_a = 0.8 + 0.564 N
    (Michalet 2010, Eqs. 20-21, used by Michalet & Berglund 2012). Clipped
    to 2 <= p <= N − 1.

    Parameters
    ----------
    x : float
        Reduced localization error σ²/(DΔt) (with blur, the effective
        (σ² − 2RDΔt)/(DΔt), i.e. the MSD offset over its slope).
    n_positions : int
        Positions N in the track.
    target : "slope" or "offset"
    """
    N = int(n_positions)
    x = max(float(x), 0.0) if math.isfinite(x) else 1e6
    if target == "slope":
        f = 2.0 + 1.6 * x**0.51
        L = 3.0 + max(4.5 * N**0.4 - 8.5, 0.0) ** 1.2
    elif target == "offset":
        f = 2.0 + 1.35 * x**0.6
        L = 0.8 + 0.564 * N
    else:
        raise ValueError(f"target must be 'slope' or 'offset', got {target!r}")
    p = int(math.floor(f * L / (f**3 + L**3) ** (1.0 / 3.0)))
    return int(min(max(p, 2), max(N - 1, 2)))


def _lag_msd(positions: np.ndarray, frames: np.ndarray, max_lag: int):
    """Per-axis-averaged MSD of one track at exact frame lags 1..max_lag,
    with the number of pairs at each lag (gaps leave lags without pairs)."""
    frames = np.asarray(frames, dtype=np.int64)
    span = int(frames[-1] - frames[0]) + 1
    dense = np.full((span, positions.shape[1]), np.nan)
    dense[frames - frames[0]] = positions
    max_lag = min(int(max_lag), span - 1)
    msd = np.full(max_lag, np.nan)
    count = np.zeros(max_lag, dtype=np.int64)
    for lag in range(1, max_lag + 1):
        d = dense[lag:] - dense[:-lag]
        ok = np.isfinite(d[:, 0])
        count[lag - 1] = int(ok.sum())
        if count[lag - 1]:
            msd[lag - 1] = float(np.mean(d[ok] ** 2))
    return msd, count


def msd_fit(
    positions_um: np.ndarray,
    frames: np.ndarray,
    dt: float,
    R: float = 0.0,
    *,
    sigma: float | None = None,
    max_iter: int = 20,
) -> tuple[float, float, int]:
    """D and σ² of one track from an unweighted fit of its first p MSD points.

    The per-axis MSD is MSD(nΔt) = 2(σ² − 2RDΔt) + 2DΔt·n (Michalet 2010,
    Eq. 8 with blur). p starts at 2 and is updated from the reduced error
    x = a/b of the current fit with :func:`optimal_msd_points` until it stops
    changing (Michalet & Berglund 2012, Sec. IV). With a known σ the offset is
    fixed and only the slope is fitted (still with the optimal p).

    Returns
    -------
    D : float (µm²/s), sigma2 : float (µm² per axis), p : int (points used)

    References
    ----------
    Michalet, X. (2010) PRE 82:041914; Michalet, X. & Berglund, A. J. (2012)
    Optimal diffusion coefficient estimation in single-particle tracking.
    PRE 85:061916.
    """
    dt = _check_interval(dt)
    positions_um = np.asarray(positions_um, dtype=float)
    if positions_um.ndim == 1:
        positions_um = positions_um[:, None]
    frames = np.asarray(frames)
    N = len(frames)
    if N < 3:
        return float("nan"), float("nan"), 0
    p_cap = min(N - 1, 100)
    msd, count = _lag_msd(positions_um, frames, p_cap)
    lags = np.arange(1, len(msd) + 1, dtype=float)

    def fit(p):
        ok = (lags <= p) & (count > 0)
        n, y = lags[ok], msd[ok]
        if sigma is not None:
            a = 2.0 * float(sigma) ** 2  # + the blur term, solved below
            if len(n) < 1:
                return float("nan"), float("nan")
            # y = 2σ² + b (n − 2R): least squares for b
            b = float(np.sum((y - a) * (n - 2 * R)) / np.sum((n - 2 * R) ** 2))
            return a - 2 * R * b, b
        if len(n) < 2:
            return float("nan"), float("nan")
        b, a = np.polyfit(n, y, 1)
        return float(a), float(b)

    p = 2
    seen = set()
    for _ in range(int(max_iter)):
        a, b = fit(p)
        if not (math.isfinite(a) and math.isfinite(b)):
            break
        x = a / b if b > 0 else float("inf")
        p_new = min(optimal_msd_points(x, N, "slope"), len(msd))
        if p_new == p or p_new in seen:
            p = p_new
            break
        seen.add(p)
        p = p_new
    a, b = fit(p)
    D = b / (2.0 * dt)
    sigma2 = a / 2.0 + 2.0 * R * D * dt if sigma is None else float(sigma) ** 2
    return float(D), float(sigma2), int(p)


# ---------------------------------------------------------------------------
# steps of all tracks at once
# ---------------------------------------------------------------------------


def _pixel_sizes(pixel_size_um, ndim: int) -> np.ndarray:
    px = np.atleast_1d(np.asarray(pixel_size_um, dtype=float))
    if px.size == 1:
        px = np.repeat(px, ndim)
    if px.size != ndim or not np.all(np.isfinite(px)) or np.any(px <= 0):
        raise ValueError(
            f"pixel_size_um must be positive, one value or one per axis ({ndim}), got {pixel_size_um!r}"
        )
    return px


def _motion_columns(tracks: pd.DataFrame, pos: list[str], subtract_flow: bool) -> tuple[str, list[str]]:
    """Which columns correct the motion: ("flow", [...]), ("drift", [...]) or ("none", [])."""
    if not subtract_flow:
        return "none", []
    axes = [p for p in pos]  # z, y, x or y, x
    flow = [f"{_FLOW_PREFIX}{a}" for a in axes]
    drift = [f"{_DRIFT_PREFIX}{a}" for a in axes]
    for kind, cols in (("flow", flow), ("drift", drift)):
        present = [c for c in cols if c in tracks.columns]
        if present and len(present) < len(cols):
            missing = [c for c in cols if c not in tracks.columns]
            raise ValueError(
                f"tracks table has {kind} column(s) {present} but not {missing}: give one per axis "
                "(or set size.subtract_flow: false)"
            )
        if present:
            return kind, cols
    return "none", []


def track_steps(
    tracks: pd.DataFrame, *, pixel_size_um, subtract_flow: bool = True
) -> dict[str, Any]:
    """Positions and single-frame steps of every track, in µm, flow-corrected.

    Parameters
    ----------
    tracks : DataFrame
        ``frame, [z,] y, x, particle`` (pixels), optionally ``flow_d*`` or
        ``drift_*`` (see the module docstring).
    pixel_size_um : float or sequence
        Per axis, in the table's axis order (z, y, x or y, x).
    subtract_flow : bool
        Subtract the flow (or drift) from each step when the columns exist.

    Returns
    -------
    dict with
        ``particle`` (ids per row, sorted by particle then frame), ``frame``,
        ``code`` (track index per row), ``ids`` (unique particle ids),
        ``positions`` (n, ndim) µm, flow-corrected cumulatively along each
        track (for the MSD), ``steps`` (n, ndim) µm (row i to row i+1),
        ``step_ok`` (a single-frame step of one track with a finite
        correction), ``pair_ok`` (steps i and i+1 both ok), ``motion``
        ("flow", "drift" or "none"), ``motion_columns``, ``steps_missing_flow``.
    """
    if not isinstance(tracks, pd.DataFrame):
        raise ValueError(f"tracks must be a DataFrame, got {type(tracks).__name__}")
    pos = position_columns(tracks)
    missing = [c for c in ("frame", *pos, "particle") if c not in tracks.columns]
    if missing:
        raise ValueError(f"tracks table lacks column(s) {missing}")
    ndim = len(pos)
    px = _pixel_sizes(pixel_size_um, ndim)
    kind, mcols = _motion_columns(tracks, pos, subtract_flow)
    t = tracks.reset_index(drop=True).sort_values(["particle", "frame"], kind="stable")
    particle = t["particle"].to_numpy()
    frame = t["frame"].to_numpy()
    if len(t) and not np.all(np.isfinite(frame.astype(float))):
        raise ValueError("tracks table has non-finite frame numbers")
    frame = frame.astype(np.int64)
    xyz = t[pos].to_numpy(dtype=float)
    bad = ~np.all(np.isfinite(xyz), axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"tracks table has non-finite positions (first: particle {particle[i]}, frame {frame[i]})"
        )
    same = particle[1:] == particle[:-1]
    dup = same & (frame[1:] == frame[:-1])
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(f"tracks table has particle {particle[i]} twice in frame {frame[i]}")
    ids, code = np.unique(particle, return_inverse=True)
    xyz_um = xyz * px
    gap = np.diff(frame)
    raw_steps = np.diff(xyz_um, axis=0) if len(t) else np.zeros((0, ndim))
    correction = np.zeros_like(raw_steps)
    finite_corr = np.ones(len(raw_steps), dtype=bool)
    if kind == "flow":
        flow = t[mcols].to_numpy(dtype=float) * px
        # predicted displacement to the next frame; over a gap of g frames
        # (only used for the MSD, never for CVE) it is taken g times
        correction = flow[:-1] * gap[:, None]
        finite_corr = np.all(np.isfinite(correction), axis=1)
    elif kind == "drift":
        drift = t[mcols].to_numpy(dtype=float) * px
        correction = np.diff(drift, axis=0)
        finite_corr = np.all(np.isfinite(correction), axis=1)
    steps = raw_steps - np.where(finite_corr[:, None], correction, 0.0)
    step_ok = same & (gap == 1) & finite_corr
    steps_missing_flow = int(np.sum(same & (gap == 1) & ~finite_corr))
    pair_ok = step_ok[1:] & step_ok[:-1]
    # positions corrected cumulatively along each track (for the MSD)
    positions = xyz_um.copy()
    if kind != "none" and len(t):
        corr = np.where((same & finite_corr)[:, None], correction, 0.0)
        cum = np.vstack([np.zeros((1, ndim)), np.cumsum(corr, axis=0)])
        starts = np.r_[0, np.flatnonzero(~same) + 1]
        start_of_row = np.repeat(starts, np.diff(np.r_[starts, len(t)]))
        positions = xyz_um - (cum - cum[start_of_row])
    return {
        "particle": particle,
        "frame": frame,
        "code": code,
        "ids": ids,
        "positions": positions,
        "steps": steps,
        "step_ok": step_ok,
        "pair_ok": pair_ok,
        "ndim": ndim,
        "pixel_size_um": px,
        "motion": kind,
        "motion_columns": mcols,
        "steps_missing_flow": steps_missing_flow,
    }


def _per_track_moments(st: dict) -> pd.DataFrame:
    """Per track: rows, single-frame steps k, adjacent step pairs, the sum of
    squared steps (over axes) and of adjacent-step products (over axes)."""
    n_tracks = len(st["ids"])
    code = st["code"]
    steps, ok, pair_ok = st["steps"], st["step_ok"], st["pair_ok"]
    sq = np.sum(steps**2, axis=1) if len(steps) else np.zeros(0)
    prod = np.sum(steps[1:] * steps[:-1], axis=1) if len(steps) > 1 else np.zeros(0)
    step_code = code[:-1]
    pair_code = code[:-2]
    frames = st["frame"]
    first = np.full(n_tracks, np.iinfo(np.int64).max)
    last = np.full(n_tracks, np.iinfo(np.int64).min)
    np.minimum.at(first, code, frames)
    np.maximum.at(last, code, frames)
    return pd.DataFrame(
        {
            "particle": st["ids"],
            "n_frames": np.bincount(code, minlength=n_tracks),
            "first_frame": first,
            "last_frame": last,
            "n_steps": np.bincount(step_code[ok], minlength=n_tracks),
            "n_pairs": np.bincount(pair_code[pair_ok], minlength=n_tracks),
            "sum_sq_um2": np.bincount(step_code[ok], weights=sq[ok], minlength=n_tracks),
            "sum_prod_um2": np.bincount(pair_code[pair_ok], weights=prod[pair_ok], minlength=n_tracks),
        }
    )


def track_diffusion(
    tracks: pd.DataFrame,
    *,
    pixel_size_um,
    frame_interval_s: float,
    exposure_s: float | None = None,
    method: str = "cve",
    sigma_um: float | None = None,
    min_steps: int = 5,
    subtract_flow: bool = True,
) -> pd.DataFrame:
    """Diffusion coefficient and localization error of every track.

    Only single-frame steps are used (a gap in a track breaks it into
    consecutive pieces whose steps are pooled; products of adjacent steps are
    taken within the pieces only), after subtracting the flow or drift (see
    the module docstring).

    Parameters
    ----------
    tracks : DataFrame
        ``frame, [z,] y, x, particle`` in pixels.
    pixel_size_um : float or sequence
        µm per pixel, per axis in the table's order (z, y, x / y, x).
    frame_interval_s : float
        Δt, s.
    exposure_s : float, optional
        Exposure time, s (motion blur R = t_exp/(6Δt)); None means R = 0.
    method : "cve" or "msd"
        Covariance estimator (:func:`cve`) or optimal-points MSD fit
        (:func:`msd_fit`).
    sigma_um : float, optional
        Known localization error per axis, µm (the known-σ formulas).
    min_steps : int
        Tracks with fewer single-frame steps are left out (the caller counts
        them: ``len(tracks.particle.unique()) - len(result)``).
    subtract_flow : bool

    Returns
    -------
    DataFrame, one row per kept track: ``particle, n_frames, first_frame,
    last_frame, n_steps, n_pairs, mean_sq_step_um2`` (mean over steps of the
    squared displacement summed over axes), ``D_um2_s``, ``sigma2_um2``
    (per axis; may be negative from noise), ``sigma_um`` (√ of it, clipped at
    0) and, for ``method="msd"``, ``msd_points``.
    """
    if method not in ("cve", "msd"):
        raise ValueError(f"size.method must be 'cve' or 'msd', got {method!r}")
    dt = _check_interval(frame_interval_s)
    R = blur_factor(exposure_s, dt)
    st = track_steps(tracks, pixel_size_um=pixel_size_um, subtract_flow=subtract_flow)
    out = _per_track_moments(st)
    ndim = st["ndim"]
    out = out[out["n_steps"] >= max(int(min_steps), 1)].reset_index(drop=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean_sq_step_um2"] = out["sum_sq_um2"] / out["n_steps"]
        msq = out["sum_sq_um2"] / (out["n_steps"] * ndim)
        mcov = out["sum_prod_um2"] / (out["n_pairs"] * ndim)
    if method == "cve":
        D, s2 = _cve_from_moments(msq.to_numpy(), mcov.to_numpy(), dt, R, sigma_um)
        if sigma_um is None:
            # no adjacent step pair: the covariance (and so D) is undefined
            D = np.where(out["n_pairs"].to_numpy() > 0, D, np.nan)
            s2 = np.where(out["n_pairs"].to_numpy() > 0, s2, np.nan)
    else:
        D = np.full(len(out), np.nan)
        s2 = np.full(len(out), np.nan)
        p = np.zeros(len(out), dtype=np.int64)
        keep = np.isin(st["code"], np.searchsorted(st["ids"], out["particle"].to_numpy()))
        code = st["code"][keep]
        positions, frames = st["positions"][keep], st["frame"][keep]
        bounds = np.r_[0, np.flatnonzero(np.diff(code)) + 1, len(code)]
        for i in range(len(bounds) - 1):
            a, b = bounds[i], bounds[i + 1]
            D[i], s2[i], p[i] = msd_fit(positions[a:b], frames[a:b], dt, R, sigma=sigma_um)
        out["msd_points"] = p
    out["D_um2_s"] = D
    out["sigma2_um2"] = s2
    out["sigma_um"] = np.sqrt(np.clip(s2, 0.0, None))
    out = out.drop(columns=["sum_sq_um2", "sum_prod_um2"])
    out.attrs.update(
        blur_R=R,
        motion=st["motion"],
        motion_columns=list(st["motion_columns"]),
        steps_missing_flow=st["steps_missing_flow"],
        n_tracks_in=len(st["ids"]),
    )
    return out


# ---------------------------------------------------------------------------
# ensemble MSD (trackpy.emsd semantics)
# ---------------------------------------------------------------------------


def _msd_effective_n(N, t):
    """Effective number of independent MSD measurements of a track of N
    positions at lag t (Qian, Sheetz & Elson 1991, Eq. B4), as trackpy uses
    to weight its ensemble MSD."""
    N = np.asarray(N, dtype=float)
    t = np.asarray(t, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        long_lag = 1 / (1 + ((N - t) ** 3 + 5 * t - 4 * (N - t) ** 2 * t - N) / (6 * (N - t) * t**2))
        short_lag = 6 * (N - t) ** 2 * t / (2 * N - t + 4 * N * t**2 - 5 * t**3)
    return np.where(t > N / 2, long_lag, short_lag)


def ensemble_msd(
    tracks: pd.DataFrame,
    *,
    pixel_size_um,
    frame_interval_s: float,
    max_lag: int = 100,
    subtract_flow: bool = True,
) -> pd.DataFrame:
    """Ensemble mean squared displacement, as ``trackpy.emsd``.

    Each track's time-averaged MSD (summed over axes, at exact frame lags, so
    gaps are respected) is weighted by its effective number of independent
    measurements (Qian et al. 1991), rescaled for gaps as trackpy does.
    Positions are flow/drift-corrected first when the table says how (see
    the module docstring); without such columns the result equals
    ``trackpy.emsd(tracks, mpp, fps, max_lag)``.

    Returns
    -------
    DataFrame with ``lag, lagt_s, msd_um2, n_tracks`` (tracks contributing).
    """
    dt = _check_interval(frame_interval_s)
    st = track_steps(tracks, pixel_size_um=pixel_size_um, subtract_flow=subtract_flow)
    code, frames, positions = st["code"], st["frame"], st["positions"]
    n_tracks = len(st["ids"])
    empty = pd.DataFrame({"lag": [], "lagt_s": [], "msd_um2": [], "n_tracks": []})
    if n_tracks == 0:
        return empty
    bounds = np.r_[0, np.flatnonzero(np.diff(code)) + 1, len(code)]
    n_rows = np.diff(bounds)
    first = frames[bounds[:-1]]
    span = frames[bounds[1:] - 1] - first + 1
    max_lag = int(min(max_lag, span.max() - 1))
    if max_lag < 1:
        return empty
    num = np.zeros(max_lag)
    den = np.zeros(max_lag)
    contributing = np.zeros(max_lag, dtype=np.int64)
    order = np.argsort(span, kind="stable")
    ndim = positions.shape[1]
    # tracks in blocks of similar length, padded to a dense (track, frame) array
    block = 256
    for b0 in range(0, n_tracks, block):
        idx = order[b0 : b0 + block]
        width = int(span[idx].max())
        dense = np.full((len(idx), width, ndim), np.nan)
        for r, j in enumerate(idx):
            rows = slice(bounds[j], bounds[j + 1])
            dense[r, frames[rows] - first[j]] = positions[rows]
        msd_blk = np.full((len(idx), max_lag), np.nan)
        for lag in range(1, min(max_lag, width - 1) + 1):
            d = dense[:, lag:, :] - dense[:, :-lag, :]
            sq = np.sum(d**2, axis=2)
            ok = np.isfinite(sq)
            cnt = ok.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                msd_blk[:, lag - 1] = np.where(cnt > 0, np.where(ok, sq, 0).sum(axis=1) / cnt, np.nan)
        lags = np.arange(1, max_lag + 1)
        Nd = span[idx][:, None].astype(float)
        has_lag = lags[None, :] <= Nd - 1
        weight = np.where(has_lag, _msd_effective_n(Nd, lags[None, :]) * (n_rows[idx][:, None] / Nd), 0.0)
        # trackpy: N is zeroed where the MSD is undefined (gaps), then rescaled
        # so that each track keeps its total weight
        total = weight.sum(axis=1, keepdims=True)
        weight = np.where(np.isfinite(msd_blk), weight, 0.0)
        kept = weight.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = np.where(kept > 0, weight * total / kept, 0.0)
        num += np.nansum(np.where(weight > 0, msd_blk, 0.0) * weight, axis=0)
        den += weight.sum(axis=0)
        contributing += (has_lag & np.isfinite(msd_blk)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        msd = num / den
    lags = np.arange(1, max_lag + 1)
    keep = den > 0
    return pd.DataFrame(
        {
            "lag": lags[keep],
            "lagt_s": lags[keep] * dt,
            "msd_um2": msd[keep],
            "n_tracks": contributing[keep],
        }
    )


def fit_powerlaw(lagt_s, msd_um2) -> tuple[float, float]:
    """Power law MSD = A t^n by linear regression in log space, as
    ``trackpy.utils.fit_powerlaw``. Returns ``(n, A)``, A in µm²/s^n; NaN
    when fewer than two positive points."""
    t = np.asarray(lagt_s, dtype=float)
    y = np.asarray(msd_um2, dtype=float)
    ok = np.isfinite(t) & np.isfinite(y) & (t > 0) & (y > 0)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    res = stats.linregress(np.log(t[ok]), np.log(y[ok]))
    return float(res.slope), float(np.exp(res.intercept))


# ---------------------------------------------------------------------------
# Walker's maximum-likelihood size distribution
# ---------------------------------------------------------------------------


def _diameter_grid(grid_min_nm: float, grid_max_nm: float, grid_points: int) -> np.ndarray:
    return np.exp(np.linspace(np.log(grid_min_nm), np.log(grid_max_nm), int(grid_points)))


def walker_likelihood(
    mean_sq_step_um2,
    n_steps,
    *,
    frame_interval_s: float,
    temperature_K: float,
    viscosity_Pa_s: float,
    grid_nm: np.ndarray,
    ndim: int = 2,
    sigma_um: float = 0.0,
    R: float = 0.0,
    n_pairs=None,
) -> np.ndarray:
    """Likelihood matrix P[j, l] of track j's mean squared step m_j given
    diameter grid point l, each row scaled so that its maximum is 1 (EM only
    needs ratios along a row).

    A single-frame step has per-axis variance v = 2(DΔt + σ² − 2RDΔt), so its
    squared length (summed over ``ndim`` axes) has mean
    θ = 2·ndim·(DΔt + σ² − 2RDΔt) (in 2D the 4DΔt + 4(σ² − 2RDΔt) of Walker
    2012 with the offset of Michalet 2010). The squared lengths of k_j steps
    are a sum of k_j·ndim squared normals, so
    m_j ~ Gamma(shape a = k_j·ndim/2, scale θ/a) — Walker's Gamma(k, θ/k) in
    2D. Noise and blur also correlate adjacent steps (covariance
    c = −(σ² − 2RDΔt) per axis); with ``n_pairs`` given, the shape is
    moment-matched to the resulting variance,
    a = (ndim/2)·k² / (k + 2·n_pairs·(c/v)²), which reduces to Walker's when
    c = 0.

    Parameters
    ----------
    mean_sq_step_um2, n_steps : arrays (J,)
        m_j in µm² and k_j.
    grid_nm : array (L,)
        Diameters, nm.
    n_pairs : array (J,), optional
        Adjacent step pairs per track (k_j − 1 without gaps).

    References
    ----------
    Walker, J. G. (2012) Improved nano-particle tracking analysis. Meas. Sci.
    Technol. 23:065605. Michalet, X. (2010) PRE 82:041914.
    """
    m = np.asarray(mean_sq_step_um2, dtype=float)[:, None]
    k = np.asarray(n_steps, dtype=float)[:, None]
    dt = _check_interval(frame_interval_s)
    D = np.asarray(stokes_einstein_D(np.asarray(grid_nm, dtype=float), temperature_K, viscosity_Pa_s))[None, :]
    s2 = float(sigma_um) ** 2
    per_axis = D * dt + s2 - 2.0 * R * D * dt  # v / 2
    theta = 2.0 * ndim * per_axis
    a = 0.5 * ndim * k
    if n_pairs is not None:
        rho = -(s2 - 2.0 * R * D * dt) / (2.0 * per_axis)  # c / v
        pairs = np.asarray(n_pairs, dtype=float)[:, None]
        a = 0.5 * ndim * k**2 / (k + 2.0 * pairs * rho**2)
    logp = a * np.log(a) - special.gammaln(a) + (a - 1.0) * np.log(m) - a * np.log(theta) - a * m / theta
    logp -= logp.max(axis=1, keepdims=True)
    # Flush negligible likelihoods to zero: together with the weight floor
    # of the EM (1e-150) every product p_l P_jl stays far from the subnormal
    # range, whose arithmetic is ~100x slower.
    return np.where(logp > -300.0, np.exp(np.maximum(logp, -300.0)), 0.0)


_WEIGHT_FLOOR = 1e-150  # EM weights below this are dead (see walker_likelihood)


def _em_map(p, P, W, wsum):
    """One EM update of the rows of ``p``; also returns the mean log
    likelihood per track at ``p`` (before the update)."""
    # einsum, not BLAS: these matrix-vector products are memory-bound, and a
    # multi-threaded BLAS slows down many-fold when the cores are shared
    # (Snakemake jobs, Dask workers), while einsum runs in this thread
    Q = np.maximum(np.einsum("bl,jl->bj", p, P), np.finfo(float).tiny)  # Σ_l p_l P_jl
    ll = np.sum(W * np.log(Q), axis=1) / wsum[:, 0]
    new = p * np.einsum("bj,jl->bl", W / Q, P) / wsum
    new[new < _WEIGHT_FLOOR] = 0.0  # dead grid points: keep products out of subnormal range
    return new, ll


def walker_em(
    P: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    max_iter: int = 2000,
    tol: float = 1e-6,
    start: np.ndarray | None = None,
    accelerate: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximise Σ_j w_j log Σ_l p_l P[j, l] over grid weights p by EM
    (Walker 2012): p_l ← p_l · Σ_j w_j P_jl / (Σ_l' p_l' P_jl') / Σ_j w_j.

    Several weightings (bootstrap replicates) are solved at once: ``weights``
    (B, J) gives B problems, returned as B rows. With ``accelerate`` the EM
    map is extrapolated by SQUAREM (Varadhan & Roland 2008, scheme S3, with
    a fall-back to the plain EM step whenever the extrapolation does not
    increase the likelihood), which needs several times fewer EM updates for
    the same likelihood. Each problem stops when its mean log likelihood per
    track improves by less than ``tol`` in one cycle (one EM update, or one
    SQUAREM cycle of three), or after ``max_iter`` EM updates.

    Returns
    -------
    p : (B, L) weights (each row sums to 1)
    iterations : (B,) int, EM updates used
    converged : (B,) bool

    References
    ----------
    Walker, J. G. (2012) Meas. Sci. Technol. 23:065605. Varadhan, R. &
    Roland, C. (2008) Simple and globally convergent methods for accelerating
    the convergence of any EM algorithm. Scand. J. Stat. 35:335-353.
    """
    P_full = np.asarray(P, dtype=float)
    J, L_full = P_full.shape
    # grid points that no track supports (P <= 1e-10 everywhere, rows scaled to
    # max 1) lose their weight in the first update: leave them out altogether
    support = P_full.max(axis=0) > 1e-10 if J else np.ones(L_full, dtype=bool)
    P = np.ascontiguousarray(P_full[:, support])
    L = P.shape[1]
    W = np.ones((1, J)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    B = W.shape[0]
    wsum = W.sum(axis=1, keepdims=True)
    if start is None:
        p = np.full((B, L), 1.0 / L)
    else:
        p = np.tile(np.asarray(start, float)[support], (B, 1))
    p /= p.sum(axis=1, keepdims=True)
    iterations = np.zeros(B, dtype=np.int64)
    converged = np.zeros(B, dtype=bool)
    active = np.arange(B)
    prev = np.full(B, -np.inf)
    max_iter = int(max_iter)
    while active.size:
        pa, Wa, wa = p[active], W[active], wsum[active]
        if accelerate and iterations[active[0]] + 3 <= max_iter:
            p1, ll0 = _em_map(pa, P, Wa, wa)
            p2, ll1 = _em_map(p1, P, Wa, wa)
            r = p1 - pa
            v = p2 - p1 - r
            rn = np.sqrt(np.sum(r**2, axis=1))
            vn = np.sqrt(np.sum(v**2, axis=1))
            with np.errstate(invalid="ignore", divide="ignore"):
                alpha = np.where(vn > 0, -rn / vn, -1.0)
            alpha = np.minimum(alpha, -1.0)[:, None]
            trial = pa - 2 * alpha * r + alpha**2 * v
            trial[trial < _WEIGHT_FLOOR] = 0.0
            trial /= np.maximum(trial.sum(axis=1, keepdims=True), np.finfo(float).tiny)
            p3, ll3 = _em_map(trial, P, Wa, wa)
            worse = ~(ll3 >= ll1)  # extrapolation failed: keep the plain EM step
            new = np.where(worse[:, None], p2, p3)
            ll = np.where(worse, ll1, ll3)
            iterations[active] += 3
        else:
            new, ll = _em_map(pa, P, Wa, wa)
            iterations[active] += 1
        p[active] = new
        done = (ll - prev[active] < tol) & np.isfinite(prev[active])
        prev[active] = ll
        converged[active[done]] = True
        active = active[~done & (iterations[active] < max_iter)]
    p /= p.sum(axis=1, keepdims=True)
    full = np.zeros((B, L_full))
    full[:, support] = p
    return full, iterations, converged


def walker_distribution(
    mean_sq_step_um2,
    n_steps,
    *,
    frame_interval_s: float,
    temperature_K: float,
    viscosity_Pa_s: float,
    ndim: int = 2,
    sigma_um: float = 0.0,
    R: float = 0.0,
    grid_nm: np.ndarray | None = None,
    max_iter: int = 2000,
    tol: float = 1e-6,
    n_pairs=None,
) -> pd.DataFrame:
    """Number-weighted size distribution by Walker's maximum-likelihood EM.

    Parameters
    ----------
    mean_sq_step_um2 : array (J,)
        Per track, the mean over its k_j single-frame steps of the squared
        displacement (summed over axes), µm².
    n_steps : array (J,)
        k_j.
    frame_interval_s, temperature_K, viscosity_Pa_s : float
    ndim : int
        2 or 3 (axes the displacements were summed over).
    sigma_um : float
        Localization error per axis, µm.
    R : float
        Motion-blur factor.
    grid_nm : array, optional
        Diameter grid (default: ``SIZE_DEFAULTS``' 200 log-spaced points over 10–3000 nm).
    max_iter, tol : EM stopping (see :func:`walker_em`).
    n_pairs : array (J,), optional
        See :func:`walker_likelihood`.

    Returns
    -------
    DataFrame ``diameter_nm, weight`` (weights sum to 1), with
    ``attrs`` ``iterations``, ``converged``, ``log_likelihood``.

    References
    ----------
    Walker, J. G. (2012) Meas. Sci. Technol. 23:065605.
    """
    grid = (
        _diameter_grid(SIZE_DEFAULTS["grid_min_nm"], SIZE_DEFAULTS["grid_max_nm"], SIZE_DEFAULTS["grid_points"])
        if grid_nm is None
        else np.asarray(grid_nm, dtype=float)
    )
    m = np.asarray(mean_sq_step_um2, dtype=float)
    k = np.asarray(n_steps, dtype=float)
    if m.shape != k.shape:
        raise ValueError(f"mean_sq_step_um2 and n_steps differ in length ({m.shape} vs {k.shape})")
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim}")
    bad = ~(np.isfinite(m) & (m > 0) & np.isfinite(k) & (k >= 1))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} track(s) have no usable mean squared step (m > 0 and k >= 1 needed)"
        )
    if m.size == 0:
        out = pd.DataFrame({"diameter_nm": grid, "weight": np.full(grid.size, np.nan)})
        out.attrs.update(iterations=0, converged=False, log_likelihood=float("nan"))
        return out
    P = walker_likelihood(
        m, k, frame_interval_s=frame_interval_s, temperature_K=temperature_K,
        viscosity_Pa_s=viscosity_Pa_s, grid_nm=grid, ndim=ndim, sigma_um=sigma_um, R=R, n_pairs=n_pairs,
    )
    p, it, conv = walker_em(P, max_iter=max_iter, tol=tol)
    ll = float(np.mean(np.log(np.maximum(P @ p[0], np.finfo(float).tiny))))
    out = pd.DataFrame({"diameter_nm": grid, "weight": p[0]})
    out.attrs.update(iterations=int(it[0]), converged=bool(conv[0]), log_likelihood=ll)
    return out


# ---------------------------------------------------------------------------
# distribution figures
# ---------------------------------------------------------------------------

_FIGURES = ("mean", "mode", "sd", "d10", "d50", "d90")


def _grid_density(grid_nm: np.ndarray, weights: np.ndarray, smooth: float) -> np.ndarray:
    """Number density per nm (up to a constant) of weights on a log grid,
    smoothed with a Gaussian of ``smooth`` grid steps (EM solutions are
    spiky); cells of equal width in log d are d·Δu wide in nm."""
    w = np.asarray(weights, dtype=float)
    if smooth > 0:
        half = int(math.ceil(4 * smooth))
        kern = np.exp(-0.5 * (np.arange(-half, half + 1) / smooth) ** 2)
        w = np.convolve(np.pad(w, half, mode="constant"), kern / kern.sum(), mode="valid")
    return w / np.asarray(grid_nm, dtype=float)


def _kde_density(diameters_nm: np.ndarray, n_points: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian kernel density of log d (Silverman's bandwidth), returned per
    nm on a grid of diameters: ``(grid_nm, density)``."""
    u = np.log(diameters_nm)
    iqr = np.subtract(*np.percentile(u, [75, 25]))
    h = 0.9 * min(u.std(ddof=1), iqr / 1.34 if iqr > 0 else np.inf) * u.size ** (-0.2)
    x = np.linspace(u.min() - 3 * h, u.max() + 3 * h, n_points)
    kde = np.zeros_like(x)
    for chunk in np.array_split(u, max(1, u.size // 2000)):
        kde += np.exp(-0.5 * ((x[:, None] - chunk[None, :]) / h) ** 2).sum(axis=1)
    kde /= u.size * h * np.sqrt(2 * np.pi)
    return np.exp(x), kde / np.exp(x)


def _grid_mode(grid_nm: np.ndarray, weights: np.ndarray, smooth: float) -> float:
    """Mode of the number density per nm of weights on a log grid (see
    :func:`_grid_density`), refined by a parabola through its neighbours in
    log d."""
    w = np.asarray(weights, dtype=float)
    if not np.isfinite(w).all() or w.sum() <= 0:
        return float("nan")
    u = np.log(grid_nm)
    dens = _grid_density(grid_nm, w, smooth)
    i = int(np.argmax(dens))
    if 0 < i < len(dens) - 1:
        y0, y1, y2 = np.log(np.maximum(dens[i - 1 : i + 2], 1e-300))
        denom = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
        return float(np.exp(u[i] + np.clip(shift, -1, 1) * (u[1] - u[0])))
    return float(grid_nm[i])


def _grid_quantiles(grid_nm, weights, qs) -> np.ndarray:
    """Quantiles of weights on a log grid, each weight spread uniformly in
    log d over its cell."""
    u = np.log(grid_nm)
    du = u[1] - u[0]
    edges = np.r_[u - du / 2, u[-1] + du / 2]
    cdf = np.r_[0.0, np.cumsum(weights)]
    cdf /= cdf[-1]
    return np.exp(np.interp(qs, cdf, edges))


def distribution_figures(
    *, grid_nm=None, weights=None, diameters_nm=None, smooth: float = 1.5
) -> dict[str, float]:
    """Mean, mode, SD, D10, D50, D90 (nm) of a number distribution.

    Give either ``grid_nm`` with ``weights`` (a gridded distribution such as
    Walker's) or ``diameters_nm`` (one value per track: the naive estimate,
    whose mode is the peak of a Gaussian kernel density in log d with
    Silverman's bandwidth, taken per nm).
    """
    out = {k: float("nan") for k in _FIGURES}
    if diameters_nm is not None:
        d = np.asarray(diameters_nm, dtype=float)
        d = d[np.isfinite(d) & (d > 0)]
        if d.size == 0:
            return out
        out["mean"] = float(d.mean())
        out["sd"] = float(d.std(ddof=1)) if d.size > 1 else float("nan")
        out["d10"], out["d50"], out["d90"] = (float(v) for v in np.percentile(d, [10, 50, 90]))
        if d.size > 1 and np.log(d).std() > 0:
            x, dens = _kde_density(d)
            out["mode"] = float(x[np.argmax(dens)])
        else:
            out["mode"] = float(d[0])
        return out
    grid = np.asarray(grid_nm, dtype=float)
    w = np.asarray(weights, dtype=float)
    if w.size == 0 or not np.isfinite(w).all() or w.sum() <= 0:
        return out
    w = w / w.sum()
    mean = float(np.sum(w * grid))
    out["mean"] = mean
    out["sd"] = float(np.sqrt(np.sum(w * (grid - mean) ** 2)))
    out["d10"], out["d50"], out["d90"] = (float(v) for v in _grid_quantiles(grid, w, [0.1, 0.5, 0.9]))
    out["mode"] = _grid_mode(grid, w, smooth)
    return out


def distribution_peaks(
    *, grid_nm=None, weights=None, diameters_nm=None, smooth: float = 1.5,
    min_height: float = 0.1, min_prominence: float = 0.05,
) -> np.ndarray:
    """Diameters (nm) of the peaks of a number distribution, highest first.

    The density per nm is the one whose maximum :func:`distribution_figures`
    reports as the mode: for a gridded distribution (``grid_nm``,
    ``weights``) the weights smoothed by ``smooth`` grid steps, for per-track
    diameters (``diameters_nm``) a kernel density in log d. A peak must reach
    ``min_height`` of the highest and stand out by ``min_prominence`` of it.
    """
    from scipy.signal import find_peaks

    if diameters_nm is not None:
        d = np.asarray(diameters_nm, dtype=float)
        d = d[np.isfinite(d) & (d > 0)]
        if d.size < 2:
            return d
        x, dens = _kde_density(d)
    else:
        x = np.asarray(grid_nm, dtype=float)
        w = np.asarray(weights, dtype=float)
        if not np.isfinite(w).all() or w.sum() <= 0:
            return np.zeros(0)
        dens = _grid_density(x, w, smooth)
    top = dens.max()
    padded = np.r_[0.0, dens, 0.0]  # a peak at either end of the range counts
    idx, props = find_peaks(padded, height=min_height * top, prominence=min_prominence * top)
    order = np.argsort(props["peak_heights"])[::-1]
    return x[idx[order] - 1]


def _binned(grid_nm, weights, diameters_nm, n_bins: int):
    """The export histogram: ``n_bins`` log-spaced bins over the grid's cells;
    Walker weights spread over their cells, naive diameters counted."""
    u = np.log(grid_nm)
    du = u[1] - u[0]
    lo, hi = u[0] - du / 2, u[-1] + du / 2
    edges_u = np.linspace(lo, hi, n_bins + 1)
    cell_edges = np.r_[u - du / 2, u[-1] + du / 2]
    w = np.asarray(weights, dtype=float)
    if np.isfinite(w).all() and w.sum() > 0:
        cdf = np.r_[0.0, np.cumsum(w / w.sum())]
        walker = np.diff(np.interp(edges_u, cell_edges, cdf))
    else:
        walker = np.full(n_bins, np.nan)
    d = np.asarray(diameters_nm, dtype=float)
    d = d[np.isfinite(d) & (d > 0)]
    counts, _ = np.histogram(np.log(d), bins=edges_u)
    outside = int(d.size - counts.sum())
    edges = np.exp(edges_u)
    return edges, walker, counts, outside


# ---------------------------------------------------------------------------
# the whole stage on one table
# ---------------------------------------------------------------------------


def _resolve_viscosity(temperature_K: float, viscosity_Pa_s: float | None) -> tuple[float, str]:
    if viscosity_Pa_s is not None:
        return float(viscosity_Pa_s), "given"
    try:
        return float(water_viscosity(temperature_K)), "water (Vogel equation) at temperature_K"
    except ValueError as exc:
        raise ValueError(f"trackflow.viscosity_Pa_s is not set and {exc}") from None


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
        The ``size`` section (:data:`SIZE_DEFAULTS`); ``temperature_K`` and
        ``viscosity_Pa_s`` there are ignored here (already resolved).

    Returns
    -------
    sizes : DataFrame
        One row per valid track (see :func:`track_diffusion`) plus
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
        The run's figures (see :func:`run`).
    """
    params = dict(params)
    params.pop("temperature_K", None)
    params.pop("viscosity_Pa_s", None)
    p = check_params(params)
    dt = _check_interval(frame_interval_s)
    if temperature_K is None:
        raise ValueError(
            "temperature is unknown: set 'trackflow.temperature_K' in the movie or size.temperature_K"
        )
    T = float(temperature_K)
    if not math.isfinite(T) or T <= 0:
        raise ValueError(f"trackflow.temperature_K must be a positive temperature in K, got {temperature_K!r}")
    eta, eta_source = _resolve_viscosity(T, viscosity_Pa_s)
    if not math.isfinite(eta) or eta <= 0:
        raise ValueError(f"trackflow.viscosity_Pa_s must be positive, got {viscosity_Pa_s!r}")
    R = blur_factor(exposure_s, dt)
    notes: list[str] = []

    sizes = track_diffusion(
        tracks, pixel_size_um=pixel_size_um, frame_interval_s=dt, exposure_s=exposure_s,
        method=p["method"], sigma_um=p["sigma_um"], min_steps=p["min_steps"],
        subtract_flow=p["subtract_flow"],
    )
    info = dict(sizes.attrs)
    ndim = len(position_columns(tracks))
    sizes["diameter_nm"] = stokes_einstein_diameter(sizes["D_um2_s"].to_numpy(), T, eta)
    n_in = int(info["n_tracks_in"])
    n_short = n_in - len(sizes)
    if n_short:
        notes.append(f"{n_short} of {n_in} tracks have fewer than {p['min_steps']} single-frame steps")

    # localization error for the Walker likelihood
    if p["sigma_um"] is not None:
        sigma, sigma_source = float(p["sigma_um"]), "given (size.sigma_um)"
    else:
        # the median of the per-track estimates: each is unbiased for white
        # Gaussian noise, and the median keeps a few outlying localizations
        # (overlaps, mislinks) from inflating the offset of every track
        s2 = sizes["sigma2_um2"].to_numpy()
        s2 = s2[np.isfinite(s2)]
        sigma = math.sqrt(max(float(np.median(s2)), 0.0)) if s2.size else 0.0
        sigma_source = f"estimated ({p['method']}, median over tracks)"

    grid = _diameter_grid(p["grid_min_nm"], p["grid_max_nm"], p["grid_points"])
    m = sizes["mean_sq_step_um2"].to_numpy()
    k = sizes["n_steps"].to_numpy()
    usable = np.isfinite(m) & (m > 0)
    if (~usable).any():
        notes.append(f"{int((~usable).sum())} tracks did not move (zero squared steps): left out of the EM")
    walker_kw = dict(
        frame_interval_s=dt, temperature_K=T, viscosity_Pa_s=eta, grid_nm=grid, ndim=ndim,
        sigma_um=sigma, R=R,
    )
    mode_ci = d50_ci = None
    posterior = np.full(len(sizes), np.nan)
    if usable.any():
        P = walker_likelihood(m[usable], k[usable], n_pairs=sizes["n_pairs"].to_numpy()[usable], **walker_kw)
        pw, it, conv = walker_em(P, max_iter=p["max_iter"], tol=p["tol"])
        weights = pw[0]
        iterations, converged = int(it[0]), bool(conv[0])
        joint = P * weights[None, :]
        posterior[usable] = (joint @ grid) / joint.sum(axis=1)
        if p["n_bootstrap"] > 0 and usable.sum() > 1:
            rng = np.random.default_rng(p["seed"])
            J = int(usable.sum())
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
            modes = np.array([_grid_mode(grid, row, 1.5) for row in pb])
            d50s = np.array([_grid_quantiles(grid, row, [0.5])[0] for row in pb])
            mode_ci = [float(v) for v in np.nanpercentile(modes, [2.5, 97.5])]
            d50_ci = [float(v) for v in np.nanpercentile(d50s, [2.5, 97.5])]
        if not converged:
            notes.append(f"Walker EM stopped at size.max_iter={p['max_iter']} before reaching size.tol")
    else:
        weights = np.full(grid.size, np.nan)
        iterations, converged = 0, False
        notes.append("no valid tracks: no size distribution")
    sizes["posterior_diameter_nm"] = posterior

    walker = distribution_figures(grid_nm=grid, weights=weights)
    naive_d = sizes["diameter_nm"].to_numpy()
    naive = distribution_figures(diameters_nm=naive_d)
    walker_peaks = distribution_peaks(grid_nm=grid, weights=weights)[:5]
    naive_peaks = distribution_peaks(diameters_nm=naive_d)[:5]
    n_no_size = int(np.sum(~(np.isfinite(naive_d) & (naive_d > 0))))
    if n_no_size:
        notes.append(f"{n_no_size} tracks have D <= 0 or undefined: left out of the naive histogram")

    # particles per frame and concentration
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

    edges, walker_frac, naive_counts, outside = _binned(grid, weights, naive_d, p["histogram_bins"])
    if outside:
        notes.append(f"{outside} naive per-track diameters fall outside the grid range")
    width = np.diff(edges)
    n_valid = int(usable.sum())
    naive_total = max(int(naive_counts.sum()), 1)
    distribution = pd.DataFrame(
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

    emsd = ensemble_msd(
        tracks, pixel_size_um=pixel_size_um, frame_interval_s=dt, max_lag=p["msd_max_lag"],
        subtract_flow=p["subtract_flow"],
    )
    n_pl, A_pl = fit_powerlaw(emsd["lagt_s"], emsd["msd_um2"])

    summary: dict[str, Any] = {}
    for name, figs in (("walker", walker), ("naive", naive)):
        for key in _FIGURES:
            summary[f"{name}_{key}_nm"] = figs[key]
    # headline figures (Walker's), under the names NTA users look for
    for key in _FIGURES:
        summary[f"{key}_nm"] = walker[key]
    summary.update(
        {
            "walker_peaks_nm": [float(v) for v in walker_peaks],
            "naive_peaks_nm": [float(v) for v in naive_peaks],
            "mode_ci_nm": mode_ci,
            "d50_ci_nm": d50_ci,
            "ci_level": 0.95,
            "n_bootstrap": p["n_bootstrap"],
            "n_tracks": n_valid,
            "n_tracks_in": n_in,
            "n_tracks_short": n_short,
            "n_tracks_naive": int(len(naive_d) - n_no_size),
            "particles_per_frame": ppf,
            "n_frames": int(n_frames),
            "concentration_per_ml": concentration,
            "depth_um": depth,
            "dilution": p["dilution"],
            "field_of_view_um2": field_of_view_um2,
            "temperature_K": T,
            "viscosity_Pa_s": eta,
            "viscosity_source": eta_source,
            "frame_interval_s": dt,
            "exposure_s": exposure_s,
            "blur_R": R,
            "ndim": ndim,
            "pixel_size_um": [float(v) for v in _pixel_sizes(pixel_size_um, ndim)],
            "method": p["method"],
            "sigma_um": sigma,
            "sigma_source": sigma_source,
            "motion_correction": info["motion"],
            "motion_columns": info["motion_columns"],
            "steps_missing_flow": info["steps_missing_flow"],
            "walker_iterations": iterations,
            "walker_converged": converged,
            "msd_powerlaw_n": n_pl,
            "msd_powerlaw_A": A_pl,
            "emsd": [
                {"lagt_s": float(t), "msd_um2": float(v)}
                for t, v in zip(emsd["lagt_s"], emsd["msd_um2"])
            ],
            "notes": notes,
            "trackflow_version": __version__,
            "params": p,
        }
    )
    return sizes, distribution, summary


# ---------------------------------------------------------------------------
# replicates
# ---------------------------------------------------------------------------

_MERGE_COLUMNS = (
    "walker_fraction", "walker_density", "walker_count", "naive_count", "naive_fraction",
    "naive_density", "concentration_per_ml",
)


def merge_replicates(
    distributions: list[pd.DataFrame], summaries: list[dict]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Merge replicate runs as NTA instruments do: per bin and per figure,
    the mean over runs and its standard error (SD/√n, NaN for one run).

    Parameters
    ----------
    distributions : list of DataFrame
        Each run's ``distribution.csv``; the bins (``diameter_nm``) must agree.
    summaries : list of dict
        Each run's ``summary.json``.

    Returns
    -------
    merged : DataFrame
        ``diameter_nm, bin_lo_nm, bin_hi_nm`` and, for each value column, its
        mean and ``<column>_sem``.
    summary : dict
        Each numeric figure's mean and ``<key>_sem``, plus ``n_replicates``,
        ``n_tracks_total``, the per-run figures under ``replicates`` and the
        merged distribution's own figures (``merged_walker_*``).
    """
    if not distributions or len(distributions) != len(summaries):
        raise ValueError(
            f"merge_replicates needs one summary per distribution, got {len(distributions)} "
            f"distributions and {len(summaries)} summaries"
        )
    ref = distributions[0]
    if "diameter_nm" not in ref.columns:
        raise ValueError("distribution lacks column 'diameter_nm'")
    for i, d in enumerate(distributions[1:], start=1):
        if "diameter_nm" not in d.columns or len(d) != len(ref) or not np.allclose(
            d["diameter_nm"].to_numpy(float), ref["diameter_nm"].to_numpy(float), rtol=1e-9
        ):
            raise ValueError(
                f"replicate {i} has different size bins from replicate 0 (diameter_nm): "
                "size them with the same grid_min_nm, grid_max_nm, grid_points and histogram_bins"
            )
    n = len(distributions)
    merged = ref[[c for c in ("diameter_nm", "bin_lo_nm", "bin_hi_nm") if c in ref.columns]].copy()
    for col in _MERGE_COLUMNS:
        if not all(col in d.columns for d in distributions):
            continue
        stack = np.vstack([d[col].to_numpy(dtype=float) for d in distributions])
        with np.errstate(invalid="ignore"):
            merged[col] = np.nanmean(stack, axis=0) if np.isfinite(stack).any() else np.nan
            merged[f"{col}_sem"] = (
                np.nanstd(stack, axis=0, ddof=1) / np.sqrt(np.isfinite(stack).sum(axis=0)) if n > 1 else np.nan
            )
    out: dict[str, Any] = {"n_replicates": n}
    keys = [k for k, v in summaries[0].items() if _is_number(v)]
    for key in keys:
        vals = np.array([float(s[key]) if _is_number(s.get(key)) else np.nan for s in summaries])
        ok = np.isfinite(vals)
        out[key] = float(vals[ok].mean()) if ok.any() else None
        out[f"{key}_sem"] = float(vals[ok].std(ddof=1) / math.sqrt(ok.sum())) if ok.sum() > 1 else None
    out["n_tracks_total"] = int(sum(int(s.get("n_tracks") or 0) for s in summaries))
    if "walker_fraction" in merged.columns:
        grid = merged["diameter_nm"].to_numpy(float)
        figs = distribution_figures(grid_nm=grid, weights=merged["walker_fraction"].to_numpy(float), smooth=0)
        for key in _FIGURES:
            out[f"merged_walker_{key}_nm"] = figs[key]
    for key in ("temperature_K", "viscosity_Pa_s", "viscosity_source", "method", "depth_um"):
        values = {json.dumps(s.get(key)) for s in summaries}
        if len(values) > 1:
            out.setdefault("notes", []).append(f"replicates differ in {key}")
    out["replicates"] = [
        {k: s.get(k) for k in ("run", "walker_mode_nm", "walker_d50_nm", "n_tracks", "concentration_per_ml")}
        for s in summaries
    ]
    out["trackflow_version"] = __version__
    return merged, out


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def _write_json(obj: Mapping, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
    return path


def _write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return path


def _number_or_none(value, key: str):
    if value is None:
        return None
    if not _is_number(value):
        raise ValueError(f"movie metadata 'trackflow.{key}' must be a number, got {value!r}")
    return float(value)


def run(
    tracks: str | os.PathLike,
    movie: str | os.PathLike,
    sizes: str | os.PathLike,
    distribution: str | os.PathLike,
    summary: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    summary_csv: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The size stage on files: ``tracks.parquet`` + movie store ->
    ``sizes.parquet``, ``distribution.csv``, ``summary.json``.

    Conditions come from the movie's metadata: pixel size per axis, frame
    interval, ``trackflow.exposure_s``, ``trackflow.temperature_K``,
    ``trackflow.viscosity_Pa_s``; the config's ``temperature_K`` and
    ``viscosity_Pa_s`` override them (viscosity falls back to water at T).
    Dropped frames are left out of the particles-per-frame average.

    Returns the summary dict (also written to ``summary``): the Walker and
    naive ``*_mean_nm, *_mode_nm, *_sd_nm, *_d10_nm, *_d50_nm, *_d90_nm``,
    ``mode_ci_nm``, ``d50_ci_nm`` (bootstrap 95 % intervals), ``n_tracks``,
    ``particles_per_frame``, ``concentration_per_ml``, ``depth_um``,
    ``temperature_K``, ``viscosity_Pa_s``, ``viscosity_source``,
    ``frame_interval_s``, ``exposure_s``, ``blur_R``, ``msd_powerlaw_n``,
    ``msd_powerlaw_A``, ``emsd``, ``trackflow_version``, ``params`` and more.
    ``summary_csv``, when given, also gets the headline figures as a one-row
    CSV in the layout of an NTA instrument's export (:func:`summary_row`).
    """
    p = check_params(params)
    table = read_table(tracks, required=("frame", "y", "x", "particle"), stage="link")
    mov = open_movie(movie)
    pos = position_columns(table)
    if len(pos) != mov.ndim:
        raise ValueError(
            f"{tracks} has {len(pos)}D positions {pos} but movie {movie} is {mov.ndim}D"
        )
    try:
        dt = _check_interval(mov.frame_interval_s)
    except ValueError as exc:
        raise ValueError(f"{movie}: {exc}") from None
    attr_dt = mov.attrs.get("frame_interval_s", dt)
    if attr_dt is not None and _is_number(attr_dt) and not float(attr_dt) > 0:
        raise ValueError(f"{movie}: 'trackflow.frame_interval_s' must be positive, got {attr_dt!r}")
    exposure = _number_or_none(mov.metadata("exposure_s"), "exposure_s")
    if exposure is None:
        log.warning("%s: no 'trackflow.exposure_s'; assuming no motion blur (R = 0)", movie)
    if p["temperature_K"] is not None:
        T, t_source = p["temperature_K"], "config (size.temperature_K)"
    else:
        T = _number_or_none(mov.metadata("temperature_K"), "temperature_K")
        t_source = "movie"
        if T is None:
            raise ValueError(
                f"{movie}: acquisition metadata key 'trackflow.temperature_K' is missing "
                "(set size.temperature_K in the config to give it)"
            )
    if p["viscosity_Pa_s"] is not None:
        eta, eta_source = p["viscosity_Pa_s"], "config (size.viscosity_Pa_s)"
    else:
        eta = _number_or_none(mov.metadata("viscosity_Pa_s"), "viscosity_Pa_s")
        eta_source = "movie" if eta is not None else None
    dropped = set(int(i) for i in mov.dropped_frames)
    n_frames = len(mov) - len([i for i in dropped if 0 <= i < len(mov)])
    spatial = mov.frame_shape[-2:]
    px = mov.pixel_size_um
    fov = float(spatial[0] * px[-2] * spatial[1] * px[-1])
    depth_p = {k: v for k, v in p.items() if k not in ("temperature_K", "viscosity_Pa_s")}
    if mov.ndim == 3 and p["depth_um"] is None:
        depth_p["depth_um"] = float(mov.frame_shape[0] * px[0])
    sizes_df, dist_df, summ = size_tracks(
        table, pixel_size_um=px, frame_interval_s=dt, exposure_s=exposure, temperature_K=T,
        viscosity_Pa_s=eta, field_of_view_um2=fov, n_frames=n_frames, **depth_p,
    )
    if eta_source is not None:
        summ["viscosity_source"] = eta_source
    summ["temperature_source"] = t_source
    if mov.ndim == 3 and p["depth_um"] is None:
        summ["depth_source"] = "the movie's z extent"
        summ["notes"] = [n for n in summ["notes"] if not n.startswith("concentration not computed")]
    else:
        summ["depth_source"] = "config (size.depth_um)" if p["depth_um"] is not None else None
    summ["params"] = p
    summ["run"] = Path(summary).parent.name
    summ["movie"] = str(movie)
    summ["dropped_frames"] = len(dropped)
    for note in summ["notes"]:
        log.warning("size %s: %s", tracks, note)
    write_table(
        sizes_df, sizes, stage="size", params=p,
        extra={
            "inputs": {"tracks": str(tracks), "movie": str(movie)},
            "n_tracks": summ["n_tracks"],
            "n_tracks_in": summ["n_tracks_in"],
            "n_tracks_short": summ["n_tracks_short"],
            "temperature_K": summ["temperature_K"],
            "viscosity_Pa_s": summ["viscosity_Pa_s"],
        },
    )
    _write_csv(dist_df, distribution)
    _write_json(summ, summary)
    if summary_csv is not None:
        _write_csv(pd.DataFrame([summary_row(summ)]), summary_csv)
    return jsonable(summ)


def run_group(
    group: str,
    distributions: Sequence[str | os.PathLike],
    summaries: Sequence[str | os.PathLike],
    distribution: str | os.PathLike,
    summary: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    summary_csv: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Merge the replicate runs of ``group`` (their ``distribution.csv`` and
    ``summary.json``, in matching order) into the group's distribution (mean
    and standard error per bin) and summary (mean and standard error per
    figure). ``params`` is the ``size`` section (validated, recorded).
    ``summary_csv``, when given, gets one row per run and a last row for the
    group (mean and standard error), in the layout of :func:`summary_row`."""
    p = check_params(params)
    distributions, summaries = list(distributions), list(summaries)
    if len(distributions) != len(summaries):
        raise ValueError(
            f"group {group!r}: {len(distributions)} distributions but {len(summaries)} summaries"
        )
    if not distributions:
        raise ValueError(f"group {group!r} has no runs")
    dists = [read_distribution(d) for d in distributions]
    summs = []
    for path in summaries:
        s = read_summary(path)
        s.setdefault("run", Path(path).parent.name)
        summs.append(s)
    try:
        merged, out = merge_replicates(dists, summs)
    except ValueError as exc:
        raise ValueError(f"group {group!r}: {exc}") from None
    out = {"group": group, **out, "runs": [s["run"] for s in summs], "params": p}
    _write_csv(merged, distribution)
    _write_json(out, summary)
    if summary_csv is not None:
        rows = [summary_row(s) for s in summs] + [summary_row(out, name=f"{group} (mean)")]
        sem = {k[: -len("_sem")]: v for k, v in out.items() if k.endswith("_sem")}
        rows.append(summary_row(sem, name=f"{group} (standard error)"))
        _write_csv(pd.DataFrame(rows), summary_csv)
    return jsonable(out)


#: summary.json keys -> the column names of :func:`summary_row`
_SUMMARY_COLUMNS = {
    "walker_mean_nm": "Mean (nm)",
    "walker_mode_nm": "Mode (nm)",
    "walker_sd_nm": "SD (nm)",
    "walker_d10_nm": "D10 (nm)",
    "walker_d50_nm": "D50 (nm)",
    "walker_d90_nm": "D90 (nm)",
    "naive_mean_nm": "Per-track mean (nm)",
    "naive_mode_nm": "Per-track mode (nm)",
    "naive_sd_nm": "Per-track SD (nm)",
    "naive_d50_nm": "Per-track D50 (nm)",
    "concentration_per_ml": "Concentration (particles/mL)",
    "particles_per_frame": "Particles per frame",
    "n_tracks": "Valid tracks",
    "temperature_K": "Temperature (K)",
    "viscosity_Pa_s": "Viscosity (Pa s)",
    "depth_um": "Depth of field (um)",
    "dilution": "Dilution",
    "frame_interval_s": "Frame interval (s)",
    "exposure_s": "Exposure (s)",
    "sigma_um": "Localization error (um)",
}


def summary_row(summary: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The headline figures of a ``summary.json`` as one flat row with the
    column names NTA users know (Mean, Mode, SD, D10, D50, D90 of the
    Walker distribution, the per-track figures beside them, concentration,
    particles per frame, valid tracks, temperature, viscosity, ...) and the
    bootstrap intervals of the mode and D50."""
    row: dict[str, Any] = {"Sample": name if name is not None else summary.get("group") or summary.get("run")}
    for key, column in _SUMMARY_COLUMNS.items():
        value = summary.get(key)
        row[column] = value if _is_number(value) else None
    for key, label in (("mode_ci_nm", "Mode"), ("d50_ci_nm", "D50")):
        ci = summary.get(key)
        lo, hi = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        row[f"{label} 95% CI low (nm)"] = lo
        row[f"{label} 95% CI high (nm)"] = hi
    return row
