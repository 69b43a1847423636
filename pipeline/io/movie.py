"""The movie store: OME-Zarr (NGFF 0.5, Zarr v3) images of one run.

Layout of ``movie.ome.zarr`` (and of the label stores, which share it)::

    movie.ome.zarr/
      zarr.json           group; attributes "ome" (multiscales, axes, scale)
                          and "trackflow" (acquisition metadata)
      0/                  the image: (t, y, x) or (t, z, y, x); one frame per
                          chunk, shards of ``frames_per_shard`` frames along t,
                          Blosc (``acquire.codec``, ``shuffle``, ``clevel``;
                          by default LZ4, bit-shuffle, level 5)
      timestamps/         float64 per frame (NaN where a frame never arrived)

Frame ``i`` of the array is sequence number ``first_seq + i``: a frame that
never arrived is left unwritten (it reads as zeros) and is listed in
``dropped``, so the time axis stays physical and downstream stages can skip it.

The writer assembles whole shards itself (:mod:`pipeline.io._shards` says
why not through zarr): frames are compressed by a thread pool as they
arrive, and a write-behind thread writes each shard once, when it is full,
through a temporary file and an atomic rename. Array shape and metadata are
updated after every shard by atomic JSON replacement, so a writer killed at
any moment leaves a store that opens and holds every shard written so far,
with ``complete: false``. Later edits of the attributes go through
:func:`update_attributes`, atomic too.

A shard that cannot be written (a full disk, a permission, an I/O error)
stops the writer: no later shard is written, and the store is closed with the
shape ending after the last shard that reached disk, ``complete: false`` and
``write_error`` saying why. The frames received after that point are not in
the store at all (they are not listed as dropped: they arrived, and the time
axis simply ends earlier), so every frame within the shape is either on disk
or listed in ``dropped``.

The compression is zarr's codec metadata (``0/zarr.json``), and
``trackflow.compression`` says the same in trackflow's words (``codec``,
``shuffle``, ``clevel``, ``typesize``); a reader needs neither: every Blosc
frame carries its own settings, so stores written with any of them read
alike.

Every chunk carries a CRC-32C that zarr verifies when it decodes it; a frame
whose bytes changed, or one the store claims (not in ``dropped``) whose shard
file is gone, is a :class:`MovieError` naming the frame and the file when read.
:func:`pipeline.io.check.check_movie` verifies a whole store.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .. import __version__
from . import _shards
from .files import atomic_write
from .schema import section_defaults
from .tables import jsonable

__all__ = [
    "MovieError",
    "Movie",
    "MovieWriter",
    "create_movie",
    "open_movie",
    "write_movie",
    "update_attributes",
    "compression_settings",
    "shards_for",
    "IMAGE_PATH",
    "DEFAULT_COMPRESSION",
]

IMAGE_PATH = "0"
TIMESTAMPS_PATH = "timestamps"
NGFF_VERSION = "0.5"
DEFAULT_SHARD_BYTES = 64 * 2**20
DEFAULT_BUFFER_BYTES = 1024 * 2**20
#: The store's compression by default: the ``acquire`` schema's ``codec``, ``shuffle`` and ``clevel``.
DEFAULT_COMPRESSION = {key: section_defaults("acquire")[key] for key in ("codec", "shuffle", "clevel")}


class MovieError(ValueError):
    """A movie store is missing, corrupt, or not what a stage needs."""


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    atomic_write(path, json.dumps(obj, indent=2, allow_nan=False))


def _read_json(path: Path) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as exc:
        raise MovieError(f"{path}: unreadable Zarr metadata ({exc})") from exc


def update_attributes(store: str | os.PathLike, updates: Mapping[str, Mapping[str, Any]]) -> None:
    """Merge keys into namespaces of a store's root attributes, atomically.

    The one way attributes of an existing store are edited (the writer's
    metadata, ``trackflow.stream``, ``ome.image-label``). The root
    ``zarr.json`` is replaced whole through a rename, which zarr's own
    attribute writes do only since zarr 3.1.3.

    Parameters
    ----------
    store : path-like
        The store directory.
    updates : mapping
        ``{namespace: {key: value}}``, e.g. ``{"trackflow": {"stream": stats}}``;
        each namespace is created if missing and updated key by key. Values
        are made plain JSON (:func:`~pipeline.io.tables.jsonable`).
    """
    path = Path(store) / "zarr.json"
    root = _read_json(path)
    attributes = root.setdefault("attributes", {})
    for namespace, values in jsonable(updates).items():
        attributes.setdefault(namespace, {}).update(values)
    _write_json(path, root)


def _axes_for(ndim_spatial: int) -> tuple[str, ...]:
    if ndim_spatial == 2:
        return ("t", "y", "x")
    if ndim_spatial == 3:
        return ("t", "z", "y", "x")
    raise MovieError(f"frames must be 2D (y, x) or 3D (z, y, x), got {ndim_spatial} dimensions")


def shards_for(frame_bytes: int, frames_per_shard: int | None) -> int:
    """Frames per shard: as given, or about 64 MiB of raw frames (1 to 1024)."""
    if frames_per_shard is None:
        frames_per_shard = max(1, min(1024, DEFAULT_SHARD_BYTES // max(frame_bytes, 1)))
    if int(frames_per_shard) < 1:
        raise MovieError(f"frames_per_shard must be >= 1, got {frames_per_shard}")
    return int(frames_per_shard)


def _ome_attributes(name: str, axes: Sequence[str], scale: Sequence[float]) -> dict:
    axis_meta = []
    for ax in axes:
        if ax == "t":
            axis_meta.append({"name": "t", "type": "time", "unit": "second"})
        else:
            axis_meta.append({"name": ax, "type": "space", "unit": "micrometer"})
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": axis_meta,
                "datasets": [
                    {
                        "path": IMAGE_PATH,
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [float(s) for s in scale]}
                        ],
                    }
                ],
            }
        ],
    }



class MovieWriter:
    """Write frames into a new movie store, shard by shard.

    Use :func:`create_movie` to make one. Frames arrive with their index along
    t (non-decreasing gaps allowed: a skipped index is a dropped frame).
    ``write`` returns as soon as the frame is queued for compression; it blocks
    only when more than ``buffer_bytes`` of frames are still waiting for disk
    (back-pressure rather than loss).

    Closing with ``complete=True`` marks a clean end; leaving through an
    exception, or ``close(complete=False)``, writes what was received and
    leaves ``complete: false``.
    """

    def __init__(
        self,
        path: Path,
        frame_shape: tuple[int, ...],
        dtype: np.dtype,
        frames_per_shard: int,
        *,
        clevel: int | None = None,
        codec: str | None = None,
        shuffle: str | None = None,
        compression_threads: int | None = None,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        first_seq: int = 0,
        direct_io: bool = True,
    ):
        self.path = Path(path)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        self.frames_per_shard = int(frames_per_shard)
        self.first_seq = int(first_seq)
        self._frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.compression = compression_settings(clevel=clevel, codec=codec, shuffle=shuffle)
        self._codec = _shards.frame_codec(
            self.compression["clevel"], self.compression["codec"], self.compression["shuffle"]
        )
        threads = compression_threads or os.cpu_count() or 2
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="trackflow-compress")
        # reusable buffers: the frames of two shards in flight, and one per compression thread
        self._encoder = _shards.FrameEncoder(self._codec, spare=2 * self.frames_per_shard + threads)
        max_frames = max(2 * self.frames_per_shard, buffer_bytes // max(self._frame_bytes, 1))
        self._slots = threading.Semaphore(max_frames)
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._shard_id = -1
        self._pending: list[tuple[int, Future]] = []
        self._pending_ts: dict[int, float] = {}
        self._last_index = -1
        self._n_written = 0  # frames on disk
        self._written_mask: list[bool] = []  # per index on disk (or in flight)
        self._on_disk_until = 0  # shape published in metadata
        self._extra_attrs: dict[str, Any] = {}
        self._closed = False
        self._t0 = time.perf_counter()
        self.bytes_compressed = 0
        self.seconds_compressing = 0.0
        self.seconds_writing = 0.0
        # used by the shard-writer thread alone
        self._direct = _shards.DirectWriter(direct_io)
        self._writer = threading.Thread(
            target=self._write_loop, name="trackflow-shard-writer", daemon=True
        )
        self._writer.start()

    # -- public ---------------------------------------------------------
    @property
    def frames_received(self) -> int:
        return sum(self._written_mask)

    @property
    def frames_written(self) -> int:
        """Frames durably on disk (their shard has been written)."""
        return self._n_written

    @property
    def io_mode(self) -> str:
        """How the shards so far reached disk: ``direct`` (past the page
        cache), ``buffered`` or ``mixed`` (the file system refused ``O_DIRECT``
        part-way; :attr:`direct_io_refused` says why)."""
        return self._direct.mode

    @property
    def direct_io_refused(self) -> str | None:
        return self._direct.refused

    def write(self, index: int, frame: Any, timestamp: float = float("nan")) -> None:
        """Queue one frame at position ``index`` along t.

        ``frame`` is an array (or buffer) of the store's frame shape and dtype;
        it is read by a compression thread, so it must not be modified after
        the call (a ZeroMQ frame buffer is fine: it is immutable).
        """
        self._raise_if_failed()
        if self._closed:
            raise MovieError(f"{self.path}: write after close")
        index = int(index)
        if index <= self._last_index:
            raise ValueError(
                f"{self.path}: frame index {index} is not after the last one ({self._last_index})"
            )
        arr = np.asarray(frame)
        if arr.shape != self.frame_shape or arr.dtype != self.dtype:
            raise ValueError(
                f"{self.path}: frame {index} has shape {arr.shape} and dtype {arr.dtype}, "
                f"the store holds {self.frame_shape} {self.dtype}"
            )
        shard_id = index // self.frames_per_shard
        if shard_id != self._shard_id:
            self._submit_shard()
            self._shard_id = shard_id
        self._slots.acquire()
        self._pending.append((index % self.frames_per_shard, self._pool.submit(self._encode, arr)))
        self._pending_ts[index] = float(timestamp)
        self._written_mask.extend([False] * (index - len(self._written_mask)))
        self._written_mask.append(True)
        self._last_index = index

    def set_attributes(self, **attrs: Any) -> None:
        """Add or update keys of the ``trackflow`` metadata (written with the next shard)."""
        with self._lock:
            self._extra_attrs.update(jsonable(attrs))

    def close(self, complete: bool = True, n_frames: int | None = None) -> None:
        """Write what is buffered, publish the final shape and metadata.

        ``n_frames`` extends the movie to that length when the source said how
        many frames it sent: trailing frames that never arrived become dropped.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._submit_shard()
            self._queue.put(None)
            self._writer.join()
        finally:
            self._pool.shutdown(wait=True)
        if self._error is None:
            total = max(len(self._written_mask), int(n_frames or 0))
            self._written_mask.extend([False] * (total - len(self._written_mask)))
        else:
            # the shape ends with the last shard on disk: frames queued after a
            # failed write would otherwise read as real (zero) frames
            total = self._on_disk_until
            self._extra_attrs["write_error"] = f"{type(self._error).__name__}: {self._error}"
        self._publish(total, complete=bool(complete) and self._error is None)
        self._raise_if_failed()

    def __enter__(self) -> "MovieWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)

    # -- internals ------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise MovieError(f"{self.path}: writing failed: {self._error}") from self._error

    def _encode(self, arr: np.ndarray) -> _shards.Chunk:
        t = time.perf_counter()
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        out = self._encoder.encode(np.ascontiguousarray(arr))
        self.seconds_compressing += time.perf_counter() - t
        return out

    def _submit_shard(self) -> None:
        if not self._pending:
            return
        shard_ts = self._pending_ts
        self._queue.put((self._shard_id, self._pending, shard_ts))
        self._pending, self._pending_ts = [], {}

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._direct.close()
                return
            shard_id, entries, timestamps = item
            try:
                if self._error is None:
                    self._write_shard(shard_id, entries, timestamps)
            except BaseException as exc:  # surfaced to the producer on its next call
                self._error = exc
            finally:
                for _ in entries:
                    self._slots.release()

    def _write_shard(self, shard_id: int, entries, timestamps: dict[int, float]) -> None:
        S = self.frames_per_shard
        chunks: list[_shards.Chunk | None] = [None] * S
        try:
            for pos, fut in entries:
                chunks[pos] = fut.result()
            t = time.perf_counter()
            key = [str(shard_id)] + ["0"] * len(self.frame_shape)
            n_bytes = _shards.write_shard(self.path.joinpath(IMAGE_PATH, "c", *key), chunks, direct=self._direct)
        finally:
            for chunk in chunks:
                self._encoder.release(chunk)
        # timestamps: one uncompressed chunk per shard, NaN where absent
        ts = np.full(S, np.nan, dtype="<f8")
        for i, value in timestamps.items():
            ts[i - shard_id * S] = value
        ts_path = self.path.joinpath(TIMESTAMPS_PATH, "c", str(shard_id))
        ts_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(ts_path, ts.tobytes())
        self.seconds_writing += time.perf_counter() - t
        self.bytes_compressed += n_bytes
        # count the shard as written only once its metadata is published too
        self._publish(max(timestamps) + 1, complete=False, n_written=self._n_written + len(entries))
        self._n_written += len(entries)

    def _publish(self, n_frames: int, complete: bool, n_written: int | None = None) -> None:
        """Atomically publish shape and metadata for the first ``n_frames``."""
        from .provenance import environment_lock_sha256  # not with the package: see tables.write_table
        n_written = self._n_written if n_written is None else n_written
        with self._lock:
            n_frames = max(n_frames, self._on_disk_until)
            for sub, shape in (
                (IMAGE_PATH, [n_frames, *self.frame_shape]),
                (TIMESTAMPS_PATH, [n_frames]),
            ):
                meta_path = self.path / sub / "zarr.json"
                meta = _read_json(meta_path)
                meta["shape"] = shape
                _write_json(meta_path, meta)
            # only a shape that reached disk counts (close after a failure publishes it again)
            self._on_disk_until = n_frames
            mask = self._written_mask[:n_frames]
            dropped = [self.first_seq + i for i, ok in enumerate(mask) if not ok]
            attrs = {
                **self._extra_attrs,
                "frames_written": int(n_written),
                "dropped": dropped,
                "complete": bool(complete),
                "first_seq": self.first_seq,
                "frames_per_shard": self.frames_per_shard,
                "trackflow_version": __version__,
                "environment_lock_sha256": environment_lock_sha256(),
            }
            update_attributes(self.path, {"trackflow": attrs})


