"""The locate stage: trackpy.locate over a movie store, Dask-parallel.

The reference is always trackpy.batch on the same frames, compared with
assert_frame_equal (values, dtypes and row order).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import trackpy as tp
import yaml

from pipeline import cli
from pipeline.io import MovieError, create_movie, open_movie, read_table, table_metadata, write_movie
from pipeline.io.schema import section_defaults
from pipeline.locate import empty_features, engine_used, locate_frames, locate_movie, run
from pipeline.simulate import simulate_movie

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bulk_water"
SCHEMAS = Path(__file__).resolve().parents[1] / "workflow" / "schemas"
BULK_FRAMES = 12  # enough for several tasks, few enough to keep the test fast

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PendingDeprecationWarning")
tp.quiet()


def batch(frames, **options) -> pd.DataFrame:
    """trackpy.batch (serial), columns in trackflow's order: frame first."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = tp.batch(frames, processes=1, **options)
    return found[["frame", *[c for c in found.columns if c != "frame"]]]


def gaussian_spots(n_frames=6, shape=(96, 96), n=12, sigma=1.6, seed=1, dtype=np.uint16) -> np.ndarray:
    """Bright Gaussian spots on a noisy background, drifting a little per frame."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(shape)
    centres = rng.uniform(8, shape - 8, size=(n, len(shape)))
    grid = np.indices(tuple(shape)).reshape(len(shape), -1).T
    frames = []
    for _ in range(n_frames):
        centres = np.clip(centres + rng.normal(0, 0.7, centres.shape), 6, shape - 6)
        image = rng.normal(100, 8, int(np.prod(shape)))
        for c in centres:
            image += 900 * np.exp(-((grid - c) ** 2).sum(axis=1) / (2 * sigma**2))
        frames.append(image.reshape(tuple(shape)))
    return np.clip(frames, 0, np.iinfo(dtype).max).astype(dtype)


@pytest.fixture(scope="module")
def bulk_water(tmp_path_factory):
    """The first frames of the bulk_water movie (green channel, inverted) as a store."""
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA} (shared/ must sit beside the repository)")
    import imageio.v3 as iio

    files = sorted(DATA.glob("bulk_water_*.png"))[:BULK_FRAMES]
    frames = np.stack([255 - iio.imread(f)[..., 1] for f in files])
    path = tmp_path_factory.mktemp("bulk") / "movie.ome.zarr"
    # small shards, so that the movie spans several of them
    write_movie(path, frames, pixel_size_um=0.3509, frame_interval_s=1 / 24, frames_per_shard=5)
    expected = batch(frames, diameter=11, minmass=20)
    return path, frames, expected


@pytest.fixture(scope="module")
def spots_movie(tmp_path_factory):
    frames = gaussian_spots()
    path = tmp_path_factory.mktemp("spots") / "movie.ome.zarr"
    write_movie(path, frames, pixel_size_um=0.2, frame_interval_s=0.05)
    return path, frames


# --- equality with trackpy.batch --------------------------------------------


def test_locate_movie_equals_trackpy_batch_on_real_data(bulk_water):
    path, frames, expected = bulk_water
    # 3 tasks across 2 worker processes; frames 5..11 come from later shards
    found = locate_movie(path, compute={"scheduler": "processes"}, threads=2, frames_per_task=4, diameter=11, minmass=20)
    assert len(expected) > 100 * BULK_FRAMES  # the real movie has hundreds per frame
    assert list(found.columns[:3]) == ["frame", "y", "x"]
    assert set(found["frame"]) == set(range(BULK_FRAMES))
    pd.testing.assert_frame_equal(found, expected)


def test_engine_auto_is_numba_and_equals_trackpy_numba_on_real_data(bulk_water):
    """numba is a dependency, so the schema's default engine (auto) is trackpy's numba engine."""
    path, frames, _ = bulk_water
    assert section_defaults("locate")["engine"] == "auto"
    assert engine_used("auto", 2) == "numba"
    found = locate_movie(path, compute={"scheduler": "processes"}, threads=2, frames_per_task=4, diameter=11, minmass=20)
    pd.testing.assert_frame_equal(found, batch(frames, diameter=11, minmass=20, engine="numba"))


def test_engine_auto_equals_trackpy_numba_on_simulated_frames(tmp_path):
    frames, _, _ = simulate_movie(shape=(256, 256), n_frames=8, n_particles=40, diameters_nm=[100, 200], seed=7)
    path = tmp_path / "movie.ome.zarr"
    write_movie(path, frames, pixel_size_um=0.2, frame_interval_s=1 / 30, frames_per_shard=4)
    found = locate_movie(path, compute={"scheduler": "threads"}, threads=2, diameter=9, minmass=300)
    expected = batch(frames, diameter=9, minmass=300, engine="numba")
    assert len(expected) > 5 * len(frames)
    pd.testing.assert_frame_equal(found, expected)


def test_engine_numba_without_numba_is_an_error(monkeypatch):
    monkeypatch.setattr("trackpy.try_numba.NUMBA_AVAILABLE", False)
    assert engine_used("auto", 2) == "python"
    with pytest.raises(ValueError, match="engine 'numba' needs numba"):
        locate_frames(gaussian_spots(n_frames=1), diameter=7, engine="numba")


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_every_local_scheduler_gives_the_same_features(spots_movie, scheduler):
    path, frames = spots_movie
    found = locate_movie(path, compute={"scheduler": scheduler}, threads=2, frames_per_task=2, diameter=7, minmass=500)
    pd.testing.assert_frame_equal(found, batch(frames, diameter=7, minmass=500))


def test_locate_frames_numbers_frames_from_first_frame(spots_movie):
    _, frames = spots_movie
    found = locate_frames(frames[3:5], first_frame=3, diameter=7, minmass=500)
    expected = batch(frames, diameter=7, minmass=500)
    expected = expected[expected["frame"].isin([3, 4])].reset_index(drop=True)
    assert sorted(set(found["frame"])) == [3, 4]
    pd.testing.assert_frame_equal(found, expected)


@pytest.mark.parametrize(
    "options",
    [
        {"diameter": 7, "characterize": False},
        {"diameter": 9, "minmass": 800, "maxsize": 3.0, "topn": 5},
        {"diameter": 7, "separation": 9, "noise_size": 1.5, "smoothing_size": 11, "percentile": 50},
        {"diameter": 7, "preprocess": False, "threshold": 150, "max_iterations": 0},
        {"diameter": 7, "invert": True, "minmass": 10, "engine": "python"},
        {"diameter": [7, 9], "noise_size": [1, 2]},
    ],
    ids=["no-characterize", "filters", "bandpass", "no-preprocess", "invert", "anisotropic-2d"],
)
def test_trackpy_options_pass_through(spots_movie, options):
    path, frames = spots_movie
    found = locate_movie(path, compute={"scheduler": "synchronous"}, **options)
    expected = batch(frames, **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    assert len(expected) > 0
    pd.testing.assert_frame_equal(found, expected)
    # an empty result has exactly the columns and dtypes of a full one
    empty = empty_features(2, **options)
    assert len(empty) == 0
    pd.testing.assert_series_equal(empty.dtypes, found.dtypes)


def test_anisotropic_3d_volumes(tmp_path):
    volumes = gaussian_spots(n_frames=3, shape=(16, 40, 40), n=8, sigma=1.5, seed=3)
    path = tmp_path / "volume.ome.zarr"
    write_movie(path, volumes, pixel_size_um=(0.5, 0.2, 0.2), frame_interval_s=1.0)
    found = locate_movie(path, compute={"scheduler": "threads"}, threads=2, frames_per_task=1, diameter=[5, 7, 7])
    expected = batch(volumes, diameter=(5, 7, 7))
    assert {"z", "size_z", "size_y", "size_x"} <= set(found.columns)
    assert list(found.columns[:4]) == ["frame", "z", "y", "x"]
    pd.testing.assert_frame_equal(found, expected)
    pd.testing.assert_series_equal(empty_features(3, diameter=[5, 7, 7]).dtypes, found.dtypes)


def test_anisotropic_errors_stay_with_their_features():
    """trackpy 0.7 misaligns the per-axis ``ep_*`` columns once minmass drops
    features (rows without positions appear); locate puts them back: each
    kept feature has the error it has when nothing is filtered."""
    volumes = gaussian_spots(n_frames=1, shape=(16, 40, 40), n=10, sigma=1.5, seed=5)
    everything = locate_frames(volumes, diameter=[5, 7, 7])
    threshold = float(np.median(everything["mass"]))
    raw = tp.locate(volumes[0], (5, 7, 7), minmass=threshold)
    assert raw[["z", "y", "x"]].isna().any(axis=1).any(), "trackpy no longer shows the bug"
    kept = locate_frames(volumes, diameter=[5, 7, 7], minmass=threshold)
    assert len(kept) == (everything["mass"] > threshold).sum()
    assert not kept[["z", "y", "x", "ep_z", "ep_y", "ep_x"]].isna().any().any()
    merged = kept.merge(everything, on=["z", "y", "x"], suffixes=("", "_all"))
    assert len(merged) == len(kept)
    for axis in "zyx":
        np.testing.assert_allclose(merged[f"ep_{axis}"], merged[f"ep_{axis}_all"])


# --- dropped frames, empty and broken input ---------------------------------


def _mark_dropped(store: Path, dropped: list[int]) -> None:
    """List frames as dropped in the store's acquisition metadata."""
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["trackflow"]["dropped"] = dropped
    meta_path.write_text(json.dumps(meta))


