"""The reassign stage: carry object identities through time, voxel by voxel.

The segment stage numbers each frame's objects 1..n on its own; this stage
gives them identities that persist through time (science.md §4, after
Nellie, Lefebvre et al., Nature Methods 2025, with its gaps fixed). Per pair
of frames t → t+1, with the *propagated* labels at t and the fresh
segmentation at t+1:

1. **Objects.** At t, the pieces of the label image (connected voxels of one
   label); at t+1, the segmented objects. Each has a centroid (µm), a volume
   and, given the images, a mean intensity.
2. **Object matching** (the link stage's machinery, science.md §3): pairs
   within ``gate_um`` of the predicted position
   (:func:`pipeline.link.flow.candidate_pairs`), cost = z-scored squared
   distance plus the z-scored differences of intensity and log-volume
   (:func:`pipeline.link.flow.pair_costs`), one-to-one assignment below
   ``cost_cutoff`` (:func:`pipeline.link.flow.assign`). The prediction is
   each piece's position moved by the flow of its *neighbours* (never its
   own step; :class:`pipeline.flowfield.FlowField`, shrunk towards zero
   where the neighbours disagree): first the previous pair's flow, then this
   pair's, re-matching until the matches stop changing. Candidates are
   gated around the predicted *and* the current position (the nearer
   counts), so an object moving against its neighbours is not lost. The matches are the
   forward flow vectors (piece at t → object at t+1) and, reversed, the
   backward ones.
3. **Voxel matching, both ways.** Forward: each labelled voxel at t moves by
   its piece's matched displacement (pieces without a match: the forward
   field interpolated at the voxel) and takes the nearest labelled voxel at
   t+1 (KD-tree, distances in µm, so anisotropic voxels are handled) if the
   prediction error is below ``max_error_um`` (R). Backward: each labelled
   voxel at t+1 moves by the backward flow and takes the nearest labelled
   voxel at t within R.
4. **Vote.** Each voxel at t+1 takes the label with the largest summed
   weight 1/(error + ε) among its forward and backward candidates, the
   labels being the *propagated* labels at t. With ``votes_follow_matches``
   a vote whose source piece is matched to a different object is dropped,
   so a new object appearing beside a matched one does not inherit its
   label; unmatched pieces vote freely (so two objects that merge pass on
   the labels the votes give, never a fresh one).
5. **Fill and seed.** Voxels of a t+1 object that got no vote take the label
   of the nearest voted voxel of the same object (region growing in µm);
   an object with no vote at all is new and gets a fresh label (never
   reused). Nellie leaves such voxels at 0 and creates no labels: that loses
   objects.

The movie is processed as a stream: one frame pair in memory, frames read
one at a time from the stores and written as they are done. Outputs:
``reassigned.ome.zarr`` (int32, consistent ids through time, the label
store's axes, shards and scale) and a per-label, per-frame table
(``objects.parquet``): ``frame, t_s, label, [z,] y, x`` (centroid, px),
``volume_voxels, volume_um3, mean_intensity, [vz_um_s,] vy_um_s, vx_um_s,
speed_um_s`` (velocity of the centroid since the label's previous frame;
NaN in its first frame).

``method: overlap`` is the plain baseline instead: each object at t+1 takes
the label at t it overlaps best (one-to-one on IoU, :func:`match_by_overlap`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .flowfield import FlowField, pixel_scale
from .io.movie import Movie, MovieError, create_movie, open_movie, update_attributes
from .io.tables import write_table
from .io.schema import check_section, section_defaults
from .matching import assign, candidate_pairs, pair_costs

__all__ = [
    "PairResult",
    "measure_objects",
    "reassign_labels",
    "match_by_overlap",
    "reassign_movie",
    "iter_reassigned",
    "run",
]

log = logging.getLogger("trackflow.reassign")

# Rounds of match -> flow -> re-match per frame pair (stops early when stable).
MAX_ROUNDS = 3
# The outlier cut: links longer than outlier_factor x this quantile of the
# pair's link lengths, once there are enough links for a quantile to mean something.
OUTLIER_QUANTILE = 0.9
MIN_LINKS_FOR_OUTLIERS = 5

#: Defaults of every key (workflow/schemas/reassign.schema.yaml).
_DEFAULTS = section_defaults("reassign")

# keyword arguments of reassign_labels (the flow method)
_FLOW_KEYS = (
    "gate_um", "cost_cutoff", "outlier_factor", "assignment", "appearance", "flow_radius_um", "flow_order",
    "max_error_um", "eps_um", "votes_follow_matches",
)


# ---------------------------------------------------------------------------
# objects of a label image
# ---------------------------------------------------------------------------


def _check_labels(labels, name: str, ndim: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D label image, got shape {labels.shape}")
    if ndim is not None and labels.ndim != ndim:
        raise ValueError(f"{name} is {labels.ndim}D but the other frame is {ndim}D")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return labels


class _Voxels:
    """The labelled voxels of one frame: positions (µm), labels, and an
    object index per voxel with per-object centroid, volume, intensity."""

    def __init__(self, labels: np.ndarray, image, scale: np.ndarray, *, pieces: bool = False):
        flat = np.flatnonzero(labels)
        self.flat = flat
        self.label = labels.ravel()[flat]
        objects = self.label
        if pieces:  # objects are the connected pieces of each label (full connectivity)
            structure = ndi.generate_binary_structure(labels.ndim, labels.ndim)
            components, _ = ndi.label(labels > 0, structure=structure)
            objects = components.ravel()[flat].astype(np.int64) * (int(self.label.max()) + 1) + self.label
        ids, self.obj = np.unique(objects, return_inverse=True)
        self.obj = self.obj.ravel()
        self.ids = ids
        self.n = len(ids)
        self.xyz = np.stack(np.unravel_index(flat, labels.shape), axis=1) * scale
        count = np.bincount(self.obj, minlength=self.n).astype(float)
        self.volume = count * float(np.prod(scale))
        self.centroid = np.stack(
            [np.bincount(self.obj, weights=self.xyz[:, a], minlength=self.n) for a in range(labels.ndim)], axis=1
        ) / np.maximum(count, 1)[:, None]
        if image is not None:
            values = np.asarray(image, dtype=float).ravel()[flat]
            mean = np.bincount(self.obj, weights=values, minlength=self.n) / np.maximum(count, 1)
            sq = np.bincount(self.obj, weights=values**2, minlength=self.n) / np.maximum(count, 1)
            self.intensity = np.stack([mean, np.sqrt(np.maximum(sq - mean**2, 0))], axis=1)
        else:
            self.intensity = None

    def appearance(self) -> dict[str, np.ndarray]:
        groups = {"size": np.log(self.volume)[:, None]}
        if self.intensity is not None:
            groups["intensity"] = self.intensity
        return groups

    def equivalent_radius(self) -> np.ndarray:
        ndim = self.xyz.shape[1]
        if ndim == 3:
            return np.cbrt(3.0 * self.volume / (4.0 * math.pi))
        return np.sqrt(self.volume / math.pi)


def measure_objects(labels, image=None, *, pixel_size_um=None) -> pd.DataFrame:
    """One row per label of a label image.

    Parameters
    ----------
    labels : int array (y, x) or (z, y, x)
    image : array of the same shape, optional
        Intensities, for ``mean_intensity`` (NaN without).
    pixel_size_um : float or sequence, optional
        Voxel size per axis (µm) for ``volume_um3`` (µm² in 2D).

    Returns
    -------
    DataFrame
        ``label, [z,] y, x`` (centroid, px), ``volume_voxels, volume_um3,
        mean_intensity``, sorted by label.
    """
    labels = _check_labels(labels, "labels")
    ndim = labels.ndim
    scale = pixel_scale(pixel_size_um, ndim)
    if image is not None and np.shape(image) != labels.shape:
        raise ValueError(f"image of shape {np.shape(image)} does not match labels of shape {labels.shape}")
    vox = _Voxels(labels, image, np.ones(ndim))
    table = pd.DataFrame({"label": vox.ids.astype(np.int64)})
    for a, c in enumerate(["z", "y", "x"][3 - ndim :]):
        table[c] = vox.centroid[:, a]
    table["volume_voxels"] = vox.volume.astype(np.int64)
    table["volume_um3"] = vox.volume * float(np.prod(scale))
    table["mean_intensity"] = vox.intensity[:, 0] if vox.intensity is not None else np.nan
    return table


# ---------------------------------------------------------------------------
# one frame pair
# ---------------------------------------------------------------------------


@dataclass
class PairResult:
    """What :func:`reassign_labels` returns for one frame pair.

    Attributes
    ----------
    labels : ndarray of int32
        The labels at t+1, carried from t (fresh ids for new objects).
    next_label : int
        The next fresh label id (labels are never reused).
    matches : DataFrame
        The object matches (flow vectors): ``[z,] y, x`` of the piece at t
        (µm), ``[dz,] dy, dx`` (µm), ``cost``, ``label`` (its label at t).
    new_labels : list of int
        The fresh labels given to objects with no votes.
    prior : FlowField or None
        This pair's flow, positioned at t+1 (groups: the labels carried), to
        predict the next pair.
    n_voted, n_filled : int
        Voxels at t+1 labelled by votes, and by filling from voted voxels.
    """

    labels: np.ndarray
    next_label: int
    matches: pd.DataFrame
    new_labels: list = field(default_factory=list)
    prior: FlowField | None = None
    n_voted: int = 0
    n_filled: int = 0


def _check_flow_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The flow method's options checked against the schema
    (``reassign.schema.yaml``), lengths and factors as floats."""
    check_section("reassign", options)
    out = dict(options)
    for key in ("gate_um", "outlier_factor", "flow_radius_um", "max_error_um", "eps_um", "cost_cutoff"):
        out[key] = None if out[key] is None else float(out[key])
    return out


