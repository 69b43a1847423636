"""Experiment summaries in the layout NTA instruments export: one column per
video (here: per run), their average and standard error, then a bin table of
concentration (or counts) per size bin.

Built from what the size stage writes (``summary.json``,
``distribution.csv``), so that any reader of those files (the report, a
user's script) can write it without importing the size stage.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["SUMMARY_FIGURES", "figure_value", "experiment_summary_csv", "bin_values"]

#: (summary.json key, row label) of the experiment summary, in the order NTA
#: users read them; sizes are those of the size stage's distribution
SUMMARY_FIGURES: tuple[tuple[str, str], ...] = (
    ("mean_nm", "Mean (nm)"),
    ("mode_nm", "Mode (nm)"),
    ("sd_nm", "SD (nm)"),
    ("d10_nm", "D10 (nm)"),
    ("d50_nm", "D50 (nm)"),
    ("d90_nm", "D90 (nm)"),
    ("concentration_per_ml", "Concentration (particles/mL)"),
    ("particles_per_frame", "Particles per frame"),
    ("n_tracks", "Valid tracks"),
    ("temperature_K", "Temperature (K)"),
    ("viscosity_Pa_s", "Viscosity (Pa s)"),
    ("frame_interval_s", "Frame interval (s)"),
    ("exposure_s", "Exposure (s)"),
    ("sigma_um", "Localization error (um)"),
)
_INTERVALS = (("mode_ci_nm", "Mode"), ("d50_ci_nm", "D50"))


def figure_value(summary: Mapping[str, Any], key: str) -> float | None:
    """A finite number of a summary, or None: ``<stem>_nm`` falls back to
    ``walker_<stem>_nm`` (summaries name the distribution's figures both ways)."""
    value = summary.get(key)
    if value is None and key.endswith("_nm"):
        value = summary.get(f"walker_{key}")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def bin_values(distribution: pd.DataFrame | None, concentration: bool = True) -> pd.Series | None:
    """What the bin table holds for one distribution, indexed by bin centre
    (nm): the concentration per bin (particles/mL) when ``concentration``
    and the run had a depth to compute it, else the distribution's counts
    (Walker's, else the per-track histogram's); None when it has neither."""
    if distribution is None or distribution.empty:
        return None
    columns = ("concentration_per_ml",) if concentration else ("walker_count", "naive_count")
    for column in columns:
        if column in distribution.columns and distribution[column].notna().any():
            return distribution.set_index("diameter_nm")[column].astype(float)
    return None


def _mean_sem(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    mean = float(np.mean(finite))
    sem = float(np.std(finite, ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else None
    return mean, sem


def _cell(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def experiment_summary_csv(
    samples: Sequence[tuple[str, Mapping[str, Any], pd.DataFrame | None]], title: str = ""
) -> str:
    """The experiment summary of some runs as CSV text.

    Parameters
    ----------
    samples : sequence of (name, summary, distribution)
        One per video (run): its name, ``summary.json`` and
        ``distribution.csv`` (None when absent).
    title : str
        A first line naming the experiment (left out when empty).

    Returns
    -------
    str
        Two blocks: ``Results``, one row per figure (Mean, Mode, SD, D10,
        D50, D90, the bootstrap intervals, concentration, ...) with a column
        per run, ``Average`` and ``Standard error`` (over the runs, empty
        for one run); then ``Size distribution``, one row per bin centre
        (nm) with the concentration per bin, or the counts when no run has a
        concentration, per run, average and standard error.
    """
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    names = [name for name, _, _ in samples]
    header = ["", *names, "Average", "Standard error"]
    if title:
        out.writerow([title])
    out.writerow(["Results"])
    out.writerow(header)
    rows: list[tuple[str, list[float | None]]] = [
        (label, [figure_value(s, key) for _, s, _ in samples]) for key, label in SUMMARY_FIGURES
    ]
    for key, label in _INTERVALS:
        for end, which in ((0, "low"), (1, "high")):
            values = []
            for _, s, _ in samples:
                ci = s.get(key)
                values.append(float(ci[end]) if isinstance(ci, (list, tuple)) and len(ci) == 2
                              and ci[end] is not None else None)
            rows.append((f"{label} 95% CI {which} (nm)", values))
    for label, values in rows:
        out.writerow([label, *map(_cell, values), *map(_cell, _mean_sem(values))])

    # one unit for the whole table: concentration only when every run has it
    dists = [d for _, _, d in samples]
    concentration = all(bin_values(d) is not None for d in dists)
    columns = {name: bin_values(d, concentration) for name, _, d in samples}
    columns = {name: series for name, series in columns.items() if series is not None}
    if columns:
        table = pd.DataFrame(columns).sort_index()
        out.writerow([])
        out.writerow(["Size distribution", "Concentration (particles/mL)" if concentration else "Count"])
        out.writerow(["Bin centre (nm)", *table.columns, "Average", "Standard error"])
        for centre, row in table.iterrows():
            values = [None if pd.isna(v) else float(v) for v in row.tolist()]
            out.writerow([_cell(float(centre)), *map(_cell, values), *map(_cell, _mean_sem(values))])
    return buffer.getvalue()