def test_dropped_frames_are_skipped_not_located(tmp_path, spots_movie):
    _, frames = spots_movie
    path = tmp_path / "movie.ome.zarr"
    write_movie(path, frames)
    # these frames hold real spots here, so locating them would add rows;
    # the task of frames 2..3 has nothing left to locate
    _mark_dropped(path, [2, 3, 5])
    assert list(open_movie(path).dropped_frames) == [2, 3, 5]
    found = locate_movie(path, compute={"scheduler": "processes"}, threads=2, frames_per_task=2, diameter=7, minmass=500)
    expected = batch(frames, diameter=7, minmass=500)
    assert {2, 3, 5} <= set(expected["frame"])
    assert sorted(set(found["frame"])) == [0, 1, 4]
    expected = expected[~expected["frame"].isin([2, 3, 5])].reset_index(drop=True)
    pd.testing.assert_frame_equal(found, expected)


def test_frames_that_never_arrived_are_skipped(tmp_path, spots_movie):
    _, frames = spots_movie
    path = tmp_path / "gappy.ome.zarr"
    with create_movie(path, frames.shape[1:], frames.dtype, first_seq=100) as writer:
        for index in (0, 1, 3):  # sequence number 102 never arrived
            writer.write(index, frames[index])
    movie = open_movie(path)
    assert list(movie.dropped_frames) == [2]
    found = locate_movie(movie, diameter=7, minmass=500, threads=2)
    expected = batch(frames[[0, 1, 3]], diameter=7, minmass=500)
    expected["frame"] = expected["frame"].map({0: 0, 1: 1, 2: 3})
    pd.testing.assert_frame_equal(found, expected)


