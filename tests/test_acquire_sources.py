"""Frame sources: TIFF stacks, image sequences, Zarr arrays, the simulated camera."""

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from pipeline.acquire import Camera, SimulatedCamera, acquire, open_source
from pipeline.acquire.sources import parse_source
from pipeline.io.movie import write_movie

PHYS = {"pixel_size_um": 0.2, "frame_interval_s": 0.05}


def frames_of(camera):
    camera.open()
    try:
        got = list(camera.frames())
    finally:
        camera.close()
    assert [f.seq for f in got] == list(range(len(got)))
    return np.stack([f.data for f in got]), [f.t for f in got]


@pytest.fixture
def stack():
    return np.random.default_rng(1).integers(0, 4000, size=(6, 9, 11), dtype=np.uint16)


def test_multipage_tiff(tmp_path, stack):
    tifffile.imwrite(tmp_path / "s.tif", stack)
    camera = open_source({"kind": "tiff", "path": str(tmp_path / "s.tif"), **PHYS, "temperature_K": 293})
    assert isinstance(camera, Camera)
    data, times = frames_of(camera)
    np.testing.assert_array_equal(data, stack)
    assert times == pytest.approx([0.05 * i for i in range(6)])
    assert camera.settings["frames_expected"] == 6 and camera.settings["temperature_K"] == 293.0


def test_tiff_hyperstack_gives_volumes(tmp_path):
    volumes = np.arange(4 * 3 * 5 * 6, dtype=np.uint16).reshape(4, 3, 5, 6)
    tifffile.imwrite(tmp_path / "v.tif", volumes, imagej=True, metadata={"axes": "TZYX"})
    data, _ = frames_of(open_source({"kind": "tiff", "path": str(tmp_path / "v.tif"), **PHYS}))
    np.testing.assert_array_equal(data, volumes)


