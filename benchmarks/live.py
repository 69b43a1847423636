"""Benchmark: the live preview on a camera-rate acquisition, against the
workflow's result for the same store.

1. A movie of 100 nm beads, 1024x1024 px, is simulated first (the
   simulator renders a frame in about 50 ms on this machine, too slow to be
   the camera itself) and stored; a camera then replays it at 30 fps
   (``acquire.rate_fps``: frames it cannot hand over in time are dropped
   and recorded, as a real camera's ring buffer does).
2. The real acquisition (publisher -> writer process -> movie.ome.zarr,
   with a PUB socket) runs with ``trackflow preview`` attached in a process
   of its own (the shipped config/config.yaml's locate, link and size
   sections; its page polled over HTTP when the stream ends).
3. The workflow's stages (``pipeline.locate.run``, ``refine.run``,
   ``link.run``, ``size.run``: the functions its rules call, with the same
   sections) on the recorded store give the final D50.

Reported: ``analysed_fraction`` (frames the preview analysed of those
published), ``dropped`` (frames missing from the recording: must be 0),
``live_d50_nm`` (the preview's final estimate, all the tracks it linked;
``live_d50_at_stream_end_nm``: what its page showed as the last frame was
recorded) against ``workflow_d50_nm``, and ``meets_target``: none dropped
and the live D50 within 10 % of the workflow's. With ``--live-locate`` the
acquisition also locates while acquiring (``acquire.live_locate``) and the
seconds from the end of the stream to the features being ready are
reported, against the locate stage's time on the store. ``--no-preview``
(with ``--live-locate``) leaves the preview out: live locate alone, as an
acquisition without anyone watching it runs.

The last line printed is one JSON object, with the load average: on a
shared machine the figures are indicative. ``--quick``: 20 s of camera
(under 3 minutes on 2 cores); default 60 s.

    python benchmarks/live.py [--quick] [--seconds S] [--fps F] [--size PX] [--workers N] [--live-locate]
                              [--no-preview]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from pipeline.acquire import CameraFrame, acquire
from pipeline.io.config import load_config
from pipeline.io.movie import open_movie, write_movie

REPO = Path(__file__).resolve().parents[1]


class ReplayCamera:
    """A camera (the Camera protocol) showing a stored movie: its frames,
    numbered, stamped at the movie's frame interval, and its settings."""

    def __init__(self, path):
        self.movie = open_movie(path)
        keep = ("pixel_size_um", "frame_interval_s", "exposure_s", "temperature_K", "viscosity_Pa_s", "source")
        self.settings = {k: self.movie.attrs[k] for k in keep if self.movie.attrs.get(k) is not None}
        self.settings["frames_expected"] = len(self.movie)

    def open(self):
        pass

    def frames(self):
        dt = self.movie.frame_interval_s
        for start, stop in self.movie.chunk_bounds():
            block = self.movie.frames(start, stop)
            for i, frame in enumerate(block):
                yield CameraFrame(frame, start + i, (start + i) * dt)

    def close(self):
        pass


def simulate(path, n_frames, size, fps, seed):
    from pipeline.simulate import NTASimulator

    sim = NTASimulator(
        shape=(size, size), n_frames=n_frames, diameters_nm=[100], seed=seed, frame_interval_s=1 / fps,
        exposure_s=0.01, temperature_K=295.0, pixel_size_um=0.2,
    )  # fmt: skip
    meta = sim.metadata
    write_movie(
        path, sim.frames(), pixel_size_um=meta["pixel_size_um"], frame_interval_s=meta["frame_interval_s"],
        metadata={k: meta[k] for k in ("exposure_s", "temperature_K", "viscosity_Pa_s", "source")},
    )  # fmt: skip


def free_endpoint():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def state_now(url):
    """The preview's state, from its page's JSON."""
    with urllib.request.urlopen(url + "state.json", timeout=10) as response:
        return json.loads(response.read())


def start_preview(endpoint, config, tmp, workers):
    """``trackflow preview`` in a process of its own, subscribed to ``endpoint``;
    returns the process, its page's URL, the thread reading its stderr and
    the file its final state goes to."""
    state_file = tmp / "preview.json"
    (tmp / "config.yaml").write_text(yaml.safe_dump({k: config[k] for k in ("locate", "link", "size")}))
    preview = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "preview", "--endpoint", endpoint, "--config", str(tmp / "config.yaml"),
         "--workers", str(workers), "--port", "0", "--view", "log", "--timeout", "30", "--json", str(state_file)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    url_ready = threading.Event()

    def read_stderr():
        for line in preview.stderr:
            lines.append(line.rstrip())
            if "preview: http://" in line:
                url_ready.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    url_ready.wait(60)
    url = re.search(r"(http://127\.0\.0\.1:\d+/)", "\n".join(lines))[1]
    time.sleep(3)  # its workers started, its socket connected
    return preview, url, reader, state_file


