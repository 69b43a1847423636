"""The report stage: one self-contained HTML page per run, and an index.

Each run page shows the run's key figures (``summary.json`` of the size
stage), its size distribution (``distribution.csv``, the per-track diameters
of ``sizes.parquet`` and the ground truth when simulated), the features per
frame (``features.parquet``, ``tracks.parquet``, dropped frames from the
movie), the ensemble MSD with its power-law fit, the acquisition metadata,
the share of failed least-squares fits (``refined.parquet``) and the
parameters and versions recorded by every stage. The index lists every run
with its headline figures, replicate groups together with their merged
figures (the size stage's ``groups/<group>/summary.json``, when given).

Pages are self-contained: inline CSS, plots as PNG data URIs, no scripts, no
external assets; they can be mailed or archived as single files. Inputs that
are absent are noted on the page; inputs that are present but unreadable are
errors naming the file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import os
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import __version__
from ..io.movie import Movie, open_movie
from ..io.tables import OBJECT_COLUMNS, position_columns, read_distribution, read_summary, read_table, table_metadata
from ..io.files import atomic_write
from ..io.layout import RUN_FILES, group_files, run_files
from ..io.schema import check_section
from . import figures, objects
from .html import NA, figure, fmt, page, section, table

__all__ = ["run", "render_run", "render_index", "load_run", "RunData"]

log = logging.getLogger("trackflow.report")

# (summary key stem, label): sizes are ``<stem>_nm`` (Walker's ML estimate),
# ``naive_<stem>_nm`` the per-track histogram's
_SIZE_FIGURES = (
    ("mean", "Mean"),
    ("mode", "Mode"),
    ("sd", "SD"),
    ("d10", "D10"),
    ("d50", "D50"),
    ("d90", "D90"),
)
# (summary key, label, unit, format, scale)
_RUN_FIGURES = (
    ("n_tracks", "Valid tracks", "", ".0f", 1),
    ("particles_per_frame", "Particles per frame", "", ".3g", 1),
    ("concentration_per_ml", "Concentration", "particles/mL", ".3g", 1),
    ("temperature_K", "Temperature", "K", ".2f", 1),
    ("viscosity_Pa_s", "Viscosity", "mPa·s", ".4g", 1e3),
    ("msd_powerlaw_n", "MSD power-law exponent n", "", ".3f", 1),
    ("msd_powerlaw_A", "MSD power-law prefactor A", "µm²/s^n", ".4g", 1),
)
# headline columns of the index: (summary key, label)
_HEADLINE = (
    ("d50_nm", "D50 (nm)"),
    ("mean_nm", "Mean (nm)"),
    ("mode_nm", "Mode (nm)"),
    ("sd_nm", "SD (nm)"),
    ("n_tracks", "Tracks"),
    ("particles_per_frame", "Particles/frame"),
)
_TABLES = ("features", "refined", "tracks", "flow", "sizes", "truth")
_OPTIONAL = ("flow", "truth", "refined")  # absent by design for some runs
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class RunData:
    """What one run's files hold (absent inputs are None, and listed in ``missing``)."""

    dir: Path | None
    name: str
    group: str | None = None
    summary: dict = field(default_factory=dict)
    distribution: pd.DataFrame | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    provenance: dict[str, dict] = field(default_factory=dict)
    movie: Movie | None = None
    reassigned: Movie | None = None
    missing: list[str] = field(default_factory=list)


