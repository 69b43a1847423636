"""Flow-interpolated, appearance-aware linking (``link.method: flow``).

Nearest-neighbour linking breaks when particles move together faster than
they are spaced (drift, convection, flow cells). This linker learns the flow
from the matches themselves and links each feature to where the flow says it
went. After Nellie (Lefebvre et al., Nature Methods 2025), with the changes
argued in docs/science.md §3: one-to-one assignment by default, and flow
weights that fall with distance.

Per pair of frames t → t+1:

1. **Candidates**: features at t+1 within ``gate`` of each feature's
   predicted position (KD-tree range query; costs stay a sparse list).
2. **Cost**: z-score over this pair's candidates of the squared distance,
   plus the mean z-score of the intensity differences (mean, variance), plus
   the mean z-score of the Hu-invariant differences (:mod:`.appearance`).
   Each appearance column is weighted by how well it tells particles apart
   in this movie (:func:`appearance_weights`, learned from the unambiguous
   links): 1 for the first pairs, as in Nellie; near 0 for a column that is
   only noise (identical particles), where it would otherwise blur the
   distance term. Pairs at or above ``cost_cutoff`` are dropped.
3. **Assignment**: one-to-one minimum total cost on the sparse graph
   (``hungarian``), or Nellie's rule (``mutual_cheapest``: each feature's
   cheapest partner, in both directions, feeds the flow; a link needs the
   two directions to agree).
4. **Flow**: the matches become displacement vectors with costs; the flow at
   a point is interpolated from the nearest vectors within ``flow_radius``
   with weights exp(−cost)/distance (:mod:`pipeline.flowfield`), as a weighted mean
   (``flow_order: 0``, Nellie) or, by default, a weighted linear fit, which
   stays unbiased in shear, rotation and at the edges of the field of view.
   The current pair's matches are pooled with those of the previous pairs
   (up to ``MAX_PREDICTOR_PAIRS``, within ``flow_window``), so a steady flow
   is sampled densely even where particles are sparse. A feature's own
   vector never predicts itself, and a flow the neighbours' scatter cannot
   tell from zero is shrunk towards zero (pure diffusion predicts no motion).
5. Steps 1–4 repeat with each feature moved by the flow until the matches
   stop changing. With no flow known yet (the first pair), the first
   estimate is each region's consensus displacement (:func:`_consensus_field`),
   which finds flows that move particles further than their spacing.
6. **Links**: predictions (one flow step per frame of gap) are linked to the
   features at t+1 within ``search_range`` with the same cost and
   assignment; tracks missing for up to ``memory`` frames stay candidates,
   searched within ``search_range`` × √gap (diffusion spreads as √time).

An optional backward pass (last frame to first) adds the links the forward
pass left open at both ends. Every row finally gets ``flow_dy, flow_dx``
(``flow_dz``): the flow at that feature in px/frame, fitted to the *other*
tracks' steps within ``flow_window`` frames either side, so the size stage
can subtract convection without subtracting the particle's own diffusion.

The work per frame is a few KD-tree queries, small batched least-squares
fits (a bounded number of vectors per feature) and sparse assignments, so it
grows about linearly with the number of features.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..flowfield import FlowField, flow_columns, interpolate_flow
from ..io.schema import check_section, section_defaults
from ..io.tables import flow_columns as row_flow_columns
from ..matching import ASSIGNMENTS, appearance_weights, assign, candidate_pairs, pair_costs
from .appearance import INTENSITY_COLUMNS, appearance_columns, appearance_features, hu_columns

__all__ = [
    "ASSIGNMENTS",
    "link_flow",
    "link_tracks",
    "appearance_features",
    "interpolate_flow",
    "compute_appearance",
    "candidate_pairs",
    "pair_costs",
    "appearance_weights",
    "assign",
]

log = logging.getLogger("trackflow.link")

# Rounds of match → flow → re-match per frame pair (stops early when stable).
MAX_FLOW_ROUNDS = 3
# The predictor pools the matches of at most this many previous frame pairs
# (fewer if flow_window is smaller). Denser vectors keep the linear fit local
# (its nearest vectors lie closer), which matters where the flow curves: on
# the benchmark's vortex, pooling 10 pairs rather than 3 brought the learned
# predictor to within 0.006 α of the exact flow over 80 frames (0.872 against
# 0.877; 3 pairs: 0.859). A flow that changes faster wants a smaller
# flow_window.
MAX_PREDICTOR_PAIRS = 10
# The per-row flow columns (what the size stage subtracts) average the 256
# nearest steps of other tracks with equal weights in a local linear fit: the
# error of the subtracted flow adds to the measured diffusion (twice over in
# the covariance estimator, as it is correlated from step to step), so it
# must be averaged down harder than a predictor needs. Measured on the
# benchmark's shear flow: ~0.05-0.1 px² per axis, against ~3.7 px² of
# diffusion per step; with exp(−cost)/distance weights ~0.15 px².
ROW_FLOW_NEIGHBOURS = 256
ROW_FLOW_WEIGHTING = "equal"

# the ``link`` section's defaults (link.schema.yaml), ``flow`` holding this
# linker's own keys
_DEFAULTS = section_defaults("link")
_FLOW = _DEFAULTS["flow"]


# ---------------------------------------------------------------------------
# The linker
# ---------------------------------------------------------------------------


class _Problem:
    """The features as arrays: metric positions, frames, appearance groups."""

    def __init__(self, positions: np.ndarray, frames: np.ndarray, appearance: dict[str, np.ndarray]):
        self.X = positions
        self.frame = frames
        self.appearance = appearance
        self.weights = {g: np.ones(v.shape[1]) for g, v in appearance.items()}
        self._weight_sums: dict[str, np.ndarray] = {}
        self._weight_count = 0
        self.unique_frames = np.unique(frames)
        bounds = np.searchsorted(frames, self.unique_frames)
        ends = np.append(bounds[1:], len(frames))
        self.rows_of = {int(f): np.arange(a, b) for f, a, b in zip(self.unique_frames, bounds, ends)}

    def costs(self, src_rows, dst_rows, distance):
        if not self.appearance:
            return pair_costs(distance)
        a = {g: v[src_rows] for g, v in self.appearance.items()}
        b = {g: v[dst_rows] for g, v in self.appearance.items()}
        return pair_costs(distance, a, b, self.weights)

    def learn_weights(self, src_rows, dst_rows, unambiguous, frame_rows, frame_tree) -> None:
        """Update the appearance weights (:func:`appearance_weights`) from a
        frame pair: same particle = the links that had a single candidate
        at both ends (so appearance did not choose them); different
        particles = each feature of the frame and its nearest neighbour.
        Averaged over the frame pairs seen so far; Nellie's weights (1)
        until ten unambiguous links have been seen."""
        if not self.appearance or unambiguous.sum() < 10 or len(frame_rows) < 2:
            return
        _, nn = frame_tree.query(self.X[frame_rows], k=2)
        other = frame_rows[nn[:, 1]]
        for g, v in self.appearance.items():
            w = appearance_weights(
                v[src_rows[unambiguous]] - v[dst_rows[unambiguous]], v[frame_rows] - v[other]
            )
            self._weight_sums[g] = self._weight_sums.get(g, 0.0) + w
        self._weight_count += 1
        self.weights = {g: total / self._weight_count for g, total in self._weight_sums.items()}


@dataclass(frozen=True)
class _Settings:
    """The linker's resolved settings (distances in the metric units)."""

    search_range: float
    gate: float
    memory: int
    cost_cutoff: float
    assignment: str
    flow_radius: float
    flow_window: int
    flow_order: int


