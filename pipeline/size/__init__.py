"""The ``size`` stage: from tracks to diffusion coefficients, hydrodynamic
diameters, a size distribution and a concentration.

What it reads and writes
------------------------
Input is ``tracks.parquet`` (columns ``frame, [z,] y, x, particle``, positions
in pixels) and the run's movie store, for the physical units and conditions:
the per-axis pixel size, the frame interval, ``trackflow.exposure_s``,
``trackflow.temperature_K`` and ``trackflow.viscosity_Pa_s``. Flow or drift
columns, when the linker wrote them, are subtracted from the steps
(:mod:`pipeline.size.steps`). Tracks made by another tracker come as a geff
store (:mod:`pipeline.io.geff`), or as the table imported from one, often
without a movie: the run's settings then give the conditions
(:func:`~pipeline.size.conditions.settings_conditions`).

Outputs: ``sizes.parquet`` (one row per valid track), ``distribution.csv``
(the binned size distribution: the maximum-likelihood estimate beside
the naive per-track histogram, with the concentration per bin) and
``summary.json`` (the run's figures); optionally ``summary.csv``, the
headline figures in the layout of an NTA instrument's export.

The estimators
--------------
- Per track, D and the localization error σ by the covariance estimator
  (CVE; Vestergaard, Blainey & Flyvbjerg 2014), with the motion-blur factor
  R = t_exp / (6 Δt) (Michalet 2010; Berglund 2010), or by a least-squares
  fit of the first p MSD points with p chosen iteratively (Michalet 2010;
  Michalet & Berglund 2012): :mod:`pipeline.size.diffusion`.
- Only single-frame steps enter: a track that skips frames (linking with
  memory) is cut into consecutive pieces for the step statistics, never
  read as a longer single step. When those steps correlate two or more
  frames apart (positions smoothed in time by frame blending or video
  compression), the steps span L frames instead, L chosen from the
  measured correlation (``size.step_lag``, :mod:`pipeline.size.lag`).
- The size distribution by maximum likelihood over a log-spaced diameter
  grid (Walker 2012), each track's likelihood the product over its steps,
  so that its length counts: by default (``size.distribution: ems``) with
  each track's own localization error shrunk towards the sample's by how
  much the tracks truly differ, a fitted fraction of steps that are jumps
  to a neighbour (mislinks, :mod:`pipeline.size.mislinks`), every track's
  likelihood widened by the measured step dispersion, and the EM smoothed
  by a width chosen by cross-validation (EMS, :mod:`pipeline.size.ems`);
  ``walker`` is one σ for all tracks. Beside it the naive per-track
  histogram; bootstrap over tracks for the intervals of the mode and D50:
  :mod:`pipeline.size.walker`, :mod:`pipeline.size.distribution`.
- Stokes–Einstein diameters (``pipeline.physics``); concentration from the
  mean number of particles per frame, the field of view and the configured
  depth of field: :mod:`pipeline.size.sample`.

The modules
-----------
``parameters`` (the section, checked against its schema), ``conditions``
(frame interval, pixel size, temperature, viscosity), ``steps`` (flow-
corrected steps of all tracks), ``diffusion`` (per-track D), ``ensemble``
(ensemble MSD), ``lag`` (how many frames a step spans), ``walker``
(Walker's EM), ``mislinks`` (the likelihood step by step, with jumps),
``ems`` (smoothed EM), ``distribution`` (a distribution's figures and
bins), ``sample`` (all of these on one table:
:func:`size_tracks`), ``replicates`` (merging runs), ``summary`` (the
files). All take and return plain arrays and DataFrames; :func:`run` and
:func:`run_group`, here, do the file work.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

from ..io.geff import check_settings, is_geff, read_tracks_geff
from ..io.movie import open_movie
from ..io.tables import (
    TRACK_COLUMNS,
    jsonable,
    position_columns,
    read_distribution,
    read_summary,
    read_table,
    write_table,
)
from .conditions import movie_conditions, settings_conditions
from .diffusion import blur_factor, cve, msd_fit, optimal_msd_points, track_diffusion
from .distribution import distribution_figures, distribution_peaks
from .ensemble import ensemble_msd, fit_powerlaw
from .parameters import check_params
from .replicates import merge_replicates
from .sample import size_tracks
from .steps import track_steps
from .summary import (
    _write_csv,
    _write_json,
    summary_row,
    write_group_nta_csv,
    write_nta_csv,
)
from .walker import walker_distribution, walker_em, walker_likelihood

__all__ = [
    "check_params",
    "blur_factor",
    "cve",
    "msd_fit",
    "optimal_msd_points",
    "track_steps",
    "track_diffusion",
    "ensemble_msd",
    "fit_powerlaw",
    "walker_likelihood",
    "walker_em",
    "walker_distribution",
    "distribution_figures",
    "distribution_peaks",
    "size_tracks",
    "merge_replicates",
    "summary_row",
    "run",
    "run_group",
]

log = logging.getLogger("trackflow.size")


def run(
    tracks: str | os.PathLike,
    movie: str | os.PathLike | None,
    sizes: str | os.PathLike,
    distribution: str | os.PathLike,
    summary: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    summary_csv: str | os.PathLike | None = None,
    *,
    run_name: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The size stage on files: ``tracks.parquet`` (or a geff store) + movie
    store -> ``sizes.parquet``, ``distribution.csv``, ``summary.json``.

    Conditions come from the movie's metadata: pixel size per axis, frame
    interval, ``trackflow.exposure_s``, ``trackflow.temperature_K``,
    ``trackflow.viscosity_Pa_s``; the config's ``temperature_K`` and
    ``viscosity_Pa_s`` override them (viscosity falls back to water at T).
    Dropped frames are left out of the particles-per-frame average.

    Tracks from another tracker: ``tracks`` may be a geff store (read by
    :func:`pipeline.io.geff.read_tracks_geff`), and ``movie`` None. The
    conditions then come from ``settings`` (a geff run's settings,
    :data:`pipeline.io.geff.GEFF_SETTINGS`: ``pixel_size_um``,
    ``frame_interval_s``, ``exposure_s``, ``temperature_K``,
    ``viscosity_Pa_s``; ``space_unit`` and ``time_unit`` for axes that
    state none), over what a geff store written by trackflow records; the
    field of view is then unknown, so no concentration is given.

    ``run_name`` is the run's name, recorded as the summary's ``run`` (None
    when not given); the caller knows it (the workflow's ``{run}``), the
    paths are not read for it.

    Returns the summary dict (also written to ``summary``): the Walker and
    naive ``*_mean_nm, *_mode_nm, *_sd_nm, *_d10_nm, *_d50_nm, *_d90_nm``,
    ``mode_ci_nm``, ``d50_ci_nm`` (bootstrap 95 % intervals), ``n_tracks``,
    ``particles_per_frame``, ``concentration_per_ml``, ``depth_um``,
    ``temperature_K``, ``viscosity_Pa_s``, ``viscosity_source``,
    ``frame_interval_s``, ``exposure_s``, ``blur_R``, ``msd_powerlaw_n``,
    ``msd_powerlaw_A``, ``emsd``, ``trackflow_version``, ``params`` and more.
    ``summary_csv``, when given, also gets the headline figures as a one-row
    CSV in the layout of an NTA instrument's export (:func:`summary_row`).
    """
    p = check_params(params)
    settings = check_settings(settings, f"size {tracks}")
    conditions = {k: v for k, v in settings.items() if k not in ("space_unit", "time_unit") and v is not None}
    if movie is not None and conditions:
        raise ValueError(f"size {tracks}: settings {sorted(conditions)} are for tracks without a movie; "
                         f"the movie {movie} gives the conditions")
    mov = open_movie(movie) if movie is not None else None
    stated: dict[str, Any] = {}
    if is_geff(tracks):
        reading = {key: settings.get(key) for key in ("pixel_size_um", "frame_interval_s", "space_unit", "time_unit")}
        if mov is not None:
            reading.update(pixel_size_um=list(mov.pixel_size_um), frame_interval_s=mov.frame_interval_s)
        table = read_tracks_geff(tracks, **reading)
        stated = table.attrs["geff"]
        for note in stated["notes"]:
            log.warning("size %s: %s", tracks, note)
    else:
        table = read_table(tracks, required=TRACK_COLUMNS, stage="link")
    pos = position_columns(table)
    if mov is not None:
        if len(pos) != mov.ndim:
            raise ValueError(
                f"{tracks} has {len(pos)}D positions {pos} but movie {movie} is {mov.ndim}D"
            )
        cond = movie_conditions(mov, movie, p)
    else:
        # a store trackflow wrote records the conditions; the run's settings win
        recorded = stated.get("trackflow") or {}
        given = {key: recorded.get(key) for key in ("exposure_s", "temperature_K", "viscosity_Pa_s")}
        given.update(pixel_size_um=stated.get("pixel_size_um"), frame_interval_s=stated.get("frame_interval_s"))
        given = {key: value for key, value in given.items() if value is not None}
        cond = settings_conditions({**given, **conditions}, p, ndim=len(pos), where=str(tracks))
    section = {k: v for k, v in p.items() if k not in ("temperature_K", "viscosity_Pa_s")}
    sizes_df, dist_df, summ = size_tracks(
        table, pixel_size_um=cond["pixel_size_um"], frame_interval_s=cond["frame_interval_s"],
        exposure_s=cond["exposure_s"], temperature_K=cond["temperature_K"],
        viscosity_Pa_s=cond["viscosity_Pa_s"], field_of_view_um2=cond["field_of_view_um2"],
        n_frames=cond["n_frames"], **{**section, "depth_um": cond["depth_um"]},
    )
    if mov is None and cond["depth_um"] is not None:
        summ["notes"].append("concentration not computed: without a movie the field of view is unknown")
    if cond["viscosity_source"] is not None:
        summ["viscosity_source"] = cond["viscosity_source"]
    summ["temperature_source"] = cond["temperature_source"]
    summ["depth_source"] = cond["depth_source"]
    summ["params"] = p
    summ["run"] = run_name
    summ["movie"] = None if movie is None else str(movie)
    summ["dropped_frames"] = cond["dropped_frames"]
    for note in summ["notes"]:
        log.warning("size %s: %s", tracks, note)
    extra: dict[str, Any] = {
        "inputs": {"tracks": str(tracks), "movie": None if movie is None else str(movie)},
        "n_tracks": summ["n_tracks"],
        "n_tracks_in": summ["n_tracks_in"],
        "n_tracks_short": summ["n_tracks_short"],
        "temperature_K": summ["temperature_K"],
        "viscosity_Pa_s": summ["viscosity_Pa_s"],
    }
    if settings:
        extra["settings"] = settings
    if stated:
        extra["geff"] = {k: v for k, v in stated.items() if k != "trackflow"}
    write_table(sizes_df, sizes, stage="size", params=p, extra=extra)
    _write_csv(dist_df, distribution)
    _write_json(summ, summary)
    if summary_csv is not None:
        write_nta_csv(summ, summary_csv)
    return jsonable(summ)


