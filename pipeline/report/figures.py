"""The report's plots, as PNG data URIs (matplotlib's Agg canvas, no pyplot:
no GUI backend and no global figure state, so runs can render in threads)."""

from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

__all__ = ["size_distribution", "distribution_overlay", "tracks_over_frame", "features_per_frame", "ensemble_msd",
           "unit_area"]

_SIZE = (6.4, 3.6)


def _data_uri(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def unit_area(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y`` scaled so that its area over ``x`` is 1 (curves of counts,
    densities and probabilities then share one axis)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    area = np.trapezoid(y, x) if len(x) > 1 else float(np.sum(y))
    return y / area if area > 0 else y


def _log_diameter_axis(ax, lo: float, hi: float) -> None:
    """A log diameter axis with plain-number ticks (50, 100, 200, 500 nm):
    sizes spanning decades keep their peaks apart instead of squeezed into
    the left tenth of a linear axis."""
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("hydrodynamic diameter (nm, log scale)")
    ax.set_ylabel("probability density (1/nm)")


def _positive_range(arrays: Sequence[np.ndarray]) -> tuple[float, float] | None:
    values = np.concatenate([np.asarray(a, float).ravel() for a in arrays]) if arrays else np.array([])
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return None
    lo, hi = float(values.min()), float(values.max())
    return (lo / 1.1, hi * 1.1) if hi > lo else (lo / 2, hi * 2)


def size_distribution(
    curves: Mapping[str, pd.DataFrame],
    samples: Mapping[str, np.ndarray] | None = None,
    *,
    bins: int = 50,
    title: str = "",
) -> str | None:
    """Size distributions in one plot on a log diameter axis, each scaled to
    unit area (over diameter in nm).

    Parameters
    ----------
    curves : mapping label -> DataFrame
        Binned distributions: ``diameter_nm`` (bin centre) and one column of
        values (count, density, ...), drawn as lines.
    samples : mapping label -> array
        Diameters (nm), e.g. one per track, drawn as histograms of ``bins``
        log-spaced bins (positive diameters only).

    Returns
    -------
    str or None
        PNG data URI; None when there is nothing to draw.
    """
    samples = {k: np.asarray(v, float) for k, v in (samples or {}).items()}
    samples = {k: v[np.isfinite(v) & (v > 0)] for k, v in samples.items()}
    samples = {k: v for k, v in samples.items() if len(v)}
    curves = {k: v for k, v in curves.items() if len(v)}
    span = _positive_range([*samples.values(), *(c.iloc[:, 0].to_numpy(float) for c in curves.values())])
    if span is None:
        return None
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot()
    for label, values in samples.items():
        distinct = np.unique(values)
        if len(distinct) <= 5:  # e.g. a simulated mono- or bidisperse truth: a histogram would be spikes
            for value in distinct:
                ax.axvline(value, ls="--", color="0.3", label=f"{label}: {value:g} nm")
        else:
            edges = np.geomspace(distinct[0], distinct[-1], bins + 1)
            ax.hist(values, bins=edges, density=True, alpha=0.35, label=f"{label} (n={len(values)})")
    for label, curve in curves.items():
        x, y = curve.iloc[:, 0].to_numpy(float), curve.iloc[:, 1].to_numpy(float)
        keep = x > 0
        ax.plot(x[keep], unit_area(x[keep], y[keep]), lw=1.8, label=label)
    _log_diameter_axis(ax, *span)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _data_uri(fig)


def distribution_overlay(
    curves: Mapping[str, pd.DataFrame],
    bands: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    title: str = "",
) -> str | None:
    """Every run's distribution and every group's mean ± standard error band
    in one plot on a log diameter axis.

    Parameters
    ----------
    curves : mapping label -> DataFrame
        One per run: ``diameter_nm`` and one column of values, drawn as thin
        lines, scaled to unit area.
    bands : mapping label -> (diameter_nm, mean, standard error)
        One per group, already on a common scale: the mean as a thick line,
        mean ± standard error shaded.

    Returns
    -------
    str or None
        PNG data URI; None when there is nothing to draw.
    """
    curves = {k: v for k, v in curves.items() if len(v)}
    span = _positive_range([*(c.iloc[:, 0].to_numpy(float) for c in curves.values()),
                            *(b[0] for b in bands.values())])
    if span is None:
        return None
    fig = Figure(figsize=(8.0, 4.2))
    ax = fig.add_subplot()
    for label, curve in curves.items():
        x, y = curve.iloc[:, 0].to_numpy(float), curve.iloc[:, 1].to_numpy(float)
        keep = x > 0
        ax.plot(x[keep], unit_area(x[keep], y[keep]), lw=1.0, alpha=0.8, label=label)
    for label, (x, mean, sem) in bands.items():
        line, = ax.plot(x, mean, lw=2.4, label=f"{label} (mean ± s.e.)")
        ax.fill_between(x, mean - sem, mean + sem, color=line.get_color(), alpha=0.25, lw=0)
    _log_diameter_axis(ax, *span)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=2)
    return _data_uri(fig)


def tracks_over_frame(
    image: np.ndarray, tracks: Mapping[int, np.ndarray], *, frame: int, title: str = ""
) -> str | None:
    """One movie frame in grey with tracks drawn over it as lines.

    Parameters
    ----------
    image : 2D array
        The frame (a 3D one is shown as its maximum projection along z).
    tracks : mapping particle -> (n, 2) array
        Each track's (y, x) positions in pixels, in frame order.
    frame : int
        The frame's index, for the title.

    Returns
    -------
    str or None
        PNG data URI; None when the image is empty.
    """
    image = np.asarray(image, float)
    if image.ndim == 3:
        image = image.max(axis=0)
    if image.size == 0:
        return None
    lo, hi = np.percentile(image, [1, 99.5])
    height, width = image.shape
    fig = Figure(figsize=(6.4, 6.4 * height / width + 0.4))
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    for yx in tracks.values():
        ax.plot(yx[:, 1], yx[:, 0], lw=0.9, alpha=0.85)
    # the frame's extent, whatever the tracks span: this is a view of the frame
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title or f"frame {frame}", fontsize=10)
    return _data_uri(fig)


