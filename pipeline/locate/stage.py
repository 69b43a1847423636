"""The locate stage over a movie store: ``locate.method`` chooses the detector.

``trackpy`` (default): :mod:`pipeline.locate.trackpy`, row for row
``trackpy.batch``. ``matched``: :mod:`pipeline.locate.matched`. ``learned``:
:mod:`pipeline.locate.learned`, with a detector trained beforehand
(:mod:`pipeline.locate.train`, the workflow's train_detector rule). Either way the
movie is cut into ranges of whole frames that Dask locates in parallel,
dropped frames are skipped, and the table has trackpy's columns, so refine,
link and size read it the same way.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..compute import map_frame_chunks
from ..io.movie import Movie
from ..io.schema import check_section, section_defaults
from ..io.tables import write_table
from . import matched as _matched
from .trackpy import (
    TRACKPY_OPTIONS,
    _check_options,
    _locate_chunk,
    _open,
    empty_features,
    engine_used,
    image_filters_used,
)

__all__ = ["METHODS", "locate_movie", "run"]

log = logging.getLogger("trackflow.locate")

METHODS = ("trackpy", "matched", "learned")
_DEFAULTS = section_defaults("locate")


def _matched_chunk(
    frames: np.ndarray, first_frame: int, *, dropped: Iterable[int], options: Mapping[str, Any]
) -> pd.DataFrame | None:
    """One Dask task of the matched detector: one range, less the dropped frames."""
    numbers = np.arange(first_frame, first_frame + len(frames))
    keep = ~np.isin(numbers, np.asarray(list(dropped), dtype=np.int64))
    parts = []
    for number, image in zip(numbers[keep], frames[keep] if not keep.all() else frames):
        table = _matched.locate_matched(image, **options)
        if len(table):
            table.insert(0, "frame", np.int64(number))
            parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else None


def _learned_chunk(
    frames: np.ndarray, first_frame: int, *, dropped: Iterable[int], options: Mapping[str, Any]
) -> pd.DataFrame | None:
    """One Dask task of the learned detector: the network on the range's
    frames in batches, less the dropped ones, then the fits frame by frame."""
    from . import learned as _learned

    table = _learned.locate_learned_frames(frames, first_frame, dropped=dropped, **options)
    return table if len(table) else None


def _load_detector(detector: Any):
    from . import learned as _learned

    if detector is None:
        raise ValueError(
            "locate.method learned needs a trained detector: the workflow's train_detector rule makes "
            "results/{run}/detector/weights.npz; by hand, `trackflow train-detector MOVIE -o DIR` and "
            "`trackflow locate ... --detector DIR`"
        )
    return detector if isinstance(detector, _learned.Detector) else _learned.Detector.load(detector)


def _ignored_trackpy_keys(options: Mapping[str, Any]) -> list[str]:
    """trackpy keys set away from their defaults, which the matched detector does not read."""
    return sorted(
        key for key, value in options.items()
        if key in TRACKPY_OPTIONS and key not in _matched.SHARED_KEYS and value != TRACKPY_OPTIONS[key]
    )


def locate_movie(
    movie: Movie | str | os.PathLike,
    *,
    method: str = _DEFAULTS["method"],
    matched: Mapping[str, Any] | None = None,
    learned: Mapping[str, Any] | None = None,
    detector: Any = None,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    frames_per_task: int | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Locate features in every frame of a movie store, in parallel.

    Parameters
    ----------
    movie : Movie or path
        An OME-Zarr movie store (``movie.ome.zarr``).
    method : {'trackpy', 'matched', 'learned'}
        The detector (``locate.method``).
    matched : mapping, optional
        The ``locate.matched`` section (method ``matched`` only).
    learned : mapping, optional
        The ``locate.learned`` section (method ``learned`` only: its
        detection keys; the training keys are the detector's).
    detector : Detector or path, optional
        The trained detector (method ``learned``): a
        :class:`pipeline.locate.learned.Detector`, its ``weights.npz`` or
        its directory. With Dask's ``processes`` scheduler the learned
        detector runs on threads instead (the network is multi-threaded and
        releases the GIL; worker processes would each compile it).
    compute : mapping, optional
        The ``compute`` config section (scheduler, address, ...); see
        :func:`pipeline.compute.dask_scheduler`.
    threads : int, optional
        Local workers (default: the available cores).
    frames_per_task : int, optional
        Frames per Dask task (default: one shard, or fewer for short movies).
    **options
        ``diameter`` (required) and the trackpy options of
        :func:`pipeline.locate.locate_frames`; methods ``matched`` and
        ``learned`` read ``diameter``, ``invert`` and ``characterize`` and
        warn about the others.

    Returns
    -------
    DataFrame
        ``frame`` first, then trackpy's columns, skipping the movie's dropped
        frames; for method trackpy equal to :func:`pipeline.locate.locate_frames`
        on all frames. A warning is logged if no feature was found.
    """
    if method not in METHODS:
        check_section("locate", {"method": method})  # the schema's message, naming the key
    movie = _open(movie)
    if "diameter" not in options:
        raise ValueError("locate: the parameter 'diameter' is required")
    if method == "trackpy":
        task = _locate_chunk
        options = _check_options(options.pop("diameter"), options, movie.ndim)
        empty = lambda: empty_features(movie.ndim, **options)  # noqa: E731
    else:
        unknown = sorted(set(options) - set(TRACKPY_OPTIONS) - {"diameter"})
        if unknown:
            raise ValueError(f"locate: unknown parameter(s) {unknown}; known: {['diameter', *TRACKPY_OPTIONS]}")
        check_section("locate", {**options, "method": method})
        ignored = _ignored_trackpy_keys(options)
        if ignored:
            log.warning("locate.method %s ignores the trackpy key(s) %s", method, ", ".join(ignored))
        characterize = options.get("characterize", TRACKPY_OPTIONS["characterize"])
        invert = options.get("invert", TRACKPY_OPTIONS["invert"])
        if method == "matched":
            _matched.matched_options(options["diameter"], movie.ndim, matched)  # errors before any task starts
            task = _matched_chunk
            options = {"diameter": options["diameter"], "invert": invert, "characterize": characterize,
                       **dict(matched or {})}
            empty = lambda: _matched.empty_matched(movie.ndim, diameter=options["diameter"], characterize=characterize)  # noqa: E731
        else:
            from . import learned as _learned

            model = _load_detector(detector)
            if model.ndim != movie.ndim:
                raise ValueError(f"the learned detector was trained on {model.ndim}D frames; {movie.path} has "
                                 f"{movie.ndim}D frames (train it again for this movie)")
            detection = {k: v for k, v in dict(learned or {}).items() if k not in _learned.TRAINING_KEYS}
            task = _learned_chunk
            options = {"detector": model, "diameter": options["diameter"], "invert": invert,
                       "characterize": characterize, **detection}
            compute = dict(compute or {})
            if compute.get("scheduler", "processes") == "processes":
                compute["scheduler"] = "threads"

            def empty():
                table = _matched.empty_matched(movie.ndim, diameter=options["diameter"], characterize=characterize)
                table["score"] = pd.Series(dtype="float64")
                return table
    if not movie.complete:
        log.warning(
            "%s is not marked complete (acquisition interrupted?); locating its %d frames",
            movie.path, len(movie),
        )
    dropped = sorted(int(i) for i in movie.dropped_frames if 0 <= i < len(movie))
    if dropped:
        log.info("%s: skipping %d dropped frame(s)", movie.path, len(dropped))
    if len(dropped) == len(movie):
        features = None
    else:
        def dropped_in(start: int, stop: int) -> dict | None:
            """Each task gets only its own dropped frames; a range of nothing
            but dropped frames is not even read."""
            inside = [i for i in dropped if start <= i < stop]
            return None if len(inside) == stop - start else {"dropped": inside}

        features = map_frame_chunks(
            task,
            movie,
            compute=compute,
            threads=threads,
            frames_per_task=frames_per_task,
            chunk_kwargs=dropped_in,
            options=options,
            progress="locate",
        )
    if features is None or len(features) == 0:
        hint = {"trackpy": "diameter and minmass", "matched": "diameter and matched.false_rate",
                "learned": "the detector's training settings and learned.precision"}[method]
        log.warning("%s: no features found in %d frame(s); check %s", movie.path, len(movie), hint)
        return empty()
    return features


