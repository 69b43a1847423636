"""Zarr v3 shards of whole frames, encoded by hand for the movie writer.

A shard file of the ``sharding_indexed`` codec is the encoded chunks one
after another (space between them allowed: see below), then the index (``(offset, nbytes)`` as little-endian uint64
per chunk, ``2**64 - 1`` twice for an absent chunk) and its CRC-32C. Each
chunk is the frame's Blosc bytes followed by their own CRC-32C (the chunk
codecs ``[bytes, blosc, crc32c]``), so zarr verifies every frame it decodes
and a flipped byte is an error rather than wrong pixels. The movie's chunks
are whole frames, so zarr's Morton order of the chunks in a shard is plain
frame order. ``tests/test_io.py`` checks these bytes against the shard zarr
itself writes for the same frames.

Why not through zarr (measured with zarr 3.1.6 on 2048 x 2048 uint16
simulated frames, 8 per shard, 2 cores):

- zarr compresses a shard only once it is whole, through its codec pipeline:
  7.1 ms CPU per frame against 3.2 ms for the same Blosc call on the frame
  as it arrives, and ``Array.__setitem__`` of a whole shard cost 17.7 ms
  CPU per frame against 5.4 ms for this writer (compress and write);
- ``__setitem__`` needs the array's shape to cover the shard first, so the
  shape would be published before the shard is on disk (or zarr's metadata
  objects would have to be bent to hold a shape that is not saved);
- ``LocalStore`` writes through a temporary file and a rename only since
  zarr 3.1.3 (zarr-python PR #3412); the project allows zarr >= 3.0.8.

So frames are compressed as they arrive by the writer's threads with the
Blosc settings of the array's codec, and each shard is written once, whole,
through :func:`~pipeline.io.files.atomic_path`.

Shards bypass the page cache (``O_DIRECT``, :class:`DirectWriter`) where the
file system takes it. The camera's stream is written once and not read back
by this process, and copying it into the page cache was the writer's largest
CPU cost: on 2048 x 2048 uint16 frames (3.7 MB compressed) 3.5 to 5.8 ms a
frame against 0.6 to 0.9 ms for the copy into an aligned buffer and the
direct write (benchmarks/acquire.py reports both paths' CPU).

:class:`FrameEncoder` compresses each frame straight into a reused,
page-aligned buffer (the ``blosc_compress_ctx`` that numcodecs itself calls,
through ctypes), so a shard of large frames goes to disk from those buffers
with no copy at all: each of its chunks then starts on a page boundary, the
unused space the sharding specification allows between chunks ("inner chunks
are written successively in a shard, where unused space between them is
allowed"), under 0.1 % of a 2048 x 2048 frame. Shards of smaller chunks (below
:data:`ALIGNED_CHUNK_MIN`), and every shard written through the page cache,
are packed: the bytes zarr itself writes. Either way each chunk is the same
bytes, and the index says where it lies. The chunks' CRC-32Cs are fastcrc's,
from the buffer (google-crc32c, which zarr reads them with, takes only
``bytes``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import mmap
import os
import threading
import warnings
from pathlib import Path
from typing import Sequence

import fastcrc
import numcodecs
import numpy as np

from .files import atomic_path

_ABSENT = np.uint64(2**64 - 1)
CHECKSUM_BYTES = 4
BLOSC_MAX_OVERHEAD = 16  # c-blosc 1.x: the header; a frame never compresses to more than its bytes plus this
#: Alignment of buffers, offsets and lengths for ``O_DIRECT``: a page, a multiple of any common logical block.
ALIGN = mmap.PAGESIZE
#: Chunks at least this long are written in place, each from a page boundary
#: (padding under 1.6 %); shards with a shorter chunk are packed.
ALIGNED_CHUNK_MIN = 64 * ALIGN


#: The Blosc compressors a store may use (``acquire.codec``).
CODECS = ("lz4", "zstd", "blosclz", "lz4hc", "zlib")
#: ``acquire.shuffle`` -> (numcodecs' constant, the name zarr's ``BloscCodec`` records).
SHUFFLES = {
    "bit": (numcodecs.Blosc.BITSHUFFLE, "bitshuffle"),
    "byte": (numcodecs.Blosc.SHUFFLE, "shuffle"),
    "none": (numcodecs.Blosc.NOSHUFFLE, "noshuffle"),
}


def check_compression(codec: str, shuffle: str, clevel: int) -> tuple[str, str, int]:
    """``(codec, shuffle, clevel)`` checked, with errors naming the key."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {list(CODECS)}, got {codec!r}")
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {list(SHUFFLES)}, got {shuffle!r}")
    if isinstance(clevel, bool) or int(clevel) != clevel or not 0 <= int(clevel) <= 9:
        raise ValueError(f"clevel must be an integer from 0 to 9, got {clevel!r}")
    return codec, shuffle, int(clevel)


