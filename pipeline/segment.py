"""The segment stage: label the objects of every frame (2D or 3D).

For samples whose objects are not points (organelles, aggregates, clusters),
each frame is segmented on its own (science.md §4, step 1):

1. smooth with a Gaussian (``sigma``, pixels, per axis allowed);
2. threshold: Otsu's (1979) or the triangle method (Zack et al. 1977),
   computed per frame, or a fixed value (in the movie's intensity units);
3. fill holes (enclosed background becomes object);
4. connected components (``connectivity`` 1: faces; ``ndim``: faces, edges
   and corners);
5. drop components smaller than ``min_size`` voxels.

Label ids of a frame are its components numbered 1..n in raster order:
identities through time are the ``reassign`` stage's job.

:func:`run` segments a ``movie.ome.zarr`` Dask-parallel over ranges of whole
frames and writes ``labels.ome.zarr`` (int32, the movie's axes, chunks,
shards and physical scale). Tasks compute in waves of as many ranges as
there are workers and the labels are written in frame order through the
store's writer, so memory holds one wave of labels, never the movie. Frames
the movie lists as dropped are not segmented and stay dropped (unwritten) in
the labels store.

References
----------
Otsu, N. (1979), A threshold selection method from gray-level histograms,
IEEE Trans. Syst. Man Cybern. 9:62.
Zack, G. W., Rogers, W. E. & Latt, S. A. (1977), Automatic measurement of
sister chromatid exchange frequency, J. Histochem. Cytochem. 25:741.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import dask
import numpy as np
from scipy import ndimage as ndi

from .compute import dask_scheduler, frame_ranges, scheduler_workers, validate_compute
from .progress import dask_compute, progress
from .io.movie import Movie, MovieError, create_movie, open_movie, update_attributes
from .io.schema import check_section, section_defaults

__all__ = ["frame_threshold", "segment_frame", "segment_frames", "segment_movie", "run",
           "mark_as_labels"]

log = logging.getLogger("trackflow.segment")

#: Defaults of every key (workflow/schemas/segment.schema.yaml).
_DEFAULTS = section_defaults("segment")
# keys that are keyword arguments of segment_frames
_SEGMENT_KEYS = ("sigma", "threshold", "invert", "fill_holes", "connectivity", "min_size")


def _check_options(ndim: int, sigma, threshold, invert, fill_holes, connectivity, min_size) -> tuple:
    """Validate the segmentation options once; errors name the key.

    Types and ranges are the schema's (``segment.schema.yaml``); what
    depends on the frames' dimensionality is checked here.
    """
    if ndim not in (2, 3):
        raise ValueError(f"segment: frames must be 2D (y, x) or 3D (z, y, x), got {ndim} spatial dimensions")
    check_section("segment", dict(zip(_SEGMENT_KEYS, (sigma, threshold, invert, fill_holes, connectivity, min_size))))
    sigmas = np.atleast_1d(np.asarray(sigma, dtype=float))
    if len(sigmas) not in (1, ndim):
        raise ValueError(f"segment.sigma must be one number or one per axis ({ndim}), got {sigma!r}")
    if np.any(~np.isfinite(sigmas)):
        raise ValueError(f"segment.sigma must be finite, got {sigma!r}")
    sigmas = np.broadcast_to(sigmas, (ndim,))
    if not isinstance(threshold, str) and not math.isfinite(threshold):
        raise ValueError(f"segment.threshold must be 'otsu', 'triangle' or a finite number, got {threshold!r}")
    if connectivity > ndim:
        raise ValueError(f"segment.connectivity must be 1..{ndim} for {ndim}D frames, got {connectivity!r}")
    return tuple(float(s) for s in sigmas), threshold, bool(invert), bool(fill_holes), int(connectivity), int(min_size)


def frame_threshold(image: np.ndarray, threshold="otsu") -> float:
    """The threshold of one (smoothed) frame: Otsu's, the triangle method's,
    or ``threshold`` itself when it is a number. NaN for a constant frame
    (nothing to separate)."""
    if not isinstance(threshold, str):
        return float(threshold)
    lo, hi = float(image.min()), float(image.max())
    if not hi > lo:
        return math.nan
    from skimage.filters import threshold_otsu, threshold_triangle

    method = threshold_otsu if threshold == "otsu" else threshold_triangle
    return float(method(image))


def segment_frame(
    frame: np.ndarray,
    *,
    sigma=_DEFAULTS["sigma"],
    threshold=_DEFAULTS["threshold"],
    invert: bool = _DEFAULTS["invert"],
    fill_holes: bool = _DEFAULTS["fill_holes"],
    connectivity: int = _DEFAULTS["connectivity"],
    min_size: int = _DEFAULTS["min_size"],
) -> np.ndarray:
    """Label the objects of one frame (see :func:`segment_frames`)."""
    frame = np.asarray(frame)
    sigmas, threshold, invert, fill_holes, connectivity, min_size = _check_options(
        frame.ndim, sigma, threshold, invert, fill_holes, connectivity, min_size
    )
    return _segment(frame, sigmas, threshold, invert, fill_holes, connectivity, min_size)


def _segment(frame, sigmas, threshold, invert, fill_holes, connectivity, min_size) -> np.ndarray:
    image = frame.astype(np.float32, copy=False)
    if any(s > 0 for s in sigmas):
        image = ndi.gaussian_filter(image, sigmas, mode="nearest")
    if invert:
        image = -image
        if not isinstance(threshold, str):
            threshold = -float(threshold)
    level = frame_threshold(image, threshold)
    if math.isnan(level):
        return np.zeros(frame.shape, dtype=np.int32)
    mask = image > level
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    structure = ndi.generate_binary_structure(frame.ndim, connectivity)
    labels, n = ndi.label(mask, structure=structure)
    if n == 0:
        return labels.astype(np.int32, copy=False)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    # renumber the kept components 1..k, in raster order of first voxel
    new_ids = np.zeros(n + 1, dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_ids[labels]


def segment_frames(
    frames,
    first_frame: int = 0,
    *,
    sigma=_DEFAULTS["sigma"],
    threshold=_DEFAULTS["threshold"],
    invert: bool = _DEFAULTS["invert"],
    fill_holes: bool = _DEFAULTS["fill_holes"],
    connectivity: int = _DEFAULTS["connectivity"],
    min_size: int = _DEFAULTS["min_size"],
    skip=(),
) -> np.ndarray:
    """Label the objects of every frame of a stack.

    Parameters
    ----------
    frames : array (t, y, x) or (t, z, y, x)
        The frames (any real dtype).
    first_frame : int
        Index of ``frames[0]`` in the movie (to name frames in errors and to
        match ``skip``).
    sigma : float or sequence
        Standard deviation of the Gaussian smoothing, in pixels, one value or
        one per spatial axis ((z,) y, x); 0 for none.
    threshold : {"otsu", "triangle"} or float
        Per-frame automatic threshold of the smoothed frame, or a fixed value
        in the movie's intensity units. Objects are brighter than it (darker
        with ``invert``).
    invert : bool
        Objects are darker than the background.
    fill_holes : bool
        Fill background enclosed by an object (in 3D: enclosed in 3D).
    connectivity : int
        1: voxels sharing a face are connected; up to ``ndim``: also edges
        (and corners).
    min_size : int
        Components with fewer voxels are dropped.
    skip : collection of int
        Movie frame indices to leave empty (frames that never arrived).

    Returns
    -------
    ndarray of int32, the shape of ``frames``
        Per frame, its objects numbered 1..n (0 is background).
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(
            f"segment: frames must be a stack (t, y, x) or (t, z, y, x), got an array of shape {frames.shape}"
        )
    if not np.issubdtype(frames.dtype, np.number) or np.issubdtype(frames.dtype, np.complexfloating):
        raise ValueError(f"segment: frames must hold real numbers, got dtype {frames.dtype}")
    options = _check_options(frames.ndim - 1, sigma, threshold, invert, fill_holes, connectivity, min_size)
    skip = set(int(s) for s in skip)
    out = np.zeros(frames.shape, dtype=np.int32)
    for k, frame in enumerate(frames):
        index = first_frame + k
        if index in skip:
            continue
        if np.issubdtype(frame.dtype, np.floating) and not np.isfinite(frame).all():
            raise ValueError(f"segment: frame {index} has non-finite values")
        out[k] = _segment(frame, *options)
    return out


