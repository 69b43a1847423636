"""The reassign stage: identities carried through time, voxel by voxel.

Known answers on hand-made label frames (discs and balls that move, grow,
appear and leave), the simulator's 3D anisotropic movies, and real stores,
CLI and Snakemake rules end to end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage as ndi

from pipeline import cli
from pipeline import segment as segment_stage
from pipeline.io import MovieError, create_movie, open_movie, read_table, table_metadata
from pipeline.reassign import (
    match_by_overlap,
    measure_objects,
    reassign_labels,
    reassign_movie,
    run,
)
from pipeline.report.objects import label_colours, label_lifetimes, montage_png
from pipeline.simulate.objects import simulate_objects

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "workflow" / "schemas"


def balls(shape, centres, radii, scale=None) -> np.ndarray:
    """Labels 1..n of discs (2D) or balls (3D) at ``centres`` (px), radii in
    the units of ``scale`` (µm per px; px without)."""
    scale = np.ones(len(shape)) if scale is None else np.asarray(scale, float)
    grid = np.indices(shape).astype(float)
    labels = np.zeros(shape, dtype=np.int32)
    radii = np.broadcast_to(radii, (len(centres),))
    for k, (centre, radius) in enumerate(zip(centres, radii), start=1):
        r2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, scale))
        labels[r2 <= radius**2] = k
    return labels


def segmented(labels) -> np.ndarray:
    """Renumber like the segment stage does: components 1..n in raster order."""
    return ndi.label(labels > 0)[0].astype(np.int32)


def carry(frames, **options) -> list[np.ndarray]:
    """Reassign a list of segmented frames with the flow method."""
    out = [frames[0]]
    next_label, prior = int(frames[0].max()) + 1, None
    for frame in frames[1:]:
        result = reassign_labels(out[-1], frame, next_label=next_label, prior=prior, **options)
        out.append(result.labels)
        next_label, prior = result.next_label, result.prior
    return out


def label_at(labels, point) -> int:
    return int(labels[tuple(int(round(c)) for c in point)])


# -- one frame pair -------------------------------------------------------------------


def test_identities_kept_beyond_the_reach_of_overlap():
    # three discs of radius 5 moving 12 px per frame: no overlap from one frame to the next
    starts = np.array([[20.0, 10.0], [50.0, 80.0], [80.0, 10.0]])
    steps = np.array([[0.0, 12.0], [0.0, -12.0], [2.0, 12.0]])
    positions = [starts + k * steps for k in range(6)]
    frames = [segmented(balls((100, 100), p, 5)) for p in positions]
    flow = carry(frames)
    first = [label_at(flow[0], p) for p in positions[0]]
    assert len(set(first)) == 3
    for labels, points in zip(flow, positions):
        assert [label_at(labels, p) for p in points] == first
        assert set(np.unique(labels)) == {0, *first}  # every voxel labelled, nothing else
    # the overlap matcher loses every object at every frame
    overlap, next_label = [frames[0]], 4
    for frame in frames[1:]:
        labels, next_label = match_by_overlap(overlap[-1], frame, next_label=next_label)
        overlap.append(labels)
    assert next_label - 1 == 3 * 6
    assert label_at(overlap[-1], positions[-1][0]) != first[0]


def test_overlap_matcher_keeps_slow_objects():
    a = segmented(balls((64, 64), [[20, 20], [40, 44]], 6))
    b = segmented(balls((64, 64), [[42, 46], [21, 22]], 6))  # same objects, listed the other way
    labels, next_label = match_by_overlap(a * 10, b)
    assert label_at(labels, (21, 22)) == 10 and label_at(labels, (42, 46)) == 20
    assert next_label == 21


def test_unvoted_voxels_are_filled_from_their_object():
    small = segmented(balls((64, 64), [[32, 32]], 3))
    large = segmented(balls((64, 64), [[32, 32]], 12))
    result = reassign_labels(small * 7, large)
    inside = large > 0
    assert result.n_filled > 0 and result.n_voted > 0  # most voxels had no vote ...
    assert np.all(result.labels[inside] == 7)  # ... and still carry the label
    assert np.all(result.labels[~inside] == 0)
    assert result.new_labels == []


def test_new_objects_get_fresh_labels_and_leavers_are_not_reused():
    f0 = segmented(balls((80, 80), [[20, 20], [60, 60]], 5))
    a, b = label_at(f0, (20, 20)), label_at(f0, (60, 60))
    f1 = segmented(balls((80, 80), [[20, 24]], 5))  # b left
    f2 = segmented(balls((80, 80), [[20, 28], [60, 60]], 5))  # a new object where b was
    out = carry([f0, f1, f2])
    assert label_at(out[1], (20, 24)) == a and set(np.unique(out[1])) == {0, a}
    assert label_at(out[2], (20, 28)) == a
    newcomer = label_at(out[2], (60, 60))
    assert newcomer not in (a, b) and newcomer == 3  # the next fresh id, never b's
    result = reassign_labels(out[1], f2, next_label=3)
    assert result.new_labels == [3] and result.next_label == 4


def test_an_object_appearing_beside_a_matched_one_gets_its_own_label():
    t0 = balls((64, 64), [[30, 30]], 6) * 5
    # the matched disc moved 2 px right; a small newcomer one pixel beside it
    t1 = segmented(balls((64, 64), [[30, 32], [30, 43]], [6, 3]))
    assert t1.max() == 2
    strict = reassign_labels(t0, t1)
    assert label_at(strict.labels, (30, 32)) == 5
    assert label_at(strict.labels, (30, 43)) == 6 and strict.new_labels == [6]
    # Nellie's unconstrained votes let the newcomer inherit the neighbour's label
    loose = reassign_labels(t0, t1, votes_follow_matches=False)
    assert label_at(loose.labels, (30, 43)) == 5 and loose.new_labels == []


def test_merging_objects_pass_on_a_label_not_a_fresh_one():
    t0 = segmented(balls((48, 64), [[24, 20], [24, 44]], 7))
    t1 = segmented(balls((48, 64), [[24, 25], [24, 39]], 7))  # the two touch: one object
    assert t1.max() == 1
    result = reassign_labels(t0, t1)
    assert result.new_labels == [] and set(np.unique(result.labels[t1 > 0])) <= {1, 2}
    assert np.all(result.labels[t1 > 0] > 0)


def test_3d_distances_are_in_micrometres():
    scale = (0.5, 0.2, 0.2)  # z voxels 2.5 times deeper
    t0 = balls((24, 40, 40), [[10, 20, 12]], 0.6, scale)
    # P is 4 z-voxels away (2.0 µm), Q 7 x-voxels (1.4 µm): nearest in µm is Q
    t1 = segmented(balls((24, 40, 40), [[14, 20, 12], [10, 20, 19]], 0.6, scale))
    in_um = reassign_labels(t0, t1, pixel_size_um=scale, gate_um=3.0)
    assert label_at(in_um.labels, (10, 20, 19)) == 1 and label_at(in_um.labels, (14, 20, 12)) == 2
    np.testing.assert_allclose(in_um.matches[["dz", "dy", "dx"]].to_numpy(), [[0.0, 0.0, 1.4]], atol=1e-9)
    in_px = reassign_labels(t0, t1, gate_um=10.0)  # the same in pixels: P is nearer
    assert label_at(in_px.labels, (14, 20, 12)) == 1 and label_at(in_px.labels, (10, 20, 19)) == 2


def test_simulated_3d_anisotropic_movie_keeps_identities():
    frames, truth, _ = simulate_objects(
        shape=(20, 64, 64), n_frames=8, n_objects=6, displacement_px=7, appear_rate=0, leave_rate=0, seed=3
    )
    raw = segment_stage.segment_frames(frames, sigma=[0.4, 1, 1])
    out, next_label, prior = [raw[0]], int(raw[0].max()) + 1, None
    for k in range(1, len(raw)):
        result = reassign_labels(out[-1], raw[k], frames[k - 1], frames[k], pixel_size_um=(0.5, 0.2, 0.2),
                                 next_label=next_label, prior=prior)
        out.append(result.labels)
        next_label, prior = result.next_label, result.prior
    out = np.asarray(out)
    # every true object keeps one label, and no label spans two objects
    for obj in np.unique(truth[truth > 0]):
        assert len(np.unique(out[(truth == obj) & (out > 0)])) == 1
    for label in np.unique(out[out > 0]):
        assert len(np.unique(truth[(out == label) & (truth > 0)])) == 1
    assert next_label - 1 == len(np.unique(truth[truth > 0]))


@pytest.mark.parametrize(
    "options, named",
    [({"gate_um": -1}, "reassign.gate_um"), ({"assignment": "greedy"}, "reassign.assignment"),
     ({"flow_order": 2}, "reassign.flow_order"), ({"votes_follow_matches": 1}, "reassign.votes_follow_matches")],
)
def test_bad_options_name_the_key(options, named):
    frame = balls((16, 16), [[8, 8]], 3)
    with pytest.raises(ValueError, match=named):
        reassign_labels(frame, frame, **options)


def test_bad_frames_are_errors():
    with pytest.raises(ValueError, match="integer labels"):
        reassign_labels(np.zeros((8, 8)), np.zeros((8, 8), int))
    with pytest.raises(ValueError, match="differ in shape"):
        reassign_labels(np.zeros((8, 8), int), np.zeros((8, 9), int))


def test_measure_objects_and_colours():
    labels = balls((3, 30, 30), [[1, 10, 10], [1, 20, 22]], [1.0, 2.0])
    table = measure_objects(labels, np.ones(labels.shape) * 2, pixel_size_um=(0.5, 0.2, 0.2))
    assert list(table["label"]) == [1, 2]
    np.testing.assert_allclose(table[["z", "y", "x"]].to_numpy(), [[1, 10, 10], [1, 20, 22]])
    np.testing.assert_allclose(table["volume_um3"], table["volume_voxels"] * 0.02)
    assert np.all(table["mean_intensity"] == 2)
    colours = label_colours(np.array([3, 4, 3]))
    assert np.allclose(colours[0], colours[2]) and not np.allclose(colours[0], colours[1])


# -- a movie, streamed ---------------------------------------------------------------


def moving_discs_movie(path: Path, n_frames: int, shape=(256, 256), step=2.0) -> None:
    """Label store of four discs moving ``step`` px per frame along x."""
    starts = np.array([[40.0, 30.0], [100.0, 60.0], [160.0, 30.0], [220.0, 90.0]])
    writer = create_movie(path, shape, "int32", pixel_size_um=0.2, frame_interval_s=0.5, frames_per_shard=4)
    with writer:
        for k in range(n_frames):
            writer.write(k, segmented(balls(shape, starts + [0.0, step * k], 8)))


def peak_bytes(labels_path: Path, output: Path) -> int:
    tracemalloc.start()
    try:
        reassign_movie(labels_path, None, output)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_a_frame_pair(tmp_path):
    moving_discs_movie(tmp_path / "short.ome.zarr", 6)
    moving_discs_movie(tmp_path / "long.ome.zarr", 36)
    peak_bytes(tmp_path / "short.ome.zarr", tmp_path / "warmup.ome.zarr")  # imports, caches
    short = peak_bytes(tmp_path / "short.ome.zarr", tmp_path / "s.ome.zarr")
    long = peak_bytes(tmp_path / "long.ome.zarr", tmp_path / "l.ome.zarr")
    frame_bytes = 256 * 256 * 4
    # six times the frames, about the same peak: well under the long movie itself
    assert long < 1.5 * short + 4 * frame_bytes, (short, long)
    assert long < 36 * frame_bytes / 2, (short, long)
    assert open_movie(tmp_path / "l.ome.zarr").complete


@pytest.fixture
def disc_movie(tmp_path):
    """A real movie store: two bright discs, one moving 2 px/frame along x
    (0.2 µm px, 0.5 s frames: 0.8 µm/s), one still, one frame dropped."""
    shape, n = (64, 96), 8
    writer = create_movie(tmp_path / "movie.ome.zarr", shape, np.uint16, pixel_size_um=0.2,
                          frame_interval_s=0.5, frames_per_shard=3)
    rng = np.random.default_rng(0)
    with writer:
        for k in range(n):
            if k == 5:
                continue  # never arrived
            image = (balls(shape, [[20, 15 + 2 * k], [45, 70]], 6) > 0) * 1000.0
            image = ndi.gaussian_filter(image, 1.0) + rng.normal(100, 10, shape)
            writer.write(k, np.clip(image, 0, 65535).astype(np.uint16))
    return tmp_path / "movie.ome.zarr"


def test_run_writes_the_store_and_the_table(disc_movie, tmp_path):
    labels = tmp_path / "labels.ome.zarr"
    segment_stage.run(disc_movie, labels, {}, compute={"scheduler": "synchronous"})
    out, table_path = tmp_path / "reassigned.ome.zarr", tmp_path / "objects.parquet"
    table = run(disc_movie, labels, out, table_path, {"max_error_um": 0.5})
    store = open_movie(out)
    assert store.complete and store.dtype == np.int32 and len(store) == 8
    assert store.scale == open_movie(disc_movie).scale and list(store.dropped_frames) == [5]
    assert table.equals(read_table(table_path))
    meta = table_metadata(table_path)
    assert meta["stage"] == "reassign" and meta["params"]["max_error_um"] == 0.5
    assert meta["params"]["method"] == "flow"  # defaults filled in
    assert list(table.columns[:6]) == ["frame", "t_s", "label", "y", "x", "volume_voxels"]
    assert sorted(table["label"].unique()) == [1, 2] and 5 not in set(table["frame"])
    mover = table[table["label"] == label_at(store[0], (20, 15))].set_index("frame")
    assert np.isnan(mover.loc[0, "speed_um_s"])
    np.testing.assert_allclose(mover.loc[[1, 2, 3, 4, 6, 7], "vx_um_s"], 0.8, atol=0.05)
    np.testing.assert_allclose(mover.loc[6, "vx_um_s"], 0.8, atol=0.05)  # across the dropped frame
    np.testing.assert_allclose(mover["volume_um3"], np.pi * 1.2**2, rtol=0.2)
    lifetimes = label_lifetimes(read_table(table_path), frame_interval_s=0.5).set_index("label")
    assert list(lifetimes["n_frames"]) == [7, 7] and list(lifetimes["lifetime_s"]) == [4.0, 4.0]
    assert lifetimes.loc[mover.loc[0, "label"], "path_length_um"] == pytest.approx(0.4 * 7, rel=0.05)
    png = montage_png(out, disc_movie, frames=[0, 7])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_run_overlap_method_and_errors(disc_movie, tmp_path):
    labels = tmp_path / "labels.ome.zarr"
    segment_stage.run(disc_movie, labels, {}, compute={"scheduler": "synchronous"})
    table = run(disc_movie, labels, tmp_path / "iou.ome.zarr", tmp_path / "iou.parquet", {"method": "overlap"})
    assert table["label"].nunique() == 2  # slow objects: overlap is enough
    with pytest.raises(ValueError, match="'gate'"):
        run(disc_movie, labels, tmp_path / "x.ome.zarr", tmp_path / "x.parquet", {"gate": 3})
    with pytest.raises(ValueError, match="reassign.method"):
        run(disc_movie, labels, tmp_path / "x.ome.zarr", tmp_path / "x.parquet", {"method": "nellie"})
    with pytest.raises(FileExistsError):
        run(disc_movie, labels, tmp_path / "iou.ome.zarr", tmp_path / "iou.parquet", {})
    # a label store that never finished is refused, naming it
    writer = create_movie(tmp_path / "half.ome.zarr", (64, 96), "int32", pixel_size_um=0.2, frame_interval_s=0.5)
    writer.write(0, np.zeros((64, 96), np.int32))
    writer.close(complete=False)
    with pytest.raises(MovieError, match="half.ome.zarr.*incomplete"):
        run(disc_movie, tmp_path / "half.ome.zarr", tmp_path / "y.ome.zarr", tmp_path / "y.parquet", {})
    assert not (tmp_path / "y.ome.zarr").exists()


def test_cli_reassign(disc_movie, tmp_path, capsys):
    labels = tmp_path / "labels.ome.zarr"
    assert cli.main(["segment", str(disc_movie), "-o", str(labels), "--scheduler", "synchronous"]) == 0
    code = cli.main(["reassign", str(disc_movie), str(labels), "-o", str(tmp_path / "r.ome.zarr"),
                     "--table", str(tmp_path / "objects.parquet"), "--set", "flow_order=1"])
    assert code == 0 and "2 labels over 7 frames" in capsys.readouterr().out
    assert table_metadata(tmp_path / "objects.parquet")["params"]["flow_order"] == 1
    code = cli.main(["reassign", str(disc_movie), str(labels), "-o", str(tmp_path / "s.ome.zarr"),
                     "--table", str(tmp_path / "s.parquet"), "--set", "outlier_factor=-1"])
    assert code == 2 and "reassign.outlier_factor" in capsys.readouterr().err


# -- the Snakemake rules ----------------------------------------------------------------


@pytest.mark.slow
def test_snakemake_rules_segment_and_reassign(disc_movie, tmp_path):
    """The two rule files under real Snakemake, with the helpers common.smk
    provides (run_path, section_params, ...) defined the same way."""
    work = tmp_path / "work"
    (work / "results" / "r").mkdir(parents=True)
    disc_movie.rename(work / "results" / "r" / "movie.ome.zarr")
    (work / "config.yaml").write_text(yaml.safe_dump({
        "segment": {"enabled": True, "sigma": 1.0},
        "reassign": {"max_error_um": 0.5},
        "compute": {"scheduler": "threads", "threads": 2},
    }))
    (work / "Snakefile").write_text(textwrap.dedent(f"""
        configfile: "config.yaml"
        RESULTS = "results"
        VERSION = "test"

        def run_path(name):
            return f"{{RESULTS}}/{{{{run}}}}/{{name}}"

        def log_path(rule_name, wildcard="run"):
            return f"{{RESULTS}}/logs/{{rule_name}}/{{{{{{wildcard}}}}}}.log"

        def section_params(section):
            return lambda wildcards: dict(config.get(section) or {{}})

        def stage_resources(section):
            return {{}}

        include: "{REPO / 'workflow' / 'rules' / 'segment.smk'}"
        include: "{REPO / 'workflow' / 'rules' / 'reassign.smk'}"
    """))
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--directory", str(work),
         "--snakefile", str(work / "Snakefile"), "results/r/objects.parquet"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = work / "results" / "r"
    assert open_movie(run_dir / "labels.ome.zarr").complete
    assert open_movie(run_dir / "reassigned.ome.zarr").complete
    objects = read_table(run_dir / "objects.parquet", required=("frame", "label", "speed_um_s"))
    assert objects["label"].nunique() == 2
    assert table_metadata(run_dir / "objects.parquet")["params"]["max_error_um"] == 0.5
    assert (work / "results" / "logs" / "reassign" / "r.log").exists()


# -- the simulator the benchmark uses ------------------------------------------------------


def test_simulator_objects_move_appear_leave_and_never_touch():
    frames, truth, table = simulate_objects(
        shape=(96, 96), n_frames=12, n_objects=8, displacement_px=3, appear_rate=0.5, leave_rate=0.05,
        pixel_size_um=0.2, seed=5,
    )
    assert frames.shape == truth.shape == (12, 96, 96) and frames.dtype == np.uint16
    assert truth.dtype == np.int32
    # steps of 3 px = 0.6 µm (up to deformation of the shape and collisions)
    assert np.nanmedian(table["step_um"]) == pytest.approx(0.6, abs=0.1)
    lifetimes = table.groupby("label")["frame"].agg(["min", "max", "size"])
    assert (lifetimes["min"] > 0).any() and (lifetimes["max"] < 11).any()  # some appear, some leave
    assert np.all(lifetimes["size"] == lifetimes["max"] - lifetimes["min"] + 1)  # never come back
    for k in range(len(truth)):
        ids = np.unique(truth[k][truth[k] > 0])
        # each object one component, apart from every other
        assert ndi.label(truth[k] > 0, structure=np.ones((3, 3)))[1] == len(ids)
        # and brighter than the background where it is
        assert frames[k][truth[k] > 0].mean() > frames[k][truth[k] == 0].mean() + 300
