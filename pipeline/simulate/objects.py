"""Simulated movies of extended objects (ellipsoids and blobs) with ground-truth labels.

For the ``segment`` and ``reassign`` stages: objects that move, rotate and
deform, some appearing and some leaving, in 2D or 3D with anisotropic voxels,
rendered with a Gaussian blur (the PSF), a background and camera noise.

Geometry lives in physical units (µm) so that a sphere stays a sphere on
anisotropic voxels. ``radius_px`` and ``displacement_px`` are given in pixels
of the finest (last, x) axis: physical length = value × ``pixel_size_um[-1]``.

An object is an ellipsoid (semi-axes ``a``, orientation ``R``); a voxel at
``p`` is inside when ρ(p) = |R⊤(p − c) / a| ≤ 1 + b(u), where ``u`` is the
unit direction of R⊤(p − c) / a and ``b`` a smooth bump pattern that is zero
for ellipsoids and of amplitude ``deform`` for blobs. Deformation over time:
the semi-axes breathe by ±``deform`` and the bumps drift around the surface.
Objects never touch: a move, or a birth, that would bring two bounding
spheres (plus a gap of a few PSF widths) together is retried in another
direction or skipped, so that every true object is one connected component
after thresholding.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

__all__ = ["simulate_objects"]

# Largest bump of a blob relative to its ellipsoid, and of the breathing of
# the semi-axes, both per unit of ``deform``.
_BUMP_MODES = 3
# Candidate directions tried before an object stays put for a frame.
_MOVE_TRIES = 24
_BIRTH_TRIES = 60


class _Object:
    """One simulated object's state (physical units)."""

    __slots__ = (
        "label", "center", "axes", "rotation", "spin_axis", "spin", "direction", "brightness",
        "blob", "bump_dirs", "bump_phase", "bump_rate", "breath_phase", "breath_rate", "extent",
    )


