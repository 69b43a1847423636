"""The publisher: send frames over ZeroMQ in the trackflow wire format.

The lossless path is a PUSH socket connected to the writer's PULL: when the
writer falls behind, ``hwm`` frames queue up and then ``send`` blocks, so no
frame is ever dropped in transit. A PUB socket (optional) offers the same
frames to live viewers (:mod:`pipeline.acquire.preview`); it has a small
high-water mark and drops frames for slow subscribers, never blocking the
lossless path; it repeats the start message (the acquisition's metadata)
every second for viewers that join late. Frames go out without copying (``copy=False``): the array
must not be modified afterwards (see :mod:`pipeline.acquire.camera`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import zmq

from ..io.schema import section_defaults
from . import wire
from .camera import CameraFrame
from .security import curve_client, require_local

__all__ = ["Publisher", "PublishStats", "StreamError", "publish", "DEFAULT_HWM", "DEFAULT_SEND_TIMEOUT_S", "PUB_HWM"]

log = logging.getLogger("trackflow.acquire")

#: Frames queued on each side of the lossless socket (the ``acquire.hwm`` default).
DEFAULT_HWM = section_defaults("acquire")["hwm"]
#: How long a send may block before the writer counts as gone (``acquire.send_timeout_s``).
DEFAULT_SEND_TIMEOUT_S = section_defaults("acquire")["send_timeout_s"]
PUB_HWM = 2  # live viewers get the latest frames or nothing
PUB_START_EVERY_S = 1.0  # the start message (the acquisition's metadata) again on PUB, for late viewers
_SOCKET_BUFFER = 8 * 2**20  # kernel socket buffer: big frames, fewer wake-ups
_POLL_S = 0.25  # how often a blocked send checks that the writer still runs


class StreamError(RuntimeError):
    """The stream could not be delivered (the receiver went away)."""


@dataclass
class PublishStats:
    """What a publisher sent."""

    frames_sent: int = 0
    bytes_sent: int = 0
    next_seq: int = 0
    first_seq: int | None = None
    seconds_sending: float = 0.0  # blocked in send (back-pressure included)
    seconds_total: float = 0.0
    ended: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames_sent / self.seconds_total if self.seconds_total > 0 else math.nan

    @property
    def mb_per_s(self) -> float:
        return self.bytes_sent / 1e6 / self.seconds_total if self.seconds_total > 0 else math.nan


class Publisher:
    """A PUSH socket (plus an optional PUB socket) speaking the wire format.

    Parameters
    ----------
    endpoint : str
        Where the writer's PULL socket is bound (``tcp://127.0.0.1:5555``,
        ``ipc:///tmp/x.sock``); the publisher connects to it.
    run : str
        Run name carried in every header.
    pub_endpoint : str, optional
        Bind a PUB socket here for live viewers (loopback unless you give
        another address).
    hwm : int
        Frames queued on the PUSH socket before ``send`` blocks.
    alive : callable, optional
        Called while a send is blocked; returning False aborts with
        :class:`StreamError` (the writer process died).
    send_timeout_s : float or None
        Give up (:class:`StreamError`) when a send blocks this long: no
        writer took the message (default ``acquire.send_timeout_s``; None
        waits forever).
    keys : path-like, optional
        A ``trackflow keys`` folder: connect with CURVE (the client key pair
        and the writer's public key); needed when the writer uses keys.
    insecure : bool
        Allow a PUB socket on a non-loopback address (the live view is never
        encrypted).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        run: str = "run",
        pub_endpoint: str | None = None,
        hwm: int = DEFAULT_HWM,
        alive: Callable[[], bool] | None = None,
        send_timeout_s: float | None = DEFAULT_SEND_TIMEOUT_S,
        context: zmq.Context | None = None,
        keys: str | os.PathLike | None = None,
        insecure: bool = False,
    ):
        if int(hwm) < 1:
            raise ValueError(f"hwm must be >= 1, got {hwm}")
        if pub_endpoint:
            require_local(pub_endpoint, insecure=insecure, what="the PUB socket")
        self.run = str(run)
        self.endpoint = endpoint
        self.alive = alive
        self.send_timeout_s = send_timeout_s
        self.stats = PublishStats()
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, int(hwm))
        self._push.setsockopt(zmq.SNDBUF, _SOCKET_BUFFER)
        self._push.setsockopt(zmq.SNDTIMEO, int(_POLL_S * 1000))
        self._push.setsockopt(zmq.LINGER, -1)  # queued frames are delivered before close
        self._push.setsockopt(zmq.RECONNECT_IVL, 20)
        self._pub = None
        try:
            if keys is not None:
                curve_client(self._push, keys)
            self._push.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close(linger_s=0)
            raise ValueError(f"cannot connect to the writer endpoint {endpoint}: {exc}") from None
        except ValueError:
            self.close(linger_s=0)
            raise
        self.pub_endpoint = None
        if pub_endpoint:
            self._pub = self._ctx.socket(zmq.PUB)
            self._pub.setsockopt(zmq.SNDHWM, PUB_HWM)
            self._pub.setsockopt(zmq.LINGER, 0)
            try:
                self._pub.bind(pub_endpoint)
            except zmq.ZMQError as exc:
                self.close(linger_s=0)
                raise ValueError(f"cannot bind the PUB endpoint {pub_endpoint}: {exc}") from None
            self.pub_endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._t0: float | None = None
        self._last_seq = -1
        self._start_message: bytes | None = None  # repeated on the PUB socket
        self._t_start_repeated = -math.inf

    # -- sending --------------------------------------------------------
    def _send_parts(self, parts: list, *, copy: bool = False) -> None:
        """Send one message on the lossless socket, blocking (never dropping)."""
        waited = 0.0
        while True:
            try:
                self._push.send_multipart(parts, copy=copy)
                return
            except zmq.Again:
                waited += _POLL_S
                if self.alive is not None and not self.alive():
                    raise StreamError(f"the receiver at {self.endpoint} is gone (writer exited)") from None
                if self.send_timeout_s is not None and waited >= self.send_timeout_s:
                    raise StreamError(
                        f"the writer at {self.endpoint} is gone: it took no message for {waited:.1f} s "
                        "(it exited, is stuck, or refused this publisher's keys)"
                    ) from None

    def start(
        self,
        metadata: Mapping[str, Any] | None = None,
        *,
        frames_expected: int | None = None,
        first_seq: int | None = None,
    ) -> None:
        """Send the start message (the acquisition metadata)."""
        message = wire.encode_start(
            self.run, metadata, frames_expected=frames_expected, first_seq=first_seq
        )
        self._send_parts([message], copy=True)
        self._start_message = message

    def send(self, frame: np.ndarray, seq: int | None = None, t: float | None = None) -> None:
        """Send one frame (numbered and time-stamped here unless given)."""
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        if seq is None:
            seq = self._last_seq + 1
        if seq <= self._last_seq:
            raise ValueError(f"frame seq {seq} is not after the last one sent ({self._last_seq})")
        if t is None:
            t = time.time()
        array = np.ascontiguousarray(frame)
        header = wire.encode_frame_header(seq, t, array.shape, array.dtype, self.run)
        self._send_parts([header, array])
        if self._pub is not None:
            try:
                if self._start_message is not None and now - self._t_start_repeated >= PUB_START_EVERY_S:
                    # the metadata again, for live viewers that joined late
                    self._pub.send(self._start_message, flags=zmq.NOBLOCK)
                    self._t_start_repeated = now
                self._pub.send_multipart([header, array], copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # a live view may drop frames
        stats = self.stats
        if stats.first_seq is None:
            stats.first_seq = int(seq)
        stats.frames_sent += 1
        stats.bytes_sent += array.nbytes
        stats.next_seq = int(seq) + 1
        stats.seconds_sending += time.perf_counter() - now
        stats.seconds_total = time.perf_counter() - self._t0
        self._last_seq = int(seq)

    def end(self, next_seq: int | None = None) -> None:
        """Send the end message: a clean end of stream."""
        next_seq = self.stats.next_seq if next_seq is None else int(next_seq)
        message = wire.encode_end(self.run, self.stats.frames_sent, next_seq)
        self._send_parts([message], copy=True)
        if self._pub is not None:
            try:
                self._pub.send(message, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
        self.stats.ended = True
        if self._t0 is not None:
            self.stats.seconds_total = time.perf_counter() - self._t0

    def close(self, linger_s: float | None = None) -> None:
        """Close the sockets; ``linger_s`` bounds how long queued frames may
        still take to leave (None: until delivered)."""
        if self._push.closed:
            return
        self._push.close(linger=None if linger_s is None else int(linger_s * 1000))
        if self._pub is not None:
            self._pub.close(linger=0)
        if self._own_context:
            self._ctx.term()  # returns once queued frames left (or linger ran out)

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(linger_s=None if exc_type is None else 0)


def _as_camera_frame(item: Any) -> CameraFrame:
    if isinstance(item, CameraFrame):
        return item
    return CameraFrame(np.asarray(item))


def publish(
    frames: Iterable[CameraFrame | np.ndarray],
    endpoint: str,
    *,
    run: str = "run",
    metadata: Mapping[str, Any] | None = None,
    frames_expected: int | None = None,
    max_frames: int | None = None,
    duration_s: float | None = None,
    pub_endpoint: str | None = None,
    hwm: int = DEFAULT_HWM,
    alive: Callable[[], bool] | None = None,
    send_timeout_s: float | None = DEFAULT_SEND_TIMEOUT_S,
    end: bool = True,
    linger_s_max: float = 60.0,
    keys: str | os.PathLike | None = None,
    insecure: bool = False,
) -> PublishStats:
    """Stream frames to a writer: start message, frames, end message.

    Parameters
    ----------
    frames : iterable of CameraFrame or ndarray
        The frames; bare arrays are numbered from 0 and stamped with the time
        they are sent. A gap in ``seq`` is a frame lost before it was sent.
    endpoint : str
        The writer's PULL endpoint (``trackflow record --endpoint``).
    run : str
        Run name carried by every message.
    metadata : mapping, optional
        Acquisition metadata (the camera's ``settings``) for the start
        message; ``pixel_size_um`` and ``frame_interval_s`` belong here.
    frames_expected : int, optional
    max_frames : int, optional
        Stop after this many frames (``--frames``).
    duration_s : float, optional
        Stop after this many seconds (``--duration``).
    pub_endpoint : str, optional
        Also offer the frames on a PUB socket bound here.
    hwm : int
        Frames queued on the lossless socket before sending blocks.
    alive, send_timeout_s, keys, insecure
        See :class:`Publisher`.
    end : bool
        Send the end message when the frames run out (False simulates a
        publisher that dies).
    linger_s_max : float
        Without ``alive``, how long queued frames may take to reach the
        writer after the end before the socket is closed anyway.

    Returns
    -------
    PublishStats
    """
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"frames must be >= 1, got {max_frames}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration must be positive, got {duration_s}")
    publisher = Publisher(
        endpoint, run=run, pub_endpoint=pub_endpoint, hwm=hwm, alive=alive, send_timeout_s=send_timeout_s,
        keys=keys, insecure=insecure,
    )
    clean = False
    try:
        publisher.start(metadata, frames_expected=frames_expected)
        t_stop = None if duration_s is None else time.perf_counter() + float(duration_s)
        next_seq = None
        for item in frames:
            frame = _as_camera_frame(item)
            publisher.send(frame.data, frame.seq, frame.t)
            next_seq = publisher.stats.next_seq
            if max_frames is not None and publisher.stats.frames_sent >= int(max_frames):
                break
            if t_stop is not None and time.perf_counter() >= t_stop:
                break
        if end:
            publisher.end(next_seq)
        clean = True
    finally:
        linger_s = 0.0  # after an error, nothing more goes out
        if clean:
            linger_s = linger_s_max
            if end and alive is not None:
                # the writer exits once it has the end: wait for that rather
                # than linger on a socket whose peer might be dead
                while alive():
                    time.sleep(0.02)
                linger_s = 0.0
        publisher.close(linger_s=linger_s)
    return publisher.stats
