"""The figures the pages show, as panels: what each draws from a run's
files, its caption, and what the page says instead when its inputs are absent.

The run page has four (tracks over a movie frame, size distribution, ensemble
MSD, features per frame); the index one (every run's and group's
distribution). The drawing itself is :mod:`pipeline.report.figures`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..io.tables import position_columns
from . import figures
from .data import RunData, finite_number, per_particle_diameters

__all__ = ["figure_panel", "frames_panel", "msd_panel", "overlay_panel", "size_panel", "tracks_panel"]

# tracks drawn over the movie frame: the longest ones, enough to see the motion
_MAX_TRACKS_DRAWN = 400


def figure_panel(uri: str | None, caption: str, missing: str) -> dict[str, str | None]:
    """A figure as the templates' ``figure`` macro shows it: the PNG data
    URI (None: not drawn), its caption, and what the page says instead
    when it is not drawn."""
    return {"uri": uri, "caption": caption, "missing": missing}


def _distribution_curves(dist: pd.DataFrame | None, label: str) -> dict[str, pd.DataFrame]:
    """The value columns of a distribution.csv worth drawing: its densities,
    else its counts, else every other numeric column (bin edges and standard
    errors left out)."""
    if dist is None or dist.empty:
        return {}
    numeric = [
        c for c in dist.columns
        if c != "diameter_nm" and pd.api.types.is_numeric_dtype(dist[c])
        and not c.endswith("_nm") and not c.endswith("_sem") and dist[c].notna().any()
    ]
    chosen = [c for c in numeric if "density" in c] or [c for c in numeric if "count" in c] or numeric
    return {f"{label}{c}": dist[["diameter_nm", c]].dropna() for c in chosen}


def _main_curve(dist: pd.DataFrame | None) -> pd.DataFrame | None:
    """One curve of a distribution: Walker's density when there, else the first drawable column."""
    curves = _distribution_curves(dist, "")
    if not curves:
        return None
    return curves.get("walker_density", next(iter(curves.values())))


def size_panel(data: RunData, bins: int) -> dict:
    """The size distribution: distribution.csv's curves, the per-track
    diameters of sizes.parquet and the ground truth, in ``bins`` bins."""
    samples = {}
    per_track = per_particle_diameters(data.tables.get("sizes"))
    if per_track is not None:
        samples["sizes.parquet: per-track diameters"] = _clip(per_track)
    truth = per_particle_diameters(data.tables.get("truth"))
    if truth is not None:
        samples["ground truth"] = truth
    uri = figures.size_distribution(
        _distribution_curves(data.distribution, "distribution.csv: "), samples, bins=bins,
        title=f"{data.name}: size distribution",
    )
    return figure_panel(
        uri,
        "Size distribution on a log diameter axis; every curve and histogram is scaled to unit area. "
        "Per-track diameters are clipped to their 0.5-99.5 % range.",
        "No size distribution: distribution.csv and sizes.parquet are absent.",
    )


def _clip(values: np.ndarray) -> np.ndarray:
    """Values inside their 0.5-99.5 percentile range: short tracks give a few
    huge diameters that would squash the histogram."""
    finite = values[np.isfinite(values)]
    if len(finite) < 20:
        return finite
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return finite[(finite >= lo) & (finite <= hi)]


