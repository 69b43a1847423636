"""What the link stage does to the tracks after either linker has linked.

Short tracks are removed (``min_length``, trackpy's ``filter_stubs``), then
optionally tracks whose mean appearance is off (``min_mass``, ``max_size``,
``max_ecc``); what was removed is counted; optionally the ensemble drift is
measured (trackpy's ``compute_drift``) on the kept tracks and added per row.
Written once for both linkers (:mod:`.nearest`, :mod:`.flow`), so that their
tracks tables carry the same filters, counts and drift columns.

Conventions of the output
-------------------------
- Rows are sorted by particle then frame, with a fresh index.
- Positions stay the measured ones, in pixels. When drift is measured, the
  cumulative drift of each row's frame (relative to the first frame) is added
  as ``drift_[z_]y``/``drift_x`` columns, in pixels, so that a later stage gets
  drift-free positions as ``y - drift_y``: nothing measured is overwritten.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import trackpy

from ..io.schema import section_defaults
from ..io.tables import drift_columns, position_columns

__all__ = ["COUNTS_ATTR", "FILTER_KEYS", "finish_tracks", "filter_tracks", "measure_drift"]

#: key of ``DataFrame.attrs`` under which the tracks carry their counts
COUNTS_ATTR = "link_counts"

#: the ``link`` keys :func:`finish_tracks` takes (the rest are the linker's)
FILTER_KEYS = ("min_length", "min_mass", "max_size", "max_ecc", "subtract_drift", "drift_smoothing")

#: The ``link`` section's defaults (workflow/schemas/link.schema.yaml), for keyword defaults.
_DEFAULTS = section_defaults("link")


def finish_tracks(
    linked: pd.DataFrame,
    *,
    features_in: int,
    min_length: int = _DEFAULTS["min_length"],
    min_mass: float | None = _DEFAULTS["min_mass"],
    max_size: float | None = _DEFAULTS["max_size"],
    max_ecc: float | None = _DEFAULTS["max_ecc"],
    subtract_drift: bool = _DEFAULTS["subtract_drift"],
    drift_smoothing: int = _DEFAULTS["drift_smoothing"],
) -> pd.DataFrame:
    """Filter linked rows into the tracks table, counting what was removed,
    and add the drift columns.

    Parameters
    ----------
    linked : DataFrame
        Every linked row: ``frame``, ``[z,] y, x`` in pixels, ``particle``
        (int64) and any other columns, in any order.
    features_in : int
        How many features went into the linker (for the counts).
    min_length : int
        Tracks with fewer rows (frames) are removed (trackpy's
        ``filter_stubs``). 0 or 1 keeps every track.
    min_mass, max_size, max_ecc : float, optional
        Remove tracks whose mean ``mass`` is below / mean ``size`` (each
        ``size_<axis>`` for anisotropic features) or mean ``ecc`` above.
    subtract_drift : bool
        Measure the ensemble drift of the kept tracks and add it as
        ``drift_<axis>`` columns (pixels; positions are left as measured).
    drift_smoothing : int
        Forward rolling mean, in frames, of trackpy's drift estimate.

    Returns
    -------
    DataFrame
        The kept rows, sorted by particle then frame, with a fresh index.
        ``attrs["link_counts"]`` holds the counts: ``features_in``,
        ``tracks_linked``, ``stubs_removed``, ``stub_features_removed``,
        ``appearance_removed``, ``appearance_features_removed``,
        ``features_out``, ``tracks``.

    Raises
    ------
    ValueError
        An appearance filter is set but the features lack its column.
    """
    counts = {"features_in": int(features_in), "tracks_linked": int(linked["particle"].nunique())}
    tracks, filter_counts = filter_tracks(
        linked, min_length=min_length, min_mass=min_mass, max_size=max_size, max_ecc=max_ecc
    )
    counts.update(filter_counts)
    tracks = tracks.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)
    if tracks.empty and not linked.empty:
        warnings.warn(
            f"link: all {counts['tracks_linked']} tracks were filtered out "
            f"(min_length={min_length}, min_mass={min_mass}, max_size={max_size}, max_ecc={max_ecc})",
            stacklevel=2,
        )
    if subtract_drift:
        pos = position_columns(tracks)
        drift = measure_drift(tracks, smoothing=drift_smoothing)
        for col, name in zip(pos, drift_columns(pos)):
            tracks[name] = drift[col].reindex(tracks["frame"]).to_numpy(dtype=float)
    counts["features_out"] = int(len(tracks))
    counts["tracks"] = int(tracks["particle"].nunique())
    tracks.attrs[COUNTS_ATTR] = counts
    return tracks


def filter_tracks(
    tracks: pd.DataFrame,
    *,
    min_length: int = _DEFAULTS["min_length"],
    min_mass: float | None = None,
    max_size: float | None = None,
    max_ecc: float | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Remove short tracks, then tracks whose mean appearance is off.

    Parameters
    ----------
    tracks : DataFrame
        Linked rows with ``particle`` and ``frame``.
    min_length : int
        Minimum rows per track (trackpy's ``filter_stubs`` threshold).
    min_mass, max_size, max_ecc : float, optional
        Bounds on each track's mean ``mass``, ``size`` (every ``size_<axis>``
        column for anisotropic features, in pixels) and ``ecc``.

    Returns
    -------
    kept : DataFrame
    counts : dict
        ``stubs_removed``, ``stub_features_removed``, ``appearance_removed``,
        ``appearance_features_removed``.
    """
    lengths = tracks.groupby("particle")["frame"].transform("size")
    long_enough = lengths >= int(min_length)
    counts = {
        "stubs_removed": int(tracks.loc[~long_enough, "particle"].nunique()),
        "stub_features_removed": int((~long_enough).sum()),
    }
    kept = tracks[long_enough]

    bounds = []  # (column, is_lower_bound, value)
    if min_mass is not None:
        bounds.append(("mass", True, min_mass))
    if max_size is not None:
        size_cols = [c for c in kept.columns if c == "size" or c.startswith("size_")]
        bounds += [(c, False, max_size) for c in size_cols] or [("size", False, max_size)]
    if max_ecc is not None:
        bounds.append(("ecc", False, max_ecc))
    good = pd.Series(True, index=kept.index)
    for column, lower, value in bounds:
        if column not in kept.columns:
            raise ValueError(f"link: an appearance filter needs the column '{column}', which the features lack")
        mean = kept.groupby("particle")[column].transform("mean")
        good &= (mean >= value) if lower else (mean <= value)
    counts["appearance_removed"] = int(kept.loc[~good, "particle"].nunique())
    counts["appearance_features_removed"] = int((~good).sum())
    return kept[good], counts


def measure_drift(tracks: pd.DataFrame, *, smoothing: int = 0) -> pd.DataFrame:
    """Cumulative ensemble drift per frame, in pixels (trackpy's ``compute_drift``).

    Returns a DataFrame indexed by every frame from the first to the last of
    ``tracks``, one column per position axis; the first frame has zero drift,
    and frames without any one-frame step carry the previous value.
    """
    pos = position_columns(tracks)
    if tracks.empty:
        return pd.DataFrame(columns=pos, dtype=float)
    frames = np.arange(int(tracks["frame"].min()), int(tracks["frame"].max()) + 1)
    drift = trackpy.compute_drift(tracks, smoothing=int(smoothing), pos_columns=pos)
    return drift.reindex(frames).ffill().fillna(0.0).rename_axis("frame")
