"""Locate benchmark: trackflow's Dask-parallel locate against trackpy.batch.

The same frames go through

- ``trackpy.batch(processes=1)`` (the serial reference),
- ``trackpy.batch(processes='auto')`` (trackpy's own multiprocessing),
- trackflow's ``locate_movie`` from the OME-Zarr store, with the
  ``processes`` and ``threads`` schedulers on ``--workers`` workers,

for two movies: a simulated 512x512 NTA movie with ~100 particles and the
real ``bulk_water`` frames. Every method runs ``--repeats`` times,
interleaved, and the best time counts (the machine may be shared). One-time
start-up (the fork server importing trackpy) is measured apart, as
``cold_start_s``. Features must be identical to the serial reference.

Peak memory: a child process locates a short and a long movie of small
frames (10x the frames, the same frames per task); the peak RSS summed over
the child and all its worker processes should not grow with the movie's
length (the long movie alone is 31 MiB in --quick mode, 156 MiB otherwise).

Usage: ``python benchmarks/locate.py [--quick] [--workers 2]``; the last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BULK_WATER = REPO.parent / "shared" / "data" / "bulk_water"


def simulated_frames(n_frames: int, shape=(512, 512), n_particles: int = 100, seed: int = 0) -> np.ndarray:
    try:
        from pipeline.simulate import simulate_movie
    except ImportError:  # the simulator is optional here: plain Gaussian spots
        return gaussian_spots(n_frames, shape, n_particles, seed)
    frames, _, _ = simulate_movie(n_frames=n_frames, shape=shape, n_particles=n_particles, seed=seed)
    return frames


def gaussian_spots(n_frames: int, shape, n_particles: int, seed: int = 0, sigma: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = np.asarray(shape)
    centres = rng.uniform(6, shape - 6, size=(n_particles, 2))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.empty((n_frames, *shape), dtype=np.uint16)
    for t in range(n_frames):
        centres = np.clip(centres + rng.normal(0, 1, centres.shape), 4, shape - 4)
        image = rng.normal(100, 3, tuple(shape))
        for y, x in centres:
            y0, x0 = int(y), int(x)
            win = (slice(max(y0 - 6, 0), y0 + 7), slice(max(x0 - 6, 0), x0 + 7))
            image[win] += 150 * np.exp(-((yy[win] - y) ** 2 + (xx[win] - x) ** 2) / (2 * sigma**2))
        out[t] = np.clip(image, 0, 65535)
    return out


def bulk_water_frames() -> np.ndarray | None:
    if not BULK_WATER.is_dir():
        return None
    import imageio.v3 as iio

    return np.stack([255 - iio.imread(f)[..., 1] for f in sorted(BULK_WATER.glob("bulk_water_*.png"))])


def timed(func, *args, **kwargs):
    start = time.perf_counter()
    result = func(*args, **kwargs)
    return time.perf_counter() - start, result


def in_trackflow_order(found: pd.DataFrame) -> pd.DataFrame:
    return found[["frame", *[c for c in found.columns if c != "frame"]]]


def compare_speed(name, frames, options, workers, repeats, workdir) -> dict:
    import trackpy as tp

    from pipeline.io import write_movie
    from pipeline.locate import locate_movie

    path = Path(workdir) / f"{name}.ome.zarr"
    write_movie(path, frames)
    methods = {
        "trackpy_serial": lambda: tp.batch(frames, processes=1, **options),
        "trackpy_parallel": lambda: tp.batch(frames, processes="auto", **options),
        "processes": lambda: locate_movie(path, compute={"scheduler": "processes"}, threads=workers, **options),
        "threads": lambda: locate_movie(path, compute={"scheduler": "threads"}, threads=workers, **options),
    }
    times: dict[str, list[float]] = {key: [] for key in methods}
    results = {}
    for _ in range(repeats):
        for key, method in methods.items():
            seconds, results[key] = timed(method)
            times[key].append(seconds)
    reference = in_trackflow_order(results["trackpy_serial"])
    identical = True
    for key in ("trackpy_parallel", "processes", "threads"):
        other = results[key] if key in ("processes", "threads") else in_trackflow_order(results[key])
        try:
            pd.testing.assert_frame_equal(other, reference)
        except AssertionError as exc:
            print(f"{name}: {key} differs from trackpy.batch(processes=1): {exc}", file=sys.stderr)
            identical = False
    best = {key: min(v) for key, v in times.items()}
    return {
        "frames": int(len(frames)),
        "frame_shape": list(frames.shape[1:]),
        "features_per_frame": round(len(reference) / len(frames), 1),
        "seconds": {key: round(v, 3) for key, v in best.items()},
        "ms_per_frame_serial": round(1000 * best["trackpy_serial"] / len(frames), 2),
        "speedup_processes_vs_serial": round(best["trackpy_serial"] / best["processes"], 3),
        "speedup_threads_vs_serial": round(best["trackpy_serial"] / best["threads"], 3),
        "speedup_processes_vs_trackpy_parallel": round(best["trackpy_parallel"] / best["processes"], 3),
        "identical": identical,
        "_best": best,
    }


def _timed_locate_chunk(frames, first_frame, **kwargs):
    """pipeline.locate's task, reporting when it ran and where."""
    from pipeline.locate import _locate_chunk

    start = time.time()
    _locate_chunk(frames, first_frame, **kwargs)
    return pd.DataFrame({"pid": [os.getpid()], "start": [start], "end": [time.time()]})


