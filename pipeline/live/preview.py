"""``trackflow preview``: what the camera sees, analysed while it records.

A subscriber of the acquisition's PUB socket (``trackflow acquire --pub``,
``acquire.pub_endpoint``) that shows, as the frames come:

- particles per frame (the ``locate`` section's ``trackpy.locate``, through
  :func:`pipeline.locate.locate_frames`, on ``workers`` processes);
- tracks linked online, frame by frame, by trackpy's own online linker
  (``trackpy.linking.Linker``, the class behind ``trackpy.link_iter``) with
  the ``link`` section's search range, memory and solver;
- the size distribution of the tracks so far (finished and still running),
  after the link stage's filters (:func:`pipeline.link.filters.finish_tracks`),
  by the size stage's estimator (:func:`pipeline.size.size_tracks`, the
  ``size`` section), recomputed every ``size_every_s`` seconds in a process
  of its own, or less often when an estimate takes longer than a third of
  that (the estimate then gets a third of a core: locating comes first);

as a live terminal view (rich) and as a small page served on loopback
(``/`` refreshes itself; ``/state.json`` is the same state as JSON).

It never slows the recording: the PUB side drops frames for a slow
subscriber and never blocks the lossless PUSH -> PULL path, and the
analysis runs at a lower CPU priority (``nice``). When the analysis cannot
keep up, it takes the frames in bursts of consecutive frames (up to
``buffer_frames``, then none until it has caught up), so that tracks still
have single-frame steps to size, and says which fraction of the frames it
analysed; a gap longer than the linker's memory ends every track.
The conditions (pixel size, frame interval, exposure, temperature) come
from the acquisition's metadata, which the publisher repeats on the PUB
socket every second for subscribers that join late.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping

import numpy as np
import pandas as pd
import zmq

from ..acquire import wire
from ..io.schema import check_section
from .page import format_figure

__all__ = ["OnlineTracks", "LivePreview", "live_preview", "size_summary"]

log = logging.getLogger("trackflow.preview")

_LINK_KEYS = ("search_range", "memory", "adaptive_stop", "adaptive_step", "link_strategy")
_FILTER_KEYS = ("min_length", "min_mass", "max_size", "max_ecc", "subtract_drift", "drift_smoothing")
#: Seconds between the starts of two size estimates, in units of the last one's duration.
SIZE_DUTY_FACTOR = 3.0
_CONDITION_KEYS = ("pixel_size_um", "frame_interval_s", "exposure_s", "temperature_K", "viscosity_Pa_s")


class OnlineTracks:
    """Features linked into tracks frame by frame, as they come.

    trackpy's online linker (``trackpy.linking.Linker``: ``init_level`` for
    a first frame, ``next_level`` for each next one) with the link
    section's ``search_range`` (px), ``memory``, ``adaptive_stop``,
    ``adaptive_step`` and ``link_strategy``. A gap of more frames than
    ``memory`` (frames not analysed, or frames without features) ends every
    track: the next frame starts new ones. Track ids stay unique across
    such restarts.

    Parameters
    ----------
    **link
        The ``link`` section's keys (others are ignored).
    """

    def __init__(self, **link: Any):
        from trackpy.linking import Linker

        self._Linker = Linker
        self.link = {k: link[k] for k in _LINK_KEYS if k in link}
        self.memory = int(self.link.get("memory", 0))
        self.linker = None
        self.last_frame: int | None = None
        self.offset = 0  # added to trackpy's ids, which restart with every Linker
        self.max_id = -1
        self.rows: list[pd.DataFrame] = []
        self.last_seen: dict[int, int] = {}  # track id -> last frame
        self.restarts = 0
        self.failures = 0

    def add(self, frame: int, features: pd.DataFrame) -> None:
        """Link one frame's features (``y, x`` in pixels) to the tracks so far."""
        if len(features) == 0:
            return  # the gap it leaves ends the tracks, if longer than memory
        coords = features[["y", "x"]].to_numpy(dtype=float)
        gap = None if self.last_frame is None else frame - self.last_frame - 1
        try:
            if self.linker is None or gap > self.memory:
                self._restart()
                self.linker.init_level(coords, frame)
            else:
                self.linker.next_level(coords, frame)
        except Exception as exc:  # an oversize subnetwork: trackpy gives up on this frame
            log.debug("preview: linking frame %d failed (%s); tracks restart", frame, exc)
            self.failures += 1
            self.linker = None
            self.last_frame = None
            return
        ids = np.asarray(self.linker.particle_ids, dtype=np.int64) + self.offset
        rows = features.copy()
        rows["particle"] = ids
        self.rows.append(rows)
        for pid in ids.tolist():
            self.last_seen[pid] = frame
        self.max_id = max(self.max_id, int(ids.max()))
        self.last_frame = frame

    def _restart(self) -> None:
        if self.linker is not None:
            self.restarts += 1
        self.offset = self.max_id + 1
        self.linker = self._Linker(**self.link)

    @property
    def n_tracks(self) -> int:
        return len(self.last_seen)

    @property
    def n_active(self) -> int:
        """Tracks that may still continue (seen within ``memory`` + 1 frames of the last frame)."""
        if self.last_frame is None:
            return 0
        return sum(1 for f in self.last_seen.values() if self.last_frame - f <= self.memory)

    def table(self) -> pd.DataFrame:
        """Every linked row so far (``frame``, positions, ..., ``particle``)."""
        if not self.rows:
            return pd.DataFrame(columns=["frame", "y", "x", "particle"])
        return pd.concat(self.rows, ignore_index=True)


