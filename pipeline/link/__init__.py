"""The link stage: features (or refined features) -> tracks.

``link.method`` picks the linker:

- ``nearest`` (default): trackpy's nearest-neighbour linker
  (:func:`pipeline.link.nearest.link_nearest`);
- ``flow``: flow-interpolated, appearance-aware linking
  (``pipeline/link/flow.py``, function ``link_flow``).

:func:`run` is the file-level entry used by the Snakemake rule and by
``trackflow link``: it reads ``features.parquet`` or ``refined.parquet``,
links, and writes ``tracks.parquet`` (the kept rows plus ``particle``, sorted
by particle then frame) with the parameters and the counts of what was kept
and removed in its provenance; optionally ``flow.parquet``, the displacement
vectors of the accepted one-frame links.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..io.movie import MovieError, open_movie
from ..io.tables import position_columns, read_table, write_table
from ..io.config import with_defaults
from .nearest import COUNTS_ATTR, link_nearest, step_vectors

__all__ = ["link", "link_nearest", "run", "METHODS", "DEFAULTS"]

log = logging.getLogger("trackflow.link")

#: linker per ``link.method``, as "module:function" (imported when used)
METHODS = {
    "nearest": "pipeline.link.nearest:link_nearest",
    "flow": "pipeline.link.flow:link_tracks",
}

#: the ``link`` config section's keys and defaults (as in link.schema.yaml)
DEFAULTS: dict[str, Any] = {
    "method": "nearest",
    "search_range": 5,
    "search_range_um": None,
    "memory": 3,
    "adaptive_stop": None,
    "adaptive_step": 0.95,
    "link_strategy": "auto",
    "min_length": 5,
    "min_mass": None,
    "max_size": None,
    "max_ecc": None,
    "subtract_drift": False,
    "drift_smoothing": 0,
    "flow": {},
}

# keys every linker takes as keyword arguments
_LINKER_KEYS = (
    "search_range",
    "memory",
    "adaptive_stop",
    "adaptive_step",
    "link_strategy",
    "min_length",
    "subtract_drift",
    "drift_smoothing",
    "min_mass",
    "max_size",
    "max_ecc",
)


def link(features: pd.DataFrame, *, method: str = "nearest", **options: Any) -> pd.DataFrame:
    """Link features into tracks with the linker named by ``method``.

    Parameters
    ----------
    features : DataFrame
        ``frame, [z,] y, x`` in pixels, plus any other columns.
    method : {"nearest", "flow"}
    **options
        Keyword arguments of the linker (see :func:`link_nearest`).

    Returns
    -------
    DataFrame
        The kept rows plus ``particle``, sorted by particle then frame.
    """
    if method not in METHODS:
        raise ValueError(f"link.method must be one of {sorted(METHODS)}, got {method!r}")
    module_name, func_name = METHODS[method].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ValueError(f"link.method {method!r} is not available in this version of trackflow") from None
    return getattr(module, func_name)(features, **options)


def run(
    features: str | os.PathLike,
    output: str | os.PathLike,
    params: Mapping[str, Any],
    movie: str | os.PathLike | None = None,
    flow_output: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Link one run's features and write ``tracks.parquet``.

    Parameters
    ----------
    features : path
        ``features.parquet`` (locate) or ``refined.parquet`` (refine).
    output : path
        ``tracks.parquet`` to write.
    params : mapping
        The ``link`` config section (keys of :data:`DEFAULTS`; missing keys
        take their defaults, unknown keys are an error).
        ``search_range_um``, when set, replaces ``search_range`` (and makes
        ``adaptive_stop`` µm too): the movie's pixel size per axis turns it
        into pixels per axis, for anisotropic 3D linking. Methods other than
        ``nearest`` also get the keys of the nested ``flow`` section and
        ``movie``.
    movie : path, optional
        The run's ``movie.ome.zarr``; needed for ``search_range_um`` (and by
        the flow linker).
    flow_output : path, optional
        Where to write ``flow.parquet``: the displacement vectors of the
        accepted one-frame links (:func:`pipeline.link.nearest.step_vectors`).

    Returns
    -------
    DataFrame
        The tracks, as written.
    """
    params = _resolve_params(params)
    table = read_table(features, required=("frame", "y", "x"), stage="locate or refine")
    pos = position_columns(table)
    options = {key: params[key] for key in _LINKER_KEYS}
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
    if params["method"] != "nearest":
        options.update(params["flow"])
        options["movie"] = None if movie is None else str(movie)

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
    drift_cols = [f"drift_{c}" for c in pos if f"drift_{c}" in tracks.columns]
    if drift_cols and len(tracks):
        extra["drift_max_px"] = {c: float(np.abs(tracks[c]).max()) for c in drift_cols}
    write_table(tracks, output, stage="link", params=params, extra=extra)
    if flow_output is not None:
        write_table(step_vectors(tracks), flow_output, stage="link", params=params, extra={"input": str(features)})
    log.info("link: %d features -> %d tracks of %d features", len(table), tracks["particle"].nunique(), len(tracks))
    return tracks


def _resolve_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The section with defaults filled in; unknown keys are errors naming the key."""
    resolved = with_defaults("link", params, DEFAULTS)
    if resolved["method"] not in METHODS:
        raise ValueError(f"link.method must be one of {sorted(METHODS)}, got {resolved['method']!r}")
    if not isinstance(resolved["flow"] or {}, Mapping):
        raise ValueError(f"link.flow must be a mapping of the flow linker's keys, got {resolved['flow']!r}")
    resolved["flow"] = dict(resolved["flow"] or {})
    return resolved
