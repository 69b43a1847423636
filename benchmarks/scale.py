"""What scaling out costs and gains.

1. The same small simulated runs through the workflow twice: on this machine
   (``profiles/default``) and as SLURM jobs (``profiles/slurm``, on the
   single-node cluster of ``tests/setup_slurm.sh``). Every SLURM job starts a
   fresh Snakemake in a fresh job, so the difference, per job, is what a
   cluster adds to each stage of each run.
2. locate on one long movie (the real bulk_water frames, repeated) through a
   dask.distributed cluster joined by a scheduler file, with one and then two
   single-thread workers, against trackpy.batch in this process.

    python benchmarks/scale.py [--quick] [--runs N] [--frames N] [--movie-frames N]

Prints one JSON object as its last line:

- ``jobs``: Snakemake jobs of the workflow part (per profile);
- ``local_s``, ``slurm_s``: wall time of each profile's run (Snakemake start to finish);
- ``overhead_per_job_s``: (slurm_s - local_s) / jobs;
- ``slurm_jobs_seen``: jobs of this run in SLURM's job completion log;
- ``same_results``: movies, features and sizes equal between the two runs;
- ``dask_frames``, ``trackpy_s``, ``dask_1_worker_s``, ``dask_2_workers_s``;
- ``dask_speedup``: dask_1_worker_s / dask_2_workers_s;
- ``dask_vs_trackpy``: trackpy_s / dask_2_workers_s;
- ``dask_equals_trackpy``: the features agree with trackpy.batch's.

Both profiles run with compute.threads 1, so that each runs two jobs at once
on this 2-core machine. ``--quick`` (within 60 s on an idle machine): 2 runs
of 20 frames, to their movies only (2 acquire jobs), and a 24-frame movie of
quarter frames (320x212) for Dask. On a 2-core machine shared with other work,
the Dask speed-up is bounded by the free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
BULK_WATER = REPO.parent / "shared" / "data" / "bulk_water"
SIMULATED = "{shape: [64, 64], n_frames: %d, n_particles: 8, diameters_nm: [150], seed: %d}"
LOCATE = {"diameter": 11, "minmass": 20}


# --- workflow: local vs SLURM -----------------------------------------------
def slurm_ready() -> str | None:
    """None when a SLURM node is idle, else why not (after trying to start one)."""

    def up() -> bool:
        try:
            out = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0 and any(s in ("idle", "mixed") for s in out.stdout.split())

    if up():
        return None
    if os.geteuid() != 0:
        return "SLURM is not running and starting it needs root (tests/setup_slurm.sh)"
    done = subprocess.run(["bash", str(REPO / "tests" / "setup_slurm.sh")], capture_output=True, text=True)
    return None if done.returncode == 0 and up() else f"tests/setup_slurm.sh failed: {done.stderr.strip()[-300:]}"


def make_workdir(root: Path, runs: int, frames: int) -> Path:
    workdir = root
    (workdir / "config").mkdir(parents=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    # one core per job on both sides: Snakemake (--cores 2) and SLURM (a
    # 2-core node) then run two jobs at once
    config["compute"] = {**config.get("compute", {}), "threads": 1}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = ["run\tsource\tgroup\tsettings\toverrides"]
    rows += [f"r{i}\tsimulated\t\t{SIMULATED % (frames, i + 1)}\t" for i in range(runs)]
    (workdir / "config" / "runs.tsv").write_text("\n".join(rows) + "\n")
    return workdir


def snakemake(workdir: Path, profile: str, targets: list[str], *extra: str) -> tuple[float, str]:
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--directory", str(workdir),
        "--workflow-profile", str(REPO / "profiles" / profile),
        *extra, *targets,
    ]  # fmt: skip
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-5000:] + done.stderr[-5000:])
        raise SystemExit(f"snakemake ({profile}) failed ({done.returncode})")
    return seconds, done.stdout + done.stderr


def job_count(log: str) -> int:
    table = log.split("Job stats:", 1)[1]
    return int(re.search(r"^total\s+(\d+)\s*$", table, re.M)[1])


def same_tables(a: Path, b: Path, runs: int, names: list[str]) -> bool:
    from pipeline.io.movie import open_movie
    from pipeline.io.tables import read_table

    for i in range(runs):
        left, right = (open_movie(w / "results" / f"r{i}" / "movie.ome.zarr") for w in (a, b))
        if not np.array_equal(left.frames(0, len(left)), right.frames(0, len(right))):
            return False
        for name in names:
            left, right = a / "results" / f"r{i}" / name, b / "results" / f"r{i}" / name
            if not (left.exists() and right.exists()):
                return False
            try:
                pd.testing.assert_frame_equal(read_table(left), read_table(right))
            except AssertionError:
                return False
    return True


def workflow_part(root: Path, runs: int, frames: int, quick: bool) -> dict:
    if quick:
        names = []  # the movies only: one acquire job per run
        targets = [f"results/r{i}/movie.ome.zarr" for i in range(runs)]
    else:
        names = ["features.parquet", "sizes.parquet"]
        targets = []  # the whole workflow, report included
    local = make_workdir(root / "local", runs, frames)
    local_s, local_log = snakemake(local, "default", targets, "--cores", "2")
    result = {"runs": runs, "frames_per_run": frames, "jobs": job_count(local_log), "local_s": round(local_s, 2)}
    why_not = slurm_ready()
    if why_not:
        return {**result, "slurm_s": None, "overhead_per_job_s": None, "slurm_skipped": why_not}
    cluster = make_workdir(root / "slurm", runs, frames)
    prefix = f"tfbench{uuid.uuid4().hex[:6]}"
    slurm_s, slurm_log = snakemake(
        cluster, "slurm", targets,
        "--slurm-init-seconds-before-status-checks", "1",
        "--slurm-jobname-prefix", prefix, "--slurm-no-account",
    )  # fmt: skip
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", slurm_log))
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    jobcomp = re.search(r"^JobCompLoc\s*=\s*(/\S+)", config, re.M)  # every finished job's record
    seen = set()
    if jobcomp and Path(jobcomp[1]).exists():
        seen = set(re.findall(r"^JobId=(\d+) ", Path(jobcomp[1]).read_text(), re.M)) & submitted
    jobs = job_count(slurm_log)
    return {
        **result,
        "slurm_s": round(slurm_s, 2),
        "overhead_per_job_s": round((slurm_s - local_s) / max(jobs, 1), 2),
        "slurm_jobs_submitted": len(submitted),
        "slurm_jobs_seen": len(seen),
        "same_results": same_tables(local, cluster, runs, names),
    }


# --- Dask: locate with 1 and 2 workers via a scheduler file -----------------
def long_movie(path: Path, n_frames: int, quarter: bool = False) -> Path:
    import imageio.v3 as iio

    from pipeline.io.movie import write_movie

    files = sorted(BULK_WATER.glob("bulk_water_*.png"))
    if not files:
        raise SystemExit(f"real data missing: {BULK_WATER}")
    frames = np.stack([255 - iio.imread(f)[..., 1] for f in files]).astype(np.uint8)
    if quarter:  # the top-left quarter of each frame: a quarter of the work
        frames = frames[:, : frames.shape[1] // 2, : frames.shape[2] // 2]
    repeated = np.concatenate([frames] * (n_frames // len(frames) + 1))[:n_frames]
    write_movie(path, repeated, pixel_size_um=0.3509, frame_interval_s=1 / 24, frames_per_shard=8)
    return path


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def dask_part(root: Path, n_frames: int, quick: bool = False) -> dict:
    import trackpy
    from distributed import Client

    from pipeline import locate
    from pipeline.io.movie import open_movie

    trackpy.quiet()
    movie = long_movie(root / "long.ome.zarr", n_frames, quarter=quick)
    frames = open_movie(movie).frames(0, n_frames)
    start_t = time.perf_counter()
    reference = trackpy.batch(frames, **LOCATE, processes=1)
    trackpy_s = time.perf_counter() - start_t

    scheduler_file = root / "scheduler.json"
    common = ["--no-dashboard", "--scheduler-file", str(scheduler_file)]
    procs = [start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", *common], root / "s.log")]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise SystemExit(f"dask scheduler did not start: {(root / 's.log').read_text()[-2000:]}")
            time.sleep(0.1)
        per_task = 4 if quick else 10  # several tasks per worker, to balance them
        compute = {"scheduler": "scheduler_file", "scheduler_file": str(scheduler_file), "frames_per_task": per_task}
        timings = {}
        for workers in (1, 2):
            procs.append(
                start(
                    ["distributed.cli.dask_worker", "--host", "127.0.0.1", "--no-nanny", "--nthreads", "1",
                     "--local-directory", str(root / f"w{workers}"), *common],
                    root / f"w{workers}.log",
                )
            )  # fmt: skip
            with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
                client.wait_for_workers(workers, timeout=120)
                client.run(lambda: __import__("trackpy") and None)  # imports are not the stage's work
            best = float("inf")
            for repeat in range(1 if quick else 2):  # best of two
                out = root / f"features_{workers}_{repeat}.parquet"
                start_t = time.perf_counter()
                features = locate.run(movie, out, LOCATE, compute=compute)
                best = min(best, time.perf_counter() - start_t)
            timings[workers] = best
    finally:
        stop(procs)
    columns = ["frame", "y", "x", "mass"]
    ours = features[columns].sort_values(["frame", "y", "x"]).reset_index(drop=True)
    theirs = reference[columns].sort_values(["frame", "y", "x"]).reset_index(drop=True)
    equal = len(ours) == len(theirs) and np.allclose(ours.to_numpy(float), theirs.to_numpy(float))
    return {
        "dask_frames": n_frames,
        "dask_frame_shape": list(frames.shape[1:]),
        "trackpy_s": round(trackpy_s, 2),
        "dask_1_worker_s": round(timings[1], 2),
        "dask_2_workers_s": round(timings[2], 2),
        "dask_speedup": round(timings[1] / timings[2], 2),
        "dask_vs_trackpy": round(trackpy_s / timings[2], 2),
        "dask_equals_trackpy": bool(equal),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 runs to their movies, a 24-frame movie (< 60 s)")
    parser.add_argument("--runs", type=int, help="simulated runs (default 8; quick 2)")
    parser.add_argument("--frames", type=int, help="frames per simulated run (default 40; quick 20)")
    parser.add_argument("--movie-frames", type=int, help="frames of the long movie (default 400; quick 24)")
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 8)
    frames = args.frames or (20 if args.quick else 40)
    movie_frames = args.movie_frames or (24 if args.quick else 400)
    with tempfile.TemporaryDirectory(prefix="trackflow-scale-") as tmp:
        root = Path(tmp)
        result = {"benchmark": "scale", "quick": args.quick}
        result.update(workflow_part(root / "workflow", runs, frames, args.quick))
        (root / "dask").mkdir()
        result.update(dask_part(root / "dask", movie_frames, args.quick))
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
