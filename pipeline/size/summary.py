"""What the size stage writes besides its table: ``summary.json``,
``distribution.csv``, and the headline figures as a CSV in the layout of an
NTA instrument's export (``summary.csv``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..io.files import atomic_path, atomic_write
from ..io.tables import jsonable
from .conditions import is_number

__all__ = ["summary_row", "write_nta_csv", "write_group_nta_csv"]


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
        row[column] = value if is_number(value) else None
    for key, label in (("mode_ci_nm", "Mode"), ("d50_ci_nm", "D50")):
        ci = summary.get(key)
        lo, hi = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
        row[f"{label} 95% CI low (nm)"] = lo
        row[f"{label} 95% CI high (nm)"] = hi
    return row


def write_nta_csv(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """A run's headline figures (:func:`summary_row`) as a one-row CSV."""
    return _write_csv(pd.DataFrame([summary_row(summary)]), path)


def write_group_nta_csv(
    group: str, summaries: Sequence[Mapping[str, Any]], merged: Mapping[str, Any], path: str | os.PathLike
) -> Path:
    """A replicate group's CSV: one row per run (``summaries``), then the
    group's mean and its standard error (from the ``merged`` summary's
    ``<key>`` and ``<key>_sem``), in the layout of :func:`summary_row`."""
    rows = [summary_row(s) for s in summaries] + [summary_row(merged, name=f"{group} (mean)")]
    sem = {k[: -len("_sem")]: v for k, v in merged.items() if k.endswith("_sem")}
    rows.append(summary_row(sem, name=f"{group} (standard error)"))
    return _write_csv(pd.DataFrame(rows), path)
