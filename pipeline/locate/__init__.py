"""The locate stage: find features in every frame of a movie.

``locate.method`` chooses the detector:

- ``trackpy`` (the default): ``trackpy.locate`` (Crocker & Grier 1996) on
  every frame, row for row what ``trackpy.batch`` returns
  (:mod:`pipeline.locate.trackpy`);
- ``matched``: a filter matched to the spot, a threshold set from the false
  detections per frame a user accepts, least-squares Gaussian fits and, in
  3D, detection in the residual of the fits for touching particles
  (:mod:`pipeline.locate.matched`).

Both write trackpy's columns (``frame, [z,] y, x, mass, size, ecc, signal,
raw_mass, ep``), so refine, link and size read either. The stage itself
(:func:`locate_movie`, :func:`run`: Dask over ranges of whole frames,
dropped frames skipped, provenance) is :mod:`pipeline.locate.stage`.
"""

from .matched import (
    MATCHED_OPTIONS,
    detect,
    empty_matched,
    expected_false_maxima,
    fit_spots,
    locate_matched,
    locate_matched_frames,
    matched_filter,
    matched_options,
    noise_sd,
    threshold_for_false_rate,
)
from .stage import METHODS, locate_movie, run
from .trackpy import (
    TRACKPY_OPTIONS,
    _check_options,
    _locate_chunk,
    empty_features,
    engine_used,
    image_filters_used,
    locate_frames,
)

__all__ = [
    "METHODS",
    "TRACKPY_OPTIONS",
    "MATCHED_OPTIONS",
    "engine_used",
    "image_filters_used",
    "locate_frames",
    "locate_movie",
    "empty_features",
    "run",
    "locate_matched",
    "locate_matched_frames",
    "empty_matched",
    "detect",
    "matched_options",
    "matched_filter",
    "noise_sd",
    "threshold_for_false_rate",
    "expected_false_maxima",
    "fit_spots",
]