class _Vectors:
    """Flow vectors (start row, end row, cost) of the most recent frame pairs."""

    def __init__(self, X: np.ndarray, keep: int):
        self.X = X
        self.keep = max(int(keep), 1)
        self.pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def push(self, src, dst, cost) -> None:
        self.pairs.append((src, dst, cost))
        del self.pairs[: -self.keep]

    def field(self, extra=None) -> FlowField | None:
        parts = [p for p in self.pairs + ([extra] if extra is not None else []) if len(p[0])]
        if not parts:
            return None
        src, dst, cost = (np.concatenate(c) for c in zip(*parts))
        return FlowField(self.X[src], self.X[dst] - self.X[src], cost, groups=src)


def _predict(field: FlowField | None, positions, gaps, settings: _Settings, exclude=None):
    """Positions moved by the flow, one step per frame of gap. The flow is
    shrunk where it cannot be told from zero, so pure diffusion predicts no
    motion rather than its neighbours' noise."""
    pred = positions.copy()
    if field is None or len(field) == 0 or len(gaps) == 0:
        return pred
    for step in range(1, int(gaps.max()) + 1):
        moving = gaps >= step
        ex = None if exclude is None or step > 1 else exclude[moving]
        pred[moving] += field.at(
            pred[moving], settings.flow_radius, exclude=ex, order=settings.flow_order, shrink=True
        )
    return pred


