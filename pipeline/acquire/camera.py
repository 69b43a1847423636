"""Cameras: the protocol a frame source implements, and the simulated camera.

A lab plugs its own camera into trackflow by writing a small class with four
members (no base class needed; :class:`Camera` is a ``typing.Protocol``)::

    class MyCamera:
        def open(self) -> None: ...            # connect, configure, start
        settings: Mapping[str, Any]            # valid after open()
        def frames(self) -> Iterator[CameraFrame | np.ndarray]: ...
        def close(self) -> None: ...           # stop and release

``settings`` is the acquisition metadata that goes into the movie store:
``pixel_size_um`` (one value or one per spatial axis) and ``frame_interval_s``
are required; ``exposure_s``, ``temperature_K``, ``viscosity_Pa_s``,
``source`` (camera model), ``frames_expected`` and any camera settings (gain,
binning, ...) are recorded when given.

``frames()`` yields each frame as a :class:`CameraFrame` (with the camera's
own frame counter as ``seq`` and its timestamp in seconds as ``t``), or as a
bare array (trackflow numbers it and stamps the wall-clock time). A gap in
``seq`` is a frame the camera lost; it is recorded as dropped. Frames are
sent without copying, so a yielded array must not be modified afterwards:
a driver that recycles its buffers must yield copies.

Then ``trackflow.acquire(MyCamera(), "movie.ome.zarr")`` streams it, or a
separate process runs ``publish(camera.frames(), endpoint)`` and
``trackflow record`` writes the store.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Protocol, runtime_checkable

import numpy as np

__all__ = ["Camera", "CameraFrame", "SimulatedCamera", "paced"]


@dataclass(frozen=True, slots=True)
class CameraFrame:
    """One frame as a camera delivers it.

    Attributes
    ----------
    data : ndarray
        ``(y, x)`` or ``(z, y, x)`` pixels.
    seq : int, optional
        The camera's frame counter; gaps mean lost frames.
    t : float, optional
        Time of the exposure, in seconds.
    """

    data: np.ndarray
    seq: int | None = None
    t: float | None = None


@runtime_checkable
class Camera(Protocol):
    """What trackflow needs from a frame source (see the module docstring)."""

    settings: Mapping[str, Any]

    def open(self) -> None: ...

    def frames(self) -> Iterator[CameraFrame | np.ndarray]: ...

    def close(self) -> None: ...


def paced(
    frames: Iterable[CameraFrame], rate_fps: float, *, buffer_frames: int = 64
) -> Iterator[CameraFrame]:
    """Deliver frames as a free-running camera would, at ``rate_fps``.

    Frame ``k`` becomes available at ``k / rate_fps`` seconds after the first.
    A consumer that falls more than ``buffer_frames`` behind (the camera's ring
    buffer) loses the oldest frames, exactly as a real camera does: they are
    skipped and their sequence numbers never arrive (recorded as dropped).

    Parameters
    ----------
    frames : iterable of CameraFrame
        Frames with ``seq`` set (consecutive unless the source itself skips).
    rate_fps : float
        Frame rate in frames per second.
    buffer_frames : int
        Frames the emulated camera holds before overwriting the oldest.
    """
    if not rate_fps or rate_fps <= 0 or not math.isfinite(rate_fps):
        raise ValueError(f"rate_fps must be a positive number, got {rate_fps}")
    if buffer_frames < 1:
        raise ValueError(f"buffer_frames must be >= 1, got {buffer_frames}")
    period = 1.0 / float(rate_fps)
    t0 = None
    for k, frame in enumerate(frames):
        now = time.perf_counter()
        if t0 is None:
            t0 = now
        ready_at = t0 + k * period
        if now < ready_at:
            time.sleep(ready_at - now)
        elif (now - t0) / period - k >= buffer_frames:
            continue  # overwritten in the camera's ring buffer before it was read
        yield frame


class SimulatedCamera:
    """A camera showing simulated nanoparticle-tracking movies.

    Wraps :class:`pipeline.simulate.NTASimulator`: keyword arguments are the
    simulator's (``shape``, ``n_frames``, ``seed``, ``diameters_nm``, ...).
    Frames are numbered from 0 and stamped with their simulated time
    ``seq * frame_interval_s``; :attr:`truth` holds the ground truth.

    Raises
    ------
    ValueError
        For a parameter the simulator does not take or rejects (naming it).
    """

    kind = "simulated"

    def __init__(self, **simulator_kwargs: Any):
        from ..simulate import NTASimulator

        try:
            self.simulator = NTASimulator(**simulator_kwargs)
        except TypeError as exc:  # e.g. a positional-only mistake
            raise ValueError(f"simulated source: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"simulated source: {exc}") from None
        self.simulator_kwargs = dict(simulator_kwargs)
        self.settings: dict[str, Any] = {
            **self.simulator.metadata,
            "frames_expected": int(self.simulator.n_frames),
        }

    def open(self) -> None:
        pass

    def frames(self) -> Iterator[CameraFrame]:
        interval = float(self.settings["frame_interval_s"])
        for seq, frame in enumerate(self.simulator.frames()):
            yield CameraFrame(frame, seq, seq * interval)

    @property
    def truth(self):
        """Ground truth (a DataFrame): positions, particle ids, diameters."""
        return self.simulator.truth

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"SimulatedCamera({self.simulator_kwargs})"
