"""Detection benchmark: ``locate.method`` trackpy, matched and learned, on an
independent simulator written here (not trackflow's), against ground truth.

**2D, isolated spots** (``--frames`` frames of 512 x 512 per SNR): Gaussian
spots of s.d. s = 1.5 px sampled at the pixel centres, peak amplitude A, on
a flat background b = 100 with additive white Gaussian noise of s.d.
σ = 10; SNR = A / σ in {1.5, 2, 3, 5}; ``--spots`` spots per frame at
uniformly random positions at least 9 px (6 s) apart and 5 px from the
edges. A detection matches the nearest unmatched truth within 3 px (2 s),
greedily by score (each truth once). For each method:

- ``recall_snr<k>_trackpy``: the best recall at precision ≥ 0.95 over
  trackpy's ``minmass`` *and* ``diameter`` in {5, 7, 9}, tuned on the truth
  (the most generous baseline trackpy can have; ``minmass`` is swept by
  ranking its features by mass);
- ``recall_snr<k>_matched``: matched at its default ``false_rate`` (and
  ``precision_snr<k>_matched`` there); ``recall_best_snr<k>_matched``: its
  best recall at precision ≥ 0.95 over the threshold (ranking by the
  detection score);
- ``rmse_over_crlb_snr<k>_<method>``: the root-mean-square position error per
  axis of the matched detections (matched at default, trackpy at its tuned
  point) over the Cramér–Rao bound;
- ``fps_<method>``: frames per second of ``trackpy.locate`` (its tuned
  diameter and minmass at SNR 3, numba engine) and of matched (default), one
  process, on the same SNR-3 frames.

**Cramér–Rao bound.** The image is μ_j(θ) = b + A exp(−|x_j − c|² / 2s²) at
pixel centres x_j, θ = (c_y, c_x, A, b, s), noise white Gaussian of s.d. σ.
The Fisher information is I = Σ_j ∇μ_j ∇μ_jᵀ / σ² (a sum over the pixels),
and var(ĉ_x) ≥ (I⁻¹)_xx. It is computed per spot on its own pixel grid
(± 6 s) and the variances averaged over the spots. In the continuum limit,
Σ_j (∂μ/∂c_x)² → A² π / 2 and, the position being uncorrelated with the
other parameters for a symmetric spot, σ_x ≥ σ / A · sqrt(2 / π) ≈ 0.80 / SNR
px, independent of s (Thompson, Larson & Webb 2002; Mortensen et al. 2010
give the photon-counting form).

**Detection bound.** ``bound_recall_snr<k>``: the ideal matched filter run
on the benchmark's own frames (it knows s, b and σ exactly, correlates the
frame less b with the spot's shape and ranks its local maxima, with no
estimation and no fitting), scored like the detectors. It is the recall a
detector working from the matched-filter statistic can reach at precision
≥ 0.95 at this density. ``bound_recall_known_position_snr<k>``, the
analytic form: an ideal matched filter knows
s, b and σ and correlates with the unit-norm template g / ‖g‖: at a true
spot's position its output is N(d, 1) with d = (A / σ) ‖g‖ = SNR sqrt(Σ_j
exp(−|x_j − c|² / s²)) ≈ SNR sqrt(π) s (2.66 × SNR here), elsewhere it is a
smooth unit-variance Gaussian field whose local maxima above u number
E[N(u)] per frame (the Euler characteristic count that sets matched's
threshold, :func:`pipeline.locate.matched.expected_false_maxima`). At a
threshold u its recall is Φ(d − u) and its false detections E[N(u)]; the
bound is the largest Φ(d − u) with E[N(u)] ≤ (1/0.95 − 1) × n × Φ(d − u)
(precision ≥ 0.95 with n spots per frame). The value at the true position
stands for "known position prior"; a detector that takes the largest value
near the spot (as every local-maximum detector does, and the gate of 3 px
allows) gains on it at low SNR, which is why the empirical bound above is
higher. Both depend on the spot density (``bound_recall_known_position_snr1_5_by_spots``
gives the analytic one for other densities).

**3D, dense spheres** (``--size``³ volumes): hard spheres of radius r at
volume fraction φ (random overlap removal, then hard-sphere Monte Carlo),
drawn with a one-pixel partial-volume edge, blurred by a Gaussian of s.d. 1
px (as the ENS challenge's pre-blur) and an axially elongated PSF (s.d. 2.5
px along z, 1 px in y and x), background 40, each sphere's brightness
40 + SNR × 20 ± N(0, 10), Gaussian noise of s.d. 20 (so SNR is the
spheres' contrast over the noise s.d., as in 2D; the ENS challenge's own
SNR sets the noise to 255/SNR and the contrast by a CNR), clipped to uint8.
Scored by the ENS challenge's AP (science.md §5; :func:`pipeline.metrics.detection_ap`,
D = 2r, border removal), with precision and recall at t = 0.5, per volume
for φ in {0.25, 0.35, 0.45, 0.55} and (r, SNR) in {(4, 3), (5, 4), (7, 5)}.
trackpy: ``diameter`` (2r+1 in y, x; 2r+5 in z), ``separation`` tuned per
volume over {0.5, 0.75, 1} × diameter (best AP). matched: ``diameter`` 2r+1,
``sigma`` 0.6 × sqrt(r²/5 + PSF s.d.²) per axis (:func:`matched_sigma`, as
config/README.md advises for spheres), ``volume_fit`` with the radius and
the PSF (pre-blur folded in), everything else at its defaults (three
residual rounds in 3D); the full run also scores it without ``volume_fit``
(``matched_windows``: the window fits alone).

**learned** (when JAX, the extra ``trackflow[learn]``, is installed): the
detector is trained within the run, on trackflow's own simulator
(:mod:`pipeline.simulate.detection`: pixel-integrated Gaussians, not this
file's sampled ones), with what a user would state for these data: in 2D the
spot s.d. 1.5 px, SNR 1.2-5.5, the density ± 30 % (``learned_training_2d``
gives its settings, seconds and device); in 3D one detector per sphere
radius, with the PSF (pre-blur folded in), contrast SNR ± 1 and volume
fraction 0.2-0.55 (``learned_training_3d``). ``recall_snr<k>_learned`` and
``precision_snr<k>_learned``: at the threshold the detector chose for
precision 0.95 on its own simulated validation images (as the stage runs
it); ``recall_best_snr<k>_learned``: the best recall at precision ≥ 0.95
over the threshold; ``rmse_over_crlb_snr<k>_learned``, ``fps_learned``,
``ap3d_min_learned``, ``precision3d_min_learned`` as for matched.
``--quick`` trains briefly (600 steps in 2D, 150 in 3D, the radius-4 volumes
only: ``learned_3d_radii``); the full run uses the schema's defaults.

**End to end** (``--end-to-end``): a simulated NTA movie of 60 nm beads, too
dim for trackpy to give 100 tracks, sized through the real workflow by each
method (:mod:`detection_nta`, which also runs on its own); its figures go
under ``end_to_end`` and its targets into ``targets``.

Usage: ``python benchmarks/detection.py [--quick] [--end-to-end]``; the last
line printed is one JSON object. ``--quick`` (6 frames per SNR, 64³ volumes) runs in about
three minutes on two cores, training included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize, special
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPOT_SIGMA = 1.5
BACKGROUND = 100.0
NOISE = 10.0
GATE = 2 * SPOT_SIGMA
SNRS = (1.5, 2.0, 3.0, 5.0)
PRECISION = 0.95


def _key(snr: float) -> str:
    return f"{snr:g}".replace(".", "_")


# ---------------------------------------------------------------------------
# 2D simulator and scoring
# ---------------------------------------------------------------------------
def spot_positions(rng, shape, n, min_distance=9.0, margin=5.0):
    """Uniform random positions at least ``min_distance`` apart (random sequential addition)."""
    shape = np.asarray(shape, float)
    chosen = np.empty((0, 2))
    while len(chosen) < n:
        trial = rng.uniform(margin, shape - margin, size=(4 * n, 2))
        for p in trial:
            if len(chosen) == 0 or np.min(np.hypot(*(chosen - p).T)) >= min_distance:
                chosen = np.vstack([chosen, p])
                if len(chosen) == n:
                    break
    return chosen


def render_2d(rng, positions, snr, shape):
    image = np.full(shape, BACKGROUND)
    half = int(math.ceil(6 * SPOT_SIGMA))
    for y, x in positions:
        iy, ix = int(round(y)), int(round(x))
        ys = slice(max(iy - half, 0), min(iy + half + 1, shape[0]))
        xs = slice(max(ix - half, 0), min(ix + half + 1, shape[1]))
        yy, xx = np.mgrid[ys, xs]
        image[ys, xs] += snr * NOISE * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * SPOT_SIGMA**2))
    return (image + rng.normal(0, NOISE, shape)).astype(np.float32)


def ranked_matches(truth_by_frame, found, score):
    """Greedy matching by decreasing score: per detection (in score order) whether it
    took a truth (within GATE), and the squared error of those that did."""
    order = np.argsort(-score, kind="stable")
    hit = np.zeros(len(found), bool)
    err2 = np.full(len(found), np.nan)
    for frame, truth in truth_by_frame.items():
        rows = order[found["frame"].to_numpy()[order] == frame]
        if len(rows) == 0:
            continue
        tree = cKDTree(truth)
        used = np.zeros(len(truth), bool)
        pos = found[["y", "x"]].to_numpy()[rows]
        candidates = tree.query_ball_point(pos, GATE)
        for row, p, cand in zip(rows, pos, candidates):
            best, best_d = -1, np.inf
            for j in cand:
                if not used[j]:
                    d = float(np.sum((truth[j] - p) ** 2))
                    if d < best_d:
                        best, best_d = j, d
            if best >= 0:
                used[best] = True
                hit[row] = True
                err2[row] = best_d
    return order, hit, err2


def best_recall(order, hit, n_truth, precision=PRECISION):
    """Best recall at precision ≥ ``precision`` over score cuts, and the cut index."""
    tp = np.cumsum(hit[order])
    k = np.arange(1, len(order) + 1)
    ok = tp / k >= precision
    if not ok.any():
        return 0.0, 0
    i = int(np.flatnonzero(ok)[np.argmax(tp[ok])])
    return float(tp[i] / n_truth), i + 1


def crlb_per_axis(positions, snr, shape):
    """sqrt of the mean Cramér–Rao variance per axis over the spots (module docstring)."""
    amp, s = snr * NOISE, SPOT_SIGMA
    half = int(math.ceil(6 * s))
    variances = []
    for y, x in positions:
        iy, ix = int(round(y)), int(round(x))
        yy, xx = np.mgrid[max(iy - half, 0) : min(iy + half + 1, shape[0]), max(ix - half, 0) : min(ix + half + 1, shape[1])]
        dy, dx = yy - y, xx - x
        g = np.exp(-(dy**2 + dx**2) / (2 * s * s))
        grads = np.stack([amp * g * dy / s**2, amp * g * dx / s**2, g, np.ones_like(g), amp * g * (dy**2 + dx**2) / s**3])
        grads = grads.reshape(5, -1)
        fisher = grads @ grads.T / NOISE**2
        cov = np.linalg.inv(fisher)
        variances.append(0.5 * (cov[0, 0] + cov[1, 1]))
    return float(math.sqrt(np.mean(variances)))


def detection_bound(snr, n_spots, shape, precision=PRECISION):
    """Recall of the ideal matched filter at precision ≥ ``precision`` (module docstring)."""
    from pipeline.locate.matched import expected_false_maxima

    yy, xx = np.mgrid[-10:11, -10:11]
    d = snr * math.sqrt(float(np.exp(-(yy**2 + xx**2) / SPOT_SIGMA**2).sum()))
    lam = 1.0 / (2 * SPOT_SIGMA**2)  # a Gaussian template on white noise: covariance of s.d. s sqrt(2)

    def recall(u):
        return 0.5 * special.erfc((u - d) / math.sqrt(2))

    def slack(u):  # allowed false detections minus expected ones
        return (1 / precision - 1) * n_spots * recall(u) - expected_false_maxima(u, shape, (lam, lam))

    us = np.linspace(0.5, 12, 400)
    good = [u for u in us if slack(u) >= 0]
    if not good:
        return 0.0
    u0 = min(good)
    lower = us[max(np.searchsorted(us, u0) - 1, 0)]
    if lower < u0 and slack(lower) < 0:
        u0 = optimize.brentq(slack, lower, u0)
    return float(recall(u0))


def oracle_recall(frames, truths, n_truth):
    """The ideal matched filter on these frames: it knows s, b and σ, correlates
    the frame less b with the spot's shape, and ranks the local maxima (within
    ± 3 px) of the result by their value; best recall at precision ≥ 0.95 under
    the same matching as the detectors."""
    import pandas as pd

    from pipeline.locate.matched import _local_maxima

    yy, xx = np.mgrid[-8:9, -8:9]
    g = np.exp(-(yy**2 + xx**2) / (2 * SPOT_SIGMA**2))
    parts = []
    for f, image in enumerate(frames):
        z = ndimage.correlate(image.astype(np.float64) - BACKGROUND, g, mode="reflect") / (NOISE * np.linalg.norm(g))
        peaks = _local_maxima(z, (3.0, 3.0), 2.0)
        parts.append(pd.DataFrame({"frame": f, "y": peaks[:, 0].astype(float), "x": peaks[:, 1].astype(float),
                                   "score": z[tuple(peaks.T)]}))
    found = pd.concat(parts, ignore_index=True)
    order, hit, _ = ranked_matches(truths, found, found["score"].to_numpy())
    return best_recall(order, hit, n_truth)[0]


def learned_available() -> bool:
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


def train_learned_2d(n_spots, shape, steps):
    """The learned detector for the 2D frames: trained on trackflow's own
    simulator (pixel-integrated Gaussians, white noise) with this benchmark's
    spot s.d., SNR range and density, as a user would state them for a run."""
    from pipeline.locate import learned

    density = n_spots / (shape[0] * shape[1]) * 1e4
    settings = learned.training_settings(7, {"psf_sigma": SPOT_SIGMA, "snr": [1.2, 5.5],
                                             "density": [round(0.7 * density, 2), round(1.3 * density, 2)],
                                             "steps": steps})
    start = time.perf_counter()
    detector = learned.train(settings, 2)
    return detector, time.perf_counter() - start


def run_2d(frames_per_snr, n_spots, shape, seed, learned_steps=None):
    import pandas as pd
    import trackpy as tp

    from pipeline.locate import detect, locate_matched, threshold_for_false_rate
    from pipeline.locate.matched import MATCHED_OPTIONS

    tp.quiet()
    rng = np.random.default_rng(seed)
    out: dict = {}
    detector = None
    if learned_available():
        from pipeline.locate import learned

        detector, seconds = train_learned_2d(n_spots, shape, learned_steps)
        out["learned_training_2d"] = {"settings": detector.settings, "seconds": round(seconds, 1),
                                      "device": detector.provenance["device"],
                                      "validation_recall_0_95": detector.validation["recall_0_95"],
                                      "validation_precision_0_95": detector.validation["precision_0_95"],
                                      "threshold_0_95": detector.validation["threshold_0_95"]}
        print(f"2D learned: trained {detector.provenance['steps']} steps in {seconds:.0f} s", flush=True)
    timing_frames = None
    default_u = threshold_for_false_rate(float(MATCHED_OPTIONS["false_rate"]), tuple(shape), (SPOT_SIGMA,) * 2,
                                         float(MATCHED_OPTIONS["background_scale"]))
    out["matched_default_false_rate"] = MATCHED_OPTIONS["false_rate"]
    out["matched_default_threshold"] = round(default_u, 3)
    tuned = {}
    for snr in SNRS:
        k = _key(snr)
        truths, frames = {}, []
        for f in range(frames_per_snr):
            pos = spot_positions(rng, shape, n_spots)
            truths[f] = pos
            frames.append(render_2d(rng, pos, snr, shape))
        n_truth = sum(len(t) for t in truths.values())
        if snr == 3.0:
            timing_frames = (frames, truths)
        # trackpy: every feature (minmass 0), ranked by mass; diameter tuned too
        best = (-1.0, None)
        for diameter in (5, 7, 9):
            parts = []
            for f, image in enumerate(frames):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = tp.locate(image, diameter, minmass=0, engine="numba")
                found["frame"] = f
                parts.append(found)
            found = pd.concat(parts, ignore_index=True)
            order, hit, err2 = ranked_matches(truths, found, found["mass"].to_numpy())
            recall, cut = best_recall(order, hit, n_truth)
            if recall > best[0]:
                minmass = float(found["mass"].to_numpy()[order][cut - 1]) if cut else float("inf")
                kept = order[:cut]
                rmse = math.sqrt(np.nanmean(err2[kept][hit[kept]]) / 2) if cut and hit[kept].any() else float("nan")
                best = (recall, dict(diameter=diameter, minmass=minmass, rmse=rmse))
        out[f"recall_snr{k}_trackpy"] = round(best[0], 4)
        out[f"trackpy_tuned_snr{k}"] = {"diameter": best[1]["diameter"], "minmass": round(best[1]["minmass"], 2)}
        tuned[snr] = best[1]
        # matched: everything above a low threshold, ranked by score
        parts = []
        for f, image in enumerate(frames):
            found = detect(image, diameter=7, threshold=2.5)
            found["frame"] = f
            parts.append(found)
        low = pd.concat(parts, ignore_index=True)
        order, hit, err2 = ranked_matches(truths, low, low["score"].to_numpy())
        recall, cut = best_recall(order, hit, n_truth)
        out[f"recall_best_snr{k}_matched"] = round(recall, 4)
        out[f"threshold_best_snr{k}_matched"] = round(float(low["score"].to_numpy()[order][cut - 1]), 3) if cut else None
        # matched at its defaults, as the stage runs it
        parts = []
        for f, image in enumerate(frames):
            found = locate_matched(image, diameter=7)
            found["frame"] = f
            parts.append(found)
        found = pd.concat(parts, ignore_index=True)
        order, hit, err2 = ranked_matches(truths, found, found["mass"].to_numpy())
        out[f"recall_snr{k}_matched"] = round(float(hit.sum() / n_truth), 4)
        out[f"precision_snr{k}_matched"] = round(float(hit.sum() / max(len(found), 1)), 4)
        crlb = crlb_per_axis(np.concatenate(list(truths.values())), snr, shape)
        out[f"crlb_px_snr{k}"] = round(crlb, 4)
        if hit.any():
            rmse = math.sqrt(np.nanmean(err2[hit]) / 2)
            out[f"rmse_px_snr{k}_matched"] = round(rmse, 4)
            out[f"rmse_over_crlb_snr{k}_matched"] = round(rmse / crlb, 3)
        if math.isfinite(tuned[snr]["rmse"]):
            out[f"rmse_px_snr{k}_trackpy"] = round(tuned[snr]["rmse"], 4)
            out[f"rmse_over_crlb_snr{k}_trackpy"] = round(tuned[snr]["rmse"] / crlb, 3)
        if detector is not None:
            # learned: everything above a low threshold, ranked by the map's score (best cut), and as the
            # stage runs it (the threshold for precision 0.95 on the simulated validation images)
            maps, shifts = learned.heatmap(detector, np.stack(frames), offsets=True)
            parts = []
            for f, image in enumerate(frames):
                found = learned.detect_learned(image, detector, threshold=0.05, separation=(3.0, 3.0),
                                               probability=maps[f], offsets=shifts[f])
                found["frame"] = f
                parts.append(found)
            low = pd.concat(parts, ignore_index=True)
            order, hit, err2 = ranked_matches(truths, low, low["score"].to_numpy())
            recall, cut = best_recall(order, hit, n_truth)
            out[f"recall_best_snr{k}_learned"] = round(recall, 4)
            t95 = detector.threshold_for(PRECISION)
            at = low["score"].to_numpy() >= t95
            out[f"recall_snr{k}_learned"] = round(float(hit[at].sum() / n_truth), 4)
            out[f"precision_snr{k}_learned"] = round(float(hit[at].sum() / max(int(at.sum()), 1)), 4)
            if (hit & at).any():
                rmse = math.sqrt(np.nanmean(err2[hit & at]) / 2)
                out[f"rmse_px_snr{k}_learned"] = round(rmse, 4)
                out[f"rmse_over_crlb_snr{k}_learned"] = round(rmse / crlb, 3)
            print(f"2D SNR {snr}: learned {out[f'recall_snr{k}_learned']} (precision "
                  f"{out[f'precision_snr{k}_learned']}), learned best {out[f'recall_best_snr{k}_learned']}", flush=True)
        out[f"bound_recall_snr{k}"] = round(oracle_recall(frames, truths, n_truth), 4)
        out[f"bound_recall_known_position_snr{k}"] = round(detection_bound(snr, n_spots, tuple(shape)), 4)
        print(f"2D SNR {snr}: trackpy {out[f'recall_snr{k}_trackpy']}, matched default "
              f"{out[f'recall_snr{k}_matched']} (precision {out[f'precision_snr{k}_matched']}), "
              f"matched best {out[f'recall_best_snr{k}_matched']}, bound {out[f'bound_recall_snr{k}']}", flush=True)
    out["bound_recall_known_position_snr1_5_by_spots"] = {
        str(n): round(detection_bound(1.5, n, tuple(shape)), 4) for n in (50, 100, 200, 500, 1000)
    }
    out["gap_snr1_5_matched_best_to_bound"] = round(out["bound_recall_snr1_5"] - out["recall_best_snr1_5_matched"], 4)

    # speed, on the SNR-3 frames, one process, interleaved, best of three passes
    frames, _ = timing_frames
    t3 = tuned[3.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp.locate(frames[0], t3["diameter"], minmass=t3["minmass"], engine="numba")  # numba compile
    locate_matched(frames[0], diameter=7)
    best_tp, best_m = np.inf, np.inf
    for _ in range(3):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for image in frames:
                tp.locate(image, t3["diameter"], minmass=t3["minmass"], engine="numba")
        best_tp = min(best_tp, time.perf_counter() - start)
        start = time.perf_counter()
        for image in frames:
            locate_matched(image, diameter=7)
        best_m = min(best_m, time.perf_counter() - start)
    out["fps_trackpy"] = round(len(frames) / best_tp, 2)
    out["fps_matched"] = round(len(frames) / best_m, 2)
    if detector is not None:
        learned.locate_learned_frames(np.stack(frames[:2]), detector=detector, diameter=7)  # compile
        best_l = np.inf
        for _ in range(2):
            start = time.perf_counter()
            learned.locate_learned_frames(np.stack(frames), detector=detector, diameter=7)
            best_l = min(best_l, time.perf_counter() - start)
        out["fps_learned"] = round(len(frames) / best_l, 2)
        out["fps_learned_note"] = "network (JAX, all cores) on the frames in batches of 8, then one process for the fits"
    return out


# ---------------------------------------------------------------------------
# 3D simulator (dense hard spheres, ENS-like) and scoring
# ---------------------------------------------------------------------------
PSF = (2.5, 1.0, 1.0)
PRE_BLUR = 1.0
NOISE_3D = 20.0
BACKGROUND_3D = 40.0


def _overlap_free(phi, radius, box, rng, max_sweeps=3000):
    """Random centres at volume fraction ``phi`` in a periodic box, overlaps pushed apart."""
    box = np.asarray(box, float)
    n = int(round(phi * np.prod(box) / (4 / 3 * math.pi * radius**3)))
    x = rng.uniform(0, box, size=(n, 3))
    d0 = 2 * radius
    for _ in range(max_sweeps):
        pairs = cKDTree(x, boxsize=box).query_pairs(d0 * (1 - 1e-9), output_type="ndarray")
        if len(pairs) == 0:
            return x
        delta = x[pairs[:, 0]] - x[pairs[:, 1]]
        delta -= box * np.round(delta / box)
        dist = np.linalg.norm(delta, axis=1)
        push = ((d0 * 1.01 - dist) / 2)[:, None] * delta / np.maximum(dist, 1e-9)[:, None]
        move = np.zeros_like(x)
        np.add.at(move, pairs[:, 0], push)
        np.add.at(move, pairs[:, 1], -push)
        x = np.mod(x + move, box)
    raise RuntimeError(f"no overlap-free packing at phi={phi}")


def _monte_carlo(x, radius, box, rng, sweeps=30):
    """Hard-sphere Monte Carlo: every sphere proposes a move; accepted when the new
    position overlaps no old position and no other accepted new one."""
    box = np.asarray(box, float)
    d0 = 2 * radius
    for _ in range(sweeps):
        new = np.mod(x + rng.uniform(-0.3 * radius, 0.3 * radius, x.shape), box)
        hits = cKDTree(x, boxsize=box).query_ball_point(new, d0, return_length=True)
        own = np.linalg.norm(((new - x + box / 2) % box) - box / 2, axis=1) < d0
        cand = np.flatnonzero(hits - own.astype(int) == 0)
        if len(cand) > 1:
            pairs = cKDTree(new[cand], boxsize=box).query_pairs(d0, output_type="ndarray")
            bad = np.zeros(len(cand), bool)
            bad[pairs.ravel()] = True
            cand = cand[~bad]
        x = x.copy()
        x[cand] = new[cand]
    return x


def render_3d(rng, size, radius, phi, snr):
    shape = np.array([size] * 3)
    pad = int(math.ceil(radius + 4 * max(PSF) + 2))
    box = shape + 2 * pad
    centres = _monte_carlo(_overlap_free(phi, radius, box, rng), radius, box, rng) - pad
    centres = centres[np.all((centres > -radius - 1) & (centres < shape + radius), axis=1)]
    canvas = np.zeros(tuple(box), np.float32)
    contrast = rng.normal(snr * NOISE_3D, 10.0, len(centres))
    h = int(math.ceil(radius + 1))
    grid = np.arange(-h, h + 1)
    for c, level in zip(centres + pad, contrast):
        ic = np.floor(c).astype(int)
        sl = tuple(slice(i - h, i + h + 1) for i in ic)
        dz, dy, dx = np.meshgrid(*(grid + i - ci for i, ci in zip(ic, c)), indexing="ij")
        ball = np.clip(radius + 0.5 - np.sqrt(dz**2 + dy**2 + dx**2), 0, 1)
        canvas[sl] = np.maximum(canvas[sl], ball * level)
    canvas = ndimage.gaussian_filter(canvas, [math.hypot(PRE_BLUR, p) for p in PSF])
    core = canvas[tuple(slice(pad, pad + n) for n in shape)] + BACKGROUND_3D
    noisy = core + rng.normal(0, NOISE_3D, core.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), centres


def matched_sigma(radius, factor=0.6):
    """matched's sigma for spheres of ``radius`` (config/README.md): ``factor`` x the
    s.d. of the blurred sphere's image per axis, sqrt(r² / 5 + PSF s.d.²)."""
    return [round(factor * math.sqrt(radius**2 / 5 + math.hypot(PRE_BLUR, p) ** 2), 2) for p in PSF]


