"""Tests of the size stage (pipeline.size): estimators against their
analytic expectations on simulated motion, Walker's EM, the stage on real
files, replicate merging and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import size as sizing
from pipeline.io import read_table, table_metadata, write_movie, write_table
from pipeline.physics import stokes_einstein_D, water_viscosity

DT = 1 / 30
T = 298.15
ETA = water_viscosity(T)


# ---------------------------------------------------------------------------
# simulated motion
# ---------------------------------------------------------------------------


def blurred_tracks(
    n_tracks, n_frames, D, *, dt=DT, exposure=0.0, sigma=0.0, ndim=2, n_sub=20, seed=0
):
    """Positions (n_tracks, n_frames, ndim), µm, of Brownian particles seen
    through a rectangular exposure: each frame is the mean of ``n_sub``
    positions evenly spread over the exposure (midpoints of n_sub equal
    sub-intervals), plus Gaussian localization noise ``sigma`` per axis.

    Returns the positions and the exact blur factor of this discretised
    exposure, R = mean|s_i - s_j| / (2 dt) (-> t_E / (6 dt) for large n_sub).
    """
    rng = np.random.default_rng(seed)
    if exposure == 0:
        n_sub = 1
    h = exposure / n_sub
    # sample times: frame k, sub-sample i at k dt + (i + 1/2) h
    gaps = np.full(n_frames * n_sub, h)
    gaps[::n_sub] = dt - (n_sub - 1) * h
    gaps[0] = 0.0
    incr = rng.standard_normal((n_tracks, n_frames * n_sub, ndim)) * np.sqrt(2 * D * gaps)[None, :, None]
    path = np.cumsum(incr, axis=1).reshape(n_tracks, n_frames, n_sub, ndim)
    pos = path.mean(axis=2) + rng.standard_normal((n_tracks, n_frames, ndim)) * sigma
    s = (np.arange(n_sub) + 0.5) * h
    R = np.mean(np.abs(s[:, None] - s[None, :])) / (2 * dt)
    return pos, R


def tracks_table(pos_um, pixel_size_um=0.1, frames=None, first_particle=0):
    """A link-stage table (pixels) from positions (n_tracks, n_frames, ndim)."""
    n_tracks, n_frames, ndim = pos_um.shape
    cols = ["z", "y", "x"][3 - ndim :]
    px = np.broadcast_to(np.asarray(pixel_size_um, dtype=float), (ndim,))
    frame = np.tile(np.arange(n_frames) if frames is None else np.asarray(frames), n_tracks)
    df = pd.DataFrame(pos_um.reshape(-1, ndim) / px, columns=cols)
    df.insert(0, "frame", frame)
    df["particle"] = np.repeat(np.arange(n_tracks) + first_particle, n_frames)
    return df


# ---------------------------------------------------------------------------
# CVE
# ---------------------------------------------------------------------------


def test_cve_matches_formula_on_a_hand_example():
    steps = np.array([[0.1, -0.2], [0.3, 0.1], [-0.2, 0.2], [0.05, -0.1]])
    R = 0.05
    msq = np.mean(steps**2)
    cov = np.mean(steps[1:] * steps[:-1])
    D, s2 = sizing.cve(steps, DT, R)
    assert D == pytest.approx(msq / (2 * DT) + cov / DT)
    # σ² = R <Δx²> + (2R − 1) <Δx_n Δx_n+1>: a product, not (2R − 1) + cov
    assert s2 == pytest.approx(R * msq + (2 * R - 1) * cov)
    assert s2 != pytest.approx(R * msq + (2 * R - 1) + cov)
    D_known, s2_known = sizing.cve(steps, DT, R, sigma=0.03)
    assert D_known == pytest.approx((msq - 2 * 0.03**2) / (2 * (1 - 2 * R) * DT))
    assert s2_known == pytest.approx(0.03**2)


def test_cve_unbiased_with_noise_and_motion_blur():
    D_true, sigma, exposure = 2.0, 0.05, DT * 0.8
    pos, R = blurred_tracks(3000, 21, D_true, exposure=exposure, sigma=sigma, seed=1)
    assert R == pytest.approx(exposure / (6 * DT), rel=0.01)
    est = np.array([sizing.cve(np.diff(p, axis=0), DT, R) for p in pos])
    D_hat, s2_hat = est[:, 0], est[:, 1]
    se_D = D_hat.std(ddof=1) / np.sqrt(len(D_hat))
    se_s2 = s2_hat.std(ddof=1) / np.sqrt(len(s2_hat))
    # unbiased: within 4 standard errors, and the standard error is small
    assert abs(D_hat.mean() - D_true) < 4 * se_D
    assert se_D < 0.01 * D_true
    assert abs(s2_hat.mean() - sigma**2) < 4 * se_s2
    # ignoring blur (R = 0) misreads σ²: the test can tell
    s2_no_blur = np.mean([sizing.cve(np.diff(p, axis=0), DT, 0.0)[1] for p in pos])
    assert abs(s2_no_blur - sigma**2) > 10 * se_s2


def test_cve_known_sigma_is_unbiased():
    D_true, sigma, exposure = 1.0, 0.04, DT / 2
    pos, R = blurred_tracks(2000, 11, D_true, exposure=exposure, sigma=sigma, seed=2)
    D_hat = np.array([sizing.cve(np.diff(p, axis=0), DT, R, sigma=sigma)[0] for p in pos])
    se = D_hat.std(ddof=1) / np.sqrt(len(D_hat))
    assert abs(D_hat.mean() - D_true) < 4 * se
    # the naive estimator <Δx²>/(2Δt) is biased by the noise and the blur
    naive = np.mean([np.mean(np.diff(p, axis=0) ** 2) / (2 * DT) for p in pos])
    assert abs(naive - D_true) > 10 * se


def test_cve_rejects_too_few_steps_and_bad_interval():
    with pytest.raises(ValueError, match="at least 2 steps"):
        sizing.cve(np.zeros((1, 2)), DT)
    with pytest.raises(ValueError, match="frame_interval_s"):
        sizing.cve(np.ones((5, 2)), 0.0)


def test_track_diffusion_3d_anisotropic_pixels():
    D_true = 1.5
    pos, R = blurred_tracks(400, 31, D_true, ndim=3, sigma=0.02, exposure=DT / 2, seed=3)
    px = (0.3, 0.1, 0.1)
    table = tracks_table(pos, pixel_size_um=px)
    out = sizing.track_diffusion(table, pixel_size_um=px, frame_interval_s=DT, exposure_s=DT / 2)
    assert len(out) == 400
    se = out["D_um2_s"].std(ddof=1) / np.sqrt(len(out))
    assert abs(out["D_um2_s"].mean() - D_true) < 4 * se
    # treating the z pixels as 0.1 µm would be far off
    wrong = sizing.track_diffusion(table, pixel_size_um=0.1, frame_interval_s=DT, exposure_s=DT / 2)
    assert wrong["D_um2_s"].mean() < 0.8 * D_true  # (1/9 + 1 + 1)/3 of it


def test_gaps_do_not_bias_D():
    D_true = 2.0
    pos, R = blurred_tracks(1500, 30, D_true, sigma=0.03, seed=4)
    table = tracks_table(pos)
    # knock out ~20 % of the rows (linking with memory leaves such gaps)
    rng = np.random.default_rng(5)
    keep = rng.random(len(table)) > 0.2
    gappy = table[keep]
    out = sizing.track_diffusion(gappy, pixel_size_um=0.1, frame_interval_s=DT, min_steps=3)
    se = out["D_um2_s"].std(ddof=1) / np.sqrt(len(out))
    assert abs(out["D_um2_s"].mean() - D_true) < 4 * se
    # n_steps counts single-frame steps only
    first = gappy[gappy.particle == 0]
    assert out.set_index("particle").loc[0, "n_steps"] == int(np.sum(np.diff(first.frame) == 1))
    # reading a 2Δt step as Δt (renumbering frames) would bias D high
    renumbered = gappy.copy()
    renumbered["frame"] = renumbered.groupby("particle").cumcount()
    biased = sizing.track_diffusion(renumbered, pixel_size_um=0.1, frame_interval_s=DT, min_steps=3)
    assert biased["D_um2_s"].mean() - D_true > 10 * se


def test_msd_method_and_optimal_points():
    def p_min(f, L):
        return int(np.floor(f * L / (f**3 + L**3) ** (1 / 3)))

    for x, N in ((0.0, 100), (10.0, 100), (3.0, 30), (50.0, 500)):
        L_b = 3 + (4.5 * N**0.4 - 8.5) ** 1.2
        assert sizing.optimal_msd_points(x, N) == max(2, p_min(2 + 1.6 * x**0.51, L_b))
        L_a = 0.8 + 0.564 * N
        assert sizing.optimal_msd_points(x, N, "offset") == max(2, p_min(2 + 1.35 * x**0.6, L_a))
    assert sizing.optimal_msd_points(0.0, 100) == 2  # no noise: the first two points
    assert sizing.optimal_msd_points(10.0, 100) == 7
    D_true, sigma = 1.0, 0.05
    pos, R = blurred_tracks(800, 40, D_true, sigma=sigma, exposure=DT / 2, seed=6)
    table = tracks_table(pos)
    out = sizing.track_diffusion(table, pixel_size_um=0.1, frame_interval_s=DT, exposure_s=DT / 2, method="msd")
    se = out["D_um2_s"].std(ddof=1) / np.sqrt(len(out))
    assert abs(out["D_um2_s"].mean() - D_true) < 4 * se
    assert abs(np.mean(out["sigma2_um2"]) - sigma**2) < 0.3 * sigma**2
    assert (out["msd_points"] >= 2).all()


# ---------------------------------------------------------------------------
# flow and drift
# ---------------------------------------------------------------------------


def test_flow_columns_are_subtracted_per_step():
    D_true = 1.0
    pos, _ = blurred_tracks(800, 20, D_true, sigma=0.0, seed=7)
    flow_px = np.array([0.8, -1.5])  # px per frame, a strong uniform flow
    table = tracks_table(pos)
    table[["y", "x"]] += table["frame"].to_numpy()[:, None] * flow_px
    table["flow_dy"], table["flow_dx"] = flow_px
    on = sizing.track_diffusion(table, pixel_size_um=0.1, frame_interval_s=DT)
    off = sizing.track_diffusion(table, pixel_size_um=0.1, frame_interval_s=DT, subtract_flow=False)
    se = on["D_um2_s"].std(ddof=1) / np.sqrt(len(on))
    assert abs(on["D_um2_s"].mean() - D_true) < 4 * se
    assert on.attrs["motion_columns"] == ["flow_dy", "flow_dx"]
    # CVE is blind to a uniform flow only in its D term's covariance part: the
    # uncorrected estimate must be visibly off
    assert off["D_um2_s"].mean() > D_true * 1.5
    # the ensemble MSD is corrected too: linear in lag, not quadratic
    emsd = sizing.ensemble_msd(table, pixel_size_um=0.1, frame_interval_s=DT, max_lag=10)
    n, A = sizing.fit_powerlaw(emsd["lagt_s"], emsd["msd_um2"])
    assert n == pytest.approx(1.0, abs=0.1)
    assert A == pytest.approx(4 * D_true, rel=0.1)


def test_drift_columns_are_subtracted():
    D_true = 1.0
    pos, _ = blurred_tracks(800, 20, D_true, seed=8)
    table = tracks_table(pos)
    drift = 0.05 * table["frame"].to_numpy() ** 2  # accelerating drift, px
    table["y"] += drift
    table["drift_y"], table["drift_x"] = drift, 0.0
    on = sizing.track_diffusion(table, pixel_size_um=0.1, frame_interval_s=DT)
    se = on["D_um2_s"].std(ddof=1) / np.sqrt(len(on))
    assert abs(on["D_um2_s"].mean() - D_true) < 4 * se
    assert on.attrs["motion"] == "drift"
    table = table.drop(columns=["drift_x"])
    with pytest.raises(ValueError, match="drift_x"):
        sizing.track_diffusion(table, pixel_size_um=0.1, frame_interval_s=DT)


# ---------------------------------------------------------------------------
# ensemble MSD
# ---------------------------------------------------------------------------


def test_ensemble_msd_equals_trackpy_emsd_with_gaps():
    import trackpy

    pos, _ = blurred_tracks(30, 40, 1.0, sigma=0.02, seed=9)
    table = tracks_table(pos, pixel_size_um=0.1)
    rng = np.random.default_rng(10)
    table = table[rng.random(len(table)) > 0.15].reset_index(drop=True)
    ours = sizing.ensemble_msd(table, pixel_size_um=0.1, frame_interval_s=DT, max_lag=20)
    theirs = trackpy.emsd(table, mpp=0.1, fps=1 / DT, max_lagtime=20)
    np.testing.assert_allclose(ours["lagt_s"], theirs.index.to_numpy())
    np.testing.assert_allclose(ours["msd_um2"], theirs.to_numpy(), rtol=1e-9)
    n, A = sizing.fit_powerlaw(ours["lagt_s"], ours["msd_um2"])
    fit = trackpy.utils.fit_powerlaw(theirs, plot=False)
    assert n == pytest.approx(float(fit["n"].iloc[0]))
    assert A == pytest.approx(float(fit["A"].iloc[0]))


# ---------------------------------------------------------------------------
# Walker's EM
# ---------------------------------------------------------------------------


def gamma_draws(diameters, fractions, n_tracks, k_range, *, sigma=0.0, R=0.0, seed=0):
    """m_j for 2D tracks: Gamma(k, θ/k) with θ = 4(DΔt + σ² − 2RDΔt)."""
    rng = np.random.default_rng(seed)
    d = rng.choice(diameters, size=n_tracks, p=fractions)
    k = rng.integers(k_range[0], k_range[1] + 1, size=n_tracks)
    D = stokes_einstein_D(d, T, ETA)
    theta = 4 * (D * DT + sigma**2 - 2 * R * D * DT)
    return rng.gamma(k, theta / k), k, d


def test_walker_recovers_two_component_distribution():
    m, k, _ = gamma_draws([100.0, 200.0], [0.3, 0.7], 3000, (5, 30), sigma=0.03, R=0.05, seed=11)
    grid = np.exp(np.linspace(np.log(30), np.log(800), 150))
    dist = sizing.walker_distribution(
        m, k, frame_interval_s=DT, temperature_K=T, viscosity_Pa_s=ETA, grid_nm=grid,
        sigma_um=0.03, R=0.05,
    )
    w, d = dist["weight"].to_numpy(), dist["diameter_nm"].to_numpy()
    assert w.sum() == pytest.approx(1.0)
    near100 = w[(d > 90) & (d < 111)].sum()
    near200 = w[(d > 180) & (d < 222)].sum()
    assert near100 == pytest.approx(0.3, abs=0.05)
    assert near200 == pytest.approx(0.7, abs=0.05)
    assert near100 + near200 > 0.93
    assert dist.attrs["converged"]


def test_walker_3d_uses_the_3d_gamma_shape():
    rng = np.random.default_rng(12)
    k = rng.integers(5, 20, size=2000)
    D = stokes_einstein_D(150.0, T, ETA)
    theta = 6 * D * DT  # 3D: mean squared step
    m = rng.gamma(1.5 * k, theta / (1.5 * k))
    grid = np.exp(np.linspace(np.log(50), np.log(500), 120))
    dist = sizing.walker_distribution(
        m, k, frame_interval_s=DT, temperature_K=T, viscosity_Pa_s=ETA, grid_nm=grid, ndim=3
    )
    figs = sizing.distribution_figures(grid_nm=grid, weights=dist["weight"].to_numpy())
    assert figs["mode"] == pytest.approx(150.0, rel=0.04)
    assert figs["d50"] == pytest.approx(150.0, rel=0.04)


def test_walker_corrects_short_track_bias_the_naive_histogram_keeps():
    D = stokes_einstein_D(200.0, T, ETA)
    pos, _ = blurred_tracks(1000, 7, D, sigma=0.0, seed=14)  # 6 steps per track
    table = tracks_table(pos)
    sizes, dist, summary = sizing.size_tracks(
        table, pixel_size_um=0.1, frame_interval_s=DT, exposure_s=None, temperature_K=T,
        viscosity_Pa_s=None, sigma_um=0.0, n_bootstrap=10, grid_points=120, min_steps=5,
    )
    assert summary["n_tracks"] == 1000
    # naive per-track diameters: E[1/D̂] = (1/D) k/(k-1) -> mean biased high
    assert summary["naive_mean_nm"] > 1.15 * 200.0
    assert summary["walker_mean_nm"] == pytest.approx(200.0, rel=0.05)
    assert summary["walker_mode_nm"] == pytest.approx(200.0, rel=0.05)
    lo, hi = summary["d50_ci_nm"]
    assert lo <= summary["walker_d50_nm"] <= hi and hi - lo < 40


# ---------------------------------------------------------------------------
# physics and conditions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("celsius,mpas", [(20, 1.002), (25, 0.890), (37, 0.692)])
def test_water_viscosity_against_tables(celsius, mpas):
    assert water_viscosity(273.15 + celsius) * 1e3 == pytest.approx(mpas, rel=0.015)


def test_unknown_and_bad_parameters_name_the_key():
    with pytest.raises(ValueError, match="size.grid_pionts"):
        sizing.check_params({"grid_pionts": 10})
    with pytest.raises(ValueError, match="size.method"):
        sizing.check_params({"method": "fft"})
    with pytest.raises(ValueError, match="size.grid_max_nm"):
        sizing.check_params({"grid_min_nm": 500, "grid_max_nm": 100})


def test_size_tracks_needs_temperature_and_a_frame_interval():
    pos, _ = blurred_tracks(20, 10, 1.0, seed=15)
    table = tracks_table(pos)
    with pytest.raises(ValueError, match="trackflow.temperature_K"):
        sizing.size_tracks(table, pixel_size_um=0.1, frame_interval_s=DT, exposure_s=None,
                           temperature_K=None, viscosity_Pa_s=None)
    with pytest.raises(ValueError, match="trackflow.frame_interval_s"):
        sizing.size_tracks(table, pixel_size_um=0.1, frame_interval_s=0.0, exposure_s=None,
                           temperature_K=T, viscosity_Pa_s=None)


# ---------------------------------------------------------------------------
# the stage on files
# ---------------------------------------------------------------------------


def make_run(directory: Path, *, D=2.0, seed=0, metadata=None, n_tracks=60) -> tuple[Path, Path]:
    """A tiny real movie store and a tracks table in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    frames = np.random.default_rng(seed).integers(0, 50, size=(20, 32, 48), dtype=np.uint8)
    meta = {"temperature_K": T, "exposure_s": DT / 2, "source": "test"}
    meta.update(metadata or {})
    meta = {k: v for k, v in meta.items() if v is not None}
    movie = directory / "movie.ome.zarr"
    write_movie(movie, frames, pixel_size_um=0.1, frame_interval_s=DT, metadata=meta)
    pos, _ = blurred_tracks(n_tracks, 20, D, sigma=0.02, exposure=DT / 2, seed=seed)
    table = tracks_table(pos)
    tracks = directory / "tracks.parquet"
    write_table(table, tracks, stage="link", params={})
    return tracks, movie


