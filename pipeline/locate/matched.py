"""``locate.method: matched``: a matched-filter detector with a threshold set
from the false detections a user accepts, and least-squares Gaussian fits.

For a known spot shape g in white noise, correlating the image with g
maximises the detection signal-to-noise ratio (North 1943; Turin 1960): a
Gaussian spot of peak A and standard deviation s in noise of s.d. σ becomes a
peak of A/σ · sqrt(π s²) noise s.d.s in 2D (science.md §7). Each frame goes
through four steps:

1. **Filter**: a Gaussian of the spot's s.d. (``sigma``) minus the local
   background, the mean over a box of ± ``background_scale`` × sigma (the
   shape of trackpy's bandpass, with the Gaussian matched to the spot); with
   ``background_scale: 0`` the frame's median is the background.
2. **Threshold from a false-detection rate.** The noise s.d. σ̂ of the raw
   frame is estimated robustly from the median absolute deviation of
   neighbouring-pixel differences along x (robust to spots and to smooth
   backgrounds); the filtered noise then has s.d. σ̂ ‖k‖₂, k the filter's
   impulse response. A local maximum is a detection when it stands more than
   u filtered-noise s.d.s above the background. u is chosen so that the
   expected number of local maxima above u in a blank frame of this shape
   equals ``false_rate``: for a smooth stationary Gaussian field, that number
   is the expected Euler characteristic of the excursion set above u
   (Adler 1981; Worsley et al. 1996, Hum. Brain Mapp. 4:58),

   E[N(u)] ≈ Σ_d L_d ρ_d(u),   ρ_0 = 1 − Φ(u),
   ρ_d(u) = (2π)^-(d+1)/2 He_{d-1}(u) exp(−u²/2),

   with L_d the Lipschitz–Killing curvatures of the frame (a box with sides
   n_i, in units of the field's roughness: L_D = Π n_i sqrt(λ_i), lower ones
   the faces') and λ_i = Var(∂_i f)/Var(f) computed from the filter's
   spectrum. This accounts for how many independent maxima a frame holds, so
   the same ``false_rate`` means the same thing for any frame size, filter
   width or voxel anisotropy. ``threshold`` sets u directly instead.
3. **Local maxima** closer than ``separation`` (per axis) to a stronger one
   are dropped.
4. **Sub-pixel fit**: each detection's window (±2.5 s per axis) is fitted by
   least squares (Levenberg–Marquardt, vectorised over all detections of the
   frame) with b + A exp(−½ Σ_i ((x_i − c_i) / (s_i e^τ))²): position,
   amplitude, background and one width factor e^τ (the anisotropy of s is
   kept). For white Gaussian noise least squares is the maximum-likelihood
   estimator and reaches the Cramér–Rao bound (Thompson, Larson & Webb 2002;
   Mortensen et al. 2010). Detections whose windows overlap are fitted
   jointly: each is refitted on the frame minus its neighbours' current
   models, a few sweeps (block coordinate descent on the joint
   least-squares problem, as trackpy.refine_leastsq fits clusters; van der
   Wel & Kraft 2017).

**Residual detection** (``residual_rounds``, by default in 3D): touching
spheres often merge into one maximum of the filtered image. After the fits,
the fitted spots are subtracted, the residual is filtered and thresholded
again; maxima farther than 1.5 ``separation`` from every fitted spot are added (a touching neighbour sits two separations away; closer is the fit's own misfit), all
are refitted jointly, and two detections that converge closer than half the
separation are merged. This repeats until nothing new rises above the
threshold.

**Whole-frame fit** (``volume_fit``, for dense spheres of known radius and
PSF): the window fits above still feel their neighbours' light, most
along a confocal volume's blurred axis. With ``volume_fit`` every detection
is then refitted at once, as balls blurred by the PSF, to the whole frame
(:mod:`pipeline.locate.spheres`, after Bierbaum et al. 2017); faint and
duplicate fits are dropped, and the residual of the whole model is searched
once more, also for spheres just beyond the frame's faces, whose light
would otherwise pull their neighbours outwards. Those are fitted, not
reported.

Output: trackpy's columns in trackpy's order (``frame, [z,] y, x, mass,
size, ecc, signal, raw_mass, ep``, anisotropic ``size_<axis>`` and
``ep_<axis>``), so refine, link and size read the table unchanged:

- positions: the fitted centres (pixels); a fit that fails (diverges, or
  leaves its window) keeps the local maximum's pixel;
- ``mass``: the fitted spot's integrated brightness above the background,
  A Π sqrt(2π) s_i;
- ``size`` (``size_<axis>``): radius of gyration of the fitted Gaussian,
  s sqrt(ndim) (trackpy's definition, without its mask truncation);
- ``ecc``: trackpy's eccentricity of the background-subtracted window (2D;
  NaN in 3D, as trackpy);
- ``signal``: the fitted peak amplitude A above the background;
- ``raw_mass``: the sum of the raw frame within the feature's mask
  (``diameter``), as trackpy;
- ``ep`` (``ep_<axis>``): the fit's standard error of the position from
  σ̂² (JᵀJ)⁻¹ (the root-mean-square over axes for ``ep``).

Fits with a non-positive amplitude are dropped (the data have no spot there).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage, optimize, special
from scipy.spatial import cKDTree

from ..io.schema import check_section, section_defaults
from . import spheres

__all__ = [
    "MATCHED_OPTIONS",
    "matched_options",
    "noise_sd",
    "matched_filter",
    "filter_properties",
    "noise_gain",
    "expected_false_maxima",
    "threshold_for_false_rate",
    "fit_spots",
    "detect",
    "locate_matched",
    "locate_matched_frames",
    "empty_matched",
    "feature_table",
]

#: The keys of ``locate.matched`` with their defaults (locate.schema.yaml).
MATCHED_OPTIONS: dict[str, Any] = section_defaults("locate")["matched"]
#: trackpy keys that the matched detector reads too.
SHARED_KEYS = ("diameter", "invert", "characterize")
_AXES = ("z", "y", "x")
#: Fit window half-width in units of sigma, and the Levenberg-Marquardt budget.
WINDOW_SIGMAS = 2.5
FIT_ITERATIONS = 10
#: A fit stops once its position steps fall below this (pixels).
POSITION_TOLERANCE = 3e-3
#: Joint-fit sweeps over detections whose windows overlap.
JOINT_SWEEPS = 3
#: Residual detections must lie this many separations from every fitted spot.
RESIDUAL_EXCLUSION = 1.5
#: ... and this many with ``volume_fit``, whose pruning merges the duplicates
#: a closer candidate can make (measured: recall at volume fraction 0.55,
#: radius 4, rises from 0.89 to 0.95 at the same precision).
VOLUME_FIT_RESIDUAL_EXCLUSION = 1.2
#: Candidates fitted in one vectorised block (bounds the memory of the Jacobian).
BLOCK_VOXELS = 2_000_000


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------
def _per_axis(name: str, value: Any, ndim: int) -> tuple[float, ...]:
    values = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else (value,) * ndim
    if len(values) != ndim:
        raise ValueError(
            f"locate.{name}: {list(values)} needs one value per spatial axis ({ndim}) or a single value"
        )
    return tuple(float(v) for v in values)


def matched_options(diameter: Any, ndim: int, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The matched detector's options, checked, with every default resolved.

    Parameters
    ----------
    diameter : odd int or sequence of odd ints
        ``locate.diameter``: feature extent in pixels, per axis allowed.
    ndim : int
        Spatial dimensions of the frames (2 or 3).
    options : mapping, optional
        The ``locate.matched`` section (missing keys take their defaults).

    Returns
    -------
    dict
        ``sigma``, ``separation`` and ``diameter`` as per-axis tuples,
        ``residual_rounds`` as an int, the rest as given.

    Raises
    ------
    ValueError
        Naming the key (``locate.matched.<key>``).
    """
    if ndim not in (2, 3):
        raise ValueError(f"locate: frames must be 2D or 3D, got {ndim} spatial dimensions")

    def plain(value):
        return np.asarray(value).tolist() if isinstance(value, (np.ndarray, np.generic, tuple)) else str(value)

    key = json.dumps([diameter, ndim, dict(options or {})], sort_keys=True, default=plain)
    return dict(_resolved_options(key))


