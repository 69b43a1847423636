"""The physical conditions of a measurement: frame interval, pixel size,
exposure, temperature and viscosity, checked, from arguments or from the
movie's acquisition metadata."""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np

from ..physics import water_viscosity

__all__ = [
    "check_interval",
    "pixel_sizes",
    "is_number",
    "temperature_and_viscosity",
    "movie_conditions",
]

log = logging.getLogger("trackflow.size")


def check_interval(frame_interval_s) -> float:
    """The frame interval Δt as a positive float, s; anything else raises a
    ValueError naming ``trackflow.frame_interval_s``."""
    try:
        dt = float(frame_interval_s)
    except (TypeError, ValueError):
        dt = float("nan")
    if not math.isfinite(dt) or dt <= 0:
        raise ValueError(
            "frame interval 'trackflow.frame_interval_s' must be a positive number of seconds, "
            f"got {frame_interval_s!r}"
        )
    return dt


def pixel_sizes(pixel_size_um, ndim: int) -> np.ndarray:
    """µm per pixel, one per axis: a single value is repeated ``ndim`` times."""
    px = np.atleast_1d(np.asarray(pixel_size_um, dtype=float))
    if px.size == 1:
        px = np.repeat(px, ndim)
    if px.size != ndim or not np.all(np.isfinite(px)) or np.any(px <= 0):
        raise ValueError(
            f"pixel_size_um must be positive, one value or one per axis ({ndim}), got {pixel_size_um!r}"
        )
    return px


def is_number(value) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def temperature_and_viscosity(temperature_K, viscosity_Pa_s) -> tuple[float, float, str]:
    """Temperature (K) and viscosity (Pa·s) checked, the viscosity defaulting
    to water's at that temperature (Vogel equation); returns ``(T, η,
    where η comes from)``."""
    if temperature_K is None:
        raise ValueError(
            "temperature is unknown: set 'trackflow.temperature_K' in the movie or size.temperature_K"
        )
    T = float(temperature_K)
    if not math.isfinite(T) or T <= 0:
        raise ValueError(f"trackflow.temperature_K must be a positive temperature in K, got {temperature_K!r}")
    if viscosity_Pa_s is not None:
        eta, source = float(viscosity_Pa_s), "given"
    else:
        try:
            eta, source = float(water_viscosity(T)), "water (Vogel equation) at temperature_K"
        except ValueError as exc:
            raise ValueError(f"trackflow.viscosity_Pa_s is not set and {exc}") from None
    if not math.isfinite(eta) or eta <= 0:
        raise ValueError(f"trackflow.viscosity_Pa_s must be positive, got {viscosity_Pa_s!r}")
    return T, eta, source


def _number_or_none(value, key: str):
    if value is None:
        return None
    if not is_number(value):
        raise ValueError(f"movie metadata 'trackflow.{key}' must be a number, got {value!r}")
    return float(value)


def movie_conditions(mov, movie, p: Mapping[str, Any]) -> dict[str, Any]:
    """What the size stage needs from a movie store, the ``size`` section's
    ``temperature_K`` and ``viscosity_Pa_s`` winning over its metadata.

    Parameters
    ----------
    mov : pipeline.io.movie.Movie
        The opened store.
    movie : path-like
        Its path (for messages).
    p : mapping
        The checked ``size`` section.

    Returns
    -------
    dict
        ``frame_interval_s``, ``exposure_s`` (None: no motion blur),
        ``temperature_K`` and ``temperature_source``, ``viscosity_Pa_s``
        (None: water's) and ``viscosity_source``, ``pixel_size_um``,
        ``field_of_view_um2`` (the frame's y-x area), ``n_frames`` (dropped
        frames left out), ``dropped_frames`` (their number), ``depth_um``
        (the configured one, else a 3D movie's z extent, else None) and
        ``depth_source``.
    """
    try:
        dt = check_interval(mov.frame_interval_s)
    except ValueError as exc:
        raise ValueError(f"{movie}: {exc}") from None
    attr_dt = mov.attrs.get("frame_interval_s", dt)
    if attr_dt is not None and is_number(attr_dt) and not float(attr_dt) > 0:
        raise ValueError(f"{movie}: 'trackflow.frame_interval_s' must be positive, got {attr_dt!r}")
    exposure = _number_or_none(mov.metadata("exposure_s"), "exposure_s")
    if exposure is None:
        log.warning("%s: no 'trackflow.exposure_s'; assuming no motion blur (R = 0)", movie)
    if p["temperature_K"] is not None:
        T, t_source = p["temperature_K"], "config (size.temperature_K)"
    else:
        T = _number_or_none(mov.metadata("temperature_K"), "temperature_K")
        t_source = "movie"
        if T is None:
            raise ValueError(
                f"{movie}: acquisition metadata key 'trackflow.temperature_K' is missing "
                "(set size.temperature_K in the config to give it)"
            )
    if p["viscosity_Pa_s"] is not None:
        eta, eta_source = p["viscosity_Pa_s"], "config (size.viscosity_Pa_s)"
    else:
        eta = _number_or_none(mov.metadata("viscosity_Pa_s"), "viscosity_Pa_s")
        eta_source = "movie" if eta is not None else None
    dropped = {int(i) for i in mov.dropped_frames}
    spatial = mov.frame_shape[-2:]
    px = mov.pixel_size_um
    depth, depth_source = p["depth_um"], "config (size.depth_um)" if p["depth_um"] is not None else None
    if mov.ndim == 3 and depth is None:
        depth, depth_source = float(mov.frame_shape[0] * px[0]), "the movie's z extent"
    return {
        "frame_interval_s": dt,
        "exposure_s": exposure,
        "temperature_K": T,
        "temperature_source": t_source,
        "viscosity_Pa_s": eta,
        "viscosity_source": eta_source,
        "pixel_size_um": px,
        "field_of_view_um2": float(spatial[0] * px[-2] * spatial[1] * px[-1]),
        "n_frames": len(mov) - len([i for i in dropped if 0 <= i < len(mov)]),
        "dropped_frames": len(dropped),
        "depth_um": depth,
        "depth_source": depth_source,
    }
