"""What a run's files hold: :func:`load_run` reads them into a :class:`RunData`.

Every page is made from these: the size stage's ``summary.json`` and
``distribution.csv``, the stages' tables with the provenance each recorded,
and the movie stores. The helpers here read values out of them the same way
for every section of the pages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io.layout import RUN_FILES, run_files
from ..io.movie import Movie, open_movie
from ..io.tables import (
    OBJECT_COLUMNS,
    read_distribution,
    read_summary,
    read_table,
    table_metadata,
)

__all__ = [
    "GEFF_IMPORT",
    "RunData",
    "finite_number",
    "load_run",
    "per_particle_diameters",
    "read_optional_distribution",
    "read_optional_summary",
]

# the tables a run may have, by what they hold (keys of RUN_FILES)
_TABLES = ("features", "refined", "tracks", "flow", "sizes", "truth")
_OPTIONAL = ("flow", "truth", "refined")  # absent by design for some runs
# the stage of a tracks table imported from another tracker's geff store (pipeline.io.geff)
GEFF_IMPORT = "import_geff"


@dataclass
class RunData:
    """What one run's files hold (absent inputs are None, and listed in
    ``missing``); a table's provenance is in ``provenance`` by file name and
    in ``meta`` by what it holds (``"refined"``, ``"tracks"``, ...)."""

    dir: Path | None
    name: str
    group: str | None = None
    summary: dict = field(default_factory=dict)
    distribution: pd.DataFrame | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    provenance: dict[str, dict] = field(default_factory=dict)
    meta: dict[str, dict] = field(default_factory=dict)
    movie: Movie | None = None
    reassigned: Movie | None = None
    missing: list[str] = field(default_factory=list)


def load_run(
    files: Mapping[str, str | os.PathLike] | str | os.PathLike,
    *,
    name: str | None = None,
    group: str | None = None,
) -> RunData:
    """Read what a run's files hold.

    Parameters
    ----------
    files : mapping or path
        The run's files by what they hold (the keys of
        :data:`pipeline.io.layout.RUN_FILES`: ``summary``, ``tracks``,
        ``movie``, ...); keys left out and files that do not exist are noted
        as missing. Or the run's results directory, read as laid out by
        :func:`pipeline.io.layout.run_files`.
    name : str, optional
        The run's name (default: the directory's name; required with a
        mapping).
    group : str, optional
        Its replicate group.

    Raises
    ------
    FileNotFoundError
        The directory does not exist.
    ValueError (TableError, MovieError)
        A file is present but unreadable, or an unknown key; the message names it.
    """
    run_dir = None
    if not isinstance(files, Mapping):
        run_dir = Path(files)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"report: run directory {run_dir} does not exist")
        name, files = name or run_dir.name, run_files(run_dir)
    unknown = sorted(set(files) - set(RUN_FILES))
    if unknown:
        raise ValueError(f"report: unknown run file(s) {unknown}; known: {list(RUN_FILES)}")
    if not name:
        raise ValueError("report: a run given by its files needs a name")
    paths = {key: Path(path) for key, path in files.items()}
    present = {key: path for key, path in paths.items() if path.exists()}
    anchor = paths.get("summary") or paths.get("tracks")
    data = RunData(dir=run_dir or (anchor.parent if anchor else None), name=name, group=group)

    def note_missing(key: str) -> None:
        data.missing.append(paths[key].name if key in paths else RUN_FILES[key])

    summary = read_optional_summary(present["summary"]) if "summary" in present else None
    if summary is None:
        note_missing("summary")
    data.summary = summary or {}
    data.distribution = read_optional_distribution(present["distribution"]) if "distribution" in present else None
    if data.distribution is None:
        note_missing("distribution")
    for stem in _TABLES:
        if stem in present:
            data.tables[stem] = read_table(present[stem])
            data.meta[stem] = data.provenance[present[stem].name] = table_metadata(present[stem])
        elif stem not in _OPTIONAL:
            note_missing(stem)
    if "objects" in present:  # segment + reassign ran for this run
        data.tables["objects"] = read_table(present["objects"], required=OBJECT_COLUMNS)
        data.provenance[present["objects"].name] = table_metadata(present["objects"])
        data.reassigned = open_movie(present["reassigned"]) if "reassigned" in present else None
    if "movie" in present:
        data.movie = open_movie(present["movie"])
    else:
        note_missing("movie")
    if data.meta.get("tracks", {}).get("stage") == GEFF_IMPORT:
        # another tracker's tracks: there is no movie and no feature table to miss
        data.missing = [m for m in data.missing if m not in (RUN_FILES["movie"], RUN_FILES["features"])]
    return data


def read_optional_summary(path: Path) -> dict | None:
    """A ``summary.json``, or None when the file does not exist.

    Raises
    ------
    ValueError (TableError)
        The file is present but unreadable.
    """
    return read_summary(path) if path.exists() else None


def read_optional_distribution(path: Path) -> pd.DataFrame | None:
    """A ``distribution.csv``, or None when the file does not exist.

    Raises
    ------
    ValueError (TableError)
        The file is present but unreadable.
    """
    return read_distribution(path) if path.exists() else None


def finite_number(value: Any) -> float | None:
    """A summary value as a float when it is a finite number, else None
    (booleans, strings, lists, NaN and infinities are not figures)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def per_particle_diameters(df: pd.DataFrame | None) -> np.ndarray | None:
    """One diameter per particle of a sizes or truth table (its
    ``diameter_nm``), or None when the table is absent or has no sizes."""
    if df is None or "diameter_nm" not in df.columns:
        return None
    if "particle" in df.columns:
        return df.groupby("particle")["diameter_nm"].first().to_numpy(float)
    return df["diameter_nm"].to_numpy(float)
