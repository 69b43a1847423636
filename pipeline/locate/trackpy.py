"""``locate.method: trackpy``: find features in every frame with trackpy.

Crocker & Grier's algorithm (J. Colloid Interface Sci. 179:298, 1996) as
implemented by ``trackpy.locate``: bandpass, local maxima by grey dilation,
iterative centroid refinement. The movie is cut into ranges of whole frames
(trackpy's percentile threshold is per image, so a frame is never split)
that Dask locates in parallel; the result is row for row what
``trackpy.batch`` returns for the same frames, with ``frame`` first and the
frame numbers of the movie (``batch`` counts from 0 in every call). With
trackpy's numba engine, the 2D integer frames :mod:`pipeline.locate.compiled`
covers have trackpy's image filters run as compiled kernels: the same table,
a quarter of the time.

Frames the movie lists as dropped (they never arrived; the store holds
zeros there) are skipped, not located.

Output columns: ``frame, [z,] y, x, mass, size, ecc, signal, raw_mass, ep``
(anisotropic 3D: ``size_z, size_y, size_x`` and, with anisotropic noise,
``ep_z, ep_y, ep_x``); without ``characterize``: ``frame, [z,] y, x, mass``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..io.movie import Movie, MovieError, open_movie
from ..io.schema import check_section, section_defaults

__all__ = [
    "TRACKPY_OPTIONS",
    "empty_features",
    "engine_used",
    "locate_frames",
]

log = logging.getLogger("trackflow.locate")

#: The locate keys that are not trackpy.locate's keyword arguments.
STAGE_KEYS = ("method", "matched", "learned", "diameter", "frames_per_task")
#: trackpy.locate's keyword arguments besides ``diameter``, with trackpy's own
#: defaults (as workflow/schemas/locate.schema.yaml gives them).
#: ``filter_before``/``filter_after`` are left out: trackpy rejects or ignores them.
TRACKPY_OPTIONS: dict[str, Any] = {
    key: value for key, value in section_defaults("locate").items() if key not in STAGE_KEYS
}


def _per_axis(name: str, value: Any, ndim: int) -> tuple:
    values = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else (value,) * ndim
    if len(values) != ndim:
        raise ValueError(
            f"locate: {name} {list(values)} needs one value per spatial axis ({ndim}) or a single value"
        )
    return values


def _check_options(diameter: Any, options: Mapping[str, Any], ndim: int) -> dict[str, Any]:
    """Validate trackpy options once, at the boundary; errors name the key.

    Types and ranges are the schema's (``locate.schema.yaml``); what depends
    on the frames' dimensionality is checked here.
    """
    unknown = sorted(set(options) - set(TRACKPY_OPTIONS))
    if unknown:
        raise ValueError(
            f"locate: unknown parameter(s) {unknown}; known: {['diameter', *TRACKPY_OPTIONS]}"
        )
    if ndim not in (2, 3):
        raise ValueError(f"locate: frames must be 2D or 3D, got {ndim} spatial dimensions")
    check_section("locate", {"diameter": diameter, **options})
    diameters = _per_axis("diameter", diameter, ndim)
    per_axis = isinstance(diameter, (list, tuple, np.ndarray))
    checked: dict[str, Any] = {
        "diameter": tuple(int(d) for d in diameters) if per_axis else int(diameter)
    }
    for key, value in options.items():
        if key in ("separation", "noise_size", "smoothing_size") and isinstance(value, (list, np.ndarray)):
            value = _per_axis(key, value, ndim)  # trackpy wants a tuple, YAML gives a list
        checked[key] = value
    # engine 'numba' without numba: an error now rather than a very slow run
    engine_used(checked.get("engine", "auto"), ndim)
    if len(set(diameters)) > 1 and checked.get("maxsize") is not None:
        raise ValueError(
            "locate: maxsize cannot be used with an anisotropic diameter (trackpy has no single size then)"
        )
    return checked


def engine_used(engine: str, ndim: int) -> str:
    """The refinement engine trackpy runs for ``engine`` on ``ndim``-D frames.

    Parameters
    ----------
    engine : {'auto', 'python', 'numba'}
        The ``locate.engine`` parameter.
    ndim : int
        Spatial dimensions of the frames.

    Returns
    -------
    str
        ``'numba'`` or ``'python'``: for ``'auto'``, trackpy's own choice
        (``trackpy.refine.center_of_mass.refine_com``: numba when it imports
        and the frames are 2D or 3D), so that the features stay those of
        ``trackpy.batch`` with that engine.

    Raises
    ------
    ValueError
        For ``'numba'`` without numba: trackpy would run its numba code as
        plain Python, far slower than the ``'python'`` engine, with only a warning.
    """
    from trackpy.try_numba import NUMBA_AVAILABLE

    if engine == "auto":
        return "numba" if NUMBA_AVAILABLE and ndim in (2, 3) else "python"
    if engine == "numba" and not NUMBA_AVAILABLE:
        raise ValueError("locate: engine 'numba' needs numba, which cannot be imported here (pip install numba)")
    return engine


def empty_features(ndim: int, *, diameter: Any, **trackpy_options: Any) -> pd.DataFrame:
    """The zero-row table ``locate`` returns when no feature is found, with the
    columns and dtypes a non-empty result would have for these options."""
    import trackpy

    options = _check_options(diameter, trackpy_options, ndim)
    radius = tuple(d // 2 for d in _per_axis("diameter", options["diameter"], ndim))
    blank = np.zeros(tuple(4 * r + 3 for r in radius), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Image is completely black"
        columns = list(trackpy.locate(blank, **options).columns)
    positions = ["z", "y", "x"][-ndim:]
    if options.get("characterize", True):
        # trackpy appends the static error only when there are features: one
        # column, or one per axis if radius or noise_size is anisotropic
        noise = _per_axis("noise_size", options.get("noise_size", 1), ndim)
        isotropic = len(set(radius)) == 1 and len(set(noise)) == 1
        columns += ["ep"] if isotropic else [f"ep_{axis}" for axis in positions]
    table = pd.DataFrame({"frame": pd.Series(dtype="int64")})
    for column in columns:
        table[column] = pd.Series(dtype="float64")
    return table


def _realign_axis_errors(features: pd.DataFrame) -> pd.DataFrame:
    """Undo trackpy 0.7's misaligned per-axis ``ep_*`` columns.

    For anisotropic diameters, ``trackpy.locate`` concatenates the per-axis
    static errors (numbered 0..n-1 in feature order) by index onto features
    whose index has gaps after filtering (minmass, topn): real rows get
    another feature's error or NaN, and the rest arrive as extra rows with no
    position. The error of the i-th feature sits at label i, so it can be put
    back exactly; a table without position-less rows is left untouched.
    """
    ep_columns = [c for c in features.columns if c.startswith("ep_")]
    if not ep_columns:  # the usual isotropic table: spare the per-frame scan (~1.5 ms on 1024x1024)
        return features
    positions = [c for c in ("z", "y", "x") if c in features.columns]
    located = features[positions].notna().all(axis=1)
    if located.all():
        return features
    real = features[located].copy()
    real[ep_columns] = features.loc[pd.RangeIndex(len(real)), ep_columns].to_numpy()
    return real.reset_index(drop=True)


def _compiled_path(options: Mapping[str, Any]):
    """:mod:`pipeline.locate.compiled` when trackpy would run its numba
    engine (the kernels need numba too), else None: ``engine: python`` stays
    trackpy's own code throughout."""
    if engine_used(options.get("engine", "auto"), 2) != "numba":
        return None
    from . import compiled

    return compiled


