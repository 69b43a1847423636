"""The results layout: which file of a run's or a replicate group's
directory holds what.

The workflow's rules name every file they pass to a stage
(``workflow/rules/*.smk``), and stages use the paths they are given. This
module is for callers that hold a directory instead, the command line and
library users: it turns ``results/{run}/`` or ``results/groups/{group}/``
into the same mapping of paths the rules pass.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RUN_FILES", "GROUP_FILES", "run_files", "group_files"]

#: What a run's directory holds, by the name stages use for it.
RUN_FILES: dict[str, str] = {
    "movie": "movie.ome.zarr",
    "truth": "truth.parquet",
    "features": "features.parquet",
    "refined": "refined.parquet",
    "tracks": "tracks.parquet",
    "flow": "flow.parquet",
    "geff": "tracks.geff",
    "sizes": "sizes.parquet",
    "distribution": "distribution.csv",
    "summary": "summary.json",
    "labels": "labels.ome.zarr",
    "reassigned": "reassigned.ome.zarr",
    "objects": "objects.parquet",
}

#: What a replicate group's directory holds (the size stage's merge).
GROUP_FILES: dict[str, str] = {"distribution": "distribution.csv", "summary": "summary.json"}


def run_files(run_dir: str | os.PathLike) -> dict[str, Path]:
    """Every file of :data:`RUN_FILES` inside ``run_dir`` (present or not)."""
    return {key: Path(run_dir) / name for key, name in RUN_FILES.items()}


def group_files(group_dir: str | os.PathLike) -> dict[str, Path]:
    """Every file of :data:`GROUP_FILES` inside ``group_dir`` (present or not)."""
    return {key: Path(group_dir) / name for key, name in GROUP_FILES.items()}