def workflow(store, config, tmp):
    """The workflow's stage functions on the store: locate, refine, link, size."""
    from pipeline import link, locate, refine, size

    times = {}
    compute = config["compute"]
    threads = os.cpu_count()
    files = {k: Path(tmp) / f"{k}.parquet" for k in ("features", "refined", "tracks", "sizes")}
    t = time.perf_counter()
    locate.run(store, files["features"], config["locate"], compute=compute, threads=threads)
    times["locate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    refine.run(store, files["features"], files["refined"], config["refine"], compute=compute, threads=threads)
    times["refine_s"] = time.perf_counter() - t
    t = time.perf_counter()
    link.run(files["refined"], files["tracks"], config["link"], movie=store)
    times["link_s"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = size.run(files["tracks"], store, files["sizes"], Path(tmp) / "distribution.csv",
                       Path(tmp) / "summary.json", config["size"])  # fmt: skip
    times["size_s"] = time.perf_counter() - t
    return summary, times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 s of camera (< 3 min)")
    parser.add_argument("--seconds", type=float, help="seconds of camera (default 20 quick, 60)")
    parser.add_argument("--fps", type=float, default=30.0, help="the camera's rate (default %(default)s)")
    parser.add_argument("--size", type=int, default=1024, help="frame size, px (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="the preview's locate processes (default %(default)s)")
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"), help="locate, link, size sections")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--live-locate", action="store_true", help="also locate while acquiring (acquire.live_locate)")
    parser.add_argument("--no-preview", action="store_true", help="no preview (with --live-locate: live locate alone)")
    args = parser.parse_args(argv)
    if args.no_preview and not args.live_locate:
        parser.error("--no-preview measures live locate alone: give --live-locate too")
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    n_frames = int(round(seconds * args.fps))
    config = load_config(args.config)

    t_start = time.perf_counter()
    load_start = list(os.getloadavg())
    base = Path(os.environ.get("TRACKFLOW_BENCH_DIR", tempfile.gettempdir()))
    tmp = Path(tempfile.mkdtemp(prefix="trackflow-live-", dir=base))
    try:
        source = tmp / "source.ome.zarr"
        t = time.perf_counter()
        simulate(source, n_frames, args.size, args.fps, args.seed)
        simulate_s = time.perf_counter() - t

        endpoint = url = preview = None
        if not args.no_preview:
            endpoint = free_endpoint()
            preview, url, reader, state_file = start_preview(endpoint, config, tmp, args.workers)

        store = tmp / "run" / "movie.ome.zarr"
        acquire_kwargs = dict(rate_fps=args.fps, pub_endpoint=endpoint, report=False)
        live_lag = None
        t = time.perf_counter()
        if args.live_locate:
            from pipeline.live.locate import LIVE_SHARD_SECONDS, live_features_path, live_locate

            with live_locate(store, config["locate"]):
                movie = acquire(ReplayCamera(source), store, shard_seconds=LIVE_SHARD_SECONDS, **acquire_kwargs)
                t_end = time.perf_counter()
                at_end = state_now(url) if url else None
            live_lag = time.perf_counter() - t_end if live_features_path(store).is_file() else None
        else:
            movie = acquire(ReplayCamera(source), store, **acquire_kwargs)
            t_end = time.perf_counter()
            at_end = state_now(url)
        acquire_s = t_end - t
        final = None
        if preview is not None:
            preview.wait(timeout=600)
            reader.join(10)
            final = json.loads(state_file.read_text())
        load_during = list(os.getloadavg())

        summary, times = workflow(store, config, tmp)
        adopted = None
        if args.live_locate:
            from pipeline.live.locate import adopt_live_features

            adopted = adopt_live_features(store, config["locate"])[0] is not None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    live_d50 = final["size"].get("walker_d50_nm") if final else None
    wf_d50 = summary.get("walker_d50_nm")
    rel = None if live_d50 is None or wf_d50 is None else (live_d50 - wf_d50) / wf_d50
    dropped = len(movie.attrs["dropped"])
    result = {
        "benchmark": "live",
        "quick": bool(args.quick),
        "frame_shape": [args.size, args.size],
        "camera_fps": args.fps,
        "seconds_of_camera": seconds,
        "frames": n_frames,
        "cpu_cores": os.cpu_count(),
        "preview_workers": args.workers,
        "recording": {
            "frames_written": movie.attrs["frames_written"],
            "dropped": dropped,
            "complete": movie.complete,
            "fps": movie.attrs["stream"]["fps"],
            "seconds": acquire_s,
        },
        "preview": None if final is None else {
            "frames_published": final["frames_published"],
            "frames_analysed": final["frames_analysed"],
            "analysed_fraction": final["analysed_fraction"],
            "bursts": final["bursts"],
            "tracks": final["tracks"],
            "particles_mean": final["particles_mean"],
            "live_d50_nm": live_d50,
            "live_mode_nm": final["size"].get("walker_mode_nm"),
            "live_tracks_sized": final["size"].get("n_tracks"),
            "live_d50_at_stream_end_nm": at_end["size"].get("walker_d50_nm"),
            "analysed_fraction_at_stream_end": at_end["analysed_fraction"],
            "size_seconds": final.get("size_seconds"),
        },
        "workflow": {
            "d50_nm": wf_d50,
            "mode_nm": summary.get("walker_mode_nm"),
            "n_tracks": summary.get("n_tracks"),
            **times,
        },
        "analysed_fraction": final["analysed_fraction"] if final else None,
        "dropped": dropped,
        "live_d50_nm": live_d50,
        "workflow_d50_nm": wf_d50,
        "truth_nm": 100.0,
        "live_vs_workflow": rel,
        "live_locate": None if not args.live_locate else {
            "features_ready_s_after_last_frame": live_lag,
            "adopted_by_locate": adopted,
            "locate_stage_s": times["locate_s"],
        },  # fmt: skip
        # without a preview there is no live D50: the recording and live locate are what is measured
        "meets_target": bool(dropped == 0 and (args.no_preview or (rel is not None and abs(rel) <= 0.10))),
        "simulate_s": simulate_s,
        "load_average_at_start": load_start,
        "load_average_after_acquisition": load_during,
        "seconds": time.perf_counter() - t_start,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