def image_filters_used(options: Mapping[str, Any], frame_shape: Sequence[int], dtype: Any) -> str:
    """Which code runs trackpy's image filters on such frames: ``'compiled'``
    (:mod:`pipeline.locate.compiled`) or ``'scipy'`` (``trackpy.locate``
    itself); for the provenance, the tables being the same either way."""
    compiled = _compiled_path(options)
    covered = compiled is not None and compiled.covers(tuple(frame_shape), dtype, options)
    return "compiled" if covered else "scipy"


def _locate_each(
    frames: np.ndarray, frame_numbers: Sequence[int], options: Mapping[str, Any]
) -> pd.DataFrame | None:
    """trackpy.locate on each frame, numbered; None if nothing was found.

    Frames the compiled kernels cover (2D integer frames, isotropic
    settings) go through :func:`pipeline.locate.compiled.locate`, the same
    table in a quarter of the time; the rest through ``trackpy.locate``.
    """
    import trackpy

    compiled = _compiled_path(options)
    found = []
    for frame_no, image in zip(frame_numbers, frames):
        if compiled is not None and compiled.covers(image.shape, image.dtype, options):
            features = compiled.locate(image, **options)
            if features is None:  # nothing found: trackpy's table would be empty too
                continue
        else:
            features = _realign_axis_errors(trackpy.locate(image, **options))
        if len(features):  # as trackpy.batch: frames without features add no rows
            features.insert(0, "frame", np.int64(frame_no))
            found.append(features)
    if not found:
        return None
    return pd.concat(found, ignore_index=True)


