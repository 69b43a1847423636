"""The report stage: one self-contained HTML page per run, and an index.

Each run page opens with its quality control: the size stage's QC flags
(``summary.json``'s ``qc``), its cross-checks of the size estimated four
ways, the localization error and motion blur, the dropped frames, the
refinement's fitted, failed and skipped features (``refined.parquet``) and
the tracks left out by the link and size stages, and why. Then a movie frame
with the tracks drawn over it, the key figures, the size distribution on a
log diameter axis (``distribution.csv``, the per-track diameters of
``sizes.parquet`` and the ground truth when simulated), the ensemble MSD with
its power-law fit, the features per frame, the acquisition metadata, every
stage's parameters, downloads (the run's figures in the layout of an NTA
instrument's experiment summary, its per-track sizes as CSV) and the
provenance (versions, the configuration's hash, the inputs' checksums).

The index draws every run's distribution and every replicate group's mean ±
standard error in one log-diameter plot, tabulates the NTA figure set of
every run and group with each run's QC flags, links to the run pages and
offers the whole experiment's summary and sizes for download.

Pages come from Jinja2 templates (``templates/``) and are self-contained:
inline CSS, plots and downloads as data URIs, no scripts, no external assets;
they can be mailed or archived as single files. Inputs that are absent are
noted on the page; inputs that are present but unreadable are errors naming
the file.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..io.files import atomic_write
from ..io.layout import group_files
from ..io.schema import check_section
from . import objects
from .data import (
    RunData,
    load_run,
    read_optional_distribution,
    read_optional_summary,
)
from .downloads import index_downloads, run_downloads
from .html import NA, data_uri, fmt, render
from .key_figures import (
    INDEX_HEADER,
    index_group_cells,
    index_run_cells,
    run_key_figures,
)
from .panels import (
    figure_panel,
    frames_panel,
    msd_panel,
    overlay_panel,
    size_panel,
    tracks_panel,
)
from .provenance import page_provenance, source_checksums, stage_settings
from .qc import qc_panel

__all__ = ["run", "render_run", "render_index", "load_run", "RunData"]

log = logging.getLogger("trackflow.report")

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------
# what the pages show
# ---------------------------------------------------------------------------


# --- key figures, objects, acquisition, settings -------------------------------


def _acquisition(data: RunData) -> list[tuple[str, str]] | None:
    if data.movie is None:
        return None
    m = data.movie
    rows = [
        ("frames", str(len(m))),
        ("frame shape (px)", " × ".join(map(str, m.frame_shape))),
        ("axes", ", ".join(m.axes)),
        ("pixel size (µm)", fmt(list(m.pixel_size_um))),
        ("frame interval (s)", fmt(m.frame_interval_s)),
    ]
    for key, value in sorted(m.attrs.items()):
        if key in ("pixel_size_um", "frame_interval_s"):
            continue
        if key == "dropped":
            key, value = "dropped (sequence numbers)", f"{len(value)}: {fmt(value[:8])}{' …' if len(value) > 8 else ''}"
        elif isinstance(value, list) and len(value) > 8:
            value = f"{len(value)} values"
        rows.append((key, fmt(value)))
    return rows


def _objects(data: RunData) -> dict | None:
    """Segmented objects (segment + reassign), when the run has them."""
    table_ = data.tables.get("objects")
    if table_ is None:
        return None
    out: dict[str, Any] = {"montage": None, "lifetimes": None}
    if data.reassigned is not None:
        png = objects.montage_png(data.reassigned, data.movie)
        out["montage"] = figure_panel(data_uri(png, "image/png"),
                                 "Reassigned labels on a few frames: one colour per identity throughout the movie.", "")
    lifetimes = objects.label_lifetimes(
        table_, frame_interval_s=data.movie.frame_interval_s if data.movie is not None else None
    )
    if len(lifetimes):
        rows = [
            ("labels", fmt(len(lifetimes))),
            ("frames per label (median, max)", f"{fmt(lifetimes['n_frames'].median())}, {fmt(lifetimes['n_frames'].max())}"),
            ("lifetime (median, s)", fmt(lifetimes["lifetime_s"].median(), ".3g")),
        ]
        if "mean_speed_um_s" in lifetimes:
            rows.append(("speed (median of label means, µm/s)", fmt(lifetimes["mean_speed_um_s"].median(), ".3g")))
        longest = lifetimes.sort_values("n_frames", ascending=False).head(10)
        cols = [c for c in ("label", "first_frame", "last_frame", "n_frames", "lifetime_s", "mean_volume_um3",
                            "mean_speed_um_s") if c in longest]
        out["lifetimes"] = rows
        out["longest"] = {"header": cols,
                          "rows": [[fmt(v, ".4g") for v in row] for row in longest[cols].itertuples(index=False)]}
    return out


# --- downloads and provenance ------------------------------------------------------


def _render(
    data: RunData,
    params: Mapping[str, Any],
    index_href: str | None,
    inputs: Sequence[tuple[str, str, str]],
    config_sha256: str | None,
) -> str:
    return render(
        "run.html.j2",
        title=f"{data.name}: {params['title']}",
        name=data.name, group=data.group, dir=str(data.dir or NA), index_href=index_href, missing=data.missing,
        qc=qc_panel(data),
        figures={
            "tracks": tracks_panel(data),
            "size": size_panel(data, int(params["histogram_bins"])),
            "msd": msd_panel(data, int(params["msd_max_lag"])),
            "frames": frames_panel(data),
        },
        **run_key_figures(data),
        objects=_objects(data),
        acquisition=_acquisition(data),
        settings=stage_settings(data),
        downloads=run_downloads(data),
        provenance=page_provenance([data], inputs, config_sha256),
    )


def render_run(
    files: Mapping[str, str | os.PathLike] | str | os.PathLike,
    *,
    run: str | None = None,
    group: str | None = None,
    params: Mapping[str, Any] | None = None,
    index_href: str | None = "index.html",
    sources: Sequence[str | os.PathLike] | None = None,
    config_sha256: str | None = None,
) -> str:
    """The HTML page of one run.

    Parameters
    ----------
    files : mapping or path
        The run's files by what they hold, or its results directory (see
        :func:`load_run`); absent files are noted on the page.
    run : str, optional
        The run's name (default: the directory's name).
    group : str, optional
        Its replicate group.
    params : mapping, optional
        The ``report`` section (``report.schema.yaml``).
    index_href : str or None
        Link back to the index (None: no link).
    sources : sequence of path, optional
        The run's source files, listed with their sha256 (none: a simulated
        run names its seed).
    config_sha256 : str, optional
        The hash of the configuration the run was made with.
    """
    params = check_section("report", params)
    data = load_run(files, name=run, group=group)
    return _render(data, params, index_href, source_checksums(data, sources), config_sha256)


# ---------------------------------------------------------------------------
# the index
# ---------------------------------------------------------------------------


def render_index(
    runs: Sequence[RunData],
    *,
    params: Mapping[str, Any] | None = None,
    groups: Mapping[str, tuple[Mapping[str, Any] | None, pd.DataFrame | None]] | None = None,
    inputs: Sequence[tuple[str, str, str]] = (),
    config_sha256: str | None = None,
) -> str:
    """The index page: every run's and group's distribution in one plot,
    their NTA figures in one table with each run's QC flags, links to the
    run pages, downloads and provenance.

    Parameters
    ----------
    runs : sequence of RunData
        What each run's files hold (:func:`load_run`); only the summary,
        distribution, sizes table and provenance are read.
    params : mapping, optional
        The ``report`` section.
    groups : mapping group -> (merged summary or None, merged distribution or None), optional
        The size stage's replicate merges; a group without one gets the mean
        ± standard error of its runs' figures.
    inputs : sequence of (run, input, sha256)
        The runs' source files with their checksums.
    config_sha256 : str, optional
        The hash of the configuration.
    """
    params = check_section("report", params)
    groups = groups or {}
    by_group: dict[str | None, list[RunData]] = {}
    for d in runs:
        by_group.setdefault(d.group, []).append(d)
    blocks = []
    for group, members in sorted(by_group.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        rows = [{"cells": [d.name, *index_run_cells(d.summary)], "href": f"{d.name}.html", "merged": False} for d in members]
        if group is not None:
            merged = groups.get(group, (None, None))[0]
            label = f"merged ({fmt(merged.get('n_replicates'))} replicates)" if merged else \
                f"mean of {len(members)} run(s)"
            rows.append({"cells": [label, *index_group_cells(merged, [d.summary for d in members])], "href": None, "merged": True})
        blocks.append({"title": f"Group {group}" if group is not None else "Runs without a group", "rows": rows})

    return render(
        "index.html.j2",
        title=params["title"],
        n_runs=len(runs), n_groups=len([g for g in by_group if g]),
        overlay=overlay_panel(runs, params["title"]),
        header=INDEX_HEADER,
        blocks=blocks,
        downloads=index_downloads(runs, params["title"]),
        settings=[{"name": d.name, "stages": stage_settings(d)} for d in runs],
        provenance=page_provenance(runs, inputs, config_sha256),
    )


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
        atomic_write(output.parent / f"{r['run']}.html", _render(data, params, output.name, run_inputs, config_sha256))
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
