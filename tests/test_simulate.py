"""Tests of the NTA simulator (pipeline.simulate): physics, rendering, camera, truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.io.movie import open_movie, write_movie
from pipeline.physics import stokes_einstein_D, water_viscosity
from pipeline.simulate import NTASimulator, render_gaussian_spots, simulate_movie

# Settings that make the rendered image exactly the expected photon image.
NOISELESS = dict(shot_noise=False, read_noise=0.0, background=0.0, baseline=0.0, dtype="float64")
# In a medium this viscous particles barely diffuse (D ~ 4e-15 µm²/s): motion is the flow's alone.
FROZEN = dict(viscosity_Pa_s=1e9)


def isolated(truth: pd.DataFrame, frame: int, shape, reach: float) -> np.ndarray:
    """Visible positions in ``frame`` at least ``reach`` px from the border and
    from any other particle (inside the image or beyond it), so a window of
    half-width ``reach`` around each holds that spot's light alone."""
    axes = ["z", "y", "x"][3 - len(shape):]
    rows = truth[truth.frame == frame]
    pos = rows[axes].to_numpy()
    keep = []
    for i in np.flatnonzero(rows.visible.to_numpy()):
        p = pos[i]
        if (p < reach).any() or (p > np.asarray(shape) - 1 - reach).any():
            continue
        dist = np.sqrt(((pos - p) ** 2).sum(axis=1))
        if (np.delete(dist, i) < 2 * reach).any():
            continue
        keep.append(p)
    return np.array(keep).reshape(-1, len(axes))


def steps(truth: pd.DataFrame, axes=("y", "x")) -> np.ndarray:
    """Frame-to-frame displacements of each particle (consecutive frames only)."""
    t = truth.sort_values(["particle", "frame"])
    d = t[list(axes)].diff().to_numpy()
    same = (t["particle"].diff() == 0) & (t["frame"].diff() == 1)
    return d[same.to_numpy()]


def blurred_msd_factor(n_sub: int, exposure: float, interval: float) -> float:
    """E[(mean of n_sub Brownian samples in frame 1 - same in frame 0)²] / (2 D interval).

    Exact, from Cov(B_s, B_t) = 2 D min(s, t), for samples at the sub-interval
    mid-points of the exposure (as the simulator places them).
    """
    offsets = (np.arange(n_sub) + 0.5) * exposure / n_sub
    times = np.concatenate([offsets, interval + offsets])
    weights = np.concatenate([-np.ones(n_sub), np.ones(n_sub)]) / n_sub
    cov = np.minimum.outer(times, times)
    return float(weights @ cov @ weights) / interval


# ---------------------------------------------------------------- physics
def test_msd_matches_stokes_einstein_per_axis_for_a_mixture():
    sim = NTASimulator(
        (128, 128), 20, n_particles=3000, diameters_nm=(100.0, 300.0), pixel_size_um=1.0,
        exposure_s=0, temperature_K=295.0, seed=0,
    )
    truth = sim.truth
    dt = sim.frame_interval_s
    for d_nm in (100.0, 300.0):
        sub = truth[truth.diameter_nm == d_nm]
        D = stokes_einstein_D(d_nm, 295.0, water_viscosity(295.0))
        assert np.allclose(sub.D_um2_s, D)
        dxy = steps(sub) * sim.pixel_size_um  # µm
        assert len(dxy) > 20000
        per_axis = (dxy**2).mean(axis=0) / (2 * D * dt)
        assert per_axis == pytest.approx([1.0, 1.0], abs=0.03)
        assert np.abs(dxy.mean(axis=0)).max() < 0.02 * np.sqrt(2 * D * dt)  # no spurious drift


def test_motion_blur_reduces_msd_as_exposure_averaging_predicts():
    # Full-frame exposure: continuous limit 1 - 2R with R = 1/6 (Michalet 2010).
    sim = NTASimulator((128, 128), 20, n_particles=3000, pixel_size_um=1.0, blur_steps=5, seed=1)
    D = sim.D_um2_s[0]
    msd = (steps(sim.truth) ** 2).mean() / (2 * D * sim.frame_interval_s)
    expected = blurred_msd_factor(5, sim.exposure_s, sim.frame_interval_s)
    assert expected == pytest.approx(1 - 1 / 3, abs=0.02)
    assert msd == pytest.approx(expected, rel=0.03)


