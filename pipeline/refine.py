"""The refine stage: least-squares refinement of located features.

``trackpy.refine_leastsq`` (van der Wel & Kraft 2017, J. Phys. Condens.
Matter 29:044001) fits features with a radial model function (a Gaussian by
default) on a locally constant background. Features closer than
``separation`` form a cluster and are fitted jointly, so the tail of a
neighbour no longer drags a centroid towards it. That is where refinement
pays: in ``benchmarks/refine.py`` pairs 0.6-0.8 diameters apart come out
2.4-4x more accurate than locate's centroids (0.05 px against 0.12-0.2 px;
from one diameter apart on the centroids are as good). On isolated spots
the centroid is marginally the better estimator (0.93-1.04x the
least-squares Cramér-Rao bound of Thompson, Larson & Webb 2002 / Mortensen
et al. 2010, against 1.02-1.06x for the fit), so by default only features
with a neighbour are fitted and isolated ones keep their centroid
(``fit_isolated: true`` fits all).

The movie is cut into ranges of whole frames that Dask refines in parallel,
each task receiving only its own frames' features. trackpy is called once
per frame with that frame's image (handed many frames as one array it
asserts).

Starting values. trackpy starts every fit from ``background = 0`` and from
the ``signal`` and ``size`` columns that locate measured on the
*bandpassed* image, while the fit runs on the *raw* image. On a bright
background, or in 3D, the fit then often converges to a wrong "successful"
minimum (the spot fitted as background, positions shifted by pixels). Each
fit therefore starts from raw-image estimates: the background is the median
of a box of twice the diameter around the feature, the signal the brightest
pixel next to the feature minus that background, and the size locate's
radius of gyration times ``sqrt(ndim / 2)`` (trackpy's Gaussian
``exp(-ndim r^2 / 2)`` falls to 1/e at ``size * sqrt(2 / ndim)``).
``param_val`` overrides any of them.

Output (``refined.parquet``): the features' rows and columns, sorted by frame
(stable, so each frame's rows keep their order), with

- ``[z,] y, x``: the refined positions (locate's where no fit was accepted);
- ``[z_located,] y_located, x_located``: the positions this stage received;
- ``cost``: RMS difference between fit and image, in units of the frame's
  maximum; NaN where nothing was fitted or the fit failed;
- ``cluster``, ``cluster_size``: the cluster (unique over the movie) and how
  many features it holds at ``separation``, for every method;
- ``fit_status``: ``fitted``, ``failed`` (located position kept) or
  ``skipped`` (isolated feature, or ``method: none``);
- ``fit_background``, ``fit_signal``: the fitted background and peak height
  above it (raw image units; NaN where not fitted), plus ``fit_<param>`` for
  every other fit parameter that ``param_mode`` lets vary (``fit_size``, ...).

Every other column (``mass``, ``size``, ``signal``, ``ep``, ...) keeps
locate's value. ``method: none`` gives the same columns. Failed fits are
counted: ``run`` records ``n_features``, ``n_fits``, ``n_failed``,
``failed_fraction`` (of the fits) and ``failed_fraction_exceeded`` (above
``max_failed_fraction``, also logged as a warning) in the table's
provenance. No row is ever dropped.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .compute import map_frame_chunks
from .io.movie import Movie, MovieError, open_movie
from .io.tables import FEATURE_COLUMNS, position_columns, read_table, table_metadata, write_table
from .io.schema import check_section, section_defaults

__all__ = [
    "FIT_FUNCTIONS",
    "refine_frames",
    "refine_movie",
    "failure_summary",
    "empty_refined",
    "run",
]

log = logging.getLogger("trackflow.refine")

#: Model functions of trackpy (``inv_series_<N>`` for any N >= 1 as well).
#: ``hat`` is the name trackpy's docstring uses for its ``disc`` function.
FIT_FUNCTIONS = ("gauss", "disc", "hat", "ring")
#: Our defaults under ``param_mode`` (trackpy's: positions and signal ``var``,
#: background ``cluster``, everything else ``const``). One size per cluster:
#: the spots of a cluster share the point-spread function. On simulated
#: pairs to tetramers 0.6-0.8 diameters apart this cuts the error of joint
#: fits by 15-30 % against a size fixed at locate's estimate, at no cost in
#: speed (a size per feature, ``var``, is as accurate but ~10x slower on
#: clusters of 4).
DEFAULT_PARAM_MODE = {"size": "cluster"}

#: Defaults of every key (workflow/schemas/refine.schema.yaml).
_DEFAULTS = section_defaults("refine")
#: Options of :func:`refine_frames` besides ``diameter`` and ``method``.
FIT_OPTIONS: tuple[str, ...] = tuple(
    key for key in _DEFAULTS if key not in ("method", "diameter", "max_failed_fraction", "frames_per_task")
)

_MAPPINGS = ("param_mode", "param_val", "bounds")
_AXES = ("z", "y", "x")
_OUTPUT_TAIL = ("cost", "cluster", "cluster_size", "fit_background", "fit_signal")
#: Values of the ``fit_status`` column.
FITTED, FAILED, SKIPPED = "fitted", "failed", "skipped"


# ---------------------------------------------------------------------------
# trackpy logs one WARNING per failed cluster; we count failures ourselves and
# report them once, so those lines are kept only when trackflow.refine logs at
# DEBUG (``trackflow -v``).
# ---------------------------------------------------------------------------
class _QuietRefineExceptions(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("RefineException"):
            return log.isEnabledFor(logging.DEBUG)
        return True


_trackpy_log = logging.getLogger("trackpy.refine.least_squares")
if not any(isinstance(f, _QuietRefineExceptions) for f in _trackpy_log.filters):
    _trackpy_log.addFilter(_QuietRefineExceptions())


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
def _per_axis(name: str, value: Any, ndim: int) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else (value,) * ndim
    if len(values) != ndim:
        raise ValueError(f"refine: {name} {list(values)} needs one value per spatial axis ({ndim}) or one value")
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"refine: {name} must be a positive number (per axis allowed), got {value!r}")
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"refine: {name} must be positive, got {value!r}")
    return values


def _diameter(diameter: Any, ndim: int) -> tuple[int, ...]:
    if diameter is None:
        raise ValueError(
            "refine: diameter is not set (give refine.diameter, or a features table whose "
            "provenance records locate's diameter)"
        )
    values = _per_axis("diameter", diameter, ndim)
    if any(float(v) < 3 or not float(v).is_integer() for v in values):
        raise ValueError(f"refine: diameter must be an integer >= 3 pixels (per axis allowed), got {diameter!r}")
    return tuple(int(v) for v in values)


def _fit_function_name(fit_function: Any) -> str:
    if not isinstance(fit_function, str):
        raise ValueError(f"refine: fit_function must be a string, got {fit_function!r}")
    if fit_function == "hat":
        return "disc"
    if fit_function in FIT_FUNCTIONS:
        return fit_function
    head, _, order = fit_function.rpartition("_")
    if head == "inv_series" and order.isdigit() and int(order) >= 1:
        return fit_function
    raise ValueError(
        f"refine: unknown fit_function {fit_function!r}; one of {list(FIT_FUNCTIONS)} or inv_series_<N>"
    )


def _fit_model(fit_function: str, ndim: int, isotropic: bool):
    """trackpy's FitFunctions (parameter names, modes) for this fit."""
    from trackpy.refine.least_squares import FitFunctions

    return FitFunctions(fit_function, ndim, isotropic)


