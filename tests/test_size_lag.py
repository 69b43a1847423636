"""Steps over several frames (pipeline.size.lag, size.step_lag): the step
correlation, the lag chosen from it, the tracks taken every L-th frame at
every phase, and the size stage reading sizes from them, on simulated
Brownian tracks (with and without positions smoothed in time) and on the
real bulk_water footage."""

import numpy as np
import pandas as pd
import pytest

from pipeline import size as sizing
from pipeline.io.schema import ConfigError
from pipeline.physics import stokes_einstein_D, water_viscosity
from pipeline.size.lag import choose_step_lag, lag_phases, phase_track, step_correlation
from pipeline.size.steps import track_steps

from test_sizing import DT, T, blurred_tracks, tracks_table

ETA = water_viscosity(T)
D_200 = stokes_einstein_D(200.0, T, ETA)


def smoothed(pos, keep):
    """Positions through a recursive temporal filter (a camera's noise
    filter): each frame keeps ``keep`` of its own position and the rest of
    the previous frame's filtered one."""
    out = pos.copy()
    for i in range(1, out.shape[1]):
        out[:, i] = keep * pos[:, i] + (1.0 - keep) * out[:, i - 1]
    return out[:, 5:]  # past the filter's start-up


def size_of(table, **params):
    return sizing.size_tracks(table, pixel_size_um=0.1, frame_interval_s=DT, exposure_s=DT, temperature_K=T,
                              viscosity_Pa_s=None, n_bootstrap=0, **params)


@pytest.fixture(scope="module")
def brownian():
    pos, _ = blurred_tracks(400, 40, D_200, exposure=DT, sigma=0.03, seed=51)
    return pos


def test_brownian_steps_are_uncorrelated_beyond_their_neighbours(brownian):
    corr = step_correlation(track_steps(tracks_table(brownian), pixel_size_um=0.1))
    rho, se = np.array(corr["rho"]), np.array(corr["rho_se"])
    # neighbours correlate through blur and noise; further apart, nothing
    assert rho[0] > 5 * se[0]
    assert np.all(np.abs(rho[1:]) < 3.5 * se[1:])
    assert corr["total"] == pytest.approx(1 + 2 * rho.sum())
    lag, reason = choose_step_lag(corr)
    assert lag == 1 and "uncorrelated" in reason


def test_smoothed_positions_are_found_and_sized_over_several_frames(brownian):
    blended = tracks_table(smoothed(brownian, keep=0.6))
    corr = step_correlation(track_steps(blended, pixel_size_um=0.1))
    assert corr["rho"][1] > 10 * corr["rho_se"][1]  # ρ2 of the filter, (1 - keep)² x ρ1's scale
    lag, reason = choose_step_lag(corr)
    assert 2 <= lag <= 6 and "correlated 2 frames apart" in reason

    _, _, auto = size_of(blended)
    _, _, single = size_of(blended, step_lag=1)
    assert auto["step_lag"]["frames"] == lag and auto["step_lag"]["source"] == "auto"
    assert auto["step_lag"]["interval_s"] == pytest.approx(lag * DT)
    # the negative control: single-frame steps read the smoothed motion as slow, large particles
    assert single["mode_nm"] > 1.3 * 200.0
    assert auto["mode_nm"] == pytest.approx(200.0, rel=0.10)
    assert auto["d50_nm"] == pytest.approx(200.0, rel=0.10)
    flags = {f["code"]: f for f in auto["qc"]}
    assert flags["steps_correlated"]["level"] == "warning"
    assert f"steps over {lag} frames" in flags["steps_correlated"]["message"]
    # given a lag of 1, the same correlation is flagged with what to do
    (given,) = [f for f in single["qc"] if f["code"] == "steps_correlated"]
    assert "size.step_lag: auto" in given["message"]
    # a negative σ² over several frames is the smoothing's offset, not a wrong exposure
    assert all(f["level"] == "info" for f in auto["qc"]
               if f["code"] in ("localization_error_zero", "negative_localization_variance"))


def test_frames_blended_in_pairs_are_found_from_the_neighbours_correlation(brownian):
    """A frame-rate conversion that blends each frame with the previous one,
    from a camera with a short exposure, correlates neighbouring steps only
    (ρ1 about 1/2), which blur within a 1 ms exposure cannot (ρ1 at most
    R / (1 − 2R) = 0.005)."""
    pos, _ = blurred_tracks(400, 40, D_200, exposure=0.0, sigma=0.03, seed=52)
    blended = tracks_table(0.5 * (pos[:, 1:] + pos[:, :-1]))

    def sized(**params):
        return sizing.size_tracks(blended, pixel_size_um=0.1, frame_interval_s=DT, temperature_K=T,
                                  viscosity_Pa_s=None, n_bootstrap=0, **params)[2]

    auto = sized(exposure_s=0.001)
    assert auto["step_lag"]["frames"] >= 2
    assert "beyond what the exposure's blur allows" in auto["step_lag"]["reason"]
    assert auto["mode_nm"] == pytest.approx(200.0, rel=0.10)
    single = sized(exposure_s=0.001, step_lag=1)
    assert single["mode_nm"] > 1.3 * 200.0
    assert "steps_correlated" in {f["code"] for f in single["qc"]}
    # negative control: with the exposure unknown the blur could be anything up to a quarter, so
    # nothing is read into ρ1 (and the unknown exposure is flagged)
    unknown = sized(exposure_s=None)
    assert unknown["step_lag"]["frames"] == 1
    assert "exposure_unknown" in {f["code"] for f in unknown["qc"]}