def run_paths(directory: Path):
    return directory / "sizes.parquet", directory / "distribution.csv", directory / "summary.json"


SMALL = {"n_bootstrap": 5, "grid_points": 80, "histogram_bins": 40, "depth_um": 5.0, "dilution": 10.0}


def test_run_writes_sizes_distribution_and_summary(tmp_path):
    tracks, movie = make_run(tmp_path / "r1")
    sizes, distribution, summary = run_paths(tmp_path / "r1")
    result = sizing.run(tracks, movie, sizes, distribution, summary, dict(SMALL))
    table = read_table(sizes, required=("particle", "n_steps", "D_um2_s", "sigma_um", "diameter_nm"))
    assert len(table) == 60
    meta = table_metadata(sizes)
    assert meta["stage"] == "size" and meta["params"]["depth_um"] == 5.0
    dist = pd.read_csv(distribution)
    for col in ("diameter_nm", "walker_density", "naive_density", "walker_count", "concentration_per_ml"):
        assert col in dist.columns
    assert len(dist) == 40
    assert dist["walker_fraction"].sum() == pytest.approx(1.0, abs=1e-5)  # 40 bins written to 6 digits
    assert dist["naive_count"].sum() == (table["diameter_nm"] > 0).sum()
    on_disk = json.loads(summary.read_text())
    assert on_disk == result
    for key in (
        "walker_mean_nm", "walker_mode_nm", "walker_sd_nm", "walker_d10_nm", "walker_d50_nm",
        "walker_d90_nm", "naive_mean_nm", "naive_mode_nm", "naive_sd_nm", "naive_d10_nm",
        "naive_d50_nm", "naive_d90_nm", "mode_ci_nm", "d50_ci_nm", "n_tracks", "particles_per_frame",
        "concentration_per_ml", "depth_um", "temperature_K", "viscosity_Pa_s", "viscosity_source",
        "frame_interval_s", "exposure_s", "blur_R", "msd_powerlaw_n", "msd_powerlaw_A", "emsd",
        "trackflow_version", "params",
    ):
        assert key in on_disk, key
    assert on_disk["temperature_K"] == T
    assert on_disk["viscosity_source"].startswith("water")
    assert on_disk["blur_R"] == pytest.approx(1 / 12)
    assert on_disk["particles_per_frame"] == pytest.approx(60.0)
    # 60 particles in 3.2 x 4.8 µm x 5 µm, diluted 10x
    expected = 60 / (3.2 * 4.8 * 5.0) * 1e12 * 10
    assert on_disk["concentration_per_ml"] == pytest.approx(expected, rel=1e-6)
    assert dist["concentration_per_ml"].sum() == pytest.approx(expected, rel=1e-6)
    assert on_disk["msd_powerlaw_n"] == pytest.approx(1.0, abs=0.2)
    assert on_disk["emsd"][0]["lagt_s"] == pytest.approx(DT)
    expected_d = 3 * np.pi * ETA * 1e-12
    assert on_disk["walker_d50_nm"] == pytest.approx(1.380649e-23 * T / (expected_d * 2.0) * 1e9, rel=0.25)


