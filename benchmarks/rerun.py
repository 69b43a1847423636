"""How much a parameter tweak costs: a full workflow run of N small simulated
runs, then a change of ``link.search_range``, which should re-run only link,
size (and size_group) and report, in a fraction of the full run's time.

    python benchmarks/rerun.py [--quick] [--runs N] [--frames N] [--cores N]

Prints one JSON object as its last line:

- ``full_s``: wall time of the full run (Snakemake start to finish);
- ``noop_s``: a run with nothing changed (Snakemake's own overhead);
- ``rerun_s``: the run after the link change;
- ``rerun_ratio``: rerun_s / full_s;
- ``full_rules``, ``noop_rules``, ``rerun_rules``: rule -> jobs each run ran
  (Snakemake's job table);
- ``rerun_rewritten``: output files whose modification time changed;
- ``only_downstream``: true when only link, size, size_group and report ran.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOWNSTREAM_OF_LINK = {"link", "size", "size_group", "report"}


def snakemake(workdir: Path, cores: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--directory", str(workdir),
        "--workflow-profile", str(REPO / "profiles" / "default"),
        "--cores", str(cores),
        *args,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"snakemake failed ({done.returncode}): {' '.join(cmd)}")
    return done


def timed(workdir: Path, cores: int) -> tuple[float, dict[str, int]]:
    """Wall time of a run, and the jobs it ran per rule (from the job table
    Snakemake prints before it starts; {} when there was nothing to do)."""
    start = time.perf_counter()
    done = snakemake(workdir, cores)
    seconds = time.perf_counter() - start
    out = done.stdout + done.stderr
    if "Job stats:" not in out:
        return seconds, {}
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
    jobs.pop("total", None)
    jobs.pop("all", None)
    return seconds, jobs


def output_times(workdir: Path) -> dict[str, int]:
    times = {}
    for path in (workdir / "results").rglob("*"):
        if path.name == "zarr.json" and path.parent.name.endswith(".ome.zarr"):
            times[str(path.parent.relative_to(workdir))] = path.stat().st_mtime_ns
        elif path.is_file() and ".ome.zarr" not in str(path) and "logs" not in path.parts:
            times[str(path.relative_to(workdir))] = path.stat().st_mtime_ns
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 runs of 30 frames of 64x64 (< 60 s)")
    parser.add_argument("--runs", type=int, help="simulated runs (default 4; quick 2)")
    parser.add_argument("--frames", type=int, help="frames per run (default 100; quick 30)")
    parser.add_argument("--size", type=int, help="frame side in pixels (default 128; quick 64)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="compute.threads of the jobs (default 1)")
    args = parser.parse_args(argv)
    n_runs = args.runs or (2 if args.quick else 4)
    n_frames = args.frames or (30 if args.quick else 100)
    side = args.size or (64 if args.quick else 128)

    with tempfile.TemporaryDirectory(prefix="trackflow-rerun-") as tmp:
        workdir = Path(tmp)
        (workdir / "config").mkdir()
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text()) or {}
        # one-thread jobs run side by side; a Dask pool gains nothing on tiny movies
        config.setdefault("compute", {})["threads"] = args.threads
        (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        rows = ["run\tsource\tgroup\tsettings"]
        for i in range(n_runs):
            settings = (
                f"{{shape: [{side}, {side}], n_frames: {n_frames}, n_particles: {max(4, side * side // 512)}, "
                f"diameters_nm: [{100 + 50 * (i % 3)}], seed: {i + 1}}}"
            )
            # replicate pairs (r0, r1), (r2, r3), ... when there are at least four runs
            group = f"rep{i // 2}" if n_runs >= 4 and i // 2 < n_runs // 2 else ""
            rows.append(f"r{i}\tsimulated\t{group}\t{settings}")
        (workdir / "config" / "runs.tsv").write_text("\n".join(rows) + "\n")

        full_s, full_rules = timed(workdir, args.cores)
        noop_s, noop_rules = timed(workdir, args.cores)

        from pipeline.io.config import load_config

        search_range = load_config(workdir / "config" / "config.yaml")["link"]["search_range"]
        config.setdefault("link", {})["search_range"] = search_range + 1
        (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        before = output_times(workdir)
        rerun_s, rerun_rules = timed(workdir, args.cores)
        after = output_times(workdir)
        rewritten = sorted(p for p, t in after.items() if before.get(p) != t)

    result = {
        "benchmark": "rerun",
        "runs": n_runs,
        "frames": n_frames,
        "frame_shape": [side, side],
        "cores": args.cores,
        "threads": args.threads,
        "full_s": round(full_s, 2),
        "noop_s": round(noop_s, 2),
        "full_rules": full_rules,
        "noop_rules": noop_rules,
        "rerun_s": round(rerun_s, 2),
        "rerun_ratio": round(rerun_s / full_s, 3),
        "rerun_rules": rerun_rules,
        "rerun_rewritten": rewritten,
        "only_downstream": set(rerun_rules) <= DOWNSTREAM_OF_LINK
        and not any(p.endswith(("movie.ome.zarr", "features.parquet", "refined.parquet")) for p in rewritten),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
