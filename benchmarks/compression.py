"""Benchmark: which Blosc compression keeps up with the camera, and how big
its files are (``acquire.codec``, ``acquire.shuffle``, ``acquire.clevel``,
``acquire.compression_threads``).

On the camera simulator's 2048x2048 uint16 sCMOS frames (shot noise, read
noise, a background and 300 particles: the frames of benchmarks/acquire.py),
for every option:

1. ``compress_mb_s``: one thread compressing frames, called from a worker
   thread as the writer's pool does (Blosc's own threads off), and
   ``compress_mb_s_threads``: the writer's pool of ``--threads`` threads;
   ``decompress_mb_s`` (one thread) and ``ratio`` (compressed / raw bytes);
   ``fps_one_thread``: frames per second one core could compress;
2. for the options that could reach the target on the cores there are
   (``--full`` options, default the fastest few plus the current default),
   the real acquisition (``pipeline.acquire.acquire``: publisher -> writer
   process -> disk) of ``--frames`` frames as fast as it goes (``fps``,
   ``dropped``, ``ratio_to_zmq`` against raw ZeroMQ in the same run) and
   paced at 100 fps (``paced_dropped``), and with 1 and all compression
   threads for the chosen option.

The choice (``chosen``): wall-clock frame rates on a shared machine swing
by a third from run to run, CPU time per frame much less, so the rule
reads the CPU: of the options whose publisher and writer together need
little enough CPU per frame that all cores could take 1.25 x 100 fps
(``fps_ceiling_cpu``; a fifth of the machine left to the camera's driver
and the rest), with none dropped, the one with the smallest files (ratios
equal to 0.01 count as equal; then the current default stays, else the
cheaper). Level 0 (stored uncompressed) is measured for reference, never
chosen. ``keeps_up``: >= 100 fps measured and none dropped at 100 fps;
``meets_target`` adds
ratio_to_zmq >= 0.5 (the issue's whole target). The last line printed is one JSON object; ``--quick`` stays under
two minutes on 2 cores. The machine's load average is printed beside the
figures: on a shared machine they are indicative only.

    python benchmarks/compression.py [--quick] [--frames N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numcodecs.blosc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import acquire as acquire_bench  # noqa: E402  (benchmarks/acquire.py: frames, raw ZeroMQ, the full path)

from pipeline.io._shards import frame_codec  # noqa: E402
from pipeline.io.movie import DEFAULT_COMPRESSION  # noqa: E402

TARGET_FPS = acquire_bench.TARGET_FPS
#: The CPU a default must leave free: its frame rate on all cores at least this many times the target.
HEADROOM = 1.25

#: (codec, shuffle, clevel): LZ4 at three levels and three filters, Zstd level 1 and 3, the
#: others at 1 or 5, and level 0 (stored uncompressed) for reference.
OPTIONS = [
    ("lz4", "bit", 1), ("lz4", "bit", 5), ("lz4", "bit", 9),
    ("lz4", "byte", 1), ("lz4", "byte", 5), ("lz4", "byte", 9),
    ("lz4", "none", 5),
    ("zstd", "bit", 1), ("zstd", "byte", 1), ("zstd", "byte", 3),
    ("blosclz", "bit", 5), ("blosclz", "byte", 5),
    ("lz4hc", "byte", 1),
    ("zlib", "byte", 1),
    ("lz4", "bit", 0),  # no compression (Blosc copies): the reference
]  # fmt: skip


def name(option) -> str:
    return "{}-{}-{}".format(*option)


def _timed_map(pool, fn, items, min_seconds):
    """Seconds per item of ``fn`` over ``items`` (repeated for at least ``min_seconds``) and the last results."""
    n, t0 = 0, time.perf_counter()
    while True:
        out = list(pool.map(fn, items))
        n += len(items)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / n, out


def micro(frames, option, threads, min_seconds):
    """Compress and decompress throughput of one option, as the writer calls Blosc."""
    codec = frame_codec(option[2], option[0], option[1])
    raw = frames[0].nbytes
    with ThreadPoolExecutor(1) as one:
        one.submit(codec.encode, frames[0]).result()  # warm
        per_frame, encoded = _timed_map(one, codec.encode, frames, min_seconds)
        per_decode, _ = _timed_map(one, codec.decode, encoded, min_seconds / 2)
    with ThreadPoolExecutor(threads) as pool:
        per_frame_pool, _ = _timed_map(pool, codec.encode, frames * threads, min_seconds)
    ratio = sum(map(len, encoded)) / (raw * len(frames))
    # sanity: lossless
    if not np.array_equal(np.frombuffer(codec.decode(encoded[0]), dtype=frames[0].dtype), frames[0].ravel()):
        raise SystemExit(f"benchmark: {name(option)} did not round-trip")
    return {
        "codec": option[0],
        "shuffle": option[1],
        "clevel": option[2],
        "ratio": ratio,
        "compress_mb_s": raw / 1e6 / per_frame,
        "compress_mb_s_threads": raw / 1e6 / per_frame_pool,
        "decompress_mb_s": raw / 1e6 / per_decode,
        "fps_one_thread": 1 / per_frame,
        "fps_threads": 1 / per_frame_pool,
    }


def full(pool, settings, n, tmp, transport, option, zmq_mb_s, repeats, threads=None):
    """The real acquisition with this option, ``repeats`` times as fast as
    it goes and once paced at the target; medians of the fast runs."""
    keys = {"codec": option[0], "shuffle": option[1], "clevel": option[2]}
    if threads is not None:
        keys["compression_threads"] = threads
    fast = [acquire_bench.full_path(pool, n, settings, tmp, transport, **keys) for _ in range(repeats)]
    paced = acquire_bench.full_path(pool, n, settings, tmp, transport, rate_fps=TARGET_FPS, **keys)
    fps = float(np.median([r["stream"]["fps"] for r in fast]))
    writer_ms = float(np.median([r["stream"]["cpu_seconds"] / r["frames_written"] * 1e3 for r in fast]))
    publisher_ms = float(np.median([r["cpu_publisher_s"] / r["frames_written"] * 1e3 for r in fast]))
    ceiling = (os.cpu_count() or 1) * 1e3 / (writer_ms + publisher_ms)
    dropped = max(r["dropped"] for r in fast)
    s = fast[0]["stream"]
    return {
        "option": name(option),
        "compression_threads": threads or os.cpu_count(),
        "repeats": repeats,
        "fps": fps,
        "fps_runs": [r["stream"]["fps"] for r in fast],
        "mb_per_s": fps * pool[0].nbytes / 1e6,
        "ratio_to_zmq": fps * pool[0].nbytes / 1e6 / zmq_mb_s,
        "dropped": dropped,
        "ratio": s["bytes_compressed"] / s["bytes_received"],
        "writer_cpu_ms_per_frame": writer_ms,
        "publisher_cpu_ms_per_frame": publisher_ms,
        # the frame rate if every core did nothing but this acquisition
        "fps_ceiling_cpu": ceiling,
        "paced_fps": paced["stream"]["fps"],
        "paced_dropped": paced["dropped"],
        "keeps_up": bool(fps >= TARGET_FPS and dropped == 0 and paced["dropped"] == 0),
        "headroom": bool(ceiling >= HEADROOM * TARGET_FPS and dropped == 0 and paced["dropped"] == 0),
        "meets_target": bool(
            fps >= TARGET_FPS and dropped == 0 and paced["dropped"] == 0 and fps * pool[0].nbytes / 1e6 / zmq_mb_s >= 0.5
        ),
    }


def choose(runs, default):
    """The option to make the default, by the rule of the module's description."""
    runs = [r for r in runs if not r["option"].endswith("-0")]  # stored uncompressed: the reference only
    able = [r for r in runs if r["headroom"]]
    rule = f"smallest files of the options whose CPU per frame allows {HEADROOM:g} x {TARGET_FPS:g} fps, none dropped"
    if not able:
        able = [r for r in runs if r["fps_ceiling_cpu"] >= 0.9 * max(x["fps_ceiling_cpu"] for x in runs)]
        rule = "none has the headroom here: smallest files of those within 10 % of the lowest CPU per frame"
    best = min(able, key=lambda r: (round(r["ratio"], 2), r["option"] != name(default), r["writer_cpu_ms_per_frame"]))
    codec, shuffle, clevel = best["option"].split("-")
    return (codec, shuffle, int(clevel)), rule


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and shorter timings (< 2 min)")
    parser.add_argument("--frames", type=int, help="frames per real acquisition (default 120 quick, 400 full)")
    parser.add_argument("--pool", type=int, help="distinct simulated frames (default 4 quick, 8 full)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="the writer's pool (default: cores)")
    parser.add_argument("--full", type=int, help="options run through the real acquisition (default 4 quick, 6)")
    parser.add_argument("--repeats", type=int, help="fast runs per option, medians kept (default 2 quick, 3)")
    parser.add_argument("--transport", choices=("ipc", "tcp"), default="ipc")
    args = parser.parse_args(argv)
    n = args.frames or (120 if args.quick else 400)
    n_pool = args.pool or (4 if args.quick else 8)
    n_full = args.full or (4 if args.quick else 6)
    min_seconds = 0.4 if args.quick else 1.5
    repeats = args.repeats or (2 if args.quick else 3)

    t_start = time.perf_counter()
    load = {"load_average_at_start": list(os.getloadavg())}
    numcodecs.blosc.use_threads = False  # as in the writer's pool threads: one core per frame
    pool, settings = acquire_bench.make_pool(n_pool)
    frame_mb = pool[0].nbytes / 1e6
    study = [micro(pool, option, args.threads, min_seconds) for option in OPTIONS]
    for row in study:
        row["fps_ceiling_cores"] = row["fps_one_thread"] * (os.cpu_count() or 1)

    # the real acquisition for the options that could keep up: every core
    # compressing would reach the target (ahead of receiving, CRC and
    # writing), fastest first; and the current default
    default = (DEFAULT_COMPRESSION["codec"], DEFAULT_COMPRESSION["shuffle"], DEFAULT_COMPRESSION["clevel"])
    able = [r for r in study if r["fps_ceiling_cores"] >= 1.5 * TARGET_FPS and r["clevel"] > 0]
    smallest = sorted(able, key=lambda r: r["ratio"])[: n_full // 2]
    fastest = sorted(able, key=lambda r: -r["compress_mb_s"])
    shortlist = [default] + [(r["codec"], r["shuffle"], r["clevel"]) for r in smallest + fastest]
    shortlist = list(dict.fromkeys(shortlist))[:n_full] + [("lz4", "bit", 0)]  # and stored uncompressed
    base = Path(os.environ.get("TRACKFLOW_BENCH_DIR", tempfile.gettempdir()))
    tmp = tempfile.mkdtemp(prefix="trackflow-bench-", dir=base)
    try:
        zmq_mb_s, zmq_fps = acquire_bench.zmq_only(pool, n, args.transport, tmp)
        runs = [full(pool, settings, n, tmp, args.transport, option, zmq_mb_s, repeats) for option in shortlist]
        chosen, rule = choose(runs, default)
        threads = [full(pool, settings, n, tmp, args.transport, chosen, zmq_mb_s, repeats, threads=1)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "benchmark": "compression",
        "quick": bool(args.quick),
        "frame_shape": list(acquire_bench.SHAPE),
        "dtype": "uint16",
        "frame_mb": frame_mb,
        "frames": n,
        "cpu_cores": os.cpu_count(),
        "writer_threads": args.threads,
        "target_fps": TARGET_FPS,
        "study": study,
        "zmq_only_mb_per_s": zmq_mb_s,
        "zmq_only_fps": zmq_fps,
        "acquisition": runs,
        "compression_threads": threads,
        "default": name(default),
        "chosen": {"codec": chosen[0], "shuffle": chosen[1], "clevel": chosen[2], "rule": rule},
        "chosen_is_default": chosen == default,
        **load,
        "load_average_at_end": list(os.getloadavg()),
        "seconds": time.perf_counter() - t_start,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
