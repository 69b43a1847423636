"""The compiled locate path (pipeline.locate.compiled): bit for bit
``trackpy.locate`` on the frames it covers, trackpy's own code elsewhere."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import trackpy

from pipeline.locate import compiled, image_filters_used, locate_frames
from pipeline.simulate import NTASimulator

trackpy.quiet()

# trackpy.locate's options as users vary them; each must give trackpy's table
OPTIONS = [
    (9, {}),
    (9, {"minmass": 300}),
    (7, {"separation": 5, "percentile": 50}),
    (11, {"smoothing_size": 15, "noise_size": 1.5}),
    (5, {"minmass": 50, "maxsize": 2.0}),
    (9, {"topn": 5}),
    (9, {"topn": 1}),
    (9, {"characterize": False}),
    (9, {"threshold": 20}),
    (13, {"separation": 20}),
    (9, {"separation": (12, 12), "noise_size": (1, 1)}),
    (9, {"invert": True}),
    (9, {"engine": "python"}),
]


def _frame(shape, seed, diameters=(100, 300)):
    sim = NTASimulator(
        shape=shape, n_frames=1, n_particles=shape[0] * shape[1] // 3000 + 3, diameters_nm=list(diameters),
        fractions=[0.5, 0.5], seed=seed, pixel_size_um=0.2, frame_interval_s=1 / 30, exposure_s=0.01,
    )
    return next(iter(sim.frames()))


def _same(image, diameter, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trackpy's empty-frame and invert warnings
        expected = trackpy.locate(image, diameter, **options)
        got = compiled.locate(image, diameter, **options)
    if got is None:
        assert len(expected) == 0
        return 0
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    return len(got)


@pytest.mark.parametrize("shape", [(64, 80), (257, 300), (512, 512)])
@pytest.mark.parametrize("seed", [1, 2])
def test_identical_to_trackpy_locate_on_simulated_frames(shape, seed):
    image = _frame(shape, seed)
    found = 0
    for diameter, options in OPTIONS:
        assert compiled.covers(image.shape, image.dtype, {"diameter": diameter, **options})
        found += _same(image, diameter, **options)
    for variant in ((image // 256).astype(np.uint8), np.clip(image.astype(np.int64) * 3, 0, 65535).astype(np.uint16)):
        found += _same(variant, 9)
    assert found > 0


def test_identical_on_noise_flat_and_black_frames():
    rng = np.random.default_rng(5)
    assert _same(rng.integers(0, 5, (100, 100)).astype(np.uint16), 9) > 0
    assert _same(rng.integers(0, 60000, (200, 210)).astype(np.uint16), 9) > 0
    assert compiled.locate(np.zeros((50, 50), np.uint16), 9) is None  # trackpy: "completely black"
    assert _same(np.full((50, 50), 7, np.uint16), 9) == 0


def test_a_one_count_change_changes_the_table():
    """Negative control: the comparison above is exact and would notice."""
    image = _frame((256, 256), 3)
    before = compiled.locate(image, 9)
    y, x = before.loc[before["mass"].idxmax(), ["y", "x"]].round().astype(int)
    image[y, x] += 1
    after = compiled.locate(image, 9)
    with pytest.raises(AssertionError):
        pd.testing.assert_frame_equal(after, before, check_exact=True)
    pd.testing.assert_frame_equal(after, trackpy.locate(image, 9), check_exact=True)


def test_identical_on_the_real_bulk_water_frames(bulk_water_dir):
    import imageio.v3 as iio

    frames = [iio.imread(f)[..., 1] for f in sorted(bulk_water_dir.glob("bulk_water_*.png"))]
    for image in frames[::4]:
        assert _same(image, 11, minmass=20, invert=True) > 100
        _same(image, 11)


@pytest.mark.parametrize(
    ("image", "options"),
    [
        (np.zeros((64, 64), np.float32), {"diameter": 9}),  # float: trackpy scales to uint8
        (np.zeros((64, 64), np.int32), {"diameter": 9}),
        (np.zeros((8, 64, 64), np.uint16), {"diameter": 9}),  # 3D
        (np.zeros((64, 64), np.uint16), {"diameter": (9, 7)}),  # anisotropic
        (np.zeros((64, 64), np.uint16), {"diameter": 9, "preprocess": False}),
        (np.zeros((64, 64), np.uint16), {"diameter": 9, "smoothing_size": 10}),  # trackpy's error
        (np.zeros((64, 64), np.uint16), {"diameter": 9, "noise_size": 0}),
        (np.zeros((3, 64), np.uint16), {"diameter": 9}),  # trackpy warns about colour
    ],
)
def test_frames_it_does_not_cover_are_left_to_trackpy(image, options):
    assert not compiled.covers(image.shape, image.dtype, options)


def test_locate_frames_goes_through_the_compiled_path_only_for_numba(monkeypatch):
    frames = np.stack([_frame((128, 128), s) for s in (4, 5)])

    def batch(engine, movie=frames):
        table = trackpy.batch(movie, 9, engine=engine, processes=1)
        return table[["frame", *[c for c in table.columns if c != "frame"]]].reset_index(drop=True)

    pd.testing.assert_frame_equal(locate_frames(frames, diameter=9), batch("numba"), check_exact=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the compiled path ran for engine 'python'")

    monkeypatch.setattr(compiled, "locate", refuse)
    with_python = locate_frames(frames, diameter=9, engine="python")
    pd.testing.assert_frame_equal(with_python, batch("python"), check_exact=True)
    with pytest.raises(AssertionError, match="compiled path"):
        locate_frames(frames, diameter=9, engine="numba")
    # a float movie is trackpy's throughout, whatever the engine
    floats = frames.astype(np.float64) / frames.max()
    found = locate_frames(floats, diameter=9, engine="numba")
    assert len(found)
    pd.testing.assert_frame_equal(found, batch("numba", floats), check_exact=True)


def test_the_provenance_names_the_filters_that_ran():
    assert image_filters_used({"diameter": 9}, (512, 512), np.uint16) == "compiled"
    assert image_filters_used({"diameter": 9, "engine": "python"}, (512, 512), np.uint16) == "scipy"
    assert image_filters_used({"diameter": 9}, (512, 512), np.float32) == "scipy"
    assert image_filters_used({"diameter": 9}, (16, 512, 512), np.uint16) == "scipy"
