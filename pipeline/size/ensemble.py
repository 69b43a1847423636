"""The ensemble mean squared displacement of all tracks, as ``trackpy.emsd``,
and its power-law fit (anomalous exponent n, prefactor A)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..io.schema import section_defaults
from .conditions import check_interval
from .steps import track_steps

__all__ = ["ensemble_msd", "fit_powerlaw", "msd_slope_D"]

#: The ``size`` section\'s defaults (workflow/schemas/size.schema.yaml), for keyword defaults.
_DEFAULTS = section_defaults("size")


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
    max_lag: int = _DEFAULTS["msd_max_lag"],
    subtract_flow: bool = _DEFAULTS["subtract_flow"],
) -> pd.DataFrame:
    """Ensemble mean squared displacement, as ``trackpy.emsd``.

    Each track's time-averaged MSD (summed over axes, at exact frame lags, so
    gaps are respected) is weighted by its effective number of independent
    measurements (Qian et al. 1991), rescaled for gaps as trackpy does.
    Positions are flow/drift-corrected first when the table says how (see
    :mod:`pipeline.size.steps`); without such columns the result equals
    ``trackpy.emsd(tracks, mpp, fps, max_lag)``. ``max_lag`` (frames) and
    ``subtract_flow`` default to the ``size`` section's ``msd_max_lag`` and
    ``subtract_flow``.

    Returns
    -------
    DataFrame with ``lag, lagt_s, msd_um2, n_tracks`` (tracks contributing).
    """
    dt = check_interval(frame_interval_s)
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


def msd_slope_D(lagt_s, msd_um2, ndim: int, n_lags: int = 4) -> float:
    """D (µm²/s) from the slope of the first ``n_lags`` points of the
    ensemble MSD, MSD(t) = 2·ndim·D·t + offset: localization error and
    motion blur only move the offset (Michalet 2010), so the slope is a size
    estimate independent of both. NaN with fewer than two points.

    References
    ----------
    Michalet, X. (2010) Mean square displacement analysis of single-particle
    trajectories with localization error. Phys. Rev. E 82:041914.
    """
    t = np.asarray(lagt_s, dtype=float)[:n_lags]
    y = np.asarray(msd_um2, dtype=float)[:n_lags]
    ok = np.isfinite(t) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(stats.linregress(t[ok], y[ok]).slope / (2.0 * ndim))
