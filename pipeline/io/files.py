"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every output of the pipeline (tables, JSON, CSV, HTML, shard and metadata
files of the movie store) is written to a temporary file next to its final
path and renamed into place, so a stage killed mid-write leaves nothing
truncated behind under the final name. The temporary name ends in
``.partial`` and carries the process and thread, so concurrent writers of the
same path never share one.

The data is not fsync'ed: this protects against a killed process, not a
power cut, and syncing every shard would cost acquisition speed.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write"]


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
