"""ISBI 2012 tracking scores (Chenouard et al. 2014) on hand-made cases.

Two ground-truth tracks, A along y = 0 and B along y = 10, four frames each,
x = 0, 1, 2, 3. With the gate ε = 5, d(X, ∅) = ε · 8 detections = 40.
"""

import math

import pandas as pd
import pytest

from pipeline.metrics import isbi_scores

EPS = 5.0


def _track(pid, y, frames=range(4), x0=0.0, dy=0.0):
    return pd.DataFrame(
        {"frame": list(frames), "y": [y + dy] * len(frames), "x": [x0 + f for f in frames], "particle": pid}
    )


@pytest.fixture
def truth():
    return pd.concat([_track(0, 0.0), _track(1, 10.0)], ignore_index=True)


def test_perfect_tracks_score_one(truth):
    est = truth.assign(particle=truth["particle"] + 100)  # ids need not match
    s = isbi_scores(truth, est, gate=EPS)
    assert s["alpha"] == pytest.approx(1.0)
    assert s["beta"] == pytest.approx(1.0)
    assert s["jsc"] == pytest.approx(1.0)
    assert s["jsc_theta"] == pytest.approx(1.0)
    assert s["rmse"] == pytest.approx(0.0)
    assert (s["tp"], s["fn"], s["fp"]) == (8, 0, 0)


def test_swapped_pair(truth):
    # estimate 1 follows A in frames 0-1 then B in 2-3; estimate 2 the reverse
    est = pd.concat(
        [
            _track(1, 0.0, frames=[0, 1]), _track(1, 10.0, frames=[2, 3]),
            _track(2, 10.0, frames=[0, 1]), _track(2, 0.0, frames=[2, 3]),
        ],
        ignore_index=True,
    )
    s = isbi_scores(truth, est, gate=EPS)
    # each truth track pairs with one estimate: 2 frames at 0, 2 frames beyond the gate (ε each)
    # d(X,Y) = 2 · 2ε = 20; α = 1 − 20/40
    assert s["d_xy"] == pytest.approx(20.0)
    assert s["alpha"] == pytest.approx(0.5)
    assert s["beta"] == pytest.approx(0.5)  # no spurious tracks: (40 − 20)/(40 + 0)
    assert s["jsc"] == pytest.approx(4 / 12)  # TP 4, FN 4, FP 4
    assert s["jsc_theta"] == pytest.approx(1.0)


def test_spurious_track_lowers_beta_not_alpha(truth):
    extra = _track(9, 50.0, frames=[0, 1, 2])
    s = isbi_scores(truth, pd.concat([truth, extra], ignore_index=True), gate=EPS)
    assert s["alpha"] == pytest.approx(1.0)
    assert s["d_spurious"] == pytest.approx(15.0)
    assert s["beta"] == pytest.approx(40 / 55)  # (40 − 0)/(40 + 3ε)
    assert s["jsc"] == pytest.approx(8 / 11)
    assert s["jsc_theta"] == pytest.approx(2 / 3)
    assert s["tracks_fp"] == 1


def test_missing_track(truth):
    s = isbi_scores(truth, truth[truth["particle"] == 0], gate=EPS)
    assert s["alpha"] == pytest.approx(0.5)  # 1 − 4ε/8ε
    assert s["beta"] == pytest.approx(0.5)
    assert s["jsc"] == pytest.approx(0.5)
    assert s["jsc_theta"] == pytest.approx(0.5)
    assert s["tracks_fn"] == 1


def test_offset_within_gate_and_rmse(truth):
    est = truth.assign(y=truth["y"] + 3.0)
    s = isbi_scores(truth, est, gate=EPS)
    assert s["alpha"] == pytest.approx(1 - 3 / 5)
    assert s["rmse"] == pytest.approx(3.0)
    assert s["jsc"] == pytest.approx(1.0)
    # a larger offset than the gate loses every detection and every pairing
    far = isbi_scores(truth, truth.assign(x=truth["x"] + 6.0), gate=EPS)
    assert far["alpha"] == pytest.approx(0.0)
    assert far["jsc"] == pytest.approx(0.0)
    assert math.isnan(far["rmse"])


