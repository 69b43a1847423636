"""Stage ``acquire``: frames from a camera or files, streamed into a movie store.

A frame source (a :class:`Camera`: the simulated NTA camera, a TIFF, an image
sequence, a Zarr array, or a lab's own driver) is read by a publisher that
sends each frame as one ZeroMQ message (JSON header + raw buffer, see
:mod:`pipeline.acquire.wire`) over a lossless PUSH→PULL socket to a writer in
its own process, which validates it and writes ``movie.ome.zarr`` through
:class:`pipeline.io.movie.MovieWriter`. A PUB socket can offer the same frames
to live viewers (``trackflow preview``).

Entry points:

- :func:`run` (``source``, ``output``, ``params``): one run of the workflow;
- :func:`acquire`: the same as a function with keyword options
  (``trackflow acquire``);
- :func:`publish` / :func:`record`: the two ends, for a camera publishing
  from another process or machine (``trackflow record``).

Plugging in a camera: write a class with ``open()``, ``settings``,
``frames()`` and ``close()`` (see :mod:`pipeline.acquire.camera`) and pass it
to :func:`acquire` as the source.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

import zmq

from ..io.movie import Movie, MovieError, open_movie
from ..io.schema import check_section
from ..io.tables import write_table
from ..progress import progress as progress_report
from . import wire
from .camera import Camera, CameraFrame, SimulatedCamera, paced
from .preview import preview
from .sources import ImageSequenceSource, TiffSource, ZarrSource, open_source
from .stream import Publisher, PublishStats, StreamError, publish
from .writer import StreamReceiver, WriterProcess, record

__all__ = [
    "run",
    "acquire",
    "publish",
    "record",
    "preview",
    "open_source",
    "Camera",
    "CameraFrame",
    "SimulatedCamera",
    "ImageSequenceSource",
    "TiffSource",
    "ZarrSource",
    "Publisher",
    "PublishStats",
    "StreamReceiver",
    "StreamError",
    "WriterProcess",
    "paced",
    "wire",
    "WRITER_KEYS",
]

# The ``acquire`` keys that the writer process takes (the rest are the publisher's).
WRITER_KEYS = (
    "frames_per_shard", "codec", "shuffle", "clevel", "compression_threads", "direct_io",
    "hwm", "timeout_s", "max_frame_bytes", "max_seq_gap",
)


def _loopback_endpoint(transport: str) -> tuple[str, Path | None]:
    """A fresh endpoint only this run uses (concurrent jobs never collide);
    an ipc socket lies in a private (0o700) folder, so only this user can
    connect, whatever the umask."""
    if transport == "ipc" and zmq.has("ipc"):
        folder = Path(tempfile.mkdtemp(prefix="trackflow-"))
        return f"ipc://{folder / 'writer.sock'}", folder
    return "tcp://127.0.0.1:*", None


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler cancelling the job) and SIGHUP (the terminal or
    ssh session closed) unwind like Ctrl-C, so the writer is told to flush
    and the store is left readable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signals = [sig for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if sig]
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def acquire(
    source: Mapping[str, Any] | Camera,
    output: str | os.PathLike,
    *,
    frames: int | None = None,
    duration_s: float | None = None,
    endpoint: str | None = None,
    pub_endpoint: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    report: bool | None = None,
    run: str | None = None,
    keys: str | os.PathLike | None = None,
    insecure: bool = False,
    shard_seconds: float | None = None,
    **settings: Any,
) -> Movie:
    """Stream a source into a movie store, through the real sockets.

    The writer runs in its own process, bound to ``endpoint`` (default: a
    fresh loopback endpoint); this process reads the source and publishes.

    Parameters
    ----------
    source : mapping or Camera
        A source dict (see :func:`pipeline.acquire.sources.open_source`) or
        a camera object.
    output : path-like
        The movie store (``movie.ome.zarr``).
    frames : int, optional
        Stop after this many frames. A simulated source given as a dict
        without ``n_frames`` simulates this many (not its default 100).
    duration_s : float, optional
        Stop after this many seconds.
    endpoint : str, optional
        Where the writer binds; default ``ipc://`` in the temp directory or
        ``tcp://127.0.0.1:*`` (``transport``).
    pub_endpoint : str, optional
        Offer the frames to live viewers on a PUB socket bound here.
    overwrite : bool
        Replace an existing store.
    progress : bool
        A live progress line on stderr (frames, fps, MB/s, dropped).
    report : bool, optional
        Report the frames written to disk of those expected through
        :func:`pipeline.progress.progress` (a bar on a terminal, log lines
        with percentage, rate and time left elsewhere, as in a Snakemake
        job's log). By default it does when ``progress`` is off; False never.
    run : str, optional
        Run name in the messages (default: the output's parent directory).
    keys : path-like, optional
        A ``trackflow keys`` folder: both ends use CURVE
        (see :mod:`pipeline.acquire.security`).
    insecure : bool
        Allow a non-loopback ``endpoint`` or ``pub_endpoint`` without keys.
    shard_seconds : float, optional
        With ``frames_per_shard`` null, shards of at most this many seconds
        of frames: what follows the store (:func:`pipeline.live.live_locate`)
        gets them that soon. The frames are the same; only the files differ.
    **settings
        The ``acquire`` config keys (``acquire.schema.yaml``; missing keys
        take its defaults), except ``pub_endpoint``; ``live_locate`` is
        accepted and left to the caller (:func:`pipeline.live.live_locate`).

    Returns
    -------
    Movie
        The written store; ``movie.complete`` is false if the stream was
        interrupted.
    """
    settings = check_section("acquire", settings)
    pub_endpoint = pub_endpoint or settings.pop("pub_endpoint")
    # the acquire job's (and trackflow acquire --live-locate's) business, not the stream's:
    # pipeline.live.locate follows the store this writes
    settings.pop("live_locate")
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True (--overwrite) to replace it")
    if isinstance(source, Mapping) and source.get("kind") == "simulated" and frames is not None:
        # --frames is how many frames the user wants: the simulator's own
        # n_frames default (100) must not cut the stream short without a word
        source = {"n_frames": int(frames), **source}
    camera = open_source(source) if isinstance(source, Mapping) else source
    if not isinstance(camera, Camera):
        raise ValueError(f"source must be a source dict or a Camera (open/settings/frames/close), got {source!r}")
    run = run or output.resolve().parent.name or "run"
    ipc_dir = None
    if endpoint is None:
        endpoint, ipc_dir = _loopback_endpoint(settings["transport"])
    acquisition = {
        **{k: v for k, v in settings.items() if k != "pub_endpoint"},
        "frames": frames,
        "duration_s": duration_s,
        "pub_endpoint": pub_endpoint,
        "endpoint": endpoint,
    }
    camera.open()
    writer = None
    try:
        metadata = dict(camera.settings)
        for key in ("pixel_size_um", "frame_interval_s"):
            if metadata.get(key) is None:
                raise ValueError(f"acquire: the source's settings lack '{key}' ({camera!r})")
        frames_expected = metadata.pop("frames_expected", None)
        if frames is not None:
            frames_expected = int(frames) if frames_expected is None else min(int(frames), int(frames_expected))
        writer = WriterProcess(
            endpoint,
            output,
            overwrite=overwrite,
            run=run,
            progress=progress,
            acquisition=acquisition,
            shard_seconds=shard_seconds,
            start_timeout_s=settings["timeout_s"],
            keys=None if keys is None else str(keys),
            insecure=insecure,
            **{k: settings[k] for k in WRITER_KEYS},
        )
        stream = camera.frames()
        if settings["rate_fps"]:
            stream = paced(
                (f if isinstance(f, CameraFrame) else CameraFrame(f, i) for i, f in enumerate(stream)),
                settings["rate_fps"],
                buffer_frames=settings["camera_buffer_frames"],
            )
        reporting = (not progress) if report is None else bool(report)
        with _signals_as_interrupt(), _written_progress(output, frames_expected, enabled=reporting):
            try:
                publish(
                    stream,
                    writer.endpoint,
                    run=run,
                    metadata=metadata,
                    frames_expected=frames_expected,
                    max_frames=frames,
                    duration_s=duration_s,
                    pub_endpoint=pub_endpoint,
                    hwm=settings["hwm"],
                    alive=writer.alive,
                    send_timeout_s=settings["send_timeout_s"],
                    keys=keys,
                    insecure=insecure,
                )
            except StreamError:
                writer.wait()
                why = _writer_interruption(output)
                if why is not None and why.startswith("stopped by signal"):
                    # Ctrl-C or a hang-up reaches the whole process group: the writer may
                    # act on it before this process does. An interruption, not a failure.
                    raise KeyboardInterrupt(why) from None
                raise writer.error("the writer process stopped during the stream") from None
            except BaseException:
                writer.terminate()  # it flushes what it has: complete false
                raise
            rc = writer.wait()
        if rc != 0:
            raise writer.error("the writer process failed")
    finally:
        camera.close()
        if writer is not None and writer.alive():
            writer.terminate()
        if ipc_dir is not None:
            shutil.rmtree(ipc_dir, ignore_errors=True)
    return open_movie(output)


def _writer_interruption(store: Path) -> str | None:
    """Why the writer stopped before the end of the stream, as it recorded
    it in the store's metadata (``interrupted``); None when it recorded none."""
    try:
        with open(store / "zarr.json", encoding="utf-8") as fh:
            why = json.load(fh)["attributes"]["trackflow"].get("interrupted")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return why if isinstance(why, str) else None


def _frames_written(store: Path) -> int | None:
    """The writer's count of frames on disk, from the store's metadata
    (replaced atomically after every shard); None before the store exists."""
    try:
        with open(store / "zarr.json", encoding="utf-8") as fh:
            return int(json.load(fh)["attributes"]["trackflow"]["frames_written"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _written_progress(store: Path, total: int | None, *, enabled: bool, poll_s: float = 0.5) -> Iterator[None]:
    """Report the writer's frames on disk of ``total`` while the block runs:
    a thread of this process reads them from the store the writer process
    is writing (nothing more crosses between the processes)."""
    with progress_report("acquire", total=total, enabled=None if enabled else False) as advance:
        if advance.mode == "off":
            yield
            return
        done = threading.Event()

        def poll() -> None:
            while not done.wait(poll_s):
                n = _frames_written(store)
                if n is not None:
                    advance.update_to(n)

        poller = threading.Thread(target=poll, name="trackflow-acquire-progress", daemon=True)
        poller.start()
        try:
            yield
        finally:
            done.set()
            poller.join()
            n = _frames_written(store)
            if n is not None:
                advance.update_to(n)


def run(
    source: Mapping[str, Any],
    output: str | os.PathLike,
    params: Mapping[str, Any],
    truth: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    shard_seconds: float | None = None,
) -> None:
    """Acquire one run of the workflow: source → ``output`` (movie.ome.zarr).

    Streams the whole source over a fresh loopback endpoint into ``output``
    (replacing it if it exists) and, for a simulated source, writes the
    ground truth to ``truth``.

    Parameters
    ----------
    source : mapping
        The run's source dict (``kind`` and its keys; see
        :func:`pipeline.acquire.sources.open_source`).
    output : path-like
        The movie store to write.
    params : mapping
        The ``acquire`` config section (``acquire.schema.yaml``).
    truth : path-like, optional
        Where a simulated source's ground truth goes (``truth.parquet``);
        required for a simulated source, unused otherwise.
    name : str, optional
        The run's name, recorded in the store (default: the name of
        ``output``'s directory).
    shard_seconds : float, optional
        See :func:`acquire` (the acquire job passes it when it locates
        while acquiring).

    Raises
    ------
    ValueError
        An unknown parameter or source key, a missing physical scale, a
        simulated source without ``truth``.
    MovieError
        The stream ended incomplete, or delivered no frame. The store is
        then not a result (the workflow deletes it).
    """
    params = dict(params or {})
    settings = check_section("acquire", params)  # validates every key before anything runs
    camera = open_source(source)
    if isinstance(camera, SimulatedCamera) and truth is None:
        raise ValueError("acquire: a simulated source writes its ground truth; pass truth= (truth.parquet)")
    movie = acquire(
        camera, output, overwrite=True, run=name, shard_seconds=shard_seconds, **{k: settings[k] for k in params}
    )
    if not movie.complete:
        raise MovieError(
            f"{output}: the stream ended incomplete ({movie.attrs.get('interrupted') or 'no end of stream'}); "
            f"{movie.attrs.get('frames_written')} of {movie.attrs.get('frames_expected', '?')} frames written"
        )
    if len(movie) == 0:
        raise MovieError(f"{output}: the movie has no frames")
    if isinstance(camera, SimulatedCamera):
        write_table(
            camera.truth,
            truth,
            stage="acquire",
            params=params,
            extra={"source": dict(source), "movie": str(output)},
        )
