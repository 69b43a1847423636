"""The pages: one per run (:func:`render_run`) and the index over all runs
(:func:`render_index`), assembled from the sections the other modules make
and rendered from the templates (``templates/``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..io.schema import check_section
from . import objects
from .data import RunData, load_run
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

__all__ = ["render_index", "render_run", "render_run_page"]


# --- the run page ---------------------------------------------------------------


def _acquisition(data: RunData) -> list[tuple[str, str]] | None:
    """The movie's acquisition metadata (None without a movie)."""
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
        caption = "Reassigned labels on a few frames: one colour per identity throughout the movie."
        out["montage"] = figure_panel(data_uri(png, "image/png"), caption, "")
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


def render_run_page(
    data: RunData,
    params: Mapping[str, Any],
    index_href: str | None,
    inputs: Sequence[tuple[str, str, str]],
    config_sha256: str | None,
) -> str:
    """The HTML page of one run, from what its files hold.

    :func:`render_run` reads the files first; :func:`pipeline.report.run`
    writes these pages beside the index.

    Parameters
    ----------
    data : RunData
        What the run's files hold (:func:`load_run`).
    params : mapping
        The ``report`` section, checked (``check_section``).
    index_href : str or None
        Link back to the index (None: no link).
    inputs : sequence of (run, input, sha256)
        The run's source files with their checksums.
    config_sha256 : str or None
        The hash of the configuration.
    """
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
    return render_run_page(data, params, index_href, source_checksums(data, sources), config_sha256)


# --- the index ------------------------------------------------------------------


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
        rows = [{"cells": [d.name, *index_run_cells(d.summary)], "href": f"{d.name}.html", "merged": False}
                for d in members]
        if group is not None:
            merged = groups.get(group, (None, None))[0]
            label = f"merged ({fmt(merged.get('n_replicates'))} replicates)" if merged else \
                f"mean of {len(members)} run(s)"
            cells = [label, *index_group_cells(merged, [d.summary for d in members])]
            rows.append({"cells": cells, "href": None, "merged": True})
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
