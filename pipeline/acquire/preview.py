"""A minimal live view of a running acquisition: particles per frame.

``trackflow preview`` is now the live analysis of :mod:`pipeline.live.preview`
(particles, online tracks, the size distribution, a page on loopback); this
function stays for scripts that only count particles.

:func:`preview` subscribes to the publisher's PUB socket and runs
``trackpy.locate`` on every ``every``-th frame it receives, printing how many
particles it found. The PUB socket drops frames for a slow viewer, so the
preview never slows the recording down; frames it misses are simply skipped.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import numpy as np
import zmq

from . import wire

__all__ = ["preview"]


def preview(
    endpoint: str,
    *,
    every: int = 10,
    frames: int | None = None,
    timeout_s: float | None = None,
    out: TextIO | None = None,
    diameter: int | tuple[int, ...] = 11,
    max_frame_bytes: int = wire.MAX_FRAME_BYTES,
    **locate_kwargs: Any,
) -> list[tuple[int, int]]:
    """Count particles in the live stream until it ends.

    Parameters
    ----------
    endpoint : str
        The publisher's PUB endpoint (``trackflow acquire --pub``).
    every : int
        Locate on every ``every``-th frame (by sequence number).
    frames : int, optional
        Stop after this many located frames.
    timeout_s : float, optional
        Stop when no frame arrives for this long (default: wait forever).
    out : text stream, optional
        Where to print one line per located frame (default stdout).
    diameter : int or tuple
        trackpy's feature diameter in pixels (odd).
    **locate_kwargs
        Other ``trackpy.locate`` options (``minmass``, ``invert``, ...).

    Returns
    -------
    list of (seq, n_particles)
    """
    import trackpy

    trackpy.quiet()
    if int(every) < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    out = out or sys.stdout
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 2)
    sock.setsockopt(zmq.MAXMSGSIZE, int(max_frame_bytes))
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    counts: list[tuple[int, int]] = []
    t_last = time.perf_counter()
    try:
        while frames is None or len(counts) < int(frames):
            if not sock.poll(200):
                if timeout_s is not None and time.perf_counter() - t_last > timeout_s:
                    break
                continue
            parts = sock.recv_multipart(copy=False)
            t_last = time.perf_counter()
            try:
                header = wire.decode_header(parts[0].buffer)
                if wire.message_kind(header) == "end":
                    break
                if len(parts) != 2:
                    continue
                fh = wire.check_frame(header, len(parts[1].buffer), max_frame_bytes=max_frame_bytes)
            except wire.WireError as exc:
                print(f"preview: skipped a bad message ({exc})", file=sys.stderr)
                continue
            if fh.seq % int(every):
                continue
            image = np.frombuffer(parts[1].buffer, dtype=fh.dtype).reshape(fh.shape)
            features = trackpy.locate(image, diameter, **locate_kwargs)
            counts.append((fh.seq, len(features)))
            print(f"frame {fh.seq}: {len(features)} particles", file=out, flush=True)
    finally:
        sock.close(linger=0)
        ctx.term()
    return counts
