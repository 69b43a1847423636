"""The physical conditions of a measurement: frame interval, pixel size,
exposure, temperature and viscosity, checked, from arguments, from the
movie's acquisition metadata, or from a run's settings when its tracks came
without a movie (another tracker's geff store)."""

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
    "settings_conditions",
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


def settings_conditions(settings: Mapping[str, Any], p: Mapping[str, Any], *, ndim: int, where: str) -> dict[str, Any]:
    """What :func:`movie_conditions` gives, from a run's settings instead of
    a movie: for tracks made by another tracker (a geff store), where no
    movie store holds the acquisition metadata.

    Parameters
    ----------
    settings : mapping
        ``pixel_size_um`` (µm, one value or one per axis) and
        ``frame_interval_s`` (s), required; ``exposure_s`` (s; None: no
        motion blur), ``temperature_K``, ``viscosity_Pa_s``, optional.
    p : mapping
        The checked ``size`` section: its ``temperature_K``,
        ``viscosity_Pa_s`` and ``depth_um`` win over the settings.
    ndim : int
        The tracks' spatial dimensions.
    where : str
        The tracks, for messages.

    Returns
    -------
    dict
        The keys of :func:`movie_conditions`; without a movie the field of
        view is unknown (None: no concentration), ``n_frames`` is None (the
        tracks' frame span) and no frame counts as dropped.
    """
    missing = [key for key in ("pixel_size_um", "frame_interval_s") if settings.get(key) is None]
    if missing:
        raise ValueError(
            f"{where}: no movie, and the run's settings lack {', '.join(missing)}: give them (runs.tsv settings, "
            "or trackflow size -s pixel_size_um=0.2 -s frame_interval_s=0.033)"
        )
    try:
        dt = check_interval(settings["frame_interval_s"])
        px = pixel_sizes(settings["pixel_size_um"], ndim)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    exposure = _setting_number(settings.get("exposure_s"), "exposure_s", where)
    if exposure is None:
        log.warning("%s: no exposure_s in the run's settings; assuming no motion blur (R = 0)", where)
    if p["temperature_K"] is not None:
        T, t_source = p["temperature_K"], "config (size.temperature_K)"
    else:
        T, t_source = _setting_number(settings.get("temperature_K"), "temperature_K", where), "the run's settings"
        if T is None:
            raise ValueError(f"{where}: the temperature is unknown: set temperature_K in the run's settings "
                             "or size.temperature_K in the config")
    if p["viscosity_Pa_s"] is not None:
        eta, eta_source = p["viscosity_Pa_s"], "config (size.viscosity_Pa_s)"
    else:
        eta = _setting_number(settings.get("viscosity_Pa_s"), "viscosity_Pa_s", where)
        eta_source = "the run's settings" if eta is not None else None
    depth = p["depth_um"]
    return {
        "frame_interval_s": dt,
        "exposure_s": exposure,
        "temperature_K": T,
        "temperature_source": t_source,
        "viscosity_Pa_s": eta,
        "viscosity_source": eta_source,
        "pixel_size_um": tuple(float(v) for v in px),
        "field_of_view_um2": None,
        "n_frames": None,
        "dropped_frames": 0,
        "depth_um": depth,
        "depth_source": "config (size.depth_um)" if depth is not None else None,
    }


def _setting_number(value, key: str, where: str):
    if value is None:
        return None
    if not is_number(value):
        raise ValueError(f"{where}: the run's setting {key!r} must be a number, got {value!r}")
    return float(value)