def size_summary(
    tracks: pd.DataFrame,
    conditions: Mapping[str, Any],
    link: Mapping[str, Any],
    size: Mapping[str, Any],
    n_frames: int | None = None,
) -> dict[str, Any]:
    """The size stage's estimator on the tracks so far, after the link stage's filters.

    Parameters
    ----------
    tracks : DataFrame
        Linked rows (:meth:`OnlineTracks.table`).
    conditions : mapping
        ``pixel_size_um``, ``frame_interval_s``, ``exposure_s``,
        ``temperature_K``, ``viscosity_Pa_s`` (the acquisition's metadata;
        the ``size`` section's ``temperature_K`` and ``viscosity_Pa_s`` win).
    link, size : mapping
        The ``link`` and ``size`` sections (validated).
    n_frames : int, optional
        Frames analysed (particles per frame).

    Returns
    -------
    dict
        ``n_tracks`` (sized), ``walker_d50_nm``, ``walker_mode_nm``,
        ``walker_mean_nm``, ``naive_d50_nm``, ``d50_ci_nm``, ``sigma_um`` and
        ``distribution`` (bin centres, Walker and naive fractions); or
        ``n_tracks`` 0 and ``note`` when nothing can be sized yet.
    """
    from ..link.filters import finish_tracks
    from ..size import size_tracks

    if len(tracks) == 0:
        return {"n_tracks": 0, "note": "no tracks yet"}
    T = size.get("temperature_K") or conditions.get("temperature_K")
    if T is None or conditions.get("pixel_size_um") is None or conditions.get("frame_interval_s") is None:
        return {"n_tracks": 0, "note": "waiting for the acquisition's metadata (pixel size, frame interval, temperature)"}
    kept = finish_tracks(tracks, features_in=len(tracks), **{k: link[k] for k in _FILTER_KEYS if k in link})
    if len(kept) == 0:
        return {"n_tracks": 0, "note": f"no track of {link.get('min_length')} frames yet"}
    params = {k: v for k, v in size.items() if k not in ("temperature_K", "viscosity_Pa_s")}
    try:
        _, dist, summary = size_tracks(
            kept,
            pixel_size_um=conditions["pixel_size_um"],
            frame_interval_s=float(conditions["frame_interval_s"]),
            exposure_s=conditions.get("exposure_s"),
            temperature_K=float(T),
            viscosity_Pa_s=size.get("viscosity_Pa_s") or conditions.get("viscosity_Pa_s"),
            n_frames=n_frames,
            **params,
        )
    except ValueError as exc:  # too few steps so far, ...
        return {"n_tracks": 0, "note": str(exc)}
    out = {
        key: summary.get(key)
        for key in ("n_tracks", "walker_d50_nm", "walker_mode_nm", "walker_mean_nm", "naive_d50_nm", "d50_ci_nm",
                    "sigma_um", "particles_per_frame")
    }  # fmt: skip
    out["distribution"] = {
        "diameter_nm": dist["diameter_nm"].round(2).tolist(),
        "walker_fraction": dist["walker_fraction"].round(5).tolist(),
        "naive_fraction": dist["naive_fraction"].round(5).tolist(),
    }
    return json.loads(json.dumps(out, default=float).replace("NaN", "null"))


