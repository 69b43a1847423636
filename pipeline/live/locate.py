"""Locate while acquiring: a run's features ready seconds after its last frame.

With ``acquire.live_locate: true`` the acquire job starts a *follower*
beside the writer: a process (at a lower CPU priority, so that the
recording always comes first) that reads the movie store while it is being
written, shard by shard as each one is published, and locates every frame
with the run's ``locate`` parameters through :func:`pipeline.locate.locate_frames`,
the same function the locate stage runs on the same frames read from the
same store. The acquisition then writes shards of at most a second of
frames (:data:`LIVE_SHARD_SECONDS`, unless ``acquire.frames_per_shard`` is
set), so the follower is never more than that, plus its own work, behind.
When the stream has ended and the store is complete, it writes
the features beside the store (:func:`live_features_path`:
``results/{run}/movie.live_features.parquet``), with the locate
parameters' SHA-256, the store's ``store_id``, frame count and dropped
frames in their provenance.

The locate rule is unchanged as Snakemake sees it (input: the movie; params:
the ``locate`` section): it runs :func:`locate_or_adopt`, which takes the
live features (:func:`adopt_live_features`) only when they were made from
this very store (``store_id``, frames, dropped frames, complete), with the
same parameters (SHA-256 of the validated ``locate`` section, without
``frames_per_task``, which only cuts the work into tasks), the same engine
and the same trackflow version; otherwise it locates from the store as
always. So a changed locate parameter re-runs locate (Snakemake's params
trigger), which then finds the hash different and locates from the store;
and the result is identical either way (``tests/test_live_locate.py``
compares them). ``acquire.live_locate`` itself is left out of the acquire
rule's params: it changes when the features are computed, not what the
movie or the features are, so switching it re-runs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from .. import __version__
from ..io.movie import Movie, MovieError, open_movie
from ..io.schema import check_section
from ..io.tables import read_table, table_metadata, write_table
from ..locate import TRACKPY_OPTIONS, empty_features, engine_used, image_filters_used, locate_frames

__all__ = [
    "live_features_path",
    "locate_params_sha256",
    "StoreFollower",
    "live_locate",
    "adopt_live_features",
    "locate_or_adopt",
    "workflow_live_params",
]

log = logging.getLogger("trackflow.live")

#: Seconds of frames per shard while locating live (with ``acquire.frames_per_shard``
#: null): the follower reads a shard once it is on disk, so it is that far behind at most.
LIVE_SHARD_SECONDS = 1.0

#: locate keys that change how the work is cut, not the features
_NOT_RESULTS = ("frames_per_task",)


def live_features_path(store: str | os.PathLike) -> Path:
    """Where the features located during the acquisition of ``store`` go:
    beside it, ``<name>.live_features.parquet`` (``movie.ome.zarr`` ->
    ``movie.live_features.parquet``)."""
    store = Path(store)
    return store.with_name(store.name.split(".")[0] + ".live_features.parquet")


def _options(params: Mapping[str, Any] | None) -> tuple[dict, dict]:
    resolved = check_section("locate", dict(params or {}))
    return resolved, {k: v for k, v in resolved.items() if k not in _NOT_RESULTS}


def locate_params_sha256(params: Mapping[str, Any] | None) -> str:
    """SHA-256 of the locate parameters that decide the features: the
    validated ``locate`` section (defaults filled in) without
    ``frames_per_task``, as canonical JSON."""
    _, options = _options(params)
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=list).encode()).hexdigest()


def _published(store: Path) -> dict | None:
    """The store's ``trackflow`` attributes as last published (one atomic
    file), or None before the store exists."""
    try:
        with open(store / "zarr.json", encoding="utf-8") as fh:
            return json.load(fh)["attributes"]["trackflow"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class StoreFollower:
    """Locate the frames of a movie store as its writer publishes them.

    Call :meth:`step` repeatedly (it returns whether the store is complete
    and every frame located), then :meth:`features`.

    A frame is read only once the store's metadata counts it: the writer
    publishes ``frames_written`` and ``dropped`` together, in one atomic
    file, after its shard reached disk, so frames ``0 ..
    frames_written + len(dropped) - 1`` are on disk or dropped. Dropped
    frames are skipped, as the locate stage skips them.

    Parameters
    ----------
    store : path-like
        The movie store being written.
    params : mapping
        The ``locate`` section (``locate.schema.yaml``).
    """

    def __init__(self, store: str | os.PathLike, params: Mapping[str, Any] | None):
        self.store = Path(store)
        self.params, options = _options(params)
        if self.params["method"] != "trackpy":
            raise ValueError(f"live locate runs trackpy's method only, not locate.method {self.params['method']!r}")
        # what trackpy.locate takes; the hash of the whole section (method included) decides adoption
        self.options = {k: v for k, v in options.items() if k == "diameter" or k in TRACKPY_OPTIONS}
        self.done = 0  # frames located (or skipped as dropped)
        self.store_id: str | None = None
        self.tables: list[pd.DataFrame] = []
        self.image_filters: str | None = None  # for the provenance, once the first frames are seen
        self.complete = False
        self.ndim: int | None = None
        self.dropped: list[int] = []
        self.seconds_locating = 0.0
        self.t_complete: float | None = None  # when the store was first seen complete
        self.frames_before_complete: int | None = None

    def step(self) -> bool:
        """Locate the frames published since the last call; True once the
        store is complete and all its frames are done."""
        attrs = _published(self.store)
        if attrs is None or "frames_written" not in attrs:
            return False
        store_id = attrs.get("store_id")
        if self.store_id is None:
            self.store_id = store_id
        elif store_id != self.store_id:
            raise MovieError(f"{self.store}: the store was replaced while it was followed")
        first = int(attrs.get("first_seq", 0))
        dropped = {int(s) - first for s in attrs.get("dropped", [])}
        n = int(attrs["frames_written"]) + len(dropped)
        complete = bool(attrs.get("complete"))
        if complete and self.t_complete is None:
            self.t_complete = time.perf_counter()
            self.frames_before_complete = self.done
        if n > self.done:
            movie = open_movie(self.store)
            if len(movie) < n:  # cannot happen with the writer's order of writes; read again later
                return False
            self.ndim = movie.ndim
            if self.image_filters is None:
                self.image_filters = image_filters_used(self.options, movie.frame_shape, movie.dtype)
            self._locate(movie, self.done, n, dropped)
            self.done = n
        if complete and self.done >= n:
            self.complete = True
            self.dropped = sorted(dropped)
        return self.complete

    def _locate(self, movie: Movie, start: int, stop: int, dropped: set[int]) -> None:
        t0 = time.perf_counter()
        step = movie.frames_per_shard
        for a in range(start, stop, step):
            b = min(stop, a + step)
            keep = [i for i in range(a, b) if i not in dropped]
            if not keep:
                continue
            frames = movie.frames(keep[0], keep[-1] + 1)
            run_start = keep[0]
            for i, j in zip(keep, keep[1:] + [None]):
                if j is None or j != i + 1:  # the end of a run of consecutive frames
                    found = locate_frames(frames[run_start - keep[0] : i + 1 - keep[0]], run_start, **self.options)
                    if len(found):
                        self.tables.append(found)
                    run_start = j
        self.seconds_locating += time.perf_counter() - t0

    def features(self) -> pd.DataFrame:
        """Every frame's features, as the locate stage writes them."""
        if not self.tables:
            return empty_features(self.ndim or 2, **self.options)
        return pd.concat(self.tables, ignore_index=True)

    def write(self, path: str | os.PathLike | None = None) -> Path:
        """Write the features beside the store (:func:`live_features_path`)
        with what :func:`adopt_live_features` checks in their provenance."""
        if not self.complete:
            raise MovieError(f"{self.store}: not complete; the live features are written only for a complete store")
        features = self.features()
        lag = None if self.t_complete is None else time.perf_counter() - self.t_complete
        path = Path(path) if path is not None else live_features_path(self.store)
        engine = engine_used(self.options["engine"], self.ndim or 2)
        write_table(
            features,
            path,
            stage="locate",
            params=self.params,
            extra={
                "movie": str(self.store),
                "n_frames": self.done,
                "dropped_frames": self.dropped,
                "n_features": len(features),
                "engine_used": engine,
                "image_filters": self.image_filters,
                "live": {
                    "how": "located during the acquisition, from the store's shards as they were published",
                    "store_id": self.store_id,
                    "params_sha256": locate_params_sha256(self.params),
                    "frames_located_before_the_store_was_complete": self.frames_before_complete,
                    "seconds_after_the_store_was_complete": lag,
                    "seconds_locating": self.seconds_locating,
                },
            },
        )
        return path