def _random_unit(rng: np.random.Generator, ndim: int) -> np.ndarray:
    v = rng.normal(size=ndim)
    return v / max(np.linalg.norm(v), 1e-12)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix by ``angle`` (rad) about ``axis`` (3D, Rodrigues) or in the plane (2D)."""
    if len(axis) == 2:
        c, s = math.cos(angle), math.sin(angle)
        return np.array([[c, -s], [s, c]])
    k = axis / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def simulate_objects(
    shape=(32, 96, 96),
    n_frames: int = 20,
    n_objects: int = 12,
    radius_px=(4, 8),
    displacement_px: float = 2.0,
    rotation_deg: float = 10.0,
    deform: float = 0.15,
    appear_rate: float = 0.1,
    leave_rate: float = 0.01,
    pixel_size_um=(0.5, 0.2, 0.2),
    noise: float = 0.05,
    seed: int = 0,
    *,
    blob_fraction: float = 0.5,
    persistence: float = 0.7,
    psf_sigma_um: float = 0.2,
    background: float = 0.1,
    gap_px: float = 3.0,
    counts: float = 1000.0,
):
    """Simulate a movie of moving, rotating, deforming objects with ground truth.

    Parameters
    ----------
    shape : (y, x) or (z, y, x)
        Frame shape in pixels.
    n_frames : int
        Frames to simulate.
    n_objects : int
        Objects in the first frame (fewer if they do not fit without touching).
    radius_px : float or (min, max)
        Largest semi-axis of each object, drawn uniformly in this range, in
        pixels of the x axis. The other semi-axes are 0.6–1 times it.
    displacement_px : float
        Step of every object per frame, in pixels of the x axis (µm = value ×
        ``pixel_size_um[-1]``). Directions are persistent: each frame's
        direction is ``persistence`` × the last one plus (1 − ``persistence``)
        × a random one, renormalised; walls reflect.
    rotation_deg : float
        Largest rotation per frame (each object spins about its own random
        axis at 0.5–1 times this rate, either way).
    deform : float
        Relative deformation: semi-axes breathe by ± ``deform``; blobs also
        carry surface bumps of this relative height that drift over time.
    appear_rate : float
        Expected number of new objects per frame (Poisson).
    leave_rate : float
        Probability per object and frame of leaving (vanishing) before the
        next frame.
    pixel_size_um : float or sequence
        Voxel size per axis, µm (z, y, x or y, x).
    noise : float
        Standard deviation of the Gaussian camera noise, relative to a
        brightness-1 object.
    seed : int
        Seed of the random generator (the movie is reproducible).
    blob_fraction : float
        Share of objects that are blobs (the rest are smooth ellipsoids).
    persistence : float
        0: a new random direction every frame; 1: straight lines.
    psf_sigma_um : float
        Standard deviation of the Gaussian blur (isotropic, µm).
    background : float
        Background level, relative to a brightness-1 object.
    gap_px : float
        Least clearance between two objects' bounding spheres, in x pixels,
        on top of 2 PSF widths (keeps objects apart after blurring).
    counts : float
        Camera counts of a brightness-1 object (the frames are uint16).

    Returns
    -------
    frames : ndarray (t, [z,] y, x) of uint16
    truth_labels : ndarray (t, [z,] y, x) of int32
        Each object's voxels carry its id, the same in every frame (ids from 1
        in order of birth; 0 is background).
    truth_table : DataFrame
        One row per object and frame: ``frame, label, [z,] y, x`` (centroid of
        its voxels, px), ``volume_voxels``, ``kind`` (ellipsoid or blob),
        ``born`` (first frame) and, where the object has a voxel in the
        previous frame, ``step_um`` (displacement of its centre since then).
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3) or any(s < 4 for s in shape):
        raise ValueError(f"shape must be (y, x) or (z, y, x) with every axis >= 4 px, got {shape}")
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    pixel = np.broadcast_to(np.asarray(pixel_size_um, dtype=float), (ndim,)).copy()
    if np.any(pixel <= 0):
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um!r}")
    r_lo, r_hi = (float(radius_px),) * 2 if np.isscalar(radius_px) else map(float, radius_px)
    if not 0 < r_lo <= r_hi:
        raise ValueError(f"radius_px must be positive (min <= max), got {radius_px!r}")
    for name, value in (("deform", deform), ("appear_rate", appear_rate), ("leave_rate", leave_rate),
                        ("noise", noise), ("displacement_px", displacement_px)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    rng = np.random.default_rng(seed)
    unit = pixel[-1]  # µm per "px" of radius and displacement
    size_um = np.asarray(shape) * pixel
    step_um = float(displacement_px) * unit
    gap_um = float(gap_px) * unit + 2.0 * psf_sigma_um
    objects: list[_Object] = []
    next_label = 1

    def fits(center, extent, others) -> bool:
        if np.any(center - extent < 0) or np.any(center + extent > size_um):
            return False
        return all(np.linalg.norm(center - o.center) >= extent + o.extent + gap_um for o in others)

    def new_object() -> _Object | None:
        nonlocal next_label
        r = rng.uniform(r_lo, r_hi) * unit
        obj = _Object()
        obj.axes = r * np.concatenate([[1.0], rng.uniform(0.6, 1.0, ndim - 1)])
        rng.shuffle(obj.axes)
        obj.blob = bool(rng.random() < blob_fraction)
        obj.extent = r * (1.0 + deform) * (1.0 + (deform if obj.blob else 0.0))
        for _ in range(_BIRTH_TRIES):
            center = rng.uniform(obj.extent, np.maximum(size_um - obj.extent, obj.extent + 1e-9))
            if fits(center, obj.extent, objects):
                break
        else:
            return None
        obj.center = center
        obj.label = next_label
        next_label += 1
        obj.rotation = _rotation(_random_unit(rng, 3), rng.uniform(0, 2 * math.pi)) if ndim == 3 else \
            _rotation(np.zeros(2), rng.uniform(0, 2 * math.pi))
        obj.spin_axis = _random_unit(rng, 3) if ndim == 3 else np.zeros(2)
        obj.spin = math.radians(rotation_deg) * rng.uniform(0.5, 1.0) * rng.choice([-1.0, 1.0])
        obj.direction = _random_unit(rng, ndim)
        obj.brightness = rng.uniform(0.6, 1.0)
        obj.bump_dirs = np.stack([_random_unit(rng, ndim) for _ in range(_BUMP_MODES)])
        obj.bump_phase = rng.uniform(0, 2 * math.pi, _BUMP_MODES)
        obj.bump_rate = rng.uniform(0.1, 0.3, _BUMP_MODES) * rng.choice([-1.0, 1.0], _BUMP_MODES)
        obj.breath_phase = rng.uniform(0, 2 * math.pi, ndim)
        obj.breath_rate = rng.uniform(0.2, 0.5, ndim)
        return obj

    for _ in range(int(n_objects)):
        obj = new_object()
        if obj is not None:
            objects.append(obj)

    frames = np.empty((int(n_frames), *shape), dtype=np.uint16)
    truth = np.zeros((int(n_frames), *shape), dtype=np.int32)
    rows = []
    born: dict[int, int] = {}
    last_center: dict[int, np.ndarray] = {}
    sigma_px = psf_sigma_um / pixel
    max_count = np.iinfo(np.uint16).max
    for t in range(int(n_frames)):
        if t > 0:
            # leave, move, rotate; then births
            objects = [o for o in objects if rng.random() >= leave_rate]
            for k, obj in enumerate(objects):
                others = objects[:k] + objects[k + 1 :]
                proposal = persistence * obj.direction + (1.0 - persistence) * _random_unit(rng, ndim)
                direction = proposal / max(np.linalg.norm(proposal), 1e-12)
                for attempt in range(_MOVE_TRIES):
                    target = obj.center + step_um * direction
                    # reflect off the walls
                    low, high = obj.extent, size_um - obj.extent
                    below, above = target < low, target > high
                    if below.any() or above.any():
                        direction = np.where(below | above, -direction, direction)
                        target = obj.center + step_um * direction
                    if fits(target, obj.extent, others):
                        obj.center, obj.direction = target, direction
                        break
                    direction = _random_unit(rng, ndim)
                obj.rotation = _rotation(obj.spin_axis, obj.spin) @ obj.rotation
            for _ in range(rng.poisson(appear_rate)):
                obj = new_object()
                if obj is not None:
                    objects.append(obj)
        intensity = np.zeros(shape, dtype=np.float64)
        for obj in objects:
            born.setdefault(obj.label, t)
            _render(obj, t, deform, pixel, shape, truth[t], intensity)
        blurred = ndi.gaussian_filter(intensity, sigma_px, mode="constant")
        image = (blurred + background + rng.normal(0.0, noise, shape)) * counts
        frames[t] = np.clip(np.rint(image), 0, max_count).astype(np.uint16)
        rows.extend(_truth_rows(truth[t], t, objects, born, last_center, pixel))
    columns = ["frame", "label", *["z", "y", "x"][3 - ndim :], "volume_voxels", "kind", "born", "step_um"]
    table = pd.DataFrame(rows, columns=columns)
    table = table.astype({"frame": np.int64, "label": np.int64, "volume_voxels": np.int64, "born": np.int64})
    table.attrs.update(pixel_size_um=pixel.tolist(), displacement_um=step_um)
    return frames, truth, table


def _render(obj: _Object, t: int, deform: float, pixel: np.ndarray, shape, labels, intensity) -> None:
    """Draw ``obj`` into ``labels`` (its id) and ``intensity`` (its brightness)."""
    lo = np.maximum(np.floor((obj.center - obj.extent) / pixel).astype(int) - 1, 0)
    hi = np.minimum(np.ceil((obj.center + obj.extent) / pixel).astype(int) + 2, shape)
    if np.any(hi <= lo):
        return
    grids = np.meshgrid(*[(np.arange(a, b) + 0.0) * p for a, b, p in zip(lo, hi, pixel)], indexing="ij")
    offsets = np.stack([g - c for g, c in zip(grids, obj.center)], axis=-1)
    body = offsets @ obj.rotation  # R⊤ (p − c), row-vector form
    axes = obj.axes * (1.0 + deform * np.sin(obj.breath_phase + obj.breath_rate * t))
    scaled = body / axes
    rho = np.linalg.norm(scaled, axis=-1)
    limit = np.ones_like(rho)
    if obj.blob and deform > 0:
        direction = scaled / np.maximum(rho, 1e-12)[..., None]
        bumps = np.cos(2.0 * (direction @ obj.bump_dirs.T) * math.pi + obj.bump_phase + obj.bump_rate * t)
        limit = limit + deform * bumps.mean(axis=-1)
    inside = rho <= limit
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    labels[box][inside] = obj.label
    intensity[box][inside] += obj.brightness


def _truth_rows(labels, t, objects, born, last_center, pixel):
    present = [o.label for o in objects]
    if not present:
        return []
    where = np.nonzero(labels)
    ids = labels[where]
    size = int(ids.max()) + 1 if len(ids) else 1
    n_voxels = np.bincount(ids, minlength=size)
    sums = np.stack([np.bincount(ids, weights=w, minlength=size) for w in where], axis=1)
    counts = [n_voxels[o.label] if o.label < size else 0 for o in objects]
    centroids = [sums[o.label] / max(n_voxels[o.label], 1) if o.label < size else None for o in objects]
    rows = []
    for obj, n, c in zip(objects, counts, centroids):
        if n == 0:
            continue
        c = np.asarray(c)
        step = np.nan
        if obj.label in last_center:
            step = float(np.linalg.norm((c - last_center[obj.label]) * pixel))
        last_center[obj.label] = c
        rows.append([t, obj.label, *c.tolist(), int(n), "blob" if obj.blob else "ellipsoid", born[obj.label], step])
    # objects that left are forgotten, so a label never reappears with a step
    for label in set(last_center) - set(present):
        del last_center[label]
    return rows
