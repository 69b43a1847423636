"""Dask set-up shared by the stages: one place that turns the ``compute``
config section into a scheduler, and maps a per-chunk function over a movie.

``compute.scheduler`` selects where the tasks of a stage run:

- ``processes`` (default) or ``threads``: Dask's local schedulers, sized from
  the ``threads`` the caller (a Snakemake rule) was given. trackpy holds the
  GIL for most of its work, so threads barely scale and processes are the
  default; worker processes come from a fork server that has already
  imported trackpy, so a pool costs milliseconds after the first one;
- ``synchronous``: in this process, for debugging (also used whenever a
  local scheduler would get a single worker);
- ``address``: an existing ``dask.distributed`` scheduler (``compute.address``);
- ``scheduler_file``: a cluster that wrote ``compute.scheduler_file``
  (``dask scheduler --scheduler-file``);
- ``slurm``: a dask-jobqueue ``SLURMCluster`` started for this stage
  (``compute.slurm`` holds its settings, plus ``jobs``: how many to start).

As with any non-fork multiprocessing, worker processes import the calling
script again (as ``__mp_main__``): a script that runs a stage with the
``processes`` scheduler needs the ``if __name__ == "__main__":`` guard.

The unit of work is a range of whole frames (trackpy's percentile threshold is
per image, so frames are never split). Each task opens the movie store and
reads only its own frames: only paths and frame numbers travel to the
workers, and memory is bounded by the task's frames, not the movie's length.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Mapping

import dask
import pandas as pd

from .io.movie import Movie, open_movie
from .io.schema import check_section, section_defaults
from .progress import dask_compute
from .progress import progress as progress_report

__all__ = [
    "COMPUTE_KEYS",
    "DEFAULT_SCHEDULER",
    "dask_scheduler",
    "scheduler_workers",
    "frame_ranges",
    "map_frame_chunks",
    "validate_compute",
]

#: The keys of the ``compute`` section (workflow/schemas/compute.schema.yaml).
COMPUTE_KEYS = tuple(section_defaults("compute"))
DEFAULT_SCHEDULER = section_defaults("compute")["scheduler"]
# Tasks per worker when a movie has too few shards to keep every worker busy:
# a few per worker balances uneven frames without paying much per-task cost.
TASKS_PER_WORKER = 4
# Imported once by the fork server, so that every worker process starts with
# them (trackpy alone takes about a second to import).
_PRELOAD = ("numpy", "pandas", "zarr", "trackpy", "pipeline.io", "pipeline.compute")


def validate_compute(compute: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check the ``compute`` section against its schema, and that the
    scheduler has the setting it needs. Returns a plain dict with only
    ``scheduler`` filled in: a missing ``threads`` means the rule's threads,
    else the available cores, not the schema's default."""
    compute = check_section("compute", compute, fill=False)
    kind = compute.setdefault("scheduler", DEFAULT_SCHEDULER)
    if kind == "address" and not compute.get("address"):
        raise ValueError("compute.scheduler is 'address' but compute.address is not set")
    if kind == "scheduler_file" and not compute.get("scheduler_file"):
        raise ValueError("compute.scheduler is 'scheduler_file' but compute.scheduler_file is not set")
    return compute


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects cgroup/taskset limits
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _process_pool(workers: int, preload: Iterable[str] = ()) -> ProcessPoolExecutor:
    """A process pool whose workers fork from a fork server.

    A fork server rather than plain ``fork``: forking a parent that runs
    threads (Zarr's I/O loop, Snakemake, a Dask client) can deadlock the child.
    The modules in ``preload`` are imported once by the server, which starts
    with the first pool of this process; later pools fork in milliseconds.
    """
    from dask.multiprocessing import initialize_worker_process

    context = multiprocessing.get_context("forkserver")
    modules = list(dict.fromkeys([*_PRELOAD, *(m for m in preload if m and m != "__main__")]))
    context.set_forkserver_preload(modules)  # ignored once the server runs
    # initialize_worker_process reseeds `random` and NumPy in every worker, as
    # Dask's own process pool does: forked workers would share one state.
    return ProcessPoolExecutor(workers, mp_context=context, initializer=initialize_worker_process)