def follow(store: str | os.PathLike, params: Mapping[str, Any] | None, *, poll_s: float = 0.2,
           start_timeout_s: float | None = None, alive=None) -> Path:
    """Follow ``store`` until it is complete and write its live features.

    Parameters
    ----------
    store : path-like
        The movie store being (or about to be) written.
    params : mapping
        The ``locate`` section.
    poll_s : float
        Seconds between looks at the store when nothing new was published.
    start_timeout_s : float, optional
        Give up (MovieError) when the store has not appeared after this long.
    alive : callable, optional
        Called between looks; False gives up (MovieError): the process that
        writes the store is gone.

    Returns
    -------
    Path
        The features written (:func:`live_features_path`).
    """
    follower = StoreFollower(store, params)
    t0 = time.perf_counter()
    while not follower.step():
        if follower.store_id is None and start_timeout_s is not None and time.perf_counter() - t0 > start_timeout_s:
            raise MovieError(f"{store}: no store appeared within {start_timeout_s:g} s")
        if alive is not None and not alive():
            raise MovieError(f"{store}: the acquisition is gone before the store was complete")
        time.sleep(poll_s)
    path = follower.write()
    log.info(
        "%s: %d features in %d frames located while acquiring; written %.2f s after the store was complete -> %s",
        store, len(follower.features()), follower.done,
        time.perf_counter() - (follower.t_complete or time.perf_counter()), path,
    )
    return path