def test_brownian_tracks_keep_single_frame_steps_and_their_figures(brownian):
    table = tracks_table(brownian)
    _, _, auto = size_of(table)
    _, _, single = size_of(table, step_lag=1)
    assert auto["step_lag"]["frames"] == 1
    assert "steps_correlated" not in {f["code"] for f in auto["qc"]}
    assert auto["mode_nm"] == single["mode_nm"] and auto["d50_nm"] == single["d50_nm"]


def test_a_given_lag_sizes_brownian_tracks_as_well_with_one_row_per_track(brownian):
    table = tracks_table(brownian)
    sizes, _, s = size_of(table, step_lag=3)
    assert s["step_lag"] == {**s["step_lag"], "frames": 3, "source": "given"}
    assert s["mode_nm"] == pytest.approx(200.0, rel=0.08)
    # every track once, its own frames, its steps over all three phases
    assert s["n_tracks"] == 400 and len(sizes) == 400
    assert sorted(sizes["particle"]) == list(range(400))
    assert (sizes["first_frame"] == 0).all() and (sizes["last_frame"] == 39).all()
    # every 3-frame step of the track, over the phases (less a step the mislink model left out)
    assert (sizes["n_steps"] <= 40 - 3).all() and (sizes["n_steps"] == 40 - 3).mean() > 0.99
    assert sizes["D_um2_s"].median() == pytest.approx(D_200, rel=0.1)
    assert {"step_lag_given"} <= {f["code"] for f in s["qc"]}
    # the cross-checks keep the single-frame pooled estimate, and add the lag's
    assert s["cross_checks"]["pooled_cve_step_lag_nm"] == pytest.approx(200.0, rel=0.1)
    assert s["cross_checks"]["pooled_cve_nm"] == size_of(table, step_lag=1)[2]["cross_checks"]["pooled_cve_nm"]


def test_lag_phases_use_every_frame_once_and_bridge_no_gap():
    rng = np.random.default_rng(3)
    rows = []
    for particle, (start, stop, gap) in enumerate([(0, 12, None), (5, 16, 9)]):
        for frame in range(start, stop):
            if frame != gap:
                rows.append((frame, *rng.normal(50, 3, 2), particle))
    table = pd.DataFrame(rows, columns=["frame", "y", "x", "particle"])
    st = track_steps(table, pixel_size_um=0.2)
    phases = lag_phases(st, 3, ["y", "x"])
    assert len(phases) == len(table)  # every row once
    assert sorted(phases["particle"].unique()) == [0, 1, 2, 3, 4, 5]
    assert list(phase_track(phases["particle"].unique(), 3)) == [0, 0, 0, 1, 1, 1]
    # phase 1 of track 0: frames 1, 4, 7, 10 renumbered 0..3, positions unchanged
    one = phases[phases["particle"] == 1]
    assert list(one["frame"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(one[["y", "x"]], table[(table["particle"] == 0) & (table["frame"] % 3 == 1)][["y", "x"]])
    # track 1 misses frame 9 (offset 4, phase 1): its phase-1 track has a gap there
    gapped = phases[phases["particle"] == 4]
    assert list(gapped["frame"]) == [0, 2, 3]


def test_lag_phases_subtract_the_drift_first():
    table = tracks_table(np.zeros((1, 9, 2)))
    table["drift_y"] = np.arange(9) * 2.0
    table["drift_x"] = 0.0
    table["y"] += table["drift_y"]  # a particle at rest, carried by the drift
    st = track_steps(table, pixel_size_um=0.1)
    phases = lag_phases(st, 2, ["y", "x"])
    np.testing.assert_allclose(phases["y"], 0.0, atol=1e-12)
    assert "drift_y" not in phases.columns


@pytest.mark.parametrize("value", [0, -2, 1.5, "sometimes"])
def test_step_lag_must_be_auto_or_a_positive_integer(value):
    with pytest.raises(ConfigError, match="size.step_lag"):
        sizing.check_params({"step_lag": value})


def test_bulk_water_is_sized_over_several_frames_within_ten_percent_of_the_pooled_estimate(bulk_water_dir):
    """The real footage: trackpy's example movie, whose steps correlate over
    several frames (issue 13's settings)."""
    import imageio.v3 as iio
    import trackpy

    from pipeline.link import link
    from pipeline.locate import locate_frames

    trackpy.quiet()
    frames = np.stack([iio.imread(f)[..., 1] for f in sorted(bulk_water_dir.glob("bulk_water_*.png"))])
    features = locate_frames(frames, diameter=11, minmass=20, invert=True)
    tracks = link(features, method="nearest", search_range=5, memory=3, min_length=10, subtract_drift=True)
    _, _, s = sizing.size_tracks(tracks, pixel_size_um=0.3508772, frame_interval_s=0.0416667,
                                 exposure_s=0.0416667, temperature_K=295.0, viscosity_Pa_s=None, n_bootstrap=0)
    pooled = s["cross_checks"]["pooled_cve_nm"]
    assert s["step_lag"]["frames"] >= 3
    assert "steps_correlated" in {f["code"] for f in s["qc"]}
    assert s["mode_nm"] == pytest.approx(pooled, rel=0.10)
    assert s["d50_nm"] == pytest.approx(pooled, rel=0.10)
    # negative control: single-frame steps put the distribution 30 % and more above it
    _, _, single = sizing.size_tracks(tracks, pixel_size_um=0.3508772, frame_interval_s=0.0416667,
                                      exposure_s=0.0416667, temperature_K=295.0, viscosity_Pa_s=None,
                                      n_bootstrap=0, step_lag=1)
    assert single["d50_nm"] > 1.3 * pooled