def _consensus_field(src_pos, src_rows, dst_pos, dst_tree, settings: _Settings) -> FlowField | None:
    """A first flow estimate with no prior: for each feature, the candidate
    displacement (to any feature within ``gate``) that most neighbours within
    ``flow_radius`` share, to within half the search range.

    Wrong candidates scatter while the true displacements of a region agree,
    so the local consensus finds a flow that moves particles further than
    their spacing, where the cheapest match would not: the relaxation idea
    of particle-tracking velocimetry (Barnard & Thompson 1980, Comput.
    Graph. Image Process. 14:333; Ohmi & Li 2000, Meas. Sci. Technol.
    11:603). The counting is one range query in (position / radius,
    displacement / tolerance) space.
    """
    si, dj, dist = candidate_pairs(src_pos, None, settings.gate, target_tree=dst_tree)
    if len(si) == 0:
        return None
    disp = dst_pos[dj] - src_pos[si]
    tolerance = settings.search_range / 2.0
    points = np.hstack([src_pos[si] / settings.flow_radius, disp / tolerance])
    support = cKDTree(points).query_ball_point(points, r=1.0, return_length=True) - 1
    order = np.lexsort((dist, -support, si))  # per source: most support, then nearest
    first = np.ones(len(order), dtype=bool)
    first[1:] = si[order][1:] != si[order][:-1]
    best = order[first]
    best = best[support[best] > 0]
    if len(best) == 0:
        return None
    cost = -np.log(support[best] / support[best].max())  # weight ∝ support
    return FlowField(src_pos[si[best]], disp[best], cost, groups=src_rows[si[best]])


def _gap_scaled_candidates(pred, gaps, search_range: float, dst_tree: cKDTree):
    """Candidates within ``search_range`` × √gap of each prediction: diffusion
    spreads as the square root of time, so a track missing for a few frames
    is searched on the scale of its expected excursion. Distances are
    returned as measured, so a gapped candidate costs more than a continuing
    one at the same residual per frame."""
    parts = []
    for gap in np.unique(gaps):
        rows = np.flatnonzero(gaps == gap)
        si, dj, dist = candidate_pairs(pred[rows], None, search_range * math.sqrt(float(gap)), target_tree=dst_tree)
        parts.append((rows[si], dj, dist))
    if not parts:
        return np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0)
    return tuple(np.concatenate(c) for c in zip(*parts))