def train_learned_3d(radius, snr, steps):
    """A learned detector for the dense volumes of one radius: trained on
    trackflow's own simulator of packed hard spheres with this benchmark's
    PSF (pre-blur folded in), radius, contrast range and packing range."""
    from pipeline.locate import learned

    psf = [round(math.hypot(PRE_BLUR, p), 3) for p in PSF]
    settings = learned.training_settings(2 * radius + 1, {
        "psf_sigma": psf, "radius": radius, "snr": [snr - 1, snr + 1], "volume_fraction": [0.2, 0.55],
        "steps": steps})
    start = time.perf_counter()
    detector = learned.train(settings, 3)
    return detector, time.perf_counter() - start


def run_3d(size, seed, quick, learned_steps=None, learned_radii=(4, 5, 7)):
    import trackpy as tp

    from pipeline.locate import locate_matched
    from pipeline.metrics import detection_ap

    tp.quiet()
    rng = np.random.default_rng(seed + 1)
    volumes = []
    cases = [(phi, r, snr) for phi in (0.25, 0.35, 0.45, 0.55) for r, snr in ((4, 3), (5, 4), (7, 5))]
    seconds = {"trackpy": 0.0, "matched": 0.0, "matched_windows": 0.0, "learned": 0.0}
    psf = [round(math.hypot(PRE_BLUR, p), 3) for p in PSF]
    detectors, training = {}, {}
    if learned_available():
        from pipeline.locate import learned

        for r, snr in ((4, 3), (5, 4), (7, 5)):
            if r in learned_radii:
                detectors[r], spent = train_learned_3d(r, snr, learned_steps)
                training[str(r)] = {"seconds": round(spent, 1), "steps": detectors[r].provenance["steps"],
                                    "validation_recall_0_95": detectors[r].validation["recall_0_95"],
                                    "validation_precision_0_95": detectors[r].validation["precision_0_95"]}
                print(f"3D learned r {r}: trained {detectors[r].provenance['steps']} steps in {spent:.0f} s", flush=True)
    for phi, r, snr in cases:
        vol, truth = render_3d(rng, size, r, phi, snr)
        d = 2 * r + 1
        row = {"phi": phi, "radius": r, "snr": snr, "n_truth": None}
        # trackpy, separation tuned on the truth
        best = None
        start = time.perf_counter()
        for factor in (0.5, 0.75, 1.0):
            sep = (factor * (d + 4), factor * d, factor * d)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = tp.locate(vol, (d + 4, d, d), separation=sep, engine="numba")
            score = detection_ap(truth, found[["z", "y", "x"]].to_numpy(), diameter=2 * r, shape=vol.shape)
            if best is None or score["ap"] > best[0]["ap"]:
                best = (score, factor)
        seconds["trackpy"] += time.perf_counter() - start
        row["n_truth"] = best[0]["n_truth"]
        row["trackpy"] = {"ap": round(best[0]["ap"], 4), "precision": round(best[0]["precision_0_5"], 4),
                          "recall": round(best[0]["recall_0_5"], 4), "separation_factor": best[1]}
        # matched as config/README.md says to set it for spheres: the filter below the
        # sphere's width, and the whole-frame fit with the radius and the PSF
        start = time.perf_counter()
        found = locate_matched(vol, diameter=d, sigma=matched_sigma(r), volume_fit={"radius": r, "psf_sigma": psf})
        seconds["matched"] += time.perf_counter() - start
        score = detection_ap(truth, found[["z", "y", "x"]].to_numpy(), diameter=2 * r, shape=vol.shape)
        row["matched"] = {"ap": round(score["ap"], 4), "precision": round(score["precision_0_5"], 4),
                          "recall": round(score["recall_0_5"], 4)}
        if not quick:  # the window fits alone, as before volume_fit
            start = time.perf_counter()
            found = locate_matched(vol, diameter=d, sigma=matched_sigma(r))
            seconds["matched_windows"] += time.perf_counter() - start
            score = detection_ap(truth, found[["z", "y", "x"]].to_numpy(), diameter=2 * r, shape=vol.shape)
            row["matched_windows"] = {"ap": round(score["ap"], 4), "precision": round(score["precision_0_5"], 4),
                                      "recall": round(score["recall_0_5"], 4)}
        if r in detectors:
            start = time.perf_counter()
            found = learned.locate_learned(vol, detectors[r], diameter=d)
            seconds["learned"] += time.perf_counter() - start
            score = detection_ap(truth, found[["z", "y", "x"]].to_numpy(), diameter=2 * r, shape=vol.shape)
            row["learned"] = {"ap": round(score["ap"], 4), "precision": round(score["precision_0_5"], 4),
                              "recall": round(score["recall_0_5"], 4)}
            print(f"3D phi {phi} r {r} SNR {snr}: learned AP {row['learned']['ap']} "
                  f"(P {row['learned']['precision']}, R {row['learned']['recall']})", flush=True)
        print(f"3D phi {phi} r {r} SNR {snr} (n {row['n_truth']}): trackpy AP {row['trackpy']['ap']} "
              f"(P {row['trackpy']['precision']}, R {row['trackpy']['recall']}); matched AP {row['matched']['ap']} "
              f"(P {row['matched']['precision']}, R {row['matched']['recall']})", flush=True)
        volumes.append(row)
    out = {"volumes_3d": volumes, "volume_size_3d": size}
    for method in ("trackpy", "matched", "matched_windows", "learned"):
        scored = [v for v in volumes if method in v]
        if not scored:
            continue
        out[f"ap3d_min_{method}"] = min(v[method]["ap"] for v in scored)
        out[f"ap3d_mean_{method}"] = round(float(np.mean([v[method]["ap"] for v in scored])), 4)
        out[f"precision3d_min_{method}"] = min(v[method]["precision"] for v in scored)
        out[f"recall3d_min_{method}"] = min(v[method]["recall"] for v in scored)
        out[f"seconds_per_volume_3d_{method}"] = round(seconds[method] / len(scored), 3)
    if detectors:
        out["learned_training_3d"] = training
        out["learned_3d_radii"] = sorted(detectors)
        out["ap3d_min_matched_on_learned_radii"] = min(v["matched"]["ap"] for v in volumes if v["radius"] in detectors)
    out["seconds_per_volume_3d_trackpy_note"] = "three separations per volume"
    out["matched_sigma_3d"] = {str(r): matched_sigma(r) for r in (4, 5, 7)}
    worst = min(volumes, key=lambda v: v["matched"]["ap"])
    out["ap3d_worst_case_matched"] = {k: worst[k] for k in ("phi", "radius", "snr")}
    return out


