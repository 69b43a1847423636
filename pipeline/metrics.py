"""Tracking metrics of the ISBI 2012 particle-tracking challenge, and the
detection metric of the ENS "Colloids: how small can we go?" challenge
(:func:`detection_ap`, science.md §5).

Chenouard, N. et al. (2014), "Objective comparison of particle tracking
methods", Nature Methods 11:281–289.

Ground-truth tracks X and estimated tracks Y are paired one-to-one by the
assignment that minimises the total gated distance, each ground-truth track
taking either an estimated track or a dummy. The gated distance between two
tracks sums, over the frames where either exists, min(‖θ(t) − θ'(t)‖₂, ε),
with ε wherever only one of them exists; a dummy track is absent everywhere,
so pairing track θ with it costs ε·|θ|.

- α = 1 − d(X, Y) / d(X, ∅)
- β = (d(X, ∅) − d(X, Y)) / (d(X, ∅) + d(Ȳ, ∅)), Ȳ the estimated tracks left
  unpaired (spurious)
- JSC = TP / (TP + FN + FP) over detections: TP are the detections of paired
  tracks closer than ε in the same frame
- JSCθ = the same over whole tracks: TP the ground-truth tracks paired with an
  estimated track, FN those paired with a dummy, FP the spurious tracks
- RMSE over the TP detections
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

__all__ = ["isbi_scores", "greedy_match", "detection_ap"]


def _validate(df: pd.DataFrame, name: str, pos_columns: Sequence[str], id_column: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{name} must be a DataFrame, got {type(df).__name__}")
    missing = [c for c in ("frame", *pos_columns, id_column) if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}")
    coords = df[list(pos_columns)].to_numpy(dtype=float)
    if not np.isfinite(coords).all():
        raise ValueError(f"{name} has non-finite positions")
    dup = df.duplicated(["frame", id_column])
    if dup.any():
        i = df.index[np.flatnonzero(dup.to_numpy())[0]]
        raise ValueError(
            f"{name}: track {df.at[i, id_column]!r} has two detections in frame {df.at[i, 'frame']}"
        )


def _detection_pairs(truth, tracks, pos_columns, gate):
    """All (truth row, estimate row, distance) in the same frame closer than
    the gate (KD-tree per frame)."""
    ti_all, ei_all, d_all = [], [], []
    t_frames = truth["frame"].to_numpy()
    e_frames = tracks["frame"].to_numpy()
    t_pos = truth[list(pos_columns)].to_numpy(dtype=float)
    e_pos = tracks[list(pos_columns)].to_numpy(dtype=float)
    t_order = np.argsort(t_frames, kind="stable")
    e_order = np.argsort(e_frames, kind="stable")
    t_sorted, e_sorted = t_frames[t_order], e_frames[e_order]
    for f in np.intersect1d(t_sorted, e_sorted):
        ta, tb = np.searchsorted(t_sorted, f), np.searchsorted(t_sorted, f, side="right")
        ea, eb = np.searchsorted(e_sorted, f), np.searchsorted(e_sorted, f, side="right")
        t_rows, e_rows = t_order[ta:tb], e_order[ea:eb]
        pairs = cKDTree(t_pos[t_rows]).sparse_distance_matrix(
            cKDTree(e_pos[e_rows]), gate, output_type="ndarray"
        )
        near = pairs["v"] < gate
        ti_all.append(t_rows[pairs["i"][near]])
        ei_all.append(e_rows[pairs["j"][near]])
        d_all.append(pairs["v"][near])
    if not ti_all:
        return np.empty(0, int), np.empty(0, int), np.empty(0)
    return np.concatenate(ti_all), np.concatenate(ei_all), np.concatenate(d_all)


def isbi_scores(
    truth: pd.DataFrame,
    tracks: pd.DataFrame,
    *,
    gate: float = 5.0,
    pos_columns: Sequence[str] | None = None,
    id_column: str = "particle",
) -> dict:
    """ISBI 2012 particle-tracking scores of ``tracks`` against ``truth``.

    Parameters
    ----------
    truth, tracks : DataFrame
        ``frame``, the position columns and ``particle`` (track id), one row
        per detection; a track has at most one detection per frame.
    gate : float
        ε, the distance beyond which a detection counts as missed (same units
        as the positions; 5 px in the challenge).
    pos_columns : sequence of str, optional
        Default ``['z', 'y', 'x']`` when truth has ``z``, else ``['y', 'x']``.
    id_column : str
        Track id column in both tables.

    Returns
    -------
    dict
        ``alpha, beta, jsc, jsc_theta, rmse`` and the counts behind them:
        ``tp, fn, fp`` (detections), ``tracks_tp, tracks_fn, tracks_fp``,
        ``n_truth_tracks, n_estimated_tracks``, ``d_xy, d_x0, d_spurious``.

    References
    ----------
    Chenouard, N. et al. (2014), Nature Methods 11:281.
    """
    if pos_columns is None:
        pos_columns = ["z", "y", "x"] if "z" in truth.columns else ["y", "x"]
    pos_columns = list(pos_columns)
    if not (gate > 0 and math.isfinite(gate)):
        raise ValueError(f"gate must be a positive number, got {gate!r}")
    _validate(truth, "truth", pos_columns, id_column)
    _validate(tracks, "tracks", pos_columns, id_column)
    truth = truth.reset_index(drop=True)
    tracks = tracks.reset_index(drop=True)
    eps = float(gate)

    t_ids, t_track = np.unique(truth[id_column].to_numpy(), return_inverse=True)
    e_ids, e_track = np.unique(tracks[id_column].to_numpy(), return_inverse=True)
    K, L = len(t_ids), len(e_ids)
    t_len = np.bincount(t_track, minlength=K).astype(float)
    e_len = np.bincount(e_track, minlength=L).astype(float)

    # For a track pair (k, l), with c_kl co-temporal detections of which the
    # near ones (< ε) are at distances d:
    #   d(θ_k, θ'_l) = ε(|θ_k| + |θ'_l|) − 2ε c_kl + Σ_near d + ε (c_kl − n_near)
    # Only pairs with a near detection can beat the dummy (ε|θ_k|).
    ti, ei, dist = _detection_pairs(truth, tracks, pos_columns, eps)
    pk, pl = t_track[ti], e_track[ei]
    pair_id = pk.astype(np.int64) * L + pl
    uniq, inverse = np.unique(pair_id, return_inverse=True)
    cand_k, cand_l = uniq // max(L, 1), uniq % max(L, 1)
    near_sum = np.bincount(inverse, weights=dist, minlength=len(uniq))
    near_n = np.bincount(inverse, minlength=len(uniq)).astype(float)
    co = _cotemporal_counts(truth["frame"].to_numpy(), t_track, tracks["frame"].to_numpy(), e_track, cand_k, cand_l)
    d_pair = eps * (t_len[cand_k] + e_len[cand_l]) - 2 * eps * co + near_sum + eps * (co - near_n)
    dummy = eps * t_len
    better = d_pair < dummy[cand_k]
    cand_k, cand_l, d_pair = cand_k[better], cand_l[better], d_pair[better]
    near_rows = np.flatnonzero(better[inverse])  # detection pairs of useful track pairs

    paired_l = _pair_tracks(cand_k, cand_l, d_pair, dummy, K, L)  # per truth track: l or -1
    is_paired = paired_l >= 0
    d_x0 = float(dummy.sum())
    chosen = {(k, l) for k, l in zip(np.flatnonzero(is_paired), paired_l[is_paired])}
    pair_cost = {(k, l): c for k, l, c in zip(cand_k, cand_l, d_pair)}
    d_xy = float(sum(pair_cost[p] for p in chosen) + dummy[~is_paired].sum())
    spurious = np.ones(L, dtype=bool)
    spurious[paired_l[is_paired]] = False
    d_spurious = float(eps * e_len[spurious].sum())

    # Detections: TP are near detections of the chosen pairs. Within a pair
    # both tracks have one detection per frame, so these are one-to-one.
    sel = near_rows[[(int(pk[r]), int(pl[r])) in chosen for r in near_rows]] if chosen else np.empty(0, int)
    tp = len(sel)
    fn = len(truth) - tp
    fp = len(tracks) - tp
    tracks_tp = int(is_paired.sum())
    alpha = 1.0 - d_xy / d_x0 if d_x0 > 0 else float("nan")
    denom = d_x0 + d_spurious
    beta = (d_x0 - d_xy) / denom if denom > 0 else float("nan")
    return {
        "alpha": float(alpha),
        "beta": float(beta),
        "jsc": tp / (tp + fn + fp) if (tp + fn + fp) else float("nan"),
        "jsc_theta": tracks_tp / (K + L - tracks_tp) if (K + L) else float("nan"),
        "rmse": float(np.sqrt(np.mean(dist[sel] ** 2))) if tp else float("nan"),
        "tp": int(tp),
        "fn": int(fn),
        "fp": int(fp),
        "tracks_tp": tracks_tp,
        "tracks_fn": int(K - tracks_tp),
        "tracks_fp": int(L - tracks_tp),
        "n_truth_tracks": int(K),
        "n_estimated_tracks": int(L),
        "d_xy": d_xy,
        "d_x0": d_x0,
        "d_spurious": d_spurious,
        "gate": eps,
    }


def _cotemporal_counts(t_frames, t_track, e_frames, e_track, cand_k, cand_l) -> np.ndarray:
    """Frames in which both tracks of each candidate pair have a detection."""
    if len(cand_k) == 0:
        return np.empty(0)
    t_sets = pd.Series(t_frames).groupby(t_track).apply(lambda s: np.sort(s.to_numpy()))
    e_sets = pd.Series(e_frames).groupby(e_track).apply(lambda s: np.sort(s.to_numpy()))
    return np.array(
        [len(np.intersect1d(t_sets.iloc[k], e_sets.iloc[l], assume_unique=True)) for k, l in zip(cand_k, cand_l)],
        dtype=float,
    )


def _pair_tracks(cand_k, cand_l, d_pair, dummy, K: int, L: int) -> np.ndarray:
    """Minimum total distance one-to-one pairing of truth tracks with
    estimated tracks or dummies (Hungarian on the sparse candidate graph).

    Rows: the K truth tracks, then L dummy rows for the estimated tracks;
    columns: the L estimated tracks, then K dummy columns. Truth k takes its
    own dummy at ε|θ_k|; an estimated track left unpaired takes its own dummy
    row at no cost; each candidate (k, l) has a mirror edge between l's dummy
    row and k's dummy column so that any choice completes to a full matching.
    """
    paired = np.full(K, -1, dtype=np.int64)
    if len(cand_k) == 0 or K == 0:
        return paired
    shift = 1.0  # the solver ignores zero weights; every full matching has K + L edges
    rows = np.concatenate([cand_k, np.arange(K), K + cand_l, K + np.arange(L)])
    cols = np.concatenate([cand_l, L + np.arange(K), L + cand_k, np.arange(L)])
    w = np.concatenate([d_pair, dummy, np.zeros(len(cand_k)), np.zeros(L)]) + shift
    graph = sp.csr_array((w, (rows, cols)), shape=(K + L, L + K))
    _, col_of_row = min_weight_full_bipartite_matching(graph)
    chosen = col_of_row[:K]
    real = chosen < L
    paired[real] = chosen[real]
    return paired


# ---------------------------------------------------------------------------
# detection: the ENS dense-colloid challenge's average precision
# ---------------------------------------------------------------------------
def greedy_match(truth: np.ndarray, found: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of truth and found positions closer than ``max_distance``,
    accepted greedily in order of increasing distance, each used once.

    Parameters
    ----------
    truth, found : arrays (n, ndim), (m, ndim)
        Positions (any unit, the same for both).
    max_distance : float
        Pairs must be strictly closer than this.

    Returns
    -------
    (i, j, distance) : arrays
        Rows of ``truth`` and ``found`` paired, and their distances.
    """
    truth = np.asarray(truth, dtype=float)
    found = np.asarray(found, dtype=float)
    if len(truth) == 0 or len(found) == 0 or not max_distance > 0:
        return np.empty(0, np.intp), np.empty(0, np.intp), np.empty(0)
    pairs = cKDTree(truth).sparse_distance_matrix(cKDTree(found), max_distance, output_type="ndarray")
    pairs = pairs[pairs["v"] < max_distance]
    order = np.argsort(pairs["v"], kind="stable")
    used_t = np.zeros(len(truth), bool)
    used_f = np.zeros(len(found), bool)
    keep = []
    for k in order:
        i, j = pairs["i"][k], pairs["j"][k]
        if not used_t[i] and not used_f[j]:
            used_t[i] = used_f[j] = True
            keep.append(k)
    keep = np.asarray(keep, dtype=np.intp)
    return pairs["i"][keep].astype(np.intp), pairs["j"][keep].astype(np.intp), pairs["v"][keep].astype(float)


