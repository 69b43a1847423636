"""The link stage: features (or refined features) -> tracks.

``link.method`` picks the linker:

- ``nearest`` (default): trackpy's nearest-neighbour linker
  (:func:`pipeline.link.nearest.link_trackpy`);
- ``flow``: flow-interpolated, appearance-aware linking
  (:func:`pipeline.link.flow.link_flow`).

Whichever linker ran, the stage then removes short tracks and tracks whose
mean appearance is off, counts them, and optionally measures the drift
(:func:`pipeline.link.filters.finish_tracks`).

:func:`run` is the file-level entry used by the Snakemake rule and by
``trackflow link``: it reads ``features.parquet`` or ``refined.parquet``,
links, and writes ``tracks.parquet`` (the kept rows plus ``particle``, sorted
by particle then frame) with the parameters and the counts of what was kept
and removed in its provenance; optionally ``flow.parquet``, the displacement
vectors of the accepted one-frame links, and ``tracks.geff``, the same
tracks in the graph exchange file format for other tracking tools
(:func:`pipeline.io.geff.write_tracks_geff`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..io.geff import write_tracks_geff
from ..io.movie import MovieError, open_movie
from ..io.schema import check_section
from ..io.tables import FEATURE_COLUMNS, drift_columns, position_columns, read_table, write_table
from .filters import COUNTS_ATTR, FILTER_KEYS, finish_tracks
from .flow import link_tracks
from .nearest import link_nearest, link_trackpy, step_vectors

__all__ = ["link", "link_nearest", "run", "METHODS"]

log = logging.getLogger("trackflow.link")

#: the linker per ``link.method``: it links and removes nothing
METHODS = {"nearest": link_trackpy, "flow": link_tracks}


def link(features: pd.DataFrame, *, method: str = "nearest", **options: Any) -> pd.DataFrame:
    """Link features into tracks with the linker named by ``method``, then
    filter them and measure the drift.

    Parameters
    ----------
    features : DataFrame
        ``frame, [z,] y, x`` in pixels, plus any other columns.
    method : {"nearest", "flow"}
    **options
        The filters' keywords (``min_length``, ``min_mass``, ``max_size``,
        ``max_ecc``, ``subtract_drift``, ``drift_smoothing``:
        :func:`pipeline.link.filters.finish_tracks`) and the linker's
        (:func:`pipeline.link.nearest.link_trackpy`,
        :func:`pipeline.link.flow.link_tracks`).

    Returns
    -------
    DataFrame
        The kept rows plus ``particle``, sorted by particle then frame, with
        the counts in ``attrs["link_counts"]``.
    """
    if method not in METHODS:
        raise ValueError(f"link.method must be one of {sorted(METHODS)}, got {method!r}")
    filters = {key: options.pop(key) for key in FILTER_KEYS if key in options}
    linked = METHODS[method](features, **options)
    return finish_tracks(linked, features_in=len(features), **filters)


def run(
    features: str | os.PathLike,
    output: str | os.PathLike,
    params: Mapping[str, Any],
    movie: str | os.PathLike | None = None,
    flow_output: str | os.PathLike | None = None,
    *,
    geff_output: str | os.PathLike | None = None,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Link one run's features and write ``tracks.parquet``.

    Parameters
    ----------
    features : path
        ``features.parquet`` (locate) or ``refined.parquet`` (refine).
    output : path
        ``tracks.parquet`` to write.
    params : mapping
        The ``link`` config section (workflow/schemas/link.schema.yaml:
        missing keys take their defaults, unknown or bad keys are an error).
        ``search_range_um``, when set, replaces ``search_range`` (and makes
        ``adaptive_stop`` µm too): the movie's pixel size per axis turns it
        into pixels per axis, for anisotropic 3D linking. The flow linker
        also gets the keys of the nested ``flow`` section and ``movie``.
    movie : path, optional
        The run's ``movie.ome.zarr``; needed for ``search_range_um`` (and by
        the flow linker).
    flow_output : path, optional
        Where to write ``flow.parquet``: the displacement vectors of the
        accepted one-frame links (:func:`pipeline.link.nearest.step_vectors`).
    geff_output : path, optional
        Where to write the tracks as a geff store (``tracks.geff``), with
        physical positions and times from the movie (required then), the
        movie as its related image, and this stage's provenance
        (:func:`pipeline.io.geff.write_tracks_geff`).
    compute : mapping, optional
        The ``compute`` config section, for the flow linker's appearance
        step (:func:`pipeline.compute.dask_scheduler`). Not a parameter of
        the results: it is not recorded in the provenance.
    threads : int, optional
        The cores the job holds (a Snakemake rule's ``threads``): the
        appearance step's local workers. Nearest-neighbour linking runs in
        this process alone.

    Returns
    -------
    DataFrame
        The tracks, as written.
    """
    params = check_section("link", params)
    if geff_output is not None and movie is None:
        raise ValueError("link: writing tracks.geff needs the movie (for its pixel size and frame interval); "
                         "pass movie=")
    table = read_table(features, required=FEATURE_COLUMNS, stage="locate or refine")
    pos = position_columns(table)
    options = {key: value for key, value in params.items() if key not in ("method", "search_range_um", "flow")}
    pixel_size_um = None
    if params["search_range_um"] is not None:
        if movie is None:
            raise ValueError("link.search_range_um needs the movie (for its pixel size); pass movie=")
        pixel_size_um = list(open_movie(movie).pixel_size_um)
        if len(pixel_size_um) != len(pos):
            raise MovieError(
                f"{movie}: {len(pixel_size_um)}D movie but the features {features} are {len(pos)}D ({pos})"
            )
        options["search_range"] = params["search_range_um"]
        options["pixel_size_um"] = pixel_size_um
    if params["method"] == "flow":
        options.update(params["flow"])
        options.update(movie=None if movie is None else str(movie), compute=compute, threads=threads)

    # trackpy logs one line per frame at INFO: too much for a workflow log
    trackpy_log = logging.getLogger("trackpy")
    level = trackpy_log.level
    trackpy_log.setLevel(max(level, logging.WARNING))
    try:
        tracks = link(table, method=params["method"], **options)
    finally:
        trackpy_log.setLevel(level)

    counts = dict(tracks.attrs.get(COUNTS_ATTR, {}))
    extra: dict[str, Any] = {"input": str(features), **counts}
    if pixel_size_um is not None:
        extra["pixel_size_um"] = pixel_size_um
    drift_cols = [c for c in drift_columns(pos) if c in tracks.columns]
    if drift_cols and len(tracks):
        extra["drift_max_px"] = {c: float(np.abs(tracks[c]).max()) for c in drift_cols}
    write_table(tracks, output, stage="link", params=params, extra=extra)
    if flow_output is not None:
        write_table(step_vectors(tracks), flow_output, stage="link", params=params, extra={"input": str(features)})
    if geff_output is not None:
        mov = open_movie(movie)
        # what the size stage reads from the movie, so that the store can be sized without it
        conditions = {key: mov.metadata(key) for key in ("exposure_s", "temperature_K", "viscosity_Pa_s")}
        write_tracks_geff(
            tracks, geff_output, pixel_size_um=list(mov.pixel_size_um), frame_interval_s=mov.frame_interval_s,
            movie=movie, stage="link", params=params, extra={**extra, **conditions},
        )
    log.info("link: %d features -> %d tracks of %d features", len(table), tracks["particle"].nunique(), len(tracks))
    return tracks
