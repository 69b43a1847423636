"""How the pages were made: every stage's parameters as its output recorded
them, the library versions now and as the stages recorded them, the
environment lock's hash, the configuration's hash, the source files'
checksums and the date.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..io.provenance import environment_lock_sha256
from ..io.tables import library_versions
from .data import RunData
from .html import NA, fmt

__all__ = ["page_provenance", "source_checksums", "stage_settings"]

# the versions shown on every page, in this order
_VERSIONS = ("python", "numpy", "pandas", "trackpy", "snakemake", "zarr", "scipy", "skimage")


def stage_settings(data: RunData) -> list[dict]:
    """Every stage's parameters as recorded in its output."""
    rows = []
    for name, meta in data.provenance.items():
        rows.append({
            "file": name, "stage": str(meta.get("stage", NA)), "version": str(meta.get("trackflow_version", NA)),
            "params": meta.get("params") or {},
            "recorded": {k: v for k, v in meta.items() if k not in ("params", "stage", "trackflow_version", "versions")},
        })
    if data.summary:
        params = data.summary.get("params")
        rows.append({"file": "summary.json", "stage": "size",
                     "version": str(data.summary.get("trackflow_version", NA)),
                     "params": params if isinstance(params, dict) else {}, "recorded": {}})
    if data.movie is not None:
        settings = data.movie.attrs.get("settings") or data.movie.attrs.get("params") or {}
        rows.append({"file": "movie.ome.zarr", "stage": "acquire",
                     "version": str(data.movie.attrs.get("trackflow_version", NA)),
                     "params": settings if isinstance(settings, dict) else {}, "recorded": {}})
    return rows


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_checksums(data: RunData, sources: Sequence[str | os.PathLike] | None) -> list[tuple[str, str, str]]:
    """The run's source files with their sha256; a simulated run says so,
    with its seed (the movie's metadata)."""
    rows = []
    for source in sources or ():
        path = Path(source)
        if path.is_file():
            rows.append((data.name, str(path), _sha256(path)))
        else:
            rows.append((data.name, str(path), "a directory (not hashed)" if path.is_dir() else "absent"))
    if not rows and data.movie is not None and data.movie.attrs.get("simulated"):
        settings = data.movie.attrs.get("settings")
        seed = settings.get("seed") if isinstance(settings, Mapping) else None
        rows.append((data.name, str(data.movie.attrs.get("source", "simulated")), f"simulated (seed {fmt(seed)})"))
    if not rows:
        rows.append((data.name, NA, "not given (the report was made outside the workflow)"))
    return rows


def page_provenance(
    datas: Sequence[RunData], inputs: Sequence[tuple[str, str, str]], config_sha256: str | None
) -> dict:
    """What every page states about how it was made: versions now and as the
    stages recorded them, the configuration's hash, the inputs' checksums, the date."""
    now = dict(library_versions())
    try:
        now["snakemake"] = metadata.version("snakemake")
    except metadata.PackageNotFoundError:
        now["snakemake"] = NA
    recorded: dict[str, set[str]] = {}
    for data in datas:
        for meta in data.provenance.values():
            for name, version in (meta.get("versions") or {}).items():
                recorded.setdefault(name, set()).add(str(version))
    versions = [(name, now.get(name, NA), ", ".join(sorted(recorded.get(name, ()))) or "not recorded")
                for name in _VERSIONS]
    # the lock the environment was installed from, now and as each output recorded it
    recorded_by = [meta for data in datas for meta in data.provenance.values()]
    recorded_by += [data.movie.attrs for data in datas if data.movie is not None]
    recorded_by += [data.summary for data in datas if data.summary]
    locks = {meta["environment_lock_sha256"] for meta in recorded_by if "environment_lock_sha256" in meta}
    return {
        "trackflow": __version__,
        "environment_lock_sha256": environment_lock_sha256(),
        "environment_locks_recorded": sorted(lock or "null (not installed from a lock)" for lock in locks),
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "config_sha256": config_sha256,
        "versions": versions,
        "inputs": list(inputs),
    }