def locate_frames(
    frames: np.ndarray, first_frame: int = 0, *, diameter: Any, **trackpy_options: Any
) -> pd.DataFrame:
    """Locate features in consecutive frames with ``trackpy.locate``.

    Parameters
    ----------
    frames : ndarray, (t, y, x) or (t, z, y, x)
        The images, any integer or float dtype.
    first_frame : int
        Frame number of ``frames[0]`` in the movie: rows are numbered from it.
    diameter : odd int or sequence of odd ints
        Feature extent in pixels, one value per spatial axis for anisotropic
        voxels (``(z, y, x)`` order).
    **trackpy_options
        Any of :data:`TRACKPY_OPTIONS` (``minmass``, ``maxsize``,
        ``separation``, ``noise_size``, ``smoothing_size``, ``threshold``,
        ``invert``, ``percentile``, ``topn``, ``preprocess``,
        ``max_iterations``, ``characterize``, ``engine``), as in
        ``trackpy.locate``.

    Returns
    -------
    DataFrame
        ``frame`` first, then trackpy's columns (positions in pixels), rows in
        frame order; equal to ``trackpy.batch(frames, diameter, ...)`` with
        ``first_frame`` added to ``frame``. Zero rows (with these columns) if
        no feature was found.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(
            f"locate: frames must be (t, y, x) or (t, z, y, x), got an array of shape {frames.shape}"
        )
    options = _check_options(diameter, trackpy_options, frames.ndim - 1)
    numbers = range(int(first_frame), int(first_frame) + len(frames))
    found = _locate_each(frames, numbers, options)
    return found if found is not None else empty_features(frames.ndim - 1, **options)


def _locate_chunk(
    frames: np.ndarray, first_frame: int, *, dropped: Iterable[int], options: Mapping[str, Any]
) -> pd.DataFrame | None:
    """One Dask task: the frames of one range, less the dropped ones."""
    numbers = np.arange(first_frame, first_frame + len(frames))
    keep = ~np.isin(numbers, np.asarray(list(dropped), dtype=np.int64))
    if not keep.any():
        return None
    if keep.all():  # the usual case: no boolean-index copy of the whole range
        return _locate_each(frames, numbers.tolist(), options)
    return _locate_each(frames[keep], numbers[keep].tolist(), options)


def _open(movie: Movie | str | os.PathLike) -> Movie:
    movie = movie if isinstance(movie, Movie) else open_movie(movie)
    if len(movie) == 0:
        raise MovieError(f"{movie.path}: the movie has no frames, nothing to locate")
    return movie
