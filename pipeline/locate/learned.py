"""``locate.method: learned``: a small convolutional network, trained on
trackflow's own simulator, that says where the particles are.

In the spirit of DeepTrack (Helgadottir, Argun & Volpe, Optica 6:506, 2019)
and LodeSTAR (Midtvedt et al., Nat. Commun. 13:7492, 2022): the network
never sees a hand-labelled image. It is trained on images simulated with the
run's own spot model (PSF s.d., particle radius), noise model, SNR range and
density (``locate.learned``; :mod:`pipeline.simulate.detection`), so what it
learns is the shape of a particle, how crowded they are and how faint they
get, in this run's pixels. The simulator is the ground truth (science.md §7):
it must match the data.

**Network.** A U-Net (Ronneberger, Fischer & Brox 2015) of two coarser
levels, 2D or 3D: two 3 × 3 (× 3) convolutions with ReLU per level, ``width``
channels at full resolution, twice and four times that at half and a quarter
(average pooling down, nearest-neighbour up, skip connections), a 1 × 1
convolution to one logit per pixel. Its receptive field (± ~20 pixels) takes
in a sphere and its neighbours. ``width`` 8 has ~27,000 weights in 2D. Volumes
enter it in patches of 2 × 2 × 2 voxels, as 8 channels (space-to-depth, as
in Shi et al. 2016's sub-pixel convolution, run backwards), and its last
layer gives the 8 voxels' logits: the full-resolution level then costs 8
times less, which is what makes 3D training possible on a CPU (81,000
weights).

**Input.** Each frame less its local background (the mean over ± 5 PSF
s.d.s, as the matched filter's) divided by its noise s.d. (the robust
estimate of :func:`pipeline.locate.matched.noise_sd`): the network sees
z-scores, whatever the camera's gain or offset.

**Target and loss.** A map of Gaussian bumps of s.d. 1 pixel (the maximum over
particles) at the true centres; per-pixel binary cross-entropy against it
(soft labels), the bumps' pixels weighted up so that the rare positives count
as much as the background. The sigmoid of the logit then estimates how
likely a particle centre lies at that pixel. For spheres a second head gives,
at every pixel, the offset to the nearest centre (an L1 loss on the bumps'
pixels, weighted 0.05: more takes capacity from the map). Both are
CenterNet's (Zhou, Wang & Krähenbühl 2019), with a plain cross-entropy.

**Training.** Adam (Kingma & Ba 2015; learning rate 3e-3 with a cosine decay
to 1/20), on batches simulated afresh at every step (so it cannot overfit a
training set): 16 crops of 64² pixels in 2D, 4 of 32³ in 3D (each packing
of spheres serves four samples, flipped, with fresh noise: packing is the
slow part). ``steps`` (default 1500 in 2D, 1200 in 3D) takes about two
minutes on two CPU cores in 2D and four per detector in 3D; JAX runs it on a
GPU when it has one (``pip install "jax[cuda12]"``).

**Validation and threshold.** After training, simulated validation images
(a different seed) are detected at a low threshold and matched to their
truth (within 2 PSF s.d.s, or the radius for spheres), which gives precision
and recall at every threshold: the precision-recall curve is stored with the
weights, with recall per SNR. ``precision`` picks the threshold from it (the
lowest whose detections are that precise), so it changes without retraining.

**Detection.** Local maxima of the map above the threshold, no two closer
than ``separation``. For spots, least-squares fits of the spot model start
there (:func:`pipeline.locate.matched.fit_spots`: a Gaussian of the PSF whose
width is fitted, jointly for neighbours), so the positions reach the
Cramér–Rao bound as the matched detector's; a fit that fails, or moves
farther than ``separation``, keeps the network's position. For spheres the
positions are the network's (the pixels around the maximum vote with their
offsets, :func:`network_positions`): fits of touching spheres pull on each
other; their fits give the photometry. The table has trackpy's columns, as
the matched detector writes them, plus ``score`` (the map's maximum).

This module is pure (arrays in, DataFrames out) and imports JAX only when it
trains or detects: without the extra ``trackflow[learn]``, importing it (and
the rest of trackflow) works, and ``method: learned`` fails at config
validation naming the extra.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from ..io.schema import check_section, section_defaults
from ..progress import progress
from . import matched as _matched

__all__ = [
    "LEARNED_OPTIONS",
    "TRAINING_KEYS",
    "Detector",
    "training_settings",
    "settings_hash",
    "normalize",
    "heatmap",
    "train",
    "validate",
    "validation_at",
    "detect_learned",
    "locate_learned",
    "locate_learned_frames",
]

log = logging.getLogger("trackflow.locate")

#: The keys of ``locate.learned`` with their defaults (locate.schema.yaml).
LEARNED_OPTIONS: dict[str, Any] = section_defaults("locate")["learned"]
#: The keys that set the training (a change re-trains); the others set the detection.
TRAINING_KEYS = ("psf_sigma", "radius", "snr", "density", "volume_fraction", "noise", "background", "steps",
                 "width", "seed")
#: Training recipe; a change of what the code below does with the same settings bumps it.
RECIPE = 3
CROP = {2: 64, 3: 32}
#: Volumes enter the network in patches of 2 x 2 x 2 voxels (as 8 channels; the
#: last layer gives 8 logits per patch, put back in place): the full-resolution
#: level costs 8 times less, which makes 3D training possible on a CPU. Spots
#: in 2D frames are too small for that.
PATCH = {2: 1, 3: 2}
#: Training samples drawn from one simulated volume (flipped, fresh noise).
REUSE = 4
BATCH = {2: 16, 3: 4}
DEFAULT_STEPS = {2: 1500, 3: 1200}
LEARNING_RATE = 3e-3
#: s.d. of the target's bumps, pixels, and the weight of the bumps' pixels in the loss.
TARGET_SIGMA = 1.0
POSITIVE_WEIGHT = 20.0
#: The offsets' L1 loss (spheres only): its weight, and the bump value below which a pixel has no offset to learn.
OFFSET_WEIGHT = 0.05
OFFSET_FLOOR = 0.1
#: Background box half-width of the input, in PSF s.d.s (as the matched filter's).
BACKGROUND_SCALE = 5.0
#: Validation: images and their shape (pixels per axis), and the lowest threshold scored.
VALIDATION_IMAGES = {2: 24, 3: 6}
VALIDATION_SHAPE = {2: 128, 3: 48}
VALIDATION_FLOOR = 0.02
_AXES = ("z", "y", "x")


# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------
def training_settings(diameter: Any, learned: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings a detector is trained with, resolved: what a
    ``train_detector`` job's params and the weights' hash hold.

    Parameters
    ----------
    diameter : odd int or sequence
        ``locate.diameter`` (sets the default PSF s.d., (diameter − 1) / 4).
    learned : mapping, optional
        The ``locate.learned`` section (missing keys take their defaults).

    Returns
    -------
    dict
        The keys of :data:`TRAINING_KEYS` that matter: ``density`` for spots,
        ``volume_fraction`` for spheres (the other is left out, so changing
        it re-trains nothing), ``background`` for poisson noise only;
        ``psf_sigma`` resolved; plus ``recipe``.
    """
    opts = check_section("locate", {"diameter": diameter, "learned": dict(learned or {})})["learned"]
    out = {key: opts[key] for key in TRAINING_KEYS}
    if out["psf_sigma"] is None:
        diam = diameter if isinstance(diameter, (list, tuple)) else [diameter]
        sig = [max((float(d) - 1) / 4.0, 0.5) for d in diam]
        out["psf_sigma"] = sig if isinstance(diameter, (list, tuple)) else sig[0]
    spheres = np.any(np.asarray(out["radius"], dtype=float) > 0)
    out.pop("density" if spheres else "volume_fraction")
    if out["noise"] != "poisson":
        out.pop("background")
    out["recipe"] = RECIPE
    return json.loads(json.dumps(out))