def frame_codec(clevel: int, codec: str = "lz4", shuffle: str = "bit") -> numcodecs.Blosc:
    """The Blosc compressor of one frame, as the store's ``BloscCodec`` declares it.

    Must match ``BloscCodec(cname=codec, clevel=clevel, shuffle=SHUFFLES[shuffle][1])``
    in :func:`~pipeline.io.movie.create_movie` (:func:`zarr_codec`); the
    typesize is the frame's (numcodecs takes it from the array it encodes).
    """
    codec, shuffle, clevel = check_compression(codec, shuffle, clevel)
    return numcodecs.Blosc(cname=codec, clevel=clevel, shuffle=SHUFFLES[shuffle][0], blocksize=0)


def zarr_codec(clevel: int, codec: str = "lz4", shuffle: str = "bit"):
    """zarr's declaration of :func:`frame_codec` (typesize: the array's dtype)."""
    from zarr.codecs import BloscCodec

    codec, shuffle, clevel = check_compression(codec, shuffle, clevel)
    return BloscCodec(cname=codec, clevel=clevel, shuffle=SHUFFLES[shuffle][1])


# CRC-32C's check value in the CRC catalogue: a fastcrc that disagreed would
# write chunks zarr refuses (it checks them with google-crc32c)
if fastcrc.crc32.iscsi(b"123456789") != 0xE3069283:
    raise ImportError("fastcrc.crc32.iscsi does not compute CRC-32C: the movie writer cannot checksum frames")


def checksum(data: bytes | memoryview) -> bytes:
    """The CRC-32C of ``data`` (any buffer) as zarr's ``crc32c`` codec appends it (4 bytes, little-endian)."""
    return fastcrc.crc32.iscsi(data).to_bytes(CHECKSUM_BYTES, "little")


def encode_chunk(codec: numcodecs.Blosc, frame: np.ndarray) -> tuple[bytes, bytes]:
    """One frame as a stored chunk: its Blosc bytes and their CRC-32C.

    The two parts stay separate so that the compressed frame (megabytes) is
    never copied to append four bytes; :func:`write_shard` writes them one
    after the other, which is the chunk zarr's codecs ``[bytes, blosc,
    crc32c]`` make.

    Parameters
    ----------
    codec : numcodecs.Blosc
        The store's compressor (:func:`frame_codec`).
    frame : numpy.ndarray
        C-contiguous and little-endian, as the ``bytes`` codec lays it out.
    """
    data = codec.encode(frame)
    return data, checksum(data)


def _round_up(nbytes: int, align: int = ALIGN) -> int:
    return -(-nbytes // align) * align


def _aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 array of ``nbytes`` starting on a page boundary."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes]


class Chunk:
    """One encoded frame as stored: its Blosc bytes, then their CRC-32C.

    Parameters
    ----------
    parts : sequence of bytes-like
        Written one after another, they are the chunk.
    buffer : numpy.ndarray, optional
        A page-aligned uint8 buffer that holds the chunk from its start, its
        length a whole number of pages (:class:`FrameEncoder`): the chunk can
        be written from it in place.
    """

    __slots__ = ("buffer", "nbytes", "parts")

    def __init__(self, parts: Sequence[bytes], buffer: np.ndarray | None = None):
        self.parts = tuple(parts)
        self.nbytes = sum(len(part) for part in self.parts)
        self.buffer = buffer

    def padded(self) -> memoryview:
        """The chunk from its buffer, zero-padded to a whole number of pages."""
        end = _round_up(self.nbytes)
        self.buffer[self.nbytes:end] = 0  # a reused buffer holds the last frame's bytes there
        return memoryview(self.buffer[:end])


@functools.cache
def _blosc_compress_ctx():
    """c-blosc 1.x's ``blosc_compress_ctx`` from the library numcodecs links, or None.

    numcodecs' ``Blosc.encode`` calls this function too (from any thread but
    the main one), but into a new bytes object that it then slices: a copy
    and fresh memory for every frame. None where the symbol is not exported
    or the library is not c-blosc 1 (the encoder then uses numcodecs itself).
    """
    try:
        from numcodecs import blosc

        lib = ctypes.CDLL(blosc.__file__)
        version = lib.blosc_get_version_string
        version.restype = ctypes.c_char_p
        if not version().startswith(b"1."):
            return None
        compress = lib.blosc_compress_ctx
    except (OSError, AttributeError, ImportError):
        return None
    compress.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int,
    ]  # fmt: skip
    compress.restype = ctypes.c_int
    return compress


