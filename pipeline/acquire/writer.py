"""The writer: receive a frame stream and write the movie store.

:func:`record` binds a PULL socket, checks every message against the wire
format (:mod:`pipeline.acquire.wire`) and hands each frame's ZeroMQ buffer,
uncopied, to :class:`pipeline.io.movie.MovieWriter`, which compresses it on a
thread pool and writes whole shards behind. Frame ``i`` of the store is
sequence number ``first_seq + i``; a gap in ``seq`` is a dropped frame.

Bad messages never stop the stream: each is logged and counted by reason
(``rejected`` in the store's metadata). A sequence number may run at most
``max_seq_gap`` ahead of the last frame written, and a frame after a gap is
held until the next message shows the stream went on after it: one forged
or corrupt number is rejected (``seq_jump``) instead of making the genuine
frames after it look out of order. The end message's ``frames_sent`` is
checked against the frames received; a disagreement is logged and recorded
(``frames_sent_mismatch``).

A message above ``max_frame_bytes`` never reaches the writer: ZeroMQ drops
its sender's connection, and with it whatever that sender had in flight
behind it. The writer cannot see which message it was, so it is not counted
as rejected; what it can see is recorded instead: the sequence numbers that
never arrived are listed as dropped, and the end message's ``frames_sent``
then disagrees with the frames received. The stream ends cleanly with an end
message (``complete: true``); it is *interrupted* when no message arrives for
``timeout_s`` (the publisher died), on SIGINT / SIGTERM / SIGHUP, or when
the progress line's output goes away: then what was received is flushed, the
store says ``complete: false`` and ``interrupted`` says why. A writer killed
outright leaves the shards that reached disk, readable.

:class:`WriterProcess` runs :func:`record` in its own process (the default
for :func:`pipeline.acquire.acquire`), so that receiving and compressing never
compete with the frame source for the interpreter lock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import zmq

from ..io.movie import (
    Movie,
    MovieError,
    MovieWriter,
    compression_settings,
    create_movie,
    shards_for,
    open_movie,
    update_attributes,
)
from ..io.schema import section_defaults
from ..io.tables import jsonable
from ..physics import water_viscosity
from . import wire
from .security import curve_server, require_local
from .stream import DEFAULT_HWM

__all__ = ["StreamReceiver", "record", "WriterProcess", "MAX_SEQ_GAP"]

log = logging.getLogger("trackflow.acquire")

#: Furthest a frame or end message may run ahead (the ``acquire.max_seq_gap`` default).
MAX_SEQ_GAP = section_defaults("acquire")["max_seq_gap"]
_SOCKET_BUFFER = 8 * 2**20
_POLL_MS = 200
_LOG_FIRST = 10  # rejections logged per reason before only every 1000th is
# Keys of the store's metadata that only the writer sets.
_RESERVED = {
    "complete", "frames_written", "dropped", "first_seq", "frames_per_shard", "trackflow_version",
    "write_error", "interrupted", "rejected", "frames_received", "frames_sent_mismatch", "stream",
    "environment_lock_sha256", "compression", "store_id",
}


def _physical_metadata(metadata: Mapping[str, Any], ndim: int, where: str) -> tuple[list[float], float, dict]:
    """Split the acquisition metadata into scale and the rest; derive viscosity."""
    meta = {k: v for k, v in metadata.items() if k not in _RESERVED}
    for key in ("pixel_size_um", "frame_interval_s"):
        if meta.get(key) is None:
            raise MovieError(
                f"{where}: acquisition metadata key '{key}' is missing: the stream sent no start "
                f"message with it; give it to the writer (trackflow record --{key.replace('_', '-')})"
            )
    pixel = np.atleast_1d(np.asarray(meta.pop("pixel_size_um"), dtype=float))
    if pixel.size == 1:
        pixel = np.repeat(pixel, ndim)
    if pixel.size != ndim:
        raise MovieError(f"{where}: 'pixel_size_um' has {pixel.size} values for {ndim}D frames")
    interval = float(meta.pop("frame_interval_s"))
    if meta.get("viscosity_Pa_s") is None and meta.get("temperature_K") is not None:
        meta["viscosity_Pa_s"] = water_viscosity(float(meta["temperature_K"]))
        meta.setdefault("viscosity_source", "water at temperature_K (Vogel equation)")
    elif meta.get("viscosity_Pa_s") is not None:
        meta.setdefault("viscosity_source", "given")
    return pixel.tolist(), interval, meta


class StreamReceiver:
    """Turn validated messages into frames of a movie store.

    Feed it each multipart message with :meth:`handle` (a list of
    ``zmq.Frame`` or bytes); call :meth:`finish` at the end. The store is
    created when the first valid frame arrives (its shape and dtype fix the
    stream's); later frames of another format are rejected.

    Parameters
    ----------
    output : path-like
        The movie store (``movie.ome.zarr``).
    overwrite : bool
        Replace an existing store.
    metadata : mapping, optional
        Acquisition metadata; overrides what the start message says.
    run : str, optional
        Accept only messages of this run (default: the first message's).
    frames_per_shard, clevel, codec, shuffle, compression_threads, direct_io
        Passed to :func:`pipeline.io.movie.create_movie` (None: the
        ``acquire`` schema's defaults).
    max_frame_bytes : int
        Frames larger than this are rejected (reason ``shape``).
    max_seq_gap : int
        Furthest a frame or the end message may run ahead of the last frame
        (reason ``seq_jump``).
    acquisition : mapping, optional
        The acquisition settings, recorded as ``acquisition``.
    shard_seconds : float, optional
        With ``frames_per_shard`` None, shards hold at most this many
        seconds of frames (at the stream's frame interval), so that readers
        following the store get its frames that soon (locating while
        acquiring); None: about 64 MiB of raw frames.

    Raises
    ------
    ValueError
        ``metadata`` that no store could take (:func:`wire.check_metadata`).
    """

    def __init__(
        self,
        output: str | os.PathLike,
        *,
        overwrite: bool = False,
        metadata: Mapping[str, Any] | None = None,
        run: str | None = None,
        frames_per_shard: int | None = None,
        clevel: int | None = None,
        codec: str | None = None,
        shuffle: str | None = None,
        compression_threads: int | None = None,
        direct_io: bool = True,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        max_seq_gap: int = MAX_SEQ_GAP,
        acquisition: Mapping[str, Any] | None = None,
        shard_seconds: float | None = None,
    ):
        self.output = Path(output)
        self.shard_seconds = shard_seconds
        self.overwrite = bool(overwrite)
        # checked now: a bad value given by hand is an error before anything is received
        self.explicit_metadata = wire.check_metadata(jsonable(dict(metadata or {})), f"{output}: metadata")
        self.run = run
        # checked now: a bad value is an error before anything is received
        compression_settings(clevel=clevel, codec=codec, shuffle=shuffle)
        self.store_options = dict(
            frames_per_shard=frames_per_shard, clevel=clevel, codec=codec, shuffle=shuffle,
            compression_threads=compression_threads, direct_io=direct_io,
        )
        self.max_frame_bytes = int(max_frame_bytes)
        self.max_seq_gap = int(max_seq_gap)
        self.acquisition = dict(acquisition or {})
        self.rejected: Counter[str] = Counter()
        self.writer: MovieWriter | None = None
        self.start: dict | None = None
        self.end: dict | None = None
        self.frame_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None
        self.first_seq: int | None = None
        self.last_seq: int | None = None  # of the last frame written
        self.start_rejected: str | None = None  # why the last start message was refused
        # a frame after a gap, with its buffer: written once the stream goes on after it
        self._held: tuple[wire.FrameHeader, memoryview] | None = None
        self.frames_received = 0
        self.bytes_received = 0
        self.seconds_handling = 0.0
        self.seconds_receiving = 0.0  # waiting in poll/recv once the stream began
        self._cpu0 = os.times()
        self.t_first: float | None = None
        self.t_last: float | None = None

    # -- messages -------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def dropped(self) -> int:
        """Sequence numbers skipped so far (frames that never arrived)."""
        if self.last_seq is None:
            return 0
        return self.last_seq - self.first_seq + 1 - self.frames_received

    def reject(self, reason: str, message: str) -> None:
        self.rejected[reason] += 1
        n = self.rejected[reason]
        if n <= _LOG_FIRST or n % 1000 == 0:
            log.warning("%s: rejected message (%s, %d so far): %s", self.output, reason, n, message)

    def handle(self, parts: list) -> None:
        """Check one multipart message and write its frame; bad ones are counted."""
        t0 = time.perf_counter()
        try:
            self._handle(parts)
        except wire.WireError as exc:
            self.reject(exc.reason, str(exc))
        self.seconds_handling += time.perf_counter() - t0

    def _handle(self, parts: list) -> None:
        if len(parts) not in (1, 2):
            raise wire.WireError("parts", f"message has {len(parts)} parts; a frame has 2, a control message 1")
        header = wire.decode_header(_buffer(parts[0]))
        kind = wire.message_kind(header)
        if self.ended:
            raise wire.WireError("unexpected", f"{kind} message after the end of the stream")
        if kind == "frame":
            if len(parts) != 2:
                raise wire.WireError("parts", f"frame message has {len(parts)} part(s), expected 2")
            self._frame(header, parts[1])
            return
        if len(parts) != 1:
            raise wire.WireError("parts", f"{kind} message has {len(parts)} parts, expected 1")
        self._check_run(header.get("run"))
        if kind == "start":
            self._start(header)
        else:
            self._end(header)

    def _check_run(self, run: Any) -> None:
        if not isinstance(run, str):
            raise wire.WireError("header", f"'run' must be a string, got {run!r}")
        if self.run is None:
            self.run = run
        elif run != self.run:
            raise wire.WireError("run", f"message of run {run!r} in the stream of run {self.run!r}")

    def _start(self, header: dict) -> None:
        if self.start is not None or self.writer is not None:
            raise wire.WireError("unexpected", "a start message after the stream began")
        metadata = header.get("metadata") or {}
        expected, first_seq = header.get("frames_expected"), header.get("first_seq")
        if not isinstance(metadata, dict):
            raise wire.WireError("header", f"start 'metadata' must be an object, got {type(metadata).__name__}")
        for key, value in (("frames_expected", expected), ("first_seq", first_seq)):
            if value is not None and not (wire._is_int(value) and 0 <= value <= wire.MAX_SEQ):
                raise wire.WireError("header", f"start '{key}' must be a non-negative int64, got {value!r}")
        try:
            # what the writer was given overrides the camera: only the rest must be usable
            wire.check_metadata({**metadata, **self.explicit_metadata}, "start message")
        except wire.WireError as exc:
            self.start_rejected = str(exc)
            raise
        self.start = {"metadata": metadata, "frames_expected": expected, "first_seq": first_seq}

    def _end(self, header: dict) -> None:
        frames_sent, next_seq = wire.check_end(header)
        if self.last_seq is not None:
            if next_seq <= self.last_seq:
                raise wire.WireError("header", f"end says next_seq {next_seq}, but seq {self.last_seq} arrived")
            held = self._held[0].seq if self._held is not None and next_seq > self._held[0].seq else None
            top = self.last_seq if held is None else held
            if next_seq - top > self.max_seq_gap:
                raise wire.WireError(
                    "seq_jump", f"end says next_seq {next_seq}, {next_seq - top} after frame {top}"
                )
            self._settle_held(next_seq)
        self.end = {"frames_sent": frames_sent, "next_seq": next_seq}

    def _settle_held(self, seq: int) -> None:
        """The message after a held frame says ``seq`` comes next: a ``seq``
        past the held frame confirms it (written), one before it shows that
        the held frame's number was forged or corrupt (rejected)."""
        if self._held is None:
            return
        fh, buffer = self._held
        self._held = None
        if seq > fh.seq:
            self._write(fh, buffer)
        else:
            self.reject(
                "seq_jump",
                f"frame {fh.seq} ran {fh.seq - self.last_seq} ahead of frame {self.last_seq}, "
                f"but the stream went on at {seq}",
            )

    def _frame(self, header: dict, data: Any) -> None:
        buffer = _buffer(data)
        fh = wire.check_frame(header, len(buffer), max_frame_bytes=self.max_frame_bytes)
        self._check_run(fh.run)
        if self.writer is None:
            self._create(fh)
        elif fh.shape != self.frame_shape or fh.dtype != self.dtype:
            raise wire.WireError(
                "format_change",
                f"frame {fh.seq} is {list(fh.shape)} {fh.dtype}; the stream's frames are "
                f"{list(self.frame_shape)} {self.dtype}",
            )
        elif fh.seq == self.last_seq:
            raise wire.WireError("duplicate_seq", f"frame {fh.seq} arrived twice")
        elif fh.seq < self.last_seq:
            raise wire.WireError("out_of_order_seq", f"frame {fh.seq} arrived after frame {self.last_seq}")
        held = self._held[0].seq if self._held is not None else None
        if fh.seq == held:
            raise wire.WireError("duplicate_seq", f"frame {fh.seq} arrived twice")
        top = held if held is not None and fh.seq > held else self.last_seq
        if fh.seq - top > self.max_seq_gap:
            # the expected sequence stays where it was: the genuine frames still fit
            raise wire.WireError(
                "seq_jump", f"frame {fh.seq} ran {fh.seq - top} ahead of frame {top} (max_seq_gap {self.max_seq_gap})"
            )
        self._settle_held(fh.seq)
        if fh.seq == self.last_seq + 1:
            self._write(fh, buffer)
        else:
            # after a gap: dropped frames, or a forged number; the next message tells
            self._held = (fh, buffer)

    def _write(self, fh: wire.FrameHeader, buffer: memoryview) -> None:
        # a view over ZeroMQ's buffer: compressed straight from it, never copied
        frame = np.frombuffer(buffer, dtype=fh.dtype).reshape(fh.shape)
        self.writer.write(fh.seq - self.first_seq, frame, fh.t)
        self.last_seq = fh.seq
        self.frames_received += 1
        self.bytes_received += len(buffer)
        self.t_last = time.perf_counter()
        if self.t_first is None:
            self.t_first = self.t_last

    def _create(self, fh: wire.FrameHeader) -> None:
        start = self.start or {}
        first_seq = start.get("first_seq")
        if first_seq is None or first_seq > fh.seq or fh.seq - first_seq > self.max_seq_gap:
            first_seq = fh.seq
        metadata = {**start.get("metadata", {}), **self.explicit_metadata}
        where = str(self.output)
        if self.start is None and self.start_rejected:
            where += f" (the start message was rejected: {self.start_rejected})"
        pixel, interval, attrs = _physical_metadata(metadata, len(fh.shape), where)
        options = dict(self.store_options)
        if options["frames_per_shard"] is None and self.shard_seconds:
            by_bytes = shards_for(int(np.prod(fh.shape)) * fh.dtype.itemsize, None)
            options["frames_per_shard"] = max(1, min(by_bytes, math.ceil(self.shard_seconds / interval)))
        attrs.update(
            run=self.run,
            frames_expected=start.get("frames_expected"),
            acquisition=self.acquisition,
            rejected=dict(self.rejected),
        )
        self.writer = create_movie(
            self.output,
            fh.shape,
            fh.dtype,
            pixel_size_um=pixel,
            frame_interval_s=interval,
            metadata=attrs,
            first_seq=first_seq,
            overwrite=self.overwrite,
            **options,
        )
        self.frame_shape, self.dtype, self.first_seq = fh.shape, fh.dtype, first_seq
        self.last_seq = first_seq - 1

    # -- the end --------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Where the time went, for the store's ``stream`` metadata."""
        w = self.writer
        cpu = os.times()
        span = (self.t_last - self.t_first) if self.t_first is not None else 0.0
        return {
            "frames_received": self.frames_received,
            "bytes_received": self.bytes_received,
            "seconds_first_to_last_frame": span,
            "seconds_receiving": self.seconds_receiving,
            "seconds_handling": self.seconds_handling,
            "seconds_compressing": w.seconds_compressing if w else 0.0,
            "seconds_writing": w.seconds_writing if w else 0.0,
            "bytes_compressed": w.bytes_compressed if w else 0,
            # direct: the shards went past the page cache (O_DIRECT); buffered or mixed: not (all)
            "write_mode": w.io_mode if w else None,
            "direct_io_refused": w.direct_io_refused if w else None,
            # CPU time of the whole receiving process (all threads) meanwhile
            "cpu_seconds": (cpu.user - self._cpu0.user) + (cpu.system - self._cpu0.system),
        }

    def finish(self, *, interrupted: str | None = None) -> Movie:
        """Write what is buffered and close the store.

        ``complete`` is true only when the end message arrived and nothing
        interrupted the stream. Raises :class:`MovieError` when no frame ever
        arrived (there is no store to open).
        """
        if self.writer is None:
            why = "the stream ended" if self.ended else (interrupted or "the stream stopped")
            counts = f"; rejected messages: {dict(self.rejected)}" if self.rejected else ""
            raise MovieError(f"{self.output}: {why} before any valid frame arrived{counts}")
        if self._held is not None:
            # nothing came after it to confirm or refute its number: keep the frame
            log.warning("%s: frame %d came after a gap and was the last to arrive; kept", self.output, self._held[0].seq)
            self._settle_held(self._held[0].seq + 1)
        mismatch = self._frames_sent_mismatch()
        if mismatch:
            log.warning("%s: %s", self.output, mismatch)
        n_frames = None
        expected = (self.start or {}).get("frames_expected")
        if self.ended:
            n_frames = self.end["next_seq"] - self.first_seq
            expected = n_frames
        t_close = time.perf_counter()
        self.writer.set_attributes(
            frames_expected=expected,
            frames_sent=self.end["frames_sent"] if self.ended else None,
            frames_received=self.frames_received,
            frames_sent_mismatch=mismatch,
            rejected=dict(self.rejected),
            interrupted=interrupted,
        )
        complete = self.ended and interrupted is None
        self.writer.close(complete=complete, n_frames=n_frames)
        stats = self.stats()
        stats["seconds_closing"] = time.perf_counter() - t_close
        elapsed = stats["seconds_first_to_last_frame"] + stats["seconds_closing"]
        stats["seconds_total"] = elapsed
        stats["fps"] = self.frames_received / elapsed if elapsed > 0 else None
        stats["mb_per_s"] = self.bytes_received / 1e6 / elapsed if elapsed > 0 else None
        update_attributes(self.output, {"trackflow": {"stream": stats}})
        return open_movie(self.output)

    def _frames_sent_mismatch(self) -> str | None:
        """Why the end message's ``frames_sent`` disagrees with what arrived, or None.

        The transport is lossless, so every frame sent is received (and
        written, or rejected); a difference means frames lost with a dropped
        connection (a message above ``max_frame_bytes``), rejected genuine
        frames, or a forged end or frames.
        """
        if not self.ended or self.end["frames_sent"] == self.frames_received:
            return None
        rejected = sum(self.rejected.values())
        return (
            f"the end message says {self.end['frames_sent']} frames were sent, but {self.frames_received} "
            f"were received ({self.dropped} sequence numbers never arrived, {rejected} messages rejected)"
        )

    def abort(self, reason: str) -> None:
        """Close after an error: keep what was received, ``complete: false``,
        ``reason`` recorded as ``interrupted``."""
        if self.writer is not None:
            try:
                self.writer.set_attributes(
                    frames_received=self.frames_received, rejected=dict(self.rejected), interrupted=reason
                )
                self.writer.close(complete=False)
            except Exception as exc:  # the original error matters more
                log.error("%s: closing after an error failed too: %s", self.output, exc)


def _buffer(part: Any) -> memoryview:
    return part.buffer if isinstance(part, zmq.Frame) else memoryview(part)


class _Progress:
    """One live line on stderr: frames, fps, MB/s, dropped."""

    def __init__(self, receiver: StreamReceiver, stream=None, tty: bool | None = None):
        self.receiver = receiver
        self.stream = stream or sys.stderr
        if tty is None:
            tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.tty = tty
        self.interval = 0.5 if self.tty else 5.0
        self.t_last = time.perf_counter()
        self.frames_last = 0
        self.bytes_last = 0
        self.lost: str | None = None  # why the output went away (a closed pipe, a hung-up terminal)

    def _write(self, text: str) -> None:
        if self.lost is not None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream object was closed
            # the receive loop sees this and closes the store instead of dying on it
            self.lost = f"the progress output was closed ({type(exc).__name__})"

    def update(self, force: bool = False, overall: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.t_last < self.interval:
            return
        r = self.receiver
        if overall and r.frames_received > 1:  # the final line: averages over the stream
            dt = max((r.t_last or now) - (r.t_first or now), 1e-9)
            fps, mbps = r.frames_received / dt, r.bytes_received / 1e6 / dt
        else:
            dt = max(now - self.t_last, 1e-9)
            fps = (r.frames_received - self.frames_last) / dt
            mbps = (r.bytes_received - self.bytes_last) / 1e6 / dt
        expected = (r.start or {}).get("frames_expected")
        total = f"/{expected}" if expected else ""
        rejected = sum(r.rejected.values())
        line = (
            f"acquire: {r.frames_received}{total} frames  {fps:6.1f} fps  {mbps:7.1f} MB/s  "
            f"dropped {r.dropped}" + (f"  rejected {rejected}" if rejected else "")
        )
        self._write(("\r" + line + "   ") if self.tty else line + "\n")
        self.t_last, self.frames_last, self.bytes_last = now, r.frames_received, r.bytes_received

    def done(self) -> None:
        self.update(force=True, overall=True)
        if self.tty:
            self._write("\n")


# SIGHUP too: a closed terminal or ssh session must not lose the buffered frames
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _StopOnSignal:
    """Turn SIGINT/SIGTERM/SIGHUP into a flag (main thread only), so the
    receive loop can flush and close the store instead of dying mid-write."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is None:  # the first one says why
            self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def record(
    endpoint: str,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    run: str | None = None,
    timeout_s: float | None = 30.0,
    start_timeout_s: float | None = None,
    hwm: int = DEFAULT_HWM,
    frames_per_shard: int | None = None,
    clevel: int | None = None,
    codec: str | None = None,
    shuffle: str | None = None,
    compression_threads: int | None = None,
    direct_io: bool = True,
    max_frame_bytes: int = wire.MAX_FRAME_BYTES,
    max_seq_gap: int = MAX_SEQ_GAP,
    acquisition: Mapping[str, Any] | None = None,
    shard_seconds: float | None = None,
    progress: bool = False,
    progress_tty: bool | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    keys: str | os.PathLike | None = None,
    insecure: bool = False,
) -> Movie:
    """Receive one stream on a PULL socket and write it to a movie store.

    Parameters
    ----------
    endpoint : str
        Where to bind (``tcp://127.0.0.1:5555``; ``tcp://127.0.0.1:*`` picks a
        free port; ``ipc:///path``, its socket file made owner-only). A
        non-loopback address needs ``keys`` or ``insecure``.
    output : path-like
        The movie store to write.
    overwrite : bool
        Replace an existing store (otherwise that is an error, raised before
        anything is received).
    metadata : mapping, optional
        Acquisition metadata (``pixel_size_um``, ``frame_interval_s``, ...),
        overriding the start message's.
    run : str, optional
        Accept only this run's messages.
    timeout_s : float or None
        Once the stream has begun, how long to wait for the next message
        before declaring it interrupted (``complete: false``).
    start_timeout_s : float or None
        How long to wait for the first message (None: forever).
    hwm : int
        Frames queued on the socket.
    frames_per_shard, clevel, codec, shuffle, compression_threads, direct_io
        Store layout, compression and how shards are written (see
        :func:`pipeline.io.movie.create_movie`; None: the ``acquire`` schema's
        defaults).
    max_frame_bytes : int
        Largest frame accepted; larger messages are refused by ZeroMQ itself
        before they are received (see the module's description).
    max_seq_gap : int
        Furthest a frame or the end message may run ahead of the last frame.
    acquisition : mapping, optional
        Settings recorded as ``acquisition`` in the store.
    shard_seconds : float, optional
        See :class:`StreamReceiver`.
    progress : bool
        Print a live progress line on stderr.
    progress_tty : bool, optional
        Redraw one line (terminal) or print a line every few seconds (log);
        default: whether stderr is a terminal.
    on_ready : callable, optional
        Called with the bound endpoint once the socket listens.
    stop : threading.Event, optional
        Set it to stop receiving (as SIGINT does), e.g. from another thread.
    keys : path-like, optional
        A ``trackflow keys`` folder: the socket (any endpoint) uses CURVE and
        admits only the client keys in its ``authorized/``; refused peers are
        counted as ``rejected["unauthenticated"]``
        (see :mod:`pipeline.acquire.security`).
    insecure : bool
        Bind a non-loopback endpoint without keys.

    Returns
    -------
    Movie
        The store; ``complete`` tells whether the stream ended cleanly.

    Raises
    ------
    ValueError
        ``metadata`` no store could take, or an endpoint that cannot be bound.
    MovieError
        No valid frame arrived, or the first one did with ``pixel_size_um``
        or ``frame_interval_s`` unknown (a rejected start message and
        nothing given here): the stream cannot be recorded, and no store is
        left behind.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True (--overwrite) to replace it")
    if keys is None:
        require_local(endpoint, insecure=insecure, what="record")
    import zarr  # noqa: F401  (imported now, not while the first frames queue up)

    receiver = StreamReceiver(
        output,
        overwrite=overwrite,
        metadata=metadata,
        run=run,
        frames_per_shard=frames_per_shard,
        clevel=clevel,
        codec=codec,
        shuffle=shuffle,
        compression_threads=compression_threads,
        direct_io=direct_io,
        max_frame_bytes=max_frame_bytes,
        max_seq_gap=max_seq_gap,
        acquisition=acquisition,
        shard_seconds=shard_seconds,
    )
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, int(hwm))
    sock.setsockopt(zmq.RCVBUF, _SOCKET_BUFFER)
    # ZeroMQ drops the connection of a peer sending a larger part: a header
    # claiming a huge frame never gets a buffer allocated for it
    sock.setsockopt(zmq.MAXMSGSIZE, max(int(max_frame_bytes), wire.MAX_HEADER_BYTES))
    sock.setsockopt(zmq.LINGER, 0)
    meter = _Progress(receiver, tty=progress_tty) if progress else None
    interrupted = None
    bound = None
    curve = None
    # signals stay caught until the store is closed: a second one (the parent
    # terminating us after Ctrl-C) must not kill the writer mid-close
    with _StopOnSignal() as signals:
        try:
            if keys is not None:
                curve = curve_server(sock, keys, str(output))
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                raise ValueError(f"record: cannot bind the writer endpoint {endpoint}: {exc}") from None
            bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            if bound.startswith("ipc://"):
                # only this user may connect (the umask may have let others write to it)
                os.chmod(bound[len("ipc://"):], 0o600)
            log.debug("recording %s from %s", output, bound)
            if on_ready is not None:
                on_ready(bound)
            t_message = time.perf_counter()
            began = False
            while not receiver.ended:
                # checked on every message too: a stream that keeps coming must still stop
                if signals.signal is not None:
                    interrupted = f"stopped by signal {signal.Signals(signals.signal).name}"
                    break
                if stop is not None and stop.is_set():
                    interrupted = "stopped"
                    break
                t_wait = time.perf_counter()
                if sock.poll(_POLL_MS):
                    parts = sock.recv_multipart(copy=False)
                    t_message = time.perf_counter()
                    if began:
                        receiver.seconds_receiving += t_message - t_wait
                    receiver.handle(parts)
                    began = True
                    if meter is not None:
                        meter.update()
                        if meter.lost:
                            interrupted = meter.lost
                            break
                    continue
                wait = timeout_s if began else start_timeout_s
                if wait is not None and time.perf_counter() - t_message > wait:
                    interrupted = f"no message for {wait:g} s" + ("" if began else " (the stream never began)")
                    break
            if interrupted:
                log.warning("%s: stream interrupted: %s", output, interrupted)
        except BaseException as exc:
            receiver.abort(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            sock.close(linger=0)
            if curve is not None:
                curve.stop()
                if curve.refused:
                    receiver.rejected["unauthenticated"] += curve.refused
            ctx.term()
            if bound and bound.startswith("ipc://"):
                Path(bound[len("ipc://"):]).unlink(missing_ok=True)  # the socket file we bound
            if meter is not None:
                meter.done()
        return receiver.finish(interrupted=interrupted)


# ---------------------------------------------------------------------------
# The writer in its own process
# ---------------------------------------------------------------------------


_CHILD = "import sys; from pipeline.acquire.writer import _main; sys.exit(_main(sys.argv[1:]))"


class WriterProcess:
    """:func:`record` running in a child process.

    The child binds ``endpoint`` and reports the bound address (a ``*`` port
    resolved) on its stdout; its stderr (progress line, warnings) is passed
    through to ours, and its tail kept for error messages.

    Parameters
    ----------
    endpoint : str
    output : path-like
    startup_timeout_s : float
        How long the child may take to start listening.
    **record_kwargs
        Keyword arguments of :func:`record` (JSON-serialisable).
    """

    def __init__(
        self,
        endpoint: str,
        output: str | os.PathLike,
        *,
        startup_timeout_s: float = 120.0,
        **record_kwargs: Any,
    ):
        config = {"endpoint": endpoint, "output": str(output), **record_kwargs}
        if record_kwargs.get("progress") and "progress_tty" not in record_kwargs:
            # the child's stderr is a pipe to us: draw as our stderr would
            config["progress_tty"] = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.output = Path(output)
        self._tail: deque[str] = deque(maxlen=40)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self._stderr = threading.Thread(target=self._forward_stderr, daemon=True, name="trackflow-writer-stderr")
        self._stderr.start()
        try:
            self.endpoint = self._wait_ready(startup_timeout_s)
        except BaseException:
            self.terminate()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _forward_stderr(self) -> None:
        fd = self.proc.stderr.fileno()
        pending = ""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text = chunk.decode(errors="replace")
            try:
                sys.stderr.write(text)
                sys.stderr.flush()
            except (ValueError, OSError):
                pass  # our stderr went away; keep the tail for errors
            pending += text
            *lines, pending = pending.replace("\r", "\n").split("\n")
            self._tail.extend(line for line in lines if line.strip())
        if pending.strip():
            self._tail.append(pending)

    def _wait_ready(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MovieError(f"{self.output}: the writer process did not start within {timeout_s:g} s")
                if sel.select(timeout=min(left, 0.5)):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        self.proc.wait()
                        self._stderr.join(timeout=5)
                        raise self.error("the writer process failed to start")
                    buffer += chunk
        line = buffer.split(b"\n", 1)[0]
        return json.loads(line)["ready"]

    def error(self, what: str) -> Exception:
        """An exception for a failed child, with its last error line."""
        self._stderr.join(timeout=5)
        tail = [line for line in self._tail if "Traceback" not in line]
        last = tail[-1] if tail else ""
        message = f"{self.output}: {what} (exit status {self.proc.returncode})" + (f": {last}" if last else "")
        if "FileExistsError" in last:
            return FileExistsError(message)
        return MovieError(message)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout)
        self._stderr.join(timeout=5)
        return rc

    def terminate(self, timeout: float = 60.0) -> None:
        """SIGTERM (the child flushes and closes the store), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.join(timeout=5)


def _main(argv: list[str]) -> int:
    """Child-process entry (:data:`_CHILD`): ``record`` with a JSON config."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S"
    )
    config = json.loads(argv[0])

    def ready(endpoint: str) -> None:
        sys.stdout.write(json.dumps({"ready": endpoint}) + "\n")
        sys.stdout.flush()

    try:
        movie = record(on_ready=ready, **config)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"trackflow writer: {type(exc).__name__}: {exc}\n")
        return 2
    sys.stdout.write(json.dumps({"complete": movie.complete, "frames": len(movie)}) + "\n")
    return 0