def _check_mapping(name: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"refine: {name} must be a mapping (parameter -> value), got {value!r}")
    return dict(value)


def _check_fit_options(
    ndim: int, diameter: tuple[int, ...], pos_columns: Sequence[str], options: Mapping[str, Any]
) -> dict[str, Any]:
    """Validate the fit options once; returns them ready for trackpy.

    Types and ranges are the schema's (``refine.schema.yaml``); the names a
    fit parameter may take depend on the model and the dimensionality, so
    they are checked here.
    """
    # the library's None for param_mode, param_val and bounds is the schema's {}
    check_section("refine", {k: v for k, v in options.items() if v is not None or k not in _MAPPINGS})
    opts = dict(options)
    fit_isolated = opts.pop("fit_isolated", False)
    max_cluster_size = opts.pop("max_cluster_size", None)
    opts["fit_function"] = _fit_function_name(opts["fit_function"])
    isotropic = len(set(diameter)) == 1
    model = _fit_model(opts["fit_function"], ndim, isotropic)
    size_columns = list(model.size_columns)
    axes = _AXES[-ndim:]  # trackpy names fit parameters by axis, whatever the table's columns
    names = ["background", "signal", *axes, *size_columns, *model._params]
    aliases = ["pos"] + ([] if isotropic else ["size"])

    param_mode = {**DEFAULT_PARAM_MODE, **_check_mapping("param_mode", opts["param_mode"])}
    for key, mode in param_mode.items():
        if key not in names + aliases:
            raise ValueError(f"refine: unknown param_mode key {key!r}; known: {names + aliases}")
    param_val = _check_mapping("param_val", opts["param_val"])
    for key, value in param_val.items():
        if key not in names:
            raise ValueError(f"refine: unknown param_val key {key!r}; known: {names}")
    bounds = _check_mapping("bounds", opts["bounds"])
    for key, value in bounds.items():
        base = key[:-4] if key.endswith(("_abs", "_rel")) else key
        if base not in names + ["pos", "size"]:
            raise ValueError(
                f"refine: unknown bounds key {key!r}; use a parameter name ({names}), 'pos' or 'size', "
                "optionally with _abs or _rel"
            )
        pair = value if isinstance(value, (list, tuple)) else [value]
        bounds[key] = tuple(np.nan if v is None else float(v) for v in pair) if len(pair) == 2 else float(pair[0])
    separation = opts["separation"]
    if separation is not None:
        separation = _per_axis("separation", separation, ndim)
    max_iter = opts["max_iter"]

    # the fitted parameters worth reporting besides the positions
    modes = dict(model.param_mode)
    for key, mode in param_mode.items():
        targets = list(axes) if key == "pos" else size_columns if key == "size" else [key]
        for target in targets:
            modes[target] = mode
    varied = [p for p in [*size_columns, *model._params] if modes.get(p, "const") not in ("const", 0)]

    opts.update(
        param_mode=param_mode or None,
        param_val=param_val or None,
        bounds=bounds or None,
        separation=separation,
        max_iter=int(max_iter),
        max_shift=float(opts["max_shift"]),
        max_rms_dev=float(opts["max_rms_dev"]),
    )
    opts["_size_columns"] = size_columns
    opts["_varied"] = varied
    opts["_fit_isolated"] = bool(fit_isolated)
    opts["_max_cluster_size"] = None if max_cluster_size is None else int(max_cluster_size)
    return opts