def worker_utilization(frames, options, workers, workdir) -> float:
    """Share of the wall time the workers spent inside locate tasks (1.0: no
    scheduling, start-up or I/O overhead). Unlike speedups, it stays
    meaningful when other programs compete for the cores."""
    from pipeline.compute import map_frame_chunks
    from pipeline.locate import _check_options

    path = Path(workdir) / "utilization.ome.zarr"
    if not path.exists():
        from pipeline.io import write_movie

        write_movie(path, frames)
    checked = _check_options(options["diameter"], {k: v for k, v in options.items() if k != "diameter"},
                             frames.ndim - 1)
    start = time.time()
    spans = map_frame_chunks(_timed_locate_chunk, path, compute={"scheduler": "processes"}, threads=workers,
                             dropped=[], options=checked)
    wall = time.time() - start
    return float((spans["end"] - spans["start"]).sum() / (workers * wall))


# --- peak memory ----------------------------------------------------------------


MEMORY_FRAME = (128, 128)  # 32 KiB per frame: 5000 frames are 160 MiB
MEMORY_TASK_FRAMES = 64  # the same tasks for both lengths: only the length differs


def small_movie(path: Path, n_frames: int, seed: int = 0) -> None:
    """A long movie of small frames, a few drifting spots, shards of 256 frames."""
    from pipeline.io import create_movie

    rng = np.random.default_rng(seed)
    size = np.asarray(MEMORY_FRAME)
    yy, xx = np.mgrid[: size[0], : size[1]]
    centres = rng.uniform(12, size - 12, size=(8, 2))
    background = rng.normal(100, 3, (16, *MEMORY_FRAME))  # recycled: generating noise dominates otherwise
    with create_movie(path, MEMORY_FRAME, np.uint16, frames_per_shard=256) as writer:
        for t in range(n_frames):
            centres = np.clip(centres + rng.normal(0, 0.8, centres.shape), 8, size - 8)
            image = background[t % len(background)].copy()
            for y, x in centres:
                y0, x0 = int(y), int(x)
                win = (slice(y0 - 6, y0 + 7), slice(x0 - 6, x0 + 7))
                image[win] += 300 * np.exp(-((yy[win] - y) ** 2 + (xx[win] - x) ** 2) / 4.5)
            writer.write(t, image.astype(np.uint16))


def rss_child(path: str, workers: int) -> None:
    """Runs in the child process whose memory is measured."""
    from pipeline.locate import locate_movie

    found = locate_movie(path, threads=workers, frames_per_task=MEMORY_TASK_FRAMES, diameter=7, minmass=100)
    print(json.dumps({"features": len(found)}))


def peak_rss_mb(path: Path, workers: int) -> tuple[float, dict]:
    """Peak RSS (MiB) summed over a child process running locate and all its
    descendants (the fork server and the worker processes), polled every 20 ms.
    Shared pages count once per process, so this overstates the total; it is
    for comparing runs."""
    import psutil

    child = subprocess.Popen(
        [sys.executable, __file__, "--rss-child", str(path), "--workers", str(workers)],
        stdout=subprocess.PIPE, text=True,
    )
    root = psutil.Process(child.pid)
    peak = root_peak = 0
    while child.poll() is None:
        total = 0
        try:
            for proc in [root, *root.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                root_peak = max(root_peak, rss) if proc is root else root_peak
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.02)
    out, _ = child.communicate()
    if child.returncode:
        raise RuntimeError(f"rss child failed on {path}")
    return peak / 2**20, {**json.loads(out.strip().splitlines()[-1]), "main_process_peak_rss_mb": root_peak / 2**20}


