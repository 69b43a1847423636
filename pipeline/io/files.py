"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every output of the pipeline (tables, JSON, CSV, HTML, shard and metadata
files of the movie store) is written to a temporary file next to its final
path and renamed into place, so a stage killed mid-write leaves nothing
truncated behind under the final name. The temporary name ends in
``.partial`` and carries the process and thread, so concurrent writers of the
same path never share one. A store written whole by a library (a geff graph,
:func:`atomic_directory`) is built in such a temporary directory and renamed
into place the same way.

The data is not fsync'ed: this protects against a killed process, not a
power cut, and syncing every shard would cost acquisition speed.
"""

from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write", "atomic_directory"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    For writers that want a path of their own (``DataFrame.to_csv``,
    ``pyarrow.parquet.write_table``). On an exception the temporary file is
    removed and ``path`` is left as it was.

    Parameters
    ----------
    path : path-like
        The final path; its directory must exist.

    Yields
    ------
    Path
        Where to write, in the same directory (so the rename is atomic).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory path that replaces the directory ``path``
    when the block succeeds.

    For a store that a library writes as many files (a Zarr group). The
    temporary directory is not created: the writer creates it. On success an
    existing ``path`` is moved aside, the new directory renamed into place and
    the old one deleted, so a reader finds the old store, the new one or (for
    that instant) none, never a half-written one. On an exception the
    temporary directory is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : path-like
        The final directory; its parent must exist.

    Yields
    ------
    Path
        Where to write, in the same directory (so the renames are atomic).
    """
    path = Path(path)
    tag = f"{os.getpid()}-{threading.get_ident()}"
    tmp = path.with_name(f"{path.name}.{tag}.partial")
    old = path.with_name(f"{path.name}.{tag}.old")
    try:
        yield tmp
        if not tmp.is_dir():
            raise FileNotFoundError(f"{tmp}: the writer left no directory to move to {path}")
        aside = path.exists()
        if aside:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if aside:
                os.replace(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | os.PathLike, data: bytes | bytearray | memoryview | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically.

    Parameters
    ----------
    path : path-like
        The final path; its directory must exist.
    data : bytes-like or str

    Returns
    -------
    Path
        ``path``.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)
