"""Tables between stages: Parquet files with provenance in their metadata.

Every table carries, in the Parquet key-value metadata under ``trackflow``,
the package version, the stage that wrote it, that stage's parameters, the
versions of Python and the scientific libraries it ran with (``versions``)
and the hash of the lock the environment was installed from
(``environment_lock_sha256``, null if none; :mod:`pipeline.io.provenance`),
so an output always says what made it.

Column contracts (positions in pixels, trackpy's convention):

- features (locate): ``frame, [z,] y, x, mass, size, ecc, signal, raw_mass, ep``
- refined (refine): the features' columns plus ``cost, cluster, cluster_size``
- tracks (link): the refined columns plus ``particle``
- flow (link): ``frame, [z,] y, x, [dz,] dy, dx, cost``
- sizes (size): ``particle, n_steps, D_um2_s, sigma_um, diameter_nm, ...``
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import __version__
from .files import atomic_path

__all__ = [
    "TableError",
    "write_table",
    "read_table",
    "table_metadata",
    "jsonable",
    "library_versions",
    "read_distribution",
    "read_summary",
    "position_columns",
    "flow_columns",
    "drift_columns",
    "FEATURE_COLUMNS",
    "TRACK_COLUMNS",
    "OBJECT_COLUMNS",
]

#: Columns a reader may rely on (3D tables add ``z``; the rest depends on the
#: stage's options): features and refined features, tracks, reassigned objects.
FEATURE_COLUMNS = ("frame", "y", "x")
TRACK_COLUMNS = ("frame", "y", "x", "particle")
OBJECT_COLUMNS = ("frame", "label")
_META_KEY = b"trackflow"
#: distribution name -> the name a reader knows it by (scikit-image is ``skimage``)
_LIBRARIES = {
    "numpy": "numpy", "pandas": "pandas", "trackpy": "trackpy", "zarr": "zarr",
    "scipy": "scipy", "scikit-image": "skimage",
}


class TableError(ValueError):
    """A stage table is missing, unreadable or lacks required columns."""


def position_columns(df_or_columns: pd.DataFrame | Iterable[str]) -> list[str]:
    """``['z', 'y', 'x']`` for 3D tables, ``['y', 'x']`` for 2D ones."""
    cols = df_or_columns.columns if isinstance(df_or_columns, pd.DataFrame) else df_or_columns
    return ["z", "y", "x"] if "z" in cols else ["y", "x"]


def flow_columns(pos_columns: Iterable[str]) -> list[str]:
    """The per-row flow columns of a tracks table for these position
    columns: ``flow_dy, flow_dx`` (``flow_dz``), the flow at the feature in
    px per frame (written by the flow linker, read by the size stage)."""
    return [f"flow_d{c}" for c in pos_columns]


def drift_columns(pos_columns: Iterable[str]) -> list[str]:
    """The per-row drift columns of a tracks table: ``drift_y, drift_x``
    (``drift_z``), the ensemble drift at the row's frame, cumulative px."""
    return [f"drift_{c}" for c in pos_columns]


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    stage: str,
    params: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``df`` as Parquet with provenance, atomically.

    Parameters
    ----------
    df : DataFrame
    path : path-like
    stage : str
        Name of the stage writing the table (``"locate"``, ...).
    params : mapping
        The stage's parameters, exactly as used.
    extra : mapping
        Anything else worth recording (inputs, counts, summary figures).
    """
    # imported here, not with the package: `python -m pipeline.io.provenance`
    # (the install step) must not find the module already imported
    from .provenance import environment_lock_sha256

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    provenance = {
        "trackflow_version": __version__,
        "environment_lock_sha256": environment_lock_sha256(),
        "stage": stage,
        "params": dict(params or {}),
        "versions": library_versions(),
        **dict(extra or {}),
    }
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps(provenance, default=_json_default).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


@functools.cache
def library_versions() -> dict[str, str]:
    """Python's version and those of the installed scientific libraries
    (numpy, pandas, trackpy, zarr, scipy, skimage), read from the installed
    distributions' metadata: a library that is not installed is left out.
    Cached: they cannot change within a process."""
    versions = {"python": platform.python_version()}
    for dist, name in _LIBRARIES.items():
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def read_table(
    path: str | os.PathLike, *, required: Iterable[str] = (), stage: str | None = None
) -> pd.DataFrame:
    """Read a stage table, checking that ``required`` columns are present.

    Errors name the file and the missing columns.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table {path} does not exist")
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:
        raise TableError(f"{path}: not a readable Parquet table ({exc})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        what = f" (expected from stage '{stage}')" if stage else ""
        raise TableError(f"{path}: missing column(s) {missing}{what}")
    return df


def jsonable(value: Any) -> Any:
    """Metadata must be plain JSON: numpy scalars and arrays become Python."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def read_distribution(path: str | os.PathLike) -> pd.DataFrame:
    """Read a size stage's ``distribution.csv`` (bin centres ``diameter_nm``
    and the binned densities and counts); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"distribution {path} does not exist")
    try:
        df = pd.read_csv(path)
    except Exception as exc:
        raise TableError(f"{path}: not a readable CSV distribution ({exc})") from exc
    if "diameter_nm" not in df.columns:
        raise TableError(f"{path}: missing column 'diameter_nm'")
    return df


def read_summary(path: str | os.PathLike) -> dict:
    """Read a size stage's ``summary.json`` (a JSON object of figures);
    errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"summary {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise TableError(f"{path}: not a readable JSON summary ({exc})") from exc
    if not isinstance(data, dict):
        raise TableError(f"{path}: a summary must be a JSON object, got {type(data).__name__}")
    return data


def table_metadata(path: str | os.PathLike) -> dict:
    """The provenance recorded with a table: version, stage, params, ..."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(_META_KEY)
    return json.loads(raw) if raw else {}
