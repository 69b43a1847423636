"""Benchmark: voxel reassignment (``reassign.method: flow``) against a plain
overlap (IoU) label matcher, on simulated movies of moving, rotating,
deforming objects with ground-truth labels.

In one run, per displacement level (step per frame as a multiple of the mean
object radius):

1. A movie from ``pipeline.simulate.simulate_objects`` (3D, 32×96×96 voxels
   of 0.5×0.2×0.2 µm, radii 4–8 px, rotation up to 10°/frame, deformation
   15 %, objects appearing and leaving), written to a movie store.
2. ``pipeline.segment.segment_movie`` (σ = 0.4, 1, 1 px, Otsu) ->
   labels store; both reassignments from that same store, streamed through
   ``pipeline.reassign.reassign_movie``: ``flow`` (defaults) and ``overlap``.
3. Scores against the truth, on the voxels that are object in both:
   ``voxel_accuracy``, the share whose label maps to the right true object
   (each label mapped to the true object it overlaps most over the whole
   movie); ``identity_persistence``, the share of true objects whose
   dominant label is one and the same in every frame they are segmented in,
   and maps back to them. The same two for the IoU baseline.
4. ``frames_per_s`` of the flow reassignment (store to store) and the
   process's ``peak_rss_mb``.

Targets: accuracy and persistence >= 0.95 for displacements up to the
object radius per frame; above the IoU baseline where motion exceeds half
the object size (the radius). ``--quick`` runs one movie per level (within
60 s on 2 cores); the full run averages three seeds, adds a 2D series and a
larger volume for speed. The last line printed is one JSON object.

    python benchmarks/reassign.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.io import open_movie, write_movie
from pipeline.reassign import reassign_movie
from pipeline.segment import segment_movie
from pipeline.simulate.objects import simulate_objects

PIXEL_3D = (0.5, 0.2, 0.2)
PIXEL_2D = (0.2, 0.2)
RADIUS_PX = (4, 8)
MEAN_RADIUS_PX = float(np.mean(RADIUS_PX))
FRAME_INTERVAL_S = 0.5


def label_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(voxel_accuracy, identity_persistence) of predicted labels (t, ...)
    against true labels of the same shape; see the module docstring."""
    both = (pred > 0) & (truth > 0)
    if not both.any():
        return 0.0, 0.0
    frame = np.broadcast_to(np.arange(pred.shape[0]).reshape(-1, *[1] * (pred.ndim - 1)), pred.shape)[both]
    p = pred[both].astype(np.int64)
    t = truth[both].astype(np.int64)
    # each predicted label -> the true object it overlaps most (whole movie)
    pairs, counts = np.unique(np.stack([p, t]), axis=1, return_counts=True)
    order = np.lexsort((-counts, pairs[0]))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pairs[0][order][1:] != pairs[0][order][:-1]
    mapping = dict(zip(pairs[0][order][first].tolist(), pairs[1][order][first].tolist()))
    mapped = np.array([mapping[v] for v in pairs[0]])
    accuracy = float(counts[mapped == pairs[1]].sum() / counts.sum())
    # per true object and frame, its dominant predicted label
    triples, n = np.unique(np.stack([t, frame, p]), axis=1, return_counts=True)
    order = np.lexsort((-n, triples[1], triples[0]))
    first = np.ones(len(order), dtype=bool)
    key = triples[0][order] * (pred.shape[0] + 1) + triples[1][order]
    first[1:] = key[1:] != key[:-1]
    dominant = triples[:, order[first]]
    persistent = []
    for obj in np.unique(dominant[0]):
        labels = np.unique(dominant[2][dominant[0] == obj])
        persistent.append(len(labels) == 1 and mapping[int(labels[0])] == obj)
    return accuracy, float(np.mean(persistent))


