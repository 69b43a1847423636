"""Zarr v3 shards of whole frames, encoded by hand for the movie writer.

A shard file of the ``sharding_indexed`` codec is the encoded chunks one
after another, then the index (``(offset, nbytes)`` as little-endian uint64
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
direct write (benchmarks/acquire.py reports both paths' CPU). The bytes on
disk are the same either way.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path
from typing import Sequence

import google_crc32c
import numcodecs
import numpy as np

from .files import atomic_path

_ABSENT = np.uint64(2**64 - 1)
CHECKSUM_BYTES = 4


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


def checksum(data: bytes) -> bytes:
    """The CRC-32C of ``data`` as zarr's ``crc32c`` codec appends it (4 bytes, little-endian)."""
    return google_crc32c.value(data).to_bytes(CHECKSUM_BYTES, "little")


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


def shard_index(chunks: Sequence[Sequence[bytes] | None]) -> bytes:
    """The index and its CRC-32C for ``chunks`` stored in that order.

    Parameters
    ----------
    chunks : sequence of (sequence of bytes) or None
        The encoded chunks of one shard by position, each as the parts
        written one after another (:func:`encode_chunk`); None where absent.

    Returns
    -------
    bytes
        What follows the chunks at the end of the shard file.
    """
    index = np.full((len(chunks), 2), _ABSENT, dtype="<u8")
    offset = 0
    for pos, parts in enumerate(chunks):
        if parts is not None:
            nbytes = sum(len(part) for part in parts)
            index[pos] = (offset, nbytes)
            offset += nbytes
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


def write_shard(path: Path, chunks: Sequence[Sequence[bytes] | None], direct: DirectWriter | None = None) -> int:
    """Write one shard file, whole and atomically.

    Parameters
    ----------
    path : Path
        The shard's key under the array (``0/c/<shard>/0/0``); parents are made.
    chunks : sequence of (sequence of bytes) or None
        The encoded chunks by position, each as its parts
        (:func:`encode_chunk`); None where absent.
    direct : DirectWriter, optional
        Write through it, bypassing the page cache where the file system
        allows; None writes through the page cache.

    Returns
    -------
    int
        Bytes of chunk data written (without the index).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [part for chunk in chunks if chunk is not None for part in chunk]
    parts.append(shard_index(chunks))
    with atomic_path(path) as tmp:
        if direct is None or not direct.write(tmp, parts):
            with open(tmp, "wb") as fh:
                for part in parts:
                    fh.write(part)
    return sum(len(part) for part in parts[:-1])


class DirectWriter:
    """Write whole files with ``O_DIRECT`` from one reused, page-aligned buffer.

    ``O_DIRECT`` needs the buffer, the file offset and the length aligned to
    the device's logical block: the parts are copied into the buffer, the
    last block padded with zeros, and the file truncated to its length after.
    Where the file system refuses it (tmpfs before Linux 6.6, some network
    file systems, a platform without ``O_DIRECT``) :meth:`write` returns
    False, and every later call too: the caller writes through the page
    cache instead. One writer is used by one thread at a time.

    Parameters
    ----------
    enabled : bool
        False never writes directly (``acquire.direct_io: false``).
    """

    #: Alignment of buffer, offsets and lengths: a page, a multiple of any common logical block.
    ALIGN = mmap.PAGESIZE

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled) and hasattr(os, "O_DIRECT")
        self.files_direct = 0  # files written with O_DIRECT
        self.files_buffered = 0  # files written through the page cache, after a refusal
        self.refused: str | None = None  # why O_DIRECT was given up
        self._buffer: mmap.mmap | None = None

    @property
    def mode(self) -> str:
        """``direct``, ``buffered`` or ``mixed``: how the files so far were written."""
        if self.files_direct and not self.files_buffered:
            return "direct"
        return "mixed" if self.files_direct else "buffered"

    def _staging(self, nbytes: int) -> mmap.mmap:
        """The buffer, at least ``nbytes`` long (a multiple of :attr:`ALIGN`)."""
        if self._buffer is None or len(self._buffer) < nbytes:
            # grown by a quarter at least, so that slowly growing shards do not remap each time
            size = max(nbytes, len(self._buffer) * 5 // 4 if self._buffer is not None else 0)
            if self._buffer is not None:
                self._buffer.close()
            # an anonymous map is page-aligned, and reused: its pages stay in place from shard to shard
            self._buffer = mmap.mmap(-1, -(-size // self.ALIGN) * self.ALIGN)
        return self._buffer

    def _refuse(self, why: str) -> bool:
        self.enabled, self.refused = False, why
        self.files_buffered += 1
        return False

    def write(self, path: Path, parts: Sequence[bytes]) -> bool:
        """Write ``parts`` one after another as the file ``path``.

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
        padded = -(-total // self.ALIGN) * self.ALIGN
        with memoryview(self._staging(padded)) as view:
            offset = 0
            for part in parts:
                view[offset:offset + len(part)] = part
                offset += len(part)
            view[total:padded] = bytes(padded - total)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                return self._refuse(f"{path.parent}: the file system refuses O_DIRECT ({exc.strerror})")
            try:
                written = 0
                while written < padded:
                    try:
                        n = os.write(fd, view[written:padded])
                    except OSError as exc:
                        if exc.errno != errno.EINVAL or written:
                            raise
                        # opened, but the alignment is not the device's: the caller writes this file
                        return self._refuse(f"{path.parent}: O_DIRECT write refused ({exc.strerror})")
                    if n <= 0:
                        raise OSError(errno.EIO, f"{path}: write returned {n}")
                    written += n
                    if written % self.ALIGN and written < padded:
                        # a short write leaves the offset unaligned: the rest through the page cache
                        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                os.ftruncate(fd, total)
            finally:
                os.close(fd)
        self.files_direct += 1
        return True

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