def load_run(
    files: Mapping[str, str | os.PathLike] | str | os.PathLike,
    *,
    name: str | None = None,
    group: str | None = None,
) -> RunData:
    """Read what a run's files hold.

    Parameters
    ----------
    files : mapping or path
        The run's files by what they hold (the keys of
        :data:`pipeline.io.layout.RUN_FILES`: ``summary``, ``tracks``,
        ``movie``, ...); keys left out and files that do not exist are noted
        as missing. Or the run's results directory, read as laid out by
        :func:`pipeline.io.layout.run_files`.
    name : str, optional
        The run's name (default: the directory's name; required with a
        mapping).
    group : str, optional
        Its replicate group.

    Raises
    ------
    FileNotFoundError
        The directory does not exist.
    ValueError (TableError, MovieError)
        A file is present but unreadable, or an unknown key; the message names it.
    """
    run_dir = None
    if not isinstance(files, Mapping):
        run_dir = Path(files)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"report: run directory {run_dir} does not exist")
        name, files = name or run_dir.name, run_files(run_dir)
    unknown = sorted(set(files) - set(RUN_FILES))
    if unknown:
        raise ValueError(f"report: unknown run file(s) {unknown}; known: {list(RUN_FILES)}")
    if not name:
        raise ValueError("report: a run given by its files needs a name")
    paths = {key: Path(path) for key, path in files.items()}
    present = {key: path for key, path in paths.items() if path.exists()}
    anchor = paths.get("summary") or paths.get("tracks")
    data = RunData(dir=run_dir or (anchor.parent if anchor else None), name=name, group=group)

    def note_missing(key: str) -> None:
        data.missing.append(paths[key].name if key in paths else RUN_FILES[key])

    summary = _read_json(present["summary"]) if "summary" in present else None
    if summary is None:
        note_missing("summary")
    data.summary = summary or {}
    data.distribution = _read_distribution(present["distribution"]) if "distribution" in present else None
    if data.distribution is None:
        note_missing("distribution")
    for stem in _TABLES:
        if stem in present:
            data.tables[stem] = read_table(present[stem])
            data.provenance[present[stem].name] = table_metadata(present[stem])
        elif stem not in _OPTIONAL:
            note_missing(stem)
    if "objects" in present:  # segment + reassign ran for this run
        data.tables["objects"] = read_table(present["objects"], required=OBJECT_COLUMNS)
        data.provenance[present["objects"].name] = table_metadata(present["objects"])
        data.reassigned = open_movie(present["reassigned"]) if "reassigned" in present else None
    if "movie" in present:
        data.movie = open_movie(present["movie"])
    else:
        note_missing("movie")
    return data


def _read_json(path: Path) -> dict | None:
    return read_summary(path) if path.exists() else None


def _read_distribution(path: Path) -> pd.DataFrame | None:
    return read_distribution(path) if path.exists() else None


# ---------------------------------------------------------------------------
# what the pages show
# ---------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if np.isfinite(value) else None


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


def _main_curve(dist: pd.DataFrame | None, label: str) -> dict[str, pd.DataFrame]:
    """One curve of a distribution: Walker's density when there, else the first drawable column."""
    curves = _distribution_curves(dist, f"{label}: ")
    preferred = [k for k in curves if k.endswith("walker_density")] or list(curves)[:1]
    return {k: curves[k] for k in preferred}


def _per_particle_diameters(df: pd.DataFrame | None) -> np.ndarray | None:
    if df is None or "diameter_nm" not in df.columns:
        return None
    if "particle" in df.columns:
        return df.groupby("particle")["diameter_nm"].first().to_numpy(float)
    return df["diameter_nm"].to_numpy(float)