def test_broken_track_pairs_the_longer_piece(truth):
    # A split in two pieces of 3 and 1 frames: the 3-frame piece pairs (cost ε for
    # the frame it lacks), the 1-frame piece is spurious
    est = pd.concat(
        [_track(5, 0.0, frames=[0, 1, 2]), _track(6, 0.0, frames=[3]), _track(1, 10.0)], ignore_index=True
    )
    s = isbi_scores(truth, est, gate=EPS)
    assert s["d_xy"] == pytest.approx(EPS)
    assert s["alpha"] == pytest.approx(1 - 5 / 40)
    assert s["beta"] == pytest.approx(35 / 45)
    assert s["jsc"] == pytest.approx(7 / 9)  # TP 7, FN 1, FP 1


def test_3d_positions_are_used():
    truth = pd.DataFrame({"frame": [0, 1], "z": [0.0, 0.0], "y": [0.0, 0.0], "x": [0.0, 1.0], "particle": 0})
    est = truth.assign(z=4.0)
    s = isbi_scores(truth, est, gate=EPS)
    assert s["rmse"] == pytest.approx(4.0)
    assert s["alpha"] == pytest.approx(1 - 4 / 5)


def test_bad_input_names_the_problem(truth):
    with pytest.raises(ValueError, match="particle"):
        isbi_scores(truth, truth.drop(columns="particle"))
    dup = pd.concat([truth, truth.iloc[[0]]], ignore_index=True)
    with pytest.raises(ValueError, match="frame 0"):
        isbi_scores(truth, dup)
    with pytest.raises(ValueError, match="gate"):
        isbi_scores(truth, truth, gate=0)


# --- detection: the ENS challenge's AP ---------------------------------------------

import numpy as np  # noqa: E402

from pipeline.metrics import detection_ap, greedy_match  # noqa: E402


def _lattice(spacing=10.0, n=6, offset=5.0):
    g = np.arange(n) * spacing + offset
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)


def test_detection_ap_is_one_for_exact_centres_and_product_of_p_and_r_otherwise():
    truth = _lattice()
    shape = (60, 60, 60)
    perfect = detection_ap(truth, truth, diameter=8, shape=shape)
    assert perfect["ap"] == pytest.approx(1.0) and perfect["precision_0_5"] == 1.0
    # half the truths found exactly, plus as many false detections far from any truth
    found = np.vstack([truth[::2], truth[::2] + 5.0])
    scores = detection_ap(truth, found, diameter=8, shape=shape)
    p, r = scores["precision_0_5"], scores["recall_0_5"]
    assert scores["ap"] == pytest.approx(p * r)
    assert 0 < p < 1 and 0 < r < 1


def test_detection_ap_penalises_spread_localisation_error_and_removes_the_border():
    truth = _lattice()
    shape = (60, 60, 60)
    # every detection 0.25 D off: all pass the thresholds t < 0.75 and fail the rest, so AP = P R
    same = detection_ap(truth, truth + np.array([0.0, 0.0, 2.0]) * np.where(truth[:, 2:] < 50, 1, -1),
                        diameter=8, shape=shape)
    assert same["ap"] == pytest.approx(1.0) and same["recall"][-2] == 0.0
    # errors spread from 0 to D/2: precision and recall fall threshold by threshold, and AP below P R
    rng = np.random.default_rng(0)
    direction = rng.normal(size=truth.shape)
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    inner = np.all((truth > 10) & (truth < 50), axis=1)[:, None]  # moved ones stay clear of the border
    spread = truth + inner * direction * rng.uniform(0, 4, len(truth))[:, None]
    scores = detection_ap(truth, spread, diameter=8, shape=shape)
    assert scores["recall_0_5"] == 1.0 and 0.4 < scores["ap"] < 0.9
    # truths within D/2 of a face are not scored (the lattice's outer layer at 5 px, D/2 = 5.5)
    border = detection_ap(truth, truth[np.all((truth > 6) & (truth < 50), axis=1)], diameter=11, shape=shape)
    assert border["ap"] == pytest.approx(1.0) and border["n_truth"] == 64


def test_greedy_match_takes_the_closest_pairs_first():
    i, j, d = greedy_match(np.array([[0.0, 0.0], [3.0, 0.0]]), np.array([[1.0, 0.0], [2.5, 0.0]]), 2.0)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 0), (1, 1)]
    assert greedy_match(np.empty((0, 2)), np.array([[1.0, 1.0]]), 2.0)[0].size == 0