def test_viscosity_and_temperature_enter_through_physics():
    sim = NTASimulator((32, 32), 1, temperature_K=310.0, diameters_nm=(200.0,), seed=0)
    assert sim.metadata["viscosity_Pa_s"] == pytest.approx(water_viscosity(310.0))
    assert sim.D_um2_s[0] == pytest.approx(stokes_einstein_D(200.0, 310.0, water_viscosity(310.0)))
    glycerol = NTASimulator((32, 32), 1, viscosity_Pa_s=0.01, seed=0)
    assert glycerol.metadata["viscosity_Pa_s"] == 0.01
    assert glycerol.D_um2_s[0] == pytest.approx(stokes_einstein_D(100.0, 298.15, 0.01))


def test_mixture_fractions_are_exact_at_start_and_kept_on_replenishment():
    sim = NTASimulator(
        (64, 64), 40, n_particles=400, diameters_nm=(100.0, 200.0), fractions=(3, 1),
        pixel_size_um=0.5, depth_um=1.0, seed=3,
    )
    truth = sim.truth
    first = truth[truth.frame == 0]
    share = (first.diameter_nm == 100.0).mean()
    assert share == pytest.approx(0.75, abs=0.04)
    newcomers = truth[truth.particle > truth[truth.frame == 0].particle.max()].drop_duplicates("particle")
    assert len(newcomers) > 500  # particles left the slab and new ones came in
    assert (newcomers.diameter_nm == 100.0).mean() == pytest.approx(0.75, abs=0.05)
    # a particle keeps its diameter for life
    assert (truth.groupby("particle").diameter_nm.nunique() == 1).all()


# -------------------------------------------------------------- rendering
def test_spots_render_at_their_true_subpixel_positions_with_blur():
    # Blurred spots: the light's centroid is the exposure-averaged truth position.
    shape = (128, 128)
    sim = NTASimulator(shape, 4, n_particles=12, diameters_nm=(500.0,), psf_sigma_px=1.3, seed=7, **NOISELESS)
    frames = list(sim.frames())
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    checked = 0
    for k, image in enumerate(frames):
        for y, x in isolated(sim.truth, k, shape, reach=12):
            w = image * ((np.abs(yy - y) <= 12) & (np.abs(xx - x) <= 12))
            cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
            assert abs(cy - y) < 0.01 and abs(cx - x) < 0.01
            checked += 1
    assert checked >= 8


def test_render_centroid_and_width_without_noise():
    # Off-centre sub-pixel spots; the pixel-integrated Gaussian has variance sigma² + 1/12.
    for y, x in [(20.3, 17.77), (19.5, 20.5), (21.0, 18.25)]:
        image = render_gaussian_spots((40, 40), [[y, x]], 1000.0, 1.5)
        yy, xx = np.mgrid[:40, :40]
        assert image.sum() == pytest.approx(1000.0, rel=1e-4)
        cy, cx = (image * yy).sum() / 1000.0, (image * xx).sum() / 1000.0
        assert abs(cy - y) < 3e-3 and abs(cx - x) < 3e-3  # 4-sigma window
        var_x = (image * (xx - cx) ** 2).sum() / 1000.0
        assert var_x == pytest.approx(1.5**2 + 1 / 12, rel=0.01)
    # a spot half outside the image keeps only the part that falls inside
    edge = render_gaussian_spots((40, 40), [[20.0, -0.5]], 1000.0, 1.5)
    assert edge.sum() == pytest.approx(500.0, rel=1e-3)


def test_photon_count_and_background_levels():
    # Noiseless: each in-focus spot carries `photons`; background adds a flat level.
    shape = (96, 96)
    sim = NTASimulator(
        shape, 3, n_particles=6, photons=5000.0, **{**NOISELESS, "background": 7.0}, **FROZEN, seed=2
    )
    frames = list(sim.frames())
    checked = 0
    for k, image in enumerate(frames):
        for y, x in isolated(sim.truth, k, shape, reach=9):
            yi, xi = int(round(y)), int(round(x))
            window = image[yi - 8 : yi + 9, xi - 8 : xi + 9]
            assert window.sum() - 7.0 * window.size == pytest.approx(5000.0, rel=1e-3)
            checked += 1
    assert checked >= 3
    assert np.min(frames) == pytest.approx(7.0, abs=1e-6)

    # Camera noise: mean = background·gain + baseline, variance = gain²·(background + read_noise²)
    empty = NTASimulator(
        (128, 128), 4, n_particles=0, background=50.0, read_noise=3.0, baseline=100, gain=2.0, seed=0
    )
    stack = np.stack(list(empty.frames())).astype(float)
    assert stack.mean() == pytest.approx(100 + 2.0 * 50.0, rel=0.005)
    assert stack.var() == pytest.approx(4.0 * (50.0 + 9.0), rel=0.03)
    assert empty.truth.empty and list(empty.truth.columns)[:3] == ["frame", "y", "x"]