def _gated_pairs(current, predicted, dst_tree, gate):
    """Candidate pairs within ``gate`` of a piece's predicted position *or*
    of where it is now, each with the smaller of the two distances: the
    neighbours' flow can only help, never push the partner of an object
    moving against its neighbours out of the gate."""
    i, j, distance = candidate_pairs(predicted, None, gate, target_tree=dst_tree)
    if np.array_equal(predicted, current):
        return i, j, distance
    i0, j0, d0 = candidate_pairs(current, None, gate, target_tree=dst_tree)
    i, j, distance = np.concatenate([i, i0]), np.concatenate([j, j0]), np.concatenate([distance, d0])
    key = i.astype(np.int64) * dst_tree.n + j
    order = np.lexsort((distance, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = order[first]
    return i[keep], j[keep], distance[keep]


def _match_objects(src: _Voxels, dst: _Voxels, src_labels, prior: FlowField | None, settings) -> tuple:
    """Gated one-to-one matching of pieces at t to objects at t+1, re-predicted
    with the neighbours' flow until stable. Returns (i, j, cost, linked, flow)."""
    appearance_src = src.appearance() if settings["appearance"] else None
    appearance_dst = dst.appearance() if settings["appearance"] else None
    predicted = src.centroid.copy()
    if prior is not None and len(prior):
        predicted += prior.at(
            src.centroid, settings["flow_radius"], exclude=src_labels, order=settings["flow_order"], shrink=True
        )
    dst_tree = cKDTree(dst.centroid)
    previous = None
    for _ in range(MAX_ROUNDS):
        i, j, distance = _gated_pairs(src.centroid, predicted, dst_tree, settings["gate"])
        if appearance_src is not None:
            a = {g: v[i] for g, v in appearance_src.items()}
            b = {g: v[j] for g, v in appearance_dst.items()}
            cost = pair_costs(distance, a, b)
        else:
            cost = pair_costs(distance)
        linked, as_flow = assign(
            i, j, cost, src.n, dst.n, method=settings["assignment"], cost_cutoff=settings["cost_cutoff"]
        )
        factor = settings["outlier_factor"]
        if factor is not None and linked.sum() >= MIN_LINKS_FOR_OUTLIERS:
            # a link far longer than this pair's links is an object that left
            # next to one that appeared: cut it
            too_long = distance > factor * np.quantile(distance[linked], OUTLIER_QUANTILE)
            linked &= ~too_long
            as_flow &= ~too_long
        key = (tuple(i[linked]), tuple(j[linked]))
        if key == previous or not as_flow.any():
            break
        previous = key
        field_now = FlowField(
            src.centroid[i[as_flow]], dst.centroid[j[as_flow]] - src.centroid[i[as_flow]], cost[as_flow],
            groups=i[as_flow],
        )
        predicted = src.centroid + field_now.at(
            src.centroid, settings["flow_radius"], exclude=np.arange(src.n), order=settings["flow_order"], shrink=True
        )
    return i, j, cost, linked, as_flow


def reassign_labels(
    labels_t,
    labels_t1,
    image_t=None,
    image_t1=None,
    *,
    pixel_size_um=None,
    next_label: int | None = None,
    prior: FlowField | None = None,
    gate_um: float | None = _DEFAULTS["gate_um"],
    cost_cutoff: float | None = _DEFAULTS["cost_cutoff"],
    outlier_factor: float | None = _DEFAULTS["outlier_factor"],
    assignment: str = _DEFAULTS["assignment"],
    appearance: bool = _DEFAULTS["appearance"],
    flow_radius_um: float | None = _DEFAULTS["flow_radius_um"],
    flow_order: int = _DEFAULTS["flow_order"],
    max_error_um: float | None = _DEFAULTS["max_error_um"],
    eps_um: float | None = _DEFAULTS["eps_um"],
    votes_follow_matches: bool = _DEFAULTS["votes_follow_matches"],
) -> PairResult:
    """Carry the labels of frame t onto the objects of frame t+1.

    Parameters
    ----------
    labels_t : int array (y, x) or (z, y, x)
        The *propagated* labels at t (ids consistent through time).
    labels_t1 : int array, same shape
        The segmentation at t+1 (any ids; each id is one object).
    image_t, image_t1 : arrays, optional
        The intensities, for the appearance terms of the object matching.
    pixel_size_um : float or sequence, optional
        Voxel size per axis (µm): every distance below is in µm (pixels
        without it).
    next_label : int, optional
        First fresh label (default: one more than the largest at t).
    prior : FlowField, optional
        The previous pair's flow (``PairResult.prior``) to predict from.
    gate_um : float, optional
        Largest distance between a piece's predicted centroid and its
        partner. Default 4 × the median equivalent-sphere radius of the
        pieces at t: objects may move up to several radii per frame.
    cost_cutoff : float or None
        Object pairs whose cost (a sum of z-scores) is at or above it are
        never matched. None (default): the gate and ``outlier_factor``
        decide, because z-scores are relative: when every candidate is a true
        pair, a cut-off on them still rejects some.
    outlier_factor : float or None
        Cut links longer (from the predicted position) than this factor × the
        90th percentile of the pair's link lengths (with 5 links or more): an
        object that left, matched to one that appeared nearby. None: no cut.
    assignment : {"hungarian", "mutual_cheapest"}
        One-to-one minimum-cost matching, or Nellie's mutual-cheapest rule.
    appearance : bool
        Add the intensity (mean, s.d.) and log-volume terms to the cost.
    flow_radius_um : float, optional
        Radius of the flow interpolation (for the prediction, and for the
        voxels of unmatched objects). Default 3 × the median nearest-neighbour
        distance between pieces (the gate when there is one piece).
    flow_order : {0, 1}
        Weighted mean (0) or weighted linear fit (1) of the flow vectors.
    max_error_um : float, optional
        R: largest prediction error of a voxel match. Default half the median
        equivalent radius, but at least the largest voxel edge.
    eps_um : float, optional
        ε of the vote weights 1/(error + ε). Default half the smallest voxel edge.
    votes_follow_matches : bool
        Drop votes whose source piece is matched to another object.

    Returns
    -------
    PairResult
    """
    labels_t = _check_labels(labels_t, "labels_t")
    labels_t1 = _check_labels(labels_t1, "labels_t1", labels_t.ndim)
    if labels_t.shape != labels_t1.shape:
        raise ValueError(f"labels_t {labels_t.shape} and labels_t1 {labels_t1.shape} differ in shape")
    for name, image in (("image_t", image_t), ("image_t1", image_t1)):
        if image is not None and np.shape(image) != labels_t.shape:
            raise ValueError(f"{name} of shape {np.shape(image)} does not match the labels' {labels_t.shape}")
    ndim = labels_t.ndim
    scale = pixel_scale(pixel_size_um, ndim)
    settings = _check_flow_options(
        dict(gate_um=gate_um, cost_cutoff=cost_cutoff, outlier_factor=outlier_factor, assignment=assignment, appearance=appearance,
             flow_radius_um=flow_radius_um, flow_order=flow_order, max_error_um=max_error_um, eps_um=eps_um,
             votes_follow_matches=votes_follow_matches)
    )
    top = int(labels_t.max()) if labels_t.size else 0
    next_label = top + 1 if next_label is None else max(int(next_label), top + 1)
    pos_cols = ["z", "y", "x"][3 - ndim :]
    empty_matches = pd.DataFrame(columns=[*pos_cols, *[f"d{c}" for c in pos_cols], "cost", "label"])

    dst = _Voxels(labels_t1, image_t1, scale)
    out = np.zeros(labels_t1.shape, dtype=np.int32)
    if dst.n == 0:
        return PairResult(out, next_label, empty_matches)
    src = _Voxels(labels_t, image_t, scale, pieces=True)
    if src.n == 0:  # nothing to carry: every object is new
        new = np.arange(next_label, next_label + dst.n)
        out.ravel()[dst.flat] = new[dst.obj]
        return PairResult(out, next_label + dst.n, empty_matches, new_labels=new.tolist())

    # labels are constant on a piece: the label of each piece
    piece_label = np.zeros(src.n, dtype=np.int64)
    piece_label[src.obj] = src.label
    radius = float(np.median(src.equivalent_radius()))
    settings["gate"] = settings["gate_um"] or 4.0 * radius
    if settings["flow_radius_um"] is not None:
        settings["flow_radius"] = settings["flow_radius_um"]
    elif src.n > 1:
        nn, _ = cKDTree(src.centroid).query(src.centroid, k=2)
        settings["flow_radius"] = max(3.0 * float(np.median(nn[:, 1])), 1e-9)
    else:
        settings["flow_radius"] = settings["gate"]
    max_error = settings["max_error_um"] or max(0.5 * radius, float(scale.max()) * 1.001)
    eps = settings["eps_um"] or 0.5 * float(scale.min())
    settings["cost_cutoff"] = math.inf if settings["cost_cutoff"] is None else settings["cost_cutoff"]

    # 1-2: object matching -> forward and backward flow
    i, j, cost, linked, as_flow = _match_objects(src, dst, piece_label, prior, settings)
    partner = np.full(src.n, -1)
    partner[i[linked]] = j[linked]
    source = np.full(dst.n, -1)
    source[j[linked]] = i[linked]
    step = dst.centroid[j[as_flow]] - src.centroid[i[as_flow]]
    forward = backward = None
    if as_flow.any():
        forward = FlowField(src.centroid[i[as_flow]], step, cost[as_flow])
        backward = FlowField(dst.centroid[j[as_flow]], -step, cost[as_flow])

    # 3: voxel matching both ways
    disp_fwd = np.zeros_like(src.xyz)
    own = partner[src.obj] >= 0
    disp_fwd[own] = dst.centroid[partner[src.obj[own]]] - src.centroid[src.obj[own]]
    if forward is not None and (~own).any():
        disp_fwd[~own] = forward.at(src.xyz[~own], settings["flow_radius"], order=flow_order, shrink=True)
    disp_bwd = np.zeros_like(dst.xyz)
    own_b = source[dst.obj] >= 0
    disp_bwd[own_b] = src.centroid[source[dst.obj[own_b]]] - dst.centroid[dst.obj[own_b]]
    if backward is not None and (~own_b).any():
        disp_bwd[~own_b] = backward.at(dst.xyz[~own_b], settings["flow_radius"], order=flow_order, shrink=True)

    dst_tree = cKDTree(dst.xyz)
    err_f, hit_f = dst_tree.query(src.xyz + disp_fwd, distance_upper_bound=max_error)
    ok_f = np.isfinite(err_f)
    src_tree = cKDTree(src.xyz)
    err_b, hit_b = src_tree.query(dst.xyz + disp_bwd, distance_upper_bound=max_error)
    ok_b = np.isfinite(err_b)
    # votes: (voxel at t+1, voxel at t it takes its label from, error)
    vote_dst = np.concatenate([hit_f[ok_f], np.flatnonzero(ok_b)])
    vote_src = np.concatenate([np.flatnonzero(ok_f), hit_b[ok_b]])
    vote_err = np.concatenate([err_f[ok_f], err_b[ok_b]])
    if settings["votes_follow_matches"] and len(vote_dst):
        p = partner[src.obj[vote_src]]
        allowed = (p < 0) | (p == dst.obj[vote_dst])
        vote_dst, vote_src, vote_err = vote_dst[allowed], vote_src[allowed], vote_err[allowed]

    # 4: weighted vote per voxel at t+1
    voxel_label = np.zeros(len(dst.flat), dtype=np.int64)
    if len(vote_dst):
        voxel, label = _heaviest(vote_dst, src.label[vote_src], 1.0 / (vote_err + eps))
        voxel_label[voxel] = label
    voted = voxel_label > 0

    # 5: fill each object's unvoted voxels from its nearest voted voxel; seed the rest
    has_vote = np.bincount(dst.obj[voted], minlength=dst.n) > 0
    to_fill = ~voted & has_vote[dst.obj]
    if to_fill.any():
        # an extra coordinate keeps objects apart: the nearest voted voxel is in the same object
        span = float(np.ptp(dst.xyz, axis=0).sum()) + 1.0
        voted_xyz = np.column_stack([dst.xyz[voted], dst.obj[voted] * span])
        fill_xyz = np.column_stack([dst.xyz[to_fill], dst.obj[to_fill] * span])
        _, nearest = cKDTree(voted_xyz).query(fill_xyz)
        voxel_label[to_fill] = voxel_label[voted][nearest]
    new_objects = np.flatnonzero(~has_vote)
    fresh = np.zeros(dst.n, dtype=np.int64)
    fresh[new_objects] = np.arange(next_label, next_label + len(new_objects))
    seeded = ~has_vote[dst.obj]
    voxel_label[seeded] = fresh[dst.obj[seeded]]
    next_label += len(new_objects)
    if next_label > np.iinfo(np.int32).max:
        raise OverflowError("reassign: more than 2**31 - 1 labels; the label store is int32")
    out.ravel()[dst.flat] = voxel_label.astype(np.int32)

    # the flow, for the table and as the next pair's prior (positioned at t+1,
    # grouped by the label each object now carries)
    matches = pd.DataFrame(src.centroid[i[as_flow]], columns=pos_cols)
    for a, c in enumerate(pos_cols):
        matches[f"d{c}"] = step[:, a]
    matches["cost"] = cost[as_flow]
    matches["label"] = piece_label[i[as_flow]]
    prior_next = None
    if as_flow.any():
        carried = np.zeros(dst.n, dtype=np.int64)
        objects, majority = _heaviest(dst.obj, voxel_label)
        carried[objects] = majority
        prior_next = FlowField(dst.centroid[j[as_flow]], step, cost[as_flow], groups=carried[j[as_flow]])
    return PairResult(
        out, next_label, matches, new_labels=fresh[new_objects].tolist(), prior=prior_next,
        n_voted=int(voted.sum()), n_filled=int(to_fill.sum()),
    )


def _heaviest(group: np.ndarray, value: np.ndarray, weight: np.ndarray | None = None):
    """For each group, the value with the largest summed weight (count
    without weights). Returns (groups, values), groups sorted; sparse, so
    any number of groups and values."""
    values, value_index = np.unique(value, return_inverse=True)
    key = group.astype(np.int64) * len(values) + value_index
    keys, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=weight) if weight is not None else np.bincount(inverse)
    owner = keys // len(values)
    order = np.lexsort((-total, owner))  # per group, heaviest first
    first = np.ones(len(order), dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    best = order[first]
    return owner[best], values[keys[best] % len(values)]


def match_by_overlap(
    labels_t, labels_t1, *, next_label: int | None = None, min_iou: float = _DEFAULTS["min_iou"]
) -> tuple[np.ndarray, int]:
    """The plain baseline: each object at t+1 takes the label at t it overlaps
    best (one-to-one, maximising the summed IoU); the others get fresh labels.

    Parameters
    ----------
    labels_t : int array
        Propagated labels at t.
    labels_t1 : int array, same shape
        Segmentation at t+1.
    next_label : int, optional
        First fresh label (default: one more than the largest at t).
    min_iou : float
        Pairs must overlap by more than this intersection-over-union.

    Returns
    -------
    (labels, next_label)
    """
    labels_t = _check_labels(labels_t, "labels_t")
    labels_t1 = _check_labels(labels_t1, "labels_t1", labels_t.ndim)
    if labels_t.shape != labels_t1.shape:
        raise ValueError(f"labels_t {labels_t.shape} and labels_t1 {labels_t1.shape} differ in shape")
    check_section("reassign", {"min_iou": min_iou})
    top = int(labels_t.max()) if labels_t.size else 0
    next_label = top + 1 if next_label is None else max(int(next_label), top + 1)
    out = np.zeros(labels_t1.shape, dtype=np.int32)
    flat1 = np.flatnonzero(labels_t1)
    if len(flat1) == 0:
        return out, next_label
    ids1, obj1 = np.unique(labels_t1.ravel()[flat1], return_inverse=True)
    flat0 = np.flatnonzero(labels_t)
    ids0, obj0 = np.unique(labels_t.ravel()[flat0], return_inverse=True)
    area1 = np.bincount(obj1, minlength=len(ids1))
    area0 = np.bincount(obj0, minlength=len(ids0))
    both = labels_t.ravel()[flat1] > 0
    target = np.full(len(ids1), -1)
    if both.any() and len(ids0):
        pair_key = np.searchsorted(ids0, labels_t.ravel()[flat1[both]]) * len(ids1) + obj1[both]
        keys, inter = np.unique(pair_key, return_counts=True)
        i, j = keys // len(ids1), keys % len(ids1)
        iou = inter / (area0[i] + area1[j] - inter)
        linked, _ = assign(i, j, 1.0 - iou, len(ids0), len(ids1), cost_cutoff=1.0 - float(min_iou))
        target[j[linked]] = ids0[i[linked]]
    new = np.flatnonzero(target < 0)
    target[new] = np.arange(next_label, next_label + len(new))
    out.ravel()[flat1] = target[obj1]
    return out, next_label + len(new)


# ---------------------------------------------------------------------------
# a whole movie, streamed
# ---------------------------------------------------------------------------


def _open(store) -> Movie:
    return store if isinstance(store, Movie) else open_movie(store)


def _mark_as_labels(store, source_image=None) -> None:
    """Mark the store's image as a label image (NGFF ``image-label``), so that
    napari-ome-zarr opens it as labels; ``source_image`` is recorded relative
    to the store. (The segment stage has the same helper: stages do not
    import each other.)"""
    label_meta = (
        {"source": {"image": os.path.relpath(Path(source_image).resolve(), Path(store).resolve())}}
        if source_image is not None else {}
    )
    update_attributes(store, {"ome": {"image-label": label_meta}})


def iter_reassigned(labels_movie, movie=None, *, method: str = _DEFAULTS["method"], **options):
    """Reassign a label store frame by frame, as a stream.

    Returns an iterator of ``(frame, labels, image, info)`` for every frame
    that is not dropped, in order, holding one frame pair in memory (the
    options are checked at the call, the frames read as it is consumed): ``labels`` the
    reassigned int32 labels, ``image`` the movie's frame (or None), ``info``
    a dict (``new_labels``, ``matches``, ``n_voted``, ``n_filled``). Keyword
    arguments are those of :func:`reassign_labels` (``method: flow``) or
    ``min_iou`` (``method: overlap``).
    """
    labels_movie = _open(labels_movie)
    movie = None if movie is None else _open(movie)
    check_section("reassign", {"method": method})
    if not np.issubdtype(labels_movie.dtype, np.integer):
        raise MovieError(f"{labels_movie.path}: a label store must hold integers, not {labels_movie.dtype}")
    if movie is not None:
        if movie.frame_shape != labels_movie.frame_shape or len(movie) < len(labels_movie):
            raise MovieError(
                f"{labels_movie.path} ({len(labels_movie)} frames of {labels_movie.frame_shape}) does not "
                f"belong to {movie.path} ({len(movie)} frames of {movie.frame_shape})"
            )
    allowed = set(_FLOW_KEYS) | {"pixel_size_um"} if method == "flow" else {"min_iou"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"reassign: unknown parameter(s) {unknown} for method {method!r}")
    if method == "flow":
        options.setdefault("pixel_size_um", labels_movie.pixel_size_um)
        check_section("reassign", {k: v for k, v in options.items() if k in _FLOW_KEYS})
    else:
        check_section("reassign", options)
    skip = set(int(i) for i in labels_movie.dropped_frames)
    if movie is not None:
        skip |= set(int(i) for i in movie.dropped_frames)
    # checked above, streamed below: errors come at the call, not at the first frame
    return _stream(labels_movie, movie, method, skip, options)


def _stream(labels_movie, movie, method, skip, options):
    previous = image_prev = None
    prior = None
    next_label = 1
    for index in range(len(labels_movie)):
        if index in skip:
            continue
        raw = labels_movie[index]
        image = None if movie is None else movie[index]
        try:
            raw = _check_labels(raw, f"{labels_movie.path} frame {index}")
        except ValueError as exc:
            raise MovieError(str(exc)) from None
        info: dict[str, Any] = {}
        if previous is None:
            labels = raw.astype(np.int32, copy=False)
            next_label = int(labels.max()) + 1
            info["new_labels"] = np.unique(labels[labels > 0]).tolist()
        elif method == "overlap":
            before = next_label
            labels, next_label = match_by_overlap(previous, raw, next_label=next_label, **options)
            info["new_labels"] = list(range(before, next_label))
        else:
            result = reassign_labels(previous, raw, image_prev, image, next_label=next_label, prior=prior, **options)
            labels, next_label, prior = result.labels, result.next_label, result.prior
            info.update(new_labels=result.new_labels, matches=result.matches,
                        n_voted=result.n_voted, n_filled=result.n_filled)
        yield index, labels, image, info
        previous, image_prev = labels, image


def reassign_movie(
    labels_movie,
    movie,
    output,
    *,
    method: str = _DEFAULTS["method"],
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Reassign a whole label store, streaming, and write the result.

    Parameters
    ----------
    labels_movie : Movie or path
        ``labels.ome.zarr`` (the segment stage's output).
    movie : Movie or path, or None
        The movie it was segmented from (intensities for the appearance
        terms and ``mean_intensity``).
    output : path
        ``reassigned.ome.zarr`` to write (int32, the label store's axes,
        shards and scale).
    method : {"flow", "overlap"}
        Voxel reassignment with flow (:func:`reassign_labels`) or the IoU
        baseline (:func:`match_by_overlap`).
    overwrite : bool
        Replace an existing output store.
    metadata : mapping, optional
        More ``trackflow`` attributes for the output store.
    **options
        Keyword arguments of :func:`reassign_labels` (or ``min_iou``).

    Returns
    -------
    DataFrame
        One row per label and frame: ``frame, t_s, label, [z,] y, x`` (px),
        ``volume_voxels, volume_um3, mean_intensity, [vz_um_s,] vy_um_s,
        vx_um_s, speed_um_s``.
    """
    labels_movie = _open(labels_movie)
    movie = None if movie is None else _open(movie)
    if len(labels_movie) == 0:
        raise MovieError(f"{labels_movie.path}: the label store has no frames")
    if not labels_movie.complete:
        raise MovieError(
            f"{labels_movie.path}: the label store is incomplete (the segment stage did not finish); re-run it"
        )
    ndim = labels_movie.ndim
    scale = np.asarray(labels_movie.pixel_size_um, dtype=float)
    dt = labels_movie.frame_interval_s
    pos_cols = ["z", "y", "x"][3 - ndim :]
    frames = iter_reassigned(labels_movie, movie, method=method, **options)  # validates the options
    writer = create_movie(
        output,
        labels_movie.frame_shape,
        "int32",
        pixel_size_um=labels_movie.pixel_size_um,
        frame_interval_s=dt,
        frames_per_shard=labels_movie.frames_per_shard,
        first_seq=int(labels_movie.attrs.get("first_seq", 0)),
        overwrite=overwrite,
        metadata={"source": "reassign", "labels": str(labels_movie.path),
                  "movie": None if movie is None else str(movie.path), **dict(metadata or {})},
    )
    _mark_as_labels(output, source_image=movie.path if movie is not None else None)
    timestamps = labels_movie.timestamps()
    tables = []
    last: dict[int, tuple[float, np.ndarray]] = {}  # label -> (time, centroid µm)
    n_new = 0
    started = time.perf_counter()
    with writer:
        for count, (index, labels, image, info) in enumerate(frames, start=1):
            writer.write(index, labels, float(timestamps[index]))
            n_new += len(info.get("new_labels", ()))
            objects = measure_objects(labels, image, pixel_size_um=scale)
            t_s = index * dt
            centroid = objects[pos_cols].to_numpy(dtype=float) * scale
            velocity = np.full_like(centroid, np.nan)
            for row, label in enumerate(objects["label"].to_numpy()):
                seen = last.get(int(label))
                if seen is not None:
                    velocity[row] = (centroid[row] - seen[1]) / (t_s - seen[0])
                last[int(label)] = (t_s, centroid[row])
            objects.insert(0, "t_s", t_s)
            objects.insert(0, "frame", index)
            for a, c in enumerate(pos_cols):
                objects[f"v{c}_um_s"] = velocity[:, a]
            objects["speed_um_s"] = np.linalg.norm(velocity, axis=1)
            tables.append(objects)
            # labels absent from this frame can never come back: forget them
            last = {k: v for k, v in last.items() if v[0] == t_s}
            if count % 50 == 0:
                log.info("reassign: %d frames, %.1f frames/s", count, count / (time.perf_counter() - started))
        writer.set_attributes(frames_expected=len(labels_movie), method=method, n_labels=n_new)
        writer.close(complete=True, n_frames=len(labels_movie))
    table = pd.concat(tables, ignore_index=True) if tables else _empty_table(pos_cols)
    table = table.astype({"frame": np.int64, "label": np.int64})
    table.attrs["frame_interval_s"] = dt
    return table


def _empty_table(pos_cols) -> pd.DataFrame:
    columns = ["frame", "t_s", "label", *pos_cols, "volume_voxels", "volume_um3", "mean_intensity",
               *[f"v{c}_um_s" for c in pos_cols], "speed_um_s"]
    return pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("frame", "label", "volume_voxels") else float)
                         for c in columns})


# ---------------------------------------------------------------------------
# for the report
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------


def run(
    movie: str | os.PathLike,
    labels: str | os.PathLike,
    output: str | os.PathLike,
    table: str | os.PathLike,
    params: Mapping[str, Any] | None,
    *,
    overwrite: bool = False,
) -> pd.DataFrame:
    """The reassign stage: ``labels.ome.zarr`` (+ ``movie.ome.zarr``) ->
    ``reassigned.ome.zarr`` and ``objects.parquet``.

    Parameters
    ----------
    movie : path
        The movie store (intensities for matching and the table).
    labels : path
        The segment stage's label store.
    output : path
        The reassigned label store to write.
    table : path
        The per-label, per-frame table to write (Parquet, with provenance).
    params : mapping
        The ``reassign`` config section (``reassign.schema.yaml``: missing
        keys take its defaults, unknown keys and bad values are errors).
    overwrite : bool
        Replace an existing output store.

    Returns
    -------
    DataFrame
        The table written.
    """
    resolved = check_section("reassign", params)
    method = resolved["method"]
    options = {k: resolved[k] for k in _FLOW_KEYS} if method == "flow" else {"min_iou": resolved["min_iou"]}
    opened_movie = open_movie(movie)
    opened_labels = open_movie(labels)
    if tuple(np.round(opened_labels.pixel_size_um, 9)) != tuple(np.round(opened_movie.pixel_size_um, 9)):
        raise MovieError(
            f"{labels}: pixel size {opened_labels.pixel_size_um} differs from the movie's "
            f"{opened_movie.pixel_size_um} ({movie})"
        )
    started = time.perf_counter()
    objects = reassign_movie(
        opened_labels, opened_movie, output, method=method, overwrite=overwrite,
        metadata={"params": resolved}, **options,
    )
    seconds = time.perf_counter() - started
    n_frames = int(objects["frame"].nunique())
    write_table(
        objects,
        table,
        stage="reassign",
        params=resolved,
        extra={
            "movie": str(opened_movie.path),
            "labels": str(opened_labels.path),
            "reassigned": str(output),
            "frame_interval_s": opened_labels.frame_interval_s,
            "pixel_size_um": list(opened_labels.pixel_size_um),
            "n_frames": n_frames,
            "n_labels": int(objects["label"].nunique()),
            "seconds": round(seconds, 3),
        },
    )
    log.info(
        "reassign: %s -> %s, %d labels over %d frames (%.1f frames/s)",
        labels, output, objects["label"].nunique(), n_frames, n_frames / max(seconds, 1e-9),
    )
    return objects
