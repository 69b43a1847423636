"""Positions and single-frame steps of all tracks at once, in µm, with the
flow or drift subtracted.

Flow and drift: when the table has ``flow_dy, flow_dx`` (and ``flow_dz`` in
3D) — the predicted displacement of each row to the next frame, in pixels,
as written by the flow linker — that displacement is subtracted from each
step. Otherwise, when it has ``drift_y, drift_x`` (and ``drift_z``) — the
cumulative drift at each row, in pixels, as the nearest linker may write —
the drift difference between the two rows of a step is subtracted. Flow
columns win when both are present (the flow already carries the drift).
Nothing is subtracted with ``subtract_flow: false``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..io.schema import section_defaults
from ..io.tables import drift_columns, flow_columns, position_columns
from .conditions import pixel_sizes

__all__ = ["track_steps", "outlier_steps"]

#: The ``size`` section\'s defaults (workflow/schemas/size.schema.yaml), for keyword defaults.
_DEFAULTS = section_defaults("size")


def _motion_columns(tracks: pd.DataFrame, pos: list[str], subtract_flow: bool) -> tuple[str, list[str]]:
    """Which columns correct the motion: ("flow", [...]), ("drift", [...]) or ("none", [])."""
    if not subtract_flow:
        return "none", []
    for kind, cols in (("flow", flow_columns(pos)), ("drift", drift_columns(pos))):
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
    tracks: pd.DataFrame,
    *,
    pixel_size_um,
    subtract_flow: bool = _DEFAULTS["subtract_flow"],
    outlier_p: float | None = None,
    remove_outliers: bool = False,
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
        Subtract the flow (or drift) from each step when the columns exist
        (default: ``size.subtract_flow``'s).
    outlier_p : float, optional
        Find the single-frame steps too long for the track's own diffusion
        (:func:`outlier_steps`, at this false-alarm probability per track).
    remove_outliers : bool
        Leave those steps out (``step_ok`` false, as a gap).

    Returns
    -------
    dict with
        ``particle`` (ids per row, sorted by particle then frame), ``frame``,
        ``code`` (track index per row), ``ids`` (unique particle ids),
        ``positions`` (n, ndim) µm, flow-corrected cumulatively along each
        track (for the MSD), ``steps`` (n, ndim) µm (row i to row i+1),
        ``step_ok`` (a single-frame step of one track with a finite
        correction), ``pair_ok`` (steps i and i+1 both ok), ``motion``
        ("flow", "drift" or "none"), ``motion_columns``, ``steps_missing_flow``,
        ``step_outlier`` (the outlier steps, left out with ``remove_outliers``).
    """
    if not isinstance(tracks, pd.DataFrame):
        raise ValueError(f"tracks must be a DataFrame, got {type(tracks).__name__}")
    pos = position_columns(tracks)
    missing = [c for c in ("frame", *pos, "particle") if c not in tracks.columns]
    if missing:
        raise ValueError(f"tracks table lacks column(s) {missing}")
    ndim = len(pos)
    px = pixel_sizes(pixel_size_um, ndim)
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
    step_outlier = np.zeros_like(step_ok)
    if outlier_p is not None:
        step_outlier = outlier_steps(steps, step_ok, code[:-1], ndim, outlier_p)
        if remove_outliers:
            step_ok = step_ok & ~step_outlier
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
        "step_outlier": step_outlier,
    }


def outlier_steps(steps: np.ndarray, step_ok: np.ndarray, step_track: np.ndarray, ndim: int,
                  p: float) -> np.ndarray:
    """Single-frame steps too long for one diffusion coefficient of their track.

    For free diffusion with Gaussian localization error, a step's squared
    length is v·χ²(ndim), v the per-axis variance of the track's steps.
    v is estimated robustly from the median of the track's squared steps
    (a jump to a neighbour or a failed localization does not move it), and
    a step is an outlier when its squared length exceeds the
    (1 − p/k) quantile of v·χ²(ndim), k the track's steps: a track of
    genuine Brownian steps loses a step with probability about ``p``. The
    rule is applied once (no iteration), so it removes isolated jumps, not
    the tail of a track whose diffusion changes slowly.

    Parameters
    ----------
    steps : array (n, ndim)
        Steps, µm.
    step_ok : bool array (n,)
        Which are single-frame steps of one track.
    step_track : int array (n,)
        Track index of each step.
    ndim : int
    p : float
        False-alarm probability per track, in (0, 1).

    Returns
    -------
    bool array (n,): the outlier steps (a subset of ``step_ok``).
    """
    out = np.zeros(len(steps), dtype=bool)
    if not step_ok.any():
        return out
    sq = np.sum(steps[step_ok] ** 2, axis=1)
    track = step_track[step_ok]
    order = np.argsort(track, kind="stable")
    bounds = np.r_[0, np.flatnonzero(np.diff(track[order])) + 1, len(order)]
    k = np.diff(bounds)
    medians = np.array([np.median(sq[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])])
    v = medians / stats.chi2.median(ndim)
    limit = v * stats.chi2.isf(p / k, ndim)
    per_step_limit = np.repeat(limit, k)[np.argsort(order, kind="stable")]
    out[np.flatnonzero(step_ok)] = sq > per_step_limit
    return out