def run(
    movie: str | os.PathLike,
    output: str | os.PathLike,
    params: Mapping[str, Any] | None,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    detector: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The locate stage: ``movie.ome.zarr`` -> ``features.parquet``.

    Parameters
    ----------
    movie : path
        The movie store.
    output : path
        The features table to write (Parquet, with provenance: the
        parameters, ``method`` among them, and for method matched the
        threshold it resolved to).
    params : mapping
        The ``locate`` config section (``locate.schema.yaml``: missing keys
        take its defaults, unknown keys and bad values are errors naming the key).
    compute : mapping, optional
        The ``compute`` config section.
    threads : int, optional
        Local workers (a Snakemake rule's ``threads``).
    detector : path, optional
        The trained detector (``weights.npz`` or its directory; method
        learned only: made by the train_detector stage, :mod:`pipeline.locate.train`).

    Returns
    -------
    DataFrame
        The features written.
    """
    resolved = check_section("locate", params)
    opened = _open(movie)
    method = resolved["method"]
    options = {k: v for k, v in resolved.items() if k not in ("frames_per_task", "method", "matched", "learned")}
    model = _load_detector(detector) if method == "learned" else None
    features = locate_movie(
        opened, method=method, matched=resolved["matched"], learned=resolved["learned"], detector=model,
        compute=compute, threads=threads, frames_per_task=resolved["frames_per_task"], **options,
    )
    dropped = [int(i) for i in opened.dropped_frames]
    extra: dict[str, Any] = {
        "movie": str(opened.path),
        "n_frames": len(opened),
        "dropped_frames": dropped,
        "n_features": len(features),
        "method": method,
    }
    if method == "trackpy":
        extra["engine_used"] = engine_used(options["engine"], opened.ndim)
        extra["image_filters"] = image_filters_used(options, opened.frame_shape, opened.dtype)
        how = f"trackpy, {extra['engine_used']} engine, {extra['image_filters']} image filters"
    elif method == "learned":
        from . import learned as _learned

        opts = _learned._resolve(model, options["diameter"], resolved["learned"])
        extra["threshold_used"] = opts["threshold"]
        extra["detector"] = {"path": str(detector), "settings": model.settings,
                             "settings_sha256": model.provenance.get("settings_sha256"),
                             "validation_at_threshold": _learned.validation_at(model, opts["threshold"])}
        how = f"learned, threshold {opts['threshold']:.2f}"
    else:
        opts = _matched.matched_options(options["diameter"], opened.ndim, resolved["matched"])
        if opts["threshold"] is None:
            extra["threshold_used"] = _matched.threshold_for_false_rate(
                float(opts["false_rate"]), tuple(opened.frame_shape), tuple(opts["sigma"]),
                float(opts["background_scale"]),
            )
        else:
            extra["threshold_used"] = float(opts["threshold"])
        extra["sigma_used"] = list(opts["sigma"])
        how = f"matched, threshold {extra['threshold_used']:.2f} noise s.d."
    write_table(features, output, stage="locate", params=resolved, extra=extra)
    log.info(
        "%s: %d features in %d frames (%d dropped, %s) -> %s",
        opened.path, len(features), len(opened), len(dropped), how, output,
    )
    return features
