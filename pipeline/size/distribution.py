"""Figures of a number size distribution, gridded (Walker's) or per track
(the naive histogram): mean, mode, SD, D10, D50, D90, the peaks, and the
binned export of ``distribution.csv``."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FIGURES", "distribution_figures", "distribution_peaks", "grid_mode", "grid_quantiles", "binned"]

#: the figures of a distribution, as in summary.json's ``<estimate>_<figure>_nm``
FIGURES = ("mean", "mode", "sd", "d10", "d50", "d90")


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


def grid_mode(grid_nm: np.ndarray, weights: np.ndarray, smooth: float) -> float:
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


def grid_quantiles(grid_nm, weights, qs) -> np.ndarray:
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
    out = {k: float("nan") for k in FIGURES}
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
    out["d10"], out["d50"], out["d90"] = (float(v) for v in grid_quantiles(grid, w, [0.1, 0.5, 0.9]))
    out["mode"] = grid_mode(grid, w, smooth)
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


def binned(grid_nm, weights, diameters_nm, n_bins: int):
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
