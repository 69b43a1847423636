"""Tracks in geff, the graph exchange file format of the tracking community.

A geff store is a Zarr group holding a graph: node ids and node properties,
edge ids (pairs of node ids) and edge properties, and the graph's metadata
(axes, property metadata, related objects) in the group's attributes under
``geff``. laptrack, TrackMate, ultrack and trackastra read and write it.
This module writes a link stage's tracks table as geff
(:func:`write_tracks_geff`) and reads geff written by any tracker back into
trackflow's tracks table (:func:`read_tracks_geff`), through geff's reference
implementation (the ``geff`` package; geff spec 1.3), which also validates
what it writes and reads.

What trackflow writes
---------------------
- One node per row of the tracks table. Node properties: ``t`` (s, frame ×
  frame interval) and ``[z,] y, x`` (µm, pixel position × pixel size), the
  geff axes (types ``time`` and ``space``, units ``second`` and
  ``micrometer``), named as the movie store's axes with the same units, so
  that the tracks lie on the movie in physical coordinates; ``frame`` and
  ``[z_px,] y_px, x_px``, trackpy's frame index and pixel positions;
  ``particle``, the track id, declared as the tracklet and lineage property;
  and every other column (``mass``, ``size``, ``ecc``, ``signal``,
  ``raw_mass``, ``ep``, ...) under its own name.
- One directed edge from each detection to the next one of its track. A gap
  closed by the linker's memory is one edge across the gap; the edge
  property ``frame_step`` holds the frames it spans (1 between consecutive
  frames).
- The movie store as a related object of type ``image`` (path relative to
  the geff group), when given.
- Provenance, as tables record theirs (:mod:`pipeline.io.tables`), under
  ``geff.extra.trackflow``: trackflow's version, the stage and its
  parameters, the library versions, the pixel size and frame interval and
  the table's column order.

The store is written to a temporary directory and renamed into place: a
failed write leaves no store (and an older one untouched).

What trackflow reads
--------------------
Any valid geff whose axes name a time axis and two or three space axes
(by ``type``, else by name: ``t``/``time``/``frame``, ``x``/``y``/``z`` or
names ending in ``_x``, ``_y``, ``_z`` such as TrackMate's ``POSITION_X``).
Space axes are matched to ``z, y, x`` by name, else by the display hints,
else by their order (last is ``x``); a ``z`` axis that is constant (a 2D
tracker writing ``z = 0``) is dropped.

- Positions in pixels: trackflow's own ``<axis>_px`` properties; else the
  axis' values in its unit: ``pixel`` as they are, a length unit
  (``micrometer``, ``nanometer``, TrackMate's ``micron``, ...) divided by
  the run's pixel size, which must then be given. An axis without a unit is
  an error unless ``space_unit`` says what it is.
- Frames: an integer node property ``frame`` (any case); else the time
  axis, in ``frame`` or in a time unit divided by the frame interval (each
  time must then fall on a whole frame).
- Structure: a particle tracker's track is a linear chain, one detection
  per frame, each edge going forward in time. An edge that does not go
  forward in time (a cycle, a link within a frame) is an error. A
  detection with several successors (a division) or several predecessors (a
  merge) ends the chains that meet there: its outgoing (division) or
  incoming (merge) edges are cut and every remaining chain is a track of its
  own. No detection is dropped; the divisions, merges, cut edges and
  resulting tracks are counted in the table's ``attrs["geff"]``, which the
  import records in the table's provenance.
- Every other scalar node property becomes a column (a missing value is NaN);
  properties with more than one value per node (polygons, covariances) are
  left out and listed.

Errors name the store and what is wrong (:class:`GeffError`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from numbers import Real
from pathlib import Path
from typing import Any, Mapping

import geff
import geff_spec
import numpy as np
import pandas as pd
from geff.core_io import read_to_memory, write_arrays
from geff.validate.data import ValidationConfig
from geff_spec import Axis, DisplayHint, GeffMetadata, PropMetadata, RelatedObject
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .. import __version__
from .files import atomic_directory
from .tables import TRACK_COLUMNS, jsonable, library_versions, position_columns, write_table

__all__ = [
    "GeffError",
    "GEFF_SETTINGS",
    "write_tracks_geff",
    "read_tracks_geff",
    "import_tracks_geff",
    "is_geff",
    "check_settings",
]

log = logging.getLogger("trackflow.geff")

#: The settings of a run whose tracks come from a geff store (runs.tsv's
#: ``settings``, ``trackflow size -s KEY=VALUE``): the physical conditions,
#: and the units of axes that state none.
GEFF_SETTINGS = (
    "pixel_size_um", "frame_interval_s", "exposure_s", "temperature_K", "viscosity_Pa_s",
    "space_unit", "time_unit",
)
#: The node properties trackflow writes besides the table's columns, with
#: the edge property: what they hold.
_DESCRIPTIONS = {
    "t": "time, s: frame × frame interval",
    "frame": "frame index in the movie (trackpy's frame)",
    "particle": "track id (trackpy's particle)",
    "frame_step": "frames between the two detections: 1, or more where the linker's memory bridged a gap",
}
_TIME_NAMES = {"t", "time", "frame", "frames", "position_t", "pos_t"}
#: length units -> µm (OME-Zarr's names and the abbreviations trackers write)
_LENGTH_UM = {
    "micrometer": 1.0, "micron": 1.0, "microns": 1.0, "um": 1.0, "µm": 1.0, "μm": 1.0,
    "nanometer": 1e-3, "nm": 1e-3, "angstrom": 1e-4, "picometer": 1e-6, "pm": 1e-6,
    "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4, "meter": 1e6, "m": 1e6,
}
_PIXEL = {"pixel", "pixels", "px", "pix"}
#: time units -> s
_TIME_S = {
    "second": 1.0, "seconds": 1.0, "s": 1.0, "sec": 1.0, "millisecond": 1e-3, "ms": 1e-3,
    "microsecond": 1e-6, "us": 1e-6, "µs": 1e-6, "nanosecond": 1e-9, "ns": 1e-9,
    "minute": 60.0, "min": 60.0, "hour": 3600.0, "h": 3600.0,
}
_FRAME = {"frame", "frames"}
#: how far a time may lie from a whole frame, in frames
_FRAME_TOLERANCE = 1e-3


class GeffError(ValueError):
    """A geff store is not valid, or not readable as particle tracks; the
    message names the store and what is wrong."""


def is_geff(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding a Zarr group with geff
    metadata (the attribute ``geff``, in Zarr v2's ``.zattrs`` or v3's
    ``zarr.json``)."""
    path = Path(path)
    for name, attributes in ((".zattrs", lambda d: d), ("zarr.json", lambda d: d.get("attributes"))):
        try:
            meta = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        attrs = attributes(meta) if isinstance(meta, dict) else None
        return isinstance(attrs, dict) and "geff" in attrs
    return False