def test_run_on_a_3d_movie_uses_its_z_extent_as_depth(tmp_path):
    frames = np.zeros((12, 6, 16, 20), dtype=np.uint16)
    movie = tmp_path / "movie.ome.zarr"
    write_movie(movie, frames, pixel_size_um=(0.5, 0.1, 0.1), frame_interval_s=DT,
                metadata={"temperature_K": T, "exposure_s": 0.0})
    D_true = 1.0
    pos, _ = blurred_tracks(300, 12, D_true, ndim=3, sigma=0.0, seed=16)
    tracks = tmp_path / "tracks.parquet"
    write_table(tracks_table(pos, pixel_size_um=(0.5, 0.1, 0.1)), tracks, stage="link")
    result = sizing.run(tracks, movie, *run_paths(tmp_path), {"n_bootstrap": 0, "grid_points": 100})
    assert result["ndim"] == 3 and result["pixel_size_um"] == [0.5, 0.1, 0.1]
    assert result["depth_um"] == pytest.approx(3.0) and result["depth_source"] == "the movie's z extent"
    assert result["concentration_per_ml"] == pytest.approx(300 / (1.6 * 2.0 * 3.0) * 1e12)
    d_true = 1.380649e-23 * T / (3 * np.pi * ETA * D_true * 1e-12) * 1e9
    assert result["walker_d50_nm"] == pytest.approx(d_true, rel=0.05)
    sizes = read_table(tmp_path / "sizes.parquet")
    assert sizes["D_um2_s"].mean() == pytest.approx(D_true, rel=0.05)


