"""The refine stage: least-squares fits of clustered features on simulated
spots with known positions (2D dimers, anisotropic 3D), failed fits kept and
counted, the ``none`` pass-through, ``run`` with provenance through real Dask
schedulers and Zarr stores, the command line, and a real movie."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import trackpy
from scipy.spatial import cKDTree

from pipeline.cli import main
from pipeline.io import MovieError, read_table, table_metadata, write_movie, write_table
from pipeline.refine import refine_frames, refine_movie, run
from pipeline.simulate.render import render_gaussian_spots

REPO = Path(__file__).resolve().parents[1]
BULK_WATER = REPO.parent / "shared" / "data" / "bulk_water"
SIGMA = 1.5  # PSF s.d., px
DIAMETER = 9
PHOTONS = 2000.0
BACKGROUND = 5.0

trackpy.quiet()


def spots_image(shape, truth, rng, photons=PHOTONS, background=BACKGROUND, sigma=SIGMA) -> np.ndarray:
    """Pixel-integrated Gaussian spots with Poisson noise, as a camera frame."""
    expected = render_gaussian_spots(shape, truth, photons, sigma) + background
    return rng.poisson(expected).astype(np.uint16)


def dimers(rng, separation_px: float, grid: int = 4, pitch: int = 32, offset: int = 20) -> np.ndarray:
    """Pairs of spots ``separation_px`` apart, one pair per grid cell, random orientation."""
    centres = np.array([[offset + pitch * i, offset + pitch * j] for i in range(grid) for j in range(grid)], float)
    centres += rng.uniform(-0.5, 0.5, centres.shape)
    angle = rng.uniform(0, np.pi, len(centres))
    half = separation_px / 2 * np.stack([np.sin(angle), np.cos(angle)], axis=1)
    return np.concatenate([centres + half, centres - half])


def locate(image: np.ndarray, frame: int = 0) -> pd.DataFrame:
    # separation 3: two maxima of a close pair both survive (locate's default
    # of diameter + 1 would keep one)
    features = trackpy.locate(image, DIAMETER, minmass=0.25 * PHOTONS, separation=3)
    features.insert(0, "frame", frame)
    return features.reset_index(drop=True)


def rms_error(table: pd.DataFrame, truth: np.ndarray, columns=("y", "x")) -> float:
    """RMS error per axis of each row against its nearest true position."""
    distance, _ = cKDTree(truth).query(table[list(columns)].to_numpy())
    return float(np.sqrt(np.mean(distance**2) / len(columns)))


def crlb_px(photons: float, background: float, sigma: float = SIGMA) -> float:
    """Least-squares localization bound per axis (Mortensen et al. 2010),
    background in photons per pixel."""
    sa2 = sigma**2 + 1 / 12
    return math.sqrt(sa2 / photons * (16 / 9 + 8 * math.pi * sa2 * background / photons))


@pytest.fixture(scope="module")
def dimer_scene():
    rng = np.random.default_rng(4)
    truth = dimers(rng, 0.6 * DIAMETER)
    image = spots_image((140, 140), truth, rng)
    return truth, image, locate(image)


# -- the pure core ------------------------------------------------------------


def test_dimers_known_answer(dimer_scene):
    truth, image, features = dimer_scene
    assert len(features) == len(truth)  # both spots of every pair located
    refined = refine_frames(image[None], 0, features, diameter=DIAMETER)

    assert len(refined) == len(features)
    assert (refined["fit_status"] == "fitted").all()
    assert (refined["cluster_size"] == 2).all()
    assert refined["cluster"].nunique() == len(truth) // 2
    # every input column kept, rows in order, located positions recorded
    assert list(refined.columns[: len(features.columns)]) == list(features.columns)
    pd.testing.assert_frame_equal(
        refined[["mass", "signal", "size"]], features[["mass", "signal", "size"]], check_dtype=False
    )
    np.testing.assert_array_equal(refined["y_located"], features["y"])
    np.testing.assert_array_equal(refined["x_located"], features["x"])
    assert np.isfinite(refined["cost"]).all() and (refined["cost"] < 0.2).all()
    assert (refined["fit_background"] > 0).all() and (refined["fit_signal"] > 0).all()

    centroid_error = rms_error(features, truth)
    refined_error = rms_error(refined, truth)
    # pinned: ~0.05 px measured (bound 0.048 px); the neighbour drags centroids ~0.2 px
    assert refined_error < 0.08
    assert refined_error < centroid_error / 2


def test_custom_position_columns(dimer_scene):
    _, image, features = dimer_scene
    table = features.iloc[:8]
    renamed = table.rename(columns={"y": "row", "x": "col"})
    default = refine_frames(image[None], 0, table, diameter=DIAMETER)
    custom = refine_frames(image[None], 0, renamed, diameter=DIAMETER, pos_columns=["row", "col"])
    assert {"row_located", "col_located"} <= set(custom.columns) and "y" not in custom.columns
    np.testing.assert_allclose(custom[["row", "col"]].to_numpy(), default[["y", "x"]].to_numpy())
    assert not np.allclose(custom["col"], table["x"])


def test_isolated_spots_keep_centroids_unless_fit_isolated():
    rng = np.random.default_rng(11)
    grid = np.array([[14 + 20 * i, 14 + 20 * j] for i in range(6) for j in range(6)], float)
    truth = grid + rng.uniform(-0.5, 0.5, grid.shape)
    image = spots_image((124, 124), truth, rng)
    features = locate(image)
    assert len(features) == len(truth)

    kept = refine_frames(image[None], 0, features, diameter=DIAMETER)
    assert (kept["fit_status"] == "skipped").all() and kept["cost"].isna().all()
    np.testing.assert_array_equal(kept[["y", "x"]].to_numpy(), features[["y", "x"]].to_numpy())

    fitted = refine_frames(image[None], 0, features, diameter=DIAMETER, fit_isolated=True)
    assert (fitted["fit_status"] == "fitted").all()
    assert not np.allclose(fitted["x"], features["x"])
    assert rms_error(fitted, truth) < 1.5 * crlb_px(PHOTONS, BACKGROUND)


def test_3d_anisotropic_pairs():
    rng = np.random.default_rng(3)
    sigma = (2.5, 1.5, 1.5)  # z elongated
    diameter = (11, 7, 7)
    truth = np.array(
        [[12.0, 14.2, 13.7], [12.6, 14.9, 19.4], [11.4, 33.1, 32.8], [12.3, 30.0, 12.0]]
    )  # a pair 5.8 px apart in x, two isolated spots
    expected = render_gaussian_spots((24, 44, 44), truth, 4000.0, sigma) + 3.0
    volume = rng.poisson(expected).astype(np.uint16)
    # locate-like starting points: off by up to 0.6 px, radius of gyration per axis
    start = truth + rng.uniform(-0.6, 0.6, truth.shape)
    features = pd.DataFrame(
        {
            "frame": 0,
            "z": start[:, 0], "y": start[:, 1], "x": start[:, 2],
            "mass": 1000.0,
            "size_z": 3.2, "size_y": 2.0, "size_x": 2.0,
            "signal": 100.0,
        }
    )
    refined = refine_frames(volume[None], 0, features, diameter=diameter, fit_isolated=True)

    assert list(refined["cluster_size"]) == [2, 2, 1, 1]
    assert (refined["fit_status"] == "fitted").all()
    assert {"z_located", "y_located", "x_located", "fit_size_z", "fit_size_x"} <= set(refined.columns)
    error = np.abs(refined[["z", "y", "x"]].to_numpy() - truth)
    assert error.max() < 0.25, error
    assert rms_error(refined, truth, ("z", "y", "x")) < rms_error(features, truth, ("z", "y", "x")) / 2
    # the fitted Gaussian is elongated along z like the PSF: size = sqrt(ndim) * sigma
    assert (refined["fit_size_z"] > 1.3 * refined["fit_size_x"]).all()
    np.testing.assert_allclose(refined["fit_size_x"], math.sqrt(3) * 1.5, rtol=0.15)


@pytest.mark.parametrize("separation", [(6.0, 6.0), (3.0, 9.0, 9.0)])
def test_clusters_are_trackpys_for_every_frame_at_once(separation):
    # the clusters refine numbers and fits are trackpy.static.cluster's,
    # frame by frame, whatever the row order; none spans two frames
    from pipeline.refine import _cluster_ids

    rng = np.random.default_rng(3)
    ndim = len(separation)
    pos = ["z", "y", "x"][-ndim:]
    features = pd.DataFrame(rng.uniform(0, 40, (600, ndim)), columns=pos)
    features.insert(0, "frame", rng.integers(0, 12, 600))
    # a feature exactly where another is, one frame later: not its neighbour
    features.loc[600] = [features.loc[0, "frame"] + 1, *features.loc[0, pos]]
    ids, sizes = _cluster_ids(features, pos, separation)
    expected = trackpy.static.cluster(features.copy(), separation, pos, "frame").loc[features.index]
    np.testing.assert_array_equal(sizes, expected["cluster_size"].to_numpy())
    assert pd.crosstab(ids, expected["cluster"].to_numpy()).astype(bool).sum(axis=1).eq(1).all()
    assert (features.groupby(ids)["frame"].nunique() == 1).all()
    assert 1 < sizes.max() and (sizes == 1).any()  # the scene has both pairs and isolated features
    # numbered frame by frame, and within a frame in the order the rows come
    by_id = pd.DataFrame({"frame": features["frame"].to_numpy(), "row": np.arange(len(features))}).groupby(ids).first()
    assert by_id.index.tolist() == list(range(ids.max() + 1))
    assert by_id["frame"].is_monotonic_increasing
    assert by_id.groupby("frame")["row"].apply(lambda rows: rows.is_monotonic_increasing).all()


def test_unfittable_cluster_keeps_rows_with_cost_nan(dimer_scene):
    truth, image, features = dimer_scene
    # a pair straddling the left edge: trackpy cannot cut its fit window
    ghost = pd.DataFrame({"frame": [0, 0], "y": [70.0, 73.0], "x": [-30.0, -27.0], "size": [1.7, 1.7]})
    table = pd.concat([features.iloc[:6], ghost, features.iloc[6:]], ignore_index=True)
    refined = refine_frames(image[None], 0, table, diameter=DIAMETER)

    assert len(refined) == len(table)  # no row lost
    bad = refined.iloc[6:8]
    assert (bad["fit_status"] == "failed").all() and bad["cost"].isna().all()
    np.testing.assert_array_equal(bad[["y", "x"]].to_numpy(), ghost[["y", "x"]].to_numpy())
    assert bad["fit_signal"].isna().all()
    others = refined.drop(index=[6, 7])
    assert (others["fit_status"] == "fitted").all() and np.isfinite(others["cost"]).all()
    # the rows are where they were
    np.testing.assert_array_equal(refined["x_located"], table["x"])


def test_trackpy_raising_for_one_cluster_fails_only_that_cluster(dimer_scene, caplog):
    truth, image, features = dimer_scene
    # an absolute bound that one pair cannot meet: trackpy (scipy) raises a
    # plain ValueError for that cluster, not its own "failed fit"
    far = features["x"].idxmax()
    limit = float(features.loc[far, "x"]) - 6
    with caplog.at_level(logging.WARNING, logger="trackflow.refine"):
        refined = refine_frames(image[None], 0, features, diameter=DIAMETER, bounds={"x": [0, limit]})

    assert len(refined) == len(features)
    # a position may move one radius: clusters with a member beyond limit + radius cannot be fitted
    beyond = refined.loc[refined["x_located"] > limit + DIAMETER // 2, "cluster"]
    failed = refined["fit_status"] == "failed"
    assert failed.to_numpy().tolist() == refined["cluster"].isin(beyond).to_numpy().tolist()
    assert 0 < failed.sum() < len(refined) / 2
    assert refined.loc[far, "fit_status"] == "failed" and math.isnan(refined.loc[far, "cost"])
    np.testing.assert_array_equal(refined.loc[failed, "x"], refined.loc[failed, "x_located"])
    assert (refined.loc[~failed, "fit_status"] == "fitted").all()
    assert any("refitting cluster by cluster" in r.getMessage() for r in caplog.records)


def test_method_none_passes_positions_through(dimer_scene):
    _, image, features = dimer_scene
    passed = refine_frames(image[None], 0, features, diameter=DIAMETER, method="none")
    fitted = refine_frames(image[None], 0, features.iloc[:4], diameter=DIAMETER)

    assert list(passed.columns) == list(fitted.columns)  # the same columns either way
    np.testing.assert_array_equal(passed[["y", "x"]].to_numpy(), features[["y", "x"]].to_numpy())
    assert passed["cost"].isna().all() and (passed["fit_status"] == "skipped").all()
    assert (passed["cluster_size"] == 2).all()  # clusters still reported


def test_large_clusters_are_not_fitted():
    rng = np.random.default_rng(8)
    centre = np.array([30.0, 30.0])
    ring = np.array([centre + 4.5 * np.array([np.sin(a), np.cos(a)]) for a in np.linspace(0, 2 * np.pi, 6)[:-1]])
    image = spots_image((60, 60), ring, rng)
    features = pd.DataFrame({"frame": 0, "y": ring[:, 0] + 0.3, "x": ring[:, 1] - 0.3, "size": 1.7})
    refined = refine_frames(image[None], 0, features, diameter=DIAMETER, max_cluster_size=4)
    assert (refined["cluster_size"] == 5).all() and (refined["fit_status"] == "skipped").all()
    np.testing.assert_array_equal(refined["x"], features["x"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"method": "fancy"}, "method"),
        ({"fit_function": "lorentz"}, "fit_function"),
        ({"param_mode": {"sise": "var"}}, "'sise'"),
        ({"param_mode": {"size": "vary"}}, "param_mode.size"),
        ({"param_val": {"thickness": 0.2}}, "'thickness'"),
        ({"bounds": {"pos_abss": 2}}, "'pos_abss'"),
        ({"diameter": (9, 9, 9)}, "diameter"),
        ({"max_cluster_size": 0}, "max_cluster_size"),
    ],
)
def test_bad_options_name_the_key(dimer_scene, options, message):
    _, image, features = dimer_scene
    kwargs = {"diameter": DIAMETER, **options}
    with pytest.raises(ValueError, match=message):
        refine_frames(image[None], 0, features, **kwargs)


def test_bad_features_name_the_frame(dimer_scene):
    _, image, features = dimer_scene
    broken = features.copy()
    broken.loc[3, "x"] = np.nan
    with pytest.raises(ValueError, match="non-finite positions.*frame 0"):
        refine_frames(image[None], 0, broken, diameter=DIAMETER)
    with pytest.raises(ValueError, match="frame 5"):
        refine_frames(image[None], 0, features.assign(frame=5), diameter=DIAMETER)


# -- the movie, run and the command line -------------------------------------------


@pytest.fixture(scope="module")
def movie_run(tmp_path_factory):
    """Four frames of dimers (frame 2 with an unfittable pair) in a movie store,
    and locate's table with its provenance."""
    tmp = tmp_path_factory.mktemp("refine")
    rng = np.random.default_rng(21)
    truths, frames, tables = [], [], []
    for i in range(4):
        truth = dimers(rng, 0.7 * DIAMETER, grid=3)
        image = spots_image((108, 108), truth, rng)
        truths.append(truth)
        frames.append(image)
        tables.append(locate(image, frame=i))
    tables[2] = pd.concat(
        [tables[2], pd.DataFrame({"frame": [2, 2], "y": [50.0, 53.0], "x": [-30.0, -28.0]})], ignore_index=True
    )
    features = pd.concat(tables, ignore_index=True)
    movie = write_movie(tmp / "movie.ome.zarr", np.stack(frames), frames_per_shard=2, pixel_size_um=0.2)
    features_path = write_table(
        features, tmp / "features.parquet", stage="locate", params={"diameter": DIAMETER, "separation": 3}
    )
    return tmp, movie, features_path, features, truths