def detection_ap(
    truth: np.ndarray,
    found: np.ndarray,
    *,
    diameter: float,
    shape: Sequence[float],
    thresholds: Sequence[float] | None = None,
) -> dict:
    """Average precision of detected centres, as the ENS "Colloids: how small
    can we go?" challenge scores it (Royall group, 2023; science.md §5).

    Truths and detections closer than D/2 to any face of the volume are
    removed first (D = ``diameter``). For each threshold t a truth–detection
    pair is a candidate when 1 − d/D > t (d their distance); candidates are
    accepted greedily by increasing distance (:func:`greedy_match`), TP are
    the accepted pairs, FP the unpaired detections, FN the unpaired truths.
    AP integrates precision over recall across the thresholds: sorted by
    recall, AP = Σ_k (R_k − R_{k−1}) P_k from R = 0 (a step integral, so
    that when every threshold gives the same counts AP = precision × recall).

    Parameters
    ----------
    truth, found : arrays (n, ndim), (m, ndim)
        Centres in pixels, axes in the order of ``shape``.
    diameter : float
        The particles' diameter D, pixels.
    shape : sequence of float
        The volume's extent per axis, pixels.
    thresholds : sequence of float, optional
        Default ``linspace(0, 1, 10)``.

    Returns
    -------
    dict
        ``ap``; ``precision``, ``recall`` (lists, one per threshold);
        ``precision_0_5``, ``recall_0_5`` (at t = 0.5, i.e. d < D/2);
        ``n_truth``, ``n_found`` (after border removal).
    """
    thresholds = np.linspace(0, 1, 10) if thresholds is None else np.asarray(thresholds, dtype=float)
    shape = np.asarray(shape, dtype=float)
    margin = diameter / 2.0

    def inner(points):
        points = np.asarray(points, dtype=float).reshape(len(points), len(shape))
        ok = np.all((points >= margin) & (points <= shape - 1 - margin), axis=1) if len(points) else np.zeros(0, bool)
        return points[ok]

    t, f = inner(truth), inner(found)

    def counts(threshold):
        _, _, d = greedy_match(t, f, (1.0 - threshold) * diameter)
        tp = len(d)
        precision = tp / len(f) if len(f) else 0.0
        recall = tp / len(t) if len(t) else 0.0
        return precision, recall

    pr = [counts(th) for th in thresholds]
    points = sorted((r, p) for p, r in pr)
    ap, last = 0.0, 0.0
    for r, p in points:
        ap += (r - last) * p
        last = r
    p05, r05 = counts(0.5)
    return {
        "ap": float(ap),
        "precision": [float(p) for p, _ in pr],
        "recall": [float(r) for _, r in pr],
        "precision_0_5": float(p05),
        "recall_0_5": float(r05),
        "n_truth": int(len(t)),
        "n_found": int(len(f)),
    }