def create_movie(
    path: str | os.PathLike,
    frame_shape: Sequence[int],
    dtype: Any,
    *,
    pixel_size_um: float | Sequence[float] = 1.0,
    frame_interval_s: float = 1.0,
    metadata: Mapping[str, Any] | None = None,
    frames_per_shard: int | None = None,
    clevel: int | None = None,
    codec: str | None = None,
    shuffle: str | None = None,
    compression_threads: int | None = None,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    first_seq: int = 0,
    overwrite: bool = False,
    name: str | None = None,
    direct_io: bool = True,
) -> MovieWriter:
    """Create an empty movie store and return its :class:`MovieWriter`.

    Parameters
    ----------
    path : path-like
        The store directory (``*.ome.zarr``). An existing path is an error
        unless ``overwrite`` is true: nothing already written is replaced by
        accident.
    frame_shape : (y, x) or (z, y, x)
        Shape of one frame, in pixels.
    dtype : numpy dtype
        Pixel type (uint8/uint16 from cameras, int32 for label stores).
    pixel_size_um : float or sequence
        Physical pixel size in µm, one value or one per spatial axis.
    frame_interval_s : float
        Time between frames, in seconds (the t scale).
    metadata : mapping
        Initial ``trackflow`` attributes (source, exposure_s, temperature_K, ...).
    frames_per_shard : int, optional
        Frames per shard file; by default about 64 MiB of raw frames.
    clevel, codec, shuffle : optional
        The Blosc compression of every frame (``acquire.clevel``,
        ``acquire.codec``, ``acquire.shuffle``; None: the schema's default).
        Recorded in zarr's codec metadata and as ``trackflow.compression``.
    compression_threads : int, optional
        Threads compressing frames (default: the cores).
    direct_io : bool
        Write shard files past the page cache (``O_DIRECT``) where the file
        system allows it, through it elsewhere (``acquire.direct_io``); the
        chunks are the same bytes either way, but past the page cache large
        ones start on page boundaries (:mod:`pipeline.io._shards`).
    """
    path = Path(path)
    compression = compression_settings(clevel=clevel, codec=codec, shuffle=shuffle, dtype=dtype)
    frame_shape = tuple(int(s) for s in frame_shape)
    if any(s < 1 for s in frame_shape):
        raise MovieError(f"{path}: frame shape {frame_shape} has an empty axis")
    dtype = np.dtype(dtype)
    axes = _axes_for(len(frame_shape))
    pixel = np.broadcast_to(np.asarray(pixel_size_um, dtype=float), (len(frame_shape),))
    if np.any(pixel <= 0) or not np.isfinite(frame_interval_s) or frame_interval_s <= 0:
        raise MovieError(
            f"{path}: pixel_size_um {pixel.tolist()} and frame_interval_s {frame_interval_s} must be positive"
        )
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    frames_per_shard = shards_for(int(np.prod(frame_shape)) * dtype.itemsize, frames_per_shard)

    import zarr
    from zarr.codecs import Crc32cCodec

    scale = [float(frame_interval_s), *pixel.tolist()]
    attrs = {
        "pixel_size_um": pixel.tolist(),
        "frame_interval_s": float(frame_interval_s),
        "complete": False,
        "frames_written": 0,
        "dropped": [],
        **jsonable(dict(metadata or {})),
        "compression": compression,
        # this store, and no other (a store written again gets a new one): what
        # results derived from it while it was being written name it by
        "store_id": uuid.uuid4().hex,
    }
    root = zarr.open_group(
        str(path),
        mode="w",
        zarr_format=3,
        attributes={
            "ome": _ome_attributes(name or path.name.split(".")[0], axes, scale),
            "trackflow": attrs,
        },
    )
    # the image's codecs must match _shards.encode_chunk, which encodes the
    # frames: Blosc as _shards.frame_codec, then a CRC-32C of each chunk that
    # zarr verifies on every read
    root.create_array(
        IMAGE_PATH,
        shape=(0, *frame_shape),
        chunks=(1, *frame_shape),
        shards=(frames_per_shard, *frame_shape),
        dtype=dtype,
        compressors=[
            _shards.zarr_codec(compression["clevel"], compression["codec"], compression["shuffle"]),
            Crc32cCodec(),
        ],
        fill_value=0,
        dimension_names=list(axes),
    )
    root.create_array(
        TIMESTAMPS_PATH,
        shape=(0,),
        chunks=(frames_per_shard,),
        dtype="float64",
        compressors=None,
        fill_value=float("nan"),
        dimension_names=["t"],
    )
    return MovieWriter(
        path,
        frame_shape,
        dtype,
        frames_per_shard,
        clevel=compression["clevel"],
        codec=compression["codec"],
        shuffle=compression["shuffle"],
        compression_threads=compression_threads,
        buffer_bytes=buffer_bytes,
        first_seq=first_seq,
        direct_io=direct_io,
    )


