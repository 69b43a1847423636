"""Single images with ground truth for training and validating detectors.

The learned detector (``locate.method: learned``) is trained on these, with
the run's own spot model, noise model, SNR range and density (science.md §7:
"the simulator is the ground truth"). Two kinds of particle:

- **point-like spots** (``radius`` 0): Gaussian PSFs of s.d. ``sigma`` per
  axis, integrated over the pixels (:func:`pipeline.simulate.render_gaussian_spots`,
  the renderer of :class:`pipeline.simulate.NTASimulator`), at uniformly
  random positions (a Poisson number, ``density`` per 10,000 pixels or
  voxels), spots overlapping freely as in a real suspension;
- **dense spheres** (``radius`` > 0, per axis for anisotropic voxels): hard
  spheres at volume fraction ``volume_fraction``, packed by pushing apart
  random centres until no two overlap and then a few sweeps of hard-sphere
  Monte Carlo; each a ball with a one-pixel partial-volume edge, blurred by
  a Gaussian PSF of ``sigma`` (the ENS "Colloids: how small can we go?"
  challenge's recipe, science.md §5).

Every particle draws its own SNR, uniformly in ``snr`` = [low, high]: the
peak of a spot (its Gaussian's amplitude), or a sphere's contrast, over the
background's noise s.d. The noise is ``gaussian`` (white, s.d.
sqrt(``background``)) or ``poisson`` (shot noise on ``background`` photons
per pixel plus the particles' own photons). Positions are in pixels, pixel
``i`` covering ``[i - 0.5, i + 0.5)``; truths are the centres inside the image.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .render import render_gaussian_spots

__all__ = ["spot_image", "sphere_image", "hard_sphere_centres", "detection_image", "add_noise"]


def _per_axis(value, ndim: int) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    return np.full(ndim, float(arr)) if arr.ndim == 0 else arr.reshape(ndim)


def add_noise(expected: np.ndarray, rng: np.random.Generator, noise: str, background: float) -> np.ndarray:
    """Camera noise on an expected image (without its background): ``gaussian``
    (s.d. sqrt(background)), ``poisson`` (shot noise), or ``none`` (the
    expected image plus the background)."""
    if noise == "none":
        return (expected + background).astype(np.float32)
    if noise == "poisson":
        return rng.poisson(expected + background).astype(np.float32)
    if noise == "gaussian":
        return (expected + background + rng.normal(0.0, math.sqrt(background), expected.shape)).astype(np.float32)
    raise ValueError(f"noise must be 'gaussian', 'poisson' or 'none', got {noise!r}")


def spot_image(
    rng: np.random.Generator,
    shape: Sequence[int],
    *,
    sigma,
    snr: Sequence[float],
    density: float,
    noise: str = "gaussian",
    background: float = 100.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image of point-like spots at random positions.

    Parameters
    ----------
    rng : numpy Generator
    shape : (y, x) or (z, y, x)
        Image shape, pixels.
    sigma : float or sequence
        PSF s.d. per axis, pixels.
    snr : (low, high)
        Range of the spots' peak amplitude over the noise s.d. (uniform).
    density : float
        Mean number of spots per 10,000 pixels (voxels); spots centred up to
        3 s.d. outside the image are drawn too, so the border looks as in a
        larger frame.
    noise : {'gaussian', 'poisson'}
    background : float
        Background per pixel (photons for ``poisson``); the noise s.d. on
        the background is sqrt(background) either way.

    Returns
    -------
    image : float32 array of ``shape``
    positions : (n, ndim) array
        Centres of the spots inside the image.
    snrs : (n,) array
        Their SNRs.
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    s = _per_axis(sigma, ndim)
    margin = 3.0 * s
    low, high = -0.5 - margin, np.asarray(shape) - 0.5 + margin
    n = rng.poisson(density * float(np.prod(high - low)) / 1e4)
    pos = rng.uniform(low, high, size=(n, ndim))
    snrs = rng.uniform(float(snr[0]), float(snr[1]), size=n)
    amplitude = snrs * math.sqrt(background)
    photons = amplitude * float(np.prod(np.sqrt(2 * np.pi) * s))
    expected = render_gaussian_spots(shape, pos, photons, s)
    image = add_noise(expected, rng, noise, background)
    inside = np.all((pos >= -0.5) & (pos < np.asarray(shape) - 0.5), axis=1)
    return image, pos[inside], snrs[inside]


def hard_sphere_centres(
    rng: np.random.Generator,
    box: Sequence[float],
    radius,
    volume_fraction: float,
    *,
    mc_sweeps: int = 20,
    max_sweeps: int = 5000,
) -> np.ndarray:
    """Centres of non-overlapping spheres filling a periodic box.

    Random centres (as many as ``volume_fraction`` asks) are pushed apart
    pair by pair until no two overlap (a relaxation of the overlap energy,
    as in Lubachevsky–Stillinger-type packings, without growth), then moved
    by ``mc_sweeps`` sweeps of hard-sphere Monte Carlo to randomise the
    packing. Up to volume fraction ~0.55 this takes seconds for a few
    thousand spheres.

    Parameters
    ----------
    box : sequence of float
        Box edge per axis, pixels.
    radius : float or sequence
        Sphere radius per axis, pixels (an ellipsoid in pixels is a sphere
        on anisotropic voxels).
    volume_fraction : float
        Fraction of the box the spheres fill, below ~0.6.

    Returns
    -------
    (n, ndim) array
        Centres, pixels, within [0, box).
    """
    box = np.asarray(box, dtype=float)
    r = _per_axis(radius, len(box))
    # in units where every sphere has radius 1
    unit_box = box / r
    volume = math.pi ** (len(box) / 2) / math.gamma(len(box) / 2 + 1)
    n = int(round(volume_fraction * float(np.prod(unit_box)) / volume))
    x = rng.uniform(0.0, unit_box, size=(n, len(box)))
    if n < 2:
        return x * r
    contact = 2.0
    for _ in range(max_sweeps):
        pairs = cKDTree(x, boxsize=unit_box).query_pairs(contact * (1 - 1e-9), output_type="ndarray")
        if len(pairs) == 0:
            break
        delta = x[pairs[:, 0]] - x[pairs[:, 1]]
        delta -= unit_box * np.round(delta / unit_box)
        dist = np.linalg.norm(delta, axis=1)
        push = ((contact * 1.01 - dist) / 2.0)[:, None] * delta / np.maximum(dist, 1e-9)[:, None]
        move = np.zeros_like(x)
        np.add.at(move, pairs[:, 0], push)
        np.add.at(move, pairs[:, 1], -push)
        x = np.mod(x + move, unit_box)
    else:
        raise RuntimeError(f"no packing of {n} spheres at volume fraction {volume_fraction}")
    for _ in range(mc_sweeps):
        new = np.mod(x + rng.uniform(-0.3, 0.3, x.shape), unit_box)
        hits = cKDTree(x, boxsize=unit_box).query_ball_point(new, contact, return_length=True)
        own = np.linalg.norm(((new - x + unit_box / 2) % unit_box) - unit_box / 2, axis=1) < contact
        candidates = np.flatnonzero(hits - own.astype(int) == 0)
        if len(candidates) > 1:
            clash = cKDTree(new[candidates], boxsize=unit_box).query_pairs(contact, output_type="ndarray")
            bad = np.zeros(len(candidates), bool)
            bad[clash.ravel()] = True
            candidates = candidates[~bad]
        x[candidates] = new[candidates]
    return x * r


def sphere_image(
    rng: np.random.Generator,
    shape: Sequence[int],
    *,
    radius,
    sigma,
    snr: Sequence[float],
    volume_fraction: float,
    noise: str = "gaussian",
    background: float = 100.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image of densely packed hard spheres (module docstring).

    Parameters
    ----------
    radius : float or sequence
        Sphere radius per axis, pixels.
    sigma : float or sequence
        PSF s.d. per axis, pixels (any blur of the balls, e.g. the ENS
        challenge's pre-blur, folded in: s.d.s add in quadrature).
    snr : (low, high)
        Range of the spheres' contrast over the noise s.d. (uniform, per sphere).
    volume_fraction : float
    noise, background
        As :func:`spot_image`.

    Returns
    -------
    image, positions, snrs
        As :func:`spot_image`: centres inside the image.
    """
    shape = np.asarray(shape, dtype=int)
    ndim = len(shape)
    r = _per_axis(radius, ndim)
    s = _per_axis(sigma, ndim)
    pad = np.ceil(r + 4 * s + 2).astype(int)
    box = shape + 2 * pad
    centres = hard_sphere_centres(rng, box, r, volume_fraction)
    snrs = rng.uniform(float(snr[0]), float(snr[1]), size=len(centres))
    canvas = np.zeros(tuple(box), np.float32)
    h = np.ceil(r + 1).astype(int)
    grids = [np.arange(-k, k + 1) for k in h]
    contrast = snrs * math.sqrt(background)
    r_mean = float(np.exp(np.mean(np.log(r))))
    for c, level in zip(centres, contrast):
        ic = np.floor(c).astype(int)
        lo = ic - h
        hi = ic + h + 1
        # periodic box: only spheres whose window lies inside are drawn whole; those
        # crossing the box edge sit in the padding, outside the image
        if np.any(lo < 0) or np.any(hi > box):
            continue
        mesh = np.meshgrid(*[(g + i - ci) / ri for g, i, ci, ri in zip(grids, ic, c, r)], indexing="ij")
        rho = np.sqrt(sum(m * m for m in mesh))  # distance in units of the radius
        ball = np.clip((1.0 - rho) * r_mean + 0.5, 0.0, 1.0).astype(np.float32)
        window = tuple(slice(a, b) for a, b in zip(lo, hi))
        np.maximum(canvas[window], ball * np.float32(level), out=canvas[window])
    canvas = ndimage.gaussian_filter(canvas, s, truncate=3.5)
    core = canvas[tuple(slice(p, p + n) for p, n in zip(pad, shape))]
    image = add_noise(core.astype(np.float64), rng, noise, background)
    pos = centres - pad
    inside = np.all((pos >= -0.5) & (pos < shape - 0.5), axis=1)
    return image, pos[inside], snrs[inside]


def detection_image(
    rng: np.random.Generator,
    shape: Sequence[int],
    *,
    sigma,
    radius=0.0,
    snr: Sequence[float] = (1.5, 5.0),
    density: Sequence[float] = (2.0, 10.0),
    volume_fraction: Sequence[float] = (0.25, 0.55),
    noise: str = "gaussian",
    background: float = 100.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training or validation image: spots (``radius`` 0) at a density
    drawn uniformly from ``density``, or spheres at a volume fraction drawn
    from ``volume_fraction``. Returns ``image, positions, snrs``."""
    if np.any(np.asarray(radius, dtype=float) > 0):
        phi = rng.uniform(float(volume_fraction[0]), float(volume_fraction[1]))
        return sphere_image(rng, shape, radius=radius, sigma=sigma, snr=snr, volume_fraction=phi, noise=noise,
                            background=background)
    rate = rng.uniform(float(density[0]), float(density[1]))
    return spot_image(rng, shape, sigma=sigma, snr=snr, density=rate, noise=noise, background=background)