def test_rgb_tiff_needs_a_channel(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 255, size=(3, 8, 9, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    with pytest.raises(ValueError, match="'channel'"):
        open_source({"kind": "tiff", "path": str(tmp_path / "c.tif"), **PHYS})
    data, _ = frames_of(open_source({"kind": "tiff", "path": str(tmp_path / "c.tif"), "channel": 2, **PHYS}))
    np.testing.assert_array_equal(data, rgb[..., 2])


def test_image_sequence_is_sorted_naturally(tmp_path, stack):
    for i, frame in enumerate(stack):
        iio.imwrite(tmp_path / f"frame_{i}.png", frame)
    (tmp_path / "notes.txt").write_text("not an image")
    camera = open_source({"kind": "images", "path": str(tmp_path), **PHYS})
    assert camera.files[-1].name == "frame_5.png" and camera.files[1].name == "frame_1.png"
    data, _ = frames_of(camera)
    np.testing.assert_array_equal(data, stack)
    by_glob = open_source({"kind": "images", "path": str(tmp_path / "frame_*.png"), **PHYS})
    assert by_glob.files == camera.files


def test_image_sequence_refuses_mixed_shapes(tmp_path, stack):
    iio.imwrite(tmp_path / "a_0.png", stack[0])
    iio.imwrite(tmp_path / "a_1.png", stack[1, :5])
    camera = open_source({"kind": "images", "path": str(tmp_path / "a_*.png"), **PHYS})
    with pytest.raises(ValueError, match="a_1.png"):
        camera.open()


def test_zarr_array_group_and_ome_store(tmp_path, stack):
    zarr.create_array(str(tmp_path / "a.zarr"), data=stack, chunks=(4, 9, 11))
    data, _ = frames_of(open_source({"kind": "zarr", "path": str(tmp_path / "a.zarr"), **PHYS}))
    np.testing.assert_array_equal(data, stack)

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("images/raw", data=stack, chunks=(1, 9, 11))
    with pytest.raises(ValueError, match="'component'"):
        open_source({"kind": "zarr", "path": str(tmp_path / "g.zarr"), **PHYS})
    with pytest.raises(ValueError, match="no array 'nope'"):
        open_source({"kind": "zarr", "path": str(tmp_path / "g.zarr"), "component": "nope", **PHYS})
    source = {"kind": "zarr", "path": str(tmp_path / "g.zarr"), "component": "images/raw", **PHYS}
    np.testing.assert_array_equal(frames_of(open_source(source))[0], stack)

    write_movie(tmp_path / "m.ome.zarr", stack, pixel_size_um=0.1, frame_interval_s=0.1)
    data, _ = frames_of(open_source({"kind": "zarr", "path": str(tmp_path / "m.ome.zarr"), **PHYS}))
    np.testing.assert_array_equal(data, stack)


@pytest.mark.parametrize(
    "source, match",
    [
        ({"kind": "images", "path": "x/*.png", "frame_interval_s": 0.1}, "'pixel_size_um'"),
        ({"kind": "tiff", "path": "x.tif", "pixel_size_um": 0.1}, "'frame_interval_s'"),
        ({"kind": "images", "path": "x/*.png", **PHYS, "chanel": 1}, "unknown key 'chanel'"),
        ({"kind": "zarr", **PHYS}, "'path'"),
        ({"kind": "camera"}, "'kind'"),
        ({"path": "x"}, "'kind'"),
        ({"kind": "images", "path": "x/*.png", "pixel_size_um": -1, "frame_interval_s": 0.1}, "'pixel_size_um'"),
        ({"kind": "simulated", "n_frame": 10}, "n_frame"),
    ],
)
def test_bad_source_dicts_name_the_key(source, match):
    with pytest.raises(ValueError, match=match):
        open_source(source)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing"):
        open_source({"kind": "images", "path": str(tmp_path / "nothing*.png"), **PHYS})
    with pytest.raises(FileNotFoundError, match="gone.tif"):
        open_source({"kind": "tiff", "path": str(tmp_path / "gone.tif"), **PHYS})


def test_simulated_camera():
    camera = open_source({"kind": "simulated", "shape": [32, 40], "n_frames": 4, "seed": 3})
    assert isinstance(camera, SimulatedCamera) and isinstance(camera, Camera)
    data, times = frames_of(camera)
    assert data.shape == (4, 32, 40) and data.dtype == np.uint16
    interval = camera.settings["frame_interval_s"]
    assert times == pytest.approx([i * interval for i in range(4)])
    assert camera.settings["pixel_size_um"] and camera.settings["frames_expected"] == 4
    assert set(camera.truth["frame"]) <= {0, 1, 2, 3} and len(camera.truth) > 0


def test_parse_source(tmp_path):
    assert parse_source("simulated", {"n_frames": 5}) == {"kind": "simulated", "n_frames": 5}
    assert parse_source("data/*.png", {"channel": 1})["kind"] == "images"
    (tmp_path / "s.tif").write_bytes(b"")
    assert parse_source(str(tmp_path / "s.tif"))["kind"] == "tiff"
    assert parse_source(str(tmp_path / "m.ome.zarr"))["kind"] == "zarr"
    assert parse_source('{"kind": "zarr", "path": "a"}') == {"kind": "zarr", "path": "a"}


def test_bulk_water_sequence_is_imported_bit_exact(tmp_path, bulk_water_dir):
    """The 40 real frames, green channel, through the real sockets and writer process."""
    source = {
        "kind": "images",
        "path": str(bulk_water_dir / "*.png"),
        "channel": 1,
        "pixel_size_um": 0.3509,
        "frame_interval_s": 1 / 24,
        "temperature_K": 295.0,
    }
    movie = acquire(source, tmp_path / "water" / "movie.ome.zarr", frames_per_shard=16)
    files = sorted(bulk_water_dir.glob("bulk_water_*.png"))
    expected = np.stack([iio.imread(f)[..., 1] for f in files])
    assert len(files) == 40 and movie.complete
    np.testing.assert_array_equal(movie.frames(), expected)
    assert movie.pixel_size_um == (0.3509, 0.3509)
    assert movie.frame_interval_s == pytest.approx(1 / 24)
    assert movie.attrs["source"]["files"] == [f.name for f in files]
    assert movie.attrs["source"]["channel"] == 1
    assert movie.attrs["frames_expected"] == 40 and movie.attrs["run"] == "water"
    np.testing.assert_allclose(movie.timestamps(), np.arange(40) / 24)
