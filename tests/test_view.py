"""trackflow view: a run's layers for napari, built from the run's own files,
and napari started on them headless (Xvfb, Qt's xcb platform).

The runs are made by the stages' own run functions: a simulated NTA movie
taken through acquire, locate, refine, link, segment and reassign (2D), and
a 3D movie of objects with anisotropic voxels through segment and reassign.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import skip_or_fail
from pipeline import cli
from pipeline.io import open_movie, read_table, write_movie, write_table
from pipeline.io.movie import MovieError
from pipeline.simulate.objects import simulate_objects
from pipeline.view import napari_get_reader, run_layers

pytestmark = pytest.mark.slow
SYNC = {"scheduler": "synchronous"}


@pytest.fixture(scope="module")
def nta_run(tmp_path_factory) -> Path:
    """results/sim/ of a simulated 2D run: every stage's output."""
    from pipeline import acquire, link, locate, reassign, refine, segment

    run_dir = tmp_path_factory.mktemp("results") / "sim"
    movie = run_dir / "movie.ome.zarr"
    source = {"kind": "simulated", "shape": [64, 64], "n_frames": 20, "n_particles": 8,
              "diameters_nm": [200], "seed": 1}  # fmt: skip
    acquire.run(source, movie, {"frames_per_shard": 8}, truth=run_dir / "truth.parquet")
    locate.run(movie, run_dir / "features.parquet", {"diameter": 9, "minmass": 300}, compute=SYNC)
    refine.run(movie, run_dir / "features.parquet", run_dir / "refined.parquet", {}, compute=SYNC)
    link.run(run_dir / "refined.parquet", run_dir / "tracks.parquet", {"search_range": 10, "memory": 0})
    segment.run(movie, run_dir / "labels.ome.zarr", {}, compute=SYNC)
    reassign.run(movie, run_dir / "labels.ome.zarr", run_dir / "reassigned.ome.zarr",
                 run_dir / "objects.parquet", {})  # fmt: skip
    return run_dir


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory) -> Path:
    """results/vol/ of a 3D run (z 0.5 µm, y and x 0.2 µm): movie and labels."""
    from pipeline import segment

    run_dir = tmp_path_factory.mktemp("results") / "vol"
    frames, _, _ = simulate_objects(shape=(12, 40, 40), n_frames=6, n_objects=4, seed=2)
    write_movie(run_dir / "movie.ome.zarr", frames, pixel_size_um=(0.5, 0.2, 0.2), frame_interval_s=0.25,
                frames_per_shard=3)  # fmt: skip
    segment.run(run_dir / "movie.ome.zarr", run_dir / "labels.ome.zarr", {"sigma": [0.4, 1.0, 1.0]}, compute=SYNC)
    return run_dir


def by_name(layers) -> dict:
    return {kwargs["name"]: (data, kwargs, layer_type) for data, kwargs, layer_type in layers}


# -- the layers (no napari needed) ------------------------------------------------------


def test_a_run_gives_every_layer_at_the_movies_physical_scale(nta_run):
    movie = open_movie(nta_run / "movie.ome.zarr")
    layers = by_name(run_layers(nta_run))
    assert list(layers) == ["movie", "labels", "reassigned", "features", "tracks"]
    assert [layers[n][2] for n in layers] == ["image", "labels", "labels", "points", "tracks"]
    scale = [movie.frame_interval_s, *movie.pixel_size_um]
    assert scale == [pytest.approx(1 / 30), 0.1, 0.1]  # the simulator's s and µm
    for name, (_, kwargs, _) in layers.items():
        assert kwargs["scale"] == scale, name
        assert kwargs["axis_labels"] == ["t", "y", "x"] and kwargs["units"] == ["second", "micrometer", "micrometer"]
    image = layers["movie"][0]
    assert image.shape == (20, 64, 64) and np.array_equal(image[3], movie[3])
    assert layers["labels"][0].shape == image.shape and layers["labels"][0].dtype == np.int32
    features = read_table(nta_run / "features.parquet")
    points, point_kwargs, _ = layers["features"]
    assert len(features) > 20 and points.shape == (len(features), 3)
    np.testing.assert_array_equal(points, features[["frame", "y", "x"]].to_numpy(float))
    assert point_kwargs["size"] == 9.0 and "mass" in point_kwargs["features"]
    tracks = read_table(nta_run / "tracks.parquet")
    track_data = layers["tracks"][0]
    assert track_data.shape == (len(tracks), 4)
    assert len(np.unique(track_data[:, 0])) == tracks["particle"].nunique() > 1
    # napari's order: by track, then time
    order = np.lexsort((track_data[:, 1], track_data[:, 0]))
    np.testing.assert_array_equal(order, np.arange(len(track_data)))


def test_a_3d_run_keeps_its_anisotropic_voxels(volume_run):
    layers = by_name(run_layers(volume_run))
    assert list(layers) == ["movie", "labels"]
    for _, kwargs, _ in layers.values():
        assert kwargs["scale"] == [0.25, 0.5, 0.2, 0.2] and kwargs["axis_labels"] == ["t", "z", "y", "x"]
        assert kwargs["units"] == ["second", "micrometer", "micrometer", "micrometer"]
    assert layers["labels"][0].shape == (6, 12, 40, 40)


