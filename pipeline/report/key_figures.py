"""The NTA figure set, as the pages tabulate it.

The run page's key figures (the sizes with their intervals beside the naive
per-track sizes, the other figures of ``summary.json``, its notes) and the
index's table of every run's figures with its QC flags, and every replicate
group's mean ± standard error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..io.nta import figure_value
from .data import RunData, finite_number, per_particle_diameters
from .html import NA, fmt
from .qc import QC_KEYS, qc_flags

__all__ = ["INDEX_HEADER", "index_group_cells", "index_run_cells", "run_key_figures"]

# (summary key stem, label): sizes are ``<stem>_nm`` (the distribution's
# estimate), ``naive_<stem>_nm`` the per-track histogram's
_SIZE_FIGURES = (
    ("mean", "Mean"),
    ("mode", "Mode"),
    ("sd", "SD"),
    ("d10", "D10"),
    ("d50", "D50"),
    ("d90", "D90"),
)
# (summary key, label, unit, format, scale)
_RUN_FIGURES = (
    ("n_tracks", "Valid tracks", "", ".0f", 1),
    ("particles_per_frame", "Particles per frame", "", ".3g", 1),
    ("concentration_per_ml", "Concentration", "particles/mL", ".3g", 1),
    ("temperature_K", "Temperature", "K", ".2f", 1),
    ("viscosity_Pa_s", "Viscosity", "mPa·s", ".4g", 1e3),
    ("msd_powerlaw_n", "MSD power-law exponent n", "", ".3f", 1),
    ("msd_powerlaw_A", "MSD power-law prefactor A", "µm²/s^n", ".4g", 1),
)
# the index's NTA figure set: (summary key, column, format)
_INDEX_FIGURES = (
    *((f"{stem}_nm", f"{label} (nm)", ".1f") for stem, label in _SIZE_FIGURES),
    ("concentration_per_ml", "Concentration (particles/mL)", ".3g"),
    ("particles_per_frame", "Particles/frame", ".4g"),
    ("n_tracks", "Valid tracks", ".4g"),
)
# the index table's header: the run, its figures, its QC flags
INDEX_HEADER = ("run", *(label for _, label, _ in _INDEX_FIGURES), "QC flags")


def _size_with_interval(summary: Mapping[str, Any], key: str, spec: str, template: str) -> str:
    """A size figure (``<stem>_nm``) with its bootstrap interval
    (``<stem>_ci_nm``) when the summary has one."""
    value = fmt(figure_value(summary, key), spec)
    ci = summary.get(key.replace("_nm", "_ci_nm"))
    if isinstance(ci, list) and len(ci) == 2 and all(finite_number(v) is not None for v in ci):
        value += template.format(lo=ci[0], hi=ci[1])
    return value


def run_key_figures(data: RunData) -> dict:
    """The run page's key figures: the sizes (distribution estimate with
    its interval, naive per-track estimate), the other NTA figures, the
    ground truth when simulated, the rest of summary.json's scalars and
    its notes."""
    s = data.summary
    sizes = [
        (f"{label} diameter", _size_with_interval(s, f"{stem}_nm", ".1f", " (95 % CI {lo:.1f}–{hi:.1f})"),
         fmt(finite_number(s.get(f"naive_{stem}_nm")), ".1f"), "nm")
        for stem, label in _SIZE_FIGURES
    ]
    rows = []
    for key, label, unit, spec, scale in _RUN_FIGURES:
        value = finite_number(s.get(key))
        rows.append((label, NA if value is None else format(value * scale, spec), unit))
    if s.get("viscosity_source"):
        rows.append(("Viscosity from", str(s["viscosity_source"]), ""))
    truth = per_particle_diameters(data.tables.get("truth"))
    if truth is not None and len(truth):
        rows.append(("Ground truth: particles", str(len(truth)), ""))
        rows.append(("Ground truth: mean diameter", f"{np.mean(truth):.1f}", "nm"))
        rows.append(("Ground truth: median diameter", f"{np.median(truth):.1f}", "nm"))
    shown = {f"{a}{stem}{b}" for stem, _ in _SIZE_FIGURES for a, b in (("", "_nm"), ("naive_", "_nm"), ("", "_ci_nm"))}
    shown |= {key for key, *_ in _RUN_FIGURES} | {"viscosity_source"} | QC_KEYS
    # the rest of summary.json's scalars (nested params and lists are shown elsewhere or too long)
    other = [
        (key, fmt(value)) for key, value in s.items()
        if key not in shown and key != "trackflow_version" and not isinstance(value, (dict, list))
    ]
    notes = s.get("notes")
    return {"key_sizes": sizes, "key_figures": rows, "other": other,
            "notes": [str(n) for n in notes] if isinstance(notes, list) else []}


def index_run_cells(summary: Mapping[str, Any]) -> list[str]:
    """A run's row of the index table (after its name): its NTA figures
    and its QC flags' codes."""
    cells = [
        _size_with_interval(summary, key, spec, " ({lo:.1f}–{hi:.1f})") if key.endswith("_nm")
        else fmt(figure_value(summary, key), spec)
        for key, _, spec in _INDEX_FIGURES
    ]
    if "qc" in summary:
        cells.append(", ".join(f["code"] for f in qc_flags(summary)) or "none")
    else:
        cells.append(NA)
    return cells


def index_group_cells(merged: Mapping[str, Any] | None, members: Sequence[Mapping[str, Any]]) -> list[str]:
    """A group's figures: the size stage's merge (mean ± standard error over
    the replicates), else the same computed here from the runs' summaries."""
    cells = []
    for key, _, spec in _INDEX_FIGURES:
        if merged:
            value, sem = figure_value(merged, key), figure_value(merged, f"{key}_sem")
            if sem is None and key.endswith("_nm"):
                sem = finite_number(merged.get(f"walker_{key}_sem"))
        else:
            values = [v for m in members if (v := figure_value(m, key)) is not None]
            value = float(np.mean(values)) if values else None
            sem = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
        cells.append(fmt(value, spec) + (f" ± {format(sem, spec)}" if sem is not None else ""))
    return [*cells, ""]