def test_run_writes_refined_table_with_provenance(movie_run, caplog):
    tmp, movie, features_path, features, truths = movie_run
    output = tmp / "refined.parquet"
    with caplog.at_level(logging.WARNING, logger="trackflow.refine"):
        refined = run(
            movie.path, features_path, output, {"max_failed_fraction": 0.01, "frames_per_task": 1},
            compute={"scheduler": "threads"}, threads=2,
        )

    table = read_table(output, required=["frame", "y", "x", "cost", "cluster", "cluster_size"])
    assert len(table) == len(features)
    assert table["frame"].is_monotonic_increasing
    pd.testing.assert_frame_equal(table, refined.reset_index(drop=True), check_dtype=False)
    # cluster ids are unique over the movie, not per frame or task
    assert table.groupby("cluster")["frame"].nunique().max() == 1
    assert table["cluster"].nunique() == len(table) // 2

    meta = table_metadata(output)
    assert meta["stage"] == "refine"
    assert meta["params"]["diameter"] == DIAMETER  # taken from locate's provenance
    assert meta["params"]["method"] == "leastsq"
    assert meta["n_features"] == len(features) and meta["n_fits"] == len(features)
    assert meta["n_failed"] == 2
    assert meta["failed_fraction"] == pytest.approx(2 / len(features))
    assert meta["failed_fraction_exceeded"] is True
    assert any("fits failed" in r.getMessage() for r in caplog.records)

    for frame, truth in enumerate(truths):
        rows = table[(table["frame"] == frame) & (table["fit_status"] == "fitted")]
        assert rms_error(rows, truth) < 0.08


