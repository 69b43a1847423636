"""Replicate runs merged as NTA instruments do: per bin and per figure, the
mean over runs and its standard error."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..io.provenance import environment_lock_sha256
from .conditions import is_number
from .distribution import FIGURES, distribution_figures

__all__ = ["merge_replicates"]

#: the value columns of distribution.csv that are averaged over replicates
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
    keys = [k for k, v in summaries[0].items() if is_number(v)]
    for key in keys:
        vals = np.array([float(s[key]) if is_number(s.get(key)) else np.nan for s in summaries])
        ok = np.isfinite(vals)
        out[key] = float(vals[ok].mean()) if ok.any() else None
        out[f"{key}_sem"] = float(vals[ok].std(ddof=1) / math.sqrt(ok.sum())) if ok.sum() > 1 else None
    out["n_tracks_total"] = int(sum(int(s.get("n_tracks") or 0) for s in summaries))
    if "walker_fraction" in merged.columns:
        grid = merged["diameter_nm"].to_numpy(float)
        figs = distribution_figures(grid_nm=grid, weights=merged["walker_fraction"].to_numpy(float), smooth=0)
        for key in FIGURES:
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
    out["environment_lock_sha256"] = environment_lock_sha256()
    return merged, out