@lru_cache(maxsize=64)
def _resolved_options(key: str) -> dict[str, Any]:
    """:func:`matched_options` on its JSON-encoded arguments (checked once per set of options)."""
    diameter, ndim, options = json.loads(key)
    checked = check_section("locate", {"diameter": diameter, "matched": options})
    opts = dict(checked["matched"])
    diam = _per_axis("diameter", diameter, ndim)
    opts["diameter"] = tuple(int(d) for d in diam)
    if opts["sigma"] is None:
        opts["sigma"] = tuple(max((d - 1) / 4.0, 0.5) for d in diam)
    else:
        opts["sigma"] = _per_axis("matched.sigma", opts["sigma"], ndim)
    if opts["separation"] is None:
        opts["separation"] = tuple(max((d - 1) / 2.0, 1.0) for d in diam)
    else:
        opts["separation"] = _per_axis("matched.separation", opts["separation"], ndim)
    opts["radius"] = _per_axis("matched.radius", opts["radius"], ndim)
    if opts["residual_rounds"] is None:
        opts["residual_rounds"] = 3 if ndim == 3 else 0
    opts["residual_rounds"] = int(opts["residual_rounds"])
    if opts["volume_fit"] is not None:
        opts["volume_fit"] = {key: _per_axis(f"matched.volume_fit.{key}", opts["volume_fit"][key], ndim)
                              for key in ("radius", "psf_sigma")}
    return opts


# ---------------------------------------------------------------------------
# filter, noise, threshold
# ---------------------------------------------------------------------------
def noise_sd(image: np.ndarray, *, max_samples: int = 65_536) -> float:
    """Standard deviation of white noise in ``image``, estimated robustly.

    1.4826 × the median absolute deviation of the differences of neighbouring
    pixels along the last axis, divided by sqrt(2): for white noise of s.d. σ
    such differences have s.d. σ sqrt(2), while spots and smooth backgrounds
    change them little. At most ``max_samples`` differences are used (whole
    rows, evenly spread).

    Parameters
    ----------
    image : ndarray
        One frame (2D or 3D), any real dtype.

    Returns
    -------
    float
        σ̂ in the image's units (0 for a constant image).
    """
    image = np.asarray(image)
    rows = image.reshape(-1, image.shape[-1])
    step = max(1, int(math.ceil(rows.size / max_samples)))
    diffs = np.diff(rows[::step].astype(np.float32), axis=1).ravel()
    if diffs.size == 0:
        return 0.0
    med = np.median(diffs)
    return float(1.482602218505602 * np.median(np.abs(diffs - med)) / math.sqrt(2.0))


def _smooth(image: np.ndarray, sigma: Sequence[float], mode: str = "reflect") -> np.ndarray:
    return ndimage.gaussian_filter(image, sigma, mode=mode, truncate=3.5)


def _box_widths(sigma: Sequence[float], background_scale: float) -> list[int]:
    """Odd widths of the background box: ± ``background_scale × sigma`` per axis."""
    return [2 * int(round(background_scale * s)) + 1 for s in sigma]


def _background(image: np.ndarray, sigma: Sequence[float], background_scale: float, mode: str = "reflect") -> np.ndarray:
    """The local background: the mean over a box of ± ``background_scale ×
    sigma`` per axis (trackpy's bandpass uses a boxcar likewise; its cost does
    not grow with the width)."""
    return ndimage.uniform_filter(image, _box_widths(sigma, background_scale), mode=mode)