def test_run_without_depth_reports_no_concentration(tmp_path):
    tracks, movie = make_run(tmp_path / "r")
    result = sizing.run(tracks, movie, *run_paths(tmp_path / "r"), {"n_bootstrap": 0, "grid_points": 60})
    assert result["concentration_per_ml"] is None and result["depth_um"] is None
    assert any("depth_um" in note for note in result["notes"])
    assert result["mode_ci_nm"] is None


def test_run_with_no_tracks_writes_outputs_with_a_note(tmp_path):
    _, movie = make_run(tmp_path / "r")
    empty = tmp_path / "r" / "empty.parquet"
    columns = {"frame": "int64", "y": "float64", "x": "float64", "particle": "int64"}
    write_table(pd.DataFrame({c: pd.Series([], dtype=t) for c, t in columns.items()}), empty, stage="link")
    result = sizing.run(empty, movie, *run_paths(tmp_path / "r"), {"n_bootstrap": 5})
    assert result["n_tracks"] == 0 and result["walker_mode_nm"] is None
    assert "no valid tracks: no size distribution" in result["notes"]
    assert len(read_table(tmp_path / "r" / "sizes.parquet")) == 0


def test_run_missing_temperature_names_the_key(tmp_path):
    tracks, movie = make_run(tmp_path / "r", metadata={"temperature_K": None})
    with pytest.raises(ValueError, match="trackflow.temperature_K"):
        sizing.run(tracks, movie, *run_paths(tmp_path / "r"), {})
    # the config may supply it, and a given viscosity wins over water's
    result = sizing.run(
        tracks, movie, *run_paths(tmp_path / "r"),
        {"temperature_K": 300.0, "viscosity_Pa_s": 1.5e-3, "n_bootstrap": 0, "grid_points": 60},
    )
    assert result["temperature_K"] == 300.0 and result["viscosity_Pa_s"] == 1.5e-3
    assert result["viscosity_source"].startswith("config")


