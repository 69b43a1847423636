"""Benchmark: flow-interpolated linking (``link.method: flow``) against
trackpy's nearest-neighbour linker, on simulated NTA movies with ground truth.

In one run:

1. Simulated movies (``pipeline.simulate.simulate_movie``; 256×256 px,
   0.2 µm/px, 30 fps, 5 ms exposure, 200 nm spheres in water at 25 °C):
   (a) pure Brownian motion at low and high density, and a high-density
   150 + 300 nm mixture whose brightnesses differ (where the appearance
   terms can help); (b) Brownian motion in
   a Rankine vortex whose largest step per frame is about the mean
   nearest-neighbour spacing (and, without ``--quick``, a shear flow too).
2. Features from ``trackpy.batch`` (diameter 7, minmass 150, separation 4).
3. Both linkers on the same features, search range 8 px (≈ 4σ of a
   Brownian step), memory 3; the flow linker with ``gate`` 20 px (enough
   for the largest flow step plus diffusion), other settings at their
   defaults, with and without the appearance terms.
4. The dense-Brownian and vortex cases, whose keys carry the targets, are
   run on several independent movies (``--seeds``; seeds 1, 2, ...) and
   their α averaged, with the paired difference flow − nearest and its
   standard error: on one dense movie α moves by ~0.02 with the seed, as
   much as the difference measured. Keys ending ``_seed1`` and the case
   entries come from the first movie.
5. ISBI 2012 scores (Chenouard et al. 2014; ``pipeline.metrics``, gate
   5 px) against the *linkable* truth: the simulated detections that the
   locator found (one-to-one within 1.5 px), with each truth track split
   where it is missed for more than ``memory`` frames (no linker can
   bridge that), so α measures linking, not detection.
6. Sizing of a flowing sample's flow-linked tracks (a shear flow whose
   largest step is the mean spacing, 60 particles, 60 or 120 frames, so
   that ~3,000+ steps pin D to a few per cent) with
   ``pipeline.size.track_diffusion`` (CVE with the motion-blur factor),
   with and without subtracting the per-row flow; the population diameter
   comes from the step-weighted mean D; error relative to the true 200 nm.
   ``sizing_error_truth_exact_flow`` sizes the true tracks with the exact
   flow subtracted: the floor set by the estimator and the simulation.
   (The vortex's own figure is in its case entry; there the floor itself
   is ~9 %: Brownian motion through its sheared outer region.)
7. Link time per frame of ``link_flow`` on synthetic feature tables of
   ~1,000 and ~10,000 features per frame (Brownian steps plus a uniform
   drift, appearance columns that differ between particles and carry
   measurement noise, so the full cost is computed; default flow radius), wall-clock and CPU (the CPU time is the steadier figure on
   a shared machine). The first frame pair, which bootstraps the flow, is
   included.

Targets: flow α >= 0.9 on the vortex where nearest falls below 0.7; on pure
Brownian motion flow within 0.02 of nearest; sizing under flow within 5 %
with the flow subtracted; time per frame about linear in features
(``time_ratio_10k_1k`` ≈ 10). The last line printed is one JSON object.

    python benchmarks/linking.py [--quick] [--seeds N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
import pandas as pd
import trackpy
from scipy.spatial import cKDTree

from pipeline.link.appearance import appearance_columns
from pipeline.link.flow import link_flow
from pipeline.metrics import isbi_scores
from pipeline.physics import stokes_einstein_diameter
from pipeline.simulate import NTASimulator, simulate_movie

SHAPE = (256, 256)
PIXEL_UM = 0.2
FPS = 30.0
EXPOSURE_S = 0.005
DIAMETER_NM = 200.0
SEARCH_RANGE = 8.0
MEMORY = 3
GATE = 20.0
SCORE_GATE = 5.0


def simulate(n_particles, n_frames, *, flow=None, step_px=0.0, seed=1, mixed=False):
    """Frames, truth (visible rows), metadata, simulator. ``step_px`` sets the
    flow speed so that the built-in flow's largest step is that many pixels
    per frame. ``mixed``: a 150 + 300 nm mixture whose brightness grows as
    d³ (the two differ ~8x), instead of identical 200 nm spheres."""
    speed = step_px * PIXEL_UM * FPS  # µm/s at the flow's reference point
    kw = dict(
        shape=SHAPE, n_frames=n_frames, n_particles=n_particles, diameters_nm=(DIAMETER_NM,),
        pixel_size_um=PIXEL_UM, frame_interval_s=1 / FPS, exposure_s=EXPOSURE_S, seed=seed,
    )
    if mixed:
        kw.update(diameters_nm=(150.0, 300.0), photons_exponent=3.0, photons=1500.0)
    if flow:
        kw.update(flow=flow, flow_speed_um_s=speed)
    frames, truth, meta = simulate_movie(**kw)
    sim = NTASimulator(**kw)
    if "visible" in truth.columns:
        truth = truth[truth["visible"]]
    return frames, truth.reset_index(drop=True), meta, sim


def locate(frames):
    trackpy.quiet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trackpy.batch(frames, 7, minmass=150, separation=4, processes=1).reset_index(drop=True)


def mean_nn_spacing(truth):
    first = truth[truth["frame"] == truth["frame"].min()][["y", "x"]].to_numpy()
    d, _ = cKDTree(first).query(first, k=2)
    return float(d[:, 1].mean())


def linkable_truth(truth, features, memory):
    """Truth detections the locator found (one-to-one within 1.5 px), each
    track split where it is missed for more than ``memory`` frames."""
    kept = []
    for frame, t in truth.groupby("frame"):
        f = features[features["frame"] == frame]
        if f.empty:
            continue
        d, j = cKDTree(f[["y", "x"]].to_numpy()).query(t[["y", "x"]].to_numpy())
        ok = d < 1.5
        # one-to-one: a feature claimed by two truths keeps the nearer
        claim = pd.DataFrame({"j": j[ok], "d": d[ok], "row": np.flatnonzero(ok)}).sort_values("d")
        rows = claim.drop_duplicates("j")["row"].to_numpy()
        kept.append(t.iloc[np.sort(rows)])
    lt = pd.concat(kept, ignore_index=True).sort_values(["particle", "frame"], kind="stable")
    new_track = (lt["particle"].diff() != 0) | (lt["frame"].diff() > memory + 1)
    lt["particle"] = np.cumsum(new_track.to_numpy())
    return lt.reset_index(drop=True), len(lt) / max(len(truth), 1)


def link_nearest(features):
    try:
        from pipeline.link.nearest import link_nearest as nearest

        def run(**kw):
            return nearest(features, search_range=SEARCH_RANGE, memory=MEMORY, min_length=1, **kw)

        which = "pipeline.link.link_nearest"
    except ImportError:  # pragma: no cover - the stage's own wrapper is optional here

        def run(**kw):
            return trackpy.link(features, SEARCH_RANGE, memory=MEMORY, **kw)

        which = "trackpy.link"
    trackpy.quiet()
    t = time.perf_counter()
    try:
        tracks = run()
        note = which
    except Exception:  # oversize subnetwork: let trackpy shrink the search range
        tracks = run(adaptive_stop=1.0, adaptive_step=0.9)
        note = which + " (adaptive_stop=1)"
    return tracks, time.perf_counter() - t, note


def link_with_flow(features, frames, appearance=True):
    t = time.perf_counter()
    tracks, flow = link_flow(
        features, frames, search_range=SEARCH_RANGE, memory=MEMORY, gate=GATE, appearance=appearance
    )
    return tracks, time.perf_counter() - t


def score(truth, tracks):
    s = isbi_scores(truth, tracks, gate=SCORE_GATE)
    return {k: round(float(s[k]), 4) for k in ("alpha", "beta", "jsc", "jsc_theta", "rmse")}


def case(name, n_particles, n_frames, *, flow=None, step_spacings=0.0, appearance_too=True, mixed=False, seed=1):
    """Simulate, locate, link both ways, score. ``step_spacings`` is the
    largest flow step in units of the mean nearest-neighbour spacing;
    ``seed`` picks the movie (the flow speed is the same for every seed)."""
    step_px = 0.0
    if flow:
        # spacing from a flow-free draw of the same density
        _, probe, _, _ = simulate(n_particles, 1, seed=1)
        step_px = step_spacings * mean_nn_spacing(probe)
    frames, truth, meta, sim = simulate(n_particles, n_frames, flow=flow, step_px=step_px, mixed=mixed, seed=seed)
    features = locate(frames)
    truth_l, found = linkable_truth(truth, features, MEMORY)
    out = {
        "n_per_frame": round(len(features) / n_frames, 1),
        "nn_spacing_px": round(mean_nn_spacing(truth), 2),
        "located_fraction": round(found, 3),
    }
    if flow:
        grid = np.stack(np.meshgrid(np.arange(0, SHAPE[0], 4.0), np.arange(0, SHAPE[1], 4.0)), -1).reshape(-1, 2)
        out["max_flow_step_px"] = round(float(np.hypot(*sim.flow_velocity(grid).T).max()), 2)
    nearest, t_near, which = link_nearest(features)
    flow_tracks, t_flow = link_with_flow(features, frames)
    out["nearest"] = {**score(truth_l, nearest), "seconds": round(t_near, 2), "linker": which}
    out["flow"] = {**score(truth_l, flow_tracks), "seconds": round(t_flow, 2)}
    if appearance_too:
        plain, t_plain = link_with_flow(features, frames, appearance=False)
        out["flow_no_appearance"] = {**score(truth_l, plain), "seconds": round(t_plain, 2)}
    return out, flow_tracks, truth, meta


def over_seeds(name, n_seeds, n_particles, n_frames, **kw):
    """The case on ``n_seeds`` independent movies (seeds 1, 2, ...): the first
    movie's full entry, each linker's α per movie and its mean, and the mean
    paired difference flow − nearest with its standard error. One movie's α
    moves by ~0.02 with the seed on dense Brownian motion, as much as the
    difference being measured, so the comparison is made on the mean."""
    entries = [case(name, n_particles, n_frames, seed=seed, appearance_too=seed == 1, **kw) for seed in range(1, n_seeds + 1)]
    first, tracks, truth, meta = entries[0]
    summary = {}
    for linker in ("nearest", "flow"):
        alphas = [e[0][linker]["alpha"] for e in entries]
        summary[f"alpha_{linker}_per_seed"] = alphas
        summary[f"alpha_{linker}"] = round(float(np.mean(alphas)), 4)
    diff = np.subtract(summary["alpha_flow_per_seed"], summary["alpha_nearest_per_seed"])
    summary["alpha_difference"] = round(float(diff.mean()), 4)
    summary["alpha_difference_se"] = round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4) if len(diff) > 1 else None
    summary["flow_beta"] = round(float(np.mean([e[0]["flow"]["beta"] for e in entries])), 4)
    summary["flow_jsc"] = round(float(np.mean([e[0]["flow"]["jsc"] for e in entries])), 4)
    summary["n_seeds"] = n_seeds
    first["over_seeds"] = summary
    return first, tracks, truth, meta


def exact_flow(sim, positions, substeps=10):
    """The flow's own displacement over one frame from each position (RK4
    through the simulator's velocity field), px."""
    p = np.asarray(positions, dtype=float).copy()
    h = 1.0 / substeps
    for _ in range(substeps):
        k1 = sim.flow_velocity(p)
        k2 = sim.flow_velocity(p + 0.5 * h * k1)
        k3 = sim.flow_velocity(p + 0.5 * h * k2)
        k4 = sim.flow_velocity(p + h * k3)
        p = p + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
    return p - np.asarray(positions, dtype=float)