def matched_filter(image: np.ndarray, sigma: Sequence[float], background_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The frame correlated with the spot template, minus its local background.

    Parameters
    ----------
    image : ndarray (float32 or float64)
        One frame.
    sigma : sequence of float
        Spot s.d. per axis, pixels.
    background_scale : float
        Half-width of the background box in units of ``sigma``; 0: the median.

    Returns
    -------
    response, background : ndarray, ndarray (or float)
        ``G_sigma * image − background`` and the background estimate (the
        mean over a box of ± ``background_scale × sigma``, or the frame's median).
    """
    smooth = _smooth(image, sigma)
    if background_scale > 0:
        background = _background(image, sigma, background_scale)
    else:
        background = np.float32(np.median(image))
    return smooth - background, background


@lru_cache(maxsize=64)
def filter_properties(sigma: tuple[float, ...], background_scale: float) -> tuple[float, tuple[float, ...]]:
    """The filter's noise gain and roughness, from its impulse response.

    Returns
    -------
    norm : float
        ‖k‖₂: white noise of s.d. σ has s.d. σ ‖k‖₂ after the filter.
    lambdas : tuple of float
        λ_i = Var(∂_i f) / Var(f) of the filtered white noise per axis,
        pixels⁻², from the spectrum of k (for a plain Gaussian of s.d. s:
        1 / (2 s²)).
    """
    wide = max(background_scale, 1.0)
    half = [int(math.ceil(4 * wide * s)) + 4 for s in sigma]
    delta = np.zeros([2 * h + 1 for h in half], dtype=np.float64)
    delta[tuple(half)] = 1.0
    k = _smooth(delta, sigma, mode="constant")
    if background_scale > 0:
        k = k - _background(delta, sigma, background_scale, mode="constant")
    power = np.abs(np.fft.fftn(k)) ** 2
    total = float(power.sum())
    lambdas = []
    for axis, n in enumerate(k.shape):
        omega = 2 * np.pi * np.fft.fftfreq(n)
        shape = [1] * k.ndim
        shape[axis] = n
        lambdas.append(float((power * omega.reshape(shape) ** 2).sum() / total))
    return float(np.sqrt((k**2).sum())), tuple(lambdas)


@lru_cache(maxsize=16)
def noise_gain(shape: tuple[int, ...], sigma: tuple[float, ...], background_scale: float) -> np.ndarray:
    """Per pixel, the s.d. of the filtered image of unit white noise.

    ‖k‖₂ in the frame's interior; near the edges the filter's reflected
    border counts some noise samples twice and the s.d. grows (by up to
    sqrt(2) per edge), which would multiply false detections there. The map
    is exact for :func:`matched_filter`'s separable parts: with per-axis
    effective kernels g_i (Gaussian) and b_i (box) at each position,
    Var = Π Σ g_i² − 2 Π Σ g_i b_i + Π Σ b_i² (the median background, a
    constant, adds nothing).

    Returns
    -------
    ndarray (float32), ``shape``
        Read-only; cached per shape and filter.
    """
    terms = {"gg": [], "gb": [], "bb": []}
    widths = _box_widths(sigma, background_scale) if background_scale > 0 else None
    for axis, (n, s) in enumerate(zip(shape, sigma)):
        eye = np.eye(n)
        g = ndimage.gaussian_filter1d(eye, s, axis=0, mode="reflect", truncate=3.5)
        terms["gg"].append((g * g).sum(axis=1))
        if widths is not None:
            b = ndimage.uniform_filter1d(eye, widths[axis], axis=0, mode="reflect")
            terms["gb"].append((g * b).sum(axis=1))
            terms["bb"].append((b * b).sum(axis=1))

    def outer(vectors):
        out = np.ones(shape)
        for axis, v in enumerate(vectors):
            view = [1] * len(shape)
            view[axis] = len(v)
            out = out * v.reshape(view)
        return out

    var = outer(terms["gg"])
    if widths is not None:
        var = var - 2 * outer(terms["gb"]) + outer(terms["bb"])
    gain = np.sqrt(np.maximum(var, 1e-30)).astype(np.float32)
    gain.flags.writeable = False
    return gain


def _hermite(order: int, u: float) -> float:
    """Probabilists' Hermite polynomial He_order(u), order 0..2."""
    return (1.0, u, u * u - 1.0)[order]


def expected_false_maxima(u: float, shape: Sequence[int], lambdas: Sequence[float], *, lattice: bool = True) -> float:
    """Expected number of local maxima above u of a smooth, unit-variance
    Gaussian field on a box of ``shape`` pixels with roughness ``lambdas``.

    The expected Euler characteristic of the excursion set (Worsley et al.
    1996), which is the number of maxima above u for the thresholds that
    matter (u ≳ 3): Σ over the box's faces of their volume in roughness
    units, Π n_i sqrt(λ_i), times ρ_d(u) (module docstring).

    ``lattice``: the maxima are those of the field *sampled on the pixels*.
    A peak of height h has mean curvature −h λ_i along axis i (Adler 1981:
    E[∇²f | f = h] = −h Λ), so the nearest pixel, off by δ_i ∈ [−½, ½],
    reads h (1 − ½ Σ λ_i δ_i²): a peak counts only if h exceeds
    u / (1 − ½ Σ λ_i δ_i²). The count is averaged over δ uniform in the
    pixel (a few points per axis); without it the continuous count
    overestimates the sampled one by up to ~2x for u ≈ 4.5 and s ≈ 1.5 px.
    """
    from itertools import combinations, product

    scaled = [n * math.sqrt(lam) for n, lam in zip(shape, lambdas)]

    def continuous(h: float) -> float:
        total = 0.5 * special.erfc(h / math.sqrt(2.0))  # ρ_0: the box's corners as one
        for d in range(1, len(scaled) + 1):
            volume = sum(math.prod(face) for face in combinations(scaled, d))
            total += volume * (2 * math.pi) ** (-(d + 1) / 2) * _hermite(d - 1, h) * math.exp(-h * h / 2)
        return total

    if not lattice:
        return continuous(u)
    nodes = (np.arange(6) + 0.5) / 6 - 0.5  # midpoints of six equal parts of [-1/2, 1/2]
    values = [
        continuous(u / max(1.0 - 0.5 * sum(lam * d * d for lam, d in zip(lambdas, deltas)), 0.5))
        for deltas in product(nodes, repeat=len(lambdas))
    ]
    return float(np.mean(values))


@lru_cache(maxsize=256)
def threshold_for_false_rate(
    false_rate: float, shape: tuple[int, ...], sigma: tuple[float, ...], background_scale: float
) -> float:
    """The z-score threshold u at which a blank frame of ``shape`` holds
    ``false_rate`` local maxima above u on average (module docstring).

    Parameters
    ----------
    false_rate : float
        False detections per frame.
    shape : tuple of int
        Frame shape, pixels.
    sigma, background_scale
        The filter, as :func:`matched_filter`.

    Returns
    -------
    float
        u, in units of the filtered noise's s.d.
    """
    _, lambdas = filter_properties(tuple(sigma), float(background_scale))

    def excess(u: float) -> float:
        return math.log(max(expected_false_maxima(u, shape, lambdas), 1e-300)) - math.log(false_rate)

    low, high = 1.0, 40.0
    if excess(low) <= 0:  # so many false maxima allowed that any local maximum qualifies
        return low
    return float(optimize.brentq(excess, low, high, xtol=1e-6))


# ---------------------------------------------------------------------------
# least-squares Gaussian fits, vectorised over detections
# ---------------------------------------------------------------------------
class _Windows:
    """Index arithmetic for the fit windows of one frame."""

    def __init__(self, shape: Sequence[int], sigma: Sequence[float]):
        self.shape = tuple(int(n) for n in shape)
        self.ndim = len(self.shape)
        self.half = tuple(max(2, int(math.ceil(WINDOW_SIGMAS * s))) for s in sigma)
        grids = np.meshgrid(*[np.arange(-h, h + 1) for h in self.half], indexing="ij")
        self.offsets = [g.ravel().astype(np.float64) for g in grids]  # per axis, (M,)
        self.size = self.offsets[0].size
        strides = np.cumprod((1,) + tuple(n + 2 * h for n, h in zip(self.shape[::-1], self.half[::-1])))[:-1][::-1]
        self.padded_shape = tuple(n + 2 * h for n, h in zip(self.shape, self.half))
        self.strides = strides
        self.flat_offsets = sum(g.ravel() * s for g, s in zip(grids, strides)).astype(np.int64)

    def pad(self, image: np.ndarray) -> np.ndarray:
        return np.pad(image, [(h, h) for h in self.half]).ravel()

    def valid(self) -> np.ndarray:
        return _valid_mask(self.shape, self.half)

    def index(self, centres: np.ndarray) -> np.ndarray:
        """Flat indices into the padded frame of each window, (N, M)."""
        base = ((centres + np.asarray(self.half)) * self.strides).sum(axis=1)
        return base[:, None] + self.flat_offsets[None, :]


@lru_cache(maxsize=8)
def _valid_mask(shape: tuple[int, ...], half: tuple[int, ...]) -> np.ndarray:
    """1 inside the frame, 0 in the padding (read-only, cached per shape)."""
    mask = np.pad(np.ones(shape, dtype=np.float32), [(h, h) for h in half]).ravel()
    mask.flags.writeable = False
    return mask


#: Gaussians whose sum approximates a ball (radius 1) in :class:`Template`.
BALL_COMPONENTS = 5


@lru_cache(maxsize=1)
def _ball_mixture() -> tuple[np.ndarray, np.ndarray]:
    """Weights and widths (in units of the radius) of centred Gaussians whose
    sum approximates a uniform ball of radius 1 with a partial-volume edge a
    pixel wide (least squares on the radial profile, weighted by the 3D
    measure r²). Blurred by a Gaussian PSF each component stays a Gaussian,
    so a blurred ball is a sum of Gaussians (Gaussian-mixture approximation
    of a blurred sphere; its error after the PSF is a few per cent of the
    peak for radius/PSF ≲ 5)."""
    widths = np.linspace(0.2, 1.0, BALL_COMPONENTS)
    rho = np.linspace(0.0, 4.0, 1600)
    profile = 0.5 * (1.0 - np.tanh((rho - 1.0) / 0.09))
    basis = np.exp(-0.5 * (rho[:, None] / widths[None, :]) ** 2)
    weight = np.sqrt(rho**2 + 0.05)
    # and, heavily weighted, the ball's volume 4π/3 and second moment ∫x² = 4π/15
    norm = (2 * np.pi) ** 1.5 * widths**3
    rows = np.vstack([basis * weight[:, None], 100 * norm, 100 * norm * widths**2])
    target = np.concatenate([profile * weight, [100 * 4 * np.pi / 3, 100 * 4 * np.pi / 15]])
    coefficients, *_ = np.linalg.lstsq(rows, target, rcond=None)
    return coefficients, widths


class Template:
    """The spot model: a Gaussian of s.d. ``sigma`` (``radius`` 0: a
    point-like spot imaged by a Gaussian PSF), or a ball of ``radius``
    blurred by that Gaussian, as a sum of Gaussians with a common centre.

    The model of one spot is A Σ_k w_k exp(−½ Σ_i ((x_i − c_i) / (s_ki e^τ))²),
    its peak A Σ_k w_k; τ (a common width factor) is fitted for spots and
    held at 0 for spheres, whose size is known (a fitted width would let one
    wide model swallow two touching spheres).
    """

    def __init__(self, sigma: Sequence[float], radius: Sequence[float] | float = 0.0):
        self.sigma = np.asarray(sigma, dtype=np.float64)
        ndim = len(self.sigma)
        radius = np.broadcast_to(np.asarray(radius, dtype=np.float64), (ndim,))
        self.radius = radius.copy()
        if np.all(radius <= 0):
            self.weights = np.ones(1)
            self.widths = self.sigma[None, :].copy()
            self.fit_width = True
        else:
            coefficients, scales = _ball_mixture()
            core = scales[:, None] * radius[None, :]  # (K, ndim)
            self.widths = np.sqrt(core**2 + self.sigma[None, :] ** 2)
            # a Gaussian of width s blurred by one of width σ keeps its integral: its peak drops by s / sqrt(s² + σ²)
            self.weights = coefficients * np.prod(core / self.widths, axis=1)
            self.fit_width = False
        mass = self.weights * np.prod(np.sqrt(2 * np.pi) * self.widths, axis=1)
        self.volume = float(mass.sum())  # integral of the model at A = 1
        self.moment = (mass[:, None] * self.widths**2).sum(axis=0) / self.volume  # <x_i²> per axis
        self.peak = float(self.weights.sum())
        # the moment-matched s.d. sets the fit window
        self.extent = np.sqrt(np.maximum(self.moment, self.sigma**2))

    def filtered_peak(self, sigma: Sequence[float]) -> float:
        """The template's peak after a Gaussian filter of ``sigma`` (normalised)."""
        sigma = np.asarray(sigma, dtype=np.float64)
        return float((self.weights * np.prod(self.widths / np.sqrt(self.widths**2 + sigma**2), axis=1)).sum())

    def evaluate(self, theta: np.ndarray, offsets: Sequence[np.ndarray]) -> tuple[np.ndarray, list, np.ndarray]:
        """g = Σ_k w_k g_k per window pixel, ∂g/∂c_i and ∂g/∂τ."""
        ndim = len(offsets)
        scale = np.exp(theta[:, ndim + 2])[:, None]  # (N, 1)
        n, m = theta.shape[0], offsets[0].size
        g = np.zeros((n, m))
        dg_dc = [np.zeros((n, m)) for _ in range(ndim)]
        dg_dtau = np.zeros((n, m))
        for weight, widths in zip(self.weights, self.widths):
            s = widths[None, :] * scale  # (N, ndim)
            quad = np.zeros((n, m))
            parts = []
            for i in range(ndim):
                u = (offsets[i][None, :] - theta[:, i : i + 1]) / s[:, i : i + 1]
                quad += u * u
                parts.append(u / s[:, i : i + 1])
            gk = weight * np.exp(-0.5 * quad)
            g += gk
            for i in range(ndim):
                dg_dc[i] += gk * parts[i]
            dg_dtau += gk * quad
        return g, dg_dc, dg_dtau


def _template(opts: Mapping[str, Any]) -> Template:
    return _cached_template(tuple(opts["sigma"]), tuple(opts["radius"]))


@lru_cache(maxsize=16)
def _cached_template(sigma: tuple[float, ...], radius: tuple[float, ...]) -> Template:
    return Template(sigma, radius)


def _jacobian(theta: np.ndarray, g: np.ndarray, dg_dc: Sequence[np.ndarray], dg_dtau: np.ndarray) -> np.ndarray:
    ndim = len(dg_dc)
    amp = theta[:, ndim : ndim + 1]
    jac = np.empty(g.shape + (ndim + 3,))
    for i in range(ndim):
        jac[:, :, i] = amp * dg_dc[i]
    jac[:, :, ndim] = g
    jac[:, :, ndim + 1] = 1.0
    jac[:, :, ndim + 2] = amp * dg_dtau
    return jac


def _lm(
    data: np.ndarray,
    weight: np.ndarray,
    theta: np.ndarray,
    offsets: Sequence[np.ndarray],
    template: Template,
    half: Sequence[int],
    iterations: int,
    hold_background: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg–Marquardt on every window at once.

    θ = (c_0..c_{D-1}, A, b, τ) per row; model b + A g(x − c; τ) with g the
    :class:`Template` (τ held at 0 unless ``template.fit_width``). Rows stop iterating once their position steps fall below
    :data:`POSITION_TOLERANCE`. Returns θ, the final weighted sum of squares and JᵀWJ.
    """
    ndim = len(offsets)
    n_par = ndim + 3
    theta = theta.copy()
    lam = np.full(theta.shape[0], 1e-3)
    limit = np.asarray(half, dtype=np.float64) + 0.5
    tau_low, tau_high = math.log(0.5), math.log(2.0)

    def evaluate(th, rows):
        g, parts, quad = template.evaluate(th, offsets)
        resid = data[rows] - (th[:, ndim + 1 : ndim + 2] + th[:, ndim : ndim + 1] * g)
        return g, parts, quad, resid, np.einsum("nm,nm->n", weight[rows] * resid, resid)

    active = np.arange(theta.shape[0])
    g, parts, quad, resid, cost = evaluate(theta, active)
    cost_all = cost.copy()
    eye = np.eye(n_par)
    for _ in range(iterations):
        if len(active) == 0:
            break
        th = theta[active]
        jac = _jacobian(th, g, parts, quad)
        wj = jac * weight[active][:, :, None]
        hess = np.matmul(wj.transpose(0, 2, 1), jac)
        grad = np.matmul(wj.transpose(0, 2, 1), resid[:, :, None])[:, :, 0]
        # a width factor at its bound that the gradient pushes outwards is held there
        tau = th[:, ndim + 2]
        pinned = ((tau <= tau_low + 1e-9) & (grad[:, ndim + 2] < 0)) | ((tau >= tau_high - 1e-9) & (grad[:, ndim + 2] > 0))
        if not template.fit_width:
            pinned[:] = True
        if pinned.any():
            hess[pinned, ndim + 2, :] = 0.0
            hess[pinned, :, ndim + 2] = 0.0
            hess[pinned, ndim + 2, ndim + 2] = 1.0
            grad[pinned, ndim + 2] = 0.0
        if hold_background:
            hess[:, ndim + 1, :] = 0.0
            hess[:, :, ndim + 1] = 0.0
            hess[:, ndim + 1, ndim + 1] = 1.0
            grad[:, ndim + 1] = 0.0
        diag = np.einsum("npp->np", hess)
        damped = hess + lam[active][:, None, None] * (diag[:, :, None] * eye) + 1e-12 * eye
        try:
            step = np.linalg.solve(damped, grad[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(h, r, rcond=None)[0] for h, r in zip(damped, grad)])
        trial = th + step
        trial[:, ndim + 2] = np.clip(trial[:, ndim + 2], tau_low, tau_high)
        trial[:, :ndim] = np.clip(trial[:, :ndim], -limit, limit)
        g2, parts2, quad2, resid2, cost2 = evaluate(trial, active)
        better = np.isfinite(cost2) & (cost2 < cost)
        theta[active[better]] = trial[better]
        cost_all[active[better]] = cost2[better]
        lam[active] = np.where(better, lam[active] / 3.0, lam[active] * 4.0)
        # at low SNR Gauss-Newton converges linearly (the residuals are large): stop
        # once positions move by less than POSITION_TOLERANCE, far below any CRLB
        small = (np.abs(step[:, :ndim]).max(axis=1) < POSITION_TOLERANCE) | (better & (cost - cost2 < 1e-7 * cost))
        stalled = ~better & (np.abs(step[:, :ndim]).max(axis=1) < 10 * POSITION_TOLERANCE)
        keep = ~(small | stalled) & (lam[active] < 1e6)
        g = np.where(better[:, None], g2, g)[keep]
        quad = np.where(better[:, None], quad2, quad)[keep]
        parts = [np.where(better[:, None], p2, p)[keep] for p, p2 in zip(parts, parts2)]
        resid = np.where(better[:, None], resid2, resid)[keep]
        cost = np.where(better, cost2, cost)[keep]
        active = active[keep]
    g, parts, quad = template.evaluate(theta, offsets)
    jac = _jacobian(theta, g, parts, quad)
    if not template.fit_width:
        jac[:, :, ndim + 2] = 0.0
    hess = np.matmul((jac * weight[:, :, None]).transpose(0, 2, 1), jac)
    if not template.fit_width:
        hess[:, ndim + 2, ndim + 2] = 1.0
    return theta, cost_all, hess


def _colour(n: int, pairs: np.ndarray) -> np.ndarray:
    """A greedy colouring of the graph of ``pairs`` (no two neighbours share a colour)."""
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in pairs:
        neighbours[a].append(b)
        neighbours[b].append(a)
    colour = np.full(n, -1, dtype=np.int64)
    for i in np.argsort([-len(v) for v in neighbours], kind="stable"):
        taken = {colour[j] for j in neighbours[i]}
        c = 0
        while c in taken:
            c += 1
        colour[i] = c
    return colour


def _render(flat_shape: int, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(flat_shape)
    np.add.at(out, index.ravel(), values.ravel())
    return out


def fit_spots(
    image: np.ndarray,
    centres: np.ndarray,
    sigma: Sequence[float],
    *,
    radius: Sequence[float] | float = 0.0,
    amplitude: np.ndarray | None = None,
    background: np.ndarray | None = None,
    theta: np.ndarray | None = None,
    joint: bool = True,
    sweeps: int = JOINT_SWEEPS,
) -> dict[str, np.ndarray]:
    """Least-squares Gaussian fits of spots near integer ``centres``.

    Parameters
    ----------
    image : ndarray
        The frame (float), 2D or 3D.
    centres : int array (N, ndim)
        Integer starting positions (local maxima), pixels.
    sigma : sequence of float
        The spot's (or the PSF's, for spheres) s.d. per axis, pixels; for
        spots the fit scales all axes by one factor.
    radius : float or sequence of float
        Sphere radius per axis in pixels (0: point-like spots); the model is
        then the ball blurred by ``sigma`` (:class:`Template`), its size fixed.
    amplitude, background : arrays (N,), optional
        Starting amplitude and background (default: from the window).
    theta : array (N, ndim + 3), optional
        Starting parameters relative to ``centres`` (a warm start).
    joint : bool
        Fit detections whose windows overlap jointly (each on the frame less
        its neighbours' models).
    sweeps : int
        Sweeps of the joint fit.

    Returns
    -------
    dict
        ``centre`` (N, ndim) float positions, ``amplitude`` (the model's
        scale A: its peak is A × the template's peak), ``background``,
        ``sigma`` (N, ndim) the fitted model's s.d. (root second moment) per axis, ``error`` (N, ndim) standard errors
        of the position (in units of the noise: multiply by σ̂), ``ok``
        (fit converged inside its window), ``theta`` and ``origin`` (the
        integer window centres the parameters refer to).
    """
    image = np.asarray(image, dtype=np.float32)
    ndim = image.ndim
    template = _cached_template(tuple(float(v) for v in np.broadcast_to(sigma, (ndim,))),
                                tuple(float(v) for v in np.broadcast_to(radius, (ndim,))))
    win = _Windows(image.shape, template.extent * _window_scale(template))
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, ndim)
    n = len(centres)
    if n == 0:
        empty = np.empty((0, ndim))
        return {"centre": empty, "amplitude": np.empty(0), "background": np.empty(0), "sigma": empty,
                "error": empty, "amplitude_error": np.empty(0), "ok": np.empty(0, bool), "theta": np.empty((0, ndim + 3)), "origin": centres}
    padded = win.pad(image)
    valid = win.valid()
    origin = centres.copy()
    if theta is None:
        theta = np.zeros((n, ndim + 3))
        idx = win.index(origin)
        windows = padded[idx].astype(np.float64)
        w = valid[idx]
        if background is None:
            edge = np.ones(win.size, bool)
            for off, h in zip(win.offsets, win.half):
                edge &= np.abs(off) < h
            border = np.where(w[:, ~edge] > 0, windows[:, ~edge], np.nan)
            background = np.nanmedian(border, axis=1)
        theta[:, ndim + 1] = background
        if amplitude is None:
            centre_index = win.size // 2
            amplitude = windows[:, centre_index] - background
        theta[:, ndim] = np.maximum(amplitude, 1e-6)
    else:
        theta = theta.copy()

    block = max(1, BLOCK_VOXELS // (win.size * (ndim + 3)))

    def fit_all(source: np.ndarray, rows: np.ndarray, iterations: int, own: np.ndarray | None = None,
                hold_background: bool = False):
        """Fit the windows of ``rows`` on ``source`` (+ their own model if given)."""
        nonlocal theta
        cost = np.zeros(len(rows))
        hess = np.zeros((len(rows), ndim + 3, ndim + 3))
        for start in range(0, len(rows), block):
            sel = rows[start : start + block]
            idx = win.index(origin[sel])
            data = source[idx].astype(np.float64)
            if own is not None:
                data = data + own[sel]
            th, c, h = _lm(data, valid[idx].astype(np.float64), theta[sel], win.offsets, template, win.half,
                           iterations, hold_background)
            theta[sel] = th
            cost[start : start + block] = c
            hess[start : start + block] = h
        return cost, hess

    every = np.arange(n)
    crowded = np.empty(0, dtype=np.int64)
    if joint and n > 1:
        # a neighbour within two window half-widths (an ellipsoid) reaches into the window's core
        scaled = origin / (2.0 * np.asarray(win.half))
        pairs = cKDTree(scaled).query_pairs(1.0, output_type="ndarray")
        if len(pairs):
            crowded = np.unique(pairs.ravel())
    isolated = np.setdiff1d(every, crowded)
    hess = np.zeros((n, ndim + 3, ndim + 3))

    def recentre(rows: np.ndarray) -> np.ndarray:
        """Move the windows of ``rows`` whose fits moved more than a pixel from their
        centre (a window of ± 2.5 s.d. still holds a spot a pixel off); the rows moved."""
        shift = np.where(np.abs(theta[rows, :ndim]) > 1.0, np.rint(theta[rows, :ndim]), 0).astype(np.int64)
        new_origin = np.clip(origin[rows] + shift, 0, np.asarray(image.shape) - 1)
        shift = new_origin - origin[rows]
        moved = np.any(shift != 0, axis=1)
        origin[rows[moved]] = new_origin[moved]
        theta[rows[moved], :ndim] -= shift[moved]
        return rows[moved]

    # isolated spots: fit; re-centre the windows of spots that moved by more than a pixel, refit those
    if len(isolated):
        _, hess[isolated] = fit_all(padded, isolated, FIT_ITERATIONS)
        rows = isolated
        for _ in range(2):
            rows = recentre(rows)
            if len(rows) == 0:
                break
            _, hess[rows] = fit_all(padded, rows, FIT_ITERATIONS)
    # spots whose windows overlap: fitted jointly from the start, each on the frame less
    # its neighbours' current models (block coordinate descent on the joint least
    # squares, Gauss-Seidel over groups of spots that share no window). After the
    # first sweep they share one background (the median of theirs): a free
    # background per window would soak up its neighbours' errors and slow the
    # sweeps to a crawl.
    if len(crowded):
        colour = _colour(n, pairs)
        groups = [crowded[colour[crowded] == c] for c in np.unique(colour[crowded])]
        idx = win.index(origin)
        g, _, _ = template.evaluate(theta, win.offsets)
        own = theta[:, ndim : ndim + 1] * g * valid[idx]
        model = _render(padded.size, idx, own)
        for sweep in range(sweeps):
            if sweep == 1:
                theta[crowded, ndim + 1] = np.median(theta[crowded, ndim + 1])
            for rows in groups:
                others = padded - model
                _, hess[rows] = fit_all(others, rows, FIT_ITERATIONS if sweep == 0 else FIT_ITERATIONS // 2,
                                        own=own, hold_background=sweep > 0)
                recentre(rows)
                model -= _render(padded.size, idx[rows], own[rows])
                idx[rows] = win.index(origin[rows])
                g, _, _ = template.evaluate(theta[rows], win.offsets)
                own[rows] = theta[rows, ndim : ndim + 1] * g * valid[idx[rows]]
                model += _render(padded.size, idx[rows], own[rows])

    centre = origin + theta[:, :ndim]
    inside = np.all(np.abs(theta[:, :ndim]) <= np.asarray(win.half), axis=1)
    ok = inside & np.all(np.isfinite(theta), axis=1)
    try:
        cov = np.linalg.inv(hess)
        variances = np.abs(np.einsum("npp->np", cov))
        error = np.sqrt(variances[:, :ndim])
        amplitude_error = np.sqrt(variances[:, ndim])
    except np.linalg.LinAlgError:
        error = np.full((n, ndim), np.nan)
        amplitude_error = np.full(n, np.nan)
    fitted_sigma = np.sqrt(template.moment)[None, :] * np.exp(theta[:, ndim + 2])[:, None]
    centre = np.where(ok[:, None], centre, origin.astype(np.float64))
    return {
        "centre": centre,
        "amplitude": theta[:, ndim],
        "background": theta[:, ndim + 1],
        "sigma": fitted_sigma,
        "error": error,
        "amplitude_error": amplitude_error,
        "ok": ok,
        "theta": theta,
        "origin": origin,
    }


def _window_scale(template: Template) -> float:
    """Fit window half-width in units of the template's s.d.: 2.5 for spots;
    2 for spheres, whose position is carried by their edge and whose windows
    would otherwise take in much of their neighbours."""
    return 1.0 if template.fit_width else 2.0 / WINDOW_SIGMAS


def _model_image(shape: Sequence[int], fit: Mapping[str, np.ndarray], template: Template) -> np.ndarray:
    """The fitted spots (without their backgrounds) rendered into a frame."""
    win = _Windows(shape, template.extent * _window_scale(template))
    if len(fit["origin"]) == 0:
        return np.zeros(shape)
    idx = win.index(fit["origin"])
    g, _, _ = template.evaluate(fit["theta"], win.offsets)
    flat = _render(int(np.prod(win.padded_shape)), idx, fit["theta"][:, len(shape) : len(shape) + 1] * g)
    inner = tuple(slice(h, h + n) for h, n in zip(win.half, shape))
    return flat.reshape(win.padded_shape)[inner]


# ---------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------
def _footprint(separation: Sequence[float]) -> np.ndarray:
    """Offsets (M, ndim) within the ellipsoid of semi-axes ``separation``."""
    half = [int(math.floor(s)) for s in separation]
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    inside = sum((g / s) ** 2 for g, s in zip(grids, separation)) <= 1.0
    return np.stack([g[inside] for g in grids], axis=1)


def _local_maxima(score: np.ndarray, separation: Sequence[float], threshold: float) -> np.ndarray:
    """Integer positions (N, ndim) of the local maxima of ``score`` at or
    above ``threshold``: no other pixel within the ellipsoid of semi-axes
    ``separation`` is higher (raster order; the frame's edge clips it)."""
    offsets = _footprint(separation)
    above = np.flatnonzero(score.ravel() >= threshold)
    if len(above) > 0.02 * score.size:  # many candidates: one maximum filter over the frame
        half = offsets.max(axis=0)
        mask = np.zeros(tuple(2 * half + 1), bool)
        mask[tuple((offsets + half).T)] = True
        peaks = ndimage.maximum_filter(score, footprint=mask, mode="nearest")
        return np.argwhere((score >= threshold) & (score == peaks))
    coords = np.stack(np.unravel_index(above, score.shape), axis=1)
    if len(coords) == 0:
        return coords
    values = score.ravel()[above]
    upper = np.asarray(score.shape) - 1
    # first against the nearest neighbours (cheap, removes most), then the whole ellipsoid
    near = offsets[np.abs(offsets).max(axis=1) <= 1]
    for ring in (near, offsets):
        neighbours = np.clip(coords[:, None, :] + ring[None], 0, upper)
        best = score[tuple(neighbours[..., i] for i in range(score.ndim))].max(axis=1)
        coords, values = coords[best <= values], values[best <= values]
    return coords


def _far_from(candidates: np.ndarray, known: np.ndarray, separation: Sequence[float]) -> np.ndarray:
    """Which candidates lie farther than ``separation`` (an ellipsoid) from every known position."""
    if len(known) == 0 or len(candidates) == 0:
        return np.ones(len(candidates), bool)
    sep = np.asarray(separation, dtype=np.float64)
    dist, _ = cKDTree(known / sep).query(candidates / sep)
    return dist >= 1.0


def _merge_duplicates(fit: dict, separation: Sequence[float], keep: np.ndarray) -> np.ndarray:
    """Drop the weaker of two detections closer than half the separation."""
    sep = 0.5 * np.asarray(separation, dtype=np.float64)
    where = np.flatnonzero(keep)
    if len(where) < 2:
        return keep
    pairs = cKDTree(fit["centre"][where] / sep).query_pairs(1.0, output_type="ndarray")
    keep = keep.copy()
    amp = fit["amplitude"]
    for a, b in pairs[np.argsort(-np.maximum(amp[where[pairs[:, 0]]], amp[where[pairs[:, 1]]]))] if len(pairs) else []:
        i, j = where[a], where[b]
        if keep[i] and keep[j]:
            keep[j if amp[i] >= amp[j] else i] = False
    return keep


def _start(response: np.ndarray, peaks: np.ndarray, gain: float, background: np.ndarray) -> np.ndarray:
    """Starting fit parameters at integer maxima of the filtered image: a
    parabola through each maximum and its neighbours per axis for the
    sub-pixel offset, the filtered peak for the amplitude."""
    ndim = response.ndim
    theta = np.zeros((len(peaks), ndim + 3))
    if len(peaks) == 0:
        return theta
    centre = response[tuple(peaks.T)]
    for axis in range(ndim):
        lo, hi = peaks.copy(), peaks.copy()
        lo[:, axis] = np.maximum(lo[:, axis] - 1, 0)
        hi[:, axis] = np.minimum(hi[:, axis] + 1, response.shape[axis] - 1)
        f_lo, f_hi = response[tuple(lo.T)], response[tuple(hi.T)]
        curvature = f_lo - 2 * centre + f_hi
        with np.errstate(divide="ignore", invalid="ignore"):
            offset = np.where(curvature < 0, 0.5 * (f_lo - f_hi) / curvature, 0.0)
        theta[:, axis] = np.clip(np.nan_to_num(offset), -0.5, 0.5)
    theta[:, ndim] = np.maximum(gain * centre, 1e-6)
    theta[:, ndim + 1] = background
    return theta


def detect(image: np.ndarray, *, diameter: Any, invert: bool = False, **matched: Any) -> pd.DataFrame:
    """Detect and fit spots in one frame; the fitted parameters and scores.

    Parameters
    ----------
    image : ndarray (y, x) or (z, y, x)
        One frame, any real dtype.
    diameter : odd int or sequence of odd ints
        Feature extent in pixels (per axis allowed).
    invert : bool
        Dark spots on a bright background.
    **matched
        Keys of ``locate.matched`` (``false_rate``, ``threshold``, ``sigma``,
        ``background_scale``, ``separation``, ``residual_rounds``).

    Returns
    -------
    DataFrame
        One row per detection: positions ``[z,] y, x`` (pixels),
        ``amplitude`` and ``background`` (image units), ``sigma_<axis>``
        (fitted s.d.s, pixels), ``error_<axis>`` (standard errors of the
        position, pixels), ``fit_ok``, ``score`` (the filtered image's
        maximum in units of its noise s.d.; the detection statistic) and
        ``round`` (0: first pass, k: k-th residual round); plus the
        threshold used and the noise estimate in ``DataFrame.attrs``
        (``threshold``, ``noise_sd``).
    """
    frame = np.asarray(image)
    ndim = frame.ndim
    opts = matched_options(diameter, ndim, matched)
    work = frame.astype(np.float32)
    if invert:
        work = np.float32(work.max()) - work
    sigma, sep = opts["sigma"], opts["separation"]
    noise = noise_sd(work)
    if opts["threshold"] is not None:
        u = float(opts["threshold"])
    else:
        u = threshold_for_false_rate(float(opts["false_rate"]), tuple(work.shape), tuple(sigma),
                                     float(opts["background_scale"]))
    axes = list(_AXES[-ndim:])
    columns = [*axes, "amplitude", "background", *(f"sigma_{a}" for a in axes),
               *(f"error_{a}" for a in axes), "amplitude_error", "fit_ok", "score", "round"]
    if not noise > 0:  # a constant frame has no spots
        out = pd.DataFrame({c: pd.Series(dtype=bool if c == "fit_ok" else "int64" if c == "round" else float)
                            for c in columns})
        out.attrs.update(threshold=u, noise_sd=noise)
        return out
    response, background = matched_filter(work, sigma, float(opts["background_scale"]))
    unit = noise * noise_gain(tuple(work.shape), tuple(sigma), float(opts["background_scale"]))
    score = response / unit
    peaks = _local_maxima(score, sep, u)
    scores = score[tuple(peaks.T)]
    rounds = np.zeros(len(peaks), dtype=np.int64)
    template = _template(opts)
    gain = 1.0 / template.filtered_peak(sigma)  # response at a spot's centre per unit A
    radius = opts["radius"]
    bg = background[tuple(peaks.T)] if np.ndim(background) else np.full(len(peaks), float(background))
    # with volume_fit the window fits are only its start: one joint sweep does
    # (measured on the benchmark's dense volumes: the same AP, 15 % faster)
    sweeps = JOINT_SWEEPS if opts["volume_fit"] is None else 1
    fit = fit_spots(work, peaks, sigma, radius=radius, theta=_start(response, peaks, gain, bg), sweeps=sweeps)
    exclusion = RESIDUAL_EXCLUSION if opts["volume_fit"] is None else VOLUME_FIT_RESIDUAL_EXCLUSION
    keep = np.ones(len(peaks), bool)
    for k in range(1, opts["residual_rounds"] + 1):
        if len(peaks) == 0:
            break
        keep = (fit["amplitude"] > 0) & fit["ok"]
        keep = _merge_duplicates(fit, sep, keep)
        kept = {key: value[keep] for key, value in fit.items()}
        residual = work - _model_image(work.shape, kept, template).astype(np.float32)
        r_response, r_background = matched_filter(residual, sigma, float(opts["background_scale"]))
        r_score = r_response / unit
        new = _local_maxima(r_score, sep, u)
        # a touching neighbour sits two radii (2 x separation) away; what rises in the residual
        # within 1.5 separations of a fitted spot is that fit's misfit, not another particle
        new = new[_far_from(new, kept["centre"], [exclusion * v for v in sep])]
        if len(new) == 0:
            break
        r_bg = r_background[tuple(new.T)] if np.ndim(r_background) else np.full(len(new), float(r_background))
        start = _start(r_response, new, gain, r_bg)
        theta = np.concatenate([kept["theta"], start])
        origin = np.concatenate([kept["origin"], new])
        peaks = np.concatenate([peaks[keep], new])
        scores = np.concatenate([scores[keep], r_score[tuple(new.T)]])
        rounds = np.concatenate([rounds[keep], np.full(len(new), k, dtype=np.int64)])
        fit = fit_spots(work, origin, sigma, radius=radius, theta=theta, sweeps=sweeps)
    keep = (fit["amplitude"] > 0) & np.isfinite(fit["amplitude"])
    if opts["residual_rounds"]:
        keep = _merge_duplicates(fit, sep, keep & fit["ok"]) | (keep & ~fit["ok"])
    out = {axis: fit["centre"][keep, i] for i, axis in enumerate(axes)}
    out["amplitude"] = fit["amplitude"][keep]
    out["background"] = fit["background"][keep]
    for i, axis in enumerate(axes):
        out[f"sigma_{axis}"] = fit["sigma"][keep, i]
    for i, axis in enumerate(axes):
        out[f"error_{axis}"] = fit["error"][keep, i] * noise
    out["amplitude_error"] = fit["amplitude_error"][keep] * noise
    out["fit_ok"] = fit["ok"][keep]
    out["score"] = scores[keep].astype(np.float64)
    out["round"] = rounds[keep]
    table = pd.DataFrame(out, columns=columns)
    if opts["volume_fit"] is not None and len(table):
        table = _volume_refit(work, table, opts, unit, u, noise)
    table.attrs.update(threshold=u, noise_sd=noise)
    return table


def _volume_refit(work: np.ndarray, table: pd.DataFrame, opts: Mapping[str, Any], unit: np.ndarray,
                  u: float, noise: float) -> pd.DataFrame:
    """``volume_fit``: every detection refitted at once as a blurred ball
    (:func:`~pipeline.locate.spheres.fit_spheres`), faint and duplicate fits
    dropped; then, in the residual of the whole model, the maxima the window
    rounds missed and the spheres just beyond the frame's faces
    (:func:`_face_candidates`), all refitted together and pruned again.

    A sphere centred outside the frame is fitted (its light reaches in, and
    unmodelled it pulls its neighbours at the face outwards) but not
    reported. The positions are the whole-frame fit's; the other columns
    stay the window fits' (a new detection gets a window fit of its own, on
    the frame less the other spheres)."""
    ndim = work.ndim
    axes = list(_AXES[-ndim:])
    radius, psf = opts["volume_fit"]["radius"], opts["volume_fit"]["psf_sigma"]
    sigma, sep, scale = opts["sigma"], opts["separation"], float(opts["background_scale"])
    fit = spheres.fit_spheres(work, table[axes].to_numpy(dtype=np.float64), radius, psf)
    keep = spheres.prune_spheres(fit["centre"], fit["amplitude"], radius)
    table, centres = table[keep].reset_index(drop=True), fit["centre"][keep]
    model = spheres.sphere_model(work.shape, centres, fit["amplitude"][keep], 0.0, radius, psf)
    response, _ = matched_filter((work - model).astype(np.float32), sigma, scale)
    score = response / unit
    inner = _local_maxima(score, sep, u).astype(np.float64)
    inner_score = score[tuple(inner.astype(np.int64).T)] if len(inner) else np.empty(0)
    faces, face_score = _face_candidates(score, sep, 0.5 * u)
    starts = np.concatenate([inner, faces])
    far = _far_from(starts, centres, [VOLUME_FIT_RESIDUAL_EXCLUSION * v for v in sep])
    starts, start_score = starts[far], np.concatenate([inner_score, face_score])[far]
    if len(starts):
        # a warm start: the kept spheres have converged, the new ones need fewer steps than a cold start
        amplitude = np.concatenate([fit["amplitude"][keep], np.full(len(starts), np.nan)])
        fit = spheres.fit_spheres(work, np.concatenate([centres, starts]), radius, psf, amplitude=amplitude,
                                  background=fit["background"], max_iterations=spheres.MAX_ITERATIONS // 2)
        keep = spheres.prune_spheres(fit["centre"], fit["amplitude"], radius)
    else:
        fit["centre"], fit["amplitude"] = centres, fit["amplitude"][keep]
        keep = np.ones(len(centres), bool)
    upper = np.asarray(work.shape) - 0.5
    keep &= np.all((fit["centre"] >= -0.5) & (fit["centre"] <= upper), axis=1)
    old = keep[: len(table)]
    new = np.flatnonzero(keep[len(table):])
    table = table[old].reset_index(drop=True)
    if len(new):
        others = spheres.sphere_model(work.shape, fit["centre"][: len(old)][old], fit["amplitude"][: len(old)][old],
                                      0.0, radius, psf)
        origin = np.clip(np.rint(fit["centre"][len(old) + new]), 0, np.asarray(work.shape) - 1).astype(np.int64)
        own = fit_spots((work - others).astype(np.float32), origin, sigma, radius=opts["radius"])
        added = pd.DataFrame({
            **{axis: own["centre"][:, i] for i, axis in enumerate(axes)},
            "amplitude": own["amplitude"], "background": own["background"],
            **{f"sigma_{axis}": own["sigma"][:, i] for i, axis in enumerate(axes)},
            **{f"error_{axis}": own["error"][:, i] * noise for i, axis in enumerate(axes)},
            "amplitude_error": own["amplitude_error"] * noise, "fit_ok": own["ok"],
            "score": start_score[new].astype(np.float64),
            "round": np.full(len(new), int(table["round"].to_numpy().max(initial=0)) + 1, dtype=np.int64),
        }, columns=table.columns)
        table = pd.concat([table, added], ignore_index=True)
    table[axes] = fit["centre"][keep]
    return table


def _face_candidates(score: np.ndarray, separation: Sequence[float], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Starting centres for spheres just beyond the frame's faces: the maxima,
    over each face's outermost planes, of the residual's score, placed half a
    separation outside the face. The threshold is low on purpose: the fit
    and :func:`~pipeline.locate.spheres.prune_spheres` decide which are
    spheres."""
    found, values = [], []
    shape = score.shape
    for axis in range(score.ndim):
        depth = max(1, int(math.ceil(separation[axis] / 2)))
        within = [s for k, s in enumerate(separation) if k != axis]
        for side in (0, 1):
            planes = [slice(None)] * score.ndim
            planes[axis] = slice(0, depth) if side == 0 else slice(shape[axis] - depth, shape[axis])
            face = score[tuple(planes)].max(axis=axis)
            peaks = _local_maxima(face, within, threshold)
            if len(peaks) == 0:
                continue
            outside = -separation[axis] / 2 if side == 0 else shape[axis] - 1 + separation[axis] / 2
            centres = np.insert(peaks.astype(np.float64), axis, outside, axis=1)
            found.append(centres)
            values.append(face[tuple(peaks.T)])
    if not found:
        return np.empty((0, score.ndim)), np.empty(0)
    return np.concatenate(found), np.concatenate(values)


# ---------------------------------------------------------------------------
# trackpy's columns
# ---------------------------------------------------------------------------
def _feature_columns(ndim: int, diameter: Sequence[int], characterize: bool) -> list[str]:
    axes = list(_AXES[-ndim:])
    if not characterize:
        return ["frame", *axes, "mass"]
    isotropic = len(set(diameter)) == 1
    size = ["size"] if isotropic else [f"size_{a}" for a in axes]
    ep = ["ep"] if isotropic else [f"ep_{a}" for a in axes]
    return ["frame", *axes, "mass", *size, "ecc", "signal", "raw_mass", *ep]


def empty_matched(ndim: int, *, diameter: Any, characterize: bool = True) -> pd.DataFrame:
    """The zero-row table of the matched detector: trackpy's columns and dtypes."""
    diam = tuple(int(d) for d in _per_axis("diameter", diameter, ndim))
    columns = _feature_columns(ndim, diam, characterize)
    table = pd.DataFrame({"frame": pd.Series(dtype="int64")})
    for column in columns[1:]:
        table[column] = pd.Series(dtype="float64")
    return table


def _mask_sum(image: np.ndarray, centres: np.ndarray, radius: Sequence[int]) -> np.ndarray:
    """Sum of ``image`` within the ellipsoidal mask of ``radius`` around each
    rounded centre (pixels outside the frame count as 0), as trackpy's raw_mass."""
    ndim = image.ndim
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij")
    inside = sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radius)) <= 1
    offsets = np.stack([g[inside] for g in grids], axis=1)  # (M, ndim)
    coords = np.rint(centres).astype(np.int64)[:, None, :] + offsets[None]
    shape = np.asarray(image.shape)
    valid = np.all((coords >= 0) & (coords < shape), axis=2)
    clipped = np.clip(coords, 0, shape - 1)
    values = image[tuple(clipped[..., i] for i in range(ndim))]
    return np.where(valid, values, 0).sum(axis=1).astype(np.float64)


def _eccentricity(image: np.ndarray, centres: np.ndarray, background: np.ndarray, radius: int) -> np.ndarray:
    """trackpy's eccentricity (2D) of the background-subtracted image around
    each rounded centre: |Σ I e^{2iθ}| / (Σ I − I_centre)."""
    grids = np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1), indexing="ij")
    inside = grids[0] ** 2 + grids[1] ** 2 <= radius**2
    dy, dx = grids[0][inside], grids[1][inside]
    theta = np.arctan2(-dy, dx)  # trackpy's: counter-clockwise from x, y up
    cos2, sin2 = np.cos(2 * theta), np.sin(2 * theta)
    cos2[(dy == 0) & (dx == 0)] = 0
    sin2[(dy == 0) & (dx == 0)] = 0
    c = np.rint(centres).astype(np.int64)
    yy = np.clip(c[:, :1] + dy[None], 0, image.shape[0] - 1)
    xx = np.clip(c[:, 1:2] + dx[None], 0, image.shape[1] - 1)
    values = image[yy, xx] - background[:, None]
    centre = image[np.clip(c[:, 0], 0, image.shape[0] - 1), np.clip(c[:, 1], 0, image.shape[1] - 1)] - background
    mass = values.sum(axis=1)
    return np.sqrt((values * cos2).sum(axis=1) ** 2 + (values * sin2).sum(axis=1) ** 2) / (mass - centre + 1e-6)


def locate_matched(
    image: np.ndarray, *, diameter: Any, invert: bool = False, characterize: bool = True, **matched: Any
) -> pd.DataFrame:
    """Locate spots in one frame with the matched detector; trackpy's columns.

    Parameters
    ----------
    image : ndarray (y, x) or (z, y, x)
        One frame.
    diameter : odd int or sequence of odd ints
        Feature extent in pixels, per axis for anisotropic voxels
        (``[z, y, x]``); sets the default spot s.d. ((diameter − 1) / 4),
        separation ((diameter − 1) / 2) and the ``raw_mass`` mask.
    invert : bool
        Dark spots on a bright background.
    characterize : bool
        Give ``size, ecc, signal, raw_mass, ep`` (else positions and mass).
    **matched
        Keys of ``locate.matched``; see :func:`detect`.

    Returns
    -------
    DataFrame
        ``[z,] y, x, mass, size, ecc, signal, raw_mass, ep`` (module
        docstring), without ``frame``; rows in raster order of the
        detections' first-pass maxima, residual detections after them.
    """
    frame = np.asarray(image)
    found = detect(frame, diameter=diameter, invert=invert, **matched)
    diam = tuple(int(d) for d in _per_axis("diameter", diameter, frame.ndim))
    template = _template(matched_options(diameter, frame.ndim, matched))
    return feature_table(frame, found, diameter=diam, template=template, invert=invert, characterize=characterize)


def feature_table(
    image: np.ndarray,
    found: pd.DataFrame,
    *,
    diameter: Sequence[int],
    template: Template,
    invert: bool = False,
    characterize: bool = True,
) -> pd.DataFrame:
    """trackpy's columns from fitted detections (:func:`detect`'s table, or
    the learned detector's), as :func:`locate_matched` writes them.

    Parameters
    ----------
    image : ndarray
        The frame the detections were fitted on (before inversion).
    found : DataFrame
        Positions, ``amplitude``, ``background``, ``sigma_<axis>``,
        ``error_<axis>`` (:func:`detect`).
    diameter : sequence of int
        Per axis: the ``raw_mass`` mask and whether ``size``/``ep`` are per axis.
    template : Template
        The spot model fitted (its volume turns the amplitude into ``mass``).
    invert, characterize : bool
        As :func:`locate_matched`.

    Returns
    -------
    DataFrame
        ``[z,] y, x, mass, size, ecc, signal, raw_mass, ep`` (module docstring).
    """
    frame = np.asarray(image)
    ndim = frame.ndim
    diam = tuple(int(d) for d in diameter)
    columns = _feature_columns(ndim, diam, characterize)[1:]
    axes = list(_AXES[-ndim:])
    centres = found[axes].to_numpy(dtype=np.float64)
    sig = found[[f"sigma_{a}" for a in axes]].to_numpy(dtype=np.float64)
    amp = found["amplitude"].to_numpy(dtype=np.float64)
    # the fitted width factor scales every axis: the integral grows as its ndim-th power
    stretch = np.prod(sig / np.sqrt(template.moment)[None, :], axis=1) if len(found) else np.empty(0)
    out: dict[str, np.ndarray] = {axis: centres[:, i] for i, axis in enumerate(axes)}
    out["mass"] = amp * template.volume * stretch
    if characterize:
        work = frame.astype(np.float64)
        if invert:
            work = work.max() - work
        if len(set(diam)) == 1:
            out["size"] = sig.mean(axis=1) * math.sqrt(ndim)
        else:
            for i, axis in enumerate(axes):
                out[f"size_{axis}"] = sig[:, i] * math.sqrt(ndim)
        if ndim == 2 and len(found):
            out["ecc"] = _eccentricity(work, centres, found["background"].to_numpy(), int(min(diam)) // 2)
        else:
            out["ecc"] = np.full(len(found), np.nan)
        out["signal"] = amp * template.peak
        out["raw_mass"] = _mask_sum(work, centres, [d // 2 for d in diam]) if len(found) else np.empty(0)
        errors = found[[f"error_{a}" for a in axes]].to_numpy(dtype=np.float64)
        if len(set(diam)) == 1:
            out["ep"] = np.sqrt((errors**2).mean(axis=1))
        else:
            for i, axis in enumerate(axes):
                out[f"ep_{axis}"] = errors[:, i]
    table = pd.DataFrame({c: np.asarray(out[c], dtype=np.float64) for c in columns}, columns=columns)
    return table


def locate_matched_frames(
    frames: np.ndarray,
    first_frame: int = 0,
    *,
    diameter: Any,
    invert: bool = False,
    characterize: bool = True,
    **matched: Any,
) -> pd.DataFrame:
    """Locate spots in consecutive frames with the matched detector.

    Parameters
    ----------
    frames : ndarray, (t, y, x) or (t, z, y, x)
        The frames.
    first_frame : int
        Frame number of ``frames[0]``.
    diameter, invert, characterize, **matched
        As :func:`locate_matched`.

    Returns
    -------
    DataFrame
        ``frame`` first, then trackpy's columns; zero rows with the same
        columns and dtypes if nothing was found.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(
            f"locate: frames must be (t, y, x) or (t, z, y, x), got an array of shape {frames.shape}"
        )
    ndim = frames.ndim - 1
    matched_options(diameter, ndim, matched)  # errors before any work
    found = []
    for offset, image in enumerate(frames):
        table = locate_matched(image, diameter=diameter, invert=invert, characterize=characterize, **matched)
        if len(table):
            table.insert(0, "frame", np.int64(int(first_frame) + offset))
            found.append(table)
    if not found:
        return empty_matched(ndim, diameter=diameter, characterize=characterize)
    return pd.concat(found, ignore_index=True)