def _size_figure(data: RunData, bins: int) -> str:
    samples = {}
    per_track = _per_particle_diameters(data.tables.get("sizes"))
    if per_track is not None:
        samples["sizes.parquet: per-track diameters"] = _clip(per_track)
    truth = _per_particle_diameters(data.tables.get("truth"))
    if truth is not None:
        samples["ground truth"] = truth
    uri = figures.size_distribution(
        _distribution_curves(data.distribution, "distribution.csv: "), samples, bins=bins,
        title=f"{data.name}: size distribution",
    )
    return figure(
        uri,
        "Size distribution; every curve and histogram is scaled to unit area. Per-track "
        "diameters are clipped to their 0.5-99.5 % range.",
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


def _frames_figure(data: RunData) -> str:
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
    return figure(uri, "Features located and features kept in tracks, per frame; red lines mark dropped frames.",
                  "No features per frame: features.parquet and tracks.parquet are absent.")


def _emsd(data: RunData, max_lag: int) -> tuple[pd.DataFrame | None, tuple[float, float] | None, str]:
    """The ensemble MSD and its power-law fit: from summary.json, else
    computed here from the tracks (trackpy.emsd, drift subtracted)."""
    summary = data.summary
    fit = None
    n, A = _number(summary.get("msd_powerlaw_n")), _number(summary.get("msd_powerlaw_A"))
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


def _msd_figure(data: RunData, max_lag: int) -> str:
    df, fit, source = _emsd(data, max_lag)
    uri = None
    if df is not None:
        uri = figures.ensemble_msd(df["lagt_s"], df["msd_um2"], fit, title=f"{data.name}: ensemble MSD")
    return figure(uri, f"Ensemble mean squared displacement from {source}, with the power-law fit MSD = A·t^n "
                  "(n = 1 for free diffusion).",
                  "No ensemble MSD: summary.json has none and tracks.parquet or the movie is absent.")


def _failed_fits(data: RunData) -> str | None:
    refined = data.tables.get("refined")
    if refined is None or "cost" not in refined.columns:
        return None
    n = len(refined)
    failed = int(refined["cost"].isna().sum())
    return f"{failed / n:.1%} ({failed} of {n})" if n else NA


def _key_figures(data: RunData) -> str:
    s = data.summary
    rows = []
    for stem, label in _SIZE_FIGURES:
        value = fmt(_number(s.get(f"{stem}_nm")), ".1f")
        ci = s.get(f"{stem}_ci_nm")
        if isinstance(ci, list) and len(ci) == 2 and all(_number(v) is not None for v in ci):
            value += f" (95 % CI {ci[0]:.1f}–{ci[1]:.1f})"
        rows.append((f"{label} diameter", value, fmt(_number(s.get(f"naive_{stem}_nm")), ".1f"), "nm"))
    table_sizes = table(rows, ("Figure", "Walker ML estimate", "naive per-track", "unit"))
    rows = []
    for key, label, unit, spec, scale in _RUN_FIGURES:
        value = _number(s.get(key))
        rows.append((label, NA if value is None else format(value * scale, spec), unit))
    if s.get("viscosity_source"):
        rows.append(("Viscosity from", str(s["viscosity_source"]), ""))
    if data.movie is not None:
        rows.append(("Frames", str(len(data.movie)), ""))
        rows.append(("Dropped frames", str(len(data.movie.dropped_frames)), ""))
    else:
        rows.append(("Dropped frames", fmt(s.get("dropped_frames")), ""))
    failed = _failed_fits(data)
    rows.append(("Failed refinement fits", failed if failed is not None else "n/a (refine off)", ""))
    truth = _per_particle_diameters(data.tables.get("truth"))
    if truth is not None and len(truth):
        rows.append(("Ground truth: particles", str(len(truth)), ""))
        rows.append(("Ground truth: mean diameter", f"{np.mean(truth):.1f}", "nm"))
        rows.append(("Ground truth: median diameter", f"{np.median(truth):.1f}", "nm"))
    shown = {f"{a}{stem}{b}" for stem, _ in _SIZE_FIGURES for a, b in (("", "_nm"), ("naive_", "_nm"), ("", "_ci_nm"))}
    shown |= {key for key, *_ in _RUN_FIGURES} | {"viscosity_source", "dropped_frames"}
    # the rest of summary.json's scalars (nested params and lists are shown elsewhere or too long)
    other = [
        (key, fmt(value)) for key, value in s.items()
        if key not in shown and key != "trackflow_version" and not isinstance(value, (dict, list))
    ]
    parts = [table_sizes, table(rows, ("Figure", "value", "unit"))]
    if other:
        parts += ["<h3>Other figures in summary.json</h3>", table(other, ("key", "value"))]
    notes = s.get("notes")
    if isinstance(notes, list) and notes:
        parts.append("<h3>Notes from the size stage</h3><ul>" + "".join(f"<li>{escape(str(n))}</li>" for n in notes) + "</ul>")
    return section("Key figures", *parts)


def _acquisition(data: RunData) -> str:
    if data.movie is None:
        return section("Acquisition", '<p class="note">movie.ome.zarr is absent.</p>')
    m = data.movie
    rows = [
        ("frames", str(len(m))),
        ("frame shape (px)", " × ".join(map(str, m.frame_shape))),
        ("axes", ", ".join(m.axes)),
        ("pixel size (µm)", fmt(list(m.pixel_size_um))),
        ("frame interval (s)", fmt(m.frame_interval_s)),
    ]
    for key, value in sorted(m.attrs.items()):
        if key in ("pixel_size_um", "frame_interval_s"):
            continue
        if key == "dropped":
            key, value = "dropped (sequence numbers)", f"{len(value)}: {fmt(value[:8])}{' …' if len(value) > 8 else ''}"
        elif isinstance(value, list) and len(value) > 8:
            value = f"{len(value)} values"
        rows.append((key, fmt(value)))
    return section("Acquisition", table(rows, ("key", "value")))


def _objects(data: RunData) -> str:
    """Segmented objects (segment + reassign), when the run has them."""
    table_ = data.tables.get("objects")
    if table_ is None:
        return ""
    parts = []
    if data.reassigned is not None:
        png = objects.montage_png(data.reassigned, data.movie)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(figure(uri, "Reassigned labels on a few frames: one colour per identity throughout the movie.", ""))
    lifetimes = objects.label_lifetimes(
        table_, frame_interval_s=data.movie.frame_interval_s if data.movie is not None else None
    )
    if len(lifetimes):
        rows = [
            ("labels", fmt(len(lifetimes))),
            ("frames per label (median, max)", f"{fmt(lifetimes['n_frames'].median())}, {fmt(lifetimes['n_frames'].max())}"),
            ("lifetime (median, s)", fmt(lifetimes["lifetime_s"].median(), ".3g")),
        ]
        if "mean_speed_um_s" in lifetimes:
            rows.append(("speed (median of label means, µm/s)", fmt(lifetimes["mean_speed_um_s"].median(), ".3g")))
        parts.append(table(rows, ("label lifetimes", "")))
        longest = lifetimes.sort_values("n_frames", ascending=False).head(10)
        cols = [c for c in ("label", "first_frame", "last_frame", "n_frames", "lifetime_s", "mean_volume_um3", "mean_speed_um_s") if c in longest]
        parts.append(table([[fmt(v, ".4g") for v in row] for row in longest[cols].itertuples(index=False)], cols))
    return section("Objects (segment and reassign)", *parts)


def _provenance(data: RunData) -> str:
    rows = []
    for name, meta in data.provenance.items():
        params = meta.get("params") or {}
        extra = {k: v for k, v in meta.items() if k not in ("params", "stage", "trackflow_version")}
        rows.append((
            escape(name),
            escape(str(meta.get("stage", NA))),
            escape(str(meta.get("trackflow_version", NA))),
            _mapping_html(params),
            _mapping_html(extra),
        ))
    if data.summary:
        params = data.summary.get("params")
        rows.append(("summary.json", "size", escape(str(data.summary.get("trackflow_version", NA))),
                     _mapping_html(params if isinstance(params, dict) else {}), ""))
    if data.movie is not None:
        rows.append(("movie.ome.zarr", "acquire", escape(str(data.movie.attrs.get("trackflow_version", NA))),
                     _mapping_html(data.movie.attrs.get("settings") or data.movie.attrs.get("params") or {}), ""))
    if not rows:
        return section("Parameters and versions", '<p class="note">No provenance: no stage output is present.</p>')
    return section(
        "Parameters and versions",
        "<p>As recorded by each stage in its output (Parquet key-value metadata, summary.json, the movie's attributes).</p>",
        table(rows, ("file", "stage", "trackflow", "parameters", "recorded"), raw=True),
    )


def _mapping_html(mapping: Mapping[str, Any]) -> str:
    if not mapping:
        return ""
    return "<br>".join(f"<code>{escape(str(k))}</code> = {escape(fmt(v))}" for k, v in mapping.items())


def _render(data: RunData, params: Mapping[str, Any], index_href: str | None) -> str:
    title = f"{data.name}: {params['title']}"
    nav = f'<nav><a href="{escape(index_href)}">&larr; all runs</a></nav>' if index_href else ""
    head = f"{nav}<h1>{escape(data.name)}</h1>"
    head += f'<p class="muted">group: {escape(data.group) if data.group else "none"} · directory: <code>{escape(str(data.dir or NA))}</code></p>'
    if data.missing:
        head += f'<p class="note">Absent inputs: {escape(", ".join(data.missing))}.</p>'
    body = "\n".join([
        head,
        _key_figures(data),
        section("Size distribution", _size_figure(data, int(params["histogram_bins"]))),
        section("Features per frame", _frames_figure(data)),
        section("Ensemble MSD", _msd_figure(data, int(params["msd_max_lag"]))),
        _objects(data),
        _acquisition(data),
        _provenance(data),
    ])
    return page(title, body, _footer())


def _footer() -> str:
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"made by trackflow {escape(__version__)} on {escape(now)}"


def render_run(
    files: Mapping[str, str | os.PathLike] | str | os.PathLike,
    *,
    run: str | None = None,
    group: str | None = None,
    params: Mapping[str, Any] | None = None,
    index_href: str | None = "index.html",
) -> str:
    """The HTML page of one run.

    Parameters
    ----------
    files : mapping or path
        The run's files by what they hold, or its results directory (see
        :func:`load_run`); absent files are noted on the page.
    run : str, optional
        The run's name (default: the directory's name).
    group : str, optional
        Its replicate group.
    params : mapping, optional
        The ``report`` section (``report.schema.yaml``).
    index_href : str or None
        Link back to the index (None: no link).
    """
    params = check_section("report", params)
    return _render(load_run(files, name=run, group=group), params, index_href)


# ---------------------------------------------------------------------------
# the index
# ---------------------------------------------------------------------------


def _headline_row(name: str, summary: Mapping[str, Any], href: str | None) -> list[str]:
    link = f'<a href="{escape(href)}">{escape(name)}</a>' if href else escape(name)
    cells = [link]
    for key, _ in _HEADLINE:
        value = summary.get(key)
        cells.append(escape(fmt(_number(value), ".1f" if key.endswith("_nm") else ".4g")))
    return cells


def render_index(
    runs: Sequence[Mapping[str, Any]],
    summaries: Mapping[str, Mapping[str, Any]],
    *,
    params: Mapping[str, Any] | None = None,
    distributions: Mapping[str, pd.DataFrame | None] | None = None,
    groups: Mapping[str, tuple[Mapping[str, Any] | None, pd.DataFrame | None]] | None = None,
) -> str:
    """The index page: every run with its headline figures and a link to its
    page, replicate groups together with their merged figures.

    Parameters
    ----------
    runs : list of {"run", "group", "dir"}
    summaries : mapping run -> summary dict
    distributions : mapping run -> distribution table, optional
        Drawn together per group.
    groups : mapping group -> (merged summary or None, merged distribution or None), optional
        The size stage's replicate merges.
    """
    params = check_section("report", params)
    distributions = distributions or {}
    groups = groups or {}
    header = ("run", *(label for _, label in _HEADLINE))
    by_group: dict[str | None, list[Mapping[str, Any]]] = {}
    for r in runs:
        by_group.setdefault(r.get("group"), []).append(r)
    parts = [f"<h1>{escape(params['title'])}</h1>", f'<p class="muted">{len(runs)} run(s), {len([g for g in by_group if g])} replicate group(s).</p>']
    for group, members in sorted(by_group.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        rows = [_headline_row(r["run"], summaries.get(r["run"], {}), f"{r['run']}.html") for r in members]
        merged, merged_dist = groups.get(group, (None, None)) if group else (None, None)
        if group is None:
            parts.append(section("Runs without a group", table(rows, header, raw=True)))
            continue
        blocks = []
        if merged:
            cells = [f"<strong>merged ({escape(fmt(merged.get('n_replicates')))} replicates)</strong>"]
            for key, _ in _HEADLINE:
                value, sem = _number(merged.get(key)), _number(merged.get(f"{key}_sem"))
                spec = ".1f" if key.endswith("_nm") else ".4g"
                text = fmt(value, spec) + (f" ± {format(sem, spec)}" if sem is not None else "")
                cells.append(escape(text))
            rows.append(cells)
        blocks.append(table(rows, header, raw=True))
        if merged:
            blocks.append('<p class="muted">Merged: mean over the replicates ± its standard error (size stage).</p>')
        curves = {}
        for label, dist in [*((r["run"], distributions.get(r["run"])) for r in members), ("merged", merged_dist)]:
            curves.update(_main_curve(dist, label))
        uri = figures.size_distribution(curves, bins=int(params["histogram_bins"]), title=f"group {group}")
        blocks.append(figure(uri, "Size distributions of the replicates (each scaled to unit area).",
                             "No distributions to draw for this group."))
        parts.append(section(f"Group {group}", *blocks))
    return page(params["title"], "\n".join(parts), _footer())


def run(
    runs: list[dict],
    output: str | os.PathLike,
    params: Mapping[str, Any],
    groups: Mapping[str, Mapping[str, str | os.PathLike] | str | os.PathLike] | None = None,
) -> Path:
    """Write the index (``output``) and one page per run beside it (``<run>.html``).

    Parameters
    ----------
    runs : list of dict
        One per run: ``{"run": name, "group": group or None, "files":
        {what: path}}`` (see :func:`load_run`), or ``"dir"``, the run's
        results directory, instead of ``"files"``.
    output : path
        The index page, e.g. ``results/report/index.html``.
    params : mapping
        The ``report`` section (unknown keys are errors).
    groups : mapping, optional
        Replicate group -> its merged ``summary`` and ``distribution`` (the
        size stage's ``groups/<group>/`` files, as a mapping or that
        directory); a group without an entry is shown without merged figures.

    Returns
    -------
    Path
        ``output``.
    """
    params = check_section("report", params)
    runs = _check_runs(runs)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    summaries, distributions = {}, {}
    for r in runs:
        data = load_run(r["files"], name=r["run"], group=r["group"])
        atomic_write(output.parent / f"{r['run']}.html", _render(data, params, output.name))
        summaries[r["run"]], distributions[r["run"]] = data.summary, data.distribution
        log.info("report: %s -> %s.html", data.dir, r["run"])
    merged = {}
    for group, files in (groups or {}).items():
        files = group_files(files) if not isinstance(files, Mapping) else {k: Path(v) for k, v in files.items()}
        merged[group] = (_read_json(files["summary"]), _read_distribution(files["distribution"]))
    atomic_write(output, render_index(runs, summaries, params=params, distributions=distributions, groups=merged))
    return output


def _check_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict]:
    if not runs:
        raise ValueError("report: no runs given")
    out, seen = [], set()
    for i, r in enumerate(runs):
        if not r.get("run") or not (r.get("files") or r.get("dir")):
            raise ValueError(f"report: run entry {i} needs 'run' and 'files' (or 'dir'): {dict(r)}")
        name = str(r["run"])
        if not _RUN_NAME.match(name) or name == "index":
            raise ValueError(f"report: run name {name!r} cannot name a page (letters, digits, '_', '-', '.'; not 'index')")
        if name in seen:
            raise ValueError(f"report: run {name!r} is listed twice")
        seen.add(name)
        out.append({"run": name, "group": r.get("group") or None, "files": r.get("files") or str(r["dir"])})
    return out
