"""Nearest-neighbour linking with trackpy (Crocker & Grier 1996).

Features are linked frame to frame by trackpy's linker, which minimises the
total squared displacement of each subnetwork of candidate links within
``search_range`` and closes gaps of up to ``memory`` frames
(:func:`link_trackpy`). :func:`link_nearest` then removes short tracks and
optionally tracks whose mean appearance is off and measures the drift, as
the link stage does after either linker (:mod:`.filters`).

Anisotropic voxels: with ``pixel_size_um`` given, ``search_range`` is in µm
and is converted to one search range in pixels per axis
(``search_range / pixel_size_um``). trackpy then measures distances in units
of the per-axis search range, which is the same as linking the positions
scaled to µm with a scalar ``search_range``, without copying or rescaling any
column.

References
----------
Crocker, J. C. & Grier, D. G. (1996), Methods of digital video microscopy for
colloidal studies, J. Colloid Interface Sci. 179:298.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
import trackpy

from ..io.schema import section_defaults
from ..io.tables import position_columns
from .filters import finish_tracks

__all__ = ["link_nearest", "link_trackpy", "step_vectors"]

_DEFAULTS = section_defaults("link")


def link_nearest(
    features: pd.DataFrame,
    *,
    search_range: float | Sequence[float],
    memory: int = 0,
    adaptive_stop: float | None = None,
    adaptive_step: float = _DEFAULTS["adaptive_step"],
    link_strategy: str = _DEFAULTS["link_strategy"],
    pixel_size_um: float | Sequence[float] | None = None,
    **filters: Any,
) -> pd.DataFrame:
    """Link features into tracks with trackpy's nearest-neighbour linker,
    then filter them and measure the drift as the link stage does.

    Parameters
    ----------
    features : DataFrame
        One row per feature: ``frame``, ``[z,] y, x`` in pixels, and any other
        columns (kept as they are).
    search_range, memory, adaptive_stop, adaptive_step, link_strategy, pixel_size_um
        As for :func:`link_trackpy` (``memory`` defaults to trackpy's 0).
    **filters
        ``min_length`` (default 5: shorter tracks are removed; 0 or 1 keeps
        every track), ``min_mass``, ``max_size``, ``max_ecc``,
        ``subtract_drift`` and ``drift_smoothing``: see
        :func:`pipeline.link.filters.finish_tracks`.

    Returns
    -------
    DataFrame
        The kept rows plus ``particle`` (int64, trackpy's track ids), sorted
        by particle then frame, with a fresh index. ``attrs["link_counts"]``
        holds the counts: ``features_in``, ``features_out``,
        ``tracks_linked``, ``tracks``, ``stubs_removed``,
        ``stub_features_removed``, ``appearance_removed``,
        ``appearance_features_removed``.

    Raises
    ------
    ValueError
        A required column is missing, a position is not finite, or a
        subnetwork is too large to solve.
    """
    linked = link_trackpy(
        features,
        search_range=search_range,
        memory=memory,
        adaptive_stop=adaptive_stop,
        adaptive_step=adaptive_step,
        link_strategy=link_strategy,
        pixel_size_um=pixel_size_um,
    )
    return finish_tracks(linked, features_in=len(features), **filters)


def link_trackpy(
    features: pd.DataFrame,
    *,
    search_range: float | Sequence[float],
    memory: int = 0,
    adaptive_stop: float | None = None,
    adaptive_step: float = _DEFAULTS["adaptive_step"],
    link_strategy: str = _DEFAULTS["link_strategy"],
    pixel_size_um: float | Sequence[float] | None = None,
) -> pd.DataFrame:
    """Link features with trackpy's nearest-neighbour linker; nothing is removed.

    Parameters
    ----------
    features : DataFrame
        One row per feature: ``frame``, ``[z,] y, x`` in pixels, and any other
        columns (kept as they are).
    search_range : float or sequence of float
        Largest displacement between linked features: in pixels, or in µm
        when ``pixel_size_um`` is given; one value, or one per axis
        (``[z,] y, x``).
    memory : int
        Frames a particle may vanish for and still be linked (gap closing).
    adaptive_stop : float, optional
        On an oversize subnetwork, retry with the search range multiplied by
        ``adaptive_step`` until it falls below this value (same units as
        ``search_range``).
    adaptive_step : float
        Factor by which an adaptive retry shrinks the search range.
    link_strategy : str
        trackpy's subnetwork solver: ``auto``, ``recursive``, ``nonrecursive``,
        ``numba``, ``hybrid`` or ``drop``.
    pixel_size_um : float or sequence of float, optional
        Pixel size per axis (``[z,] y, x``) in µm; makes ``search_range`` and
        ``adaptive_stop`` physical distances (anisotropic 3D linking).

    Returns
    -------
    DataFrame
        Every feature plus ``particle`` (int64, trackpy's track ids), in
        trackpy's order.

    Raises
    ------
    ValueError
        A required column is missing, a position is not finite, or a
        subnetwork is too large to solve.
    """
    pos = position_columns(features)
    _check_features(features, pos)
    search_px = _search_range_px(search_range, pos, pixel_size_um)
    stop_px = None
    if adaptive_stop is not None:
        stop_px = _search_range_px(adaptive_stop, pos, pixel_size_um, name="adaptive_stop")

    if features.empty:
        warnings.warn("link: no features to link; the tracks table is empty", stacklevel=2)
        linked = features.assign(particle=pd.Series(dtype="int64"))
    else:
        try:
            linked = trackpy.link(
                features,
                search_px,
                pos_columns=pos,
                memory=int(memory),
                adaptive_stop=stop_px,
                adaptive_step=float(adaptive_step),
                link_strategy=link_strategy,
            )
        except trackpy.SubnetOversizeException as exc:
            raise ValueError(
                f"link: a subnetwork of candidate links is too large to solve at search_range="
                f"{search_range} ({exc}); set link.adaptive_stop, lower link.search_range, "
                "or use link_strategy 'drop'"
            ) from None
    linked["particle"] = linked["particle"].astype("int64")
    return linked


def step_vectors(tracks: pd.DataFrame) -> pd.DataFrame:
    """The one-frame steps of the tracks as displacement vectors.

    Returns the flow table (``frame, [z,] y, x, [dz,] dy, dx, cost``): one row
    per pair of rows of a track in consecutive frames, at the position in
    ``frame``, pointing to the position in ``frame + 1``. ``cost`` is the
    linker's cost of the link when the tracks carry one (``link_cost`` of the
    later row), else the squared step length in px² (what the
    nearest-neighbour linker minimises). Steps across a closed gap are left
    out: they span more than one frame.
    """
    pos = position_columns(tracks)
    ordered = tracks.sort_values(["particle", "frame"], kind="stable")
    nxt = ordered.groupby("particle")[[*pos, "frame"]].shift(-1)
    one_step = (nxt["frame"] - ordered["frame"]) == 1
    here, there = ordered[one_step], nxt[one_step]
    out = pd.DataFrame({"frame": here["frame"].to_numpy(dtype="int64")})
    for col in pos:
        out[col] = here[col].to_numpy(dtype=float)
    for col in pos:
        out[f"d{col}"] = (there[col] - here[col]).to_numpy(dtype=float)
    if "link_cost" in tracks.columns:
        out["cost"] = ordered["link_cost"].shift(-1)[one_step].to_numpy(dtype=float)
    else:
        out["cost"] = sum(out[f"d{col}"] ** 2 for col in pos)
    return out.sort_values("frame", kind="stable").reset_index(drop=True)


def _check_features(features: pd.DataFrame, pos: list[str]) -> None:
    missing = [c for c in ("frame", *pos) if c not in features.columns]
    if missing:
        raise ValueError(f"link: the features lack column(s) {missing}")
    if "particle" in features.columns:
        raise ValueError("link: the features already have a 'particle' column (already linked?)")
    values = features[pos].to_numpy(dtype=float)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        frame = features["frame"].to_numpy()[bad][0]
        raise ValueError(f"link: {int(bad.sum())} feature(s) have non-finite positions (first in frame {frame})")


def _search_range_px(
    search_range, pos: list[str], pixel_size_um, *, name: str = "search_range"
) -> float | tuple[float, ...]:
    """A distance in pixels (µm when ``pixel_size_um`` is given, converted per
    axis): a float, or a tuple per axis when anisotropic."""
    sr = np.atleast_1d(np.asarray(search_range, dtype=float))
    if sr.size not in (1, len(pos)) or np.any(~np.isfinite(sr)) or np.any(sr <= 0):
        raise ValueError(f"link.{name} must be one positive value or one per axis {pos}, got {search_range}")
    if pixel_size_um is None:
        return float(sr[0]) if sr.size == 1 else tuple(sr.tolist())
    px = np.atleast_1d(np.asarray(pixel_size_um, dtype=float))
    if px.size not in (1, len(pos)) or np.any(~np.isfinite(px)) or np.any(px <= 0):
        raise ValueError(f"link: pixel_size_um must be one positive value or one per axis {pos}, got {pixel_size_um}")
    per_axis = np.broadcast_to(sr, (len(pos),)) / np.broadcast_to(px, (len(pos),))
    if np.allclose(per_axis, per_axis[0]):
        return float(per_axis[0])
    return tuple(per_axis.tolist())