def test_run_zero_frame_interval_names_the_key(tmp_path):
    tracks, movie = make_run(tmp_path / "r")
    meta_path = movie / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][0] = 0.0
    meta["attributes"]["trackflow"]["frame_interval_s"] = 0.0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="frame_interval_s"):
        sizing.run(tracks, movie, *run_paths(tmp_path / "r"), {})


def test_run_rejects_unknown_keys_and_bad_tracks(tmp_path):
    tracks, movie = make_run(tmp_path / "r")
    with pytest.raises(ValueError, match="size.min_step"):
        sizing.run(tracks, movie, *run_paths(tmp_path / "r"), {"min_step": 3})
    bad = tmp_path / "bad.parquet"
    write_table(pd.DataFrame({"frame": [0], "y": [1.0], "x": [1.0]}), bad, stage="link")
    with pytest.raises(ValueError, match="particle"):
        sizing.run(bad, movie, *run_paths(tmp_path / "r"), {})


# ---------------------------------------------------------------------------
# replicates
# ---------------------------------------------------------------------------


def test_merge_replicates_mean_and_standard_error():
    d = np.array([100.0, 200.0, 300.0])
    a = pd.DataFrame({"diameter_nm": d, "walker_fraction": [0.2, 0.6, 0.2], "naive_count": [1, 5, 2]})
    b = pd.DataFrame({"diameter_nm": d, "walker_fraction": [0.4, 0.4, 0.2], "naive_count": [3, 3, 2]})
    merged, summary = sizing.merge_replicates(
        [a, b], [{"walker_mode_nm": 190.0, "n_tracks": 10}, {"walker_mode_nm": 210.0, "n_tracks": 30}]
    )
    np.testing.assert_allclose(merged["walker_fraction"], [0.3, 0.5, 0.2])
    np.testing.assert_allclose(merged["walker_fraction_sem"], [0.1, 0.1, 0.0], atol=1e-12)
    assert summary["walker_mode_nm"] == pytest.approx(200.0)
    assert summary["walker_mode_nm_sem"] == pytest.approx(10.0)
    assert summary["n_tracks_total"] == 40 and summary["n_replicates"] == 2
    other = a.assign(diameter_nm=d * 1.1)
    with pytest.raises(ValueError, match="different size bins"):
        sizing.merge_replicates([a, other], [{}, {}])


def test_run_group_merges_real_runs(tmp_path):
    params = dict(SMALL)
    dists, summs = [], []
    for i, D in enumerate((2.0, 2.2)):
        tracks, movie = make_run(tmp_path / f"r{i}", D=D, seed=i)
        sizes, dist, summ = run_paths(tmp_path / f"r{i}")
        sizing.run(tracks, movie, sizes, dist, summ, params, run_name=f"r{i}")
        dists.append(dist)
        summs.append(summ)
    out = tmp_path / "groups" / "g"
    result = sizing.run_group("g", dists, summs, out / "distribution.csv", out / "summary.json", params)
    merged = pd.read_csv(out / "distribution.csv")
    assert {"diameter_nm", "walker_density", "walker_density_sem", "naive_density"} <= set(merged.columns)
    each = [json.loads(s.read_text()) for s in summs]
    assert result["walker_d50_nm"] == pytest.approx(np.mean([e["walker_d50_nm"] for e in each]))
    assert result["runs"] == ["r0", "r1"] and result["group"] == "g"
    assert json.loads((out / "summary.json").read_text()) == result


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def test_cli_size_and_size_group(tmp_path, capsys):
    from pipeline.cli import main

    tracks, movie = make_run(tmp_path / "r0")
    rc = main(["size", str(tracks), str(movie), "--params", json.dumps(SMALL), "--set", "n_bootstrap=0"])
    assert rc == 0
    assert "tracks: mode" in capsys.readouterr().out
    summary = json.loads((tmp_path / "r0" / "summary.json").read_text())
    assert summary["params"]["n_bootstrap"] == 0 and summary["n_tracks"] == 60
    nta = pd.read_csv(tmp_path / "r0" / "summary.csv")
    assert len(nta) == 1 and nta.loc[0, "Valid tracks"] == 60
    assert nta.loc[0, "D50 (nm)"] == pytest.approx(summary["walker_d50_nm"], rel=1e-5)
    rc = main(["size-group", "g", str(tmp_path / "r0"), "--outdir", str(tmp_path / "g")])
    assert rc == 0 and (tmp_path / "g" / "summary.json").exists()
    group_rows = pd.read_csv(tmp_path / "g" / "summary.csv")
    assert list(group_rows["Sample"]) == ["r0", "g (mean)", "g (standard error)"]
    # a typo in a key is a clear error, exit status 2
    rc = main(["size", str(tracks), str(movie), "--set", "n_bootstrp=3"])
    assert rc == 2
    assert "size.n_bootstrp" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# real-data safeguards: pooled estimates, outliers, cross-checks, QC, EMS