def sizing_case(n_particles, n_frames, *, flow="shear", step_spacings=1.0, seed=2):
    """Size a flowing sample's flow-linked tracks with and without
    subtracting the flow; also the true tracks with the exact flow
    subtracted (the floor: what the estimator itself gets)."""
    _, probe, _, _ = simulate(n_particles, 1, seed=seed)
    frames, truth, meta, sim = simulate(
        n_particles, n_frames, flow=flow, step_px=step_spacings * mean_nn_spacing(probe), seed=seed
    )
    features = locate(frames)
    tracks, _ = link_with_flow(features, frames)
    result = sizing_errors(tracks, truth, meta)
    exact = truth.copy()
    exact[["flow_dy", "flow_dx"]] = exact_flow(sim, truth[["y", "x"]].to_numpy())
    result["truth_exact_flow"] = sizing_errors(exact, truth, meta)["with_flow_subtracted"]
    return result


def sizing_errors(tracks, truth, meta):
    """Relative diameter error of the flow-linked tracks, with and without
    subtracting the flow."""
    from pipeline.size import track_diffusion

    true_d = float(np.median(truth["diameter_nm"])) if "diameter_nm" in truth.columns else DIAMETER_NM
    result = {}
    for label, subtract in (("with_flow_subtracted", True), ("naive", False)):
        per_track = track_diffusion(
            tracks[["frame", "y", "x", "particle", "flow_dy", "flow_dx"]],
            pixel_size_um=PIXEL_UM, frame_interval_s=meta["frame_interval_s"],
            exposure_s=meta["exposure_s"], method="cve", min_steps=5, subtract_flow=subtract,
        )
        D = float(np.average(per_track["D_um2_s"], weights=per_track["n_steps"]))
        d = float(stokes_einstein_diameter(D, meta["temperature_K"], meta["viscosity_Pa_s"]))
        result[label] = (abs(d - true_d) / true_d, d, D, int(per_track["n_steps"].sum()))
    return result