def test_noisy_spot_photons_and_diameter_scaling():
    shape = (96, 96)
    sim = NTASimulator(
        shape, 40, n_particles=4, diameters_nm=(200.0,), photons=1000.0, photons_exponent=6,
        background=20.0, read_noise=2.0, baseline=100, psf_sigma_px=1.2, **FROZEN, seed=3,
    )
    assert sim.truth.photons.iloc[0] == pytest.approx(1000.0 * 2**6)
    frames = np.stack(list(sim.frames())).astype(float)
    spots = isolated(sim.truth, 0, shape, reach=9)  # frozen: same spots in every frame
    assert len(spots) >= 3
    for y, x in spots:
        yi, xi = int(round(y)), int(round(x))
        window = frames[:, yi - 8 : yi + 9, xi - 8 : xi + 9]
        per_frame = window.sum(axis=(1, 2)) - window[0].size * (100 + 20.0)
        assert per_frame.mean() == pytest.approx(64000.0, rel=0.005)
        # shot noise of signal + background, plus read noise
        assert per_frame.var() == pytest.approx(64000.0 + window[0].size * (20.0 + 4.0), rel=0.5)


def test_integer_frames_clip_instead_of_wrapping():
    sim = NTASimulator((32, 32), 1, n_particles=2, photons=1e7, dtype="uint8", seed=0, baseline=0)
    frame = next(sim.frames())
    assert frame.dtype == np.uint8 and frame.max() == 255 and frame.min() > 0


# ---------------------------------------------------------------------- 3D
def test_3d_volumes_have_an_axially_elongated_psf():
    shape = (64, 72, 72)
    sim = NTASimulator(
        shape, 1, n_particles=2, psf_sigma_px=(3.0, 1.2, 1.2), pixel_size_um=(0.3, 0.1, 0.1),
        exposure_s=0, **NOISELESS, seed=7,
    )
    volume = next(sim.frames())
    assert volume.shape == shape
    assert {"z", "y", "x"} <= set(sim.truth.columns)
    spots = isolated(sim.truth, 0, shape, reach=13)
    assert len(spots) >= 1
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    for z, y, x in spots:
        zi, yi, xi = (int(round(c)) for c in (z, y, x))
        sl = np.s_[zi - 13 : zi + 14, yi - 13 : yi + 14, xi - 13 : xi + 14]
        v = volume[sl]
        total = v.sum()
        centroid = [(v * g[sl]).sum() / total for g in (zz, yy, xx)]
        assert np.allclose(centroid, [z, y, x], atol=0.01)
        var = [(v * (g[sl] - c) ** 2).sum() / total for g, c in zip((zz, yy, xx), centroid)]
        assert var == pytest.approx([9 + 1 / 12, 1.44 + 1 / 12, 1.44 + 1 / 12], rel=0.01)
    assert sim.metadata["pixel_size_um"] == [0.3, 0.1, 0.1]


def test_3d_diffusion_per_axis_in_anisotropic_voxels():
    sim = NTASimulator(
        (32, 64, 64), 12, n_particles=1500, pixel_size_um=(2.0, 1.0, 1.0), exposure_s=0, seed=5
    )
    D, dt = sim.D_um2_s[0], sim.frame_interval_s
    d = steps(sim.truth, ("z", "y", "x")) * sim.pixel_size_um
    assert (d**2).mean(axis=0) / (2 * D * dt) == pytest.approx([1, 1, 1], abs=0.05)


# ----------------------------------------------------------- drift and flow
def test_uniform_drift_displaces_truth_as_specified():
    sim = NTASimulator(
        (64, 64), 10, n_particles=20, **FROZEN, pixel_size_um=0.2,
        frame_interval_s=0.1, drift_um_s=(-0.5, 2.0), seed=0,
    )
    d = steps(sim.truth)
    assert len(d) > 50
    assert np.allclose(d, [-0.25, 1.0], atol=2e-3)  # µm/s · s / (µm/px)
    assert np.allclose(sim.flow_velocity([[10.0, 10.0], [50.0, 3.0]]), [[-0.25, 1.0]] * 2)
    # particles are carried out of the field and new ones come in
    first, last = set(sim.truth[sim.truth.frame == 0].particle), set(sim.truth[sim.truth.frame == 9].particle)
    assert first - last and last - first


