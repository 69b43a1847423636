"""locate.matched.volume_fit: all spheres of a frame fitted at once
(pipeline/locate/spheres.py), and how the matched detector uses it.

The volumes are drawn here, independently of the module's own renderer:
balls with a partial-volume edge, blurred by scipy's Gaussian filter on a
padded canvas, as a microscope images a packing that goes on beyond the
frame. The negative controls are the window fits, which the neighbours pull.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from pipeline.io.schema import ConfigError
from pipeline.locate import detect
from pipeline.locate.matched import fit_spots
from pipeline.locate.spheres import _Canvas, ball_image, fit_spheres, prune_spheres, sphere_model

PSF = (2.7, 1.4, 1.4)
RADIUS = 4.0

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def draw(centres, shape, *, radius=RADIUS, psf=PSF, contrast=60.0, background=40.0, noise=0.0, seed=0, pad=16):
    """Balls drawn on a canvas ``pad`` pixels wider than the frame, blurred, cropped."""
    big = tuple(n + 2 * pad for n in shape)
    grid = np.indices(big).astype(float) - pad
    canvas = np.zeros(big)
    for c in centres:
        dist = np.sqrt(((grid - np.asarray(c, float).reshape((-1,) + (1,) * len(shape))) ** 2).sum(0))
        canvas = np.maximum(canvas, np.clip(radius + 0.5 - dist, 0, 1) * contrast)
    inner = tuple(slice(pad, pad + n) for n in shape)
    image = ndimage.gaussian_filter(canvas, psf)[inner] + background
    return image + np.random.default_rng(seed).normal(0, noise, image.shape) if noise else image


def column(n_z, x0=16.0, y0=16.0, z0=6.0, spacing=8.2):
    """Spheres stacked along the blurred axis, almost touching."""
    return np.array([(z0 + k * spacing, y0 + 0.3 * k, x0 - 0.2 * k) for k in range(n_z)])


def test_the_gradient_is_the_derivative_of_the_squared_residual():
    shape = (20, 22, 24)
    centres = np.array([[9.3, 10.6, 11.2], [10.1, 11.4, 19.7]])
    amplitudes = np.array([50.0, 35.0])
    image = sphere_model(shape, centres + [[0.4, -0.3, 0.2], [-0.2, 0.5, 0.1]], [55.0, 30.0], 3.0, RADIUS, PSF)
    canvas = _Canvas(shape, np.full(3, RADIUS), np.asarray(PSF))

    def half_sse(c, a):
        return 0.5 * np.sum((canvas.blurred(c, a) - image) ** 2)

    grad_c, grad_a = canvas.gradient(centres, amplitudes, canvas.blurred(centres, amplitudes) - image)
    h = 1e-5
    for k in range(2):
        for i in range(3):
            step = np.zeros_like(centres)
            step[k, i] = h
            numeric = (half_sse(centres + step, amplitudes) - half_sse(centres - step, amplitudes)) / (2 * h)
            assert grad_c[k, i] == pytest.approx(numeric, rel=1e-4, abs=1e-6)
        da = np.zeros(2)
        da[k] = h
        numeric = (half_sse(centres, amplitudes + da) - half_sse(centres, amplitudes - da)) / (2 * h)
        assert grad_a[k] == pytest.approx(numeric, rel=1e-6)


def test_the_model_is_the_drawn_volume():
    """The module's renderer against the independent one above (a lone ball
    and the padded blur agree to a fraction of a grey level)."""
    shape = (30, 30, 30)
    centre = (14.3, 15.6, 15.1)
    ours = ball_image(shape, centre, RADIUS, PSF) * 60.0 + 40.0
    theirs = draw([centre], shape)
    assert np.abs(ours - theirs).max() < 0.05 * 60.0
    assert np.abs(ours - theirs).mean() < 0.005 * 60.0


def block():
    """Twelve spheres in a 3 x 2 x 2 block, almost touching, the long side along the blurred axis."""
    return np.array([(6.0 + 8.2 * k + 0.3 * j, 10.0 + 8.3 * j + 0.2 * k, 10.0 + 8.3 * i - 0.1 * k)
                     for k in range(3) for j in range(2) for i in range(2)])


def test_a_packed_block_is_fitted_where_window_fits_are_pulled():
    """Each window sees its neighbours' light, and along the blurred axis it
    pulls (window fits: 0.16-0.27 px r.m.s. in z over four noise draws); the
    whole-frame fit of the same model: 0.06-0.08 px."""
    truth = block()
    volume = draw(truth, (30, 28, 28), noise=5.0, seed=3)
    start = truth + np.random.default_rng(4).normal(0, 0.7, truth.shape)
    fit = fit_spheres(volume, start, RADIUS, PSF)
    error = np.abs(fit["centre"] - truth)
    windows = fit_spots(volume, np.rint(start).astype(int), PSF, radius=RADIUS)
    window_error = np.abs(windows["centre"] - truth)
    assert error[:, 0].max() < 0.25 and error[:, 1:].max() < 0.15
    assert np.sqrt(np.mean(error[:, 0] ** 2)) < 0.5 * np.sqrt(np.mean(window_error[:, 0] ** 2))  # negative control
    np.testing.assert_allclose(fit["amplitude"], 60.0, rtol=0.05)
    assert fit["background"] == pytest.approx(40.0, abs=0.5)


def test_a_warm_start_converges_to_the_same_fit():
    truth = column(3)
    volume = draw(truth, (32, 32, 32), noise=5.0, seed=1)
    cold = fit_spheres(volume, truth + 0.4, RADIUS, PSF)
    warm = fit_spheres(volume, cold["centre"], RADIUS, PSF, amplitude=cold["amplitude"],
                       background=cold["background"], max_iterations=10)
    np.testing.assert_allclose(warm["centre"], cold["centre"], atol=0.02)


def test_faint_fits_and_duplicates_are_pruned():
    centres = np.array([[10.0, 10, 10], [10.5, 11, 10], [30, 30, 30], [50, 50, 50], [70, 70, 70]])
    amplitudes = np.array([60.0, 40.0, 55.0, 15.0, 62.0])
    keep = prune_spheres(centres, amplitudes, RADIUS)
    assert keep.tolist() == [True, False, True, False, True]  # the duplicate and the faint one
    assert prune_spheres(centres[[0, 2, 4]], amplitudes[[0, 2, 4]], RADIUS).all()  # negative control


def test_volume_fit_in_the_detector_and_a_sphere_beyond_the_face():
    """With volume_fit, the detector reports the spheres inside the frame only,
    fitted against the light of the one just beyond its face (centre at z = -2.5)."""
    truth = np.vstack([column(4, z0=5.7), [[-2.5, 26.0, 10.0]]])
    volume = draw(truth, (36, 34, 30), noise=10.0, seed=7)
    options = dict(diameter=9, sigma=[1.9, 1.4, 1.4], false_rate=0.1)
    plain = detect(volume, **options)
    fitted = detect(volume, volume_fit={"radius": RADIUS, "psf_sigma": list(PSF)}, **options)
    inside = truth[truth[:, 0] > 0]
    d, j = cKDTree(fitted[["z", "y", "x"]].to_numpy()).query(inside)
    assert len(fitted) == len(inside) and len(set(j)) == len(inside)
    assert d.max() < 0.6
    assert (fitted["z"] >= -0.5).all()
    d_plain, _ = cKDTree(plain[["z", "y", "x"]].to_numpy()).query(inside)
    assert np.sqrt(np.mean(d**2)) < np.sqrt(np.mean(d_plain**2))  # negative control: the window fits


def test_volume_fit_works_on_disks_in_2d():
    truth = np.array([(12.0, 12.0), (12.3, 19.9), (25.6, 14.2)])
    frame = draw(truth, (40, 40), radius=3.5, psf=(1.2, 1.2), noise=4.0, seed=2)
    found = detect(frame, diameter=9, sigma=[1.6, 1.6], volume_fit={"radius": 3.5, "psf_sigma": 1.2})
    d, _ = cKDTree(found[["y", "x"]].to_numpy()).query(truth)
    assert len(found) == 3 and d.max() < 0.2


@pytest.mark.parametrize("volume_fit, key", [
    ({"radius": 4}, "psf_sigma"),
    ({"radius": 4, "psf_sigma": 1.0, "iterations": 3}, "iterations"),
    ({"radius": -1, "psf_sigma": 1.0}, "radius"),
])
def test_volume_fit_settings_are_checked(volume_fit, key):
    with pytest.raises(ConfigError, match=f"volume_fit.*{key}|{key}.*volume_fit"):
        detect(np.zeros((16, 16, 16)), diameter=9, volume_fit=volume_fit)
