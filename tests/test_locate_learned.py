"""locate.method learned: the network trained on trackflow's simulator
(pipeline/locate/learned.py), its train_detector stage, command and rule.

A tiny training run (seconds) on the simulator must find spots drawn here by
another renderer with precision and recall above a floor; the negative
controls are an untrained network (random weights) and frames of pure noise.
The tests that train need the extra trackflow[learn] (JAX): they skip
without it locally and fail on CI, which installs it. The schema's check for
the extra is tested without JAX, by making the import check fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import skip_or_fail, spots_frame as _spots_frame
from pipeline.io import read_table, table_metadata, write_movie
from pipeline.io.config import validate_config
from pipeline.io.schema import ConfigError, check_section
from pipeline.locate import learned as L

REPO = Path(__file__).resolve().parents[1]

#: The training of these tests: spots of s.d. 1.5 px at SNR 3-6, 150 steps (~10 s on two cores).
SETTINGS = {"psf_sigma": 1.5, "snr": [3, 6], "density": [5, 15], "steps": 150}


@pytest.fixture(scope="module")
def jax():
    try:
        import jax
    except ImportError:
        skip_or_fail("JAX is not installed (pip install -e '.[learn]')")
    return jax


@pytest.fixture(scope="module")
def detector(jax, tmp_path_factory):
    """A 2D detector trained briefly, saved and loaded back."""
    trained = L.train(L.training_settings(7, SETTINGS), 2)
    path = tmp_path_factory.mktemp("detector") / "weights.npz"
    trained.save(path, path.with_name("provenance.json"))
    return L.Detector.load(path)


def spots_frame(rng, n=50, shape=(160, 160), snr=4.0, **kw):
    """Spots sampled at the pixel centres (not the simulator's pixel-integrated ones)."""
    return _spots_frame(rng, n=n, shape=shape, snr=snr, min_distance=8.0, margin=4.0, **kw)


def score(found, truth, gate=3.0):
    hit, err2, _ = L.match_detections(truth, found[["y", "x"]].to_numpy(), found["score"].to_numpy(), gate)
    return hit.sum() / max(len(found), 1), hit.sum() / len(truth), np.sqrt(np.nanmean(err2[hit]) / 2) if hit.any() else np.inf


# --- the extra ---------------------------------------------------------------
def test_method_learned_without_the_extra_fails_at_validation_naming_it(monkeypatch):
    import pipeline.io.schema as schema

    monkeypatch.setattr(schema, "module_available", lambda name: False)
    with pytest.raises(ConfigError, match=re.escape("locate.method: 'learned' needs the optional extra trackflow[learn]")):
        check_section("locate", {"method": "learned"})
    with pytest.raises(ConfigError, match=re.escape("trackflow[learn]")):
        validate_config({"locate": {"method": "learned"}})
    # the other methods never need it
    assert check_section("locate", {"method": "matched"})["method"] == "matched"
    assert validate_config({"locate": {"method": "trackpy"}})["locate"]["method"] == "trackpy"


def test_method_learned_with_the_extra_is_accepted(jax):
    assert check_section("locate", {"method": "learned"})["learned"]["precision"] == 0.95


def test_workflow_refuses_learned_without_the_extra(tmp_path, monkeypatch):
    """The same message from a run's overrides."""
    import pipeline.io.schema as schema
    from pipeline.io.config import parse_runs

    monkeypatch.setattr(schema, "module_available", lambda name: False)
    with pytest.raises(ConfigError, match=r"run 'a'.*trackflow\[learn\]"):
        parse_runs([{"run": "a", "source": "simulated", "overrides": "{locate: {method: learned}}"}],
                   validate_config({}))


# --- settings ------------------------------------------------------------------
def test_training_settings_hold_what_trains_and_nothing_else():
    base = L.training_settings(7, {})
    assert base["psf_sigma"] == 1.5  # (diameter - 1) / 4
    assert "precision" not in base and "threshold" not in base and "separation" not in base
    assert "volume_fraction" not in base and "background" not in base  # spots, gaussian noise
    # detection keys and keys the training does not read change nothing
    same = [L.training_settings(7, {"precision": 0.8, "threshold": 0.4, "volume_fraction": [0.1, 0.2],
                                    "background": 7}), L.training_settings(9, {"psf_sigma": 1.5})]
    assert all(s == base for s in same)
    assert L.training_settings(7, {"snr": [1, 3]}) != base
    spheres = L.training_settings([13, 9, 9], {"radius": 4, "noise": "poisson"})
    assert spheres["psf_sigma"] == [3.0, 2.0, 2.0] and "density" not in spheres and spheres["background"] == 100
    assert L.settings_hash(base, 2) != L.settings_hash(base, 3)


def test_check_settings_names_a_bad_key():
    from pipeline.locate.train import check_settings

    with pytest.raises(ConfigError, match="unknown training setting"):
        check_settings({**L.training_settings(7, {}), "sped": 3})
    with pytest.raises(ConfigError, match="learned.snr"):
        check_settings({"diameter": 7, "learned": {"snr": [1]}})


# --- training and detection ----------------------------------------------------
def test_training_records_its_settings_validation_and_provenance(detector):
    assert detector.ndim == 2 and detector.settings == L.training_settings(7, SETTINGS)
    p = detector.provenance
    assert p["steps"] == 150 and p["loss_last"] < p["loss_first"]
    assert p["settings_sha256"] == L.settings_hash(detector.settings, 2)
    v = detector.validation
    assert len(v["threshold"]) == len(v["precision"]) == len(v["recall"])
    # on its own simulator, brief training already finds most spots at the precision asked for
    assert v["precision_0_95"] >= 0.9 and v["recall_0_95"] >= 0.7
    assert detector.threshold_for(0.99) >= detector.threshold_for(0.9)


def test_trained_detector_finds_spots_of_another_renderer(detector):
    rng = np.random.default_rng(3)
    image, truth = spots_frame(rng)
    found = L.locate_learned(image, detector, diameter=7)
    precision, recall, rmse = score(found, truth)
    assert precision >= 0.9 and recall >= 0.85, (precision, recall)
    assert rmse < 0.4  # least-squares fits: about the Cramér-Rao bound, 0.8 / SNR = 0.2 px
    # trackpy's columns, as the matched detector writes them, plus the map's score
    assert list(found.columns) == ["y", "x", "mass", "size", "ecc", "signal", "raw_mass", "ep", "score"]
    assert np.all(found["score"] >= detector.threshold_for(0.95))
    # chance: as many random positions find a truth within the gate this often
    chance = np.mean(np.min(np.hypot(*(rng.uniform(0, 160, (500, 2))[:, None] - truth[None]).T), axis=0) < 3.0)
    assert chance < 0.2 < precision


def test_untrained_network_finds_nothing_useful(detector):
    """Negative control: the same network with its initial (random) weights,
    at the same threshold, and at the lowest threshold."""
    rng = np.random.default_rng(3)
    image, truth = spots_frame(rng)
    untrained = L.Detector(L.init_params(2, detector.settings["width"], seed=7), 2, detector.settings,
                           detector.validation)
    found = L.locate_learned(image, untrained, diameter=7)
    _, recall, _ = score(found, truth)
    assert recall < 0.1
    low = L.detect_learned(image, untrained, threshold=L.VALIDATION_FLOOR, separation=(3.0, 3.0))
    precision, _, _ = score(low, truth)
    trained = L.detect_learned(image, detector, threshold=L.VALIDATION_FLOOR, separation=(3.0, 3.0))
    assert precision < score(trained, truth)[0]


def test_pure_noise_gives_few_detections(detector):
    """Negative control: frames of white noise hold no spot; at precision
    0.95 the detector may find a few there, not dozens."""
    rng = np.random.default_rng(4)
    counts = [len(L.locate_learned(rng.normal(100, 10, (160, 160)).astype(np.float32), detector, diameter=7))
              for _ in range(3)]
    assert np.mean(counts) <= 2.0, counts


def test_detector_round_trips_through_its_file(detector, tmp_path):
    detector.save(tmp_path / "d" / "weights.npz")
    again = L.Detector.load(tmp_path / "d")
    image = np.random.default_rng(0).normal(100, 10, (64, 64)).astype(np.float32)
    np.testing.assert_array_equal(L.heatmap(again, image), L.heatmap(detector, image))
    assert again.settings == detector.settings and again.validation == detector.validation


def test_heatmap_takes_any_frame_shape_and_batches(detector):
    rng = np.random.default_rng(0)
    frames = rng.normal(100, 10, (3, 50, 71)).astype(np.float32)
    maps = L.heatmap(detector, frames)
    assert maps.shape == frames.shape and np.all((maps >= 0) & (maps <= 1))
    np.testing.assert_allclose(maps[1], L.heatmap(detector, frames[1]), atol=1e-5)
    with pytest.raises(ValueError, match="2D"):
        L.heatmap(detector, rng.normal(size=(2, 3, 16, 16)))


def test_detector_of_other_dimensions_is_refused(detector, tmp_path):
    movie = write_movie(tmp_path / "vol.ome.zarr", np.zeros((2, 8, 16, 16), np.uint16), pixel_size_um=0.2,
                        frame_interval_s=0.1)
    from pipeline.locate import locate_movie

    with pytest.raises(ValueError, match="trained on 2D frames"):
        locate_movie(movie, method="learned", detector=detector, diameter=7, compute={"scheduler": "synchronous"})


# --- the stages and commands ---------------------------------------------------
@pytest.fixture(scope="module")
def spots_movie(tmp_path_factory):
    rng = np.random.default_rng(11)
    frames, truths = zip(*(spots_frame(rng, n=30, shape=(96, 96)) for _ in range(4)))
    path = tmp_path_factory.mktemp("movie") / "movie.ome.zarr"
    write_movie(path, np.stack(frames).astype(np.float32), pixel_size_um=0.2, frame_interval_s=0.1)
    return path, truths


def test_locate_stage_with_a_trained_detector(detector, spots_movie, tmp_path):
    from pipeline.locate import run

    path, truths = spots_movie
    weights = tmp_path / "detector" / "weights.npz"
    detector.save(weights)
    features = run(path, tmp_path / "features.parquet", {"method": "learned", "diameter": 7},
                   compute={"scheduler": "threads"}, threads=2, detector=weights)
    assert sorted(features["frame"].unique()) == [0, 1, 2, 3]
    for f, truth in enumerate(truths):
        precision, recall, _ = score(features[features["frame"] == f], truth)
        assert precision >= 0.9 and recall >= 0.85
    meta = table_metadata(tmp_path / "features.parquet")
    assert meta["method"] == "learned" and meta["threshold_used"] == detector.threshold_for(0.95)
    assert meta["detector"]["settings"] == detector.settings
    # the detection keys act without retraining
    strict = run(path, tmp_path / "strict.parquet", {"method": "learned", "diameter": 7,
                                                     "learned": {"threshold": 0.97}},
                 compute={"scheduler": "synchronous"}, detector=weights)
    assert len(strict) < len(features)
    with pytest.raises(ValueError, match="needs a trained detector"):
        run(path, tmp_path / "none.parquet", {"method": "learned", "diameter": 7})


def test_train_detector_and_locate_commands(jax, spots_movie, tmp_path):
    """trackflow train-detector, then trackflow locate --detector, as a user types them."""
    path, truths = spots_movie
    out = tmp_path / "det"
    learned = json.dumps({**SETTINGS, "steps": 60})
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "train-detector", str(path), "-o", str(out),
                           "--set", "diameter=7", "--set", f"learned={learned}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "recall" in done.stdout
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["settings"]["steps"] == 60 and provenance["provenance"]["trackflow_version"]
    assert provenance["validation"]["recall_0_95"] > 0.5
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "locate", str(path), "-o", str(tmp_path / "f.parquet"),
                           "--set", "diameter=7", "--set", "method=learned", "--detector", str(out),
                           "--scheduler", "synchronous"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(read_table(tmp_path / "f.parquet")) > 50


def test_volumes_of_spheres_go_through_training_validation_and_detection(jax):
    """3D, mechanically (a few steps: the figures are the benchmark's): the
    patches in and out of the network, the validation, trackpy's anisotropic columns."""
    settings = L.training_settings([9, 9, 9], {"psf_sigma": [2.0, 1.2, 1.2], "radius": 3, "snr": [4, 6],
                                               "volume_fraction": [0.2, 0.3], "steps": 4})
    detector = L.train(settings, 3, validate_after=False)
    detector.validation = L.validate(detector, n_images=1)
    assert detector.validation["n_images"] == 1 and len(detector.validation["recall"]) == 98
    from pipeline.simulate.detection import sphere_image

    volume, truth, _ = sphere_image(np.random.default_rng(5), (20, 36, 44), radius=3, sigma=[2.0, 1.2, 1.2],
                                    snr=(5, 5), volume_fraction=0.25)
    probability = L.heatmap(detector, volume)
    assert probability.shape == volume.shape
    found = L.locate_learned(volume, detector, diameter=[11, 9, 9], threshold=float(probability.max()) * 0.9)
    assert list(found.columns) == ["z", "y", "x", "mass", "size_z", "size_y", "size_x", "ecc", "signal",
                                   "raw_mass", "ep_z", "ep_y", "ep_x", "score"]
    assert len(found) >= 1


# --- simulator ----------------------------------------------------------------
def test_simulated_spheres_do_not_overlap_and_fill_the_volume():
    from pipeline.simulate.detection import hard_sphere_centres, sphere_image

    rng = np.random.default_rng(0)
    box = np.array([40.0, 40.0, 40.0])
    centres = hard_sphere_centres(rng, box, 4.0, 0.5)
    assert len(centres) == round(0.5 * 40**3 / (4 / 3 * np.pi * 64))
    from scipy.spatial import cKDTree

    d, _ = cKDTree(centres, boxsize=box).query(centres, k=2)
    assert d[:, 1].min() >= 8.0 * 0.999
    image, pos, snrs = sphere_image(rng, (32, 32, 32), radius=4, sigma=(2.0, 1.0, 1.0), snr=(3, 3),
                                    volume_fraction=0.4, background=400)
    assert image.shape == (32, 32, 32) and len(pos) > 20 and np.all(snrs == 3)
    # contrast 3 noise s.d.s (s.d. 20 on a background of 400) at a sphere's centre, blurred a little
    centre = tuple(np.rint(pos[np.argmin(np.abs(pos - 16).sum(axis=1))]).astype(int))
    assert 400 + 30 < image[centre] < 400 + 100


# --- the workflow ----------------------------------------------------------------
@pytest.mark.slow
def test_train_detector_rule_is_cached_and_retrains_only_on_training_settings(jax, tmp_path):
    from test_workflow import planned_jobs, snakemake, write_config

    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["locate"] = {"method": "learned", "diameter": 7, "learned": {"steps": 20}}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "config" / "runs.tsv").write_text(
        "run\tsource\tsettings\na\tsimulated\t{shape: [64, 64], n_frames: 6, n_particles: 8, seed: 1}\n"
    )
    target = "results/a/features.parquet"
    assert planned_jobs(tmp_path, target) == {"acquire_simulated": ["a"], "train_detector": ["a"], "locate": ["a"]}
    done = snakemake(tmp_path, target)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "results/a/detector/weights.npz").exists()
    assert "validation at precision 0.95" in (tmp_path / "results/logs/train_detector/a.log").read_text()
    assert planned_jobs(tmp_path, target) == {}

    def edit(**learned):
        data["locate"]["learned"].update(learned)
        config.write_text(yaml.safe_dump(data, sort_keys=False))

    edit(precision=0.9)  # a detection key: locate again, no training
    assert planned_jobs(tmp_path, target) == {"locate": ["a"]}
    edit(volume_fraction=[0.3, 0.4])  # read for spheres only: nothing
    assert planned_jobs(tmp_path, target) == {"locate": ["a"]}
    edit(snr=[2, 4])  # a training setting: train again, and locate
    assert planned_jobs(tmp_path, target) == {"train_detector": ["a"], "locate": ["a"]}