def _segment_task(path: str, start: int, stop: int, skip, options: Mapping[str, Any]) -> np.ndarray:
    """One Dask task: read frames ``start..stop-1`` of the store and label them."""
    frames = open_movie(path).frames(start, stop)
    return segment_frames(frames, start, skip=skip, **options)


def segment_movie(
    movie: Movie | str | os.PathLike,
    output: str | os.PathLike,
    *,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    frames_per_task: int | None = None,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    **options: Any,
) -> Movie:
    """Segment every frame of a movie store into a label store.

    Parameters
    ----------
    movie : Movie or path
        The movie store.
    output : path
        The label store to write (``labels.ome.zarr``): int32, the movie's
        frame shape, shards and scale.
    compute : mapping, optional
        The ``compute`` config section (:func:`pipeline.compute.dask_scheduler`).
    threads : int, optional
        Local workers.
    frames_per_task : int, optional
        Frames per task (default ``compute.frames_per_task``, else one shard
        or fewer for short movies).
    overwrite : bool
        Replace an existing label store.
    metadata : mapping, optional
        More ``trackflow`` attributes for the label store.
    **options
        Keyword arguments of :func:`segment_frames`.

    Returns
    -------
    Movie
        The label store, opened.
    """
    movie = movie if isinstance(movie, Movie) else open_movie(movie)
    if len(movie) == 0:
        raise MovieError(f"{movie.path}: the movie has no frames; nothing to segment")
    unknown = sorted(set(options) - set(_SEGMENT_KEYS))
    if unknown:
        raise ValueError(f"segment: unknown parameter(s) {unknown}; known: {list(_SEGMENT_KEYS)}")
    checked = _check_options(movie.ndim, **{**{k: _DEFAULTS[k] for k in _SEGMENT_KEYS}, **options})
    options = dict(zip(_SEGMENT_KEYS, checked))
    compute = validate_compute(compute)
    per_task = frames_per_task if frames_per_task is not None else compute.get("frames_per_task")
    dropped = set(int(i) for i in movie.dropped_frames)

    writer = create_movie(
        output,
        movie.frame_shape,
        "int32",
        pixel_size_um=movie.pixel_size_um,
        frame_interval_s=movie.frame_interval_s,
        frames_per_shard=movie.frames_per_shard,
        first_seq=int(movie.attrs.get("first_seq", 0)),
        overwrite=overwrite,
        metadata={
            "source": "segment",
            "movie": str(movie.path),
            "segment": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
            **dict(metadata or {}),
        },
    )
    mark_as_labels(output, source_image=movie.path)
    timestamps = movie.timestamps()
    n_objects = 0
    with (
        writer,
        dask_scheduler(compute, threads, preload=[__name__]) as how,
        progress("segment", total=len(movie)) as advance,
    ):
        workers = scheduler_workers(how)
        bounds = frame_ranges(len(movie), movie.frames_per_shard, workers, per_task)
        # waves of one task per worker: parallel compute, writes in frame order
        for w in range(0, len(bounds), workers):
            wave = bounds[w : w + workers]
            tasks = [
                dask.delayed(_segment_task, pure=True)(
                    str(movie.path), a, b, sorted(i for i in dropped if a <= i < b), options
                )
                for a, b in wave
            ]
            computed = dask_compute(*tasks, advance=advance, weights=[b - a for a, b in wave], **how)
            for (start, stop), labels in zip(wave, computed):
                for k, frame_labels in enumerate(labels):
                    index = start + k
                    if index in dropped:
                        continue  # stays unwritten: dropped in the label store too
                    n_objects += int(frame_labels.max())
                    writer.write(index, frame_labels, float(timestamps[index]))
        writer.set_attributes(
            frames_expected=len(movie),
            n_objects=n_objects,
            objects_per_frame=round(n_objects / max(len(movie) - len(dropped), 1), 3),
        )
        writer.close(complete=True, n_frames=len(movie))
    log.info("segment: %s -> %s, %d objects in %d frames", movie.path, output, n_objects, len(movie))
    return open_movie(output)