def settings_hash(settings: Mapping[str, Any], ndim: int) -> str:
    """SHA-256 (hex) of the training settings and the frames' dimensionality."""
    text = json.dumps({"ndim": int(ndim), **dict(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _per_axis(value: Any, ndim: int) -> tuple[float, ...]:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        return (float(arr),) * ndim
    if arr.shape != (ndim,):
        raise ValueError(f"locate.learned: {value!r} needs one value per spatial axis ({ndim}) or a single value")
    return tuple(float(v) for v in arr)


# ---------------------------------------------------------------------------
# the network (JAX)
# ---------------------------------------------------------------------------
def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:  # pragma: no cover - the schema says so first
        raise ImportError(
            "locate.method learned needs the optional extra trackflow[learn]: pip install 'trackflow[learn]'"
        ) from exc
    return jax, jnp


def _layer_shapes(ndim: int, width: int) -> list[tuple[int, ...]]:
    """Kernel shapes, in order: encoder 0, 1, 2 (two each), decoder 1, 0, head."""
    k = (3,) * ndim
    c1, c2, c3 = width, 2 * width, 4 * width
    cells = PATCH[ndim] ** ndim
    return [
        (*k, cells, c1), (*k, c1, c1),
        (*k, c1, c2), (*k, c2, c2),
        (*k, c2, c3), (*k, c3, c3),
        (*k, c3 + c2, c2),
        (*k, c2 + c1, c1),
        ((1,) * ndim + (c1, cells * (1 + ndim))),
    ]


def init_params(ndim: int, width: int, seed: int) -> list[np.ndarray]:
    """He-initialised weights (Kaiming He et al. 2015) and zero biases, as
    ``[w0, b0, w1, b1, ...]`` (numpy, float32)."""
    rng = np.random.default_rng(seed)
    params = []
    for shape in _layer_shapes(ndim, width):
        fan_in = int(np.prod(shape[:-1]))
        params.append((rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32))
        params.append(np.zeros(shape[-1], np.float32))
    # the head starts at the prior of a rare positive (focal-loss practice, Lin et al. 2017),
    # and its offsets near zero
    cells = PATCH[ndim] ** ndim
    params[-1][:cells] = -4.0
    params[-2][..., cells:] *= 0.1
    return params


def _space_to_depth(x, patch: int, ndim: int):
    """(N, *spatial) -> (N, *spatial / patch, patch**ndim): each patch's pixels as channels."""
    if patch == 1:
        return x[..., None]
    n, *space = x.shape
    shape = [n]
    for size in space:
        shape += [size // patch, patch]
    x = x.reshape(shape)
    order = [0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2)]
    return x.transpose(order).reshape(n, *(size // patch for size in space), patch**ndim)


def _depth_to_space(y, patch: int, ndim: int):
    """The inverse of :func:`_space_to_depth`: (N, *coarse, patch**ndim) -> (N, *coarse * patch)."""
    if patch == 1:
        return y[..., 0]
    n, *coarse, _ = y.shape
    y = y.reshape(n, *coarse, *(patch,) * ndim)
    order = [0]
    for axis in range(ndim):
        order += [1 + axis, 1 + ndim + axis]
    return y.transpose(order).reshape(n, *(size * patch for size in coarse))


def _forward(params, x, ndim: int):
    """Logits (N, *spatial) and sub-pixel offsets (N, *spatial, ndim) of the
    U-Net for input (N, *spatial), spatial sizes divisible by 4 × :data:`PATCH`."""
    jax, jnp = _jax()
    from jax import lax

    spec = ("NHWC", "HWIO", "NHWC") if ndim == 2 else ("NDHWC", "DHWIO", "NDHWC")

    def conv(h, i):
        w, b = params[2 * i], params[2 * i + 1]
        return lax.conv_general_dilated(h, w, (1,) * ndim, "SAME", dimension_numbers=spec) + b

    def pool(h):
        n, *space, c = h.shape
        shape = [n]
        for s in space:
            shape += [s // 2, 2]
        h = h.reshape(*shape, c)
        return h.mean(axis=tuple(range(2, 2 + 2 * ndim, 2)))

    def up(h):
        for axis in range(1, 1 + ndim):
            h = jnp.repeat(h, 2, axis=axis)
        return h

    relu = jax.nn.relu
    patch = PATCH[ndim]
    h = _space_to_depth(x, patch, ndim)
    e0 = relu(conv(relu(conv(h, 0)), 1))
    e1 = relu(conv(relu(conv(pool(e0), 2)), 3))
    e2 = relu(conv(relu(conv(pool(e1), 4)), 5))
    d1 = relu(conv(jnp.concatenate([up(e2), e1], axis=-1), 6))
    d0 = relu(conv(jnp.concatenate([up(d1), e0], axis=-1), 7))
    head = conv(d0, 8)
    head = head.reshape(*head.shape[:-1], 1 + ndim, patch**ndim)
    maps = [_depth_to_space(head[..., k, :], patch, ndim) for k in range(1 + ndim)]
    return maps[0], jnp.stack(maps[1:], axis=-1)


@lru_cache(maxsize=4)
def _compiled_forward(ndim: int):
    jax, _ = _jax()

    def forward(params, x):
        logits, offsets = _forward(params, x, ndim)
        return jax.nn.sigmoid(logits), offsets

    return jax.jit(forward)


def normalize(image: np.ndarray, psf_sigma: Sequence[float]) -> np.ndarray:
    """The network's input: the frame less its local background (the mean
    over ± 5 PSF s.d.s per axis), over its robust noise s.d.; float32."""
    work = np.asarray(image, dtype=np.float32)
    background = _matched._background(work, psf_sigma, BACKGROUND_SCALE)
    noise = _matched.noise_sd(work)
    return ((work - background) / np.float32(noise if noise > 0 else 1.0)).astype(np.float32)


def _pad4(x: np.ndarray, ndim: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Reflect-pad the spatial axes (the last ``ndim``) to multiples of 4 × :data:`PATCH`."""
    unit = 4 * PATCH[ndim]
    pads = [(0, 0)] * (x.ndim - ndim) + [(0, (-n) % unit) for n in x.shape[-ndim:]]
    crop = tuple(slice(0, n) for n in x.shape)
    return (np.pad(x, pads, mode="reflect") if any(p[1] for p in pads) else x), crop


# ---------------------------------------------------------------------------
# the detector: weights, settings, validation
# ---------------------------------------------------------------------------
@dataclass
class Detector:
    """A trained detector: the weights, what they were trained with, and how
    they did on simulated validation images.

    Attributes
    ----------
    params : list of ndarray
        ``[w0, b0, w1, b1, ...]`` of the U-Net.
    ndim : int
        2 (frames) or 3 (volumes).
    settings : dict
        :func:`training_settings`.
    validation : dict
        ``threshold``, ``precision`` and ``recall`` (lists: the
        precision-recall curve over thresholds), ``recall_by_snr``,
        ``n_truth``, and the figures at the default precision.
    provenance : dict
        Hash of the settings, seconds and steps of the training, the final
        loss, versions, device.
    """

    params: list
    ndim: int
    settings: dict
    validation: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def psf_sigma(self) -> tuple[float, ...]:
        return _per_axis(self.settings["psf_sigma"], self.ndim)

    @property
    def radius(self) -> tuple[float, ...]:
        return _per_axis(self.settings["radius"], self.ndim)

    def threshold_for(self, precision: float) -> float:
        """The lowest threshold of the validation curve whose detections
        reach ``precision`` (the best recall there); the highest threshold
        measured if none does."""
        curve = self.validation
        thresholds = np.asarray(curve["threshold"], dtype=float)
        ok = np.asarray(curve["precision"], dtype=float) >= precision
        if not ok.any():
            log.warning("learned detector: no threshold reaches precision %.3f on the validation images; "
                        "using the highest measured", precision)
            return float(thresholds.max())
        recall = np.asarray(curve["recall"], dtype=float)
        best = np.flatnonzero(ok)[np.argmax(recall[ok])]
        return float(thresholds[best])

    def meta(self) -> dict:
        return {"ndim": self.ndim, "settings": self.settings, "validation": self.validation,
                "provenance": self.provenance}

    def save(self, weights: str | Path, provenance: str | Path | None = None) -> None:
        """Write the weights (``.npz``: the arrays and, as ``meta``, this
        detector's settings, validation and provenance as JSON) and, if
        given, the same JSON alone, readable. Atomic per file."""
        from ..io.files import atomic_path

        arrays = {f"p{i:02d}": np.asarray(p, dtype=np.float32) for i, p in enumerate(self.params)}
        text = json.dumps(self.meta(), indent=1, sort_keys=True, default=_json_default)
        weights = Path(weights)
        weights.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(weights) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, meta=np.array(text), **arrays)
        if provenance is not None:
            with atomic_path(provenance) as tmp:
                Path(tmp).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def load(cls, weights: str | Path) -> "Detector":
        """Read what :meth:`save` wrote (a detector directory or its ``weights.npz``)."""
        weights = Path(weights)
        if weights.is_dir():
            weights = weights / "weights.npz"
        with np.load(weights, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            params = [data[k] for k in sorted(k for k in data.files if k.startswith("p"))]
        recipe = meta.get("settings", {}).get("recipe")
        if recipe != RECIPE:
            raise ValueError(f"{weights}: a detector of training recipe {recipe}; this trackflow's is {RECIPE} "
                             "(train it again: the workflow does so by itself, as the recipe is a training setting)")
        return cls(params, int(meta["ndim"]), meta["settings"], meta.get("validation", {}), meta.get("provenance", {}))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def heatmap(detector: Detector, images: np.ndarray, *, batch: int | None = None, offsets: bool = False):
    """The network's map (0-1) for one frame or a stack of frames.

    Parameters
    ----------
    detector : Detector
    images : ndarray, (*spatial) or (n, *spatial)
        Raw frames (any real dtype); normalised here (:func:`normalize`).
    batch : int, optional
        Frames per call of the network (default: 8 in 2D, 1 in 3D).
    offsets : bool
        Also return the predicted offsets from each pixel to the nearest
        particle centre, pixels (shape of ``images`` + (ndim,)).

    Returns
    -------
    ndarray (float32), the shape of ``images`` (and the offsets)
    """
    _, jnp = _jax()
    ndim = detector.ndim
    images = np.asarray(images)
    single = images.ndim == ndim
    stack = images[None] if single else images
    if stack.ndim != ndim + 1:
        raise ValueError(f"learned detector ({ndim}D): expected frames of {ndim} dimensions, got {images.shape}")
    x = np.stack([normalize(im, detector.psf_sigma) for im in stack])
    x, crop = _pad4(x, ndim)
    forward = _compiled_forward(ndim)
    params = [jnp.asarray(p) for p in detector.params]
    step = batch or (8 if ndim == 2 else 1)
    maps, shifts = [], []
    for i in range(0, len(x), step):
        prob, off = forward(params, jnp.asarray(x[i : i + step]))
        maps.append(np.asarray(prob))
        shifts.append(np.asarray(off))
    prob = np.concatenate(maps)[crop]
    off = np.concatenate(shifts)[crop]
    if single:
        prob, off = prob[0], off[0]
    return (prob, off) if offsets else prob


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
def _target(shape: Sequence[int], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian bumps (s.d. :data:`TARGET_SIGMA`, peak 1 at the true centre,
    the maximum over particles) on the pixel grid, and at each pixel of a
    bump the offset to that particle's centre (pixels, (*shape, ndim))."""
    ndim = len(shape)
    target = np.zeros(tuple(shape), np.float32)
    offsets = np.zeros(tuple(shape) + (ndim,), np.float32)
    if len(positions) == 0:
        return target, offsets
    half = int(math.ceil(3 * TARGET_SIGMA))
    grid = np.stack(np.meshgrid(*[np.arange(-half, half + 1)] * ndim, indexing="ij"), axis=-1).reshape(-1, ndim)
    pix = np.rint(positions).astype(np.int64)[:, None, :] + grid[None]
    delta = positions[:, None, :] - pix
    value = np.exp(-0.5 * (delta**2).sum(axis=2) / TARGET_SIGMA**2)
    inside = np.all((pix >= 0) & (pix < np.asarray(shape)), axis=2)
    flat = np.ravel_multi_index(tuple(pix[inside].T), tuple(shape))
    value, delta = value[inside], delta[inside]
    # where bumps overlap, the nearest particle's (the largest value) wins
    order = np.lexsort((-value, flat))
    first = order[np.unique(flat[order], return_index=True)[1]]
    target.reshape(-1)[flat[first]] = value[first]
    offsets.reshape(-1, ndim)[flat[first]] = delta[first]
    return target, offsets


def _simulate(rng: np.random.Generator, settings: Mapping[str, Any], ndim: int, shape: Sequence[int],
              noise: str | None = None):
    from ..simulate.detection import detection_image

    kwargs = {"sigma": _per_axis(settings["psf_sigma"], ndim), "radius": _per_axis(settings["radius"], ndim),
              "snr": settings["snr"], "noise": noise or settings["noise"],
              "background": settings.get("background", 100.0)}
    if "density" in settings:
        kwargs["density"] = settings["density"]
    else:
        kwargs["volume_fraction"] = settings["volume_fraction"]
    return detection_image(rng, shape, **kwargs)


def _batch(rng, settings, ndim, scenes: list | None = None):
    """One batch of normalised images and their targets. Volumes are slow to
    simulate (the packing): each scene (noise-free) serves :data:`REUSE`
    samples, flipped along random axes, with fresh noise each time."""
    from ..simulate.detection import add_noise

    size = CROP[ndim]
    images, targets = [], []
    for _ in range(BATCH[ndim]):
        if ndim == 3 and scenes is not None:
            if not scenes or scenes[0][2] <= 0:
                clean, pos, _ = _simulate(rng, settings, ndim, (size,) * ndim, noise="none")
                background = float(settings.get("background", 100.0))
                scenes[:] = [[clean - np.float32(background), pos, REUSE]]
            clean, pos, left = scenes[0]
            scenes[0][2] = left - 1
            flip = rng.random(ndim) < 0.5
            axes = tuple(np.flatnonzero(flip))
            clean = np.flip(clean, axis=axes) if axes else clean
            pos = np.where(flip, size - 1 - pos, pos)
            image = add_noise(clean, rng, settings["noise"], float(settings.get("background", 100.0)))
        else:
            image, pos, _ = _simulate(rng, settings, ndim, (size,) * ndim)
        images.append(normalize(image, _per_axis(settings["psf_sigma"], ndim)))
        targets.append(_target(image.shape, pos))
    return np.stack(images), np.stack([t for t, _ in targets]), np.stack([o for _, o in targets])


def train(
    settings: Mapping[str, Any],
    ndim: int,
    *,
    steps: int | None = None,
    validate_after: bool = True,
    label: str = "train_detector",
) -> Detector:
    """Train a detector on images simulated with ``settings``.

    Parameters
    ----------
    settings : mapping
        :func:`training_settings` (``steps`` there is used unless ``steps`` is given).
    ndim : int
        2 or 3.
    steps : int, optional
        Override the number of steps (tests).
    validate_after : bool
        Measure the precision-recall curve on validation images (:func:`validate`).
    label : str
        The progress reporter's label (:func:`pipeline.progress.progress`, in steps).

    Returns
    -------
    Detector
    """
    jax, jnp = _jax()
    if ndim not in (2, 3):
        raise ValueError(f"learned detector: frames must be 2D or 3D, got {ndim} dimensions")
    settings = dict(settings)
    n_steps = int(steps or settings.get("steps") or DEFAULT_STEPS[ndim])
    seed = int(settings.get("seed", 0))
    rng = np.random.default_rng([seed, 1])
    params = [jnp.asarray(p) for p in init_params(ndim, int(settings["width"]), seed)]

    spheres = bool(np.any(np.asarray(settings["radius"], dtype=float) > 0))
    offset_weight = OFFSET_WEIGHT if spheres else 0.0

    def loss_fn(p, x, y, o):
        logits, offsets = _forward(p, x, ndim)
        weight = 1.0 + POSITIVE_WEIGHT * y
        bce = jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        near = jnp.where(y > OFFSET_FLOOR, y, 0.0)
        l1 = jnp.sum(near * jnp.abs(offsets - o).sum(axis=-1)) / jnp.maximum(jnp.sum(near), 1.0)
        return jnp.sum(weight * bce) / jnp.sum(weight) + offset_weight * l1

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    @jax.jit
    def update(p, m, v, t, x, y, o):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y, o)
        lr = LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1 + jnp.cos(jnp.pi * t / n_steps)))
        m = [beta1 * a + (1 - beta1) * g for a, g in zip(m, grads)]
        v = [beta2 * a + (1 - beta2) * g * g for a, g in zip(v, grads)]
        t1 = t + 1
        p = [w - lr * (a / (1 - beta1**t1)) / (jnp.sqrt(b / (1 - beta2**t1)) + eps) for w, a, b in zip(p, m, v)]
        return p, m, v, loss

    m = [jnp.zeros_like(p) for p in params]
    v = [jnp.zeros_like(p) for p in params]
    started = time.perf_counter()
    losses = []
    scenes: list = []
    x, y, o = _batch(rng, settings, ndim, scenes)
    with progress(label, total=n_steps, unit="steps") as advance:
        for t in range(n_steps):
            params, m, v, loss = update(params, m, v, jnp.float32(t), jnp.asarray(x), jnp.asarray(y), jnp.asarray(o))
            # the next batch is simulated while the step runs (JAX dispatches asynchronously);
            # waiting for the step before keeps at most two in flight (and their batches in memory)
            x, y, o = _batch(rng, settings, ndim, scenes)
            losses.append(loss)
            if t >= 1:
                losses[t - 1].block_until_ready()
            advance(1)
    losses = [float(value) for value in losses]
    seconds = time.perf_counter() - started
    detector = Detector([np.asarray(p) for p in params], ndim, settings)
    detector.provenance = {
        "settings_sha256": settings_hash(settings, ndim),
        "steps": n_steps,
        "batch": BATCH[ndim],
        "crop": CROP[ndim],
        "training_seconds": round(seconds, 2),
        "loss_first": round(float(np.mean(losses[: max(1, n_steps // 20)])), 5),
        "loss_last": round(float(np.mean(losses[-max(1, n_steps // 20) :])), 5),
        "device": str(jax.devices()[0]),
        "jax_version": jax.__version__,
    }
    log.info("learned detector: %d steps in %.1f s on %s, loss %.4f -> %.4f", n_steps, seconds,
             detector.provenance["device"], detector.provenance["loss_first"], detector.provenance["loss_last"])
    if validate_after:
        detector.validation = validate(detector)
    return detector


# ---------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------
def _separation(detector: Detector, diameter: Any, separation: Any) -> tuple[float, ...]:
    if separation is not None:
        return _per_axis(separation, detector.ndim)
    diam = _per_axis(diameter, detector.ndim)
    return tuple(max((d - 1) / 2.0, 1.0) for d in diam)


def _default_diameter(detector: Detector) -> tuple[int, ...]:
    """An odd diameter from the spot model: 4 PSF s.d.s + 1, or the sphere's."""
    out = []
    for s, r in zip(detector.psf_sigma, detector.radius):
        d = int(math.ceil(2 * r + 1)) if r > 0 else int(math.ceil(4 * s + 1))
        out.append(d + 1 - d % 2)
    return tuple(out)


def detect_learned(
    image: np.ndarray,
    detector: Detector,
    *,
    threshold: float,
    separation: Sequence[float],
    invert: bool = False,
    probability: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
) -> pd.DataFrame:
    """Detect and fit particles in one frame; the fitted parameters and scores.

    Parameters
    ----------
    image : ndarray (y, x) or (z, y, x)
    detector : Detector
    threshold : float
        On the network's map (0-1).
    separation : sequence of float
        Smallest distance between detections per axis, pixels.
    invert : bool
        Dark particles on a bright background.
    probability, offsets : ndarray, optional
        The map and the offsets, if already computed (:func:`heatmap`, on
        the inverted frame).

    Returns
    -------
    DataFrame
        As :func:`pipeline.locate.matched.detect`: positions (spots: the
        least-squares fits; spheres: the network's, :func:`network_positions`,
        as fits of touching spheres pull each other), ``amplitude``,
        ``background``, ``sigma_<axis>``, ``error_<axis>``,
        ``amplitude_error``, ``fit_ok``, ``score`` (the map's maximum) and
        ``round`` (0); the noise estimate in ``attrs``.
    """
    frame = np.asarray(image)
    work = frame.astype(np.float32)
    if invert:
        work = np.float32(work.max()) - work
    ndim = work.ndim
    if ndim != detector.ndim:
        raise ValueError(f"the learned detector was trained on {detector.ndim}D frames; this frame is {ndim}D "
                         "(train it again for these frames)")
    if probability is None or offsets is None:
        probability, offsets = heatmap(detector, work, offsets=True)
    noise = _matched.noise_sd(work)
    peaks = _matched._local_maxima(probability, separation, threshold)
    scores = probability[tuple(peaks.T)].astype(np.float64)
    spheres = max(detector.radius) > 0
    # spots: the offsets are not trained (the fits do better), so a failed fit keeps the map's centroid
    voted = network_positions(probability, offsets if spheres else np.zeros_like(offsets), peaks)
    fit = _matched.fit_spots(work, peaks, detector.psf_sigma, radius=detector.radius)
    ok = fit["ok"] & (fit["amplitude"] > 0) & np.isfinite(fit["amplitude"])
    # a fit that wandered off its maximum (onto a neighbour) keeps the network's position
    moved = np.any(np.abs(fit["centre"] - peaks) > np.asarray(separation), axis=1)
    ok &= ~moved
    centre = voted if spheres else np.where(ok[:, None], fit["centre"], voted)
    axes = list(_AXES[-ndim:])
    out: dict[str, Any] = {axis: centre[:, i] for i, axis in enumerate(axes)}
    out["amplitude"] = np.where(ok, fit["amplitude"], np.nan)
    out["background"] = fit["background"]
    for i, axis in enumerate(axes):
        out[f"sigma_{axis}"] = fit["sigma"][:, i]
    for i, axis in enumerate(axes):
        out[f"error_{axis}"] = fit["error"][:, i] * noise
    out["amplitude_error"] = fit["amplitude_error"] * noise
    out["fit_ok"] = ok
    out["score"] = scores
    out["round"] = np.zeros(len(peaks), dtype=np.int64)
    table = pd.DataFrame(out)
    table.attrs.update(threshold=float(threshold), noise_sd=noise)
    return table


def network_positions(probability: np.ndarray, offsets: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Sub-pixel positions from the network: each pixel within ± 1 of a
    maximum votes for its own position plus its predicted offset, weighted
    by its map value (the frame's edge clips the neighbourhood)."""
    if len(peaks) == 0:
        return np.empty((0, probability.ndim))
    ndim = probability.ndim
    grid = np.stack(np.meshgrid(*[np.arange(-1, 2)] * ndim, indexing="ij"), axis=-1).reshape(-1, ndim)
    pix = peaks[:, None, :] + grid[None]
    inside = np.all((pix >= 0) & (pix < np.asarray(probability.shape)), axis=2)
    index = tuple(np.clip(pix, 0, np.asarray(probability.shape) - 1)[..., i] for i in range(ndim))
    weight = np.where(inside, probability[index], 0.0).astype(np.float64)
    votes = pix + offsets[index].astype(np.float64)
    return (weight[..., None] * votes).sum(axis=1) / np.maximum(weight.sum(axis=1), 1e-12)[:, None]


def _resolve(detector: Detector, diameter: Any, learned: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = {**LEARNED_OPTIONS, **dict(learned or {})}
    threshold = opts["threshold"] if opts["threshold"] is not None else detector.threshold_for(float(opts["precision"]))
    diameter = diameter if diameter is not None else _default_diameter(detector)
    return {"threshold": float(threshold), "separation": _separation(detector, diameter, opts["separation"]),
            "diameter": tuple(int(d) for d in _per_axis(diameter, detector.ndim))}


def locate_learned(
    image: np.ndarray,
    detector: Detector,
    *,
    diameter: Any = None,
    invert: bool = False,
    characterize: bool = True,
    probability: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
    **learned: Any,
) -> pd.DataFrame:
    """Locate particles in one frame with a trained detector; trackpy's columns.

    Parameters
    ----------
    image : ndarray (y, x) or (z, y, x)
    detector : Detector
    diameter : odd int or sequence, optional
        ``locate.diameter``: the default ``separation`` and the ``raw_mass``
        mask (default: from the detector's spot model).
    invert, characterize : bool
        As :func:`pipeline.locate.matched.locate_matched`.
    probability, offsets : ndarray, optional
        The network's map and offsets of this frame, if computed already.
    **learned
        The detection keys of ``locate.learned``: ``precision``,
        ``threshold``, ``separation`` (the training keys are the detector's).

    Returns
    -------
    DataFrame
        ``[z,] y, x, mass, size, ecc, signal, raw_mass, ep`` (as the
        matched detector), without ``frame``, plus ``score`` (the map's value).
    """
    opts = _resolve(detector, diameter, learned)
    found = detect_learned(image, detector, threshold=opts["threshold"], separation=opts["separation"],
                           invert=invert, probability=probability, offsets=offsets)
    template = _matched._cached_template(detector.psf_sigma, detector.radius)
    table = _matched.feature_table(image, found, diameter=opts["diameter"], template=template, invert=invert,
                                   characterize=characterize)
    table["score"] = found["score"].to_numpy()
    return table


def locate_learned_frames(
    frames: np.ndarray,
    first_frame: int = 0,
    *,
    detector: Detector,
    diameter: Any = None,
    invert: bool = False,
    characterize: bool = True,
    dropped: Sequence[int] = (),
    **learned: Any,
) -> pd.DataFrame:
    """Locate particles in consecutive frames (the network runs on them in
    batches); ``frame`` first, then :func:`locate_learned`'s columns.
    Frames numbered in ``dropped`` are skipped."""
    frames = np.asarray(frames)
    ndim = frames.ndim - 1
    if ndim != detector.ndim:
        raise ValueError(f"the learned detector was trained on {detector.ndim}D frames; these are {ndim}D "
                         "(train it again for these frames)")
    numbers = np.arange(first_frame, first_frame + len(frames))
    keep = ~np.isin(numbers, np.asarray(list(dropped), dtype=np.int64))
    numbers, frames = numbers[keep], frames[keep]
    work = frames.astype(np.float32)
    if invert:
        work = work.max(axis=tuple(range(1, work.ndim)), keepdims=True) - work
    maps, shifts = heatmap(detector, work, offsets=True) if len(work) else (work, work)
    parts = []
    for number, image, probability, offsets in zip(numbers, frames, maps, shifts):
        table = locate_learned(image, detector, diameter=diameter, invert=invert, characterize=characterize,
                               probability=probability, offsets=offsets, **learned)
        if len(table):
            table.insert(0, "frame", np.int64(number))
            parts.append(table)
    if not parts:
        diam = _resolve(detector, diameter, learned)["diameter"]
        empty = _matched.empty_matched(ndim, diameter=diam, characterize=characterize)
        empty["score"] = pd.Series(dtype="float64")
        return empty
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
def validation_at(detector: Detector, threshold: float) -> dict[str, float | None]:
    """Precision and recall on the validation images at ``threshold`` (the
    nearest point of the stored curve at or above it)."""
    curve = detector.validation
    if not curve.get("threshold"):
        return {"threshold": threshold, "precision": None, "recall": None}
    thresholds = np.asarray(curve["threshold"], dtype=float)
    i = int(min(np.searchsorted(thresholds, threshold - 1e-9), len(thresholds) - 1))
    return {"threshold": float(thresholds[i]), "precision": curve["precision"][i], "recall": curve["recall"][i]}


def _gate(detector: Detector) -> float:
    """Matching distance of the validation: 2 PSF s.d.s (the largest axis),
    or a sphere's radius."""
    radius = max(detector.radius)
    return float(radius if radius > 0 else 2 * max(detector.psf_sigma))


def match_detections(truth: np.ndarray, found: np.ndarray, score: np.ndarray, gate: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching by decreasing score: each detection in turn takes the
    nearest free truth within ``gate`` (each truth once).

    Returns
    -------
    hit : bool array (m,)
    err2 : array (m,)
        Squared distance to the truth taken (NaN if none).
    taken : int array (m,)
        Index of the truth taken (−1 if none).
    """
    order = np.argsort(-np.asarray(score), kind="stable")
    taken = np.full(len(found), -1, dtype=np.int64)
    err2 = np.full(len(found), np.nan)
    if len(truth) and len(found):
        tree = cKDTree(truth)
        used = np.zeros(len(truth), bool)
        for row in order:
            near = tree.query_ball_point(found[row], gate)
            near = sorted(near, key=lambda j: float(np.sum((truth[j] - found[row]) ** 2)))
            for j in near:
                if not used[j]:
                    used[j] = True
                    taken[row] = j
                    err2[row] = float(np.sum((truth[j] - found[row]) ** 2))
                    break
    return taken >= 0, err2, taken


def validate(detector: Detector, *, n_images: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """Precision and recall of ``detector`` on simulated validation images.

    Images of the training settings (another seed), detected at threshold
    :data:`VALIDATION_FLOOR` and matched to their truth within
    :func:`_gate`; then, for every cut of the score, precision and recall.
    Truths and detections closer to a face than a sphere's radius (2 PSF
    s.d.s for spots) are left out, as the ENS challenge's metric does. The
    maxima are separated as locate does by default for a ``diameter`` of
    the spot model (4 PSF s.d.s + 1, or the sphere's 2 r + 1).

    Returns
    -------
    dict
        ``threshold``, ``precision``, ``recall`` (the curve: 98 thresholds
        from the floor, 0.02, to 0.99; detections scoring at least each), ``n_truth``,
        ``n_images``, ``shape``, ``gate``; ``threshold_0_95``, ``precision_0_95``
        and ``recall_0_95`` (at the default precision, 0.95);
        ``recall_by_snr`` (SNR bin edges and recall at that threshold);
        ``rmse_px`` (per axis, of the matched fits there).
    """
    ndim = detector.ndim
    settings = detector.settings
    n_images = n_images or VALIDATION_IMAGES[ndim]
    rng = np.random.default_rng([int(settings.get("seed", 0)) if seed is None else seed, 2])
    shape = (VALIDATION_SHAPE[ndim],) * ndim
    gate = _gate(detector)
    margin = np.asarray([r if r > 0 else 2 * s for r, s in zip(detector.radius, detector.psf_sigma)])
    # the separation locate uses by default for a diameter that fits the spot model
    sep = _separation(detector, _default_diameter(detector), None)
    scores, hits, errors, truth_snr, truth_found_at = [], [], [], [], []
    for _ in range(n_images):
        image, pos, snrs = _simulate(rng, settings, ndim, shape)
        found = detect_learned(image, detector, threshold=VALIDATION_FLOOR, separation=sep)
        coords = found[list(_AXES[-ndim:])].to_numpy()
        # truths and detections within the margin of a face are left out (a
        # particle cut by the edge: as the ENS challenge's metric does)
        interior = lambda p: np.all((p >= margin - 0.5) & (p <= np.asarray(shape) - 0.5 - margin), axis=1)  # noqa: E731
        keep = interior(coords)
        found, coords = found[keep], coords[keep]
        pos, snrs = pos[interior(pos)], snrs[interior(pos)]
        hit, err2, taken = match_detections(pos, coords, found["score"].to_numpy(), gate)
        scores.append(found["score"].to_numpy())
        hits.append(hit)
        errors.append(err2)
        # each truth: the score of the detection that took it (0 if none)
        got = np.zeros(len(pos))
        got[taken[hit]] = found["score"].to_numpy()[hit]
        truth_snr.append(snrs)
        truth_found_at.append(got)
    score = np.concatenate(scores) if scores else np.empty(0)
    hit = np.concatenate(hits) if hits else np.empty(0, bool)
    err2 = np.concatenate(errors) if errors else np.empty(0)
    snr = np.concatenate(truth_snr)
    found_at = np.concatenate(truth_found_at)
    n_truth = len(snr)
    thresholds = np.round(np.linspace(VALIDATION_FLOOR, 0.99, 98), 4)
    precision, recall = [], []
    for t in thresholds:
        above = score >= t
        tp = int(hit[above].sum())
        precision.append(round(tp / max(int(above.sum()), 1), 4) if above.any() else 1.0)
        recall.append(round(tp / max(n_truth, 1), 4))
    out: dict[str, Any] = {"threshold": thresholds.tolist(), "precision": precision, "recall": recall,
                           "n_truth": n_truth, "n_images": n_images, "shape": list(shape), "gate": gate}
    detector.validation = out
    t95 = detector.threshold_for(0.95)
    above = score >= t95
    out["threshold_0_95"] = t95
    out["precision_0_95"] = round(float(hit[above].sum() / max(int(above.sum()), 1)), 4)
    out["recall_0_95"] = round(float(hit[above].sum() / max(n_truth, 1)), 4)
    lo, hi = (float(v) for v in settings["snr"])
    edges = np.linspace(lo, hi, 5)
    out["recall_by_snr"] = {
        "edges": [round(float(e), 3) for e in edges],
        "recall": [round(float(np.mean(found_at[(snr >= a) & (snr < b)] >= t95)), 4) if np.any((snr >= a) & (snr < b))
                   else None for a, b in zip(edges[:-1], edges[1:])],
    }
    good = above & hit
    out["rmse_px"] = round(float(math.sqrt(np.nanmean(err2[good]) / ndim)), 4) if good.any() else None
    return out
