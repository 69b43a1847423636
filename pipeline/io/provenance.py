"""Which locked environment made an output: the SHA-256 of ``requirements.lock``.

The project ships ``requirements.lock``, every package of the environment
(``test``, ``slurm`` and ``view`` extras included) pinned with its hashes.
An environment installed from it (``make install``, ``make test``, .ci/run,
or a site's conda environment or Apptainer image; see the README) records
the lock's hash when it is installed, and every output then carries it as
``environment_lock_sha256``: the Parquet tables' provenance, the stores'
``trackflow`` attributes, ``summary.json`` and the report's provenance.
It is null for an environment not installed from the lock: the mere
presence of a lock beside the package says nothing of what was installed.

Where the hash is read from, first found:

1. the environment variable ``TRACKFLOW_ENVIRONMENT_LOCK_SHA256`` (an image
   or a conda environment built from the lock sets it);
2. the file ``trackflow-environment.lock.sha256`` in the environment's
   prefix (``sys.prefix``: the virtual environment or conda environment),
   written at install by ``python -m pipeline.io.provenance record requirements.lock``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
from pathlib import Path

__all__ = [
    "LOCK_FILE",
    "LOCK_ENV_VAR",
    "LOCK_MARKER",
    "environment_lock_sha256",
    "file_sha256",
    "record_environment_lock",
]

#: The lock file, at the project's root.
LOCK_FILE = "requirements.lock"
#: Environment variable that gives the hash (set in images built from the lock).
LOCK_ENV_VAR = "TRACKFLOW_ENVIRONMENT_LOCK_SHA256"
#: File in ``sys.prefix`` that holds the hash, written at install.
LOCK_MARKER = "trackflow-environment.lock.sha256"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked(value: str, where: str) -> str:
    value = value.strip().lower()
    if not _SHA256.match(value):
        raise ValueError(f"{where}: {value[:80]!r} is not a SHA-256 (64 hex digits)")
    return value


@functools.cache
def environment_lock_sha256() -> str | None:
    """The SHA-256 of the lock this environment was installed from, or None.

    Read once per process (an environment does not change under a running
    stage) from ``TRACKFLOW_ENVIRONMENT_LOCK_SHA256`` or from
    ``trackflow-environment.lock.sha256`` in ``sys.prefix``.

    Raises
    ------
    ValueError
        Either holds something that is not a SHA-256 (rather than record a
        wrong provenance).
    """
    value = os.environ.get(LOCK_ENV_VAR, "").strip()
    if value:
        return _checked(value, LOCK_ENV_VAR)
    marker = Path(sys.prefix) / LOCK_MARKER
    try:
        text = marker.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return _checked(text, str(marker))


def record_environment_lock(lock: str | os.PathLike, prefix: str | os.PathLike | None = None) -> Path:
    """Record that the environment at ``prefix`` (default: this one) was
    installed from ``lock``: write the lock's SHA-256 to its marker file.

    Returns
    -------
    Path
        The marker file written.
    """
    marker = Path(sys.prefix if prefix is None else prefix) / LOCK_MARKER
    marker.write_text(file_sha256(lock) + "\n", encoding="utf-8")
    environment_lock_sha256.cache_clear()
    return marker


def _main(argv: list[str]) -> int:
    """``python -m pipeline.io.provenance record LOCK`` (run by the Makefile
    right after installing from the lock) or ``show``."""
    if len(argv) == 2 and argv[0] == "record":
        marker = record_environment_lock(argv[1])
        print(f"{marker}: {marker.read_text().strip()}")
        return 0
    if argv == ["show"]:
        print(environment_lock_sha256() or "null (this environment was not installed from a lock)")
        return 0
    print("usage: python -m pipeline.io.provenance record LOCK | show", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