def tracks_panel(data: RunData) -> dict:
    """The middle frame that was not dropped, with the tracks over it."""
    caption = ("The movie's middle frame with the tracks of tracks.parquet drawn over it "
               f"(positions as located, drift not subtracted; at most the {_MAX_TRACKS_DRAWN} longest tracks).")
    missing = "No tracks over the movie: movie.ome.zarr or tracks.parquet is absent."
    tracks, movie = data.tables.get("tracks"), data.movie
    if tracks is None or movie is None or not len(movie):
        return figure_panel(None, caption, missing)
    dropped = set(int(i) for i in movie.dropped_frames)
    valid = [i for i in range(len(movie)) if i not in dropped]
    if not valid:
        return figure_panel(None, caption, "No tracks over the movie: every frame was dropped.")
    frame = valid[len(valid) // 2]
    longest = tracks["particle"].value_counts().index[:_MAX_TRACKS_DRAWN]
    shown = tracks[tracks["particle"].isin(longest)].sort_values(["particle", "frame"])
    paths = {int(p): g[["y", "x"]].to_numpy(float) for p, g in shown.groupby("particle")}
    uri = figures.tracks_over_frame(
        movie[frame], paths, frame=frame, title=f"{data.name}: frame {frame} with {len(paths)} tracks"
    )
    return figure_panel(uri, caption, missing)


def frames_panel(data: RunData) -> dict:
    """Features located and kept in tracks, per frame, dropped frames marked."""
    located = "features" if "features" in data.tables else "refined"
    counts = {}
    for stem, label in ((located, f"located ({located}.parquet)"), ("tracks", "in tracks (tracks.parquet)")):
        df = data.tables.get(stem)
        if df is None or "frame" not in df.columns:
            continue
        per_frame = df["frame"].value_counts()
        # every frame of the movie, so that frames without features show as 0
        last = max(len(data.movie) if data.movie is not None else 0, int(per_frame.index.max()) + 1 if len(df) else 0)
        counts[label] = per_frame.reindex(range(last), fill_value=0)
    dropped = data.movie.dropped_frames.tolist() if data.movie is not None else []
    uri = figures.features_per_frame(counts, dropped, title=f"{data.name}: features per frame")
    return figure_panel(uri, "Features located and features kept in tracks, per frame; red lines mark dropped frames.",
                        "No features per frame: features.parquet and tracks.parquet are absent.")


def _emsd(data: RunData, max_lag: int) -> tuple[pd.DataFrame | None, tuple[float, float] | None, str]:
    """The ensemble MSD and its power-law fit: from summary.json, else
    computed here from the tracks (trackpy.emsd, drift subtracted)."""
    summary = data.summary
    fit = None
    n, A = finite_number(summary.get("msd_powerlaw_n")), finite_number(summary.get("msd_powerlaw_A"))
    if n is not None and A is not None:
        fit = (n, A)
    emsd = summary.get("emsd")
    if isinstance(emsd, list) and emsd:
        df = pd.DataFrame(emsd)
        if {"lagt_s", "msd_um2"} <= set(df.columns):
            return df.head(max_lag), fit, "summary.json"
    tracks = data.tables.get("tracks")
    if tracks is None or tracks.empty or data.movie is None:
        return None, fit, ""
    import trackpy

    pos = position_columns(tracks)
    traj = tracks[["frame", "particle", *pos]].copy()
    for col in pos:
        if f"drift_{col}" in tracks.columns:
            traj[col] = traj[col] - tracks[f"drift_{col}"]
    series = trackpy.emsd(
        traj, np.asarray(data.movie.pixel_size_um), 1.0 / data.movie.frame_interval_s,
        max_lagtime=max_lag, pos_columns=pos,
    ).dropna()
    df = pd.DataFrame({"lagt_s": series.index.to_numpy(float), "msd_um2": series.to_numpy(float)})
    good = df[(df["lagt_s"] > 0) & (df["msd_um2"] > 0)]
    if fit is None and len(good) >= 2:
        slope, intercept = np.polyfit(np.log(good["lagt_s"]), np.log(good["msd_um2"]), 1)
        fit = (float(slope), float(np.exp(intercept)))
    return df, fit, "tracks.parquet (trackpy.emsd, computed by the report)"


def msd_panel(data: RunData, max_lag: int) -> dict:
    """The ensemble MSD up to ``max_lag`` lags, with its power-law fit."""
    df, fit, source = _emsd(data, max_lag)
    uri = None
    if df is not None:
        uri = figures.ensemble_msd(df["lagt_s"], df["msd_um2"], fit, title=f"{data.name}: ensemble MSD")
    return figure_panel(uri, f"Ensemble mean squared displacement from {source}, with the power-law fit MSD = A·t^n "
                        "(n = 1 for free diffusion).",
                        "No ensemble MSD: summary.json has none and tracks.parquet or the movie is absent.")


def _on_common_grid(curves: Sequence[pd.DataFrame], points: int = 200) -> tuple[np.ndarray, np.ndarray] | None:
    """Curves interpolated onto one log-spaced diameter grid over the range
    they share, each scaled to unit area: replicates may have been sized on
    different grids."""
    curves = [c[c.iloc[:, 0] > 0] for c in curves]
    curves = [c for c in curves if len(c) > 1]
    if not curves:
        return None
    lo = max(float(c.iloc[:, 0].min()) for c in curves)
    hi = min(float(c.iloc[:, 0].max()) for c in curves)
    if not hi > lo:
        return None
    grid = np.geomspace(lo, hi, points)
    values = np.array([
        np.interp(grid, c.iloc[:, 0].to_numpy(float), c.iloc[:, 1].to_numpy(float)) for c in curves
    ])
    return grid, np.array([figures.unit_area(grid, v) for v in values])


def overlay_panel(datas: Sequence[RunData], title: str) -> dict:
    """The index's plot: every run's distribution and every replicate
    group's mean ± standard error over its runs."""
    curves = {d.name: c for d in datas if (c := _main_curve(d.distribution)) is not None}
    bands = {}
    by_group: dict[str, list[pd.DataFrame]] = {}
    for d in datas:
        if d.group and d.name in curves:
            by_group.setdefault(d.group, []).append(curves[d.name])
    for group, members in sorted(by_group.items()):
        common = _on_common_grid(members)
        if common is None:
            continue
        grid, values = common
        sem = values.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.zeros(len(grid))
        bands[f"group {group}"] = (grid, values.mean(axis=0), sem)
    uri = figures.distribution_overlay(curves, bands, title=title)
    return figure_panel(uri, "Every run's size distribution (thin lines) and every replicate group's mean ± standard "
                        "error over its runs (thick line, band), each scaled to unit area, on a log diameter axis.",
                        "No distributions to draw: no run has a distribution.csv.")