def _pos_columns(features: pd.DataFrame, pos_columns: Sequence[str] | None) -> list[str]:
    cols = list(pos_columns) if pos_columns is not None else position_columns(features)
    missing = [c for c in ["frame", *cols] if c not in features.columns]
    if missing:
        raise ValueError(f"refine: the features lack column(s) {missing}")
    return cols


def _check_features(features: pd.DataFrame, pos_columns: Sequence[str]) -> None:
    if not isinstance(features, pd.DataFrame):
        raise ValueError(f"refine: features must be a DataFrame, got {type(features).__name__}")
    frames = features["frame"]
    if not pd.api.types.is_numeric_dtype(frames) or not np.isfinite(frames.to_numpy(dtype=float)).all():
        raise ValueError("refine: the features' 'frame' column must hold frame numbers (finite integers)")
    coords = features[list(pos_columns)].to_numpy(dtype=float)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"refine: {int(bad.sum())} feature(s) have non-finite positions, the first in frame "
            f"{features['frame'].iloc[first]} (row {first})"
        )


def empty_refined(features: pd.DataFrame, pos_columns: Sequence[str] | None = None, varied: Sequence[str] = ()) -> pd.DataFrame:
    """A refined table with no rows: the features' columns plus this stage's."""
    cols = _pos_columns(features, pos_columns) if len(features.columns) else ["y", "x"]
    out = features.iloc[:0].copy().reset_index(drop=True)
    for c in cols:
        out[f"{c}_located"] = pd.Series(dtype=float)
    for c in _OUTPUT_TAIL:
        out[c] = pd.Series(dtype="int64" if c.startswith("cluster") else float)
    for p in varied:
        out[f"fit_{p}"] = pd.Series(dtype=float)
    out["fit_status"] = pd.Series(dtype="str")
    return out