def features_per_frame(
    counts: Mapping[str, pd.Series], dropped: Sequence[int] = (), *, title: str = ""
) -> str | None:
    """Rows per frame of each table (index: frame), dropped frames marked."""
    counts = {k: v for k, v in counts.items() if v is not None and len(v)}
    if not counts:
        return None
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot()
    for label, series in counts.items():
        ax.plot(series.index, series.to_numpy(), lw=1.2, label=label)
    for i, frame in enumerate(dropped):
        ax.axvline(frame, color="tab:red", lw=0.8, alpha=0.6, label="dropped frame" if i == 0 else None)
    ax.set_xlabel("frame")
    ax.set_ylabel("features per frame")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _data_uri(fig)


def ensemble_msd(
    lagt_s: np.ndarray, msd_um2: np.ndarray, fit: tuple[float, float] | None = None, *, title: str = ""
) -> str | None:
    """Ensemble MSD on log-log axes with the power-law fit MSD = A·t^n."""
    lagt_s, msd_um2 = np.asarray(lagt_s, float), np.asarray(msd_um2, float)
    good = np.isfinite(lagt_s) & np.isfinite(msd_um2) & (lagt_s > 0) & (msd_um2 > 0)
    if not good.any():
        return None
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot()
    ax.loglog(lagt_s[good], msd_um2[good], "o", ms=3, label="ensemble MSD")
    if fit is not None and all(np.isfinite(fit)):
        n, A = fit
        t = np.geomspace(lagt_s[good].min(), lagt_s[good].max(), 50)
        ax.loglog(t, A * t**n, "-", lw=1.5, label=f"fit A·t^n: n = {n:.3g}, A = {A:.3g} µm²/s^n")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("lag time (s)")
    ax.set_ylabel("MSD (µm²)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _data_uri(fig)