def run_level(workdir: Path, displacement_px: float, *, seed: int, shape, pixel, n_frames: int, n_objects: int) -> dict:
    frames, truth, _ = simulate_objects(
        shape=shape, n_frames=n_frames, n_objects=n_objects, radius_px=RADIUS_PX,
        displacement_px=displacement_px, rotation_deg=10.0, deform=0.15, appear_rate=0.2,
        leave_rate=0.02, pixel_size_um=pixel, noise=0.05, seed=seed,
    )
    tag = f"d{displacement_px:g}_s{seed}_{len(shape)}d"
    movie = write_movie(
        workdir / f"movie_{tag}.ome.zarr", frames, pixel_size_um=pixel, frame_interval_s=FRAME_INTERVAL_S,
        frames_per_shard=8,
    )
    sigma = [0.4, 1.0, 1.0] if len(shape) == 3 else 1.0
    labels = segment_movie(
        movie, workdir / f"labels_{tag}.ome.zarr", compute={"scheduler": "synchronous"}, sigma=sigma,
    )
    started = time.perf_counter()
    reassign_movie(labels, movie, workdir / f"flow_{tag}.ome.zarr")
    seconds = time.perf_counter() - started
    reassign_movie(labels, movie, workdir / f"iou_{tag}.ome.zarr", method="overlap")
    flow = open_movie(workdir / f"flow_{tag}.ome.zarr").frames()
    iou = open_movie(workdir / f"iou_{tag}.ome.zarr").frames()
    accuracy, persistence = label_scores(flow, truth)
    iou_accuracy, iou_persistence = label_scores(iou, truth)
    return {
        "voxel_accuracy": accuracy,
        "identity_persistence": persistence,
        "iou_voxel_accuracy": iou_accuracy,
        "iou_identity_persistence": iou_persistence,
        "frames_per_s": n_frames / seconds,
        "true_objects": int(len(np.unique(truth[truth > 0]))),
        "labels_flow": int(len(np.unique(flow[flow > 0]))),
        "labels_iou": int(len(np.unique(iou[iou > 0]))),
    }


def series(workdir: Path, levels, seeds, **kw) -> list[dict]:
    rows = []
    for ratio in levels:
        displacement = ratio * MEAN_RADIUS_PX
        runs = [run_level(workdir, displacement, seed=s, **kw) for s in seeds]
        row = {"displacement_over_radius": ratio, "displacement_px": displacement}
        for key in runs[0]:
            row[key] = round(float(np.mean([r[key] for r in runs])), 4)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one movie per level (< 60 s)")
    args = parser.parse_args()
    started = time.perf_counter()
    levels = [0.5, 1.0, 1.5, 2.0] if args.quick else [0.25, 0.5, 1.0, 1.5, 2.0]
    seeds = [1] if args.quick else [1, 2, 3]
    n_frames = 16 if args.quick else 30
    with tempfile.TemporaryDirectory(prefix="trackflow-reassign-bench-") as tmp:
        workdir = Path(tmp)
        rows = series(workdir, levels, seeds, shape=(32, 96, 96), pixel=PIXEL_3D, n_frames=n_frames, n_objects=12)
        report: dict = {"benchmark": "reassign", "quick": args.quick, "levels_3d": rows}
        if not args.quick:
            report["levels_2d"] = series(
                workdir, levels, seeds, shape=(192, 192), pixel=PIXEL_2D, n_frames=n_frames, n_objects=20
            )
            big = run_level(workdir, MEAN_RADIUS_PX, seed=7, shape=(64, 256, 256), pixel=PIXEL_3D,
                            n_frames=20, n_objects=80)
            report["large_volume"] = {"shape": [64, 256, 256], **{k: round(v, 4) for k, v in big.items()}}
    within = [r for r in rows if r["displacement_over_radius"] <= 1.0]
    beyond = [r for r in rows if r["displacement_over_radius"] >= 1.0]
    report.update(
        voxel_accuracy=min(r["voxel_accuracy"] for r in within),
        identity_persistence=min(r["identity_persistence"] for r in within),
        iou_voxel_accuracy=min(r["iou_voxel_accuracy"] for r in within),
        iou_identity_persistence=min(r["iou_identity_persistence"] for r in within),
        frames_per_s=round(float(np.mean([r["frames_per_s"] for r in rows])), 2),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        target_accuracy_persistence_095_up_to_radius=all(
            r["voxel_accuracy"] >= 0.95 and r["identity_persistence"] >= 0.95 for r in within
        ),
        target_beats_iou_beyond_radius=all(
            r["identity_persistence"] > r["iou_identity_persistence"] for r in beyond
        ),
        seconds=round(time.perf_counter() - started, 1),
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