# ---------------------------------------------------------------------------
# the pure core
# ---------------------------------------------------------------------------
def _initial_guesses(
    image: np.ndarray,
    work: pd.DataFrame,
    pos_columns: Sequence[str],
    diameter: tuple[int, ...],
    size_columns: Sequence[str],
    param_val: Mapping[str, Any] | None,
) -> pd.DataFrame:
    """Raw-image starting values: local background, peak signal, model size.

    A feature whose box lies outside the image gets NaN, which trackpy reports
    as a failed fit ("Not all initial parameters are known").
    """
    ndim = image.ndim
    coords = np.rint(work[list(pos_columns)].to_numpy(dtype=float)).astype(np.int64)
    background = np.full(len(work), np.nan)
    peak = np.full(len(work), np.nan)
    for i, c in enumerate(coords):
        box = tuple(
            slice(max(0, c[k] - diameter[k]), max(0, min(image.shape[k], c[k] + diameter[k] + 1)))
            for k in range(ndim)
        )
        core = tuple(slice(max(0, c[k] - 1), max(0, min(image.shape[k], c[k] + 2))) for k in range(ndim))
        window, centre = image[box], image[core]
        if window.size and centre.size:
            background[i] = float(np.median(window))
            peak[i] = float(centre.max())
    floor = 1e-3 * max(float(np.max(image)) if image.size else 1.0, 1.0)
    work["background"] = np.maximum(background, 1e-6)
    work["signal"] = np.maximum(peak - background, floor)

    # trackpy's Gaussian is exp(-ndim/2 r^2), r = distance / size: it falls to
    # 1/e at size * sqrt(2 / ndim), so a radius of gyration maps to size * sqrt(ndim / 2)
    given = dict(param_val or {})
    scale = math.sqrt(ndim / 2.0)
    for col in size_columns:
        if col in given:
            continue
        if col in work.columns:
            source = work[col]
        elif col == "size" and all(f"size_{p}" in work.columns for p in pos_columns):
            source = np.exp(np.log(work[[f"size_{p}" for p in pos_columns]]).mean(axis=1))
        elif col.startswith("size_") and "size" in work.columns:
            source = work["size"]
        else:
            raise ValueError(
                f"refine: the features lack column {col!r} (locate's size) and param_val does not give it"
            )
        size = pd.to_numeric(source, errors="coerce").to_numpy(dtype=float) * scale
        work[col] = np.where(size > 0, size, np.nan)  # a non-positive size cannot be fitted
    return work


def _refine_one_frame(
    image: np.ndarray,
    work: pd.DataFrame,
    diameter: tuple[int, ...],
    options: Mapping[str, Any],
    frame_no: int,
) -> pd.DataFrame:
    """trackpy.refine_leastsq on one frame; if trackpy raises (rather than
    flagging a failed fit), refit cluster by cluster and give the clusters
    that still raise cost NaN."""
    import trackpy

    kwargs = {k: v for k, v in options.items() if not k.startswith("_")}
    kwargs.pop("fit_function")
    fit_function = options["fit_function"]
    separation = kwargs.pop("separation") or diameter
    kwargs.pop("pos_columns")
    pos_columns = list(_AXES[-image.ndim:])
    with np.errstate(all="ignore"):  # failing fits divide by zero; counted, not printed
        try:
            out = trackpy.refine_leastsq(
                work.copy(), image, diameter, separation=separation, fit_function=fit_function,
                pos_columns=list(pos_columns), t_column="frame", **kwargs,
            )
            return out.loc[work.index]
        except Exception as exc:  # noqa: BLE001 - trackpy raises plain errors for single clusters
            log.warning(
                "frame %d: trackpy.refine_leastsq raised %s: %s; refitting cluster by cluster",
                frame_no, type(exc).__name__, exc,
            )
        from trackpy.static import cluster

        clustered = cluster(work.copy(), separation, list(pos_columns), "frame")
        parts = []
        for cluster_id, rows in clustered.groupby("cluster", sort=False):
            try:
                fitted = trackpy.refine_leastsq(
                    rows.drop(columns=["cluster", "cluster_size"]), image, diameter,
                    separation=separation, fit_function=fit_function, pos_columns=list(pos_columns),
                    t_column="frame", **kwargs,
                )
                fitted["cluster"] = cluster_id
            except Exception as exc:  # noqa: BLE001
                log.warning(
                    "frame %d: cluster of %d feature(s) near %s cannot be fitted (%s: %s); "
                    "keeping the located positions",
                    frame_no, len(rows), rows[list(pos_columns)].iloc[0].round(1).tolist(),
                    type(exc).__name__, exc,
                )
                fitted = rows.copy()
                fitted["cost"] = np.nan
            parts.append(fitted)
        return pd.concat(parts).loc[work.index]


