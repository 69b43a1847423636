"""The flow linker (``link.method: flow``): flow-interpolated, appearance-aware
linking after Nellie (docs/science.md §3)."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import trackpy
from skimage.measure import moments_central, moments_hu, moments_normalized

from pipeline.io.movie import write_movie
from pipeline.io.schema import check_section, section_defaults
from pipeline.io.tables import read_table, table_metadata, write_table
from pipeline.link.appearance import appearance_columns, appearance_features, hu_invariants
from pipeline.link.flow import (
    assign,
    candidate_pairs,
    interpolate_flow,
    link_flow,
)
from pipeline.metrics import isbi_scores
from pipeline.simulate import NTASimulator


def _points(n_frames, start, velocity, sigma, seed=0):
    """Truth table of point particles: positions (n, ndim), a velocity
    function (positions -> displacement per frame), Brownian σ per axis."""
    rng = np.random.default_rng(seed)
    pos = np.asarray(start, dtype=float)
    cols = ["z", "y", "x"][3 - pos.shape[1] :]
    rows = []
    for t in range(n_frames):
        rows.append(pd.DataFrame({"frame": t, **{c: pos[:, k] for k, c in enumerate(cols)}, "particle": np.arange(len(pos))}))
        pos = pos + velocity(pos, t) + rng.normal(0, sigma, pos.shape)
    return pd.concat(rows, ignore_index=True)


# --- linking quality -------------------------------------------------------


def test_vortex_where_nearest_fails():
    # Rankine vortex whose largest step per frame (15 px) is about the mean
    # nearest-neighbour spacing; truth positions from the project's simulator.
    sim = NTASimulator(
        shape=(256, 256), n_frames=20, n_particles=60, diameters_nm=(200.0,), pixel_size_um=0.2,
        frame_interval_s=1 / 30, exposure_s=0.005, flow="vortex", flow_speed_um_s=15 * 0.2 * 30, seed=3,
    )
    truth = sim.truth
    truth = truth[truth["visible"]].reset_index(drop=True)
    rng = np.random.default_rng(0)
    features = truth[["frame", "y", "x"]].copy()
    features[["y", "x"]] += rng.normal(0, 0.1, (len(features), 2))
    flow_tracks, flow = link_flow(features, search_range=8, memory=0, gate=20, appearance=False)
    trackpy.quiet()
    nearest = trackpy.link(features, 8, memory=0)
    # score against the linkable truth: tracks split where a particle left
    # the field of view for a while (no linker with memory 0 bridges that)
    truth = truth.sort_values(["particle", "frame"])
    new_track = (truth["particle"].diff() != 0) | (truth["frame"].diff() > 1)
    truth["particle"] = np.cumsum(new_track.to_numpy())
    a_flow = isbi_scores(truth, flow_tracks)["alpha"]
    a_near = isbi_scores(truth, nearest)["alpha"]
    assert a_flow > 0.9
    assert a_near < 0.5
    # the learned flow matches the simulator's
    # the interpolated flow at each feature matches the simulator's
    start = flow_tracks[["y", "x"]].to_numpy()
    true_step = sim.flow_velocity(start + 0.5 * sim.flow_velocity(start))
    err = np.hypot(*(flow_tracks[["flow_dy", "flow_dx"]].to_numpy() - true_step).T)
    assert np.median(err) < 1.0  # px, against steps of up to 15 px and Brownian σ of 1.9 px


def test_pure_brownian_matches_trackpy():
    rng = np.random.default_rng(1)
    truth = _points(15, rng.uniform(0, 200, (150, 2)), lambda p, t: 0.0, sigma=1.0, seed=1)
    features = truth.drop(columns="particle")
    tracks, _ = link_flow(features, search_range=5, appearance=False)
    trackpy.quiet()
    nearest = trackpy.link(features, 5)
    a_flow = isbi_scores(truth, tracks)["alpha"]
    a_near = isbi_scores(truth, nearest)["alpha"]
    assert a_flow >= a_near - 0.02
    assert a_flow > 0.95


def test_gap_closing_with_memory():
    truth = _points(6, [[10.0, 10.0], [60.0, 60.0]], lambda p, t: np.array([0.0, 2.0]), sigma=0.0)
    features = truth.drop(index=truth.index[(truth["frame"] == 2) & (truth["particle"] == 0)])
    bridged, _ = link_flow(features.drop(columns="particle"), search_range=3, memory=1, appearance=False)
    assert bridged["particle"].nunique() == 2
    broken, _ = link_flow(features.drop(columns="particle"), search_range=3, memory=0, appearance=False)
    assert broken["particle"].nunique() == 3


def test_backward_pass_fills_what_forward_missed():
    # A drift that starts too fast for the gate and then slows down: the
    # forward pass cannot bootstrap the first steps; the backward pass
    # learns the flow where it is slow and follows it back.
    steps = [12.0, 12.0, 10.0, 8.0, 6.0, 4.0, 2.0, 2.0, 2.0]
    start = np.column_stack([np.repeat(np.arange(20.0, 200.0, 40.0), 5), np.tile(np.arange(20.0, 200.0, 40.0), 5)])
    truth = _points(len(steps) + 1, start, lambda p, t: np.array([0.0, steps[min(t, len(steps) - 1)]]), sigma=0.2)
    features = truth.drop(columns="particle")
    forward, _ = link_flow(features, search_range=4, gate=8, flow_window=0, appearance=False)
    both, _ = link_flow(features, search_range=4, gate=8, flow_window=0, appearance=False, backward=True)
    assert forward["particle"].nunique() > len(start)
    assert both["particle"].nunique() == len(start)
    assert isbi_scores(truth, both)["alpha"] == pytest.approx(1.0)


def test_3d_anisotropic_voxels_in_micrometres():
    # z pixels are 5x the lateral ones; Brownian σ 0.1 µm per axis and a
    # drift of 0.5 µm/frame along x; search range 0.5 µm.
    px = np.array([0.5, 0.1, 0.1])
    rng = np.random.default_rng(2)
    start_um = rng.uniform(0, 20, (40, 3))
    truth_um = _points(10, start_um, lambda p, t: np.array([0.0, 0.0, 0.5]), sigma=0.1, seed=2)
    truth = truth_um.copy()
    truth[["z", "y", "x"]] = truth_um[["z", "y", "x"]].to_numpy() / px
    features = truth.drop(columns="particle")
    tracks, flow = link_flow(features, search_range=0.5, gate=1.0, pixel_size_um=px, appearance=False)
    assert isbi_scores(truth, tracks, gate=2.0)["alpha"] > 0.97
    # flow columns and vectors are in pixels per frame: 0.5 µm = 5 px along x
    assert tracks["flow_dx"].median() == pytest.approx(5.0, abs=0.3)
    assert tracks["flow_dz"].abs().median() < 0.3
    assert list(flow.columns[:7]) == ["frame", "z", "y", "x", "dz", "dy", "dx"]
    # measured in pixels instead, the same search range misses the steps
    lost, _ = link_flow(features, search_range=0.5, gate=1.0, appearance=False)
    assert lost["particle"].nunique() > 5 * tracks["particle"].nunique()


def test_row_flow_leaves_each_particles_own_diffusion():
    # Uniform drift 4 px/frame plus Brownian σ 1 px: the per-row flow must be
    # the drift, not the particle's own step, or subtracting it would erase
    # the diffusion the size stage measures.
    rng = np.random.default_rng(3)
    truth = _points(20, rng.uniform(0, 300, (200, 2)), lambda p, t: np.array([0.0, 4.0]), sigma=1.0, seed=3)
    tracks, _ = link_flow(truth.drop(columns="particle"), search_range=5, appearance=False)
    t = tracks.sort_values(["particle", "frame"])
    nxt = t.groupby("particle")[["x", "frame"]].shift(-1)
    one = (nxt["frame"] - t["frame"]) == 1
    residual = (nxt["x"] - t["x"] - t["flow_dx"])[one]
    assert t["flow_dx"].mean() == pytest.approx(4.0, abs=0.1)
    assert residual.var() == pytest.approx(1.0, rel=0.15)  # σ² per axis survives


# --- building blocks -------------------------------------------------------


def test_kd_gating_stays_sparse_on_a_large_frame():
    # 20,000 features per frame: a dense cost matrix would need 3.2 GB.
    rng = np.random.default_rng(4)
    n = 20_000
    a = rng.uniform(0, 3000, (n, 2))
    b = a + rng.normal(0, 1.0, a.shape)
    tracemalloc.start()
    i, j, d = candidate_pairs(a, b, 4.0)
    links, _ = assign(i, j, d**2, n, n)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(i) < 5 * n  # pairs, not n²
    assert peak < 100 * 2**20
    assert links.sum() > 0.97 * n
    assert np.mean(i[links] == j[links]) > 0.97
    # the whole linker on the same frames, within the same memory bound
    features = pd.DataFrame({"frame": np.repeat([0, 1], n), "y": np.r_[a[:, 0], b[:, 0]], "x": np.r_[a[:, 1], b[:, 1]]})
    tracemalloc.start()
    tracks, _ = link_flow(features, search_range=4.0, appearance=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 400 * 2**20
    assert tracks["particle"].nunique() < 1.05 * n


def test_assignment_one_to_one_versus_mutual_cheapest():
    # sources A=0, B=1; targets X=0, Y=1; B's cheapest partner is X too
    i = np.array([0, 1, 1])
    j = np.array([0, 0, 1])
    cost = np.array([0.1, 0.2, 0.5])
    links, vectors = assign(i, j, cost, 2, 2, method="hungarian")
    assert links.tolist() == [True, False, True]  # A-X and B-Y: one-to-one, both linked
    assert vectors.tolist() == links.tolist()
    links, vectors = assign(i, j, cost, 2, 2, method="mutual_cheapest")
    assert links.tolist() == [True, False, False]  # only A-X is cheapest both ways
    assert vectors.tolist() == [True, True, True]  # Nellie's flow: each one's cheapest, many-to-one
    # the cut-off: a pair at or above it is never linked
    links, _ = assign(i, j, cost, 2, 2, cost_cutoff=0.5)
    assert links.tolist() == [True, False, False]
    # one-to-one trades off: linking both beats the single cheapest pair
    i2, j2 = np.array([0, 0, 1]), np.array([0, 1, 0])
    links, _ = assign(i2, j2, np.array([0.0, 1.0, 1.0]), 2, 2, cost_cutoff=3.0)
    assert links.tolist() == [False, True, True]
    with pytest.raises(ValueError, match="assignment"):
        assign(i, j, cost, 2, 2, method="greedy")


def test_flow_interpolation_weights():
    flow = pd.DataFrame(
        {"frame": 0, "y": [0.0, 0.0, 0.0], "x": [1.0, 3.0, 50.0], "dy": [0.0, 0.0, 0.0],
         "dx": [1.0, 4.0, 100.0], "cost": [0.0, 0.0, 0.0]}
    )
    # weight 1/distance: the near vector (d=1) counts 3x the far one (d=3);
    # the one beyond the radius not at all
    got = interpolate_flow(flow, [[0.0, 0.0]], radius=10)
    assert got[0, 1] == pytest.approx((1.0 * 1 + 4.0 / 3) / (1 + 1 / 3))
    # an exact hit wins outright
    assert interpolate_flow(flow, [[0.0, 3.0]], radius=10)[0, 1] == pytest.approx(4.0)
    # a cheaper match weighs more: exp(−cost)
    cheap = flow.assign(cost=[2.0, 0.0, 0.0])
    got = interpolate_flow(cheap, [[0.0, 0.0]], radius=10)[0, 1]
    w1, w2 = math.exp(-2.0) / 1, 1 / 3
    assert got == pytest.approx((w1 * 1 + w2 * 4) / (w1 + w2))
    # nothing within the radius: the fill value
    assert np.isnan(interpolate_flow(flow, [[200.0, 200.0]], radius=10, fill=np.nan)).all()
    # physical units: 10 px of 0.5 µm is 5 µm, outside a 4 µm radius
    assert interpolate_flow(flow, [[0.0, -9.0]], radius=4.0, pixel_size_um=0.5)[0].tolist() == [0.0, 0.0]


def test_linear_interpolation_is_exact_for_rotation_at_the_edge():
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 100, (400, 2))
    omega = 0.1
    field = pd.DataFrame({"y": p[:, 0], "x": p[:, 1], "dy": omega * (p[:, 1] - 50), "dx": -omega * (p[:, 0] - 50), "cost": 0.0})
    corner = np.array([[2.0, 2.0]])
    truth = [omega * (2 - 50), -omega * (2 - 50)]
    from pipeline.flowfield import FlowField

    ff = FlowField(p, field[["dy", "dx"]].to_numpy())
    linear = ff.at(corner, 30, order=1)[0]
    mean = ff.at(corner, 30, order=0)[0]
    assert linear == pytest.approx(truth, abs=0.1)
    assert np.abs(mean - truth).max() > 0.5  # the mean is pulled inwards


def test_appearance_features_match_skimage_hu():
    rng = np.random.default_rng(6)
    windows = rng.uniform(0, 1, (4, 9, 11))
    ours = hu_invariants(windows)
    ref = np.array([moments_hu(moments_normalized(moments_central(w), 3))[:6] for w in windows])
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_appearance_features_2d_and_3d():
    yy, xx = np.mgrid[0:40, 0:40]
    # an elongated, lopsided spot (a symmetric one has h3..h6 = 0)
    frame = 10 + 100 * np.exp(-((yy - 20) ** 2 / 8 + (xx - 12) ** 2 / 2)) + 40 * np.exp(-((yy - 22) ** 2 + (xx - 13) ** 2) / 2)
    frames = np.stack([frame, frame.T])
    feats = pd.DataFrame({"frame": [0, 1], "y": [20.0, 12.0], "x": [12.0, 20.0], "size": [2.0, 2.0]}, index=[7, 9])
    out = appearance_features(frames, 0, feats)
    assert list(out.index) == [7, 9]
    assert set(appearance_columns(2)) <= set(out.columns)
    # rotating the spot by 90° leaves the invariants unchanged
    np.testing.assert_allclose(out.loc[7, appearance_columns(2)], out.loc[9, appearance_columns(2)], rtol=1e-6)
    # a later chunk only handles its own frames
    assert appearance_features(frames[1:], 1, feats).index.tolist() == [9]
    vol = np.zeros((1, 12, 20, 20))
    vol[0, 4:8, 8:12, 6:14] = 5.0
    f3 = pd.DataFrame({"frame": [0], "z": [6.0], "y": [10.0], "x": [10.0]})
    out3 = appearance_features(vol, 0, f3, window=(3, 5, 5))
    assert len(appearance_columns(3)) == 20 and set(appearance_columns(3)) <= set(out3.columns)
    assert np.isfinite(out3[appearance_columns(3)].to_numpy()).all()


def test_appearance_decides_a_near_tie_in_distance():
    # A bright and a dim particle pass each other 1.8 px apart with steps of
    # 2 px: by position alone they swap (the wrong partner is 1.8 px away,
    # the right one 2 px). Bystanders with jittered steps give the distance
    # z-scores their spread; the intensity difference of the swap stands out.
    rng = np.random.default_rng(8)
    n = 12
    shape = (60, 90)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    frames = np.full((n,) + shape, 10.0)
    bystanders = np.column_stack([np.full(6, 50.0), np.arange(6) * 14.0 + 5.0])
    rows = []
    for t in range(n):
        spots = [(20.0, 20.0 + 2.0 * t, 220.0, 0), (21.8, 42.0 - 2.0 * t, 50.0, 1)]
        spots += [(y, x, 100.0, 2 + k) for k, (y, x) in enumerate(bystanders)]
        for y, x, amp, pid in spots:
            frames[t] += amp * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 2.0)
            rows.append({"frame": t, "y": y, "x": x, "size": 1.2, "particle": pid})
        bystanders = bystanders + rng.normal(0, 1.2, bystanders.shape)
    truth = pd.DataFrame(rows)
    features = truth.drop(columns="particle")
    options = dict(search_range=4, gate=4, flow_radius=0.5, window=2)
    with_appearance, _ = link_flow(features, frames, **options)
    position_only, _ = link_flow(features, frames, appearance=False, **options)
    crossing = truth[truth["particle"] < 2]
    assert isbi_scores(crossing, with_appearance.loc[crossing.index])["alpha"] == pytest.approx(1.0)
    assert isbi_scores(crossing, position_only.loc[crossing.index])["alpha"] < 0.8
    assert {"intensity_mean", "hu1"} <= set(with_appearance.columns)


# --- inputs and the stage entry -------------------------------------------


def test_bad_input_is_named():
    good = pd.DataFrame({"frame": [0, 1], "y": [1.0, 1.5], "x": [1.0, 1.0]})
    with pytest.raises(ValueError, match="empty"):
        link_flow(good.iloc[:0], search_range=3, appearance=False)
    with pytest.raises(ValueError, match="index 5"):
        link_flow(good.set_axis([4, 5]).assign(y=[1.0, np.nan]), search_range=3, appearance=False)
    with pytest.raises(ValueError, match="appearance"):
        link_flow(good, search_range=3)  # no movie, no appearance columns
    with pytest.raises(ValueError, match="assignment"):
        link_flow(good, search_range=3, appearance=False, assignment="greedy")
    with pytest.raises(ValueError, match="flow_radus"):
        check_section("link", {"flow": {"flow_radus": 3}})
    with pytest.raises(ValueError, match="search_range"):
        link_flow(good, search_range=-1, appearance=False)


def test_run_writes_tracks_and_flow(tmp_path):
    from pipeline.link import run

    sim = NTASimulator(
        shape=(64, 64), n_frames=8, n_particles=6, diameters_nm=(300.0,), pixel_size_um=0.2,
        frame_interval_s=1 / 30, exposure_s=0.005, drift_um_s=(0.0, 30.0), seed=7,
    )
    frames = np.stack(list(sim.frames()))
    movie = write_movie(tmp_path / "movie.ome.zarr", frames, pixel_size_um=0.2, frame_interval_s=1 / 30, frames_per_shard=3)
    trackpy.quiet()
    features = trackpy.batch(frames, 7, minmass=150, processes=1)
    write_table(features, tmp_path / "features.parquet", stage="locate")
    params = {"method": "flow", "search_range": 6, "memory": 1, "min_length": 3, "flow": {"gate": 12, "backward": True}}
    tracks = run(
        tmp_path / "features.parquet", tmp_path / "tracks.parquet", params,
        movie=movie.path, flow_output=tmp_path / "flow.parquet",
    )
    written = read_table(tmp_path / "tracks.parquet", required=["frame", "y", "x", "particle", "flow_dy", "flow_dx"])
    assert len(written) == len(tracks) > 0
    assert {"intensity_mean", "hu1", "link_cost"} <= set(written.columns)  # appearance read from the movie
    assert table_metadata(tmp_path / "tracks.parquet")["stage"] == "link"
    flow = read_table(tmp_path / "flow.parquet", required=["frame", "y", "x", "dy", "dx", "cost"])
    assert len(flow) > 0
    # the drift is 30 µm/s = 5 px/frame along x
    assert flow["dx"].median() == pytest.approx(5.0, abs=1.0)
    assert written["flow_dx"].median() == pytest.approx(5.0, abs=1.0)
    with pytest.raises(ValueError, match="gat"):
        run(tmp_path / "features.parquet", tmp_path / "t2.parquet", {**params, "flow": {"gat": 12}}, movie=movie.path)


def test_run_uses_no_more_workers_than_its_threads(tmp_path, monkeypatch):
    # a job that holds one core reads the frames for the appearance terms in
    # its own process: no worker pool, whatever the scheduler
    import pipeline.compute
    from pipeline.link import run

    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started for a one-thread job")

    monkeypatch.setattr(pipeline.compute, "_process_pool", no_pool)
    sim = NTASimulator(
        shape=(48, 48), n_frames=5, n_particles=4, diameters_nm=(300.0,), pixel_size_um=0.2,
        frame_interval_s=1 / 30, exposure_s=0.005, seed=2,
    )
    frames = np.stack(list(sim.frames()))
    movie = write_movie(tmp_path / "movie.ome.zarr", frames, pixel_size_um=0.2, frame_interval_s=1 / 30, frames_per_shard=1)
    trackpy.quiet()
    write_table(trackpy.batch(frames, 7, minmass=150, processes=1), tmp_path / "features.parquet", stage="locate")
    tracks = run(
        tmp_path / "features.parquet", tmp_path / "tracks.parquet", {"method": "flow", "min_length": 1},
        movie=movie.path, compute={"scheduler": "processes"}, threads=1,
    )
    assert "intensity_mean" in tracks.columns
    assert "compute" not in table_metadata(tmp_path / "tracks.parquet")["params"]


def test_schema_checks_the_flow_section():
    from pathlib import Path

    import jsonschema
    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "link.schema.yaml").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    defaults = section_defaults("link")["flow"]
    validator.validate({"method": "flow", "flow": {**defaults, "gate": 20, "window": [2, 3]}})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"flow": {"assignment": "greedy"}})


def test_appearance_weights_follow_how_well_a_column_separates_particles():
    from pipeline.matching import appearance_weights

    rng = np.random.default_rng(9)
    # column 0 varies 10x less along a track than between particles; column 1 is pure noise
    same = np.column_stack([rng.normal(0, 0.1, 500), rng.normal(0, 1, 500)])
    different = np.column_stack([rng.normal(0, 1.0, 500), rng.normal(0, 1, 500)])
    w = appearance_weights(same, different)
    assert w[0] == pytest.approx(0.9, abs=0.05)
    assert w[1] < 0.15


def test_real_bulk_water_links_like_trackpy(bulk_water_dir):
    # 1 µm spheres in water, no flow: the flow linker should make trackpy's links
    import imageio.v3 as iio

    files = sorted(bulk_water_dir.glob("bulk_water_*.png"))[:20]  # half the movie keeps it quick
    frames = 255 - np.stack([iio.imread(f)[..., 1] for f in files])  # dark particles: invert
    trackpy.quiet()
    features = trackpy.batch(frames, 11, minmass=20, processes=1).reset_index(drop=True)
    nearest = trackpy.link(features, 5, memory=3)
    tracks, flow = link_flow(features, frames, search_range=5, memory=3)

    def links(t):
        t = t.sort_values(["particle", "frame"])
        row = t.index.to_numpy()
        same = t["particle"].to_numpy()[1:] == t["particle"].to_numpy()[:-1]
        return set(zip(row[:-1][same], row[1:][same]))

    ours, theirs = links(tracks), links(nearest)
    assert len(ours & theirs) > 0.98 * len(theirs)  # 99.8 % measured
    assert len(ours) == pytest.approx(len(theirs), rel=0.02)
    # no flow: the learned flow is small against the search range
    assert flow[["dy", "dx"]].abs().median().max() < 1.0
    assert tracks[["flow_dy", "flow_dx"]].abs().median().max() < 0.5
