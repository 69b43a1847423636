"""A run in napari: the movie, its features, its tracks and its labels.

:func:`run_layers` reads a run's directory (the files of
:data:`pipeline.io.layout.RUN_FILES`) and returns napari layer data tuples,
``(data, kwargs, layer_type)``, without importing napari: it is the pure part,
and what the napari reader contribution (``napari results/RUN``, through
``pipeline/napari.yaml``) returns. :func:`open_viewer` adds them to a viewer
(``trackflow view results/RUN``; needs ``pip install 'trackflow[view]'``).

Every layer shares the movie's physical scale, read from the store's OME-Zarr
axes and scale: time in seconds, space in µm, so anisotropic voxels show at
their true proportions and the time slider steps by the frame interval.
Tables hold positions in pixels (trackpy's convention), which that scale
turns into the same physical coordinates as the image.

- ``movie`` (image): the movie store's image, read lazily frame by frame;
- ``labels``, ``reassigned`` (labels): the segment and reassign stages' label
  stores, when the run has them;
- ``features`` (points): locate's features, one point per row, with the
  table's other columns as point features (shown on hover);
- ``tracks`` (tracks): link's tracks, one track per ``particle``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io.layout import run_files
from .io.movie import Movie, MovieError, open_movie
from .io.tables import FEATURE_COLUMNS, TRACK_COLUMNS, position_columns, read_table, table_metadata

__all__ = ["run_layers", "open_viewer", "napari_get_reader", "LABEL_STORES"]

#: The label stores of a run, by layout key, in the order they are layered.
LABEL_STORES = ("labels", "reassigned")
#: Point size in pixels when locate's provenance names no diameter.
_DEFAULT_POINT_SIZE = 7.0

LayerData = tuple[Any, dict, str]


def _spatial(movie: Movie) -> dict[str, Any]:
    """The keyword arguments every layer shares: the movie's scale, axis
    names and units."""
    units = [u or "pixel" for u in movie.units]
    return {"scale": list(movie.scale), "axis_labels": list(movie.axes), "units": units}


def _contrast_limits(movie: Movie) -> list[float]:
    """From the middle frame (napari would otherwise read the whole movie)."""
    frame = np.asarray(movie.array[len(movie) // 2]) if len(movie) else np.zeros(1)
    lo, hi = (float(v) for v in np.percentile(frame, [0.0, 100.0]))
    return [lo, hi if hi > lo else lo + 1.0]


def _point_size(path: Path) -> float:
    """Locate's diameter (px) from the table's provenance, for the marker size."""
    diameter = (table_metadata(path).get("params") or {}).get("diameter")
    try:
        return float(np.max(np.atleast_1d(diameter).astype(float)))
    except (TypeError, ValueError):
        return _DEFAULT_POINT_SIZE


def run_layers(run_dir: str | os.PathLike) -> list[LayerData]:
    """The napari layers of one run, from the run's own files.

    Parameters
    ----------
    run_dir : path-like
        ``results/{run}/``: it must hold ``movie.ome.zarr``; features,
        tracks and label stores are added when present.

    Returns
    -------
    list of (data, kwargs, layer_type)
        napari's LayerDataTuple: ``viewer._add_layer_from_data(*layer)``,
        or ``getattr(viewer, f"add_{layer_type}")(data, **kwargs)``. In
        order: ``movie`` (image), ``labels`` and ``reassigned`` (labels),
        ``features`` (points, ``(frame, [z,] y, x)`` in pixels), ``tracks``
        (tracks, ``(particle, frame, [z,] y, x)``); each with the movie's
        ``scale`` (s, µm), ``axis_labels`` and ``units``.

    Raises
    ------
    FileNotFoundError
        No ``movie.ome.zarr`` in ``run_dir``.
    MovieError, TableError
        A store or table that cannot be read, or that does not fit the
        movie (another number of spatial axes); the message names the file.
    """
    run_dir = Path(run_dir)
    files = run_files(run_dir)
    if not files["movie"].exists():
        raise FileNotFoundError(f"{run_dir}: no {files['movie'].name} (is this a run's results directory?)")
    movie = open_movie(files["movie"])
    spatial = _spatial(movie)
    layers: list[LayerData] = [
        (
            movie.array,
            {
                "name": "movie",
                "contrast_limits": _contrast_limits(movie),
                "metadata": {"path": str(movie.path), "trackflow": movie.attrs},
                **spatial,
            },
            "image",
        )
    ]
    for key in LABEL_STORES:
        if not files[key].exists():
            continue
        labels = open_movie(files[key])
        if labels.axes != movie.axes or labels.frame_shape != movie.frame_shape:
            raise MovieError(
                f"{labels.path}: axes {labels.axes} and frame shape {labels.frame_shape} do not match "
                f"the movie's {movie.axes} {movie.frame_shape}"
            )
        layers.append(
            (labels.array, {"name": key, "opacity": 0.5, "metadata": {"path": str(labels.path)}, **spatial}, "labels")
        )
    if files["features"].exists():
        features = read_table(files["features"], required=FEATURE_COLUMNS, stage="locate")
        data, kept = _positions(features, ["frame"], movie, files["features"])
        layers.append(
            (
                data,
                {
                    "name": "features",
                    "size": _point_size(files["features"]),
                    "features": kept.drop(columns=position_columns(kept)).reset_index(drop=True),
                    "face_color": "transparent",
                    "border_color": "yellow",
                    "metadata": {"path": str(files["features"])},
                    **spatial,
                },
                "points",
            )
        )
    if files["tracks"].exists():
        tracks = read_table(files["tracks"], required=TRACK_COLUMNS, stage="link")
        tracks = tracks.sort_values(["particle", "frame"], kind="stable")
        data, _ = _positions(tracks, ["particle", "frame"], movie, files["tracks"])
        if len(data):
            layers.append(
                (
                    data,
                    {"name": "tracks", "tail_length": 30, "metadata": {"path": str(files["tracks"])}, **spatial},
                    "tracks",
                )
            )
    return layers


def _positions(df: pd.DataFrame, leading: list[str], movie: Movie, path: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """The ``leading`` columns then the positions, as floats, rows with a
    position that is not finite left out (with the rows kept)."""
    pos = position_columns(df)
    if len(pos) != movie.ndim:
        raise MovieError(f"{path}: {len(pos)}D positions {pos}, but {movie.path} holds {movie.ndim}D frames")
    data = df[leading + pos].to_numpy(dtype=float)
    finite = np.isfinite(data).all(axis=1)
    return data[finite], df.loc[finite]


def open_viewer(run_dir: str | os.PathLike, viewer: Any = None, *, show: bool = True) -> Any:
    """Open a run in napari: every layer of :func:`run_layers`.

    Parameters
    ----------
    run_dir : path-like
        ``results/{run}/``.
    viewer : napari.Viewer, optional
        Add to this viewer instead of a new one.
    show : bool
        Show the new viewer's window.

    Returns
    -------
    napari.Viewer
        Call ``napari.run()`` to hand control to it (``trackflow view`` does).
    """
    try:
        import napari
    except ImportError as exc:
        raise ImportError("trackflow view needs napari: pip install 'trackflow[view]'") from exc
    layers = run_layers(run_dir)  # before any window opens: a bad run is an error, not an empty viewer
    if viewer is None:
        viewer = napari.Viewer(title=f"trackflow: {Path(run_dir).resolve().name}", show=show)
    for data, kwargs, layer_type in layers:
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)  # napari >= 0.9
    (overlays.scale_bar if hasattr(overlays, "scale_bar") else viewer.scale_bar).visible = True
    viewer.dims.current_step = (0,) * viewer.dims.ndim
    return viewer


def napari_get_reader(path: str | list[str]):
    """napari's reader hook (``pipeline/napari.yaml``): a run's results
    directory opens as :func:`run_layers`; anything else is left to other
    readers (None)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not (Path(path) / run_files(path)["movie"].name).is_dir():
        return None
    return lambda p: run_layers(p[0] if isinstance(p, (list, tuple)) else p)
