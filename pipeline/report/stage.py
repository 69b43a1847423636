"""The report stage's entry point: :func:`run` writes the index and one page
per run beside it. The workflow's rule (``workflow/scripts/report.py``) and
``trackflow report`` call it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io.files import atomic_write
from ..io.layout import group_files
from ..io.schema import check_section
from .data import load_run, read_optional_distribution, read_optional_summary
from .pages import render_index, render_run_page
from .provenance import source_checksums

__all__ = ["run"]

log = logging.getLogger("trackflow.report")

# a run names its page (<run>.html beside index.html)
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def run(
    runs: list[dict],
    output: str | os.PathLike,
    params: Mapping[str, Any],
    groups: Mapping[str, Mapping[str, str | os.PathLike] | str | os.PathLike] | None = None,
    *,
    config_sha256: str | None = None,
) -> Path:
    """Write the index (``output``) and one page per run beside it (``<run>.html``).

    Parameters
    ----------
    runs : list of dict
        One per run: ``{"run": name, "group": group or None, "files":
        {what: path}}`` (see :func:`load_run`), or ``"dir"``, the run's
        results directory, instead of ``"files"``; optionally ``"sources"``,
        the run's source files, listed with their sha256.
    output : path
        The index page, e.g. ``results/report/index.html``.
    params : mapping
        The ``report`` section (unknown keys are errors).
    groups : mapping, optional
        Replicate group -> its merged ``summary`` and ``distribution`` (the
        size stage's ``groups/<group>/`` files, as a mapping or that
        directory); a group without an entry gets its runs' mean ± standard error.
    config_sha256 : str, optional
        The hash of the configuration, shown on every page.

    Returns
    -------
    Path
        ``output``.
    """
    params = check_section("report", params)
    runs = _check_runs(runs)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    loaded, inputs = [], []
    for r in runs:
        data = load_run(r["files"], name=r["run"], group=r["group"])
        run_inputs = source_checksums(data, r["sources"])
        page = render_run_page(data, params, output.name, run_inputs, config_sha256)
        atomic_write(output.parent / f"{r['run']}.html", page)
        # the index reads no more than these: let the other tables go
        data.tables = {k: v for k, v in data.tables.items() if k == "sizes"}
        loaded.append(data)
        inputs += run_inputs
        log.info("report: %s -> %s.html", data.dir, r["run"])
    merged = {}
    for group, files in (groups or {}).items():
        files = group_files(files) if not isinstance(files, Mapping) else {k: Path(v) for k, v in files.items()}
        merged[group] = (read_optional_summary(files["summary"]), read_optional_distribution(files["distribution"]))
    atomic_write(output, render_index(loaded, params=params, groups=merged, inputs=inputs,
                                      config_sha256=config_sha256))
    return output


def _check_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The runs as :func:`run` uses them, checked before any page is written:
    each named once, by a name that can name its page."""
    if not runs:
        raise ValueError("report: no runs given")
    out, seen = [], set()
    for i, r in enumerate(runs):
        if not r.get("run") or not (r.get("files") or r.get("dir")):
            raise ValueError(f"report: run entry {i} needs 'run' and 'files' (or 'dir'): {dict(r)}")
        name = str(r["run"])
        if not _RUN_NAME.match(name) or name == "index":
            raise ValueError(f"report: run name {name!r} cannot name a page (letters, digits, '_', '-', '.'; not 'index')")
        if name in seen:
            raise ValueError(f"report: run {name!r} is listed twice")
        seen.add(name)
        out.append({"run": name, "group": r.get("group") or None, "files": r.get("files") or str(r["dir"]),
                    "sources": list(r.get("sources") or ())})
    return out
