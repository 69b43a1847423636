"""Rendering and camera model shared by the simulators.

Spots are pixel-integrated Gaussians (the exact integral of a Gaussian PSF
over each pixel, separable per axis through ``erf``), rendered only in a
small window around each spot and accumulated with one ``np.bincount``.
Pixel ``i`` covers ``[i - 0.5, i + 0.5)`` along its axis, so a spot centred
at ``x = i`` has its centroid on pixel ``i`` (trackpy's convention).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

__all__ = ["render_gaussian_spots", "camera_counts"]

_SQRT2 = math.sqrt(2.0)


def _axis_weights(coord: np.ndarray, sigma: float, half: int, size: int):
    """Per-spot pixel indices (n, w) and integrated weights (n, w) along one axis."""
    start = np.floor(coord + 0.5).astype(np.int64) - half
    idx = start[:, None] + np.arange(2 * half + 1)
    # erf at the w + 1 pixel edges, differenced: the Gaussian integrated over each pixel.
    edges = (idx[:, :1] - 0.5 + np.arange(2 * half + 2)) - coord[:, None]
    cdf = erf(edges / (_SQRT2 * sigma))
    weights = 0.5 * np.diff(cdf, axis=1)
    inside = (idx >= 0) & (idx < size)
    weights *= inside
    np.clip(idx, 0, size - 1, out=idx)
    return idx, weights


def render_gaussian_spots(
    shape,
    positions_px,
    photons,
    sigma_px,
    *,
    radius: float = 4.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Render Gaussian spots integrated over pixels.

    Parameters
    ----------
    shape : tuple of int
        Image shape, (y, x) or (z, y, x), in pixels.
    positions_px : (n, ndim) array
        Spot centres in pixels, in the axis order of ``shape``.
    photons : float or (n,) array
        Total photons of each spot (the integral over all space; pixels near
        the image border receive only the part that falls inside).
    sigma_px : float or sequence of float
        Gaussian PSF standard deviation per axis, in pixels.
    radius : float
        Window half-width in units of sigma (4 sigma keeps >99.99 % of the light).
    out : float array of ``shape``, optional
        Image to add the spots to (in place); a new zeroed float64 image otherwise.

    Returns
    -------
    ndarray of float64
        The expected photon count per pixel.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    sigma = np.broadcast_to(np.asarray(sigma_px, dtype=float), (ndim,))
    pos = np.asarray(positions_px, dtype=float).reshape(-1, ndim)
    amp = np.broadcast_to(np.asarray(photons, dtype=float), (pos.shape[0],))
    if out is None:
        out = np.zeros(shape, dtype=np.float64)
    halves = [max(1, int(math.ceil(radius * s))) for s in sigma]
    # Skip spots whose window misses the image entirely.
    keep = np.ones(pos.shape[0], dtype=bool)
    for a in range(ndim):
        keep &= (pos[:, a] > -halves[a] - 1) & (pos[:, a] < shape[a] + halves[a])
    keep &= amp > 0
    if not keep.any():
        return out
    pos, amp = pos[keep], amp[keep]
    flat_idx = None
    weights = amp
    for a in range(ndim):
        idx, w = _axis_weights(pos[:, a], sigma[a], halves[a], shape[a])
        expand = (slice(None),) + (None,) * a + (slice(None),)
        idx = idx[expand]
        w = w[expand]
        if flat_idx is None:
            flat_idx = idx
            weights = amp.reshape((-1,) + (1,)) * w
        else:
            flat_idx = flat_idx[..., None] * shape[a] + idx
            weights = weights[..., None] * w
    flat_out = out.reshape(-1)
    flat_out += np.bincount(flat_idx.ravel(), weights=weights.ravel(), minlength=flat_out.size)
    return out


def camera_counts(
    expected: np.ndarray,
    rng: np.random.Generator,
    *,
    shot_noise: bool = True,
    read_noise: float = 0.0,
    baseline: float = 0.0,
    gain: float = 1.0,
    dtype="uint16",
) -> np.ndarray:
    """Turn an expected photon image into camera counts.

    Poisson shot noise on the photoelectrons (quantum efficiency folded into
    ``expected``), Gaussian read noise of ``read_noise`` electrons rms, ``gain``
    counts per electron, a ``baseline`` offset in counts; integer dtypes are
    rounded and clipped to their range.
    """
    dtype = np.dtype(dtype)
    # float32 holds every uint8/uint16 count exactly and halves the memory traffic.
    work = np.float32 if (dtype.kind in "ui" and dtype.itemsize <= 2) or dtype == np.float32 else np.float64
    if shot_noise:
        counts = rng.poisson(expected).astype(work)
    else:
        counts = np.array(expected, dtype=work, copy=True)
    if read_noise > 0:
        noise = rng.standard_normal(size=counts.shape, dtype=work)
        noise *= work(read_noise)
        counts += noise
    if gain != 1.0:
        counts *= work(gain)
    if baseline:
        counts += work(baseline)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        np.rint(counts, out=counts)
        np.clip(counts, info.min, info.max, out=counts)
    return counts.astype(dtype, copy=False)