# ---------------------------------------------------------------------------


def test_pooled_covariance_recovers_D_and_sigma_with_blur():
    D, sigma, exposure = 0.8, 0.04, DT
    pos, R = blurred_tracks(400, 12, D, exposure=exposure, sigma=sigma, seed=21)
    sizes = sizing.track_diffusion(tracks_table(pos), pixel_size_um=0.1, frame_interval_s=DT, exposure_s=exposure)
    assert sizes.attrs["pooled_D_um2_s"] == pytest.approx(D, rel=0.03)
    assert np.sqrt(sizes.attrs["pooled_sigma2_um2"]) == pytest.approx(sigma, rel=0.25)  # ~1.5 standard errors
    # negative control: blur ignored, the pooled variance goes wrong by the blur term 2R·D·Δt
    unblurred = sizing.track_diffusion(tracks_table(pos), pixel_size_um=0.1, frame_interval_s=DT, exposure_s=None)
    assert unblurred.attrs["pooled_sigma2_um2"] < sigma**2 - R * D * DT


def test_outlier_steps_find_jumps_to_a_neighbour():
    D = 0.5
    pos, _ = blurred_tracks(300, 30, D, sigma=0.02, seed=22)
    jumped = np.arange(0, 300, 10)  # 30 tracks jump 3 µm at step 15 (a mislink to a neighbour)
    pos[jumped, 15:, 1] += 3.0
    table = tracks_table(pos)
    kept = sizing.track_diffusion(table, pixel_size_um=0.1, frame_interval_s=DT, outlier_p=1e-4)
    flagged = set(kept.loc[kept["n_outlier_steps"] > 0, "particle"])
    assert set(jumped) <= flagged and len(flagged - set(jumped)) <= 2
    removed = sizing.track_diffusion(table, pixel_size_um=0.1, frame_interval_s=DT, outlier_p=1e-4,
                                     remove_outliers=True)
    assert removed.attrs["pooled_D_um2_s"] == pytest.approx(D, rel=0.05)
    assert kept.attrs["pooled_D_um2_s"] > 1.3 * D  # kept, the jumps inflate D


def test_summary_cross_checks_agree_on_a_monodisperse_sample_and_flag_a_mixture():
    D = stokes_einstein_D(200.0, T, ETA)
    pos, _ = blurred_tracks(400, 20, D, exposure=DT, sigma=0.03, seed=23)
    _, _, mono = sizing.size_tracks(tracks_table(pos), pixel_size_um=0.1, frame_interval_s=DT, exposure_s=DT,
                                    temperature_K=T, viscosity_Pa_s=None, n_bootstrap=0)
    checks = mono["cross_checks"]
    assert checks["agree"] is True and checks["max_deviation"] <= checks["tolerance"]
    assert checks["pooled_cve_nm"] == pytest.approx(200.0, rel=0.05)
    assert checks["emsd_nm"] == pytest.approx(200.0, rel=0.1)
    assert not [f for f in mono["qc"] if f["level"] == "warning"]
    fast, _ = blurred_tracks(400, 20, stokes_einstein_D(60.0, T, ETA), exposure=DT, sigma=0.03, seed=24)
    mixed = tracks_table(np.concatenate([pos, fast]))
    _, _, mix = sizing.size_tracks(mixed, pixel_size_um=0.1, frame_interval_s=DT, exposure_s=DT,
                                   temperature_K=T, viscosity_Pa_s=None, n_bootstrap=0)
    assert mix["cross_checks"]["agree"] is False
    (flag,) = [f for f in mix["qc"] if f["code"] == "sizes_disagree"]
    assert flag["level"] == "warning" and "pooled cve" in flag["message"]


def test_unknown_exposure_and_a_zero_localization_error_are_flagged():
    D = stokes_einstein_D(200.0, T, ETA)
    pos, _ = blurred_tracks(300, 20, D, exposure=DT, sigma=0.0, seed=25)
    _, _, s = sizing.size_tracks(tracks_table(pos), pixel_size_um=0.1, frame_interval_s=DT, exposure_s=None,
                                 temperature_K=T, viscosity_Pa_s=None, n_bootstrap=0)
    codes = {f["code"] for f in s["qc"]}
    assert {"exposure_unknown", "negative_localization_variance", "localization_error_zero"} <= codes
    assert s["localization"]["blur_source"].startswith("assumed") and s["localization"]["blur_R"] == 0.0
    # negative control: the exposure given, none of these
    _, _, ok = sizing.size_tracks(tracks_table(pos), pixel_size_um=0.1, frame_interval_s=DT, exposure_s=DT,
                                  temperature_K=T, viscosity_Pa_s=None, n_bootstrap=0)
    assert not {"exposure_unknown", "negative_localization_variance"} & {f["code"] for f in ok["qc"]}


