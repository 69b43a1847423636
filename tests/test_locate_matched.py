"""locate.method matched: the matched-filter detector (pipeline/locate/matched.py).

Spots and spheres are drawn here with known positions; the negative
controls are frames of pure noise, where the detections must come at the
false-detection rate asked for.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from conftest import spots_frame
from pipeline.io import read_table, table_metadata, write_movie
from pipeline.io.schema import ConfigError
from pipeline.locate import (
    detect,
    empty_features,
    empty_matched,
    locate_matched,
    locate_matched_frames,
    locate_movie,
    run,
    threshold_for_false_rate,
)
from pipeline.locate.matched import fit_spots

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

def blurred_spheres(centres, radius, shape, psf, contrast=60.0, background=40.0, noise=0.0, rng=None):
    grid = np.indices(shape).astype(float)
    volume = np.zeros(shape)
    for c in centres:
        dist = np.sqrt(((grid - np.asarray(c, float)[:, None, None, None]) ** 2).sum(0))
        volume = np.maximum(volume, np.clip(radius + 0.5 - dist, 0, 1))
    volume = ndimage.gaussian_filter(volume * contrast, psf) + background
    if noise:
        volume = volume + rng.normal(0, noise, shape)
    return volume.astype(np.float32)


# --- accuracy ----------------------------------------------------------------


def test_finds_spots_with_subpixel_accuracy_near_the_cramer_rao_bound():
    rng = np.random.default_rng(1)
    errors, found_total, truth_total, false = [], 0, 0, 0
    for _ in range(3):
        image, truth = spots_frame(rng, snr=5.0)
        found = locate_matched(image, diameter=7, false_rate=0.01)  # 0.03 false detections expected in all
        distance, _ = cKDTree(truth).query(found[["y", "x"]].to_numpy())
        errors.append(distance[distance < 3])
        false += int((distance >= 3).sum())
        found_total += int((distance < 3).sum())
        truth_total += len(truth)
    errors = np.concatenate(errors)
    rmse_per_axis = math.sqrt(np.mean(errors**2) / 2)
    crlb = math.sqrt(2 / math.pi) / 5.0  # σ/A sqrt(2/π) per axis (benchmarks/detection.py)
    assert found_total == truth_total and false == 0
    assert rmse_per_axis < 1.3 * crlb  # ~0.17 px; trackpy's centroid is ~0.29 px here
    assert rmse_per_axis > 0.8 * crlb  # no estimator beats the bound: the test measures what it claims


def test_invert_finds_dark_spots():
    rng = np.random.default_rng(2)
    image, truth = spots_frame(rng, n=20, snr=5.0)
    dark = (400 - image).astype(np.float32)
    found = locate_matched(dark, diameter=7, invert=True, false_rate=0.01)
    distance, _ = cKDTree(truth).query(found[["y", "x"]].to_numpy())
    assert len(found) == len(truth) and distance.max() < 1.0


# --- negative controls: pure noise ---------------------------------------------


@pytest.mark.parametrize(
    ("shape", "diameter", "false_rate", "frames"),
    [((256, 256), 7, 2.0, 60), ((128, 384), 9, 0.5, 120), ((24, 48, 48), [9, 7, 7], 2.0, 20)],
    ids=["2d", "2d-wide-spot", "3d-anisotropic"],
)
def test_false_detections_on_noise_come_at_the_requested_rate(shape, diameter, false_rate, frames):
    rng = np.random.default_rng(3)
    found = sum(
        len(locate_matched(rng.normal(100, 10, shape).astype(np.float32), diameter=diameter, false_rate=false_rate))
        for _ in range(frames)
    )
    expected = false_rate * frames
    # the Euler-characteristic count is calibrated to ~10 %; a factor 2 leaves room for the Poisson scatter
    assert expected / 2 <= found <= expected * 2, (found, expected)


def test_threshold_grows_with_the_frame_and_falls_with_the_rate():
    u_small = threshold_for_false_rate(1.0, (128, 128), (1.5, 1.5), 5.0)
    u_large = threshold_for_false_rate(1.0, (1024, 1024), (1.5, 1.5), 5.0)
    u_lenient = threshold_for_false_rate(10.0, (128, 128), (1.5, 1.5), 5.0)
    assert u_lenient < u_small < u_large


def test_a_blank_frame_gives_an_empty_table_with_trackpy_columns():
    found = locate_matched_frames(np.full((2, 64, 64), 7, dtype=np.uint16), diameter=7)
    assert len(found) == 0
    assert list(found.columns) == list(empty_features(2, diameter=7).columns)


# --- 3D: touching spheres --------------------------------------------------------


def test_touching_spheres_are_separated_by_residual_detection():
    """Spheres almost touching along the blurred axis (and one pair on a
    diagonal) merge into single maxima of the filtered volume; subtracting the
    fits and detecting again in the residual finds every sphere."""
    radius, psf = 4, (2.7, 1.4, 1.4)
    truth = np.array([(14.0, 16.0, 16.0), (22.5, 16.2, 15.8), (16.0, 16.0, 40.0), (22.0, 20.5, 44.3)])
    rng = np.random.default_rng(5)
    volume = blurred_spheres(truth, radius, (40, 32, 56), psf, noise=10.0, rng=rng)
    options = dict(diameter=2 * radius + 1, sigma=[2.0, 1.3, 1.3], false_rate=0.1)
    first_pass = detect(volume, residual_rounds=0, **options)
    full = detect(volume, **options)
    d_first, _ = cKDTree(first_pass[["z", "y", "x"]].to_numpy()).query(truth)
    d_full, j = cKDTree(full[["z", "y", "x"]].to_numpy()).query(truth)
    assert (d_first < 1.0).sum() == 2  # both pairs merged in the first pass
    assert (d_full < 1.0).all() and len(set(j)) == len(truth)  # all four found, each by its own detection
    assert len(full) <= len(truth) + 1  # the Gaussian model's misfit may leave one extra
    assert (full["round"] > 0).sum() >= 2


def test_ball_template_fits_a_blurred_sphere_without_bias():
    radius, psf = 4.0, (2.7, 1.4, 1.4)
    centre = np.array([20.3, 19.8, 20.1])
    volume = blurred_spheres([centre], radius, (40, 40, 40), psf)
    fit = fit_spots(volume, np.array([[20, 20, 20]]), psf, radius=radius)
    np.testing.assert_allclose(fit["centre"][0], centre, atol=0.02)
    assert fit["amplitude"][0] == pytest.approx(60.0, rel=0.1)
    assert fit["background"][0] == pytest.approx(40.0, abs=1.0)


# --- the table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ndim", "options"),
    [(2, {"diameter": 7}), (2, {"diameter": [7, 9]}), (3, {"diameter": [9, 7, 7]}), (3, {"diameter": 7}),
     (2, {"diameter": 7, "characterize": False})],
    ids=["2d", "2d-anisotropic", "3d-anisotropic", "3d", "no-characterize"],
)
def test_columns_are_trackpys_in_name_order_and_dtype(ndim, options):
    rng = np.random.default_rng(5)
    if ndim == 2:
        frame, _ = spots_frame(rng, n=8, shape=(64, 64))
    else:
        frame = blurred_spheres([(10, 16, 16), (12, 30, 34)], 3, (24, 48, 48), (1.5, 1, 1), noise=5, rng=rng)
    found = locate_matched_frames(frame[None], first_frame=4, **options)
    reference = empty_features(ndim, **options)
    assert len(found) >= 2 and set(found["frame"]) == {4}
    assert list(found.columns) == list(reference.columns)
    pd.testing.assert_series_equal(found.dtypes, reference.dtypes)
    pd.testing.assert_series_equal(empty_matched(ndim, **options).dtypes, reference.dtypes)


def test_characterization_measures_the_spots():
    rng = np.random.default_rng(6)
    image, _ = spots_frame(rng, n=30, snr=8.0)
    found = locate_matched(image, diameter=7)
    assert found["signal"].median() == pytest.approx(80.0, rel=0.1)
    assert found["size"].median() == pytest.approx(1.5 * math.sqrt(2), rel=0.1)  # radius of gyration
    assert found["mass"].median() == pytest.approx(80.0 * 2 * math.pi * 1.5**2, rel=0.15)
    assert found["ecc"].median() < 0.2
    assert (found["ep"] > 0.02).all() and (found["ep"] < 0.2).all()
    assert (found["raw_mass"] > found["mass"]).all()  # the raw sum includes the background


# --- the stage ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spots_movie(tmp_path_factory):
    rng = np.random.default_rng(7)
    base, truth = spots_frame(rng, n=25, shape=(128, 128), snr=6.0)
    frames = []
    for t in range(6):  # the spots drift by 0.5 px per frame in x
        shifted = ndimage.shift(base, (0, 0.5 * t), order=3, mode="nearest")
        frames.append(np.clip(shifted + rng.normal(0, 2, shifted.shape), 0, 65535).astype(np.uint16))
    path = tmp_path_factory.mktemp("matched") / "movie.ome.zarr"
    write_movie(path, np.stack(frames), pixel_size_um=0.2, frame_interval_s=0.05, frames_per_shard=3)
    return path, np.stack(frames), truth


def test_stage_run_with_method_matched_feeds_refine_and_link(tmp_path, spots_movie):
    from pipeline import link, refine

    path, frames, truth = spots_movie
    features = tmp_path / "features.parquet"
    found = run(path, features, {"method": "matched", "diameter": 7},
                compute={"scheduler": "processes"}, threads=2)
    table = read_table(features)
    pd.testing.assert_frame_equal(table, found)
    pd.testing.assert_frame_equal(table, locate_matched_frames(frames, diameter=7))
    meta = table_metadata(features)
    assert meta["params"]["method"] == "matched" and meta["method"] == "matched"
    assert meta["threshold_used"] > 3 and meta["sigma_used"] == [1.5, 1.5]
    assert set(table["frame"]) == set(range(len(frames)))
    refined = refine.run(path, features, tmp_path / "refined.parquet", {}, compute={"scheduler": "synchronous"})
    assert len(refined) == len(table)
    tracks = link.run(tmp_path / "refined.parquet", tmp_path / "tracks.parquet", {"search_range": 3, "memory": 0})
    lengths = tracks.groupby("particle").size()
    assert (lengths == len(frames)).sum() >= 0.9 * len(truth)


def test_method_matched_warns_about_trackpy_keys_it_ignores(spots_movie, caplog):
    path, _, _ = spots_movie
    with caplog.at_level("WARNING", logger="trackflow.locate"):
        locate_movie(path, method="matched", diameter=7, minmass=300, compute={"scheduler": "synchronous"})
    assert "ignores the trackpy key(s) minmass" in caplog.text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "cnn"}, "locate.method"),
        ({"method": "matched", "matched": {"flase_rate": 1}}, "locate.matched.flase_rate: unknown key"),
        ({"method": "matched", "matched": {"false_rate": 0}}, "locate.matched.false_rate"),
        ({"method": "matched", "matched": {"sigma": [1, 2, 3]}}, "locate.matched.sigma"),
        ({"method": "matched", "matched": {"residual_rounds": -1}}, "locate.matched.residual_rounds"),
        ({"method": "matched", "diameter": 8}, "locate.diameter"),
    ],
)
def test_bad_matched_parameters_are_errors_naming_the_key(tmp_path, spots_movie, params, message):
    path, _, _ = spots_movie
    with pytest.raises((ValueError, ConfigError), match=message):
        run(path, tmp_path / "features.parquet", params, compute={"scheduler": "synchronous"})
    assert not (tmp_path / "features.parquet").exists()