def _link_pass(problem: _Problem, frame_order, settings: _Settings):
    """One pass over the frames in ``frame_order``; returns the links as
    (source row, target row, cost) arrays, the source earlier in the pass."""
    X = problem.X
    tail_row = problem.rows_of[int(frame_order[0])].copy()
    tail_frame = np.full(len(tail_row), frame_order[0], dtype=np.int64)
    recent = _Vectors(X, min(settings.flow_window, MAX_PREDICTOR_PAIRS))
    out_src, out_dst, out_cost = [], [], []
    for f in frame_order[1:]:
        f = int(f)
        dst = problem.rows_of[f]
        gaps = np.abs(f - tail_frame)
        alive = gaps <= settings.memory + 1
        tail_row, tail_frame, gaps = tail_row[alive], tail_frame[alive], gaps[alive]
        dst_tree = cKDTree(X[dst])
        src_pos = X[tail_row]

        # Rounds of match → flow → re-match, on the tracks seen last frame.
        consecutive = np.flatnonzero(gaps == 1)
        cons_rows = tail_row[consecutive]
        field = recent.field()
        if field is None:
            field = _consensus_field(src_pos[consecutive], cons_rows, X[dst], dst_tree, settings)
        previous = None
        pred_cons = None  # the consecutive tracks' predictions by `field`
        for _ in range(MAX_FLOW_ROUNDS):
            pred_cons = _predict(field, src_pos[consecutive], gaps[consecutive], settings, cons_rows)
            si, dj, dist = candidate_pairs(pred_cons, None, settings.gate, target_tree=dst_tree)
            if len(si) == 0:
                break
            src_rows, dst_rows = cons_rows[si], dst[dj]
            cost = problem.costs(src_rows, dst_rows, dist)
            _, as_flow = assign(
                si, dj, cost, len(consecutive), len(dst),
                method=settings.assignment, cost_cutoff=settings.cost_cutoff,
            )
            key = (src_rows[as_flow], dst_rows[as_flow])
            if previous is not None and all(np.array_equal(a, b) for a, b in zip(key, previous)):
                break
            previous = key
            field = recent.field((key[0], key[1], cost[as_flow]))
            pred_cons = None

        # Links: every live track (gaps too) to the features of this frame,
        # in one assignment; a gapped track's larger prediction error makes
        # its candidates dearer, so continuing tracks are preferred.
        if pred_cons is None:
            pred_cons = _predict(field, src_pos[consecutive], gaps[consecutive], settings, cons_rows)
        pred = src_pos.copy()
        pred[consecutive] = pred_cons
        gapped = np.flatnonzero(gaps > 1)
        pred[gapped] = _predict(field, src_pos[gapped], gaps[gapped], settings)
        si, dj, dist = _gap_scaled_candidates(pred, gaps, settings.search_range, dst_tree)
        linked_dst = np.zeros(len(dst), dtype=bool)
        if len(si):
            src_rows, dst_rows = tail_row[si], dst[dj]
            cost = problem.costs(src_rows, dst_rows, dist)
            links, as_flow = assign(
                si, dj, cost, len(tail_row), len(dst),
                method=settings.assignment, cost_cutoff=settings.cost_cutoff,
            )
            out_src.append(src_rows[links])
            out_dst.append(dst_rows[links])
            out_cost.append(cost[links])
            linked_dst[dj[links]] = True
            step = as_flow & (gaps[si] == 1)
            recent.push(src_rows[step], dst_rows[step], cost[step])
            n_src = np.bincount(si, minlength=len(tail_row))
            n_dst = np.bincount(dj, minlength=len(dst))
            unambiguous = (n_src[si[links]] == 1) & (n_dst[dj[links]] == 1)
            problem.learn_weights(src_rows[links], dst_rows[links], unambiguous, dst, dst_tree)
            # the linked tracks' tails move to this frame
            tail_row = tail_row.copy()
            tail_row[si[links]] = dst_rows[links]
            tail_frame = tail_frame.copy()
            tail_frame[si[links]] = f
        new = dst[~linked_dst]
        tail_row = np.concatenate([tail_row, new])
        tail_frame = np.concatenate([tail_frame, np.full(len(new), f, dtype=np.int64)])
    if not out_src:
        empty = np.empty(0, np.intp)
        return empty, empty, np.empty(0)
    return np.concatenate(out_src), np.concatenate(out_dst), np.concatenate(out_cost)


def _merge_backward(fwd, bwd, n: int):
    """Forward links, plus the backward links whose two ends the forward pass
    left free. Backward links come as (later row, earlier row, cost)."""
    src, dst, cost = fwd
    has_next = np.zeros(n, dtype=bool)
    has_prev = np.zeros(n, dtype=bool)
    has_next[src] = True
    has_prev[dst] = True
    b_src, b_dst, b_cost = bwd[1], bwd[0], bwd[2]  # turned forward in time
    free = ~has_next[b_src] & ~has_prev[b_dst]
    log.debug("link (flow): the backward pass adds %d of its %d links", int(free.sum()), len(b_src))
    return (
        np.concatenate([src, b_src[free]]),
        np.concatenate([dst, b_dst[free]]),
        np.concatenate([cost, b_cost[free]]),
    )