def test_refine_movie_on_worker_processes_matches_one_process(movie_run):
    _, movie, _, features, _ = movie_run
    params = {"diameter": DIAMETER, "frames_per_task": 1}
    serial = refine_movie(movie, features, compute={"scheduler": "synchronous"}, **params)
    parallel = refine_movie(movie, features, compute={"scheduler": "processes"}, threads=2, **params)
    pd.testing.assert_frame_equal(serial, parallel)


def test_run_rejects_bad_parameters_and_inputs(movie_run):
    tmp, movie, features_path, features, _ = movie_run
    with pytest.raises(ValueError, match="'metod'"):
        run(movie.path, features_path, tmp / "x.parquet", {"metod": "none"})
    bare = write_table(features, tmp / "bare.parquet", stage="locate")
    with pytest.raises(ValueError, match="diameter"):
        run(movie.path, bare, tmp / "x.parquet", {})
    late = write_table(features.assign(frame=features["frame"] + 2), tmp / "late.parquet", stage="locate",
                       params={"diameter": DIAMETER})
    with pytest.raises(MovieError, match="frame 5"):
        run(movie.path, late, tmp / "x.parquet", {})
    with pytest.raises(FileNotFoundError):
        run(movie.path, tmp / "missing.parquet", tmp / "x.parquet", {})
    assert not (tmp / "x.parquet").exists()