def test_vortex_rotates_about_the_centre_at_the_given_speed():
    speed = 3.0  # µm/s at the core radius = half the field
    sim = NTASimulator(
        (101, 101), 6, n_particles=60, **FROZEN, pixel_size_um=0.1,
        frame_interval_s=0.05, flow="vortex", flow_speed_um_s=speed, seed=1,
    )
    truth = sim.truth.sort_values(["particle", "frame"])
    c = 50.0
    r = np.hypot(truth.y - c, truth.x - c)
    # solid-body rotation inside the core: radius kept, angle advancing at speed / R
    inside = truth[r < 45]
    ang = np.unwrap(np.arctan2(inside.y - c, inside.x - c).to_numpy())
    g = inside.assign(angle=ang, r=r[r < 45])
    for _, track in g.groupby("particle"):
        if len(track) < 3 or (np.diff(track.frame) != 1).any():
            continue
        assert np.ptp(track.r) < 1e-3
        assert np.diff(track.angle) == pytest.approx(speed / 5.05 * 0.05, rel=1e-3)
    # flow_velocity: px/frame, tangential, |v| = speed at R
    v = sim.flow_velocity(np.array([[c, c + 50.5], [c + 20, c]]))
    assert v[0] == pytest.approx([speed * 0.05 / 0.1, 0.0])
    assert v[1] == pytest.approx([0.0, -speed * 0.05 / 0.1 * 20 / 50.5])


def test_shear_flow_and_callable_flow_displace_truth():
    shear = NTASimulator(
        (80, 80), 4, n_particles=40, **FROZEN, pixel_size_um=0.1,
        frame_interval_s=0.02, flow="shear", flow_speed_um_s=5.0, seed=2,
    )
    t = shear.truth.sort_values(["particle", "frame"])
    same = (t.particle.diff() == 0).to_numpy()
    dy, dx = t.y.diff().to_numpy()[same], t.x.diff().to_numpy()[same]
    y_prev = t.y.shift().to_numpy()[same]
    assert np.allclose(dy, 0, atol=2e-3)
    expected_dx = 5.0 * (y_prev - 39.5) / 40.0 * 0.02 / 0.1
    assert np.allclose(dx, expected_dx, atol=2e-3)

    def uniform_up(p_um):
        v = np.zeros_like(p_um)
        v[:, 0] = 1.0
        return v

    custom = NTASimulator(
        (40, 40), 3, n_particles=10, **FROZEN, pixel_size_um=0.5,
        frame_interval_s=0.5, flow=uniform_up, seed=3,
    )
    assert np.allclose(steps(custom.truth), [1.0, 0.0], atol=2e-3)
    assert custom.metadata["settings"]["flow"].startswith("callable:")


# ------------------------------------------------------- depth of field
def test_depth_of_field_makes_particles_appear_and_disappear():
    common = dict(n_particles=30, diameters_nm=(100.0,), pixel_size_um=0.2, seed=6)
    flat = NTASimulator((96, 96), 60, **common).truth
    deep = NTASimulator((96, 96), 60, depth_um=1.5, **common)
    truth = deep.truth
    assert truth.visible.mean() < 0.7 and truth.visible.any()
    assert "z_um" in truth.columns
    assert (truth.visible == (truth.z_um.abs() < 0.75)).all()
    # mean number in focus per frame is n_particles (the focal volume's mean)
    per_frame = truth[truth.visible].groupby("frame").size()
    assert per_frame.mean() == pytest.approx(30, rel=0.25)

    def run_lengths(t):
        t = t[t.visible].sort_values(["particle", "frame"])
        new = (t.particle.diff() != 0) | (t.frame.diff() != 1)
        return new.cumsum().value_counts().to_numpy()

    assert run_lengths(truth).mean() < 0.5 * run_lengths(flat).mean()
    # out-of-focus particles are not rendered
    frames = list(NTASimulator((96, 96), 3, depth_um=1.5, **{**common, **NOISELESS}).frames())
    for k, image in enumerate(frames):
        rows = truth[truth.frame == k]
        vis = rows[rows.visible][["y", "x"]].to_numpy()
        for y, x in rows[~rows.visible][["y", "x"]].to_numpy():
            if len(vis) == 0 or np.hypot(*(vis - (y, x)).T).min() > 12:
                assert image[int(round(y)), int(round(x))] < 1e-3
        for y, x in vis:
            assert image[int(round(y)), int(round(x))] > 1.0