def method_targets(out: dict, method: str) -> dict[str, bool]:
    """The issue's 2D targets for one method: recall at its default threshold
    and at its best, precision at the default, and the position error."""
    return {
        "recall_snr1_5_ge_0_6_default": out[f"recall_snr1_5_{method}"] >= 0.6,
        "recall_snr2_ge_0_92_default": out[f"recall_snr2_{method}"] >= 0.92,
        "recall_snr3_ge_0_97_default": out[f"recall_snr3_{method}"] >= 0.97,
        "precision_default_ge_0_95": min(out[f"precision_snr{_key(s)}_{method}"] for s in SNRS) >= 0.95,
        "recall_snr1_5_ge_0_6_best": out[f"recall_best_snr1_5_{method}"] >= 0.6,
        "recall_snr2_ge_0_92_best": out[f"recall_best_snr2_{method}"] >= 0.92,
        "recall_snr3_ge_0_97_best": out[f"recall_best_snr3_{method}"] >= 0.97,
        "rmse_le_1_3_crlb_snr_ge_3": all(
            out.get(f"rmse_over_crlb_snr{_key(s)}_{method}", np.inf) <= 1.3 for s in (3.0, 5.0)
        ),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 frames per SNR, 64^3 volumes (about 2 minutes)")
    parser.add_argument("--frames", type=int, help="2D frames per SNR (default 6 quick, 20 otherwise)")
    parser.add_argument("--spots", type=int, default=200, help="spots per 512x512 frame (default %(default)s)")
    parser.add_argument("--size", type=int, help="3D volume edge, voxels (default 64 quick, 96 otherwise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--end-to-end", action="store_true",
                        help="also size a dim 60 nm NTA movie through the workflow (benchmarks/detection_nta.py)")
    parser.add_argument("--learned-steps-2d", type=int, help="training steps of the learned 2D detector "
                        "(default 600 quick, the schema's default otherwise)")
    parser.add_argument("--learned-steps-3d", type=int, help="training steps of each learned 3D detector "
                        "(default 150 quick, the schema's default otherwise)")
    args = parser.parse_args(argv)
    frames = args.frames or (6 if args.quick else 20)
    size = args.size or (64 if args.quick else 96)
    started = time.perf_counter()
    out: dict = {
        "benchmark": "detection",
        "quick": bool(args.quick),
        "frames_per_snr": frames,
        "spots_per_frame": args.spots,
        "frame_shape": [512, 512],
        "load_average_at_start": list(os.getloadavg()),
    }
    steps_2d = args.learned_steps_2d or (600 if args.quick else None)
    steps_3d = args.learned_steps_3d or (150 if args.quick else None)
    out["learned"] = learned_available()
    out.update(run_2d(frames, args.spots, (512, 512), args.seed, steps_2d))
    out.update(run_3d(size, args.seed, args.quick, steps_3d, (4,) if args.quick else (4, 5, 7)))
    out["targets"] = {
        **method_targets(out, "matched"),
        "matched_at_least_as_fast_as_trackpy": out["fps_matched"] >= out["fps_trackpy"],
        "ap3d_ge_0_9_every_volume": out["ap3d_min_matched"] >= 0.9,
        "precision3d_ge_0_95_every_volume": out["precision3d_min_matched"] >= 0.95,
    }
    if out["learned"]:
        best = {s: max(out[f"recall_best_snr{_key(s)}_matched"], out[f"recall_best_snr{_key(s)}_learned"])
                for s in SNRS}
        out["targets_learned"] = {
            **method_targets(out, "learned"),
            "ap3d_ge_0_9_every_volume_learned": out.get("ap3d_min_learned", 0) >= 0.9,
            "precision3d_ge_0_95_every_volume_learned": out.get("precision3d_min_learned", 0) >= 0.95,
        }
        out["targets_better_of_matched_and_learned"] = {
            "recall_snr1_5_ge_0_6_best": best[1.5] >= 0.6,
            "recall_snr2_ge_0_92_best": best[2.0] >= 0.92,
            "recall_snr3_ge_0_97_best": best[3.0] >= 0.97,
        }
    if args.end_to_end:
        import detection_nta  # beside this script

        end_to_end = detection_nta.main(["--quick"] if args.quick else [])
        out["targets"].update({f"end_to_end_{k}": v for k, v in end_to_end.pop("targets").items()})
        out["end_to_end"] = end_to_end
    out["load_average_at_end"] = list(os.getloadavg())
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