def compression_settings(
    *, clevel: int | None = None, codec: str | None = None, shuffle: str | None = None, dtype: Any = None
) -> dict[str, Any]:
    """A store's compression as ``trackflow.compression`` records it.

    Parameters
    ----------
    clevel, codec, shuffle : optional
        As the ``acquire`` keys; None takes the schema's default
        (:data:`DEFAULT_COMPRESSION`). Checked here, errors naming the key.
    dtype : numpy dtype, optional
        The pixels' type: its size is Blosc's ``typesize`` (recorded when given).

    Returns
    -------
    dict
        ``compressor`` ("blosc"), ``codec``, ``shuffle``, ``clevel``,
        ``typesize`` (with ``dtype``) and ``checksum`` ("crc32c").
    """
    given = {"codec": codec, "shuffle": shuffle, "clevel": clevel}
    chosen = {key: DEFAULT_COMPRESSION[key] if value is None else value for key, value in given.items()}
    codec, shuffle, clevel = _shards.check_compression(chosen["codec"], chosen["shuffle"], chosen["clevel"])
    out: dict[str, Any] = {"compressor": "blosc", "codec": codec, "shuffle": shuffle, "clevel": clevel}
    if dtype is not None:
        out["typesize"] = int(np.dtype(dtype).itemsize)
    out["checksum"] = "crc32c"
    return out