def size_interval(size_every_s: float, last_seconds: float | None) -> float:
    """Seconds between the starts of two size estimates: ``size_every_s``, or
    :data:`SIZE_DUTY_FACTOR` times the last estimate's seconds if longer.
    With many tracks an estimate takes seconds; back to back they would take
    a core from locating the frames, which comes first."""
    return max(float(size_every_s), SIZE_DUTY_FACTOR * float(last_seconds or 0.0))


def _worker_init(nice: int) -> None:
    import warnings

    warnings.simplefilter("ignore")  # trackpy's "no maxima survived" on empty frames
    try:
        os.nice(int(nice))
    except OSError:
        pass


def _warm_up_frame() -> np.ndarray:
    """A frame with one bright spot: locating it compiles (or loads from
    numba's cache) every kernel a real frame needs, before the stream comes;
    a blank frame stops before the maxima and the refinement."""
    yy, xx = np.mgrid[:48, :48]
    return (20 + 2000 * np.exp(-((yy - 24) ** 2 + (xx - 24) ** 2) / 4.0)).astype(np.uint16)


def _locate_one(image: np.ndarray, frame: int, options: Mapping[str, Any], slow_s: float) -> pd.DataFrame:
    from ..locate import locate_frames

    if slow_s:
        time.sleep(slow_s)  # an artificially slow analysis (tests, benchmarks)
    return locate_frames(image[None], frame, **options)


def _size_job(tracks, conditions, link, size, n_frames) -> tuple[dict, float]:
    t0 = time.perf_counter()
    return size_summary(tracks, conditions, link, size, n_frames), time.perf_counter() - t0