def timing(n_per_frame, n_frames, seed=0):
    """Seconds per frame (wall, CPU) of link_flow on a synthetic table:
    features at a fixed density (NN spacing ~5 px), Brownian steps (σ 1.5
    px) plus a uniform drift of 3 px/frame, appearance columns drawn per
    particle plus noise."""
    rng = np.random.default_rng(seed)
    side = np.sqrt(n_per_frame) * 10.0
    pos = rng.uniform(0, side, (n_per_frame, 2))
    columns = appearance_columns(2)
    look = rng.normal(size=(n_per_frame, len(columns)))  # each particle's own
    rows = []
    for t in range(n_frames):
        measured = look + rng.normal(0, 0.3, look.shape)
        rows.append(np.column_stack([np.full(n_per_frame, t), pos, measured]))
        pos = pos + np.array([0.0, 3.0]) + rng.normal(0, 1.5, pos.shape)
        pos %= side
    table = pd.DataFrame(np.vstack(rows), columns=["frame", "y", "x", *columns])
    table["frame"] = table["frame"].astype(int)
    wall, cpu = time.perf_counter(), time.process_time()
    link_flow(table, search_range=6.0, memory=MEMORY, gate=12.0)
    return (time.perf_counter() - wall) / n_frames, (time.process_time() - cpu) / n_frames


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s on 2 cores)")
    parser.add_argument(
        "--seeds", type=int, default=None,
        help="independent movies for the dense-Brownian and vortex cases (default 3, or 4 without --quick)",
    )
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    n_seeds = args.seeds or (3 if args.quick else 4)
    t0 = time.perf_counter()
    n_frames = 30 if args.quick else 80
    report: dict = {"quick": bool(args.quick), "n_frames": n_frames}

    low, _, _, _ = case("brownian_low", 60, n_frames)
    high, _, _, _ = over_seeds("brownian_high", n_seeds, 150, n_frames)
    vortex, vortex_tracks, vortex_truth, meta = over_seeds(
        "vortex", n_seeds, 60, n_frames, flow="vortex", step_spacings=1.0
    )
    mixed, _, _, _ = case("brownian_mixed", 150, n_frames, mixed=True)
    report["cases"] = {"brownian_low": low, "brownian_high": high, "brownian_mixed": mixed, "vortex": vortex}
    if not args.quick:
        shear, _, _, _ = case("shear", 60, n_frames, flow="shear", step_spacings=1.0)
        report["cases"]["shear"] = shear

    sizes = sizing_case(60, 60 if args.quick else 120)
    vortex_sizes = sizing_errors(vortex_tracks, vortex_truth, meta)
    vortex["sizing_error_with_flow_subtracted"] = round(vortex_sizes["with_flow_subtracted"][0], 4)
    t_1k, cpu_1k = timing(1000, 8 if args.quick else 20)
    t_10k, cpu_10k = timing(10000, 4 if args.quick else 10)

    report.update(
        {
            "n_seeds": n_seeds,
            "brownian_alpha_nearest": high["over_seeds"]["alpha_nearest"],
            "brownian_alpha_flow": high["over_seeds"]["alpha_flow"],
            "brownian_alpha_difference": high["over_seeds"]["alpha_difference"],
            "brownian_alpha_difference_se": high["over_seeds"]["alpha_difference_se"],
            "brownian_low_alpha_nearest": low["nearest"]["alpha"],
            "brownian_low_alpha_flow": low["flow"]["alpha"],
            "brownian_alpha_flow_no_appearance_seed1": high["flow_no_appearance"]["alpha"],
            "brownian_low_alpha_flow_no_appearance": low["flow_no_appearance"]["alpha"],
            "mixed_alpha_nearest": mixed["nearest"]["alpha"],
            "mixed_alpha_flow": mixed["flow"]["alpha"],
            "mixed_alpha_flow_no_appearance": mixed["flow_no_appearance"]["alpha"],
            "flow_alpha_nearest": vortex["over_seeds"]["alpha_nearest"],
            "flow_alpha_flow": vortex["over_seeds"]["alpha_flow"],
            "flow_alpha_flow_per_seed": vortex["over_seeds"]["alpha_flow_per_seed"],
            "flow_beta_flow": vortex["over_seeds"]["flow_beta"],
            "flow_jsc_flow": vortex["over_seeds"]["flow_jsc"],
            "flow_alpha_flow_no_appearance_seed1": vortex["flow_no_appearance"]["alpha"],
            "flow_beta_nearest_seed1": vortex["nearest"]["beta"],
            "flow_jsc_nearest_seed1": vortex["nearest"]["jsc"],
            "sizing_error_with_flow_subtracted": round(sizes["with_flow_subtracted"][0], 4),
            "sizing_error_naive": round(sizes["naive"][0], 4),
            "sizing_error_truth_exact_flow": round(sizes["truth_exact_flow"][0], 4),
            "sizing_diameter_nm": {k: round(v[1], 1) for k, v in sizes.items()},
            "sizing_sample": "shear flow, largest step = mean NN spacing, 60 particles; true diameter 200 nm",
            "sizing_method": "pipeline.size.track_diffusion (CVE, blur-corrected), step-weighted mean D",
            "sizing_steps": sizes["with_flow_subtracted"][3],
            "ms_per_frame_1k": round(1000 * t_1k, 1),
            "ms_per_frame_10k": round(1000 * t_10k, 1),
            "time_ratio_10k_1k": round(t_10k / t_1k, 2),
            "cpu_ms_per_frame_1k": round(1000 * cpu_1k, 1),
            "cpu_ms_per_frame_10k": round(1000 * cpu_10k, 1),
            "cpu_ratio_10k_1k": round(cpu_10k / cpu_1k, 2),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