class FrameEncoder:
    """Encode frames as chunks (:class:`Chunk`) into reused page-aligned buffers.

    Each frame is compressed by c-blosc's ``blosc_compress_ctx`` (one thread,
    what numcodecs does off the main thread, so the bytes are numcodecs') into
    a buffer taken from a pool, and the chunk's CRC-32C is appended there. A
    shard writer gives the buffers back with :meth:`release`. The first frame
    is decoded back by numcodecs and compared; where that fails, or c-blosc
    cannot be reached, frames go through ``codec.encode`` instead (chunks
    without a buffer). Thread-safe.

    Parameters
    ----------
    codec : numcodecs.Blosc
        The store's compressor (:func:`frame_codec`).
    spare : int
        Buffers kept for reuse; more are dropped when given back.
    """

    def __init__(self, codec: numcodecs.Blosc, spare: int = 16):
        self.codec = codec
        self._compress = _blosc_compress_ctx() if codec.shuffle >= 0 else None
        self._cname = codec.cname.encode("ascii")
        self._spare: list[np.ndarray] = []
        self._max_spare = int(spare)
        self._lock = threading.Lock()
        self._checked = False

    @property
    def in_place(self) -> bool:
        """Whether frames are compressed into aligned buffers (else numcodecs' own bytes)."""
        return self._compress is not None

    def encode(self, frame: np.ndarray) -> Chunk:
        """``frame`` (C-contiguous, little-endian) as a stored chunk."""
        nbytes = frame.nbytes
        compress = self._compress  # once: a failed round trip in another thread may clear it
        if compress is None or nbytes + BLOSC_MAX_OVERHEAD > 2**31 - 1:
            return Chunk(encode_chunk(self.codec, frame))
        buffer = self._take(nbytes + BLOSC_MAX_OVERHEAD + CHECKSUM_BYTES)
        typesize = frame.itemsize if frame.itemsize <= 255 else 1  # c-blosc's limit, as numcodecs does
        n = compress(
            self.codec.clevel, self.codec.shuffle, typesize, nbytes, frame.ctypes.data,
            buffer.ctypes.data, nbytes + BLOSC_MAX_OVERHEAD, self._cname, 0, 1,
        )  # fmt: skip
        if n <= 0:
            self.release(Chunk((), buffer))
            raise RuntimeError(f"Blosc compression failed (c-blosc returned {n})")
        data = memoryview(buffer[:n])
        if not self._checked and not self._round_trips(data, frame):
            self.release(Chunk((), buffer))
            return Chunk(encode_chunk(self.codec, frame))
        buffer[n:n + CHECKSUM_BYTES] = np.frombuffer(checksum(data), dtype=np.uint8)
        return Chunk((memoryview(buffer[:n + CHECKSUM_BYTES]),), buffer)

    def _round_trips(self, data: memoryview, frame: np.ndarray) -> bool:
        """Whether numcodecs decodes ``data`` to ``frame``; if not, numcodecs encodes from now on."""
        try:
            ok = np.array_equal(np.frombuffer(self.codec.decode(data), dtype=frame.dtype), frame.reshape(-1))
        except (RuntimeError, ValueError):  # numcodecs' errors for a buffer it cannot read
            ok = False
        with self._lock:
            if ok:
                self._checked = True
            else:
                self._compress = None
                warnings.warn("c-blosc through ctypes did not round-trip a frame: compressing with numcodecs")
        return ok

    def _take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            for i, buffer in enumerate(self._spare):
                if len(buffer) >= nbytes:
                    return self._spare.pop(i)
        return _aligned_empty(_round_up(nbytes))

    def release(self, chunk: Chunk | None) -> None:
        """Give ``chunk``'s buffer back for later frames (its bytes are then gone)."""
        if chunk is None or chunk.buffer is None:
            return
        with self._lock:
            if len(self._spare) < self._max_spare:
                self._spare.append(chunk.buffer)
        chunk.buffer, chunk.parts = None, ()