class LivePreview:
    """The live analysis of one stream (see the module's description).

    Parameters
    ----------
    endpoint : str
        The acquisition's PUB endpoint.
    locate, link, size : mapping, optional
        The ``locate``, ``link`` and ``size`` sections (validated; missing
        keys take their defaults).
    conditions : mapping, optional
        Conditions that override the acquisition's metadata (``pixel_size_um``,
        ``frame_interval_s``, ``exposure_s``, ``temperature_K``, ``viscosity_Pa_s``).
    workers : int
        Processes locating frames.
    buffer_frames : int
        Frames waiting for analysis before it stops taking more until it has
        caught up (the length of a burst of consecutive frames).
    size_every_s : float
        Seconds between two estimates of the size distribution (at least,
        and at least three times the last estimate's seconds).
    nice : int
        Added to the analysis processes' CPU niceness.
    slow_s : float
        Seconds added to every frame's analysis (to test a slow preview).
    max_frame_bytes : int
        Larger messages are refused by ZeroMQ.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        locate: Mapping[str, Any] | None = None,
        link: Mapping[str, Any] | None = None,
        size: Mapping[str, Any] | None = None,
        conditions: Mapping[str, Any] | None = None,
        workers: int = 1,
        buffer_frames: int = 64,
        size_every_s: float = 5.0,
        nice: int = 10,
        slow_s: float = 0.0,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
    ):
        self.endpoint = endpoint
        from ..locate import TRACKPY_OPTIONS

        locate_params = check_section("locate", dict(locate or {}))
        if locate_params["method"] != "trackpy":
            log.info("preview: locates with trackpy's method (locate.method %s is the locate stage's)",
                     locate_params["method"])
        # what trackpy.locate takes (the preview locates with trackpy, whatever the stage's method)
        self.options = {k: v for k, v in locate_params.items() if k == "diameter" or k in TRACKPY_OPTIONS}
        self.link = check_section("link", dict(link or {}))
        if self.link["method"] != "nearest" or self.link["search_range_um"] is not None:
            log.info("preview: links online with trackpy's nearest-neighbour linker and search_range in pixels")
        self.size = check_section("size", dict(size or {}))
        self.given_conditions = {k: v for k, v in dict(conditions or {}).items() if v is not None}
        self.metadata: dict[str, Any] = {}
        self.workers = max(1, int(workers))
        self.buffer_frames = max(1, int(buffer_frames))
        self.size_every_s = float(size_every_s)
        self.nice = int(nice)
        self.slow_s = float(slow_s)
        self.max_frame_bytes = int(max_frame_bytes)
        self.tracks = OnlineTracks(**self.link)
        # counters (the receiver thread writes some, under the lock)
        self._lock = threading.Lock()
        self._inbox: collections.deque = collections.deque()
        self._accepting = True
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.next_seq: int | None = None  # from the end message
        self.frames_received = 0
        self.frames_skipped = 0  # received while the analysis was catching up
        self.frames_analysed = 0
        self.bursts = 0
        self.rejected = 0
        self.ended = False
        self.particles: collections.deque = collections.deque(maxlen=600)  # (seq, n)
        self.particles_total = 0
        self.last_analysed_seq: int | None = None
        self.sized: dict[str, Any] = {"n_tracks": 0, "note": "no tracks yet"}
        self.sized_at: float | None = None
        self.size_seconds: float | None = None
        self.t0 = time.perf_counter()
        self.t_last_message: float | None = None
        self._stop = threading.Event()
        self.server: ThreadingHTTPServer | None = None

    # -- the stream -------------------------------------------------------
    def _receive(self, sock: zmq.Socket) -> None:
        """The receiver thread: take every message off the socket, keep the
        frames the analysis will take (bursts), count the rest."""
        while not self._stop.is_set():
            if not sock.poll(100):
                continue
            parts = sock.recv_multipart(copy=False)
            now = time.perf_counter()
            try:
                header = wire.decode_header(parts[0].buffer)
                kind = wire.message_kind(header)
                if kind == "start":
                    metadata = header.get("metadata") or {}
                    if isinstance(metadata, dict):
                        with self._lock:
                            self.metadata = {k: metadata[k] for k in _CONDITION_KEYS if k in metadata}
                    continue
                if kind == "end":
                    with self._lock:
                        self.next_seq = header.get("next_seq")
                        self.ended = True
                        self.t_last_message = now
                    return
                if len(parts) != 2:
                    continue
                fh = wire.check_frame(header, len(parts[1].buffer), max_frame_bytes=self.max_frame_bytes)
            except wire.WireError:
                self.rejected += 1
                continue
            image = np.frombuffer(parts[1].buffer, dtype=fh.dtype).reshape(fh.shape)
            with self._lock:
                self.t_last_message = now
                if self.first_seq is None:
                    self.first_seq = fh.seq
                if self.last_seq is not None and fh.seq <= self.last_seq:
                    continue
                self.last_seq = fh.seq
                self.frames_received += 1
                if self._accepting and len(self._inbox) >= self.buffer_frames:
                    self._accepting = False  # behind: skip frames until caught up
                elif not self._accepting and not self._inbox:
                    self._accepting = True
                    self.bursts += 1
                if self._accepting:
                    self._inbox.append((fh.seq, image))
                else:
                    self.frames_skipped += 1

    @property
    def conditions(self) -> dict[str, Any]:
        return {**self.metadata, **self.given_conditions}

    def state(self) -> dict[str, Any]:
        """Everything the views show, as plain JSON values."""
        with self._lock:
            first, last = self.first_seq, self.last_seq
            if self.next_seq is not None and first is not None:
                last = max(last if last is not None else first - 1, self.next_seq - 1)
            published = 0 if first is None else last - first + 1
            recent = list(self.particles)
            state = {
                "endpoint": self.endpoint,
                "elapsed_s": time.perf_counter() - self.t0,
                "ended": self.ended,
                "frames_published": published,  # by sequence number, including those PUB dropped
                "frames_received": self.frames_received,
                "frames_analysed": self.frames_analysed,
                "frames_skipped_busy": self.frames_skipped,
                "analysed_fraction": self.frames_analysed / published if published else None,
                "bursts": self.bursts,
                "waiting": len(self._inbox),
                "last_seq": self.last_seq,
                "last_analysed_seq": self.last_analysed_seq,
                "lag_frames": None if self.last_analysed_seq is None or self.last_seq is None
                else self.last_seq - self.last_analysed_seq,
                "particles_last": recent[-1][1] if recent else None,
                "particles_mean": self.particles_total / self.frames_analysed if self.frames_analysed else None,
                "particles_recent": recent[-200:],
                "tracks": {
                    "total": self.tracks.n_tracks,
                    "active": self.tracks.n_active,
                    "finished": self.tracks.n_tracks - self.tracks.n_active,
                    "restarts": self.tracks.restarts,
                },
                "size": self.sized,
                "size_age_s": None if self.sized_at is None else time.perf_counter() - self.sized_at,
                "size_seconds": self.size_seconds,
                "conditions": self.conditions,
                "rejected": self.rejected,
            }
        return json.loads(json.dumps(state, default=float).replace("NaN", "null"))

    # -- running ------------------------------------------------------------
    def serve(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Serve ``/`` (a page that refreshes itself) and ``/state.json`` on
        loopback, in a thread; returns the page's URL."""
        from .page import render_page

        preview = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] in ("/state.json", "/state"):
                    body, kind = json.dumps(preview.state()).encode(), "application/json"
                elif self.path.split("?")[0] in ("/", "/index.html"):
                    body, kind = render_page(preview.state()).encode(), "text/html; charset=utf-8"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer((host, int(port)), Handler)
        threading.Thread(target=self.server.serve_forever, name="trackflow-preview-http", daemon=True).start()
        return f"http://{host}:{self.server.server_address[1]}/"

    def run(
        self,
        *,
        duration_s: float | None = None,
        timeout_s: float | None = None,
        view: str = "auto",
        on_update=None,
        update_every_s: float = 0.5,
    ) -> dict[str, Any]:
        """Analyse the stream until it ends (or ``duration_s`` passes, or no
        message comes for ``timeout_s``); returns the final state, with the
        size distribution of all tracks.

        ``view``: ``"rich"`` (a live terminal view), ``"log"`` (a line every
        few seconds on stderr), ``"none"``, or ``"auto"`` (rich on a terminal).
        ``on_update`` is called with the state every ``update_every_s``.
        """
        context = multiprocessing.get_context("spawn")  # before any socket or thread of ours
        locators = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_worker_init, initargs=(self.nice,)
        )
        sizer = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=context, initializer=_worker_init, initargs=(self.nice,)
        )
        warm = [locators.submit(_locate_one, _warm_up_frame(), 0, self.options, 0.0)
                for _ in range(self.workers)]  # fmt: skip
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.endpoint)
        receiver = threading.Thread(target=self._receive, args=(sock,), name="trackflow-preview-recv", daemon=True)
        receiver.start()
        concurrent.futures.wait(warm)
        display = _Display(view)
        inflight: collections.deque = collections.deque()
        sizing = None
        t_size = time.perf_counter()
        t_update = 0.0
        t_end = None if duration_s is None else time.perf_counter() + float(duration_s)
        try:
            with display:
                while True:
                    now = time.perf_counter()
                    with self._lock:
                        while self._inbox and len(inflight) < 2 * self.workers:
                            seq, image = self._inbox.popleft()
                            inflight.append((seq, locators.submit(_locate_one, image, seq, self.options, self.slow_s)))
                        ended, t_msg = self.ended, self.t_last_message
                    if inflight:
                        seq, future = inflight[0]
                        try:
                            features = future.result(timeout=0.05)
                        except concurrent.futures.TimeoutError:
                            features = None
                        if features is not None:
                            inflight.popleft()
                            self._analysed(seq, features)
                    else:
                        time.sleep(0.02)
                    if sizing is not None and sizing.done():
                        self.sized, self.size_seconds = sizing.result()
                        self.sized_at, sizing = time.perf_counter(), None
                    every = size_interval(self.size_every_s, self.size_seconds)
                    if sizing is None and now - t_size >= every and self.tracks.rows:
                        sizing = sizer.submit(_size_job, *self._size_args())
                        t_size = now
                    if now - t_update >= update_every_s:
                        state = self.state()
                        display.update(state)
                        if on_update is not None:
                            on_update(state)
                        t_update = now
                    idle = not inflight and not self._inbox
                    if idle and ended:
                        break
                    if t_end is not None and now >= t_end:
                        break
                    silent_since = t_msg if t_msg is not None else self.t0
                    if idle and timeout_s is not None and now - silent_since > timeout_s:
                        break
                # the last estimate: every track so far
                if sizing is not None:
                    sizing.result()
                self.sized, self.size_seconds = _size_job(*self._size_args())
                self.sized_at = time.perf_counter()
                state = self.state()
                display.update(state, final=True)
                if on_update is not None:
                    on_update(state)
        finally:
            self._stop.set()
            receiver.join(timeout=5)
            sock.close(linger=0)
            ctx.term()
            locators.shutdown(wait=False, cancel_futures=True)
            sizer.shutdown(wait=False, cancel_futures=True)
        return state

    def _analysed(self, seq: int, features: pd.DataFrame) -> None:
        self.tracks.add(seq, features)
        with self._lock:
            self.frames_analysed += 1
            self.particles.append((seq, len(features)))
            self.particles_total += len(features)
            self.last_analysed_seq = seq

    def _size_args(self) -> tuple:
        return (self.tracks.table(), self.conditions, self.link, self.size, self.frames_analysed)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Display:
    """The terminal view: a rich Live panel, log lines, or nothing."""

    def __init__(self, view: str):
        if view == "auto":
            view = "rich" if sys.stdout.isatty() else "log"
        self.view = view
        self.live = None
        self.t_line = 0.0

    def __enter__(self) -> "_Display":
        if self.view == "rich":
            from rich.live import Live

            self.live = Live(refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, state: dict, final: bool = False) -> None:
        if self.view == "rich":
            self.live.update(rich_view(state))
        elif self.view == "log":
            now = time.perf_counter()
            if final or now - self.t_line >= 5:
                print(summary_line(state), file=sys.stderr, flush=True)
                self.t_line = now