def test_cli(movie_run, capsys):
    tmp, movie, features_path, features, _ = movie_run
    output = tmp / "cli.parquet"
    code = main(["refine", str(movie.path), str(features_path), "-o", str(output),
                 "--set", "method=none", "--scheduler", "synchronous"])
    assert code == 0
    table = read_table(output)
    assert len(table) == len(features) and table["cost"].isna().all()
    assert table_metadata(output)["params"]["method"] == "none"
    assert f"{len(features)} features, 0 fits" in capsys.readouterr().out

    code = main(["refine", str(movie.path), str(features_path), "-o", str(output), "--set", "fit_funtion=gauss"])
    assert code == 2
    assert "'fit_funtion'" in capsys.readouterr().err


# -- real data ----------------------------------------------------------------------


def test_bulk_water_frame():
    if not BULK_WATER.exists():
        pytest.skip(f"real data not found at {BULK_WATER}")
    import imageio.v3 as iio

    image = 255 - iio.imread(BULK_WATER / "bulk_water_000.png")[..., 1]
    image = image[:160, :240]  # a corner keeps the test fast
    features = trackpy.locate(image, 11, minmass=20, separation=7)
    features.insert(0, "frame", 0)
    refined = refine_frames(image[None], 0, features, diameter=11)

    assert len(refined) == len(features)
    status = refined["fit_status"].value_counts()
    assert status.get("fitted", 0) > 10  # close pairs exist once locate keeps them
    assert status.get("failed", 0) <= 0.2 * status.get("fitted", 0)
    fitted = refined[refined["fit_status"] == "fitted"]
    shift = np.hypot(fitted["y"] - fitted["y_located"], fitted["x"] - fitted["x_located"])
    assert shift.median() < 1.0  # refinement corrects centroids, it does not move features
    skipped = refined[refined["fit_status"] != "fitted"]
    np.testing.assert_array_equal(skipped["x"], skipped["x_located"])