def write_movie(
    path: str | os.PathLike,
    frames: np.ndarray | Iterator[np.ndarray],
    *,
    timestamps: Sequence[float] | None = None,
    **kwargs: Any,
) -> "Movie":
    """Write a whole movie (an array ``(t, ...)`` or an iterable of frames).

    Keyword arguments are those of :func:`create_movie`. Returns the opened
    :class:`Movie`. An empty movie is an error.
    """
    iterator = iter(frames)
    try:
        first = np.asarray(next(iterator))
    except StopIteration:
        raise MovieError(f"{path}: the movie has no frames") from None
    writer = create_movie(path, first.shape, first.dtype, **kwargs)
    with writer:
        for i, frame in enumerate(_chain(first, iterator)):
            ts = float(timestamps[i]) if timestamps is not None else float("nan")
            writer.write(i, frame, ts)
        writer.set_attributes(frames_expected=writer.frames_received)
    return open_movie(path)


def _chain(first, rest):
    yield first
    yield from rest


class Movie:
    """A movie store opened for reading.

    Attributes
    ----------
    path : Path
    array : zarr.Array
        The image, ``(t, y, x)`` or ``(t, z, y, x)``.
    axes : tuple of str
    scale : tuple of float
        Per axis: seconds for t, µm for space.
    units : tuple of str or None
        Per axis, the OME-Zarr unit (``second``, ``micrometer``); None where
        the store names none.
    attrs : dict
        The ``trackflow`` acquisition metadata.
    """

    def __init__(self, path: str | os.PathLike):
        import zarr

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"movie store {self.path} does not exist")
        try:
            root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:
            raise MovieError(f"{self.path} is not a Zarr store: {exc}") from exc
        ome = root.attrs.get("ome")
        try:
            ms = ome["multiscales"][0]
            axes = tuple(a["name"] for a in ms["axes"])
            units = tuple(a.get("unit") for a in ms["axes"])
            dataset = ms["datasets"][0]
            scale = next(
                c["scale"] for c in dataset["coordinateTransformations"] if c["type"] == "scale"
            )
            image_path = dataset["path"]
        except (TypeError, KeyError, IndexError, StopIteration) as exc:
            raise MovieError(
                f"{self.path} is not an OME-Zarr image: no usable 'ome.multiscales' metadata"
            ) from exc
        try:
            self.array = root[image_path]
        except KeyError:
            raise MovieError(f"{self.path}: the image array '{image_path}' is missing") from None
        if axes not in (("t", "y", "x"), ("t", "z", "y", "x")) or len(axes) != self.array.ndim:
            raise MovieError(
                f"{self.path}: axes {axes} do not match array of shape {self.array.shape}; "
                "expected (t, y, x) or (t, z, y, x)"
            )
        self.axes = axes
        self.units = units
        self.scale = tuple(float(s) for s in scale)
        self.attrs: dict = dict(root.attrs.get("trackflow", {}))
        self._root = root

    # shape and units ----------------------------------------------------
    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def n_frames(self) -> int:
        return len(self)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def ndim(self) -> int:
        """Spatial dimensions: 2 or 3."""
        return len(self.axes) - 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def pixel_size_um(self) -> tuple[float, ...]:
        """Pixel size per spatial axis (z, y, x or y, x), in µm."""
        return self.scale[1:]

    @property
    def frame_interval_s(self) -> float:
        return self.scale[0]

    @property
    def frames_per_shard(self) -> int:
        return int(self.array.shards[0]) if self.array.shards else int(self.array.chunks[0])

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def dropped_frames(self) -> np.ndarray:
        """Frame indices (not sequence numbers) that never arrived."""
        first = int(self.attrs.get("first_seq", 0))
        return np.asarray(self.attrs.get("dropped", []), dtype=np.int64) - first

    @cached_property
    def _dropped(self) -> frozenset:
        # a set: membership is asked once per frame read
        return frozenset(self.dropped_frames.tolist())

    def metadata(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        """One acquisition metadata value; ``required`` raises naming the key."""
        if key in self.attrs and self.attrs[key] is not None:
            return self.attrs[key]
        if required:
            raise MovieError(f"{self.path}: acquisition metadata key 'trackflow.{key}' is missing")
        return default

    def timestamps(self) -> np.ndarray:
        try:
            return np.asarray(self._root[TIMESTAMPS_PATH][:], dtype=float)
        except KeyError:
            return np.full(len(self), np.nan)

    # frames ---------------------------------------------------------------
    def shard_file(self, shard: int) -> Path:
        """The file of shard ``shard`` (frames ``shard * frames_per_shard`` on)."""
        key = self.array.metadata.encode_chunk_key((int(shard),) + (0,) * self.ndim)
        return self.path / self.array.path / key

    def _shard_files(self, start: int, stop: int) -> Iterator[tuple[int, Path, range]]:
        """Per shard touched by frames ``start..stop-1``: its number, file and those frames."""
        S = self.frames_per_shard
        for shard in range(start // S, (stop - 1) // S + 1):
            yield shard, self.shard_file(shard), range(max(start, shard * S), min(stop, (shard + 1) * S))

    def _check_present(self, start: int, stop: int) -> None:
        """Raise if a frame the store claims (not dropped) has no data on disk.

        zarr reads a missing shard file, or a chunk its index lists as
        absent, as fill values: a deleted shard would pass for zero frames.
        Only stores of the trackflow writer (``frames_written`` in the
        metadata) are held to this: the writer stores every frame it
        received, whereas zarr itself leaves all-zero chunks out.
        """
        if "frames_written" not in self.attrs:
            return
        for shard, path, frames in self._shard_files(start, stop):
            claimed = [i for i in frames if i not in self._dropped]
            if not claimed:
                continue
            if not path.is_file():
                raise self._unreadable(
                    claimed[0], start, stop,
                    f"its shard file is missing, and frames {claimed[0]}..{claimed[-1]} are not listed as dropped",
                )
            try:
                index = _shards.read_index(path, self.frames_per_shard)
            except (OSError, ValueError) as exc:
                raise self._unreadable(claimed[0], start, stop, str(exc)) from exc
            absent = _shards.absent(index)
            missing = [i for i in claimed if absent[i - shard * self.frames_per_shard]]
            if missing:
                raise self._unreadable(
                    missing[0], start, stop, "the shard's index has no data for it, and it is not listed as dropped"
                )

    def _unreadable(self, index: int, start: int, stop: int, reason: str) -> MovieError:
        file = self.shard_file(index // self.frames_per_shard)
        return MovieError(
            f"{self.path}: frame {index} cannot be read ({file}; frames {start}..{stop - 1} requested): {reason}"
        )

    def _read(self, start: int, stop: int) -> np.ndarray:
        self._check_present(start, stop)
        return np.asarray(self.array[start:stop])

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start`` to ``stop`` (exclusive) as one array.

        Raises
        ------
        MovieError
            A frame cannot be read: the message names the first such frame
            and its shard file, and says when its data fail their CRC-32C
            (the store's bytes were changed after they were written). A frame
            that is neither listed as dropped nor on disk is such an error,
            not zeros.
        """
        stop = len(self) if stop is None else min(int(stop), len(self))
        if stop <= start:
            return np.asarray(self.array[start:stop])
        try:
            return self._read(start, stop)
        except MovieError:
            raise
        except Exception as exc:
            index, cause = start, exc
            for i in range(start, stop):
                try:
                    self._read(i, i + 1)
                except Exception as frame_exc:  # narrowed down to the first bad frame
                    index, cause = i, frame_exc
                    break
            raise self._unreadable(index, start, stop, _read_failure(cause)) from cause

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.path}: frame {index} out of range (0..{len(self) - 1})")
        index %= len(self)
        return self.frames(index, index + 1)[0]

    def chunk_bounds(self, frames_per_chunk: int | None = None) -> list[tuple[int, int]]:
        """Frame ranges ``[(start, stop), ...]`` covering the movie, aligned to shards."""
        step = int(frames_per_chunk or self.frames_per_shard)
        return [(s, min(s + step, len(self))) for s in range(0, len(self), step)]

    def __repr__(self) -> str:
        return (
            f"Movie({str(self.path)!r}, frames={len(self)}, frame_shape={self.frame_shape}, "
            f"dtype={self.dtype}, scale={self.scale})"
        )


def _read_failure(exc: BaseException) -> str:
    """What a zarr/numcodecs read error means, in words."""
    if "checksum" in str(exc).lower():
        return f"corrupt data, its CRC-32C does not match ({exc})"
    return str(exc) or type(exc).__name__


def open_movie(path: str | os.PathLike) -> Movie:
    """Open a movie store for reading, validating its OME-Zarr metadata."""
    return Movie(path)