def _cluster_ids(features: pd.DataFrame, pos: Sequence[str], separation: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's cluster and the cluster's size, for all frames at once.

    Features of one frame with a neighbour within ``separation`` (per axis)
    are joined: the connected components trackpy's ``static.cluster`` forms
    (``query_pairs(1)`` on positions over separation) when it fits them.
    Clusters are numbered frame by frame, in the order their rows come.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(features)
    frame = features["frame"].to_numpy()
    scaled = features[list(pos)].to_numpy(dtype=float) / np.asarray(separation, dtype=float)
    # the frame as a further axis, 2 apart: no pair spans two frames (and a
    # 0 difference leaves the in-frame distances exactly as trackpy has them)
    pairs = cKDTree(np.column_stack([2.0 * frame, scaled])).query_pairs(1, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(frame, kind="stable")
    ids = np.empty(n, dtype=np.int64)
    ids[order] = pd.factorize(labels[order])[0]
    return ids, np.bincount(labels)[labels].astype(np.int64)


def refine_frames(
    frames: np.ndarray,
    first_frame: int,
    features: pd.DataFrame,
    *,
    diameter: int | Sequence[int],
    method: str = _DEFAULTS["method"],
    fit_function: str = _DEFAULTS["fit_function"],
    param_mode: Mapping[str, str] | None = None,
    param_val: Mapping[str, float] | None = None,
    bounds: Mapping[str, Any] | None = None,
    separation: float | Sequence[float] | None = _DEFAULTS["separation"],
    max_iter: int = _DEFAULTS["max_iter"],
    max_shift: float = _DEFAULTS["max_shift"],
    max_rms_dev: float = _DEFAULTS["max_rms_dev"],
    pos_columns: Sequence[str] | None = _DEFAULTS["pos_columns"],
    fit_isolated: bool = _DEFAULTS["fit_isolated"],
    max_cluster_size: int | None = _DEFAULTS["max_cluster_size"],
) -> pd.DataFrame:
    """Refine the features of consecutive frames (one Dask task's work).

    Parameters
    ----------
    frames : ndarray, (t, y, x) or (t, z, y, x)
        Raw images; ``frames[i]`` is frame ``first_frame + i`` of the movie.
    first_frame : int
        Movie frame number of ``frames[0]``.
    features : DataFrame
        ``locate``'s rows for these frames: ``frame``, positions in pixels
        (``[z,] y, x``) and, for ``leastsq``, ``size`` (or ``size_z, size_y,
        size_x`` for an anisotropic diameter) unless ``param_val`` fixes it.
    diameter : int or sequence of int
        Mask diameter of the fit, in pixels (per axis for anisotropic
        voxels, ``[z, y, x]``); locate's diameter.
    method : {'leastsq', 'none'}
        ``leastsq``: trackpy.refine_leastsq (van der Wel & Kraft 2017);
        ``none``: pass the positions through (same columns, ``cost`` NaN).
    fit_function : str
        ``gauss``, ``disc`` (alias ``hat``), ``ring`` or ``inv_series_<N>``.
    param_mode : mapping, optional
        Per fit parameter (``background, signal, pos, size, <axis>, size_<axis>``
        or the model's own): ``const``, ``var``, ``cluster`` or ``global``.
        Entries override the defaults: positions and signal vary per feature,
        background and size per cluster (:data:`DEFAULT_PARAM_MODE`; trackpy
        itself keeps the size fixed), the model's own parameters are fixed.
    param_val : mapping, optional
        Starting (or, with ``const``, fixed) values, overriding the
        raw-image estimates described in the module docstring.
    bounds : mapping, optional
        trackpy's bounds: ``{param: [low, high]}``, ``{param_abs: d}``,
        ``{param_rel: f}``; by default a position moves at most one radius.
    separation : float or sequence, optional
        Features closer than this (pixels, per axis allowed) are fitted
        together; default: the diameter.
    max_iter : int
        Re-centrings of the fit window per cluster.
    max_shift : float
        Shift (pixels) from the window centre that triggers a re-centring.
    max_rms_dev : float
        Largest accepted RMS difference between fit and image, in units of the
        frame's maximum; worse fits count as failed.
    pos_columns : sequence of str, optional
        Position columns; default ``[z,] y, x``.
    fit_isolated : bool
        Fit features that have no neighbour within ``separation`` too. By
        default they keep locate's centroid, which ``benchmarks/refine.py``
        finds a few per cent more precise than an unweighted least-squares
        fit on isolated Gaussian spots (and which costs nothing); the joint
        fit is what removes a neighbour's pull on a centroid.
    max_cluster_size : int or None
        Larger clusters are not fitted (located positions kept, ``fit_status``
        ``skipped``); None fits any size. A joint fit's cost climbs steeply
        with its size: in ``benchmarks``-style scenes a cluster of 4 takes
        ~0.05 s, one of 5-8 about 1 s (SLSQP), and the spurious crowds of
        noise maxima on real footage tens of seconds.

    Returns
    -------
    DataFrame
        The input rows in their order (index reset) with refined positions
        and the columns listed in the module docstring. Failed fits keep the
        located positions and get ``cost`` NaN; no row is ever dropped.
    """
    frames = np.asarray(frames)
    check_section("refine", {"method": method})
    pos = _pos_columns(features, pos_columns)
    ndim = len(pos)
    if frames.ndim != ndim + 1:
        raise ValueError(
            f"refine: frames of shape {frames.shape} do not match the {ndim}D positions {pos} "
            "(expected (t, y, x) or (t, z, y, x))"
        )
    diam = _diameter(diameter, ndim)
    options = _check_fit_options(
        ndim, diam, pos,
        dict(fit_function=fit_function, param_mode=param_mode, param_val=param_val, bounds=bounds,
             separation=separation, max_iter=max_iter, max_shift=max_shift, max_rms_dev=max_rms_dev,
             pos_columns=pos, fit_isolated=fit_isolated, max_cluster_size=max_cluster_size),
    )
    fit_isolated = options.pop("_fit_isolated")
    max_cluster_size = options.pop("_max_cluster_size")
    varied = options["_varied"]  # also with method none: the same columns either way
    if len(features) == 0:
        return empty_refined(features, pos, varied)
    _check_features(features, pos)
    frame_numbers = features["frame"].to_numpy().astype(np.int64)
    outside = (frame_numbers < first_frame) | (frame_numbers >= first_frame + len(frames))
    if outside.any():
        raise ValueError(
            f"refine: features in frame {int(frame_numbers[outside][0])} are outside the frames "
            f"given ({first_frame}..{first_frame + len(frames) - 1})"
        )

    out = features.reset_index(drop=True).copy()
    for c in pos:
        out[f"{c}_located"] = out[c].astype(float)
    out["cost"] = np.nan
    out["cluster"], out["cluster_size"] = _cluster_ids(out, pos, options["separation"] or diam)
    status = np.full(len(out), SKIPPED, dtype=object)
    fit_columns = ["fit_background", "fit_signal", *(f"fit_{p}" for p in varied)]
    for c in fit_columns:
        out[c] = np.nan

    axes = list(_AXES[-ndim:])
    sizes = out["cluster_size"].to_numpy()
    wanted = (sizes > 1) | fit_isolated
    if max_cluster_size is not None:
        wanted &= sizes <= max_cluster_size
    if method == "none":
        wanted[:] = False
    for frame_no, rows in out[wanted].groupby("frame", sort=True):
        chosen = rows.index
        image = frames[int(frame_no) - first_frame]
        # trackpy's names: z, y, x and size or size_z, size_y, size_x
        work = pd.DataFrame({"frame": out.loc[chosen, "frame"]}, index=chosen)
        for p, axis in zip(pos, axes):
            work[axis] = out.loc[chosen, p].astype(float)
        if "size" in out.columns:
            work["size"] = pd.to_numeric(out.loc[chosen, "size"], errors="coerce")
        for p, axis in zip(pos, axes):
            if f"size_{p}" in out.columns:
                work[f"size_{axis}"] = pd.to_numeric(out.loc[chosen, f"size_{p}"], errors="coerce")
        work = _initial_guesses(image, work, axes, diam, options["_size_columns"], options["param_val"])
        fitted = _refine_one_frame(image, work, diam, options, int(frame_no))
        cost = fitted["cost"].to_numpy(dtype=float)
        ok = np.isfinite(cost)
        done = chosen[ok]
        out.loc[done, pos] = fitted.loc[done, axes].to_numpy(dtype=float)
        out.loc[chosen, "cost"] = cost
        for p, col in [("background", "fit_background"), ("signal", "fit_signal"), *((p, f"fit_{p}") for p in varied)]:
            out.loc[done, col] = fitted.loc[done, p].to_numpy(dtype=float)
        status[out.index.get_indexer(chosen)] = np.where(ok, FITTED, FAILED)
    out["fit_status"] = pd.Series(status, index=out.index, dtype="str")
    return out


# ---------------------------------------------------------------------------
# the movie
# ---------------------------------------------------------------------------
def failure_summary(
    refined: pd.DataFrame, *, max_failed_fraction: float, max_cluster_size: int | None = None
) -> dict[str, Any]:
    """Counts for the provenance: features, fits attempted, failed fits and
    their share of the attempted ones, whether it exceeds
    ``max_failed_fraction``, how many features sat in clusters and how many
    were left unfitted for sitting in a cluster above ``max_cluster_size``."""
    n = int(len(refined))
    status = refined["fit_status"] if n else pd.Series(dtype="str")
    n_fitted = int((status == FITTED).sum())
    n_failed = int((status == FAILED).sum())
    attempted = n_fitted + n_failed
    fraction = n_failed / attempted if attempted else 0.0
    return {
        "n_features": n,
        "n_fits": attempted,
        "n_failed": n_failed,
        "failed_fraction": fraction,
        "max_failed_fraction": float(max_failed_fraction),
        "failed_fraction_exceeded": bool(fraction > max_failed_fraction),
        "n_clustered": int((refined["cluster_size"] > 1).sum()) if n else 0,
        "largest_cluster": int(refined["cluster_size"].max()) if n else 0,
        "n_in_clusters_too_large": int(((status == SKIPPED) & (refined["cluster_size"] > max_cluster_size)).sum())
        if n and max_cluster_size is not None else 0,
    }


def refine_movie(
    movie: Movie | str | os.PathLike,
    features: pd.DataFrame,
    *,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    **params: Any,
) -> pd.DataFrame:
    """Refine every feature of a movie, Dask-parallel over ranges of frames.

    Parameters
    ----------
    movie : Movie or path
        The movie store the features were located in.
    features : DataFrame
        The features (``features.parquet``).
    compute : mapping, optional
        The ``compute`` config section.
    threads : int, optional
        Local workers.
    **params
        The ``refine`` section: keys of ``refine.schema.yaml``
        (``diameter`` must be given here).

    Returns
    -------
    DataFrame
        See :func:`refine_frames`; rows sorted by frame (stable), cluster ids
        unique over the movie. A share of failed fits above
        ``max_failed_fraction`` is logged as a warning.
    """
    resolved = check_section("refine", params)
    opened = movie if isinstance(movie, Movie) else open_movie(movie)
    pos = _pos_columns(features, resolved["pos_columns"])
    if len(pos) != opened.ndim:
        raise ValueError(
            f"refine: the features have {len(pos)}D positions {pos} but {opened.path} holds {opened.ndim}D frames"
        )
    options = {k: resolved[k] for k in FIT_OPTIONS}
    options["pos_columns"] = pos
    diameter = _diameter(resolved["diameter"], len(pos))
    method = resolved["method"]
    # validate once here, so that a bad option fails before any task starts
    varied = _check_fit_options(len(pos), diameter, pos, options)["_varied"]
    if len(features) == 0:
        return empty_refined(features, pos, varied)
    _check_features(features, pos)
    ordered = features.sort_values("frame", kind="stable").reset_index(drop=True)
    frame_numbers = ordered["frame"].to_numpy().astype(np.int64)
    if frame_numbers[0] < 0 or frame_numbers[-1] >= len(opened):
        bad = frame_numbers[0] if frame_numbers[0] < 0 else frame_numbers[-1]
        raise MovieError(f"refine: features in frame {bad}, but {opened.path} has frames 0..{len(opened) - 1}")

    if method == "none":  # nothing to read from the movie
        refined = refine_frames(
            np.empty((len(opened),) + (0,) * len(pos), dtype=np.uint8), 0, ordered,
            diameter=diameter, method="none", **options,
        )
    else:
        def rows_of(start: int, stop: int) -> dict[str, Any] | None:
            lo, hi = np.searchsorted(frame_numbers, [start, stop])
            return {"features": ordered.iloc[lo:hi]} if hi > lo else None

        refined = map_frame_chunks(
            refine_frames, opened, compute=compute, threads=threads,
            frames_per_task=resolved["frames_per_task"], chunk_kwargs=rows_of, progress="refine",
            diameter=diameter, method=method, **options,
        )
    if len(refined) != len(ordered):  # a lost row would be a bug, never a fit failure
        raise RuntimeError(f"refine: {len(ordered)} features in, {len(refined)} rows out")
    refined["cluster"] = refined.groupby(["frame", "cluster"], sort=False).ngroup().astype(np.int64)
    summary = failure_summary(
        refined, max_failed_fraction=resolved["max_failed_fraction"], max_cluster_size=resolved["max_cluster_size"]
    )
    if summary["failed_fraction_exceeded"]:
        log.warning(
            "%s: %d of %d fits failed (%.1f%% > max_failed_fraction %.1f%%); their located positions are kept",
            opened.path, summary["n_failed"], summary["n_fits"], 100 * summary["failed_fraction"],
            100 * resolved["max_failed_fraction"],
        )
    if summary["n_in_clusters_too_large"]:
        log.info(
            "%s: %d features sit in clusters of more than max_cluster_size %d and keep their located positions",
            opened.path, summary["n_in_clusters_too_large"], resolved["max_cluster_size"],
        )
    return refined


def run(
    movie: str | os.PathLike,
    features: str | os.PathLike,
    output: str | os.PathLike,
    params: Mapping[str, Any] | None,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """The refine stage: ``movie.ome.zarr`` + ``features.parquet`` -> ``refined.parquet``.

    Parameters
    ----------
    movie : path
        The movie store.
    features : path
        The features table written by locate.
    output : path
        The refined table to write (Parquet, with provenance).
    params : mapping
        The ``refine`` config section (keys of ``refine.schema.yaml``;
        missing keys take those defaults, unknown keys are an error).
        ``diameter: null`` takes locate's diameter from the features table's
        provenance.
    compute : mapping, optional
        The ``compute`` config section.
    threads : int, optional
        Local workers (a Snakemake rule's ``threads``).

    Returns
    -------
    DataFrame
        The refined table written.
    """
    resolved = check_section("refine", params)
    table = read_table(features, required=FEATURE_COLUMNS, stage="locate")
    diameter_source = "refine.diameter"
    if resolved["diameter"] is None:
        recorded = (table_metadata(features).get("params") or {}).get("diameter")
        if recorded is None:
            raise ValueError(
                f"refine: diameter is null and {features} does not record locate's 'diameter' in its "
                "provenance; set refine.diameter"
            )
        resolved["diameter"] = recorded
        diameter_source = f"{features} (locate's diameter)"
    opened = open_movie(movie)
    refined = refine_movie(opened, table, compute=compute, threads=threads, **resolved)
    summary = failure_summary(
        refined, max_failed_fraction=resolved["max_failed_fraction"], max_cluster_size=resolved["max_cluster_size"]
    )
    write_table(
        refined,
        output,
        stage="refine",
        params=resolved,
        extra={
            "movie": str(opened.path),
            "features": str(features),
            "diameter_source": diameter_source,
            **summary,
        },
    )
    log.info(
        "%s: %d features (%s): %d fitted, %d failed (%.1f%% of fits) -> %s",
        opened.path, summary["n_features"], resolved["method"], summary["n_fits"] - summary["n_failed"],
        summary["n_failed"], 100 * summary["failed_fraction"], output,
    )
    return refined