def chunk_offsets(chunks: Sequence[Chunk | None], align: int = 1) -> list[int | None]:
    """Where each chunk starts in the shard file: one after another, each on a multiple of ``align``."""
    offsets: list[int | None] = []
    end = 0
    for chunk in chunks:
        if chunk is None:
            offsets.append(None)
        else:
            offsets.append(_round_up(end, align))
            end = offsets[-1] + chunk.nbytes
    return offsets


def shard_index(chunks: Sequence[Chunk | None], offsets: Sequence[int | None] | None = None) -> bytes:
    """The index and its CRC-32C for ``chunks`` stored at ``offsets``.

    Parameters
    ----------
    chunks : sequence of Chunk or None
        The encoded chunks of one shard by position; None where absent.
    offsets : sequence of int or None, optional
        Where each starts in the file (:func:`chunk_offsets`); default packed,
        one after another.

    Returns
    -------
    bytes
        What follows the chunks at the end of the shard file.
    """
    if offsets is None:
        offsets = chunk_offsets(chunks)
    index = np.full((len(chunks), 2), _ABSENT, dtype="<u8")
    for pos, (chunk, offset) in enumerate(zip(chunks, offsets)):
        if chunk is not None:
            index[pos] = (offset, chunk.nbytes)
    index_bytes = index.tobytes()
    return index_bytes + checksum(index_bytes)


def index_nbytes(n_chunks: int) -> int:
    """Size of the index at the end of a shard of ``n_chunks`` chunks."""
    return 16 * n_chunks + CHECKSUM_BYTES


def read_index(path: Path, n_chunks: int) -> np.ndarray:
    """The ``(offset, nbytes)`` rows of a shard file's index, verified.

    Parameters
    ----------
    path : Path
        The shard file.
    n_chunks : int
        Chunks per shard (the array's shard shape over its chunk shape).

    Returns
    -------
    numpy.ndarray
        ``(n_chunks, 2)`` uint64; rows of ``2**64 - 1`` are absent chunks.

    Raises
    ------
    ValueError
        The file is shorter than an index, the index's CRC-32C does not
        match, or a chunk lies outside the file.
    """
    size = path.stat().st_size
    n_index = index_nbytes(n_chunks)
    if size < n_index:
        raise ValueError(f"{size} bytes, shorter than the {n_index}-byte shard index")
    with open(path, "rb") as fh:
        fh.seek(size - n_index)
        raw = fh.read(n_index)
    if checksum(raw[:-CHECKSUM_BYTES]) != raw[-CHECKSUM_BYTES:]:
        raise ValueError("the shard index's CRC-32C does not match")
    index = np.frombuffer(raw[:-CHECKSUM_BYTES], dtype="<u8").reshape(n_chunks, 2)
    present = ~absent(index)
    ends = index[present, 0] + index[present, 1]
    if ends.size and int(ends.max()) > size - n_index:
        raise ValueError("a chunk of the shard index lies past the chunk data")
    return index


def absent(index: np.ndarray) -> np.ndarray:
    """Which rows of a shard index (:func:`read_index`) are absent chunks."""
    return (index[:, 0] == _ABSENT) & (index[:, 1] == _ABSENT)