_CHILD = "import sys; from pipeline.live.locate import _main; sys.exit(_main(sys.argv[1:]))"


@contextlib.contextmanager
def live_locate(
    store: str | os.PathLike, params: Mapping[str, Any] | None, *, enabled: bool = True, nice: int = 10
) -> Iterator[None]:
    """Locate the frames of ``store`` while the block writes it.

    A follower process (:func:`follow`, at ``nice`` lower CPU priority)
    locates each shard as it is published. When the block ends cleanly, this
    waits for it to finish the last frames and write the features beside the
    store; when the block raises, the follower is stopped and nothing is left
    behind. Any features from an earlier acquisition of the store are
    removed first.

    Parameters
    ----------
    store : path-like
        The movie store the block writes.
    params : mapping
        The ``locate`` section the locate stage will run with.
    enabled : bool
        False: run the block alone (features from an earlier acquisition
        are still removed).
    nice : int
        Added to the follower's CPU niceness: the recording comes first.
    """
    side = live_features_path(store)
    side.unlink(missing_ok=True)
    if not enabled:
        yield
        return
    resolved, _ = _options(params)  # a bad parameter is an error before anything is acquired
    if resolved["method"] != "trackpy":
        log.info("%s: live locate runs trackpy's method only; with locate.method %s the locate stage "
                 "locates from the store", store, resolved["method"])
        yield
        return
    # the follower logs where this process does (a Snakemake job's log file)
    log_file = next((h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)), None)
    config = json.dumps({"store": str(store), "params": dict(params or {}), "nice": int(nice), "log_file": log_file,
                         "parent_pid": os.getpid()})
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, config], stdin=subprocess.DEVNULL)
    try:
        yield
    except BaseException:
        _stop(proc)
        side.unlink(missing_ok=True)
        raise
    if not (_published(Path(store)) or {}).get("complete"):
        # an interrupted stream returns an incomplete store without an error:
        # it never completes, and its live features would never be adopted
        _stop(proc)
        log.warning("%s: the store is not complete; no live features", store)
        return
    rc = proc.wait()
    if rc != 0 or not side.is_file():
        log.warning("%s: live locate failed (exit status %s); the locate stage will locate from the store", store, rc)
        side.unlink(missing_ok=True)


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _main(argv: list[str]) -> int:
    """The follower process (:data:`_CHILD`): :func:`follow` with a JSON
    config, for as long as its parent (the config's ``parent_pid``) lives."""
    config = json.loads(argv[0])
    # the acquire process: if it dies outright, this one stops too. Its pid comes
    # with the config: asked after the imports (a second or more on a loaded
    # machine), os.getppid() may already name whoever adopted this process.
    parent = int(config.get("parent_pid") or os.getppid())
    logging.basicConfig(
        filename=config.get("log_file"), level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    with contextlib.suppress(OSError):
        os.nice(int(config.get("nice", 0)))
    try:
        follow(config["store"], config["params"], start_timeout_s=config.get("start_timeout_s"),
               alive=lambda: os.getppid() == parent)
    except (MovieError, ValueError, OSError) as exc:
        log.error("live locate of %s: %s", config["store"], exc)
        return 1
    return 0


def adopt_live_features(
    movie: Movie | str | os.PathLike, params: Mapping[str, Any] | None
) -> tuple[pd.DataFrame | None, str]:
    """The features located while ``movie`` was acquired, if they are
    exactly what the locate stage would compute from it with ``params``.

    Returns
    -------
    (DataFrame or None, str)
        The features and a description of them, or None and why not:
        there are none, the store was written again, its frames or dropped
        frames differ, it is incomplete, or the parameters' SHA-256, the
        engine or the trackflow version differ.
    """
    movie = movie if isinstance(movie, Movie) else open_movie(movie)
    side = live_features_path(movie.path)
    if not side.is_file():
        return None, f"no live features ({side})"
    try:
        meta = table_metadata(side)
    except Exception as exc:  # unreadable: locate from the store
        return None, f"{side} is unreadable ({exc})"
    live = meta.get("live") or {}
    resolved, options = _options(params)
    dropped = sorted(int(i) for i in movie.dropped_frames)
    checks = {
        "store_id": (live.get("store_id"), movie.attrs.get("store_id")),
        "frames": (meta.get("n_frames"), len(movie)),
        "dropped frames": (meta.get("dropped_frames"), dropped),
        "locate parameters (SHA-256)": (live.get("params_sha256"), locate_params_sha256(resolved)),
        "engine": (meta.get("engine_used"), engine_used(options["engine"], movie.ndim)),
        "trackflow version": (meta.get("trackflow_version"), __version__),
    }
    if not movie.complete:
        return None, f"{movie.path} is not complete"
    differ = [key for key, (theirs, ours) in checks.items() if theirs is None or theirs != ours]
    if differ:
        return None, f"{side} differs from this store or these parameters in: {', '.join(differ)}"
    return read_table(side), str(side)


def locate_or_adopt(
    movie: str | os.PathLike,
    output: str | os.PathLike,
    params: Mapping[str, Any] | None,
    compute: Mapping[str, Any] | None = None,
    threads: int | None = None,
    detector: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The locate stage (``pipeline.locate.run``), taking the features
    located during the acquisition when they are exactly what it would
    compute (:func:`adopt_live_features`); the table written says which.

    Parameters and return value are those of :func:`pipeline.locate.run`
    (``detector``: the trained detector of ``locate.method: learned``, whose
    features are never located live).
    """
    from ..locate import run as locate_run

    opened = open_movie(movie)
    features, why = adopt_live_features(opened, params)
    if features is None:
        log.info("locate %s from the store: %s", movie, why)
        return locate_run(movie, output, params, compute=compute, threads=threads, detector=detector)
    resolved = check_section("locate", dict(params or {}))
    side = table_metadata(why)
    write_table(
        features,
        output,
        stage="locate",
        params=resolved,
        extra={
            "movie": str(opened.path),
            "n_frames": len(opened),
            "dropped_frames": [int(i) for i in opened.dropped_frames],
            "n_features": len(features),
            "engine_used": side["engine_used"],
            "image_filters": side.get("image_filters"),
            "adopted": {"from": why, **side["live"]},
        },
    )
    log.info("%s: %d features located during the acquisition, adopted from %s -> %s", movie, len(features), why, output)
    return features


def workflow_live_params(config: Mapping[str, Any], run: str) -> dict | None:
    """For the acquire job of ``run``: the ``locate`` section the locate
    rule will use (the config's, with the run's overrides) when the run's
    ``acquire.live_locate`` is on; None when it is off.

    Read from the validated config and runs.tsv, not from the rule's
    params, so that neither switching live_locate nor changing a locate
    parameter re-runs the acquisition.
    """
    from ..io.config import load_runs, stage_params

    runs = {r["run"]: r for r in load_runs(config["runs"], config)}
    if not stage_params(config, runs[run], "acquire").get("live_locate"):
        return None
    return stage_params(config, runs[run], "locate")
