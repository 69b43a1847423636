"""One progress reporter for the long stages.

A stage wraps its work in :func:`progress` and advances it as frames are
done::

    with progress("locate", total=n_frames) as advance:
        for start, stop in ranges:
            ...
            advance(stop - start)

Where it reports depends on where the process runs:

- **a terminal** (stderr is a TTY): a tqdm bar on stderr, redrawn in place;
- **anything else** (a Snakemake job's log, a pipe, a batch job): a line
  through :mod:`logging` (logger ``trackflow.progress``) at most every
  ``interval_s`` seconds, and always one when the work is done, with the
  count, the percentage, the rate and the estimated time left::

      refine: 120/400 frames (30%), 15.2 frames/s, 0:00:18 left

  A Snakemake job's logging goes to its ``log:`` file
  (:func:`pipeline.cli.log_to_file`), so that is where these lines end up.

The environment tunes it for a whole run without touching any parameter
(so nothing re-runs): ``TRACKFLOW_PROGRESS=0`` (or ``off``, ``false``,
``no``) turns every reporter off, ``TRACKFLOW_PROGRESS=log`` forces log
lines even in a terminal, and ``TRACKFLOW_PROGRESS_INTERVAL`` sets the
seconds between log lines (default 30).

Dask stages advance the reporter as their tasks finish:
:func:`dask_compute` is ``dask.compute`` that does so, through a local
scheduler's callbacks (threads, processes, synchronous) or a distributed
client's futures.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["Progress", "progress", "dask_compute", "progress_mode", "DEFAULT_INTERVAL_S"]

log = logging.getLogger("trackflow.progress")

#: Seconds between two log lines when not on a terminal (``TRACKFLOW_PROGRESS_INTERVAL``).
DEFAULT_INTERVAL_S = 30.0
_OFF = {"0", "off", "false", "no", "none", "quiet"}


def progress_mode(enabled: bool | None = None, stream: Any = None) -> str:
    """Where a reporter reports: ``"off"``, ``"tty"`` (a tqdm bar) or ``"log"``.

    ``enabled=False`` is always off; otherwise ``TRACKFLOW_PROGRESS`` decides
    (off values, ``log``, ``tty``), and then whether ``stream`` (stderr) is a
    terminal.
    """
    if enabled is False:
        return "off"
    setting = os.environ.get("TRACKFLOW_PROGRESS", "").strip().lower()
    if setting in _OFF:
        return "off"
    if setting in ("log", "tty"):
        return setting
    stream = sys.stderr if stream is None else stream
    try:
        return "tty" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "log"


def _interval_from_env() -> float:
    raw = os.environ.get("TRACKFLOW_PROGRESS_INTERVAL", "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"TRACKFLOW_PROGRESS_INTERVAL must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"TRACKFLOW_PROGRESS_INTERVAL must be >= 0 seconds, got {raw!r}")
    return value


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """A running progress report; call it to advance.

    Made by :func:`progress` (use that). Thread-safe: a Dask callback or a
    polling thread may advance it while the stage's own thread does too.

    Attributes
    ----------
    label : str
    total : int or None
        The count at which the work is done (None: unknown; no percentage
        or time left then).
    n : int
        The count so far.
    mode : str
        ``"off"``, ``"tty"`` or ``"log"``.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "frames",
        mode: str = "log",
        interval_s: float = DEFAULT_INTERVAL_S,
        logger: logging.Logger | None = None,
        stream: Any = None,
    ):
        self.label = str(label)
        self.total = None if total is None else int(total)
        self.unit = unit
        self.mode = mode
        self.interval_s = float(interval_s)
        self.n = 0
        self._log = logger or log
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._t_logged = self._t0
        self._n_logged = 0
        self._bar = None
        if mode == "tty":
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, desc=self.label, unit=f" {unit}" if unit else "it",
                file=stream if stream is not None else sys.stderr, dynamic_ncols=True, leave=True,
            )  # fmt: skip

    def __call__(self, n: int = 1) -> None:
        """Advance by ``n``."""
        self.update_to(self.n + int(n))

    def update_to(self, n: int) -> None:
        """Set the count to ``n`` (a poller that reads a running total)."""
        with self._lock:
            n = int(n)
            step, self.n = n - self.n, n
            if self.mode == "tty":
                if step:
                    self._bar.update(step)
            elif self.mode == "log":
                now = time.monotonic()
                if now - self._t_logged >= self.interval_s and self.n != self._n_logged:
                    self._emit(now)

    def line(self, now: float | None = None, *, final: bool = False) -> str:
        """The report as one line: count, percentage, rate and time left
        (``final``: the work ended, done or not)."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._t0, 1e-9)
        rate = self.n / elapsed
        text = f"{self.label}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s" if rate >= 1 else f", {rate:.2g} {self.unit}/s"
        if self.total:
            if self.n >= self.total:
                text += f", done in {_duration(elapsed)}"
            elif final:
                text += f", stopped after {_duration(elapsed)}"
            elif rate > 0:
                text += f", {_duration((self.total - self.n) / rate)} left"
            else:
                text += ", time left unknown"
        else:
            text += f", {_duration(elapsed)} elapsed"
        return text

    def _emit(self, now: float, final: bool = False) -> None:
        self._log.info("%s", self.line(now, final=final))
        self._t_logged, self._n_logged = now, self.n

    def close(self, failed: bool = False) -> None:
        """End the report: the bar is closed; in log mode, a last line says
        where it stopped (unless nothing changed since the last one)."""
        with self._lock:
            if self.mode == "tty" and self._bar is not None:
                self._bar.close()
            elif self.mode == "log" and not failed:
                stopped_early = self.total is not None and self.n < self.total
                if self.n != self._n_logged or stopped_early:
                    self._emit(time.monotonic(), final=True)


@contextlib.contextmanager
def progress(
    label: str,
    total: int | None = None,
    *,
    unit: str = "frames",
    enabled: bool | None = None,
    interval_s: float | None = None,
    logger: logging.Logger | None = None,
    stream: Any = None,
) -> Iterator[Progress]:
    """Report the progress of ``label``'s work; yields the callable that advances it.

    Parameters
    ----------
    label : str
        What is working, shown first (a stage's name).
    total : int, optional
        The count when done (frames); unknown if None.
    unit : str
        What is counted.
    enabled : bool, optional
        False: report nothing. None (default): on, unless
        ``TRACKFLOW_PROGRESS`` turns it off (see :func:`progress_mode`).
    interval_s : float, optional
        Least seconds between two log lines (default
        ``TRACKFLOW_PROGRESS_INTERVAL``, else 30); 0 logs every advance.
    logger : logging.Logger, optional
        Where log lines go (default ``trackflow.progress``).
    stream : file, optional
        The terminal (default stderr).

    Yields
    ------
    Progress
        ``advance(n)`` adds ``n``; ``advance.update_to(n)`` sets the count.

    Examples
    --------
    >>> with progress("locate", total=3, enabled=False) as advance:
    ...     for frame in range(3):
    ...         advance(1)
    """
    mode = progress_mode(enabled, stream)
    interval = _interval_from_env() if interval_s is None else float(interval_s)
    reporter = Progress(label, total, unit=unit, mode=mode, interval_s=interval, logger=logger, stream=stream)
    try:
        yield reporter
    except BaseException:
        reporter.close(failed=True)
        raise
    reporter.close()


# --- Dask -------------------------------------------------------------------------


def dask_compute(
    *tasks: Any,
    advance: Progress | None = None,
    weights: Sequence[int] | None = None,
    **how: Any,
) -> tuple:
    """``dask.compute(*tasks, **how)`` that advances ``advance`` as tasks finish.

    Parameters
    ----------
    *tasks : dask collections (delayed)
    advance : Progress, optional
        The reporter (from :func:`progress`); None computes without one.
    weights : sequence of int, optional
        What each task counts for (its frames); 1 each by default.
    **how
        ``dask.compute``'s keyword arguments (``scheduler``, ...), as
        :func:`pipeline.compute.dask_scheduler` yields them: a local
        scheduler is followed through its callbacks, a
        ``distributed.Client`` through its futures.

    Returns
    -------
    tuple
        The results, in the order of ``tasks``.
    """
    import dask

    if advance is None or advance.mode == "off" or not tasks:
        return dask.compute(*tasks, **how)
    weights = [1] * len(tasks) if weights is None else [int(w) for w in weights]
    if len(weights) != len(tasks):
        raise ValueError(f"dask_compute: {len(weights)} weights for {len(tasks)} tasks")
    scheduler = how.get("scheduler")
    if scheduler is not None and not isinstance(scheduler, str) and hasattr(scheduler, "compute"):
        return _distributed_compute(scheduler, tasks, weights, advance, how)

    from dask.callbacks import Callback

    by_key: dict[Any, int] = {}
    for task, weight in zip(tasks, weights):
        key = getattr(task, "key", None)
        if key is not None:
            by_key[key] = by_key.get(key, 0) + weight

    class _Advance(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            weight = by_key.pop(key, 0)
            if weight:
                advance(weight)

    with _Advance():
        return dask.compute(*tasks, **how)


def _distributed_compute(client, tasks, weights, advance: Progress, how: Mapping[str, Any]) -> tuple:
    """A distributed client's share of :func:`dask_compute`: futures, advanced
    as each completes, gathered in order."""
    from distributed import as_completed

    options = {k: v for k, v in how.items() if k != "scheduler"}
    futures = client.compute(list(tasks), **options)
    weight_of = {id(f): w for f, w in zip(futures, weights)}
    # the client's own loop: it need not be the default client (as_completed
    # would look that one up and fail with "No clients found")
    for future in as_completed(futures, loop=client.loop):
        if future.status == "finished":
            advance(weight_of[id(future)])
    return tuple(client.gather(futures))