# --------------------------------------------------- determinism and API
def test_same_seed_same_movie_and_truth_before_or_after_frames():
    kw = dict(n_particles=15, depth_um=2.0, flow="shear", flow_speed_um_s=1.0, seed=42)
    a = NTASimulator((48, 48), 8, **kw)
    truth_first = a.truth.copy()
    frames_a = np.stack(list(a.frames()))
    pd.testing.assert_frame_equal(truth_first, a.truth)
    frames_again = np.stack(list(a.frames()))
    np.testing.assert_array_equal(frames_a, frames_again)
    frames_b, truth_b, meta_b = simulate_movie((48, 48), 8, **kw)
    np.testing.assert_array_equal(frames_a, frames_b)
    pd.testing.assert_frame_equal(truth_first, truth_b)
    frames_c, truth_c, _ = simulate_movie((48, 48), 8, **{**kw, "seed": 43})
    assert not np.array_equal(frames_a, frames_c)
    assert frames_b.shape == (8, 48, 48) and frames_b.dtype == np.uint16
    # seed=None: random, but frames and truth still agree with each other
    sim = NTASimulator((48, 48), 2, n_particles=3, seed=None, **NOISELESS)
    first = next(sim.frames())
    vis = sim.truth[(sim.truth.frame == 0) & sim.truth.visible]
    for y, x in vis[["y", "x"]].to_numpy():
        if 3 < y < 44 and 3 < x < 44:
            assert first[int(round(y)), int(round(x))] > 1.0


def test_truth_columns_and_types():
    sim = NTASimulator((32, 32), 3, n_particles=5, seed=0)
    frames = list(sim.frames())
    assert len(frames) == 3 == len(sim)
    t = sim.truth
    assert list(t.columns) == ["frame", "y", "x", "particle", "diameter_nm", "D_um2_s", "photons", "visible"]
    assert t.frame.dtype == np.int64 and t.particle.dtype == np.int64 and t.visible.dtype == bool
    assert t.y.between(-0.5, 31.5).all() and t.x.between(-0.5, 31.5).all()


def test_metadata_is_json_and_goes_into_the_movie_store(tmp_path):
    sim = NTASimulator((24, 32), 4, n_particles=3, pixel_size_um=0.15, frame_interval_s=0.04,
                       exposure_s=0.01, depth_um=3.0, seed=9)
    meta = sim.metadata
    json.dumps(meta, allow_nan=False)
    for key in ("source", "pixel_size_um", "frame_interval_s", "exposure_s", "temperature_K", "viscosity_Pa_s"):
        assert key in meta, key
    assert meta["pixel_size_um"] == [0.15, 0.15] and meta["exposure_s"] == 0.01
    assert meta["settings"]["depth_um"] == 3.0 and meta["settings"]["seed"] == 9
    movie = write_movie(
        tmp_path / "movie.ome.zarr", sim.frames(), pixel_size_um=meta["pixel_size_um"],
        frame_interval_s=meta["frame_interval_s"], metadata=meta,
    )
    movie = open_movie(tmp_path / "movie.ome.zarr")
    assert movie.n_frames == 4 and movie.frame_shape == (24, 32)
    assert movie.metadata("viscosity_Pa_s") == pytest.approx(meta["viscosity_Pa_s"])
    assert movie.metadata("settings")["diameters_nm"] == [100.0]
    np.testing.assert_array_equal(movie.frames(0, 4), simulate_movie(**meta["settings"])[0])


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"n_particle": 5}, "n_particle"),
        ({"diameter_nm": 100}, "diameter_nm"),
        ({"exposure_s": 0.1, "frame_interval_s": 0.05}, "exposure_s"),
        ({"depth_um": 2.0, "shape": (8, 16, 16)}, "depth_um"),
        ({"fractions": (1, 2)}, "fractions"),
        ({"pixel_size_um": (0.1, 0.1, 0.1)}, "pixel_size_um"),
        ({"flow": "whirlpool"}, "flow"),
        ({"flow_speed_um_s": 2.0}, "flow_speed_um_s"),
        ({"temperature_K": 400.0}, "temperature_K"),
        ({"drift_um_s": (1.0,)}, "drift_um_s"),
        ({"shape": (16,)}, "shape"),
        ({"diameters_nm": (100, -5)}, "diameters_nm"),
        ({"photons": -1}, "photons"),
        ({"n_frames": 2.5}, "n_frames"),
    ],
)
def test_bad_parameters_raise_naming_the_key(kwargs, key):
    kwargs = {"shape": (16, 16), **kwargs}
    with pytest.raises(ValueError, match=key):
        NTASimulator(**kwargs)


def test_simulator_pickles_for_process_pools():
    import pickle

    sim = NTASimulator((32, 32), 3, n_particles=4, flow="vortex", flow_speed_um_s=2.0, seed=1)
    clone = pickle.loads(pickle.dumps(sim))
    np.testing.assert_array_equal(np.stack(list(sim.frames())), np.stack(list(clone.frames())))
    pd.testing.assert_frame_equal(sim.truth, clone.truth)