def test_ems_width_zero_is_walkers_em_and_smoothing_is_chosen_from_the_candidates():
    from pipeline.size import ems as ems_module
    from pipeline.size.walker import diameter_grid, walker_em, walker_likelihood

    D = stokes_einstein_D(150.0, T, ETA)
    rng = np.random.default_rng(26)
    k = rng.integers(3, 12, size=400)
    m = rng.gamma(k, 4 * D * DT / k)
    grid = diameter_grid(10, 3000, 120)
    P = walker_likelihood(m, k, frame_interval_s=DT, temperature_K=T, viscosity_Pa_s=ETA, grid_nm=grid)
    p0, _, _ = ems_module.fit_distribution(P, grid, 0.0)
    np.testing.assert_array_equal(p0, walker_em(P)[0][0])
    width, scores = ems_module.choose_smoothing(P, grid, folds=4)
    assert width in ems_module.SMOOTHING_CANDIDATES and len(scores["mean"]) == len(ems_module.SMOOTHING_CANDIDATES)
    smooth, _, converged = ems_module.fit_distribution(P, grid, 0.1)
    assert converged and smooth.sum() == pytest.approx(1.0)
    # smoothing spreads the weight: fewer grid points carry the bulk of it without it
    assert np.sum(smooth > 1e-3) > np.sum(p0 > 1e-3)
    assert sizing.distribution_figures(grid_nm=grid, weights=smooth)["mode"] == pytest.approx(150.0, rel=0.1)


def test_walker_em_fits_many_weightings_at_once_as_one_at_a_time():
    """The bootstrap's replicates in one call (matrix products on one BLAS
    thread) give each replicate's own fit: the same iterations, and weights
    and D50 within the EM's own tolerance (size.tol, 1e-6; the products are
    summed in another order, which moves the weights by ~1e-8)."""
    from pipeline.size.walker import diameter_grid, walker_em, walker_likelihood

    rng = np.random.default_rng(28)
    D = stokes_einstein_D(rng.choice([100.0, 250.0], size=500), T, ETA)
    k = rng.integers(3, 30, size=500)
    m = rng.gamma(k, 4 * D * DT / k)
    grid = diameter_grid(10, 3000, 100)
    P = walker_likelihood(m, k, frame_interval_s=DT, temperature_K=T, viscosity_Pa_s=ETA, grid_nm=grid)
    W = rng.multinomial(len(m), np.full(len(m), 1 / len(m)), size=12).astype(float)
    together, iterations, converged = walker_em(P, weights=W)
    assert converged.all() and len(set(iterations)) > 1  # the replicates stop at their own time
    for row, w in enumerate(W):
        alone, it, _ = walker_em(P, weights=w[None, :])
        assert it[0] == iterations[row]
        np.testing.assert_allclose(together[row], alone[0], rtol=0, atol=1e-6)
        d50 = [sizing.distribution_figures(grid_nm=grid, weights=w)["d50"] for w in (together[row], alone[0])]
        assert d50[0] == pytest.approx(d50[1], rel=1e-6)
    # negative control: the replicates differ from one another and from the unweighted fit
    assert np.abs(together[0] - together[1]).max() > 1e-4
    assert np.abs(together[0] - walker_em(P)[0][0]).max() > 1e-4


def test_ems_distribution_on_long_tracks_is_smooth_and_single_peaked():
    D = stokes_einstein_D(200.0, T, ETA)
    pos, _ = blurred_tracks(300, 40, D, exposure=DT, sigma=0.03, seed=27)
    _, _, s = sizing.size_tracks(tracks_table(pos), pixel_size_um=0.1, frame_interval_s=DT, exposure_s=DT,
                                 temperature_K=T, viscosity_Pa_s=None, n_bootstrap=0, distribution="ems")
    assert s["distribution_method"] == "ems" and s["smoothing_ln_d"] in sizing.ems.SMOOTHING_CANDIDATES
    assert s["mode_nm"] == pytest.approx(200.0, rel=0.05) and s["d50_nm"] == pytest.approx(200.0, rel=0.05)
    assert len(s["walker_peaks_nm"]) == 1
    # one σ for all these tracks: no heterogeneity, so every track takes the sample's σ
    assert s["sigma_tau2_um4"] == 0.0 and s["sigma_heterogeneity"] < 1.2


def _size(table, **params):
    return sizing.size_tracks(table, pixel_size_um=0.1, frame_interval_s=DT, exposure_s=DT, temperature_K=T,
                              viscosity_Pa_s=None, n_bootstrap=0, **params)[2]


def test_mislink_model_sizes_tracks_with_jumps_to_a_neighbour():
    D = stokes_einstein_D(200.0, T, ETA)
    pos, _ = blurred_tracks(400, 11, D, exposure=DT, sigma=0.03, seed=28)  # short tracks: 10 steps
    rng = np.random.default_rng(28)
    jumped = rng.choice(400, size=60, replace=False)  # 15 % of tracks, 1.5 % of steps
    at = rng.integers(1, 11, size=60)
    angle = rng.uniform(0, 2 * np.pi, size=60)
    for track, step, a in zip(jumped, at, angle):
        pos[track, step:, :] += 3.0 * np.array([np.cos(a), np.sin(a)])  # 3 µm: the neighbour's track after it
    s = _size(tracks_table(pos))
    assert s["mode_nm"] == pytest.approx(200.0, rel=0.05) and s["d50_nm"] == pytest.approx(200.0, rel=0.05)
    assert s["jump_fraction"] == pytest.approx(60 / 4000, rel=0.5) and 50 <= s["n_jump_steps"] <= 70
    assert "mislinked_steps" in {f["code"] for f in s["qc"]}
    assert s["cross_checks"]["pooled_cve_without_jumps_nm"] == pytest.approx(200.0, rel=0.05)
    assert s["cross_checks"]["pooled_cve_nm"] < 150.0  # all steps: the jumps make the sample look small
    # negative control: without the model, a swapped link makes a particle look fast
    off = _size(tracks_table(pos), mislink_model=False)
    assert off["jump_fraction"] is None and off["n_jump_steps"] == 0
    assert off["d50_nm"] < 0.95 * 200.0 and abs(off["d50_nm"] / 200 - 1) > 2 * abs(s["d50_nm"] / 200 - 1)
    # and on tracks without jumps the model finds (almost) none
    clean, _ = blurred_tracks(400, 11, D, exposure=DT, sigma=0.03, seed=29)
    c = _size(tracks_table(clean))
    assert c["n_jump_steps"] <= 2 and "mislinked_steps" not in {f["code"] for f in c["qc"]}


