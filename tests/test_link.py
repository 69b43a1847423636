"""The link stage: nearest-neighbour linking equals trackpy's, stubs and
appearance filters are counted, drift is measured, anisotropic 3D links in µm."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import jsonschema
import numpy as np
import pandas as pd
import pytest
import trackpy
import yaml

from pipeline.cli import main
from pipeline.io import TableError, read_table, table_metadata, write_movie, write_table
from pipeline.link import link, link_nearest, run
from pipeline.link.nearest import step_vectors

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "link.schema.yaml"

trackpy.quiet()


def random_walks(n_particles=60, n_frames=30, *, step=1.0, box=(200.0, 200.0), drift=None,
                 missing=0.0, seed=0):
    """Brownian walks as features: ``fid`` (row id) and ``truth`` (walker id) columns."""
    rng = np.random.default_rng(seed)
    ndim = len(box)
    start = rng.uniform(0, 1, (n_particles, ndim)) * np.asarray(box)
    steps = rng.normal(0, step, (n_frames, n_particles, ndim))
    steps[0] = 0
    if drift is not None:
        steps[1:] += np.asarray(drift)
    positions = start + np.cumsum(steps, axis=0)
    frame, truth = np.meshgrid(np.arange(n_frames), np.arange(n_particles), indexing="ij")
    cols = ["z", "y", "x"][-ndim:]
    df = pd.DataFrame(positions.reshape(-1, ndim), columns=cols)
    df.insert(0, "frame", frame.ravel())
    df["truth"] = truth.ravel()
    df["mass"] = rng.uniform(50, 150, len(df))
    df["size"] = rng.uniform(2, 3, len(df))
    df["ecc"] = rng.uniform(0, 0.2, len(df))
    if missing:
        df = df[rng.uniform(size=len(df)) >= missing]
    df = df.sample(frac=1, random_state=seed).reset_index(drop=True)  # order must not matter
    df["fid"] = np.arange(len(df))
    return df


def trackpy_reference(features, search_range, memory, min_length):
    tracks = trackpy.link(features, search_range, memory=memory)
    return trackpy.filter_stubs(tracks, min_length).reset_index(drop=True)


def assert_same_tracks(ours, reference):
    """Same rows, each in the same track with the same id."""
    assert len(ours) == len(reference)
    mine = ours.set_index("fid")["particle"].sort_index()
    theirs = reference.set_index("fid")["particle"].sort_index()
    pd.testing.assert_series_equal(mine, theirs.astype("int64"))


def assert_sorted(tracks):
    assert tracks["particle"].dtype == np.int64
    keys = list(zip(tracks["particle"], tracks["frame"]))
    assert keys == sorted(keys)
    assert (tracks.index == np.arange(len(tracks))).all()


@pytest.fixture(scope="module")
def bulk_water_features(bulk_water_dir):
    files = sorted(bulk_water_dir.glob("bulk_water_*.png"))
    frames = 255 - np.stack([iio.imread(f)[..., 1] for f in files])  # dark particles: invert
    features = trackpy.batch(frames, 11, minmass=20, processes=1)
    features = features.reset_index(drop=True)
    features["fid"] = np.arange(len(features))
    return features


def test_link_equals_trackpy_on_simulated_walks():
    features = random_walks(missing=0.1)
    ours = link_nearest(features.drop(columns="truth"), search_range=5, memory=3, min_length=5)
    assert_same_tracks(ours, trackpy_reference(features, 5, 3, 5))
    assert_sorted(ours)
    # the walks are well separated: every track follows one walker
    purity = features.set_index("fid").loc[ours["fid"], "truth"].groupby(ours["particle"].to_numpy()).nunique()
    assert (purity == 1).mean() > 0.95


def test_link_equals_trackpy_on_bulk_water(bulk_water_features, tmp_path):
    features = bulk_water_features
    reference = trackpy_reference(features, 5, 3, 5)
    ours = link(features, method="nearest", search_range=5, memory=3, min_length=5)
    assert_same_tracks(ours, reference)
    assert ours["particle"].nunique() == reference["particle"].nunique() > 500

    # the file-level entry gives the same tracks and records what it did
    path = write_table(features, tmp_path / "features.parquet", stage="locate")
    out = tmp_path / "tracks.parquet"
    written = run(path, out, {"search_range": 5, "memory": 3, "min_length": 5})
    assert_same_tracks(read_table(out), reference)
    assert_sorted(read_table(out))
    meta = table_metadata(out)
    assert meta["stage"] == "link"
    assert meta["params"]["memory"] == 3 and meta["params"]["method"] == "nearest"
    assert meta["features_in"] == len(features)
    assert meta["features_out"] == len(reference) == len(written)
    assert meta["tracks"] == reference["particle"].nunique()
    assert meta["features_in"] - meta["features_out"] == meta["stub_features_removed"]


def test_stubs_and_appearance_filters_are_removed_and_counted():
    rows = []
    # (track length, mean mass, ecc): long and bright, long but dim, long but elongated, two stubs
    for pid, (length, mass, ecc) in enumerate([(10, 100, 0.1), (8, 5, 0.1), (9, 100, 0.6), (4, 100, 0.1), (2, 100, 0.1)]):
        for t in range(length):
            rows.append({"frame": t, "y": 50.0 * pid, "x": 10.0 + 0.5 * t, "mass": mass, "size": 2.0, "ecc": ecc})
    features = pd.DataFrame(rows)
    tracks = link_nearest(features, search_range=3, min_length=5, min_mass=20, max_ecc=0.3)
    assert tracks["particle"].nunique() == 1
    assert len(tracks) == 10 and (tracks["mass"] == 100).all() and (tracks["ecc"] == 0.1).all()
    counts = tracks.attrs["link_counts"]
    assert counts == {
        "features_in": 33,
        "tracks_linked": 5,
        "stubs_removed": 2,
        "stub_features_removed": 6,
        "appearance_removed": 2,
        "appearance_features_removed": 17,
        "features_out": 10,
        "tracks": 1,
    }
    # min_length 0 keeps everything; a missing column for a filter is an error naming it
    assert len(link_nearest(features, search_range=3, min_length=0)) == 33
    with pytest.raises(ValueError, match="'ecc'"):
        link_nearest(features.drop(columns="ecc"), search_range=3, max_ecc=0.3)


def test_drift_is_measured_and_positions_kept(tmp_path):
    drift = np.array([0.3, -0.5])  # px per frame (y, x)
    # the ensemble's own mean Brownian motion adds ~ step * sqrt(t / n) to the measured drift
    features = random_walks(n_particles=200, n_frames=30, step=0.3, drift=drift, seed=3)
    tracks = link_nearest(features, search_range=3, memory=0, min_length=5, subtract_drift=True)
    # measured positions are untouched
    original = features.set_index("fid").loc[tracks["fid"], ["y", "x"]].to_numpy()
    np.testing.assert_array_equal(tracks[["y", "x"]].to_numpy(), original)
    per_frame = tracks.groupby("frame")[["drift_y", "drift_x"]].first()
    expected = np.outer(per_frame.index, drift)
    np.testing.assert_allclose(per_frame.to_numpy(), expected, atol=0.25)
    assert per_frame.loc[0].tolist() == [0.0, 0.0]
    # with the drift removed, the ensemble no longer moves
    corrected = tracks["x"] - tracks["drift_x"]
    assert abs(np.polyfit(tracks["frame"], corrected, 1)[0]) < 0.05 < abs(np.polyfit(tracks["frame"], tracks["x"], 1)[0])

    path = write_table(features, tmp_path / "refined.parquet", stage="refine")
    run(path, tmp_path / "tracks.parquet", {"search_range": 3, "memory": 0, "subtract_drift": True})
    meta = table_metadata(tmp_path / "tracks.parquet")
    assert meta["drift_max_px"]["drift_x"] == pytest.approx(29 * 0.5, abs=0.25)


def test_anisotropic_3d_links_in_micrometres(tmp_path):
    pixel_um = (1.0, 0.1, 0.1)  # z, y, x: coarse axial sampling
    walks_um = random_walks(n_particles=40, n_frames=20, step=0.15, box=(10.0, 20.0, 20.0), seed=5)
    features = walks_um.copy()
    for col, size in zip(["z", "y", "x"], pixel_um):
        features[col] = walks_um[col] / size  # positions in pixels, as the tables hold them

    ours = link_nearest(features, search_range=0.8, pixel_size_um=pixel_um, min_length=5)
    # identical to linking the positions in µm with a scalar search range
    assert_same_tracks(ours, trackpy_reference(walks_um, 0.8, 0, 5))
    purity = ours.groupby("particle")["truth"].nunique()
    assert (purity == 1).mean() > 0.95 and ours["particle"].nunique() >= 35
    # positions stay in pixels
    np.testing.assert_allclose(ours["z"], features.set_index("fid").loc[ours["fid"], "z"])

    # run() takes the pixel size from the movie
    movie = tmp_path / "movie.ome.zarr"
    write_movie(movie, np.zeros((2, 3, 4, 4), np.uint8), pixel_size_um=pixel_um, frame_interval_s=0.1)
    path = write_table(features, tmp_path / "features.parquet", stage="locate")
    run(path, tmp_path / "tracks.parquet", {"search_range_um": 0.8, "memory": 0}, movie=movie)
    assert_same_tracks(read_table(tmp_path / "tracks.parquet"), ours)
    assert table_metadata(tmp_path / "tracks.parquet")["pixel_size_um"] == list(pixel_um)
    with pytest.raises(ValueError, match="search_range_um needs the movie"):
        run(path, tmp_path / "t2.parquet", {"search_range_um": 0.8})


def test_empty_input_gives_empty_tracks_with_a_warning(tmp_path):
    features = pd.DataFrame({c: pd.Series(dtype=float) for c in ("frame", "y", "x", "mass")})
    with pytest.warns(UserWarning, match="no features"):
        tracks = link_nearest(features, search_range=5, subtract_drift=True)
    assert tracks.empty
    assert list(tracks.columns) == ["frame", "y", "x", "mass", "particle", "drift_y", "drift_x"]
    assert tracks["particle"].dtype == np.int64

    path = write_table(features, tmp_path / "features.parquet", stage="locate")
    with pytest.warns(UserWarning, match="no features"):
        run(path, tmp_path / "tracks.parquet", {})
    written = read_table(tmp_path / "tracks.parquet", required=["particle"])
    assert written.empty
    assert table_metadata(tmp_path / "tracks.parquet")["features_in"] == 0


def test_bad_input_is_named(tmp_path):
    features = random_walks(n_particles=5, n_frames=5)
    path = write_table(features.drop(columns="x"), tmp_path / "features.parquet", stage="locate")
    with pytest.raises(TableError, match=r"features\.parquet.*'x'"):
        run(path, tmp_path / "tracks.parquet", {})
    good = write_table(features, tmp_path / "good.parquet", stage="locate")
    with pytest.raises(ValueError, match="'serch_range'"):
        run(good, tmp_path / "tracks.parquet", {"serch_range": 5})
    with pytest.raises(ValueError, match="link.method"):
        link(features, method="magic", search_range=5)
    broken = features.copy()
    broken.loc[broken["frame"] == 3, "y"] = np.nan
    with pytest.raises(ValueError, match="non-finite positions"):
        link_nearest(broken, search_range=5)
    assert not (tmp_path / "tracks.parquet").exists()


def test_flow_output_holds_the_one_frame_steps(tmp_path):
    features = pd.DataFrame({"frame": [0, 1, 2, 4], "y": [1.0, 2.0, 4.0, 5.0], "x": [0.0, 1.0, 1.0, 1.0]})
    path = write_table(features, tmp_path / "features.parquet", stage="locate")
    run(path, tmp_path / "tracks.parquet", {"min_length": 1, "memory": 2}, flow_output=tmp_path / "flow.parquet")
    flow = read_table(tmp_path / "flow.parquet", required=["frame", "y", "x", "dy", "dx", "cost"])
    # the gap 2 -> 4 is not a one-frame step
    assert flow["frame"].tolist() == [0, 1]
    assert flow[["dy", "dx"]].to_numpy().tolist() == [[1.0, 1.0], [2.0, 0.0]]
    assert flow["cost"].tolist() == [2.0, 4.0]
    assert step_vectors(read_table(tmp_path / "tracks.parquet")).equals(flow)


def test_schema_checks_the_section():
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate({"search_range": [2, 4, 4], "flow": {"gate": 1}})
    with pytest.raises(jsonschema.ValidationError, match="anything"):
        validator.validate({"flow": {"anything": 1}})
    with pytest.raises(jsonschema.ValidationError, match="memroy"):
        validator.validate({"memroy": 3})
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"method": "magic"})


def test_cli_link(tmp_path, capsys):
    features = random_walks(n_particles=10, n_frames=12, seed=7)
    path = write_table(features, tmp_path / "features.parquet", stage="locate")
    out = tmp_path / "tracks.parquet"
    code = main(["link", str(path), "-o", str(out), "--set", "min_length=10", "--set", "memory=0"])
    assert code == 0
    assert "10 tracks" in capsys.readouterr().out
    tracks = read_table(out)
    assert tracks.groupby("particle").size().min() >= 10
    assert table_metadata(out)["params"]["min_length"] == 10
    code = main(["link", str(tmp_path / "missing.parquet"), "-o", str(out)])
    assert code == 2
    assert "missing.parquet" in capsys.readouterr().err
