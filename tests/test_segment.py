"""The segment stage: known answers per frame, and label stores written from
real movie stores with real Dask schedulers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import cli
from pipeline.io import MovieError, create_movie, open_movie, write_movie
from pipeline.io.config import validate_config
from pipeline.segment import frame_threshold, run, segment_frame, segment_frames, segment_movie
from pipeline.simulate.objects import simulate_objects

SCHEMAS = Path(__file__).resolve().parents[1] / "workflow" / "schemas"


def disc(shape, centre, radius, value=1.0) -> np.ndarray:
    grid = np.indices(shape)
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return np.where(r2 <= radius**2, value, 0.0)


def noisy(image, seed=0, sd=0.02) -> np.ndarray:
    return image + np.random.default_rng(seed).normal(0, sd, image.shape)


# -- one frame ---------------------------------------------------------------------


def test_two_blobs_give_two_labels_in_raster_order():
    image = noisy(disc((64, 64), (16, 20), 6) + disc((64, 64), (44, 40), 8))
    labels = segment_frame(image, sigma=1.0)
    assert labels.dtype == np.int32 and labels.shape == image.shape
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert labels[16, 20] == 1 and labels[44, 40] == 2  # numbered in raster order
    assert labels[0, 0] == 0
    # each label covers its disc (to within the blur at the rim)
    assert abs((labels == 2).sum() - np.pi * 8**2) < 0.15 * np.pi * 8**2


def test_min_size_drops_a_speck():
    image = noisy(disc((48, 48), (24, 24), 7))
    image[5:7, 5:7] = 1.0  # a 4-pixel speck
    kept = segment_frame(image, sigma=0, threshold=0.5, min_size=1)
    assert kept.max() == 2
    dropped = segment_frame(image, sigma=0, threshold=0.5, min_size=10)
    assert dropped.max() == 1 and dropped[5, 5] == 0 and dropped[24, 24] == 1


def test_holes_are_filled_only_when_asked():
    ring = disc((48, 48), (24, 24), 12) - disc((48, 48), (24, 24), 5)
    filled = segment_frame(ring, sigma=0, fill_holes=True)
    hollow = segment_frame(ring, sigma=0, fill_holes=False)
    assert filled[24, 24] == 1 and hollow[24, 24] == 0
    assert (filled > 0).sum() == (disc((48, 48), (24, 24), 12) > 0).sum()


def test_threshold_modes():
    image = noisy(disc((64, 64), (16, 16), 6, 1.0) + disc((64, 64), (44, 44), 6, 0.4), sd=0.01)
    # Otsu splits the brightness classes (the dim disc falls with the
    # background); the triangle method cuts at the foot of the background
    # peak and keeps both
    otsu = segment_frame(image, sigma=0.5, threshold="otsu")
    triangle = segment_frame(image, sigma=0.5, threshold="triangle")
    assert otsu.max() == 1 and otsu[16, 16] == 1 and otsu[44, 44] == 0
    assert triangle.max() == 2 and triangle[44, 44] == 2
    assert 0.1 < frame_threshold(image, "otsu") < 0.9 and frame_threshold(image, "triangle") < 0.1
    # a fixed value between the two brightnesses keeps only the bright disc
    fixed = segment_frame(image, sigma=0.5, threshold=0.7)
    assert fixed.max() == 1 and fixed[16, 16] == 1 and fixed[44, 44] == 0
    # dark objects on a bright background
    dark = segment_frame(1.0 - image, sigma=0.5, threshold=0.3, invert=True)
    np.testing.assert_array_equal(dark, fixed)
    # a constant frame has no objects (no threshold to find)
    assert segment_frame(np.full((16, 16), 3.0)).max() == 0


def test_3d_anisotropic_sigma_per_axis_and_connectivity():
    frame = disc((12, 40, 40), (6, 12, 12), 4) + disc((12, 40, 40), (6, 28, 28), 4)
    labels = segment_frame(noisy(frame), sigma=[0.5, 1.0, 1.0])
    assert labels.shape == frame.shape and labels.max() == 2
    # two voxels touching only at a corner: separate with faces, one with corners
    corner = np.zeros((6, 6, 6))
    corner[2, 2, 2] = corner[3, 3, 3] = 1
    assert segment_frame(corner, sigma=0, min_size=1, connectivity=1).max() == 2
    assert segment_frame(corner, sigma=0, min_size=1, connectivity=3).max() == 1


@pytest.mark.parametrize(
    "options, named",
    [
        ({"threshold": "li"}, "segment.threshold"),
        ({"sigma": [1, 1, 1]}, "segment.sigma"),
        ({"sigma": -1}, "segment.sigma"),
        ({"connectivity": 3}, "segment.connectivity"),
        ({"min_size": 2.5}, "segment.min_size"),
        ({"fill_holes": "yes"}, "segment.fill_holes"),
    ],
)
def test_bad_options_name_the_key(options, named):
    with pytest.raises(ValueError, match=named):
        segment_frame(np.zeros((8, 8)), **options)


def test_bad_frames_are_named():
    with pytest.raises(ValueError, match="stack"):
        segment_frames(np.zeros((8, 8)))
    frames = np.zeros((3, 8, 8))
    frames[2, 1, 1] = np.nan
    with pytest.raises(ValueError, match="frame 7"):
        segment_frames(frames, first_frame=5)


# -- the stage on stores --------------------------------------------------------------


@pytest.fixture(scope="module")
def objects_movie(tmp_path_factory):
    frames, truth, _ = simulate_objects(
        shape=(16, 48, 48), n_frames=10, n_objects=5, displacement_px=2, appear_rate=0, leave_rate=0, seed=4
    )
    path = tmp_path_factory.mktemp("segment") / "movie.ome.zarr"
    movie = write_movie(path, frames, pixel_size_um=(0.5, 0.2, 0.2), frame_interval_s=0.25, frames_per_shard=3)
    return movie, frames, truth


def test_run_writes_labels_with_the_movies_layout(objects_movie, tmp_path):
    movie, frames, truth = objects_movie
    params = {"sigma": [0.4, 1.0, 1.0], "frames_per_task": 2}
    labels = run(movie.path, tmp_path / "labels.ome.zarr", params, compute={"scheduler": "threads"}, threads=2)
    assert labels.complete and labels.dtype == np.int32
    assert len(labels) == len(movie) and labels.frame_shape == movie.frame_shape
    assert labels.scale == movie.scale and labels.axes == movie.axes
    assert labels.frames_per_shard == movie.frames_per_shard
    assert labels.attrs["params"]["sigma"] == [0.4, 1.0, 1.0]
    # the same labels as one serial call on the whole stack
    expected = segment_frames(frames, sigma=[0.4, 1.0, 1.0])
    np.testing.assert_array_equal(labels.frames(), expected)
    # one label per simulated object, per frame
    for k in range(len(movie)):
        assert labels[k].max() == len(np.unique(truth[k])) - 1
    # opened by OME-Zarr readers as a label image of the movie
    ome = json.loads((tmp_path / "labels.ome.zarr" / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["image-label"]["source"]["image"].endswith("movie.ome.zarr")
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.25, 0.5, 0.2, 0.2]


def test_processes_scheduler_matches_serial(objects_movie, tmp_path):
    movie, frames, _ = objects_movie
    labels = segment_movie(movie, tmp_path / "labels.ome.zarr", compute={"scheduler": "processes"}, threads=2,
                           frames_per_task=4, sigma=1.0)
    np.testing.assert_array_equal(labels.frames(), segment_frames(frames, sigma=1.0))


def test_dropped_frames_stay_dropped(tmp_path):
    frame = (noisy(disc((32, 32), (16, 16), 6)) * 1000).astype(np.uint16)
    writer = create_movie(tmp_path / "movie.ome.zarr", frame.shape, np.uint16, frames_per_shard=2)
    with writer:
        for index in (0, 1, 3):  # frame 2 never arrived
            writer.write(index, frame)
    labels = run(tmp_path / "movie.ome.zarr", tmp_path / "labels.ome.zarr", {}, compute={"scheduler": "synchronous"})
    assert labels.complete and len(labels) == 4
    assert list(labels.dropped_frames) == [2]
    assert labels[2].max() == 0 and labels[3].max() == 1


def test_run_rejects_unknown_keys_and_bad_stores(objects_movie, tmp_path):
    movie, _, _ = objects_movie
    with pytest.raises(ValueError, match="'sigmaa'"):
        run(movie.path, tmp_path / "labels.ome.zarr", {"sigmaa": 1})
    with pytest.raises(FileNotFoundError, match="nowhere.ome.zarr"):
        run(tmp_path / "nowhere.ome.zarr", tmp_path / "labels.ome.zarr", {})
    (tmp_path / "labels.ome.zarr").mkdir()
    with pytest.raises(FileExistsError, match="labels.ome.zarr"):
        run(movie.path, tmp_path / "labels.ome.zarr", {}, compute={"scheduler": "synchronous"})
    empty = create_movie(tmp_path / "empty.ome.zarr", (8, 8), np.uint16)
    empty.close()
    with pytest.raises(MovieError, match="no frames"):
        run(tmp_path / "empty.ome.zarr", tmp_path / "l2.ome.zarr", {})


def test_cli_segment(objects_movie, tmp_path, capsys):
    movie, _, _ = objects_movie
    out = tmp_path / "labels.ome.zarr"
    code = cli.main(["segment", str(movie.path), "-o", str(out), "--set", "sigma=[0.4, 1, 1]",
                     "--scheduler", "synchronous"])
    assert code == 0 and open_movie(out).complete
    assert "objects in 10 frames" in capsys.readouterr().out
    assert cli.main(["segment", str(movie.path), "-o", str(out), "--set", "threshold=li"]) == 2
    assert "segment.threshold" in capsys.readouterr().err


def test_segmentation_is_opt_in():
    config = validate_config({}, schema_dir=SCHEMAS)
    assert config["segment"]["enabled"] is False