def test_step_dispersion_is_one_for_brownian_steps_and_flags_frozen_particles():
    D = stokes_einstein_D(300.0, T, ETA)
    pos, _ = blurred_tracks(300, 30, D, exposure=DT, sigma=0.02, seed=30)
    s = _size(tracks_table(pos))
    assert s["step_dispersion_estimate"] == pytest.approx(1.0, abs=0.1)
    assert "steps_overdispersed" not in {f["code"] for f in s["qc"]}
    # compressed video: a macroblock copied from the previous frame freezes the particle for a frame,
    # and it catches up at the next (positions of 25 % of frames repeated)
    frozen = pos.copy()
    rng = np.random.default_rng(30)
    for track in range(300):
        for k in np.flatnonzero(rng.random(30) < 0.25):
            if k > 0:
                frozen[track, k] = frozen[track, k - 1]
    f = _size(tracks_table(frozen), step_lag=1)
    assert f["step_dispersion_estimate"] > 1.5 and f["step_dispersion"] == f["step_dispersion_estimate"]
    (flag,) = [q for q in f["qc"] if q["code"] == "steps_overdispersed"]
    assert flag["level"] == "warning" and "compressed video" in flag["message"]
    # widened by φ, the distribution does not read the scatter as polydispersity: one peak near 300 nm
    # (not unbiased from single-frame steps: the freezes hide the blur's covariance, so σ comes out high,
    # and catch-ups after two frozen frames still pass for jumps; measured 388 nm)
    assert len(f["walker_peaks_nm"]) == 1 and f["mode_nm"] == pytest.approx(300.0, rel=0.35)
    fixed = _size(tracks_table(frozen), step_dispersion=1, step_lag=1)
    assert fixed["step_dispersion"] == 1.0
    # two freezes in a row correlate steps two frames apart: by default the sizes are read from steps
    # over two frames, and come out right (measured 299 nm)
    auto = _size(tracks_table(frozen))
    assert auto["step_lag"]["frames"] == 2 and "steps_correlated" in {q["code"] for q in auto["qc"]}
    assert auto["mode_nm"] == pytest.approx(300.0, rel=0.05)


def test_ems_gives_noisy_tracks_their_own_localization_error():
    D = stokes_einstein_D(400.0, T, ETA)
    sharp, _ = blurred_tracks(240, 40, D, exposure=DT, sigma=0.02, seed=31)
    dim, _ = blurred_tracks(80, 40, D, exposure=DT, sigma=0.15, seed=32)  # defocused: 7x the error
    table = tracks_table(np.concatenate([sharp, dim]))
    ems = _size(table, distribution="ems")
    assert ems["sigma_heterogeneity"] > 1.5 and ems["sigma_tau2_um4"] > 0
    assert ems["mode_nm"] == pytest.approx(400.0, rel=0.08) and ems["d50_nm"] == pytest.approx(400.0, rel=0.1)
    # negative control: one σ for all (Walker's model), the dim tracks pose as small fast particles
    walker = _size(table, distribution="walker")
    assert walker["sigma_heterogeneity"] is None
    assert min(walker["walker_peaks_nm"]) < 0.6 * 400.0


def test_steps_cut_off_by_the_link_search_range_are_flagged():
    D = stokes_einstein_D(200.0, T, ETA)
    pos, _ = blurred_tracks(300, 20, D, exposure=DT, sigma=0.03, seed=33)
    table = tracks_table(pos)
    # a linker whose search range is about 1.7 step lengths: a longer step ends the track
    step = np.hypot(table.groupby("particle")["x"].diff(), table.groupby("particle")["y"].diff()) * 0.1
    cut = step > 0.65
    table["particle"] = table["particle"] * 100 + cut.groupby(table["particle"]).cumsum()
    s = _size(table)
    (flag,) = [f for f in s["qc"] if f["code"] == "steps_truncated"]
    assert "link.search_range" in flag["message"] and "mislink model was not used" in flag["message"]
    assert s["mislink_model_skipped"] and s["jump_fraction"] is None
    assert s["step_truncation"]["expected_beyond"] > 10
    # negative control: the same tracks uncut (see also the cross-check test: no warnings at all)
    assert not s["step_truncation"]["reach_um"] > 0.65
    whole = _size(tracks_table(pos))
    assert "steps_truncated" not in {f["code"] for f in whole["qc"]} and not whole["mislink_model_skipped"]


def test_uneven_frame_timing_is_found_from_the_steps():
    D = stokes_einstein_D(300.0, T, ETA)
    pos, _ = blurred_tracks(300, 30, D, sigma=0.02, seed=34)
    steps = np.diff(pos, axis=1)
    steps[:, 9::12] *= np.sqrt(2.0)  # every 12th interval lasts twice as long (a dropped frame in the source)
    uneven = np.concatenate([pos[:, :1], pos[:, :1] + np.cumsum(steps, axis=1)], axis=1)
    s = _size(tracks_table(uneven))
    (flag,) = [f for f in s["qc"] if f["code"] == "frame_timing_irregular"]
    assert "9→10" in flag["message"] and "21→22" in flag["message"]
    assert set(s["frame_timing"]["ratios"]) >= {9, 21} and s["frame_timing"]["ratios"][9] == pytest.approx(2.0, rel=0.2)
    # negative control: the same particles with a steady clock
    steady = _size(tracks_table(pos))
    assert "frame_timing_irregular" not in {f["code"] for f in steady["qc"]}
    assert steady["frame_timing"]["p_value"] > 1e-3
