"""Figures of segmented objects for the report: a montage of frames with the
reassigned labels coloured consistently, and the labels' lifetimes.

They read the stores and tables the segment and reassign stages wrote
(``reassigned.ome.zarr``, ``objects.parquet``), never the stages themselves.
"""

from __future__ import annotations

import colorsys
import io
import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..io.movie import Movie, MovieError, open_movie

__all__ = ["label_colours", "label_lifetimes", "montage_png"]


def _open(store) -> Movie:
    return store if isinstance(store, Movie) else open_movie(store)


def label_lifetimes(table: pd.DataFrame, frame_interval_s: float | None = None) -> pd.DataFrame:
    """Per label: when it lived and how it moved.

    Parameters
    ----------
    table : DataFrame
        The per-label, per-frame table (``objects.parquet``).
    frame_interval_s : float, optional
        Seconds per frame (default: ``table.attrs['frame_interval_s']``, else
        from the ``t_s`` and ``frame`` columns).

    Returns
    -------
    DataFrame
        ``label, first_frame, last_frame, n_frames, lifetime_s`` (frames
        spanned × frame interval), ``mean_volume_um3, mean_speed_um_s,
        path_length_um``, sorted by label.
    """
    missing = [c for c in ("frame", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"label_lifetimes: the table lacks column(s) {missing}")
    dt = frame_interval_s if frame_interval_s is not None else table.attrs.get("frame_interval_s")
    if dt is None and "t_s" in table.columns:
        later = table["frame"] > 0
        dt = float(np.median(table.loc[later, "t_s"] / table.loc[later, "frame"])) if later.any() else math.nan
    dt = math.nan if dt is None else float(dt)
    ordered = table.sort_values(["label", "frame"], kind="stable")
    groups = ordered.groupby("label", sort=True)
    out = pd.DataFrame({
        "first_frame": groups["frame"].min(),
        "last_frame": groups["frame"].max(),
        "n_frames": groups["frame"].size(),
    })
    out["lifetime_s"] = (out["last_frame"] - out["first_frame"] + 1) * dt
    if "volume_um3" in ordered.columns:
        out["mean_volume_um3"] = groups["volume_um3"].mean()
    if "speed_um_s" in ordered.columns:
        out["mean_speed_um_s"] = groups["speed_um_s"].mean()
        step_s = ordered.groupby("label")["frame"].diff() * dt
        out["path_length_um"] = (ordered["speed_um_s"] * step_s).groupby(ordered["label"]).sum(min_count=0)
    return out.reset_index()


def label_colours(labels: np.ndarray) -> np.ndarray:
    """An RGB colour (0..1) per label id, the same in every frame and run:
    hues spread by the golden ratio, so neighbouring ids differ."""
    labels = np.asarray(labels, dtype=np.int64)
    hue = np.mod(labels * 0.6180339887498949, 1.0)
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.85, 0.95) for h in hue.ravel()]).reshape(*labels.shape, 3)
    return rgb


def _projection(labels: np.ndarray, image: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """2D views of a frame: for 3D, the image's max projection along z and,
    per (y, x), the label of the brightest labelled voxel (the topmost without an image)."""
    if labels.ndim == 2:
        return labels, image
    score = np.where(labels > 0, image if image is not None else np.arange(labels.shape[0])[:, None, None], -np.inf)
    z = np.argmax(score, axis=0)
    flat = np.take_along_axis(labels, z[None], axis=0)[0]
    return flat, None if image is None else image.max(axis=0)


def montage_png(
    reassigned_store,
    movie_store=None,
    frames: Sequence[int] | None = None,
    *,
    n_frames: int = 4,
    columns: int = 4,
    alpha: float = 0.45,
    annotate: bool = True,
    dpi: int = 96,
) -> bytes:
    """A PNG montage of a few frames with the reassigned labels coloured
    consistently (one colour per label id in every panel).

    Parameters
    ----------
    reassigned_store : Movie or path
        ``reassigned.ome.zarr``.
    movie_store : Movie or path, optional
        The movie, drawn in grey under the labels (max projection in 3D).
    frames : sequence of int, optional
        Frames to show (default ``n_frames`` spread over the movie, dropped
        frames left out).
    columns : int
        Panels per row.
    alpha : float
        Opacity of the label colours inside objects (outlines are opaque).
    annotate : bool
        Write each label's id at its centroid (up to 40 per panel).

    Returns
    -------
    bytes
        The PNG file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    store = _open(reassigned_store)
    movie = None if movie_store is None else _open(movie_store)
    dropped = set(int(i) for i in store.dropped_frames)
    if frames is None:
        valid = [i for i in range(len(store)) if i not in dropped]
        if not valid:
            raise MovieError(f"{store.path}: no frames to show")
        picks = np.unique(np.linspace(0, len(valid) - 1, min(int(n_frames), len(valid))).round().astype(int))
        frames = [valid[k] for k in picks]
    frames = [int(f) for f in frames]
    for f in frames:
        if not 0 <= f < len(store):
            raise IndexError(f"{store.path}: frame {f} out of range (0..{len(store) - 1})")
    columns = max(1, min(int(columns), len(frames)))
    rows = math.ceil(len(frames) / columns)
    height, width = store.frame_shape[-2:]
    panel = 3.2
    fig = Figure(figsize=(panel * columns, panel * rows * height / width + 0.4 * rows))
    FigureCanvasAgg(fig)
    for k, f in enumerate(frames):
        labels = store[f]
        image = None if movie is None else movie[f].astype(float)
        flat_labels, flat_image = _projection(labels, image)
        if flat_image is None:
            grey = np.zeros(flat_labels.shape)
        else:
            lo, hi = np.percentile(flat_image, [1, 99.5])
            grey = np.clip((flat_image - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        inside = flat_labels > 0
        if inside.any():
            colours = label_colours(flat_labels[inside])
            rgb[inside] = (1 - alpha) * rgb[inside] + alpha * colours
            edge = np.zeros_like(inside)
            for axis in (0, 1):
                change = np.diff(flat_labels, axis=axis) != 0
                lead = [slice(None)] * 2
                lead[axis] = slice(0, -1)
                trail = [slice(None)] * 2
                trail[axis] = slice(1, None)
                edge[tuple(lead)] |= change
                edge[tuple(trail)] |= change
            edge &= inside
            rgb[edge] = label_colours(flat_labels[edge])
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"frame {f}  (t = {f * store.frame_interval_s:.3g} s)", fontsize=9)
        ax.set_axis_off()
        if annotate and inside.any():
            ids = np.unique(flat_labels[inside])
            if len(ids) <= 40:
                centres = ndi.center_of_mass(np.ones_like(flat_labels), flat_labels, ids)
                for label, (y, x) in zip(ids, centres):
                    ax.text(x, y, str(int(label)), color="white", fontsize=7, ha="center", va="center")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
