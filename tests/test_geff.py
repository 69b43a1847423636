"""Tracks in geff (pipeline.io.geff): trackflow -> geff -> trackflow gives the
same tracks and the same sizes; geff written by another tracker's own writer
(laptrack) is read and sized; divisions and merges are split and counted;
bad stores are errors naming the store; the link stage, the size command,
the runs table and the workflow take geff."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import geff
import networkx as nx
import numpy as np
import pandas as pd
import pytest
from geff.validate.data import ValidationConfig

from pipeline import link, size
from pipeline.io import read_table, table_metadata, write_movie, write_table
from pipeline.io.config import ConfigError, load_config, load_runs
from pipeline.io.geff import (
    GeffError,
    import_tracks_geff,
    is_geff,
    read_tracks_geff,
    write_tracks_geff,
)
from pipeline.physics import stokes_einstein_diameter

REPO = Path(__file__).resolve().parents[1]
DT = 0.05
PX = 0.1
T = 295.0
SMALL = {"n_bootstrap": 0, "grid_points": 60, "histogram_bins": 30}


def brownian(n_tracks, n_frames, D, *, ndim=2, pixel_size_um=PX, seed=0, spacing_px=40.0):
    """Detections of Brownian particles on a grid (far apart: linking is
    unambiguous), positions in pixels, with trackpy-like feature columns."""
    rng = np.random.default_rng(seed)
    px = np.broadcast_to(np.asarray(pixel_size_um, float), (ndim,))
    side = int(np.ceil(n_tracks ** (1 / ndim)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * ndim, indexing="ij"), -1).reshape(-1, ndim)[:n_tracks]
    start = (grid + 1) * spacing_px
    steps = rng.standard_normal((n_tracks, n_frames, ndim)) * np.sqrt(2 * D * DT) / px
    steps[:, 0] = 0
    pos = start[:, None, :] + np.cumsum(steps, axis=1)
    cols = ["z", "y", "x"][3 - ndim:]
    df = pd.DataFrame(pos.reshape(-1, ndim), columns=cols)
    df.insert(0, "frame", np.tile(np.arange(n_frames), n_tracks))
    n = len(df)
    df["mass"] = rng.uniform(100, 200, n)
    df["size"] = rng.uniform(1.4, 1.8, n)
    df["ecc"] = rng.uniform(0, 0.2, n)
    df["signal"] = rng.uniform(5, 10, n)
    df["raw_mass"] = rng.uniform(1000, 2000, n)
    df["ep"] = rng.uniform(0.01, 0.05, n)
    return df


def make_movie(path, n_frames, shape=(400, 400), pixel_size_um=PX):
    frames = np.zeros((n_frames, *shape), dtype=np.uint8)
    return write_movie(path, frames, pixel_size_um=pixel_size_um, frame_interval_s=DT,
                       metadata={"temperature_K": T, "exposure_s": DT / 4, "source": "test"})


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    """A real link stage run (trackpy, memory 2) on features with gaps:
    tracks.parquet and tracks.geff beside it, with the movie."""
    d = tmp_path_factory.mktemp("linked")
    features = brownian(36, 30, 1.0, seed=1)
    gaps = np.random.default_rng(2).random(len(features)) < 0.05
    features = features[~gaps | (features["frame"] == 0)].reset_index(drop=True)
    write_table(features, d / "refined.parquet", stage="refine")
    movie = d / "movie.ome.zarr"
    make_movie(movie, 30)
    tracks = link.run(d / "refined.parquet", d / "tracks.parquet", {"search_range": 8, "memory": 2, "min_length": 3},
                      movie=movie, geff_output=d / "tracks.geff")
    return d, tracks


# ---------------------------------------------------------------------------
# trackflow -> geff -> trackflow
# ---------------------------------------------------------------------------


def test_link_writes_a_valid_geff_that_reads_back_as_the_same_tracks(linked):
    d, tracks = linked
    store = d / "tracks.geff"
    assert is_geff(store) and not is_geff(d / "movie.ome.zarr")
    assert not list(d.glob("*.partial")) and not list(d.glob("*.old"))
    table = read_table(d / "tracks.parquet")
    back = read_tracks_geff(store)
    # same detections, positions, particles, frames and feature columns, in the table's column order
    pd.testing.assert_frame_equal(back, table)
    info = back.attrs["geff"]
    assert info["n_tracks"] == table["particle"].nunique()
    assert info["n_divisions"] == info["n_merges"] == info["n_edges_cut"] == 0
    assert info["pixel_size_um"] == [PX, PX] and info["frame_interval_s"] == DT
    # the linker's memory bridged gaps: those are single edges across the gap
    assert (table.groupby("particle")["frame"].diff() > 1).any()

    # what another tool sees: geff's own reader and validators
    graph, _ = geff.read(store, backend="networkx")
    assert graph.number_of_nodes() == len(table)
    assert graph.number_of_edges() == len(table) - table["particle"].nunique()
    steps = [data["frame_step"] for _, _, data in graph.edges(data=True)]
    assert set(steps) > {1} and min(steps) == 1
    for u, v in graph.edges:
        assert graph.nodes[v]["frame"] > graph.nodes[u]["frame"]
        assert graph.nodes[u]["particle"] == graph.nodes[v]["particle"]
    node = graph.nodes[next(iter(graph.nodes))]
    assert node["t"] == pytest.approx(node["frame"] * DT)
    assert node["y"] == pytest.approx(node["y_px"] * PX) and node["x"] == pytest.approx(node["x_px"] * PX)
    from geff.core_io import read_to_memory

    read_to_memory(store, data_validation=ValidationConfig(graph=True, tracklet=True, lineage=True))

    meta = geff.GeffMetadata.read(store)
    assert [(a.name, a.type, a.unit) for a in meta.axes] == [
        ("t", "time", "second"), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    assert meta.directed and meta.track_node_props == {"tracklet": "particle", "lineage": "particle"}
    assert meta.node_props_metadata["y_px"].unit == "pixel"
    (movie_ref,) = meta.related_objects
    assert movie_ref.type == "image" and (store / movie_ref.path).resolve() == (d / "movie.ome.zarr").resolve()
    provenance = meta.extra["trackflow"]
    assert provenance["stage"] == "link" and provenance["params"]["memory"] == 2
    assert provenance["trackflow_version"] and provenance["versions"]["geff"] == geff.__version__
    assert provenance["temperature_K"] == T and provenance["exposure_s"] == DT / 4
    assert provenance["stubs_removed"] == table_metadata(d / "tracks.parquet")["stubs_removed"]


def test_the_size_stage_gives_the_same_sizes_from_the_geff(linked, tmp_path):
    d, _ = linked

    def sized(tracks, movie, out, **kw):
        out.mkdir()
        summary = size.run(tracks, movie, out / "sizes.parquet", out / "distribution.csv", out / "summary.json",
                           dict(SMALL), **kw)
        return read_table(out / "sizes.parquet"), summary

    sizes_table, summary_table = sized(d / "tracks.parquet", d / "movie.ome.zarr", tmp_path / "table")
    sizes_geff, summary_geff = sized(d / "tracks.geff", d / "movie.ome.zarr", tmp_path / "geff")
    pd.testing.assert_frame_equal(sizes_geff, sizes_table)
    for key in ("walker_d50_nm", "naive_mean_nm", "particles_per_frame", "concentration_per_ml", "n_tracks"):
        assert summary_geff[key] == summary_table[key], key
    # without the movie: the store recorded the pixel size, frame interval, exposure and temperature
    sizes_alone, summary_alone = sized(d / "tracks.geff", None, tmp_path / "alone")
    pd.testing.assert_frame_equal(sizes_alone, sizes_table)
    assert summary_alone["walker_d50_nm"] == summary_table["walker_d50_nm"]
    assert summary_alone["blur_R"] == summary_table["blur_R"] and summary_alone["movie"] is None
    assert table_metadata(tmp_path / "alone" / "sizes.parquet")["geff"]["n_tracks"] == summary_table["n_tracks_in"]
    # the sizes are right, not only equal: D = 1 µm²/s
    assert sizes_table["D_um2_s"].median() == pytest.approx(1.0, rel=0.2)


def test_3d_anisotropic_round_trip(tmp_path):
    tracks = brownian(8, 12, 0.5, ndim=3, pixel_size_um=(0.3, 0.1, 0.1), seed=3)
    tracks["particle"] = np.repeat(np.arange(8) * 7 + 3, 12)  # ids need not be 0..n-1
    tracks["fit_status"] = np.where(np.arange(len(tracks)) % 3, "fitted", "failed")
    store = write_tracks_geff(tracks, tmp_path / "t.geff", pixel_size_um=(0.3, 0.1, 0.1), frame_interval_s=DT)
    back = read_tracks_geff(store)
    expected = tracks.sort_values(["particle", "frame"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    meta = geff.GeffMetadata.read(store)
    assert [a.name for a in meta.axes] == ["t", "z", "y", "x"] and meta.display_hints.display_depth == "z"
    graph, _ = geff.read(store, backend="networkx")
    node = graph.nodes[0]
    assert node["z"] == pytest.approx(node["z_px"] * 0.3)


def test_a_failed_write_leaves_no_store_and_keeps_the_old_one(tmp_path, monkeypatch):
    tracks = brownian(4, 5, 1.0)
    tracks["particle"] = np.repeat(np.arange(4), 5)
    store = write_tracks_geff(tracks, tmp_path / "t.geff", pixel_size_um=PX, frame_interval_s=DT)
    before = read_tracks_geff(store)

    import pipeline.io.geff as module

    real = module.write_arrays

    def half_then_fail(target, *args, **kwargs):
        real(target, *args, **kwargs)  # the whole store lands in the temporary directory ...
        raise OSError("disk full")  # ... and the writer dies before it is moved into place

    monkeypatch.setattr(module, "write_arrays", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_tracks_geff(tracks.assign(x=tracks["x"] + 1), store, pixel_size_um=PX, frame_interval_s=DT)
    with pytest.raises(OSError):
        write_tracks_geff(tracks, tmp_path / "new.geff", pixel_size_um=PX, frame_interval_s=DT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.geff"]
    pd.testing.assert_frame_equal(read_tracks_geff(store), before)


@pytest.mark.parametrize("change, named", [
    (lambda t: t.drop(columns="particle"), "particle"),
    (lambda t: t.assign(frame=t["frame"] * 0), "share a track and a frame"),
    (lambda t: t.assign(x=np.nan), "'x'"),
    (lambda t: t.assign(t=1.0), "'t'"),
    (lambda t: t.assign(when=pd.Timestamp("2024-01-01")), "'when'"),
])
def test_writing_a_table_that_is_not_tracks_names_the_store_and_column(tmp_path, change, named):
    tracks = brownian(3, 4, 1.0).assign(particle=np.repeat(np.arange(3), 4))
    with pytest.raises(GeffError, match=named) as err:
        write_tracks_geff(change(tracks), tmp_path / "t.geff", pixel_size_um=PX, frame_interval_s=DT)
    assert "t.geff" in str(err.value) and not (tmp_path / "t.geff").exists()


# ---------------------------------------------------------------------------
# geff written by other trackers
# ---------------------------------------------------------------------------


def laptrack_geff(path, detections_um, *, splitting=False, units=("frame", "micrometer", "micrometer")):
    """Track detections (µm) with laptrack and write them with laptrack's own
    geff export (its networkx graph, written by geff.write, as laptrack's
    documentation shows)."""
    from laptrack import LapTrack
    from laptrack.data_conversion import dataframes_to_geff_networkx

    tracker = LapTrack(cutoff=1.5 ** 2, gap_closing_cutoff=False, splitting_cutoff=1.5 ** 2 if splitting else False)
    track_df, split_df, merge_df = tracker.predict_dataframe(
        detections_um, coordinate_cols=["y", "x"], frame_col="frame", only_coordinate_cols=False)
    graph = dataframes_to_geff_networkx(track_df, split_df, merge_df, coordinate_cols=["y", "x"], frame_col="frame")
    geff.write(graph, path, axis_names=["frame", "y", "x"], axis_types=["time", "space", "space"],
               axis_units=list(units))
    return track_df


def test_a_laptrack_geff_is_read_and_sized(tmp_path, laptrack):
    D = 0.8
    truth = brownian(49, 40, D, seed=4)
    detections = truth[["frame", "y", "x"]].assign(y=truth["y"] * PX, x=truth["x"] * PX)  # the lab tracked in µm
    track_df = laptrack_geff(tmp_path / "laptrack.geff", detections)
    tracks = read_tracks_geff(tmp_path / "laptrack.geff", pixel_size_um=PX)
    assert tracks.attrs["geff"]["space_units"] == {"y": "micrometer", "x": "micrometer"}
    assert len(tracks) == len(truth) and tracks["particle"].nunique() == track_df["track_id"].nunique() == 49
    merged = tracks.merge(truth[["frame", "y", "x"]].round(6), left_on=["frame", tracks["y"].round(6),
                          tracks["x"].round(6)], right_on=["frame", "y", "x"], how="left", indicator=True)
    assert (merged["_merge"] == "both").all()  # every detection back in pixels where it was

    out = tmp_path / "sized"
    out.mkdir()
    summary = size.run(
        tmp_path / "laptrack.geff", None, out / "sizes.parquet", out / "distribution.csv", out / "summary.json",
        dict(SMALL), settings={"pixel_size_um": PX, "frame_interval_s": DT, "temperature_K": T, "exposure_s": 0.0},
    )
    sizes = read_table(out / "sizes.parquet")
    assert len(sizes) == 49 and sizes["D_um2_s"].median() == pytest.approx(D, rel=0.2)
    expected_nm = stokes_einstein_diameter(D, T, summary["viscosity_Pa_s"])
    assert summary["naive_d50_nm"] == pytest.approx(expected_nm, rel=0.25)
    assert summary["concentration_per_ml"] is None and summary["temperature_source"] == "the run's settings"


def test_a_division_is_split_into_tracks_and_counted(tmp_path, laptrack):
    rows = []
    for f in range(10):  # a particle that divides at frame 5, and one that does not
        if f < 5:
            rows.append((f, 1.0 + 0.01 * f, 1.0))
        else:
            rows += [(f, 1.0 + 0.1 * (f - 4), 1.0), (f, 1.0 - 0.1 * (f - 4), 1.0)]
        rows.append((f, 3.0, 3.0 + 0.02 * f))
    detections = pd.DataFrame(rows, columns=["frame", "y", "x"])
    laptrack_geff(tmp_path / "division.geff", detections, splitting=True)
    tracks = read_tracks_geff(tmp_path / "division.geff", pixel_size_um=0.5)
    info = tracks.attrs["geff"]
    assert (info["n_divisions"], info["n_merges"], info["n_edges_cut"], info["n_tracks"]) == (1, 0, 2, 4)
    assert len(tracks) == len(detections)  # nothing dropped
    lengths = sorted(tracks.groupby("particle").size())
    assert lengths == [5, 5, 5, 10]
    assert any("division" in note for note in info["notes"])


def test_a_merge_is_split_and_undirected_edges_are_read_forward_in_time(tmp_path):
    graph = nx.Graph()  # undirected, node ids not in time order
    positions = {10: (0, 1.0), 11: (1, 1.1), 20: (0, 5.0), 21: (1, 4.9), 30: (2, 3.0), 31: (3, 3.1), 40: (4, 3.2)}
    for node, (frame, y) in positions.items():
        graph.add_node(node, t=frame, y=y, x=2.0)
    graph.add_edges_from([(11, 10), (21, 20), (30, 11), (30, 21), (31, 30), (40, 31)])
    geff.write(graph, tmp_path / "merge.geff", axis_names=["t", "y", "x"], axis_units=["frame", "pixel", "pixel"])
    tracks = read_tracks_geff(tmp_path / "merge.geff")
    info = tracks.attrs["geff"]
    assert (info["n_divisions"], info["n_merges"], info["n_edges_cut"], info["n_tracks"]) == (0, 1, 2, 3)
    assert sorted(tracks.groupby("particle")["frame"].apply(tuple)) == [(0, 1), (0, 1), (2, 3, 4)]


# TrackMate's unit names ('micron', 'sec') are not OME-Zarr's: geff warns when it writes them
@pytest.mark.filterwarnings("ignore:.*not in valid OME-Zarr units")
def test_trackmate_style_axes_time_in_seconds_and_a_flat_z(tmp_path):
    graph = nx.DiGraph()
    for i in range(6):
        graph.add_node(i, POSITION_X=0.5 + 0.01 * i, POSITION_Y=1.0, POSITION_Z=0.0, POSITION_T=i * 0.04,
                       FRAME=i, QUALITY=3.0 + i)
    graph.add_edges_from((i, i + 1) for i in range(5))
    geff.write(graph, tmp_path / "tm.geff", axis_names=["POSITION_X", "POSITION_Y", "POSITION_Z", "POSITION_T"],
               axis_types=["space", "space", "space", "time"], axis_units=["micron", "micron", "micron", "sec"])
    tracks = read_tracks_geff(tmp_path / "tm.geff", pixel_size_um=0.1)
    assert list(tracks.columns[:4]) == ["frame", "y", "x", "particle"] and "z" not in tracks.columns
    assert tracks["x"].to_numpy() == pytest.approx(5.0 + 0.1 * np.arange(6))
    assert tracks["frame"].tolist() == list(range(6)) and tracks["QUALITY"].tolist() == [3.0 + i for i in range(6)]
    assert tracks.attrs["geff"]["frame_interval_s"] == pytest.approx(0.04)  # from FRAME and POSITION_T
    assert any("constant" in note for note in tracks.attrs["geff"]["notes"])
    # times in seconds without a frame property: the run's frame interval makes frames
    for i in range(6):
        del graph.nodes[i]["FRAME"]
    geff.write(graph, tmp_path / "tm2.geff", axis_names=["POSITION_X", "POSITION_Y", "POSITION_T"],
               axis_units=["micron", "micron", "sec"])
    assert read_tracks_geff(tmp_path / "tm2.geff", pixel_size_um=0.1, frame_interval_s=0.04)["frame"].tolist() \
        == list(range(6))
    with pytest.raises(GeffError, match="frame_interval_s"):
        read_tracks_geff(tmp_path / "tm2.geff", pixel_size_um=0.1)
    with pytest.raises(GeffError, match="not a whole frame"):
        read_tracks_geff(tmp_path / "tm2.geff", pixel_size_um=0.1, frame_interval_s=0.03)


# ---------------------------------------------------------------------------
# negative controls: errors name the store and what is wrong
# ---------------------------------------------------------------------------


def small_geff(path, **axes):
    graph = nx.DiGraph()
    for i in range(4):
        graph.add_node(i, t=i, y=1.0 + i, x=2.0)
    graph.add_edges_from([(0, 1), (1, 2), (2, 3)])
    options = {"axis_names": ["t", "y", "x"], "axis_types": ["time", "space", "space"],
               "axis_units": ["frame", "pixel", "pixel"], **axes}
    geff.write(graph, path, **options)
    return path


def test_missing_store_and_not_a_geff(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.geff"):
        read_tracks_geff(tmp_path / "nothing.geff")
    (tmp_path / "empty.geff").mkdir()
    with pytest.raises(GeffError, match=r"empty\.geff: not a valid geff store"):
        read_tracks_geff(tmp_path / "empty.geff")


def test_a_missing_position_property_names_the_store_and_the_axis(tmp_path):
    store = small_geff(tmp_path / "t.geff")
    read_tracks_geff(store)  # sound before
    shutil.rmtree(store / "nodes" / "props" / "x")
    with pytest.raises(GeffError, match=r"t\.geff: not a valid geff store.*\bx\b"):
        read_tracks_geff(store)


def test_a_corrupt_property_array_names_the_store(tmp_path):
    store = small_geff(tmp_path / "t.geff")
    zarray = store / "nodes" / "props" / "y" / "values" / ".zarray"
    meta = json.loads(zarray.read_text())
    meta["shape"] = [7]
    zarray.write_text(json.dumps(meta))
    with pytest.raises(GeffError, match=r"t\.geff: not a valid geff store"):
        read_tracks_geff(store)


def test_no_time_axis_or_no_axes(tmp_path):
    store = small_geff(tmp_path / "t.geff", axis_names=["y", "x"], axis_types=["space", "space"],
                       axis_units=["pixel", "pixel"])
    with pytest.raises(GeffError, match=r"t\.geff: no time axis among the axes \['y', 'x'\]"):
        read_tracks_geff(store)
    graph = nx.DiGraph()
    graph.add_node(0, t=0, y=1.0, x=1.0)
    geff.write(graph, tmp_path / "none.geff")
    with pytest.raises(GeffError, match=r"none\.geff: declares no axes"):
        read_tracks_geff(tmp_path / "none.geff")


def test_units_are_never_guessed(tmp_path):
    store = small_geff(tmp_path / "t.geff", axis_units=None)
    with pytest.raises(GeffError, match=r"t\.geff: the (space|time) axis .* states no unit"):
        read_tracks_geff(store)
    tracks = read_tracks_geff(store, space_unit="pixel", time_unit="frame")
    assert tracks["y"].tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(GeffError, match="needs the run's pixel size"):
        read_tracks_geff(store, space_unit="micrometer", time_unit="frame")
    assert read_tracks_geff(store, space_unit="nanometer", time_unit="frame", pixel_size_um=0.001)["y"].tolist() \
        == pytest.approx([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(GeffError, match="'furlong'"):
        read_tracks_geff(store, space_unit="furlong", time_unit="frame")


def test_an_edge_back_in_time_or_a_cycle_is_an_error(tmp_path):
    graph = nx.DiGraph()
    for i in range(3):
        graph.add_node(i, t=i, y=1.0, x=1.0)
    graph.add_edges_from([(0, 1), (1, 2), (2, 0)])
    geff.write(graph, tmp_path / "cycle.geff", axis_names=["t", "y", "x"], axis_units=["frame", "pixel", "pixel"])
    with pytest.raises(GeffError, match=r"cycle\.geff: 1 edge\(s\) do not go forward in time .*node 2 in frame 2 -> "
                                        r"node 0 in frame 0"):
        read_tracks_geff(tmp_path / "cycle.geff")


# ---------------------------------------------------------------------------
# the import, the command line, the runs table, the workflow
# ---------------------------------------------------------------------------


def test_import_records_what_was_read_and_the_cli_sizes_a_geff(tmp_path, laptrack, capsys):
    truth = brownian(25, 30, 1.0, seed=5)
    detections = truth[["frame", "y", "x"]].assign(y=truth["y"] * PX, x=truth["x"] * PX)
    laptrack_geff(tmp_path / "lab.geff", detections)
    settings = {"pixel_size_um": PX, "frame_interval_s": DT, "temperature_K": T}
    table = import_tracks_geff(tmp_path / "lab.geff", tmp_path / "tracks.parquet", settings)
    meta = table_metadata(tmp_path / "tracks.parquet")
    assert meta["stage"] == "import_geff" and meta["params"] == settings
    assert meta["geff"]["n_tracks"] == 25 and meta["input"] == str(tmp_path / "lab.geff")
    pd.testing.assert_frame_equal(read_table(tmp_path / "tracks.parquet"), table, check_like=True)
    with pytest.raises(ValueError, match="unknown setting"):
        import_tracks_geff(tmp_path / "lab.geff", tmp_path / "x.parquet", {"pixel_size": PX})

    from pipeline.cli import main

    args = ["size", str(tmp_path / "lab.geff"), "-s", f"pixel_size_um={PX}", "-s", f"frame_interval_s={DT}",
            "-s", f"temperature_K={T}", "--params", json.dumps(SMALL)]
    assert main(args) == 0
    assert "25 tracks" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["n_tracks"] == 25
    # without a pixel size the µm positions cannot become pixels: a clear error, exit 2
    assert main(args[:2] + args[4:]) == 2
    assert "pixel size" in capsys.readouterr().err


def runs_file(tmp_path, source, settings):
    path = tmp_path / "runs.tsv"
    path.write_text(f"run\tsource\tgroup\tsettings\toverrides\nlab\t{source}\t\t{settings}\t\n")
    return path


def test_a_geff_source_in_the_runs_table(tmp_path):
    config = load_config(REPO / "config" / "config.yaml")
    store = small_geff(tmp_path / "lab.geff")
    (run,) = load_runs(runs_file(tmp_path, store, "{pixel_size_um: 0.1, frame_interval_s: 0.05, temperature_K: 295}"),
                       config)
    assert run["kind"] == "geff"
    with pytest.raises(ConfigError, match="settings lack 'pixel_size_um'"):
        load_runs(runs_file(tmp_path, store, "{frame_interval_s: 0.05}"), config)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['channel'\] for a geff source"):
        load_runs(runs_file(tmp_path, store, "{pixel_size_um: 0.1, frame_interval_s: 0.05, channel: 1}"), config)
    zarr_named = tmp_path / "tracks.zarr"
    shutil.copytree(store, zarr_named)
    (run,) = load_runs(runs_file(tmp_path, zarr_named, "{kind: geff, pixel_size_um: 0.1, frame_interval_s: 0.05}"),
                       config)
    assert run["kind"] == "geff"


@pytest.mark.slow
def test_the_workflow_sizes_and_reports_a_geff_run(tmp_path, laptrack):
    truth = brownian(25, 30, 1.0, seed=6)
    detections = truth[["frame", "y", "x"]].assign(y=truth["y"] * PX, x=truth["x"] * PX)
    laptrack_geff(tmp_path / "lab.geff", detections)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        "size: {n_bootstrap: 0, grid_points: 60}\n")
    runs_file(tmp_path / "config", "lab.geff",
              "{pixel_size_um: 0.1, frame_interval_s: 0.05, temperature_K: 295, exposure_s: 0.0}")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--directory", str(tmp_path), "--workflow-profile", str(REPO / "profiles" / "default"), "--cores", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    results = tmp_path / "results"
    assert table_metadata(results / "lab" / "tracks.parquet")["stage"] == "import_geff"
    assert not (results / "lab" / "movie.ome.zarr").exists()
    summary = json.loads((results / "lab" / "summary.json").read_text())
    assert summary["n_tracks"] == 25 and summary["temperature_source"] == "the run's settings"
    page = (results / "report" / "lab.html").read_text()
    assert "geff import" in page and "lab.geff" in page
