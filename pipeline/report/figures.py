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

__all__ = ["size_distribution", "features_per_frame", "ensemble_msd", "unit_area"]

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


def size_distribution(
    curves: Mapping[str, pd.DataFrame],
    samples: Mapping[str, np.ndarray] | None = None,
    *,
    bins: int = 50,
    title: str = "",
) -> str | None:
    """Size distributions in one plot, each scaled to unit area.

    Parameters
    ----------
    curves : mapping label -> DataFrame
        Binned distributions: ``diameter_nm`` (bin centre) and one column of
        values (count, density, ...), drawn as lines.
    samples : mapping label -> array
        Diameters (nm), e.g. one per track, drawn as histograms of ``bins`` bins.

    Returns
    -------
    str or None
        PNG data URI; None when there is nothing to draw.
    """
    samples = {k: np.asarray(v, float) for k, v in (samples or {}).items()}
    samples = {k: v[np.isfinite(v)] for k, v in samples.items() if np.isfinite(v).any()}
    curves = {k: v for k, v in curves.items() if len(v)}
    if not curves and not samples:
        return None
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot()
    for label, values in samples.items():
        distinct = np.unique(values)
        if len(distinct) <= 5:  # e.g. a simulated mono- or bidisperse truth: a histogram would be spikes
            for i, value in enumerate(distinct):
                ax.axvline(value, ls="--", color="0.3", label=f"{label}: {value:g} nm")
        else:
            ax.hist(values, bins=bins, density=True, alpha=0.35, label=f"{label} (n={len(values)})")
    for label, curve in curves.items():
        x, y = curve.iloc[:, 0].to_numpy(float), curve.iloc[:, 1].to_numpy(float)
        ax.plot(x, unit_area(x, y), lw=1.8, label=label)
    ax.set_xlabel("hydrodynamic diameter (nm)")
    ax.set_ylabel("probability density (1/nm)")
    ax.set_title(title)
    ax.legend(fontsize="small")
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