def write_shard(path: Path, chunks: Sequence[Chunk | None], direct: DirectWriter | None = None) -> int:
    """Write one shard file, whole and atomically.

    Parameters
    ----------
    path : Path
        The shard's key under the array (``0/c/<shard>/0/0``); parents are made.
    chunks : sequence of Chunk or None
        The encoded chunks by position (:class:`FrameEncoder`); None where absent.
    direct : DirectWriter, optional
        Write through it, bypassing the page cache where the file system
        allows; None writes through the page cache. Where every chunk sits
        in its own aligned buffer and is at least :data:`ALIGNED_CHUNK_MIN`
        long, the chunks go to disk from those buffers, each from a page
        boundary; else they are packed.

    Returns
    -------
    int
        Bytes of chunk data written (without the index and any padding).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    present = [chunk for chunk in chunks if chunk is not None]
    in_place = (
        direct is not None
        and direct.enabled
        and bool(present)
        and all(chunk.buffer is not None and chunk.nbytes >= ALIGNED_CHUNK_MIN for chunk in present)
    )
    if in_place:
        aligned = [chunk.padded() for chunk in present]
        packed = [shard_index(chunks, chunk_offsets(chunks, ALIGN))]
    else:
        aligned, packed = [], [part for chunk in present for part in chunk.parts] + [shard_index(chunks)]
    with atomic_path(path) as tmp:
        if direct is None or not direct.write(tmp, packed, aligned=aligned):
            with open(tmp, "wb") as fh:
                for part in (*aligned, *packed):
                    fh.write(part)
    return sum(chunk.nbytes for chunk in present)


class DirectWriter:
    """Write whole files with ``O_DIRECT`` from page-aligned buffers.

    ``O_DIRECT`` needs the buffer, the file offset and the length aligned to
    the device's logical block: aligned buffers (the encoder's) are written
    where they lie, the other parts are copied into one reused staging
    buffer, the last block padded with zeros, and the file truncated to its
    length after.
    Where the file system refuses it (tmpfs before Linux 6.6, some network
    file systems, a platform without ``O_DIRECT``) :meth:`write` returns
    False, and every later call too: the caller writes through the page
    cache instead. One writer is used by one thread at a time.

    Parameters
    ----------
    enabled : bool
        False never writes directly (``acquire.direct_io: false``).
    """

    ALIGN = ALIGN

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled) and hasattr(os, "O_DIRECT")
        self.files_direct = 0  # files written with O_DIRECT
        self.files_buffered = 0  # files written through the page cache, after a refusal
        self.refused: str | None = None  # why O_DIRECT was given up
        self._buffer: np.ndarray | None = None

    @property
    def mode(self) -> str:
        """``direct``, ``buffered`` or ``mixed``: how the files so far were written."""
        if self.files_direct and not self.files_buffered:
            return "direct"
        return "mixed" if self.files_direct else "buffered"

    def _staging(self, nbytes: int) -> np.ndarray:
        """The buffer, at least ``nbytes`` long (a multiple of :attr:`ALIGN`)."""
        if self._buffer is None or len(self._buffer) < nbytes:
            # grown by a quarter at least, so that slowly growing shards do not reallocate each time;
            # reused otherwise: its pages stay in place from shard to shard
            size = max(nbytes, len(self._buffer) * 5 // 4 if self._buffer is not None else 0)
            self._buffer = _aligned_empty(_round_up(size))
        return self._buffer

    def _refuse(self, why: str) -> bool:
        self.enabled, self.refused = False, why
        self.files_buffered += 1
        return False

    def write(self, path: Path, parts: Sequence[bytes], aligned: Sequence[memoryview] = ()) -> bool:
        """Write ``aligned`` then ``parts``, one after another, as the file ``path``.

        Parameters
        ----------
        path : Path
        parts : sequence of bytes-like
            Copied into the staging buffer and written after ``aligned``.
        aligned : sequence of memoryview
            Written from where they lie (no copy): each must start on a
            page boundary and be a whole number of pages long.

        Returns
        -------
        bool
            True when written; False when ``O_DIRECT`` is off or refused
            (nothing was written and the caller writes the file itself).
        """
        if not self.enabled:
            self.files_buffered += 1
            return False
        total = sum(len(part) for part in parts)
        padded = _round_up(total)
        with memoryview(self._staging(max(padded, self.ALIGN))) as staging:
            offset = 0
            for part in parts:
                staging[offset:offset + len(part)] = part
                offset += len(part)
            staging[total:padded] = bytes(padded - total)
            segments = [*aligned, staging[:padded]] if padded else list(aligned)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                return self._refuse(f"{path.parent}: the file system refuses O_DIRECT ({exc.strerror})")
            try:
                if not self._write_segments(fd, path, segments):
                    return False
                os.ftruncate(fd, sum(len(segment) for segment in aligned) + total)
            finally:
                os.close(fd)
        self.files_direct += 1
        return True

    def _write_segments(self, fd: int, path: Path, segments: list[memoryview]) -> bool:
        """All of ``segments`` to ``fd`` (``writev``); False if the first write is refused."""
        written = 0
        while segments:
            try:
                n = os.writev(fd, segments) if len(segments) > 1 else os.write(fd, segments[0])
            except OSError as exc:
                if exc.errno != errno.EINVAL or written:
                    raise
                # opened, but the alignment is not the device's: the caller writes this file
                self._refuse(f"{path.parent}: O_DIRECT write refused ({exc.strerror})")
                return False
            if n <= 0:
                raise OSError(errno.EIO, f"{path}: write returned {n}")
            written += n
            while segments and n >= len(segments[0]):
                n -= len(segments.pop(0))
            if n:
                segments[0] = segments[0][n:]
            if written % self.ALIGN and segments:
                # a short write leaves the offset unaligned: the rest through the page cache
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        return True

    def close(self) -> None:
        self._buffer = None