def test_empty_movie_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "empty.ome.zarr"
    create_movie(path, (32, 32), np.uint8).close()
    assert len(open_movie(path)) == 0
    with pytest.raises(MovieError, match="empty.ome.zarr.*no frames"):
        locate_movie(path, diameter=7)
    with pytest.raises(MovieError, match="empty.ome.zarr"):
        run(path, tmp_path / "features.parquet", {})
    assert not (tmp_path / "features.parquet").exists()


def test_unreadable_frame_is_an_error_naming_the_frame(tmp_path, spots_movie):
    _, frames = spots_movie
    path = tmp_path / "broken.ome.zarr"
    write_movie(path, frames, frames_per_shard=6)
    # overwrite frame 3's compressed chunk inside the shard with garbage
    shard = path / "0" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-(16 * 6 + 4) : -4]), dtype="<u8").reshape(6, 2)
    offset, size = (int(v) for v in index[3])
    data[offset : offset + size] = b"\xff" * size
    shard.write_bytes(bytes(data))
    with pytest.raises(MovieError, match=r"broken.ome.zarr: frame 3 cannot be read"):
        locate_movie(path, compute={"scheduler": "processes"}, threads=2, frames_per_task=3, diameter=7)


def test_no_features_writes_an_empty_table_and_warns(tmp_path, spots_movie, caplog):
    path, frames = spots_movie
    output = tmp_path / "features.parquet"
    with caplog.at_level(logging.WARNING, logger="trackflow.locate"):
        found = run(path, output, {"diameter": 7, "minmass": 1e12}, compute={"scheduler": "synchronous"})
    assert "no features found" in caplog.text
    table = read_table(output)
    assert len(found) == 0 and len(table) == 0
    full = locate_movie(path, compute={"scheduler": "synchronous"}, diameter=7)
    assert list(table.columns) == list(full.columns)
    pd.testing.assert_series_equal(table.dtypes, full.dtypes)