def _auto_flow_radius(problem: _Problem, search_range: float) -> float:
    """5 × the median nearest-neighbour distance (about 20 features within
    reach per frame), from up to five frames; never below the search range."""
    nn = []
    frames = problem.unique_frames
    for f in frames[np.linspace(0, len(frames) - 1, min(5, len(frames))).astype(int)]:
        rows = problem.rows_of[int(f)]
        if len(rows) >= 2:
            d, _ = cKDTree(problem.X[rows]).query(problem.X[rows], k=2)
            nn.append(d[:, 1])
    if not nn:
        return 10.0 * search_range
    return max(5.0 * float(np.median(np.concatenate(nn))), float(search_range))


def _flow_per_row(problem: _Problem, vectors, particle: np.ndarray, settings: _Settings) -> np.ndarray:
    """Flow at each feature (metric units per frame), from the one-frame
    steps of the *other* tracks within ``flow_window`` frames either side
    (see ``ROW_FLOW_NEIGHBOURS``)."""
    src, dst, cost = vectors
    X = problem.X
    out = np.zeros_like(X)
    if len(src) == 0:
        return out
    window = settings.flow_window
    vframe = problem.frame[src]
    order = np.argsort(vframe, kind="stable")
    src, dst, cost, vframe = src[order], dst[order], cost[order], vframe[order]
    for f in problem.unique_frames:
        a = np.searchsorted(vframe, f - window, side="left")
        b = np.searchsorted(vframe, f + window, side="right")
        if a == b:
            continue
        field = FlowField(
            X[src[a:b]], X[dst[a:b]] - X[src[a:b]], cost[a:b], groups=particle[src[a:b]],
            max_neighbours=ROW_FLOW_NEIGHBOURS,
        )
        rows = problem.rows_of[int(f)]
        out[rows] = field.at(
            X[rows], settings.flow_radius, exclude=particle[rows], order=settings.flow_order,
            weighting=ROW_FLOW_WEIGHTING,
        )
    return out


def compute_appearance(
    features: pd.DataFrame, frames_or_movie, *, window=None, compute=None, threads=None
) -> pd.DataFrame:
    """``features`` with the appearance columns added, rows in the same order.

    ``frames_or_movie`` is an array of frames indexed by frame number, or a
    movie store (:class:`pipeline.io.Movie` or its path), read in parallel
    per time chunk through :func:`pipeline.compute.map_frame_chunks` on
    ``threads`` local workers (the cores a job holds) or the scheduler that
    ``compute`` names.
    """
    ndim = 3 if "z" in features.columns else 2
    tagged = features.assign(_feature_order=np.arange(len(features)))
    last = int(features["frame"].max())
    if isinstance(frames_or_movie, np.ndarray):
        frames = frames_or_movie
        if frames.ndim != ndim + 1:
            raise ValueError(f"frames have shape {frames.shape}, but the features are {ndim}D")
        if last >= len(frames):
            raise ValueError(f"features refer to frame {last}, but only {len(frames)} frames were given")
        result = appearance_features(frames, 0, tagged, window=window)
    else:
        from ..compute import map_frame_chunks
        from ..io.movie import Movie, open_movie

        movie = frames_or_movie if isinstance(frames_or_movie, Movie) else open_movie(frames_or_movie)
        if movie.ndim != ndim:
            raise ValueError(f"movie {movie.path} is {movie.ndim}D, but the features are {ndim}D")
        if last >= len(movie):
            raise ValueError(f"features refer to frame {last}, but movie {movie.path} has {len(movie)} frames")
        frame = tagged["frame"].to_numpy()

        def rows_in(start: int, stop: int):
            # only this range's rows travel to its task; no rows, no task
            rows = tagged[(frame >= start) & (frame < stop)]
            return {"features": rows} if len(rows) else None

        result = map_frame_chunks(
            appearance_features, movie, compute=compute, threads=threads, chunk_kwargs=rows_in, window=window
        )
    if len(result) != len(features):
        raise ValueError(f"appearance features found for {len(result)} of {len(features)} features")
    result = result.sort_values("_feature_order", kind="stable")
    out = features.copy()
    for col in appearance_columns(ndim):
        out[col] = result[col].to_numpy()
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_features(features: pd.DataFrame) -> list[str]:
    if not isinstance(features, pd.DataFrame):
        raise ValueError(f"features must be a DataFrame, got {type(features).__name__}")
    if len(features) == 0:
        raise ValueError("link (flow): the features table is empty; nothing to link")
    pos = ["z", "y", "x"] if "z" in features.columns else ["y", "x"]
    missing = [c for c in ("frame", *pos) if c not in features.columns]
    if missing:
        raise ValueError(f"link (flow): the features lack column(s) {missing}")
    coords = features[pos].to_numpy(dtype=float)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        raise ValueError(
            f"link (flow): the feature at index {features.index[np.flatnonzero(bad)[0]]} has a non-finite position"
        )
    frame = features["frame"].to_numpy(dtype=float)
    if not np.isfinite(frame).all() or np.any(frame != np.round(frame)) or np.any(frame < 0):
        raise ValueError("link (flow): the 'frame' column must hold whole frame numbers >= 0")
    return pos