def summary_line(state: dict) -> str:
    size = state["size"]
    fraction = state["analysed_fraction"]
    return (
        f"preview: {state['frames_analysed']}/{state['frames_published']} frames analysed "
        f"({format_figure(None if fraction is None else 100 * fraction, '%', 0)}), "
        f"{format_figure(state['particles_last'])} particles in frame {state['last_analysed_seq']}, "
        f"{state['tracks']['total']} tracks ({state['tracks']['active']} running); "
        f"D50 {format_figure(size.get('walker_d50_nm'), ' nm')} from {size.get('n_tracks', 0)} tracks"
    )


def rich_view(state: dict):
    """The terminal view of a state, as a rich renderable."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    size = state["size"]
    fraction = state["analysed_fraction"]
    table = Table.grid(padding=(0, 2))
    table.add_column(justify="right", style="bold")
    table.add_column()
    table.add_row("frames", f"{state['frames_analysed']} analysed of {state['frames_published']} published "
                  f"({format_figure(None if fraction is None else 100 * fraction, '%', 0)}); "
                  f"lag {format_figure(state['lag_frames'])} frames")  # fmt: skip
    table.add_row("particles", f"{format_figure(state['particles_last'])} in the last frame, "
                  f"{format_figure(state['particles_mean'])} per frame on average")  # fmt: skip
    t = state["tracks"]
    table.add_row("tracks", f"{t['total']} ({t['active']} running, {t['finished']} finished)")
    table.add_row("D50", f"{format_figure(size.get('walker_d50_nm'), ' nm')} (mode {format_figure(size.get('walker_mode_nm'), ' nm')}) "
                  f"from {size.get('n_tracks', 0)} tracks" + (f"  [{size['note']}]" if size.get("note") else ""))  # fmt: skip
    parts = [table]
    dist = size.get("distribution")
    if dist:
        bars = Table.grid(padding=(0, 1))
        bars.add_column(justify="right")
        bars.add_column()
        top = max(dist["walker_fraction"]) or 1
        for d, w in zip(dist["diameter_nm"], dist["walker_fraction"]):
            if w >= 0.01 * top:
                bars.add_row(f"{d:.0f} nm", "█" * max(1, int(round(40 * w / top))))
        parts.append(bars)
    status = "ended" if state["ended"] else "live"
    return Panel(Group(*parts), title=f"trackflow preview ({status}) {state['endpoint']}")


def live_preview(endpoint: str, *, port: int | None = 0, **kwargs: Any) -> dict[str, Any]:
    """Run a :class:`LivePreview` (and its page on loopback, unless ``port``
    is None) until the stream ends; returns the final state.

    Keyword arguments are :class:`LivePreview`'s and :meth:`LivePreview.run`'s.
    """
    run_keys = {k: kwargs.pop(k) for k in ("duration_s", "timeout_s", "view", "on_update") if k in kwargs}
    preview = LivePreview(endpoint, **kwargs)
    try:
        if port is not None:
            url = preview.serve(port)
            print(f"preview: {url} (state as JSON: {url}state.json)", file=sys.stderr, flush=True)
        return preview.run(**run_keys)
    finally:
        preview.close()
