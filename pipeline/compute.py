"""Dask set-up shared by the stages: one place that turns the ``compute``
config section into a scheduler, and maps a per-chunk function over a movie.

``compute.scheduler`` selects where the tasks of a stage run:

- ``threads`` (default) or ``processes``: Dask's local schedulers, sized from
  the ``threads`` the caller (a Snakemake rule) was given;
- ``synchronous``: in this process, for debugging;
- ``address``: an existing ``dask.distributed`` scheduler (``compute.address``);
- ``scheduler_file``: a cluster that wrote ``compute.scheduler_file``
  (``dask scheduler --scheduler-file``);
- ``slurm``: a dask-jobqueue ``SLURMCluster`` started for this stage
  (``compute.slurm`` holds its settings).

The unit of work is a range of whole frames (trackpy's percentile threshold is
per image, so frames are never split).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Mapping

import dask
import pandas as pd

from .io.movie import Movie, open_movie

__all__ = ["SCHEDULERS", "dask_scheduler", "map_frame_chunks"]

SCHEDULERS = ("threads", "processes", "synchronous", "address", "scheduler_file", "slurm")


@contextlib.contextmanager
def dask_scheduler(compute: Mapping[str, Any] | None = None, threads: int | None = None) -> Iterator[dict]:
    """Yield the keyword arguments for ``dask.compute`` that run on the
    scheduler chosen by ``compute`` (the config section), and tear down what
    was started for it.

    Parameters
    ----------
    compute : mapping, optional
        The ``compute`` config section.
    threads : int, optional
        Workers for the local schedulers (a rule's ``threads``); defaults to
        the machine's cores.
    """
    compute = dict(compute or {})
    kind = compute.get("scheduler") or "threads"
    workers = int(threads or compute.get("workers") or os.cpu_count() or 1)
    if kind not in SCHEDULERS:
        raise ValueError(f"compute.scheduler must be one of {SCHEDULERS}, got {kind!r}")
    if kind in ("threads", "processes", "synchronous"):
        yield {"scheduler": kind, "num_workers": workers}
        return
    from distributed import Client

    if kind == "address":
        address = compute.get("address")
        if not address:
            raise ValueError("compute.scheduler is 'address' but compute.address is not set")
        with Client(address, set_as_default=False) as client:
            yield {"scheduler": client}
    elif kind == "scheduler_file":
        path = compute.get("scheduler_file")
        if not path or not os.path.exists(path):
            raise FileNotFoundError(
                f"compute.scheduler_file {path!r} does not exist (start the cluster with "
                "`dask scheduler --scheduler-file PATH` first)"
            )
        with Client(scheduler_file=path, set_as_default=False) as client:
            yield {"scheduler": client}
    else:  # slurm
        from dask_jobqueue import SLURMCluster

        settings = dict(compute.get("slurm") or {})
        jobs = int(settings.pop("jobs", 1))
        with SLURMCluster(**settings) as cluster, Client(cluster, set_as_default=False) as client:
            cluster.scale(jobs=jobs)
            client.wait_for_workers(1)
            yield {"scheduler": client}


def map_frame_chunks(
    func: Callable[..., pd.DataFrame],
    movie: Movie | str | os.PathLike,
    *,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    frames_per_task: int | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Apply ``func(frames, first_frame, **kwargs)`` to consecutive ranges of
    whole frames of ``movie`` in parallel and concatenate the DataFrames, in
    frame order.

    Each task opens the store and reads only its own frames, so memory is
    bounded by ``frames_per_task`` (default: one shard) times the number of
    workers, never by the movie's length.
    """
    path = str(movie.path if isinstance(movie, Movie) else movie)
    movie = movie if isinstance(movie, Movie) else open_movie(path)
    bounds = movie.chunk_bounds(frames_per_task or (compute or {}).get("frames_per_task"))

    def task(start: int, stop: int) -> pd.DataFrame:
        frames = open_movie(path).frames(start, stop)
        return func(frames, start, **kwargs)

    tasks = [dask.delayed(task, pure=True)(a, b) for a, b in bounds]
    with dask_scheduler(compute, threads) as how:
        parts = dask.compute(*tasks, **how)
    parts = [p for p in parts if p is not None and len(p)]
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True)
