"""Facility scale: N realistic runs through the whole workflow, against the
script a trackpy user would write instead, on the same frames.

For each movie length (two at least, to see how time and memory grow):

1. the real Snakemake workflow records N simulated NTA runs (a 100 + 200 nm
   mixture, 100-200 particles, 1024x1024; ``--quick``: 512x512) with a
   temporary ``config/runs.tsv``; acquisition is timed on its own, as the
   trackpy user starts from the recorded file too;
2. the workflow analyses them (locate, refine, link, size, report), timed
   from outside: a sampler walks Snakemake's process tree every 0.1 s and
   gives every job (one script process and its Dask workers) its wall time
   and its peak memory (RSS summed over the tree, so pages the Dask workers share with their fork
   server count once per process: an upper bound);
3. the trackpy script (:func:`trackpy_script`: ``trackpy.batch`` with
   ``processes='auto'``, ``trackpy.link``, ``filter_stubs``, per-track MSD
   by ``trackpy.imsd``, Stokes-Einstein) runs on the same stores, sampled the
   same way, once with numba (as the workflow has it) and once without
   (numba made unimportable, trackpy's ``engine='python'``: what most
   trackpy users run).

Features must be identical: the workflow's ``features.parquet`` against the
script's ``trackpy.batch`` output, run by run.

Usage::

    python benchmarks/facility.py [--quick] [--runs N] [--frames 1000 2000] [--size 1024]

The last line printed is one JSON object; ``ratio_numba`` and
``ratio_python`` are the trackpy script's seconds over the workflow's
analysis seconds (targets: >= 2 and >= 3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("locate", "refine", "link", "size", "size_group", "report")


class TreeSampler(threading.Thread):
    """Sample a process and its descendants until it exits.

    A *job* is a direct child of the root (a Snakemake script job, or the
    root itself when it has no children worth the name, as the trackpy
    script): its wall time is from first to last sighting and its peak
    memory the largest RSS summed over it and its descendants.
    """

    def __init__(self, root: subprocess.Popen, interval_s: float = 0.1, whole_tree: bool = False):
        super().__init__(daemon=True)
        self.root = psutil.Process(root.pid)
        self.interval_s = interval_s
        self.whole_tree = whole_tree
        self.jobs: dict[int, dict] = {}

    @staticmethod
    def _rss(proc: psutil.Process) -> int:
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _label(self, proc: psutil.Process) -> dict:
        """The rule (from the script's name) and the run (from its open log file)."""
        cmdline = " ".join(proc.cmdline())
        rule = next((s for s in STAGES + ("acquire",) if f".{s}.py" in cmdline), None)
        run = None
        try:
            for f in proc.open_files():
                if "/logs/" in f.path:
                    run = Path(f.path).stem
        except psutil.Error:
            pass
        return {"rule": rule or cmdline[:60], "run": run}

    def run(self) -> None:
        while self.root.is_running() and self.root.status() != psutil.STATUS_ZOMBIE:
            now = time.perf_counter()
            try:
                procs = [self.root] if self.whole_tree else self.root.children()
                for proc in procs:
                    job = self.jobs.get(proc.pid)
                    if job is None:
                        job = self.jobs[proc.pid] = {**self._label(proc), "start": now, "peak_rss": 0}
                    elif job["run"] is None:
                        job["run"] = self._label(proc)["run"]
                    job["end"] = now
                    job["peak_rss"] = max(job["peak_rss"], self._rss(proc))
            except psutil.Error:
                pass
            time.sleep(self.interval_s)


def sampled(cmd: list[str], *, whole_tree: bool = False, env: dict | None = None) -> tuple[float, list[dict], str]:
    """Run ``cmd``; its wall time, its jobs (see :class:`TreeSampler`) and its output."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sampler = TreeSampler(proc, whole_tree=whole_tree)
    sampler.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        sys.stderr.write(out[-5000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    jobs = [
        {"rule": j["rule"], "run": j["run"], "s": round(j["end"] - j["start"], 2), "peak_mib": round(j["peak_rss"] / 2**20, 1)}
        for j in sampler.jobs.values()
        # Snakemake's own helpers (its SLURM plugin runs `scontrol`) are no jobs
        if j["peak_rss"] and (whole_tree or j["rule"] in (*STAGES, "acquire"))
    ]
    return seconds, jobs, out


def snakemake_cmd(workdir: Path, cores: int, *targets: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--directory", str(workdir),
        "--workflow-profile", str(REPO / "profiles" / "default"),
        "--cores", str(cores),
        *targets,
    ]  # fmt: skip


def trackpy_script(stores: list[str], out_dir: str, *, diameter: int, minmass: float, search_range: float,
                   min_length: int, pixel_size_um: float, frame_interval_s: float, temperature_K: float,
                   engine: str) -> None:
    """What a trackpy user writes: locate, link, filter stubs, MSD per track,
    Stokes-Einstein; one movie after the other, features saved for comparison."""
    import numpy as np
    import trackpy as tp
    import zarr

    tp.quiet()
    kB, viscosity = 1.380649e-23, 0.955e-3  # J/K; water at 22 C, Pa s
    for store in stores:
        # the whole movie in memory, as most scripts do: the fastest for trackpy
        # (batch indexes every frame twice), at the cost of its memory
        frames = zarr.open_array(Path(store) / "0", mode="r")[:]
        features = tp.batch(frames, diameter, minmass=minmass, processes="auto", engine=engine)
        tracks = tp.filter_stubs(tp.link(features, search_range, memory=0), min_length)
        msd = tp.imsd(tracks, pixel_size_um, 1 / frame_interval_s, max_lagtime=4)  # um^2 per lag, per track
        lags = msd.index.to_numpy()
        D = (msd.to_numpy() * lags[:, None]).sum(axis=0) / (4 * (lags**2).sum()) * 1e-12  # m^2/s, fit through 0
        diameters_nm = kB * temperature_K / (3 * np.pi * viscosity * D[D > 0]) * 1e9
        features.to_parquet(Path(out_dir) / f"{Path(store).parent.name}.parquet")
        print(f"{store}: {len(features)} features, {tracks['particle'].nunique()} tracks, "
              f"median diameter {np.median(diameters_nm):.0f} nm")


def per_stage(jobs: list[dict], n_frames_total: int) -> dict:
    stages = {}
    for rule in sorted({j["rule"] for j in jobs}):
        mine = [j for j in jobs if j["rule"] == rule]
        seconds = sum(j["s"] for j in mine)
        stages[rule] = {
            "jobs": len(mine),
            "s": round(seconds, 2),
            "fps": round(n_frames_total / seconds, 1) if seconds and rule != "report" else None,
            "peak_mib": max(j["peak_mib"] for j in mine),
        }
    return stages


def one_length(n_frames: int, args, tmp: Path) -> dict:
    import pandas as pd

    workdir = tmp / f"wf{n_frames}"
    (workdir / "config").mkdir(parents=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text()) or {}
    config.setdefault("compute", {})["threads"] = args.cores
    config["report"] = {"title": f"facility benchmark, {n_frames} frames"}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sim = {"pixel_size_um": 0.2, "frame_interval_s": 1 / 30, "temperature_K": 295}
    rows = ["run\tsource\tgroup\tsettings"]
    for i in range(args.runs):
        settings = {"diameters_nm": [100, 200], "fractions": [0.5, 0.5], "shape": [args.size, args.size],
                    "n_frames": n_frames, "n_particles": args.particles, "exposure_s": 0.01, "seed": i + 1, **sim}
        rows.append(f"r{i}\tsimulated\tmix\t{json.dumps(settings)}")
    (workdir / "config" / "runs.tsv").write_text("\n".join(rows) + "\n")
    stores = [f"results/r{i}/movie.ome.zarr" for i in range(args.runs)]

    acquire_s, acquire_jobs, _ = sampled(snakemake_cmd(workdir, args.cores, *stores))
    workflow_s, jobs, out = sampled(snakemake_cmd(workdir, args.cores))
    total = n_frames * args.runs

    from pipeline.io.config import load_config

    resolved = load_config(workdir / "config" / "config.yaml")
    options = {
        "diameter": resolved["locate"]["diameter"], "minmass": resolved["locate"]["minmass"],
        "search_range": resolved["link"]["search_range"], "min_length": resolved["link"]["min_length"],
        **{k: v for k, v in sim.items() if k != "temperature_K"}, "temperature_K": sim["temperature_K"],
    }  # fmt: skip
    scripts = {}
    for engine in ("numba", "python"):
        out_dir = tmp / f"tp{n_frames}-{engine}"
        out_dir.mkdir()
        call = [sys.executable, __file__, "--trackpy-script", json.dumps(
            {"stores": [str(workdir / s) for s in stores], "out_dir": str(out_dir), "engine": engine, **options})]
        seconds, tp_jobs, _ = sampled(call, whole_tree=True)
        scripts[engine] = {"s": round(seconds, 2), "fps": round(total / seconds, 1), "peak_mib": tp_jobs[0]["peak_mib"],
                           "dir": out_dir}

    identical = {}
    for engine, result in scripts.items():
        same = True
        for i in range(args.runs):
            ours = pd.read_parquet(workdir / f"results/r{i}/features.parquet")
            theirs = pd.read_parquet(result["dir"] / f"r{i}.parquet")
            theirs = theirs[["frame", *[c for c in theirs.columns if c != "frame"]]].reset_index(drop=True)
            try:
                pd.testing.assert_frame_equal(ours, theirs)
            except AssertionError:
                same = False
        identical[engine] = same
        del result["dir"]

    return {
        "frames": n_frames,
        "frames_total": total,
        "acquire_s": round(acquire_s, 2),
        "acquire_jobs": acquire_jobs,
        "workflow_s": round(workflow_s, 2),
        "workflow_fps": round(total / workflow_s, 1),
        "stages": per_stage(jobs, total),
        "jobs": jobs,
        "trackpy_numba": scripts["numba"],
        "trackpy_python": scripts["python"],
        "features_identical": identical,
        "ratio_numba": round(scripts["numba"]["s"] / workflow_s, 2),
        "ratio_python": round(scripts["python"]["s"] / workflow_s, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 runs of 200 and 400 frames of 512x512 (< 3 min on 2 cores)")
    parser.add_argument("--runs", type=int, help="runs per length (default 3; quick 2)")
    parser.add_argument("--frames", type=int, nargs="+", help="movie lengths (default 1000 2000; quick 200 400)")
    parser.add_argument("--size", type=int, help="frame side in pixels (default 1024; quick 512)")
    parser.add_argument("--particles", type=int, default=150)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--trackpy-script", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trackpy_script:
        options = json.loads(args.trackpy_script)
        if options["engine"] == "python":
            sys.modules["numba"] = None  # as if numba were not installed: trackpy falls back everywhere
        trackpy_script(**options)
        return {}
    args.runs = args.runs or (2 if args.quick else 3)
    lengths = args.frames or ([200, 400] if args.quick else [1000, 2000])
    args.size = args.size or (512 if args.quick else 1024)
    args.particles = args.particles if not args.quick else min(args.particles, 100)

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="trackflow-facility-") as tmp:
        results = [one_length(n, args, Path(tmp)) for n in lengths]
    for r in results:
        print(f"{r['frames']} frames x {args.runs}: workflow {r['workflow_s']} s ({r['workflow_fps']} fps), "
              f"trackpy+numba {r['trackpy_numba']['s']} s, trackpy {r['trackpy_python']['s']} s")
        for rule, stage in r["stages"].items():
            print(f"  {rule:<10} {stage}")
    longest, shortest = results[-1], results[0]
    summary = {
        "benchmark": "facility",
        "runs": args.runs,
        "frame_shape": [args.size, args.size],
        "particles": args.particles,
        "cores": args.cores,
        "load_at_start": round(load, 2),
        "load_at_end": round(os.getloadavg()[0], 2),
        "lengths": results,
        "ratio_numba": longest["ratio_numba"],
        "ratio_python": longest["ratio_python"],
        "features_identical": all(all(r["features_identical"].values()) for r in results),
        # peak memory of the biggest job, longest over shortest movie: ~1 when independent of length
        "peak_memory_growth": round(
            max(j["peak_mib"] for j in longest["jobs"]) / max(j["peak_mib"] for j in shortest["jobs"]), 2
        ),
        # longest over shortest movie, per stage: seconds should follow the
        # length (per-job start-up aside), peak memory should stay flat
        "growth": {
            rule: {
                "length": round(longest["frames"] / shortest["frames"], 2),
                "s": round(stage["s"] / shortest["stages"][rule]["s"], 2),
                "peak_mib": round(stage["peak_mib"] / shortest["stages"][rule]["peak_mib"], 2),
            }
            for rule, stage in longest["stages"].items()
            if rule in shortest["stages"]
        },
        "targets_met": longest["ratio_numba"] >= 2 and longest["ratio_python"] >= 3,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