def check_settings(settings: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """A geff run's settings, keys checked (:data:`GEFF_SETTINGS`); values
    are checked where they are used. An unknown key is a ValueError naming
    ``where`` and the allowed keys."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(GEFF_SETTINGS))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown} for tracks from a geff store "
                         f"(allowed: {', '.join(GEFF_SETTINGS)})")
    for key in ("space_unit", "time_unit"):
        if settings.get(key) is not None and not isinstance(settings[key], str):
            raise ValueError(f"{where}: setting {key!r} must be a unit name, got {settings[key]!r}")
    return settings


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def write_tracks_geff(
    tracks: pd.DataFrame,
    path: str | os.PathLike,
    *,
    pixel_size_um,
    frame_interval_s: float,
    movie: str | os.PathLike | None = None,
    stage: str = "link",
    params: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a tracks table as a geff store, atomically.

    Parameters
    ----------
    tracks : DataFrame
        The link stage's table: ``frame, [z,] y, x`` (pixels), ``particle``
        and any other columns (numbers, booleans or strings), one row per
        detection, at most one per track and frame.
    path : path-like
        The store to write (``tracks.geff``); an existing one is replaced.
    pixel_size_um : float or sequence
        µm per pixel, one value or one per axis (``[z,] y, x``).
    frame_interval_s : float
        Seconds between frames.
    movie : path-like, optional
        The movie store the tracks were found in, recorded as a related
        object (type ``image``) by its path relative to the store.
    stage : str
        The stage writing the store, for the provenance.
    params : mapping, optional
        That stage's parameters, as used.
    extra : mapping, optional
        Anything else worth recording (inputs, counts).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    GeffError
        A table that is not a set of tracks, or a column that geff cannot
        hold; the message names the store and the column.
    """
    path = Path(path)
    where = str(path)
    table = _check_tracks(tracks, where)
    pos = position_columns(table)
    px = _pixel_sizes(pixel_size_um, len(pos), where)
    dt = _positive(frame_interval_s, "frame_interval_s", where)
    table = table.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)

    frames = table["frame"].to_numpy(np.int64)
    particles = table["particle"].to_numpy(np.int64)
    src = np.flatnonzero(particles[1:] == particles[:-1]).astype(np.uint64)
    dst = src + np.uint64(1)
    edges = np.stack([src, dst], axis=1) if len(src) else np.empty((0, 2), dtype=np.uint64)
    frame_step = frames[dst.astype(np.int64)] - frames[src.astype(np.int64)]

    props: dict[str, np.ndarray] = {"t": frames * dt}
    meta_props = {"t": _prop("t", "float64", "second")}
    for col, size in zip(pos, px):
        props[col] = table[col].to_numpy(float) * size
        meta_props[col] = _prop(col, "float64", "micrometer", "position, µm: pixel position × pixel size")
    props["frame"] = frames
    meta_props["frame"] = _prop("frame", "int64")
    for col in pos:
        props[f"{col}_px"] = table[col].to_numpy(float)
        meta_props[f"{col}_px"] = _prop(f"{col}_px", "float64", "pixel",
                                        "position in pixels (trackpy's convention), as in the tracks table")
    props["particle"] = particles
    meta_props["particle"] = _prop("particle", "int64")
    others = [c for c in table.columns if c not in ("frame", "particle", *pos)]
    missing: dict[str, np.ndarray | None] = {}
    for col in others:
        if str(col) in props:
            raise GeffError(f"{where}: the table's column {col!r} has the name of a node property "
                            f"trackflow writes ({', '.join(props)})")
        props[str(col)], missing[str(col)] = _column_values(table[col], where)

    axes = [Axis(name="t", type="time", unit="second")]
    axes += [Axis(name=col, type="space", unit="micrometer") for col in pos]
    related = None
    if movie is not None:
        relative = os.path.relpath(Path(movie).resolve(), path.resolve())
        related = [RelatedObject(type="image", path=Path(relative).as_posix())]
    provenance = {
        "trackflow_version": __version__,
        "stage": stage,
        "params": dict(params or {}),
        "versions": {**library_versions(), "geff": geff.__version__, "geff_spec": geff_spec.__version__},
        "pixel_size_um": [float(v) for v in px],
        "frame_interval_s": dt,
        "columns": [str(c) for c in table.columns],
    }
    provenance.update({key: value for key, value in dict(extra or {}).items() if key not in provenance})
    metadata = GeffMetadata(
        directed=True,
        axes=axes,
        node_props_metadata=meta_props,
        edge_props_metadata={"frame_step": _prop("frame_step", "int64")},
        track_node_props={"tracklet": "particle", "lineage": "particle"},
        related_objects=related,
        display_hints=DisplayHint(display_horizontal="x", display_vertical="y",
                                  display_depth="z" if "z" in pos else None, display_time="t"),
        extra={"trackflow": jsonable(provenance)},
    )
    node_props = {name: {"values": values, "missing": missing.get(name)} for name, values in props.items()}
    edge_props = {"frame_step": {"values": frame_step.astype(np.int64), "missing": None}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(path) as tmp:
        write_arrays(tmp, np.arange(len(table), dtype=np.uint64), node_props, edges, edge_props, metadata)
    return path


def _prop(name: str, dtype: str, unit: str | None = None, description: str | None = None) -> PropMetadata:
    return PropMetadata(identifier=name, dtype=dtype, unit=unit, description=description or _DESCRIPTIONS.get(name))


def _check_tracks(tracks: Any, where: str) -> pd.DataFrame:
    """The tracks table, checked: required columns, whole frames and track
    ids, finite positions, at most one detection per track and frame."""
    if not isinstance(tracks, pd.DataFrame):
        raise GeffError(f"{where}: tracks must be a DataFrame, got {type(tracks).__name__}")
    missing = [c for c in TRACK_COLUMNS if c not in tracks.columns]
    if missing:
        raise GeffError(f"{where}: the tracks lack column(s) {missing} "
                        f"(expected {list(TRACK_COLUMNS)}, positions in px)")
    table = tracks.copy()
    table.attrs = {}
    for col in ("frame", "particle"):
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise GeffError(f"{where}: column {col!r} must hold whole numbers without gaps (NaN)")
        table[col] = values.astype(np.int64)
    for col in position_columns(table):
        if not np.all(np.isfinite(pd.to_numeric(table[col], errors="coerce").to_numpy(float))):
            raise GeffError(f"{where}: position column {col!r} has missing or infinite values")
    twice = table.duplicated(["particle", "frame"])
    if twice.any():
        row = table[twice].iloc[0]
        raise GeffError(f"{where}: {int(twice.sum())} detection(s) share a track and a frame with another "
                        f"(e.g. particle {row['particle']} in frame {row['frame']}): not a particle track")
    return table


def _column_values(series: pd.Series, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A column as geff property values and its missing mask (None if none
    is missing). Numbers and booleans keep their type (NaN is a float value,
    not a missing one); strings are stored as strings."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    dtype = series.dtype
    numpy_dtype = getattr(dtype, "numpy_dtype", dtype)  # pandas' nullable types
    na = series.isna().to_numpy()
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        filled = series.fillna(False if pd.api.types.is_bool_dtype(dtype) else 0) if na.any() else series
        return filled.to_numpy(numpy_dtype), (na if na.any() else None)
    if pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(numpy_dtype, na_value=np.nan)
        return (values.astype(np.float32) if values.dtype == np.float16 else values), None
    values = series.to_numpy(object)
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        if all(isinstance(v, str) for v in values[~na]):
            return np.array(["" if gap else v for v, gap in zip(values, na)], dtype=str), (na if na.any() else None)
    raise GeffError(f"{where}: column {series.name!r} (dtype {dtype}) holds values geff cannot store "
                    "(numbers, booleans and strings only)")


def _positive(value: Any, key: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise GeffError(f"{where}: {key} must be a positive number, got {value!r}")
    return number


def _pixel_sizes(pixel_size_um: Any, ndim: int, where: str) -> list[float]:
    """µm per pixel, one per axis (``[z,] y, x``): a single value is repeated."""
    values = list(pixel_size_um) if isinstance(pixel_size_um, (list, tuple, np.ndarray)) else [pixel_size_um]
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim:
        raise GeffError(f"{where}: pixel_size_um must be one value or one per axis ({ndim}), got {pixel_size_um!r}")
    return [_positive(v, "pixel_size_um", where) for v in values]


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_tracks_geff(
    path: str | os.PathLike,
    *,
    pixel_size_um=None,
    frame_interval_s: float | None = None,
    space_unit: str | None = None,
    time_unit: str | None = None,
) -> pd.DataFrame:
    """Read a geff store (trackflow's or another tracker's) as a tracks table.

    Parameters
    ----------
    path : path-like
        The geff store (the Zarr group whose attributes hold ``geff``).
    pixel_size_um : float or sequence, optional
        The run's µm per pixel (one value or one per axis, ``[z,] y, x``):
        needed when the positions are in a length unit and the store has
        no pixel positions.
    frame_interval_s : float, optional
        The run's seconds per frame: needed when times are in a time unit
        and the store has no integer ``frame`` property.
    space_unit, time_unit : str, optional
        The unit of space or time axes that state none (``pixel``,
        ``micrometer``, ...; ``frame``, ``second``, ...).

    Returns
    -------
    DataFrame
        ``frame, [z,] y, x`` (pixels), ``particle`` and the store's other
        scalar node properties, sorted by particle then frame (trackflow's
        own stores come back with their table's column order). ``attrs["geff"]``
        says what was read: ``geff_version``, ``n_nodes``, ``n_edges``,
        ``n_divisions``, ``n_merges``, ``n_edges_cut``, ``n_tracks``,
        ``pixel_size_um`` and ``frame_interval_s`` (given, else what the
        store states; None when unknown), ``space_units``, ``time_unit``,
        ``related_objects``, ``skipped`` (properties left out), ``notes``
        and ``trackflow`` (the provenance of a store trackflow wrote).

    Raises
    ------
    FileNotFoundError
        No store at ``path``.
    GeffError
        Not a valid geff, no time axis, not 2 or 3 space axes, a missing or
        NaN position, a unit that cannot be converted with what is given, an
        edge that does not go forward in time; the message names the store.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise FileNotFoundError(f"geff store {path} does not exist")
    memory = _read_memory(path, where)
    meta: GeffMetadata = memory["metadata"]
    props = memory["node_props"]
    node_ids = np.asarray(memory["node_ids"]).astype(np.int64)
    n = len(node_ids)
    recorded = meta.extra.get("trackflow") if isinstance(meta.extra, Mapping) else None
    recorded = recorded if isinstance(recorded, Mapping) else {}
    notes: list[str] = []

    time_axis, spaces = _axes(meta, where)
    letters = _letters(meta, spaces)
    consumed = {time_axis.name, *(ax.name for ax in spaces)}
    if len(spaces) == 3 and n > 1:
        z = letters.index("z")
        values = _axis_values(props, spaces[z].name, where)
        if np.ptp(values) == 0:
            notes.append(f"space axis {spaces[z].name!r} is constant ({values[0]:g}): read as 2D tracks")
            spaces, letters = spaces[:z] + spaces[z + 1:], letters[:z] + letters[z + 1:]
    order = sorted(range(len(spaces)), key=lambda i: "zyx".index(letters[i]))
    spaces, letters = [spaces[i] for i in order], [letters[i] for i in order]

    positions, px, space_units, used = _positions(props, spaces, letters, pixel_size_um, space_unit, recorded, where)
    consumed |= used
    frames, dt, t_unit, used = _frames(props, time_axis, frame_interval_s, time_unit, recorded, where)
    consumed |= used

    counts, segment = _segments(memory["edge_ids"], node_ids, frames, meta.directed, where)
    particle = _track_ids(props, meta, segment, consumed)

    columns: dict[str, Any] = {"frame": frames, **dict(zip(letters, positions)), "particle": particle}
    skipped = []
    for name, prop in props.items():
        if name in consumed:
            continue
        values = np.asarray(prop["values"])
        if values.dtype == object or values.ndim != 1:
            skipped.append(name)
            continue
        column = name if name not in columns else f"{name}_geff"
        columns[column] = _with_missing(values, prop.get("missing"))
    if skipped:
        notes.append(f"node properties with more than one value per node left out: {skipped}")
    table = pd.DataFrame(columns)
    if set(recorded.get("columns") or ()) == set(table.columns):
        table = table[list(recorded["columns"])]
    table = table.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    if counts["n_divisions"] or counts["n_merges"]:
        notes.append(f"{counts['n_divisions']} division(s) and {counts['n_merges']} merge(s) split: "
                     f"{counts['n_edges_cut']} edge(s) cut, each branch a track of its own")
    table.attrs["geff"] = jsonable({
        "path": where,
        "geff_version": meta.geff_version,
        "n_nodes": n,
        **counts,
        "pixel_size_um": px,
        "frame_interval_s": dt,
        "space_units": space_units,
        "time_unit": t_unit,
        "related_objects": [obj.model_dump(mode="json", exclude_none=True) for obj in meta.related_objects or []],
        "skipped": skipped,
        "notes": notes,
        "trackflow": dict(recorded) or None,
    })
    return table


def _read_memory(path: Path, where: str) -> dict:
    """The store in memory, its structure and graph validated by geff."""
    try:
        with warnings.catch_warnings():
            # TrackMate's 'micron', 'sec', ...: not OME-Zarr's names, but read here (unknown ones are errors)
            warnings.filterwarnings("ignore", message=r"(Spatial|Temporal) .*not in valid OME-Zarr units")
            return read_to_memory(path, data_validation=ValidationConfig(graph=True))
    except Exception as exc:  # pydantic, zarr and geff raise many kinds
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise GeffError(f"{where}: not a valid geff store: {message}") from exc


def _letter(name: str) -> str | None:
    """``x``, ``y`` or ``z`` when an axis name says which (``x``,
    ``POSITION_X``, ``coord-y``), else None."""
    name = name.strip().lower()
    if name in ("x", "y", "z"):
        return name
    if len(name) > 2 and name[-1] in "xyz" and name[-2] in "_-. :":
        return name[-1]
    return None


def _axes(meta: GeffMetadata, where: str) -> tuple[Axis, list[Axis]]:
    axes = list(meta.axes or [])
    if not axes:
        raise GeffError(f"{where}: declares no axes (geff metadata 'axes'): trackflow needs a time axis and 2 or 3 "
                        "space axes naming the node properties that hold them")

    def kind(ax: Axis) -> str | None:
        if ax.type is not None:
            return ax.type
        if ax.name.strip().lower() in _TIME_NAMES:
            return "time"
        return "space" if _letter(ax.name) else None

    names = [ax.name for ax in axes]
    times = [ax for ax in axes if kind(ax) == "time"]
    spaces = [ax for ax in axes if kind(ax) == "space"]
    if not times:
        raise GeffError(f"{where}: no time axis among the axes {names} (an axis of type 'time', or named t, time "
                        "or frame): tracks need the time of every detection")
    if len(times) > 1:
        raise GeffError(f"{where}: several time axes {[ax.name for ax in times]}; expected one")
    if len(spaces) not in (2, 3):
        raise GeffError(f"{where}: {len(spaces)} space axes {[ax.name for ax in spaces]} among the axes {names}; "
                        "trackflow reads 2D or 3D tracks")
    return times[0], spaces


def _letters(meta: GeffMetadata, spaces: list[Axis]) -> list[str]:
    """Which of ``z, y, x`` each space axis is: by name, else by the
    display hints, else by order (OME-Zarr's: ``..., z, y, x``)."""
    wanted = {"x", "y"} | ({"z"} if len(spaces) == 3 else set())
    by_name = [_letter(ax.name) for ax in spaces]
    if set(by_name) == wanted and len(set(by_name)) == len(spaces):
        return by_name
    hints = meta.display_hints
    if hints is not None:
        hinted = {hints.display_horizontal: "x", hints.display_vertical: "y", hints.display_depth: "z"}
        by_hint = [hinted.get(ax.name) for ax in spaces]
        if set(by_hint) == wanted and len(set(by_hint)) == len(spaces):
            return by_hint
    return ["z", "y", "x"][-len(spaces):]


def _axis_values(props: Mapping[str, Any], name: str, where: str) -> np.ndarray:
    """An axis' node values as floats; NaN is an error naming the property."""
    if name not in props:
        raise GeffError(f"{where}: the axis {name!r} has no node property of that name")
    values = np.asarray(props[name]["values"])
    if values.ndim != 1 or values.dtype == object or not (np.issubdtype(values.dtype, np.number)):
        raise GeffError(f"{where}: node property {name!r} must hold one number per node, got {values.dtype} "
                        f"of shape {values.shape}")
    values = values.astype(float)
    if not np.all(np.isfinite(values)):
        raise GeffError(f"{where}: node property {name!r} has {int((~np.isfinite(values)).sum())} NaN or "
                        "infinite value(s); every detection needs a position and a time")
    return values


def _unit(axis: Axis, fallback: str | None, what: str, where: str, option: str) -> str:
    unit = axis.unit or fallback
    if unit is None:
        raise GeffError(f"{where}: the {what} axis {axis.name!r} states no unit; give it ({option}: e.g. "
                        f"{'pixel or micrometer' if what == 'space' else 'frame or second'}), trackflow will "
                        "not guess it")
    return str(unit).strip().lower()


def _positions(props, spaces, letters, pixel_size_um, space_unit, recorded, where):
    """Pixel positions per space axis (``[z,] y, x``), the pixel size (given,
    else stated by the store, else None), the units read and the properties used."""
    ndim = len(spaces)
    given = None if pixel_size_um is None else _pixel_sizes(pixel_size_um, ndim, where)
    stated: list[float | None] = [None] * ndim
    own = recorded.get("pixel_size_um")
    if isinstance(own, list) and len(own) == ndim:
        stated = [float(v) for v in own]
    positions, units, used = [], [], set()
    for i, ax in enumerate(spaces):
        px_name = f"{ax.name}_px"
        if px_name in props and props[px_name].get("missing") is None:
            positions.append(_axis_values(props, px_name, where))
            units.append("pixel")
            used.add(px_name)
            continue
        values = _axis_values(props, ax.name, where)
        unit = _unit(ax, space_unit, "space", where, "space_unit")
        if unit in _PIXEL:
            positions.append(values)
            scaled = (ax.scaled_unit or "").strip().lower()
            if ax.scale is not None and scaled in _LENGTH_UM:
                stated[i] = float(ax.scale) * _LENGTH_UM[scaled]
        elif unit in _LENGTH_UM:
            size = given[i] if given is not None else stated[i]
            if size is None:
                raise GeffError(f"{where}: positions on the axis {ax.name!r} are in {ax.unit or space_unit}; "
                                "converting them to pixels needs the run's pixel size (pixel_size_um)")
            positions.append(values * _LENGTH_UM[unit] / size)
        else:
            raise GeffError(f"{where}: the space axis {ax.name!r} has unit {unit!r}, neither pixels nor a "
                            f"length trackflow knows ({', '.join(sorted(_LENGTH_UM))})")
        units.append(unit)
    px = given if given is not None else (stated if all(v is not None for v in stated) else None)
    return positions, px, dict(zip(letters, units)), used


def _frames(props, axis, frame_interval_s, time_unit, recorded, where):
    """Frame indices, the frame interval (given, else stated), the time unit
    read and the properties used."""
    unit = (axis.unit or time_unit or "").strip().lower() or None
    frame_name = next((name for name in props if name.strip().lower() == "frame"), None)
    frame_values = None
    if frame_name is not None and (frame_name != axis.name or unit in (None, *_FRAME)):
        values = np.asarray(props[frame_name]["values"])
        if (values.ndim == 1 and np.issubdtype(values.dtype, np.number) and props[frame_name].get("missing") is None
                and np.all(np.isfinite(values)) and np.all(values == np.round(values))):
            frame_values = values.astype(np.int64)
    dt = None if frame_interval_s is None else _positive(frame_interval_s, "frame_interval_s", where)
    stated = recorded.get("frame_interval_s")
    stated = float(stated) if isinstance(stated, Real) and stated > 0 else None
    used = {axis.name}
    if frame_values is not None:
        used.add(frame_name)
        if dt is None and stated is None and unit in _TIME_S:
            times = _axis_values(props, axis.name, where) * _TIME_S[unit]
            span = np.ptp(frame_values) if len(frame_values) else 0
            if span > 0:
                stated = float(np.ptp(times) / span)
        return frame_values, dt if dt is not None else stated, unit or "frame", used
    unit = _unit(axis, time_unit, "time", where, "time_unit")
    values = _axis_values(props, axis.name, where)
    if unit in _FRAME:
        frames = values
        scaled = (axis.scaled_unit or "").strip().lower()
        if stated is None and axis.scale is not None and scaled in _TIME_S:
            stated = float(axis.scale) * _TIME_S[scaled]
    elif unit in _TIME_S:
        interval = dt if dt is not None else stated
        if interval is None:
            raise GeffError(f"{where}: times on the axis {axis.name!r} are in {axis.unit or time_unit} and there is "
                            "no integer 'frame' property; converting them to frames needs the run's frame interval "
                            "(frame_interval_s)")
        frames = values * _TIME_S[unit] / interval
    else:
        raise GeffError(f"{where}: the time axis {axis.name!r} has unit {unit!r}, neither frame nor a time "
                        f"trackflow knows ({', '.join(sorted(_TIME_S))})")
    whole = np.round(frames)
    off = np.abs(frames - whole)
    if np.any(off > _FRAME_TOLERANCE):
        worst = int(np.argmax(off))
        raise GeffError(f"{where}: the time {values[worst]:g} ({unit}) on the axis {axis.name!r} is not a whole "
                        f"frame ({frames[worst]:.4g} frames); check frame_interval_s or the axis' unit")
    return whole.astype(np.int64), dt if dt is not None else stated, unit, used


def _segments(edge_ids, node_ids, frames, directed: bool, where: str) -> tuple[dict, np.ndarray]:
    """The linear chains of the graph: divisions and merges cut. Returns the
    counts and each node's chain (0, 1, ...)."""
    n = len(node_ids)
    order = np.argsort(node_ids, kind="stable")
    edges = np.asarray(edge_ids).astype(np.int64).reshape(-1, 2)
    index = order[np.searchsorted(node_ids, edges, sorter=order)] if len(edges) else edges
    src, dst = (index[:, 0], index[:, 1]) if len(edges) else (np.zeros(0, int), np.zeros(0, int))
    if not directed:  # an undirected link runs from the earlier detection to the later one
        swap = frames[src] > frames[dst]
        src, dst = np.where(swap, dst, src), np.where(swap, src, dst)
    back = frames[dst] <= frames[src]
    if back.any():
        i = int(np.flatnonzero(back)[0])
        raise GeffError(
            f"{where}: {int(back.sum())} edge(s) do not go forward in time (e.g. node {node_ids[src[i]]} in frame "
            f"{frames[src[i]]} -> node {node_ids[dst[i]]} in frame {frames[dst[i]]}): a cycle or a link within "
            "one frame is not a particle track"
        )
    out_degree = np.bincount(src, minlength=n)
    in_degree = np.bincount(dst, minlength=n)
    division, merge = out_degree > 1, in_degree > 1
    cut = division[src] | merge[dst]
    keep = ~cut
    graph = coo_matrix((np.ones(int(keep.sum())), (src[keep], dst[keep])), shape=(n, n))
    n_tracks, segment = connected_components(graph, directed=True, connection="weak")
    counts = {
        "n_edges": int(len(edges)),
        "n_divisions": int(division.sum()),
        "n_merges": int(merge.sum()),
        "n_edges_cut": int(cut.sum()),
        "n_tracks": int(n_tracks) if n else 0,
    }
    return counts, segment.astype(np.int64)


def _track_ids(props, meta: GeffMetadata, segment: np.ndarray, consumed: set) -> np.ndarray:
    """The store's own track ids (its tracklet property, else ``particle``)
    when they name the chains one to one, else the chains' numbers."""
    names = [(meta.track_node_props or {}).get("tracklet"), "particle"]
    for name in names:
        if name is None or name not in props or props[name].get("missing") is not None:
            continue
        values = np.asarray(props[name]["values"])
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            continue
        pairs = pd.DataFrame({"segment": segment, "id": values}).drop_duplicates()
        if len(pairs) == pairs["segment"].nunique() == pairs["id"].nunique():
            consumed.add(name)
            return values.astype(np.int64)
    return segment


def _with_missing(values: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
    if missing is None or not np.any(missing):
        return values
    if np.issubdtype(values.dtype, np.number) or values.dtype == bool:
        values = values.astype(float)
        values[np.asarray(missing, bool)] = np.nan
        return values
    values = values.astype(object)
    values[np.asarray(missing, bool)] = None
    return values


# ---------------------------------------------------------------------------
# a workflow run whose tracks come from a geff store
# ---------------------------------------------------------------------------


def import_tracks_geff(
    store: str | os.PathLike, output: str | os.PathLike, settings: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Read another tracker's geff store and write it as the run's
    ``tracks.parquet``, for the size and report stages.

    Parameters
    ----------
    store : path-like
        The geff store.
    output : path-like
        ``tracks.parquet`` to write: :func:`read_tracks_geff`'s table, with
        the settings as its parameters and what was read (divisions and
        merges split, units, the store's own provenance) in its provenance
        (stage ``import_geff``).
    settings : mapping, optional
        The run's settings (:data:`GEFF_SETTINGS`): ``pixel_size_um``,
        ``frame_interval_s``, ``space_unit`` and ``time_unit`` are used to
        read the store; the others are the size stage's.

    Returns
    -------
    DataFrame
        The tracks, as written.
    """
    settings = check_settings(settings, str(store))
    reading = {key: settings.get(key) for key in ("pixel_size_um", "frame_interval_s", "space_unit", "time_unit")}
    table = read_tracks_geff(store, **reading)
    info = dict(table.attrs["geff"])
    for note in info["notes"]:
        log.warning("import %s: %s", store, note)
    out = table.copy()
    out.attrs = {}
    write_table(out, output, stage="import_geff", params=settings, extra={"input": str(store), "geff": info})
    log.info("import %s: %d detections in %d tracks (%d divisions, %d merges split)", store, len(table),
             info["n_tracks"], info["n_divisions"], info["n_merges"])
    return table