class _PrefetchingPool(Executor):
    """A process pool as Dask's ``processes`` scheduler sees it, claiming
    ``prefetch`` times its workers: Dask keeps that many tasks in flight, so a
    worker that finishes a task finds the next one already queued instead of
    waiting for a round trip through the scheduler (the workers still run one
    task at a time, so memory stays bounded by the task)."""

    def __init__(self, pool: ProcessPoolExecutor, workers: int, prefetch: int = 2):
        self._pool = pool
        self._max_workers = workers * prefetch  # what dask.multiprocessing.get reads

    def submit(self, fn, /, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


@contextlib.contextmanager
def dask_scheduler(
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    *,
    preload: Iterable[str] = (),
) -> Iterator[dict]:
    """Yield the keyword arguments for ``dask.compute`` that run on the
    scheduler chosen by ``compute`` (the config section), and tear down what
    was started for it.

    Parameters
    ----------
    compute : mapping, optional
        The ``compute`` config section (keys :data:`COMPUTE_KEYS`).
    threads : int, optional
        Workers for the local schedulers (a rule's ``threads``); defaults to
        ``compute.threads``, else the cores this process may use. One worker
        runs synchronously.
    preload : iterable of str
        Modules for the worker processes of the ``processes`` scheduler to
        import before their first task (the module of the task function).

    Examples
    --------
    >>> with dask_scheduler({"scheduler": "threads"}, threads=2) as how:
    ...     dask.compute(*tasks, **how)  # doctest: +SKIP
    """
    compute = validate_compute(compute)
    kind = compute["scheduler"]
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    workers = int(threads or compute.get("threads") or _available_cores())
    if kind == "synchronous" or (kind in ("threads", "processes") and workers == 1):
        yield {"scheduler": "synchronous"}
        return
    if kind == "threads":
        yield {"scheduler": "threads", "num_workers": workers, "chunksize": 1}
        return
    if kind == "processes":
        pool = _PrefetchingPool(_process_pool(workers, preload), workers)
        try:
            # chunksize=1: a task is already a batch of frames
            yield {"scheduler": "processes", "pool": pool, "num_workers": workers, "chunksize": 1}
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return

    from distributed import Client

    if kind == "address":
        address = compute["address"]
        try:
            client = Client(address, set_as_default=False, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"compute.address {address!r}: cannot reach a dask scheduler there ({exc})"
            ) from exc
        with client:
            yield {"scheduler": client}
    elif kind == "scheduler_file":
        path = compute["scheduler_file"]
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"compute.scheduler_file {path!r} does not exist (start the cluster with "
                "`dask scheduler --scheduler-file PATH` first)"
            )
        with Client(scheduler_file=str(path), set_as_default=False, timeout="20s") as client:
            yield {"scheduler": client}
    else:  # slurm
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise ImportError(
                "compute.scheduler 'slurm' needs dask-jobqueue: pip install 'trackflow[slurm]'"
            ) from exc
        settings = dict(compute.get("slurm") or {})
        jobs = int(settings.pop("jobs", 1))
        with SLURMCluster(**settings) as cluster, Client(cluster, set_as_default=False) as client:
            cluster.scale(jobs=jobs)
            _wait_for_slurm_worker(cluster, client)
            yield {"scheduler": client}


def _wait_for_slurm_worker(cluster, client, poll_s: float = 1.0) -> None:
    """Wait for the first worker of a dask-jobqueue cluster, however long its
    jobs queue; but if SLURM refused every job (sbatch failed: a wrong
    partition, account, memory or time limit), raise instead of waiting forever."""
    import time

    # polled, not client.wait_for_workers(timeout=...): after one of its
    # timeouts, closing the cluster trips distributed's assertion that every
    # job has ended (seen with distributed 2026.8)
    while not client.nthreads():
        jobs = dict(cluster.workers)
        # a job that sbatch refused has no job id once the scale-up is done
        if jobs and all(getattr(job, "job_id", None) is None for job in jobs.values()):
            # never started, so nothing to stop; marked failed, as closing
            # the cluster asserts that every job it created has ended
            from distributed.core import Status

            for name, job in jobs.items():
                cluster.workers.pop(name, None)
                job.status = Status.failed
            raise RuntimeError(
                "compute.slurm: SLURM refused the Dask worker jobs (sbatch failed, its error "
                "is logged above); check compute.slurm's queue, account, memory and walltime. "
                f"The job script was:\n{cluster.job_script()}"
            )
        time.sleep(poll_s)


def scheduler_workers(how: Mapping[str, Any]) -> int:
    """How many tasks the scheduler given by :func:`dask_scheduler` runs at once."""
    scheduler = how.get("scheduler")
    if isinstance(scheduler, str):
        return 1 if scheduler == "synchronous" else int(how.get("num_workers") or 1)
    if hasattr(scheduler, "nthreads"):  # a distributed Client
        return max(1, sum(scheduler.nthreads().values()))
    return 1