def test_missing_outputs_are_left_out_and_bad_ones_named(nta_run, tmp_path):
    run_dir = tmp_path / "partial"
    shutil.copytree(nta_run / "movie.ome.zarr", run_dir / "movie.ome.zarr")
    assert [kw["name"] for _, kw, _ in run_layers(run_dir)] == ["movie"]  # a run just acquired
    with pytest.raises(FileNotFoundError, match="movie.ome.zarr"):
        run_layers(tmp_path / "nothing")
    features = read_table(nta_run / "features.parquet").assign(z=1.0)  # 3D positions for a 2D movie
    write_table(features, run_dir / "features.parquet", stage="locate")
    with pytest.raises(MovieError, match="features.parquet.*3D"):
        run_layers(run_dir)


def test_the_reader_takes_run_directories_only(nta_run, tmp_path):
    reader = napari_get_reader(str(nta_run))
    assert reader is not None and [kw["name"] for _, kw, _ in reader(str(nta_run))][0] == "movie"
    assert napari_get_reader(str(tmp_path)) is None
    assert napari_get_reader(str(nta_run / "features.parquet")) is None


def test_the_reader_manifest_is_valid_for_napari(nta_run):
    try:
        import npe2
    except ImportError:
        skip_or_fail("npe2 (napari's plugin engine) is not installed (pip install 'trackflow[view]')")
    manifest = npe2.PluginManifest.from_file(Path(cli.__file__).with_name("napari.yaml"))
    manager = npe2.PluginManager()
    manager.register(manifest)
    readers = list(manager.iter_compatible_readers([str(nta_run)]))
    assert [r.command for r in readers] == ["trackflow.get_reader"]
    from npe2.manifest.utils import import_python_name

    (command,) = [c for c in manifest.contributions.commands if c.id == "trackflow.get_reader"]
    layers = import_python_name(command.python_name)(str(nta_run))(str(nta_run))
    assert [kw["name"] for _, kw, _ in layers][-1] == "tracks"


def test_napari_accepts_the_layers_without_a_window(nta_run, volume_run):
    """napari's own viewer model (no Qt) builds every layer from the tuples."""
    try:
        from napari.components import ViewerModel
    except ImportError:
        skip_or_fail("napari is not installed (pip install 'trackflow[view]')")
    for run_dir in (nta_run, volume_run):
        model = ViewerModel()
        for data, kwargs, layer_type in run_layers(run_dir):
            model._add_layer_from_data(data, kwargs, layer_type)
        movie = open_movie(run_dir / "movie.ome.zarr")
        for layer in model.layers:
            np.testing.assert_allclose(layer.scale, movie.scale)
            assert [str(u) for u in layer.units][0] == "second"
    model = ViewerModel()
    for layer in run_layers(nta_run):
        model._add_layer_from_data(*layer)
    assert len(model.layers["features"].data) == len(read_table(nta_run / "features.parquet"))
    assert len(np.unique(model.layers["tracks"].data[:, 0])) == read_table(nta_run / "tracks.parquet")["particle"].nunique()
    # world extent of the time axis: the movie's duration in seconds
    assert model.layers["movie"].extent.world[1][0] == pytest.approx(19 / 30)


# -- napari itself, headless -------------------------------------------------------------


@pytest.fixture(scope="module")
def qt_display():
    """A display for Qt: the session's own, or an Xvfb started for these tests
    (``apt-get install xvfb``; .ci/run installs it). Qt aborts the process
    when its platform cannot start, so that is tried in a child first."""
    try:
        import napari  # noqa: F401
    except ImportError:
        skip_or_fail("napari is not installed (pip install 'trackflow[view]')")
    env = {"QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "xcb")}
    xvfb = None
    if not os.environ.get("DISPLAY"):
        if shutil.which("Xvfb") is None:
            skip_or_fail("no display and no Xvfb for napari's window (apt-get install xvfb)")
        read, write = os.pipe()
        xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(write)
        with os.fdopen(read) as fh:
            number = fh.readline().strip()
        if not number:
            xvfb.kill()
            skip_or_fail("Xvfb did not start")
        env["DISPLAY"] = f":{number}"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "from qtpy.QtWidgets import QApplication; QApplication([])"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if probe.returncode != 0:
            skip_or_fail(f"Qt cannot start on {env}: {probe.stderr.strip()[-400:]}")
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(timeout=10)


def test_trackflow_view_opens_napari_with_the_runs_layers(nta_run, qt_display, monkeypatch):
    import napari

    seen = {}

    def run_instead():  # the test, not a user, closes the window
        viewer = napari.current_viewer()
        seen["layers"] = {layer.name: layer for layer in viewer.layers}
        seen["screenshot"] = viewer.screenshot(canvas_only=True)
        viewer.close()

    monkeypatch.setattr(napari, "run", run_instead)
    assert cli.main(["view", str(nta_run)]) == 0
    layers = seen["layers"]
    assert list(layers) == ["movie", "labels", "reassigned", "features", "tracks"]
    assert [type(layer).__name__ for layer in layers.values()] == ["Image", "Labels", "Labels", "Points", "Tracks"]
    movie = open_movie(nta_run / "movie.ome.zarr")
    for layer in layers.values():
        np.testing.assert_allclose(layer.scale, movie.scale)
    assert len(layers["features"].data) == len(read_table(nta_run / "features.parquet"))
    assert len(np.unique(layers["tracks"].data[:, 0])) == read_table(nta_run / "tracks.parquet")["particle"].nunique()
    # the canvas really drew: the frame's particles and tracks, not one flat colour
    assert seen["screenshot"].ndim == 3 and seen["screenshot"][..., :3].std() > 1


def test_trackflow_view_names_a_directory_that_is_no_run(tmp_path, capsys):
    assert cli.main(["view", str(tmp_path)]) == 2
    assert "movie.ome.zarr" in capsys.readouterr().err