def run_group(
    group: str,
    distributions: Sequence[str | os.PathLike],
    summaries: Sequence[str | os.PathLike],
    distribution: str | os.PathLike,
    summary: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    summary_csv: str | os.PathLike | None = None,
    *,
    run_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Merge the replicate runs of ``group`` (their ``distribution.csv`` and
    ``summary.json``, in matching order) into the group's distribution (mean
    and standard error per bin) and summary (mean and standard error per
    figure). ``params`` is the ``size`` section (validated, recorded).
    ``run_names`` names the runs, in the same order (None: the ``run`` each
    summary records). ``summary_csv``, when given, gets one row per run and
    a last row for the group (mean and standard error), in the layout of
    :func:`summary_row`."""
    p = check_params(params)
    distributions, summaries = list(distributions), list(summaries)
    if len(distributions) != len(summaries):
        raise ValueError(
            f"group {group!r}: {len(distributions)} distributions but {len(summaries)} summaries"
        )
    if not distributions:
        raise ValueError(f"group {group!r} has no runs")
    if run_names is not None and len(run_names) != len(summaries):
        raise ValueError(f"group {group!r}: {len(run_names)} run names but {len(summaries)} summaries")
    dists = [read_distribution(d) for d in distributions]
    summs = [read_summary(path) for path in summaries]
    for i, (path, s) in enumerate(zip(summaries, summs)):
        if run_names is not None:
            s["run"] = run_names[i]
        elif s.get("run") is None:
            raise ValueError(f"group {group!r}: {path} records no run name (give the runs' names)")
    try:
        merged, out = merge_replicates(dists, summs)
    except ValueError as exc:
        raise ValueError(f"group {group!r}: {exc}") from None
    out = {"group": group, **out, "runs": [s["run"] for s in summs], "params": p}
    _write_csv(merged, distribution)
    _write_json(out, summary)
    if summary_csv is not None:
        write_group_nta_csv(group, summs, out, summary_csv)
    return jsonable(out)