def frame_ranges(
    n_frames: int, frames_per_shard: int, workers: int = 1, frames_per_task: int | None = None
) -> list[tuple[int, int]]:
    """Frame ranges ``[(start, stop), ...]`` covering ``n_frames``, one per task.

    ``frames_per_task`` fixes the size. Without it a task is one shard (the
    store's unit of storage); a movie with too few shards to give every
    worker :data:`TASKS_PER_WORKER` tasks is cut into that many ranges of
    equal length (to a frame), so that no worker is left idle at the end.
    """
    if frames_per_task is not None:
        if isinstance(frames_per_task, bool) or int(frames_per_task) != frames_per_task or frames_per_task < 1:
            raise ValueError(f"frames_per_task must be a positive integer, got {frames_per_task!r}")
        step = int(frames_per_task)
        return [(start, min(start + step, n_frames)) for start in range(0, n_frames, step)]
    shard = max(1, int(frames_per_shard))
    n_tasks = TASKS_PER_WORKER * max(int(workers), 1)
    if math.ceil(n_frames / shard) >= n_tasks:
        return [(start, min(start + shard, n_frames)) for start in range(0, n_frames, shard)]
    n_tasks = min(n_tasks, n_frames)
    edges = [round(i * n_frames / n_tasks) for i in range(n_tasks + 1)] if n_tasks else [0]
    return list(zip(edges[:-1], edges[1:]))


def _apply_to_frames(
    func: Callable[..., pd.DataFrame], path: str, start: int, stop: int, kwargs: Mapping[str, Any]
) -> pd.DataFrame:
    """One task: open the store, read frames ``start..stop-1``, apply ``func``."""
    frames = open_movie(path).frames(start, stop)
    return func(frames, start, **kwargs)


def map_frame_chunks(
    func: Callable[..., pd.DataFrame],
    movie: Movie | str | os.PathLike,
    *,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    frames_per_task: int | None = None,
    chunk_kwargs: Callable[[int, int], Mapping[str, Any] | None] | None = None,
    progress: str | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Apply ``func(frames, first_frame, **kwargs)`` to consecutive ranges of
    whole frames of ``movie`` in parallel and concatenate the DataFrames, in
    frame order.

    Parameters
    ----------
    func : callable
        ``func(frames, first_frame, **kwargs) -> DataFrame``, where ``frames``
        is ``(t, y, x)`` or ``(t, z, y, x)`` and ``first_frame`` the index of
        its first frame in the movie. Must be importable (or cloudpickle-able)
        for the process and distributed schedulers.
    movie : Movie or path
    compute : mapping, optional
        The ``compute`` config section; see :func:`dask_scheduler`.
    threads : int, optional
        Local workers.
    frames_per_task : int, optional
        Frames per task (falls back to ``compute.frames_per_task``, then to
        :func:`frame_ranges`' choice: one shard or less).
    chunk_kwargs : callable, optional
        ``chunk_kwargs(start, stop)`` gives keyword arguments for the task of
        frames ``start..stop-1`` alone (say, the rows of a table that fall in
        those frames), so that a large table is not shipped to every task;
        returning ``None`` skips that range (its frames are not read).
    progress : str, optional
        Report progress in frames under this label (a stage's name) as the
        tasks finish (:func:`pipeline.progress.progress`); None reports
        nothing.

    Returns
    -------
    DataFrame
        The tasks' rows in frame order. Empty tables are left out of the
        concatenation (their all-object columns would change the dtypes); if
        every table is empty, the first one is returned, keeping its columns.
    """
    path = str(movie.path if isinstance(movie, Movie) else movie)
    movie = movie if isinstance(movie, Movie) else open_movie(path)
    compute = validate_compute(compute)
    per_task = frames_per_task if frames_per_task is not None else compute.get("frames_per_task")
    module = getattr(func, "__module__", None)
    with dask_scheduler(compute, threads, preload=[module] if module else []) as how:
        bounds = frame_ranges(len(movie), movie.frames_per_shard, scheduler_workers(how), per_task)
        tasks, frames = [], []
        for start, stop in bounds:
            extra = {} if chunk_kwargs is None else chunk_kwargs(start, stop)
            if extra is None:
                continue
            tasks.append(
                dask.delayed(_apply_to_frames, pure=True)(func, path, start, stop, {**kwargs, **extra})
            )
            frames.append(stop - start)
        enabled = False if progress is None else None
        with progress_report(progress or "", total=sum(frames), enabled=enabled) as advance:
            parts = dask_compute(*tasks, advance=advance, weights=frames, **how)
    tables = [p for p in parts if isinstance(p, pd.DataFrame)]
    filled = [t for t in tables if len(t)]
    if filled:
        return pd.concat(filled, ignore_index=True)
    return tables[0].reset_index(drop=True) if tables else pd.DataFrame()