# --- main -----------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, one repeat (< 60 s on 2 idle cores)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="runs per method (best counts)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child, args.workers)
        return {}

    import trackpy as tp

    from pipeline.compute import DEFAULT_SCHEDULER
    from pipeline.locate import locate_movie

    tp.quiet()
    warnings.simplefilter("ignore")
    repeats = args.repeats or (2 if args.quick else 3)
    n_simulated = 16 if args.quick else 120
    n_bulk = 20 if args.quick else None  # None: all 40 frames
    short_frames, long_frames = (100, 1000) if args.quick else (500, 5000)
    report: dict = {"benchmark": "locate", "quick": args.quick, "workers": args.workers, "repeats": repeats,
                    "default_scheduler": DEFAULT_SCHEDULER, "cpu_count": os.cpu_count(),
                    "load_average_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="trackflow-bench-locate-") as workdir:
        # one-time cost: the fork server imports trackpy for the worker processes
        warm = Path(workdir) / "warm.ome.zarr"
        small_movie(warm, 8)
        report["cold_start_s"] = round(timed(locate_movie, warm, compute={"scheduler": "processes"},
                                             threads=args.workers, diameter=7)[0], 3)
        datasets = {"simulated": (simulated_frames(n_simulated), {"diameter": 7, "minmass": 150})}
        bulk = bulk_water_frames()
        if bulk is not None:
            datasets["bulk_water"] = (bulk[:n_bulk], {"diameter": 11, "minmass": 20})
        per_dataset = {name: compare_speed(name, frames, options, args.workers, repeats, workdir)
                       for name, (frames, options) in datasets.items()}
        total = {key: sum(d["_best"][key] for d in per_dataset.values()) for key in
                 ("trackpy_serial", "trackpy_parallel", "processes", "threads")}
        default = DEFAULT_SCHEDULER if DEFAULT_SCHEDULER in ("processes", "threads") else "processes"
        report["speedup_vs_serial"] = round(total["trackpy_serial"] / total[default], 3)
        report["speedup_vs_trackpy_parallel"] = round(total["trackpy_parallel"] / total[default], 3)
        report["speedup_threads_vs_serial"] = round(total["trackpy_serial"] / total["threads"], 3)
        report["speedup_processes_vs_serial"] = round(total["trackpy_serial"] / total["processes"], 3)
        report["identical"] = all(d["identical"] for d in per_dataset.values())
        name = "bulk_water" if "bulk_water" in datasets else "simulated"
        report["worker_utilization"] = round(worker_utilization(*datasets[name], args.workers, workdir), 3)
        report["worker_utilization_movie"] = name
        for d in per_dataset.values():
            d.pop("_best")
        report["datasets"] = per_dataset

        short, long = Path(workdir) / "short.ome.zarr", Path(workdir) / "long.ome.zarr"
        small_movie(short, short_frames)
        small_movie(long, long_frames)
        rss_short, child_short = peak_rss_mb(short, args.workers)
        rss_long, child_long = peak_rss_mb(long, args.workers)
        frame_mb = np.prod(MEMORY_FRAME) * 2 / 2**20
        report["memory"] = {
            "frames_short": short_frames, "frames_long": long_frames, "frame_shape": list(MEMORY_FRAME),
            "movie_mb_short": round(short_frames * frame_mb, 1), "movie_mb_long": round(long_frames * frame_mb, 1),
            "features_short": child_short["features"], "features_long": child_long["features"],
            "main_process_peak_rss_mb_short": round(child_short["main_process_peak_rss_mb"], 1),
            "main_process_peak_rss_mb_long": round(child_long["main_process_peak_rss_mb"], 1),
            "frames_per_task": MEMORY_TASK_FRAMES,
        }
        report["peak_rss_mb_short"] = round(rss_short, 1)
        report["peak_rss_mb_long"] = round(rss_long, 1)
        report["peak_rss_mb"] = round(rss_long, 1)
        report["peak_rss_ratio_long_vs_short"] = round(rss_long / rss_short, 3)
    report["load_average_end"] = round(os.getloadavg()[0], 2)
    report["targets_met"] = {
        "speedup_vs_serial>=1.8": report["speedup_vs_serial"] >= 1.8,
        "speedup_vs_trackpy_parallel>=1.0": report["speedup_vs_trackpy_parallel"] >= 1.0,
        "identical": report["identical"],
    }
    return report


if __name__ == "__main__":
    result = main()
    if result:
        print(json.dumps(result))
