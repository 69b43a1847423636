"""A simulated camera for nanoparticle-tracking (NTA) movies.

Brownian spheres whose diffusion coefficient follows Stokes–Einstein from
their diameter, the temperature and the viscosity (Einstein 1905), imaged
through a Gaussian PSF with motion blur, shot noise, read noise and a
background, optionally carried by a drift or a flow field, and entering and
leaving the field of view (and, with ``depth_um``, the focal slab).

Geometry
--------
Positions are in pixels along the movie's axes ((y, x) or (z, y, x)), with
pixel ``i`` covering ``[i - 0.5, i + 0.5)``. Particles live in a box that is
the field of view plus a margin of a few PSF widths on each side, so that
spots are born and die outside the image and partial spots at the border are
rendered correctly. The box is periodic: a particle that leaves it re-enters
on the opposite face as a *new* particle (new id, diameter drawn afresh from
the populations), which keeps the density uniform under diffusion, drift and
divergence-free flows.

With ``depth_um`` (2D movies only) the particles also diffuse along the
optical axis in a slab of thickness ``2 * depth_um`` and are seen only while
``|z| < depth_um / 2``: that, as in a real NTA instrument, is what makes
tracks short.

Time
----
Frame ``k`` is exposed during ``[k Δt, k Δt + t_exp]``. The exposure is
integrated over ``blur_steps`` sub-steps (positions at the sub-interval
mid-points, each carrying an equal share of the photons); the ground truth is
the exposure-averaged position, which is what a locator measures. Between
samples the motion is an RK4 step of the deterministic velocity (drift plus
flow) followed by a Brownian increment of variance ``2 D dt`` per axis.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..physics import stokes_einstein_D, water_viscosity
from .render import camera_counts, render_gaussian_spots

__all__ = ["NTASimulator", "simulate_movie", "VortexFlow", "ShearFlow"]

_TRUTH_DTYPES = {
    "frame": np.int64,
    "z": np.float64,
    "y": np.float64,
    "x": np.float64,
    "particle": np.int64,
    "diameter_nm": np.float64,
    "D_um2_s": np.float64,
    "photons": np.float64,
    "z_um": np.float64,
    "visible": bool,
}


class VortexFlow:
    """A Rankine vortex about the optical (z) axis.

    Solid-body rotation inside ``core_radius_um`` (speed growing linearly to
    ``speed_um_s`` at the core radius), irrotational ``1/r`` decay outside;
    divergence-free, so a uniform density stays uniform. Positive speeds turn
    counter-clockwise in the (x, y) plane with y pointing up (clockwise as an
    image is displayed, y down).

    Call it as ``velocity(positions_um) -> velocity_um_s`` on arrays of shape
    (n, ndim) in the movie's axis order (the last two axes are y, x).
    A class rather than a closure so that simulators pickle (process pools).
    """

    def __init__(self, center_um, core_radius_um: float, speed_um_s: float):
        self.cy, self.cx = float(center_um[-2]), float(center_um[-1])
        self.core_radius_um = float(core_radius_um)
        self.speed_um_s = float(speed_um_s)

    def __call__(self, positions_um: np.ndarray) -> np.ndarray:
        p = np.asarray(positions_um, dtype=float)
        R, speed = self.core_radius_um, self.speed_um_s
        dy = p[..., -2] - self.cy
        dx = p[..., -1] - self.cx
        r2 = dy * dy + dx * dx
        # angular velocity: speed/R inside the core, speed*R/r² outside
        omega = np.where(r2 <= R * R, speed / R, speed * R / np.maximum(r2, R * R))
        v = np.zeros_like(p)
        v[..., -2] = omega * dx
        v[..., -1] = -omega * dy
        return v

    def __repr__(self) -> str:
        return (
            f"VortexFlow(center_um=({self.cy:g}, {self.cx:g}), "
            f"core_radius_um={self.core_radius_um:g}, speed_um_s={self.speed_um_s:g})"
        )


class ShearFlow:
    """Simple shear: v_x = speed · (y − y_c) / half_height, other components zero.

    The flow runs at ``±speed_um_s`` along x at the top and bottom edges of
    the field of view (``half_height_um`` from its centre line ``y_c``) and is
    zero on the centre line. Called like :class:`VortexFlow`.
    """

    def __init__(self, center_um, half_height_um: float, speed_um_s: float):
        self.cy = float(center_um[-2])
        self.half_height_um = float(half_height_um)
        self.speed_um_s = float(speed_um_s)

    def __call__(self, positions_um: np.ndarray) -> np.ndarray:
        p = np.asarray(positions_um, dtype=float)
        v = np.zeros_like(p)
        v[..., -1] = self.speed_um_s / self.half_height_um * (p[..., -2] - self.cy)
        return v

    def __repr__(self) -> str:
        return f"ShearFlow(y_c_um={self.cy:g}, half_height_um={self.half_height_um:g}, speed_um_s={self.speed_um_s:g})"


def _per_axis(name: str, value, ndim: int, *, positive: bool = True, allow_zero: bool = False) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(ndim, float(arr))
    if arr.shape != (ndim,):
        raise ValueError(f"{name} must be a scalar or have one value per spatial axis ({ndim}), got {value!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and (np.any(arr < 0) if allow_zero else np.any(arr <= 0)):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")
    return arr


def _number(name: str, value, *, minimum: float | None = None, strict: bool = False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return value


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if callable(value):
        return f"callable:{getattr(value, '__qualname__', repr(value))}"
    return value


class NTASimulator:
    """Simulated NTA camera: Brownian spheres, motion blur, PSF, camera noise.

    Parameters
    ----------
    shape : tuple of int
        Frame shape in pixels, (y, x) or (z, y, x) for a 3D (volume) movie.
    n_frames : int
        Number of frames.
    n_particles : float
        Mean number of particles in the imaged volume at any time (the field
        of view; with ``depth_um``, the field of view times the focal depth).
    diameters_nm : sequence of float
        Hydrodynamic diameter of each population, nm.
    fractions : sequence of float, optional
        Number fraction of each population (default equal); normalised.
    pixel_size_um : float or sequence
        Pixel size in µm, scalar or per axis.
    frame_interval_s : float
        Time between frame starts, s.
    exposure_s : float, optional
        Exposure time, s, ``0 <= exposure_s <= frame_interval_s`` (default:
        the frame interval). 0 gives instantaneous (blur-free) frames.
    temperature_K : float
        Temperature, K.
    viscosity_Pa_s : float, optional
        Dynamic viscosity, Pa·s (default: water at ``temperature_K``, from
        :func:`pipeline.physics.water_viscosity`).
    psf_sigma_px : float or sequence
        Gaussian PSF standard deviation in pixels, scalar or per axis (3D:
        give a larger value along z for an axially elongated PSF).
    photons : float
        Photons detected per particle per frame, for a particle of diameter
        ``photons_reference_nm`` (all particles if ``photons_exponent`` is 0).
    photons_exponent : float
        Brightness scales as ``(d / photons_reference_nm) ** photons_exponent``
        (6 for Rayleigh scattering; default 0: all equally bright).
    photons_reference_nm : float
        Reference diameter of ``photons``, nm (default 100).
    background : float
        Background photons per pixel per frame.
    read_noise : float
        Read noise, electrons rms.
    baseline : float
        Camera offset, counts.
    gain : float
        Counts per electron (default 1).
    dtype : str
        Frame dtype (integer types are rounded and clipped).
    shot_noise : bool
        Poisson noise on photons (default True; False gives the expected image,
        useful with a float dtype for tests).
    blur_steps : int
        Sub-steps integrating the motion within one exposure (default 5; 1
        when ``exposure_s`` is 0).
    drift_um_s : sequence of float, optional
        Constant velocity per spatial axis of the movie, µm/s.
    flow : None, "vortex", "shear" or callable
        Flow field. "vortex": a Rankine vortex about the field's centre whose
        speed reaches ``flow_speed_um_s`` at half the smaller field extent;
        "shear": ``v_x = flow_speed_um_s · (y − y_c) / (H / 2)``; a callable
        ``f(positions_um) -> velocity_um_s`` on (n, ndim) arrays in the movie's
        axis order, positions measured from the centre of pixel 0.
    flow_speed_um_s : float
        Speed scale of the built-in flows, µm/s.
    depth_um : float, optional
        Focal depth for 2D movies: particles also diffuse along z (in a slab
        ``2 * depth_um`` thick) and are visible only while ``|z| < depth_um/2``.
    seed : int, optional
        Seed; the same seed gives the same frames and truth.

    Attributes
    ----------
    truth : pandas.DataFrame
        One row per particle and frame while its exposure-averaged position
        lies inside the image: ``frame, [z,] y, x`` (pixels), ``particle``,
        ``diameter_nm``, ``D_um2_s``, ``photons``, ``visible`` (inside the image
        and, with ``depth_um``, in focus; only visible particles are rendered
        as in-focus spots), plus ``z_um`` (out-of-plane position) with
        ``depth_um``.
    """

    def __init__(
        self,
        shape=(256, 256),
        n_frames: int = 100,
        *,
        n_particles: float = 50,
        diameters_nm=(100.0,),
        fractions=None,
        pixel_size_um=0.1,
        frame_interval_s: float = 1 / 30,
        exposure_s: float | None = None,
        temperature_K: float = 298.15,
        viscosity_Pa_s: float | None = None,
        psf_sigma_px=1.5,
        photons: float = 2000.0,
        photons_exponent: float = 0.0,
        photons_reference_nm: float = 100.0,
        background: float = 100.0,
        read_noise: float = 2.0,
        baseline: float = 100,
        gain: float = 1.0,
        dtype="uint16",
        shot_noise: bool = True,
        blur_steps: int = 5,
        drift_um_s=None,
        flow=None,
        flow_speed_um_s: float = 0.0,
        depth_um: float | None = None,
        seed: int | None = None,
        **unknown,
    ):
        if unknown:
            raise ValueError(
                f"NTASimulator: unknown parameter(s) {', '.join(map(repr, sorted(unknown)))}"
            )
        # ---- geometry --------------------------------------------------
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise ValueError(f"shape must be (y, x) or (z, y, x), got {shape!r}") from None
        if len(shape) not in (2, 3) or any(s < 1 for s in shape):
            raise ValueError(f"shape must be (y, x) or (z, y, x) of positive sizes, got {shape!r}")
        self.shape = shape
        self.ndim = len(shape)
        if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 0:
            raise ValueError(f"n_frames must be a non-negative integer, got {n_frames!r}")
        self.n_frames = int(n_frames)
        self.pixel_size_um = _per_axis("pixel_size_um", pixel_size_um, self.ndim)
        self.psf_sigma_px = _per_axis("psf_sigma_px", psf_sigma_px, self.ndim)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype {dtype!r} is not a numpy dtype") from None
        if self.dtype.kind not in "uif":
            raise ValueError(f"dtype must be an integer or float type, got {dtype!r}")

        # ---- time ------------------------------------------------------
        self.frame_interval_s = _number("frame_interval_s", frame_interval_s, minimum=0, strict=True)
        exposure = self.frame_interval_s if exposure_s is None else _number("exposure_s", exposure_s, minimum=0)
        if exposure > self.frame_interval_s * (1 + 1e-12):
            raise ValueError(
                f"exposure_s ({exposure}) must not exceed frame_interval_s ({self.frame_interval_s})"
            )
        self.exposure_s = exposure
        if isinstance(blur_steps, bool) or not isinstance(blur_steps, numbers.Integral) or blur_steps < 1:
            raise ValueError(f"blur_steps must be a positive integer, got {blur_steps!r}")
        self.blur_steps = int(blur_steps) if exposure > 0 else 1

        # ---- physics ---------------------------------------------------
        self.temperature_K = _number("temperature_K", temperature_K, minimum=0, strict=True)
        if viscosity_Pa_s is None:
            try:
                self.viscosity_Pa_s = float(water_viscosity(self.temperature_K))
            except ValueError as exc:
                raise ValueError(f"temperature_K: {exc} (give viscosity_Pa_s for other media)") from None
            self.viscosity_source = "water (Vogel equation) at temperature_K"
        else:
            self.viscosity_Pa_s = _number("viscosity_Pa_s", viscosity_Pa_s, minimum=0, strict=True)
            self.viscosity_source = "given"
        diam = np.atleast_1d(np.asarray(diameters_nm, dtype=float))
        if diam.ndim != 1 or diam.size == 0 or not np.all(np.isfinite(diam)) or np.any(diam <= 0):
            raise ValueError(f"diameters_nm must be one or more positive diameters, got {diameters_nm!r}")
        self.diameters_nm = diam
        if fractions is None:
            frac = np.full(diam.size, 1.0 / diam.size)
        else:
            frac = np.atleast_1d(np.asarray(fractions, dtype=float))
            if frac.shape != diam.shape or not np.all(np.isfinite(frac)) or np.any(frac < 0) or frac.sum() <= 0:
                raise ValueError(
                    f"fractions must give one non-negative weight per population "
                    f"({diam.size}), got {fractions!r}"
                )
            frac = frac / frac.sum()
        self.fractions = frac
        self.D_um2_s = np.atleast_1d(stokes_einstein_D(diam, self.temperature_K, self.viscosity_Pa_s))
        self.n_particles = _number("n_particles", n_particles, minimum=0)

        # ---- optics and camera ------------------------------------------
        self.photons = _number("photons", photons, minimum=0)
        self.photons_exponent = _number("photons_exponent", photons_exponent)
        self.photons_reference_nm = _number("photons_reference_nm", photons_reference_nm, minimum=0, strict=True)
        self.background = _number("background", background, minimum=0)
        self.read_noise = _number("read_noise", read_noise, minimum=0)
        self.baseline = _number("baseline", baseline)
        self.gain = _number("gain", gain, minimum=0, strict=True)
        if not isinstance(shot_noise, (bool, np.bool_)):
            raise ValueError(f"shot_noise must be true or false, got {shot_noise!r}")
        self.shot_noise = bool(shot_noise)

        # ---- motion ----------------------------------------------------
        self.drift_um_s = (
            None if drift_um_s is None else _per_axis("drift_um_s", drift_um_s, self.ndim, positive=False)
        )
        self.flow_speed_um_s = _number("flow_speed_um_s", flow_speed_um_s)
        fov_um = np.asarray(self.shape) * self.pixel_size_um
        center_um = (np.asarray(self.shape) - 1) / 2.0 * self.pixel_size_um
        if flow is None:
            if self.flow_speed_um_s != 0:
                raise ValueError("flow_speed_um_s is set but flow is None (choose 'vortex', 'shear' or a callable)")
            self._flow = None
        elif isinstance(flow, str) and flow == "vortex":
            self._flow = VortexFlow(center_um, min(fov_um[-2:]) / 2.0, self.flow_speed_um_s)
        elif isinstance(flow, str) and flow == "shear":
            self._flow = ShearFlow(center_um, fov_um[-2] / 2.0, self.flow_speed_um_s)
        elif callable(flow):
            self._flow = flow
        else:
            raise ValueError(f"flow must be None, 'vortex', 'shear' or a callable, got {flow!r}")
        self.flow = flow

        if depth_um is not None:
            if self.ndim == 3:
                raise ValueError("depth_um applies to 2D movies only; a 3D movie images its whole volume")
            depth_um = _number("depth_um", depth_um, minimum=0, strict=True)
        self.depth_um = depth_um

        # ---- randomness ------------------------------------------------
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = seed
        seq = np.random.SeedSequence(seed)
        self._seed_entropy = seq.entropy
        self._motion_seq, self._noise_seq = seq.spawn(2)

        # ---- the particle box --------------------------------------------
        # Margin: the PSF's reach plus a few Brownian steps and a frame's
        # worth of flow, so that particles wrapping around the periodic box
        # re-enter outside the image and spots are born and die out of view.
        D_max = float(self.D_um2_s.max())
        step_px = np.sqrt(2 * D_max * self.frame_interval_s) / self.pixel_size_um
        self._margin_px = np.ceil(4 * self.psf_sigma_px + 3 * step_px + 2)
        if self._flow is not None or self.drift_um_s is not None:
            for _ in range(2):  # the box grows with the margin, and a shear's speed with the box
                self._margin_px = np.ceil(
                    4 * self.psf_sigma_px + 3 * step_px + 2 + 1.5 * self._max_flow_px_per_frame()
                )
        self._box_lo = -0.5 - self._margin_px
        self._box_size = np.asarray(self.shape, dtype=float) + 2 * self._margin_px
        volume_ratio = float(np.prod(self._box_size / np.asarray(self.shape, dtype=float)))
        if self.depth_um is not None:
            self._slab_um = 2.0 * self.depth_um
            volume_ratio *= self._slab_um / self.depth_um
        self._n_box = int(round(self.n_particles * volume_ratio))

        self.settings = {
            "shape": list(self.shape),
            "n_frames": self.n_frames,
            "n_particles": self.n_particles,
            "diameters_nm": self.diameters_nm.tolist(),
            "fractions": self.fractions.tolist(),
            "pixel_size_um": self.pixel_size_um.tolist(),
            "frame_interval_s": self.frame_interval_s,
            "exposure_s": self.exposure_s,
            "temperature_K": self.temperature_K,
            "viscosity_Pa_s": self.viscosity_Pa_s,
            "psf_sigma_px": self.psf_sigma_px.tolist(),
            "photons": self.photons,
            "photons_exponent": self.photons_exponent,
            "photons_reference_nm": self.photons_reference_nm,
            "background": self.background,
            "read_noise": self.read_noise,
            "baseline": self.baseline,
            "gain": self.gain,
            "dtype": self.dtype.name,
            "shot_noise": self.shot_noise,
            "blur_steps": self.blur_steps,
            "drift_um_s": None if self.drift_um_s is None else self.drift_um_s.tolist(),
            "flow": _jsonable(flow),
            "flow_speed_um_s": self.flow_speed_um_s,
            "depth_um": self.depth_um,
            # the seed actually used (drawn from the OS when seed=None), so the
            # settings alone reproduce the movie
            "seed": int(self._seed_entropy),
        }
        self._truth: pd.DataFrame | None = None

    # ------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        return (
            f"NTASimulator(shape={self.shape}, n_frames={self.n_frames}, "
            f"n_particles={self.n_particles:g}, diameters_nm={self.diameters_nm.tolist()}, seed={self.seed})"
        )

    @property
    def metadata(self) -> dict[str, Any]:
        """Acquisition metadata for the movie store (JSON-serialisable)."""
        return {
            "source": "simulated: trackflow NTASimulator",
            "simulated": True,
            "pixel_size_um": self.pixel_size_um.tolist(),
            "frame_interval_s": self.frame_interval_s,
            "exposure_s": self.exposure_s,
            "temperature_K": self.temperature_K,
            "viscosity_Pa_s": self.viscosity_Pa_s,
            "viscosity_source": self.viscosity_source,
            "depth_um": self.depth_um,
            "settings": dict(self.settings),
        }

    # ---- velocity field ----------------------------------------------
    def _max_flow_px_per_frame(self) -> np.ndarray:
        """Largest |velocity| per axis (px/frame) on a grid over the current box."""
        lo = -0.5 - self._margin_px
        hi = np.asarray(self.shape) - 0.5 + self._margin_px
        grid = np.meshgrid(*[np.linspace(l, h, 17) for l, h in zip(lo, hi)], indexing="ij")
        points = np.stack([g.ravel() for g in grid], axis=1)
        v = np.abs(self.flow_velocity(points))
        return np.nanmax(v, axis=0)

    def _velocity_um_s(self, positions_um: np.ndarray) -> np.ndarray | None:
        v = None
        if self._flow is not None:
            v = np.asarray(self._flow(positions_um), dtype=float)
            if v.shape != positions_um.shape:
                raise ValueError(
                    f"flow callable returned shape {v.shape}, expected {positions_um.shape} (one velocity per axis)"
                )
        if self.drift_um_s is not None:
            v = self.drift_um_s + (0.0 if v is None else v)
        return v

    def flow_velocity(self, positions_px) -> np.ndarray:
        """Deterministic velocity (flow plus drift) at pixel positions, in px/frame.

        Parameters
        ----------
        positions_px : (n, ndim) or (ndim,) array
            Positions in pixels, movie axis order ((y, x) or (z, y, x)).

        Returns
        -------
        ndarray, same shape
            Instantaneous velocity × frame interval, per axis, in pixels per
            frame (zero without flow and drift).
        """
        p = np.asarray(positions_px, dtype=float)
        if p.shape[-1] != self.ndim:
            raise ValueError(f"positions_px must have {self.ndim} coordinates per row, got shape {p.shape}")
        flat = p.reshape(-1, self.ndim)
        v = self._velocity_um_s(flat * self.pixel_size_um)
        if v is None:
            return np.zeros_like(p)
        v = np.broadcast_to(v, flat.shape)
        return (v * self.frame_interval_s / self.pixel_size_um).reshape(p.shape)

    # ---- motion ------------------------------------------------------
    def _draw_particles(self, rng: np.random.Generator, n: int, *, exact: bool = False):
        if exact:
            # Largest-remainder split so a 1:1 mixture starts exactly 1:1.
            raw = self.fractions * n
            counts = np.floor(raw).astype(int)
            rest = np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]
            counts[rest] += 1
            pop = rng.permutation(np.repeat(np.arange(self.fractions.size), counts))
        else:
            pop = rng.choice(self.fractions.size, size=n, p=self.fractions)
        return pop

    def _advance(self, rng, pos, z, D_px, D_um, dt):
        """Move particles by ``dt`` seconds: RK4 flow step, then Brownian step."""
        px = self.pixel_size_um
        if self._flow is not None or self.drift_um_s is not None:

            def vel(p):
                return self._velocity_um_s(p * px) / px  # px/s

            k1 = vel(pos)
            k2 = vel(pos + 0.5 * dt * k1)
            k3 = vel(pos + 0.5 * dt * k2)
            k4 = vel(pos + dt * k3)
            pos = pos + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        pos = pos + rng.standard_normal(pos.shape) * np.sqrt(2.0 * D_px * dt)
        if z is not None:
            z = z + rng.standard_normal(z.shape) * np.sqrt(2.0 * D_um * dt)
        return pos, z

    def _trajectory(self) -> Iterator[dict]:
        """Yield, per frame, the sub-step positions and the particles' properties."""
        rng = np.random.default_rng(self._motion_seq)
        n = self._n_box
        ndim = self.ndim
        lo, size = self._box_lo, self._box_size
        pop = self._draw_particles(rng, n, exact=True)
        pos = lo + rng.random((n, ndim)) * size
        z = None
        if self.depth_um is not None:
            z = (rng.random(n) - 0.5) * self._slab_um
        ids = np.arange(n, dtype=np.int64)
        next_id = n
        n_sub = self.blur_steps
        dt_sub = self.exposure_s / n_sub
        dt_gap = self.frame_interval_s - (n_sub - 1) * dt_sub

        def props(pop):
            D_um = self.D_um2_s[pop]
            return D_um, D_um[:, None] / self.pixel_size_um**2

        D_um, D_px = props(pop)
        for k in range(self.n_frames):
            if k > 0:
                pos, z = self._advance(rng, pos, z, D_px, D_um, dt_gap)
                # Periodic box: who left re-enters on the far side as a new particle.
                rel = pos - lo
                out = np.any((rel < 0) | (rel >= size), axis=1)
                pos = lo + np.mod(rel, size)
                if z is not None:
                    zrel = z + self._slab_um / 2
                    out |= (zrel < 0) | (zrel >= self._slab_um)
                    z = np.mod(zrel, self._slab_um) - self._slab_um / 2
                n_out = int(out.sum())
                if n_out:
                    ids = ids.copy()
                    ids[out] = np.arange(next_id, next_id + n_out)
                    next_id += n_out
                    pop = pop.copy()
                    pop[out] = self._draw_particles(rng, n_out)
                    D_um, D_px = props(pop)
            samples = np.empty((n_sub, n, ndim))
            zsamples = None if z is None else np.empty((n_sub, n))
            samples[0] = pos
            if z is not None:
                zsamples[0] = z
            for j in range(1, n_sub):
                pos, z = self._advance(rng, pos, z, D_px, D_um, dt_sub)
                samples[j] = pos
                if z is not None:
                    zsamples[j] = z
            yield {"samples": samples, "z": zsamples, "ids": ids, "pop": pop}

    def _truth_axes(self) -> tuple[str, ...]:
        return ("z", "y", "x")[3 - self.ndim :]

    def _frame_truth(self, k: int, state: dict) -> tuple[dict, np.ndarray, np.ndarray]:
        """Truth columns of one frame, plus the in-focus mask and photons of all particles."""
        samples, pop = state["samples"], state["pop"]
        mean = samples.mean(axis=0)
        diam = self.diameters_nm[pop]
        photons = self.photons * (diam / self.photons_reference_nm) ** self.photons_exponent
        in_focus = np.ones(mean.shape[0], dtype=bool)
        z_mean = None
        if state["z"] is not None:
            z_mean = state["z"].mean(axis=0)
            in_focus = np.abs(z_mean) < self.depth_um / 2
        inside = np.all((mean >= -0.5) & (mean < np.asarray(self.shape) - 0.5), axis=1)
        cols: dict[str, np.ndarray] = {"frame": np.full(int(inside.sum()), k, dtype=np.int64)}
        for a, name in enumerate(self._truth_axes()):
            cols[name] = mean[inside, a]
        cols["particle"] = state["ids"][inside]
        cols["diameter_nm"] = diam[inside]
        cols["D_um2_s"] = self.D_um2_s[pop][inside]
        cols["photons"] = photons[inside]
        if z_mean is not None:
            cols["z_um"] = z_mean[inside]
        cols["visible"] = in_focus[inside]
        return cols, in_focus, photons

    def _truth_frame(self, parts: list[dict]) -> pd.DataFrame:
        names = ["frame", *self._truth_axes(), "particle", "diameter_nm", "D_um2_s", "photons"]
        if self.depth_um is not None:
            names.append("z_um")
        names.append("visible")
        return pd.DataFrame(
            {
                c: np.concatenate([p[c] for p in parts]) if parts else np.empty(0, dtype=_TRUTH_DTYPES[c])
                for c in names
            }
        )

    # ---- public --------------------------------------------------------
    def frames(self) -> Iterator[np.ndarray]:
        """Yield the ``n_frames`` frames, one array of ``shape`` and ``dtype`` each.

        Deterministic for a given seed; each call starts the movie afresh.
        Fills :attr:`truth` once exhausted.
        """
        noise_rng = np.random.default_rng(self._noise_seq)
        parts = []
        n_sub = self.blur_steps
        for k, state in enumerate(self._trajectory()):
            rows, in_focus, photons = self._frame_truth(k, state)
            parts.append(rows)
            expected = np.full(self.shape, self.background, dtype=np.float64)
            if in_focus.any():
                spots = state["samples"][:, in_focus, :].reshape(-1, self.ndim)
                amp = np.tile(photons[in_focus] / n_sub, n_sub)
                render_gaussian_spots(self.shape, spots, amp, self.psf_sigma_px, out=expected)
            yield camera_counts(
                expected,
                noise_rng,
                shot_noise=self.shot_noise,
                read_noise=self.read_noise,
                baseline=self.baseline,
                gain=self.gain,
                dtype=self.dtype,
            )
        self._truth = self._truth_frame(parts)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.frames()

    @property
    def truth(self) -> pd.DataFrame:
        """Ground truth (computed on demand; identical to what :meth:`frames` renders)."""
        if self._truth is None:
            parts = [self._frame_truth(k, s)[0] for k, s in enumerate(self._trajectory())]
            self._truth = self._truth_frame(parts)
        return self._truth


def simulate_movie(shape=(256, 256), n_frames: int = 100, **kwargs):
    """Simulate a whole movie in memory.

    Takes the same parameters as :class:`NTASimulator`.

    Returns
    -------
    frames : ndarray, (n_frames, *shape)
    truth : pandas.DataFrame
    metadata : dict
    """
    sim = NTASimulator(shape=shape, n_frames=n_frames, **kwargs)
    frames = np.empty((sim.n_frames, *sim.shape), dtype=sim.dtype)
    for i, frame in enumerate(sim.frames()):
        frames[i] = frame
    return frames, sim.truth, sim.metadata