def test_all_frames_dropped_gives_an_empty_table(tmp_path, spots_movie):
    _, frames = spots_movie
    path = tmp_path / "movie.ome.zarr"
    write_movie(path, frames[:2])
    _mark_dropped(path, [0, 1])
    found = locate_movie(path, diameter=7)
    assert len(found) == 0
    assert list(found.columns) == ["frame", "y", "x", "mass", "size", "ecc", "signal", "raw_mass", "ep"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"diameter": 7, "minmas": 10}, "minmas"),
        ({"diameter": 8}, "diameter"),
        ({"diameter": [5, 7, 7]}, "diameter"),
        ({"diameter": [5, 7], "maxsize": 3}, "maxsize"),
        ({"diameter": 7, "percentile": 120}, "percentile"),
        ({"diameter": 7, "frames_per_task": 0}, "frames_per_task"),
    ],
)
def test_bad_parameters_are_errors_naming_the_key(tmp_path, spots_movie, params, message):
    path, _ = spots_movie
    with pytest.raises(ValueError, match=message):
        run(path, tmp_path / "features.parquet", params, compute={"scheduler": "synchronous"})
    assert not (tmp_path / "features.parquet").exists()


def test_locate_frames_rejects_a_single_image():
    with pytest.raises(ValueError, match=r"\(t, y, x\)"):
        locate_frames(np.zeros((32, 32)), diameter=7)


# --- run, provenance, command line, schema -----------------------------------


def test_run_writes_features_with_provenance(tmp_path, spots_movie):
    path, frames = spots_movie
    output = tmp_path / "out" / "features.parquet"
    found = run(path, output, {"diameter": 7, "minmass": 500, "frames_per_task": 2}, compute={"scheduler": "threads"}, threads=2)
    table = read_table(output, required=["frame", "y", "x", "mass"])
    pd.testing.assert_frame_equal(table, found)
    pd.testing.assert_frame_equal(table, batch(frames, diameter=7, minmass=500))
    meta = table_metadata(output)
    assert meta["stage"] == "locate"
    assert meta["params"] == {**section_defaults("locate"), "diameter": 7, "minmass": 500, "frames_per_task": 2}
    assert meta["movie"] == str(path) and meta["n_frames"] == len(frames)
    assert meta["n_features"] == len(found)
    assert meta["engine_used"] == "numba"  # locate.engine: auto, with numba installed
    assert meta["image_filters"] == "compiled"  # pipeline.locate.compiled: the same table


def test_command_line_equals_the_function(bulk_water, tmp_path):
    path, _, expected = bulk_water
    output = tmp_path / "features.parquet"
    code = cli.main(
        ["locate", str(path), "-o", str(output), "--set", "diameter=11", "--params", '{"minmass": 20}',
         "--scheduler", "processes", "--threads", "2"]
    )
    assert code == 0
    pd.testing.assert_frame_equal(read_table(output), expected)
    assert table_metadata(output)["params"]["minmass"] == 20


def test_command_line_reports_bad_input_in_one_line(tmp_path, capsys):
    code = cli.main(["locate", str(tmp_path / "missing.ome.zarr"), "-o", str(tmp_path / "f.parquet")])
    assert code == 2
    assert "missing.ome.zarr" in capsys.readouterr().err


def test_schema_accepts_and_rejects():
    schema = yaml.safe_load((SCHEMAS / "locate.schema.yaml").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"diameter": [5, 7, 7], "minmass": 20, "frames_per_task": 64})
    assert not validator.is_valid({"diameter": 10})
    assert not validator.is_valid({"diameter": 11, "minmas": 20})