def mark_as_labels(store: str | os.PathLike, source_image: str | os.PathLike | None = None) -> None:
    """Mark an OME-Zarr store's image as a label image (NGFF ``image-label``),
    so that viewers (napari-ome-zarr) open it as labels. ``source_image`` is
    the image the labels belong to, recorded relative to the store."""
    label_meta: dict[str, Any] = {}
    if source_image is not None:
        label_meta["source"] = {"image": os.path.relpath(Path(source_image).resolve(), Path(store).resolve())}
    update_attributes(store, {"ome": {"image-label": label_meta}})


def run(
    movie: str | os.PathLike,
    output: str | os.PathLike,
    params: Mapping[str, Any] | None,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    *,
    overwrite: bool = False,
) -> Movie:
    """The segment stage: ``movie.ome.zarr`` -> ``labels.ome.zarr``.

    Parameters
    ----------
    movie : path
        The movie store.
    output : path
        The label store to write.
    params : mapping
        The ``segment`` config section (``segment.schema.yaml``: missing
        keys take its defaults, unknown keys and bad values are errors). ``enabled``
        only tells the workflow whether to run the stage.
    compute : mapping, optional
        The ``compute`` config section.
    threads : int, optional
        Local workers (a Snakemake rule's ``threads``).
    overwrite : bool
        Replace an existing label store.

    Returns
    -------
    Movie
        The label store, opened (its ``complete`` attribute is true).
    """
    resolved = check_section("segment", params)
    opened = open_movie(movie)
    options = {k: resolved[k] for k in _SEGMENT_KEYS}
    return segment_movie(
        opened,
        output,
        compute=compute,
        threads=threads,
        frames_per_task=resolved["frames_per_task"],
        overwrite=overwrite,
        metadata={"params": resolved},
        **options,
    )