def link_flow(
    features: pd.DataFrame,
    frames_or_movie=None,
    *,
    search_range: float,
    memory: int = 0,
    gate: float | None = _FLOW["gate"],
    cost_cutoff: float | None = _FLOW["cost_cutoff"],
    assignment: str = _FLOW["assignment"],
    flow_radius: float | None = _FLOW["flow_radius"],
    flow_window: int = _FLOW["flow_window"],
    flow_order: int = _FLOW["flow_order"],
    backward: bool = _FLOW["backward"],
    pixel_size_um=None,
    appearance: bool = _FLOW["appearance"],
    window=_FLOW["window"],
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Link features into tracks, predicting each step with the learned flow.

    Parameters
    ----------
    features : DataFrame
        ``frame, [z,] y, x`` in pixels (trackpy's convention), plus any other
        columns (kept). Appearance columns already present
        (:func:`.appearance.appearance_columns`) are used as they are.
    frames_or_movie : array (t, [z,] y, x), Movie or path, optional
        The images, for the appearance features; needed when ``appearance``
        is true and the features lack the appearance columns.
    search_range : float
        Largest distance between a feature's flow-predicted position and its
        partner: pixels, or µm when ``pixel_size_um`` is given.
    memory : int
        Frames a particle may vanish for and still be linked (gap closing).
    gate : float, optional
        Candidate radius around the predicted position while the flow is
        being learned (units of ``search_range``); it must reach past the
        largest flow step not yet known, plus the diffusion. Default
        2 × ``search_range``.
    cost_cutoff : float or None
        Pairs whose cost (a sum of z-scores) is at or above it are never
        linked; None for no cut-off.
    assignment : {"hungarian", "mutual_cheapest"}
        One-to-one minimum-cost assignment, or Nellie's mutual-cheapest rule.
    flow_radius : float, optional
        Radius R of the flow interpolation (units of ``search_range``).
        Default 5 × the median nearest-neighbour distance.
    flow_window : int
        Frames over which the flow is taken as steady: the per-row flow
        columns pool the other tracks' steps within this many frames either
        side (their noise must stay well below the diffusion the size stage
        measures), the predictor the matches of up to this many (at most
        ``MAX_PREDICTOR_PAIRS``) previous frame pairs.
    flow_order : {0, 1}
        0: the exp(−cost)/distance-weighted mean of the vectors (Nellie's
        interpolation); 1: a linear fit with the same weights, unbiased for
        shear, rotation and at the edges of the field of view (default).
    backward : bool
        Also link from the last frame to the first and add the links the
        forward pass left open.
    pixel_size_um : float or sequence, optional
        Pixel size per axis ((z,) y, x): distances are then measured in µm,
        so anisotropic voxels are handled.
    appearance : bool
        Add the intensity and Hu-moment terms to the cost.
    window : int or tuple, optional
        Appearance window half-width in pixels (default from each feature's
        ``size``).
    compute, threads
        The ``compute`` section and the local workers for reading a movie's
        frames for the appearance features
        (:func:`pipeline.compute.map_frame_chunks`); a job passes the cores
        it holds, else ``compute.threads`` or every core is used.

    Returns
    -------
    tracks : DataFrame
        The features sorted by frame (original index kept), plus
        ``particle`` (int64, numbered from 0 in order of first appearance),
        ``link_cost`` (cost of the link into the row; NaN where a track
        starts) and ``flow_dy, flow_dx`` (``flow_dz``): the flow at the
        feature, px/frame, fitted to the other tracks' steps within
        ``flow_radius`` and ``flow_window`` frames either side (equal
        weights, so that little of their noise reaches the size stage).
    flow : DataFrame
        One row per link between consecutive frames (the matches):
        ``frame, [z,] y, x`` of its start (px), ``[dz,] dy, dx`` (px/frame),
        ``cost`` and ``particle``.

    References
    ----------
    Lefebvre, A. E. Y. T. et al. (2025), Nellie: automated organelle
    segmentation, tracking and hierarchical feature extraction in 2D/3D
    live-cell microscopy, Nature Methods.
    Crocker, J. C. & Grier, D. G. (1996), J. Colloid Interface Sci. 179:298.
    """
    pos = _check_features(features)
    ndim = len(pos)
    check_section(
        "link",
        {"memory": memory, "flow": dict(
            gate=gate, cost_cutoff=cost_cutoff, assignment=assignment, flow_radius=flow_radius,
            flow_window=flow_window, flow_order=flow_order, backward=backward, appearance=appearance,
            window=window,
        )},
    )
    # what the schema cannot say: one number (it allows one per axis for
    # trackpy), and finite (YAML's .inf and .nan are numbers to it)
    if not (_is_number(search_range) and 0 < float(search_range) < math.inf):
        raise ValueError(f"link.search_range must be one positive number for the flow linker, got {search_range!r}")
    for key, value in (("gate", gate), ("flow_radius", flow_radius)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"link.flow.{key} must be finite (or null for the default), got {value!r}")
    if cost_cutoff is not None and math.isnan(cost_cutoff):
        raise ValueError(f"link.flow.cost_cutoff must be a number (or null for none), got {cost_cutoff!r}")
    scale = np.ones(ndim)
    if pixel_size_um is not None:
        scale = np.broadcast_to(np.asarray(pixel_size_um, dtype=float), (ndim,)).copy()
        if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"pixel_size_um must be positive per axis, got {pixel_size_um!r}")

    order = np.argsort(features["frame"].to_numpy(), kind="stable")
    table = features.iloc[order].copy()
    table["frame"] = table["frame"].astype(np.int64)

    groups: dict[str, np.ndarray] = {}
    if appearance:
        if not all(c in table.columns for c in appearance_columns(ndim)):
            if frames_or_movie is None:
                raise ValueError(
                    "link.flow.appearance is true but the features have no appearance columns and no "
                    "frames or movie were given (pass the movie, or set link.flow.appearance: false)"
                )
            table = compute_appearance(table, frames_or_movie, window=window, compute=compute, threads=threads)
        groups = {
            "intensity": table[list(INTENSITY_COLUMNS)].to_numpy(dtype=float),
            "hu": table[hu_columns(ndim)].to_numpy(dtype=float),
        }

    problem = _Problem(table[pos].to_numpy(dtype=float) * scale, table["frame"].to_numpy(), groups)
    search_range = float(search_range)
    settings = _Settings(
        search_range=search_range,
        gate=2.0 * search_range if gate is None else float(gate),
        memory=int(memory),
        cost_cutoff=math.inf if cost_cutoff is None else float(cost_cutoff),
        assignment=assignment,
        flow_radius=_auto_flow_radius(problem, search_range) if flow_radius is None else float(flow_radius),
        flow_window=int(flow_window),
        flow_order=int(flow_order),
    )
    links = _link_pass(problem, problem.unique_frames, settings)
    if backward and len(problem.unique_frames) > 1:
        links = _merge_backward(links, _link_pass(problem, problem.unique_frames[::-1], settings), len(table))

    # Tracks are the chains of links: connected components of the link graph.
    n = len(table)
    src, dst, cost = links
    graph = sp.coo_array((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    _, first_row = np.unique(label, return_index=True)
    rank = np.empty(len(first_row), dtype=np.int64)
    rank[np.argsort(first_row, kind="stable")] = np.arange(len(first_row))
    particle = rank[label]
    link_cost = np.full(n, np.nan)
    link_cost[dst] = cost

    steps = problem.frame[dst] - problem.frame[src] == 1
    vectors = (src[steps], dst[steps], cost[steps])
    row_flow = _flow_per_row(problem, vectors, particle, settings) / scale

    table["particle"] = particle
    table["link_cost"] = link_cost
    for axis, name in enumerate(row_flow_columns(pos)):
        table[name] = row_flow[:, axis]

    vsrc, vdst, vcost = vectors
    pos_cols, disp_cols = flow_columns(ndim)
    start = table[pos].to_numpy(dtype=float)
    flow = pd.DataFrame({"frame": problem.frame[vsrc]})
    for axis, c in enumerate(pos_cols):
        flow[c] = start[vsrc, axis]
    for axis, c in enumerate(disp_cols):
        flow[c] = start[vdst, axis] - start[vsrc, axis]
    flow["cost"] = vcost
    flow["particle"] = particle[vsrc]
    flow = flow.sort_values(["frame", "particle"], kind="stable").reset_index(drop=True)

    table.attrs["flow_radius"] = settings.flow_radius
    table.attrs["gate"] = settings.gate
    return table, flow


def link_tracks(
    features: pd.DataFrame,
    *,
    search_range,
    memory: int = 0,
    pixel_size_um=None,
    movie=None,
    adaptive_stop=None,
    adaptive_step: float = _DEFAULTS["adaptive_step"],
    link_strategy: str = _DEFAULTS["link_strategy"],
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    **flow_params: Any,
) -> pd.DataFrame:
    """:func:`link_flow` shaped for the link stage's dispatcher
    (:func:`pipeline.link.link`, ``link.method: flow``).

    Parameters
    ----------
    features : DataFrame
        ``frame, [z,] y, x`` in pixels, plus any other columns.
    search_range : float or sequence of float
        One value (a sequence of equal values is taken as one).
    memory, pixel_size_um
        As for :func:`link_flow`.
    movie : path or Movie, optional
        The run's movie, for the appearance features.
    adaptive_stop, adaptive_step, link_strategy
        trackpy's keys, accepted only at their defaults (the stage passes
        every linker the same ``link`` keys).
    compute, threads
        The ``compute`` section and the cores the job holds, for the
        appearance step (:func:`compute_appearance`).
    **flow_params
        The ``link.flow`` keys (link.schema.yaml): keyword arguments of
        :func:`link_flow`.

    Returns
    -------
    DataFrame
        Every feature plus ``particle``, ``link_cost`` and the flow columns
        (:func:`link_flow`'s tracks); nothing is removed. The flow table is
        what :func:`pipeline.link.nearest.step_vectors` rebuilds from
        ``link_cost``: the same vectors :func:`link_flow` returns.
    """
    # trackpy-only keys: harmless at their defaults, an error otherwise
    for key, value in (
        ("adaptive_stop", adaptive_stop),
        ("adaptive_step", adaptive_step),
        ("link_strategy", link_strategy),
    ):
        if value != _DEFAULTS[key]:
            raise ValueError(f"link.{key} applies to method 'nearest' only; remove it for method 'flow'")
    if isinstance(search_range, (list, tuple, np.ndarray)):
        values = np.unique(np.asarray(search_range, dtype=float))
        if len(values) != 1:
            raise ValueError(
                "link.search_range must be one number for method 'flow'; for anisotropic voxels "
                "set link.search_range_um (distances are then in µm)"
            )
        search_range = float(values[0])
    tracks, _ = link_flow(
        features,
        movie,
        search_range=search_range,
        memory=memory,
        pixel_size_um=pixel_size_um,
        compute=compute,
        threads=threads,
        **flow_params,
    )
    return tracks
