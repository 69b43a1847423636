"""The contracts between stages: movie store and tables."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import zarr

from conftest import takes_o_direct
from pipeline.io import (
    MovieError,
    TableError,
    create_movie,
    open_movie,
    read_table,
    table_metadata,
    write_movie,
    write_table,
)
from pipeline.io.check import check_movie
from pipeline.io.files import atomic_path, atomic_write
from pipeline.io.movie import update_attributes
from pipeline.physics import stokes_einstein_D, stokes_einstein_diameter, water_viscosity


@pytest.fixture
def frames():
    rng = np.random.default_rng(7)
    return rng.integers(0, 4096, size=(23, 40, 56), dtype=np.uint16)


def test_round_trip_is_bit_exact_across_shards(tmp_path, frames):
    movie = write_movie(
        tmp_path / "m.ome.zarr", frames, frames_per_shard=4, pixel_size_um=0.25, frame_interval_s=0.04
    )
    assert np.array_equal(movie.frames(), frames)
    assert np.array_equal(movie.frames(5, 11), frames[5:11])
    assert np.array_equal(movie[-1], frames[-1])
    assert movie.complete and movie.attrs["frames_written"] == len(frames)
    assert movie.frames_per_shard == 4
    # 6 shards, the last one partial, each written once as one file
    shard_files = sorted((tmp_path / "m.ome.zarr" / "0" / "c").rglob("*"))
    assert len([p for p in shard_files if p.is_file()]) == 6
    assert not any(p.name.endswith(".partial") for p in shard_files)


def test_store_is_ngff_05_with_physical_scale(tmp_path, frames):
    write_movie(tmp_path / "m.ome.zarr", frames, pixel_size_um=0.25, frame_interval_s=0.04)
    root = zarr.open_group(str(tmp_path / "m.ome.zarr"), mode="r")
    ome = root.attrs["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.04, 0.25, 0.25]
    image = root["0"]
    assert image.chunks == (1, 40, 56)
    codecs = json.loads((tmp_path / "m.ome.zarr" / "0" / "zarr.json").read_text())["codecs"]
    inner = codecs[0]["configuration"]["codecs"]
    assert codecs[0]["name"] == "sharding_indexed"
    # each chunk (frame): bytes, then Blosc, then its own CRC-32C
    assert [c["name"] for c in inner] == ["bytes", "blosc", "crc32c"]
    blosc = inner[1]
    assert blosc["configuration"]["cname"] == "lz4"
    assert blosc["configuration"]["shuffle"] == "bitshuffle"
    assert [c["name"] for c in codecs[0]["configuration"]["index_codecs"]] == ["bytes", "crc32c"]


def test_gaps_are_recorded_as_dropped_with_timestamps(tmp_path):
    writer = create_movie(tmp_path / "g.ome.zarr", (8, 8), "uint8", frames_per_shard=3, first_seq=100)
    for i in (0, 1, 4, 5, 6):
        writer.write(i, np.full((8, 8), i + 1, np.uint8), timestamp=10.0 + i)
    writer.close(n_frames=9)
    movie = open_movie(tmp_path / "g.ome.zarr")
    assert len(movie) == 9
    assert movie.attrs["dropped"] == [102, 103, 107, 108]
    assert movie.dropped_frames.tolist() == [2, 3, 7, 8]
    assert movie.frames()[:, 0, 0].tolist() == [1, 2, 0, 0, 5, 6, 7, 0, 0]
    ts = movie.timestamps()
    assert ts[[0, 1, 4, 5, 6]].tolist() == [10.0, 11.0, 14.0, 15.0, 16.0]
    assert np.isnan(ts[[2, 3, 7, 8]]).all()


def test_volumes_keep_anisotropic_scale(tmp_path):
    vol = np.random.default_rng(1).integers(0, 255, (4, 5, 12, 16), dtype=np.uint8)
    movie = write_movie(tmp_path / "v.ome.zarr", vol, pixel_size_um=(0.5, 0.1, 0.1))
    assert movie.axes == ("t", "z", "y", "x")
    assert movie.pixel_size_um == (0.5, 0.1, 0.1)
    assert np.array_equal(movie.frames(), vol)


def test_refuses_to_overwrite_without_permission(tmp_path, frames):
    path = tmp_path / "m.ome.zarr"
    write_movie(path, frames[:3])
    with pytest.raises(FileExistsError, match="overwrite"):
        write_movie(path, frames[:2])
    assert len(open_movie(path)) == 3  # nothing lost
    write_movie(path, frames[:2], overwrite=True)
    assert len(open_movie(path)) == 2


def test_bad_frames_and_empty_movies_are_named(tmp_path, frames):
    writer = create_movie(tmp_path / "b.ome.zarr", (40, 56), "uint16")
    writer.write(0, frames[0])
    with pytest.raises(ValueError, match="frame 1 has shape"):
        writer.write(1, frames[0, :10])
    with pytest.raises(ValueError, match="not after"):
        writer.write(0, frames[1])
    writer.close()
    assert len(open_movie(tmp_path / "b.ome.zarr")) == 1
    with pytest.raises(MovieError, match="no frames"):
        write_movie(tmp_path / "e.ome.zarr", [])


def test_opening_something_else_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ome.zarr"):
        open_movie(tmp_path / "nope.ome.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(MovieError, match="not an OME-Zarr image"):
        open_movie(tmp_path / "plain.zarr")


def test_corrupt_shard_is_reported_with_frames(tmp_path, frames):
    path = tmp_path / "c.ome.zarr"
    write_movie(path, frames, frames_per_shard=8)
    shard = path / "0" / "c" / "1" / "0" / "0"
    shard.write_bytes(b"garbage" * 10)
    movie = open_movie(path)
    assert np.array_equal(movie.frames(0, 8), frames[:8])  # other shards intact
    with pytest.raises(MovieError, match=r"frames 8\.\.15"):
        movie.frames(8, 16)


def test_killed_writer_leaves_a_readable_incomplete_store(tmp_path):
    """SIGKILL mid-stream: every shard that reached disk opens, complete is false."""
    path = tmp_path / "k.ome.zarr"
    script = textwrap.dedent(
        f"""
        import numpy as np, sys, time
        from pipeline.io import create_movie
        w = create_movie({str(path)!r}, (32, 32), "uint16", frames_per_shard=5)
        for i in range(10**6):
            w.write(i, np.full((32, 32), i % 65535, np.uint16))
            if i == 23:
                while w.frames_written < 20:
                    time.sleep(0.01)
                print("ready", flush=True)
                time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    movie = open_movie(path)
    assert not movie.complete
    assert len(movie) == 20 and movie.attrs["frames_written"] == 20
    assert movie.frames()[:, 0, 0].tolist() == list(range(20))


#: Every compression the store offers (acquire.codec, shuffle, clevel), a level of each.
COMPRESSIONS = [
    ("lz4", "bit", 5), ("lz4", "byte", 5), ("lz4", "byte", 1), ("lz4", "none", 5), ("lz4", "bit", 9),
    ("zstd", "byte", 1), ("zstd", "bit", 1), ("blosclz", "byte", 5), ("lz4hc", "bit", 1), ("zlib", "byte", 1),
]  # fmt: skip


@pytest.fixture
def zarr_blosc_typesize(monkeypatch):
    """zarr's Blosc with the typesize its metadata declares.

    zarr 3.1 hands Blosc its typesize only with numcodecs >= 0.16 (numcodecs
    PR 713); with an older numcodecs (geff's metadata holds it below 0.16
    on Python 3.11, which the lock overrides: requirements-overrides.txt) it
    compresses every chunk as bytes (typesize 1) while its metadata says the
    dtype's size. This gives zarr's own BloscCodec the declared typesize, as
    numcodecs >= 0.16 does, and does nothing there.
    """
    from packaging.version import Version
    import numcodecs
    from zarr.codecs.blosc import BloscCodec

    if Version(numcodecs.__version__) >= Version("0.16"):
        return

    def encode(self, chunk_bytes, chunk_spec):
        data = chunk_bytes.as_numpy_array().view(f"<u{self.typesize}")
        return chunk_spec.prototype.buffer.from_bytes(self._blosc_codec.encode(data))

    monkeypatch.setattr(BloscCodec, "_encode_sync", encode)


@pytest.mark.parametrize("codec,shuffle,clevel", COMPRESSIONS)
def test_shards_are_the_bytes_zarr_writes(tmp_path, frames, zarr_blosc_typesize, codec, shuffle, clevel):
    """The hand-written shards (pipeline.io._shards) against zarr's own encoding
    of the same frames, declared by the same array metadata: byte for byte,
    with an absent frame and a partial last shard, for every compression."""
    ours = tmp_path / "ours.ome.zarr"
    writer = create_movie(
        ours, frames.shape[1:], frames.dtype, frames_per_shard=8, codec=codec, shuffle=shuffle, clevel=clevel
    )
    for i, frame in enumerate(frames):
        if i != 5:
            writer.write(i, frame, timestamp=0.5 * i)
    writer.close()
    expected = frames.copy()
    expected[5] = 0  # zarr leaves an all-fill chunk out, as the writer leaves a dropped frame
    timestamps = 0.5 * np.arange(len(frames))
    timestamps[5] = np.nan
    theirs = tmp_path / "theirs.zarr"
    for sub, data in (("0", expected), ("timestamps", timestamps)):
        (theirs / sub).mkdir(parents=True)
        (theirs / sub / "zarr.json").write_bytes((ours / sub / "zarr.json").read_bytes())
        zarr.open_array(str(theirs / sub), mode="r+")[:] = data
    blosc = json.loads((ours / "0" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"][1]
    assert blosc["configuration"] == {
        "typesize": 2, "cname": codec, "clevel": clevel, "blocksize": 0,
        "shuffle": {"bit": "bitshuffle", "byte": "shuffle", "none": "noshuffle"}[shuffle],
    }  # fmt: skip
    for sub in ("0", "timestamps"):
        our_files = sorted(p.relative_to(ours / sub) for p in (ours / sub / "c").rglob("*") if p.is_file())
        their_files = sorted(p.relative_to(theirs / sub) for p in (theirs / sub / "c").rglob("*") if p.is_file())
        assert our_files == their_files and len(our_files) == 3
        for rel in our_files:
            assert (ours / sub / rel).read_bytes() == (theirs / sub / rel).read_bytes(), rel


def test_shards_past_the_page_cache_are_the_same_files(tmp_path, frames):
    """acquire.direct_io: the same files with O_DIRECT and through the page
    cache, and the writer says which way they went."""
    stores = {}
    for direct in (True, False):
        path = tmp_path / f"direct-{direct}.ome.zarr"
        writer = create_movie(path, frames.shape[1:], frames.dtype, frames_per_shard=7, direct_io=direct)
        for i, frame in enumerate(frames):
            writer.write(i, frame, timestamp=float(i))
        writer.close()
        stores[direct] = (path, writer.io_mode)
    expected = "direct" if takes_o_direct(tmp_path) else "buffered"
    assert stores[True][1] == expected and stores[False][1] == "buffered"
    files = {
        d: sorted(p.relative_to(path) for p in (path / "0" / "c").rglob("*") if p.is_file())
        for d, (path, _) in stores.items()
    }
    assert files[True] == files[False] and len(files[True]) == 4
    for rel in files[True]:
        assert (stores[True][0] / rel).read_bytes() == (stores[False][0] / rel).read_bytes(), rel
    assert np.array_equal(open_movie(stores[True][0]).frames(), frames)


def test_direct_writer_pads_to_blocks_and_truncates(tmp_path):
    """Lengths around the block size, and a file larger than the buffer so far
    (the buffer grows): each file is exactly its parts."""
    from pipeline.io._shards import DirectWriter

    if not takes_o_direct(tmp_path):
        pytest.skip("this file system does not take O_DIRECT")
    rng = np.random.default_rng(3)
    block = DirectWriter.ALIGN
    writer = DirectWriter()
    for sizes in ([1], [block - 1, 1], [block], [block, 1], [3 * block + 5, 7, 0], [40 * block + 1], [2]):
        parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
        path = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        assert writer.write(path, parts)
        assert path.read_bytes() == b"".join(parts)
    assert writer.mode == "direct" and writer.files_direct == 7
    writer.close()


@pytest.mark.parametrize("step", [None, 3 * 4096, 3 * 4096 + 100])
def test_direct_writer_writes_aligned_buffers_in_place_and_resumes_short_writes(tmp_path, monkeypatch, step):
    """Page-aligned buffers written where they lie, then the packed parts; a
    write that stops short (on a block boundary, or off one: the rest goes
    through the page cache) resumes where it stopped."""
    from pipeline.io import _shards
    from pipeline.io._shards import ALIGN, DirectWriter, _aligned_empty

    if not takes_o_direct(tmp_path):
        pytest.skip("this file system does not take O_DIRECT")
    rng = np.random.default_rng(5)
    aligned = []
    for pages in (1, 5, 2):
        buf = _aligned_empty(pages * ALIGN)
        buf[:] = rng.integers(0, 256, buf.size, dtype=np.uint8)
        aligned.append(memoryview(buf))
    parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (17, ALIGN + 3)]
    if step is not None:
        real_write = os.write

        def short_write(fd, data):
            # as a kernel that stops part-way: at most `step` bytes (an unaligned
            # count cannot be asked of O_DIRECT, so the flag is lifted for the call)
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            try:
                return real_write(fd, memoryview(data)[:step])
            finally:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)

        monkeypatch.setattr(_shards.os, "write", short_write)
        monkeypatch.setattr(_shards.os, "writev", lambda fd, buffers: short_write(fd, buffers[0]))
    writer = DirectWriter()
    path = tmp_path / "f"
    assert writer.write(path, parts, aligned=aligned)
    monkeypatch.undo()
    assert path.read_bytes() == b"".join(bytes(a) for a in aligned) + b"".join(parts)
    assert writer.mode == "direct"
    writer.close()


@pytest.fixture
def large_frames():
    """Frames whose chunks pass ALIGNED_CHUNK_MIN (12-bit noise: about 0.4 MB each)."""
    rng = np.random.default_rng(11)
    return rng.integers(0, 4096, size=(7, 512, 512), dtype=np.uint16)


def _chunks_by_index(shard_path, n_chunks):
    from pipeline.io import _shards

    data, index = shard_path.read_bytes(), _shards.read_index(shard_path, n_chunks)
    return [
        None if _shards.absent(index)[i] else (int(index[i, 0]), data[index[i, 0] : index[i, 0] + index[i, 1]])
        for i in range(n_chunks)
    ]


def test_large_chunks_go_to_disk_in_place_from_page_boundaries(tmp_path, large_frames):
    """With O_DIRECT, chunks past ALIGNED_CHUNK_MIN are written from the
    encoder's buffers, each from a page boundary (unused space between chunks,
    as the sharding spec allows): every chunk the same bytes as through the
    page cache, which stays packed as zarr packs it, and zarr reads the frames."""
    from pipeline.io import _shards

    if not takes_o_direct(tmp_path):
        pytest.skip("this file system does not take O_DIRECT")
    stores = {}
    for direct in (True, False):
        path = tmp_path / f"direct-{direct}.ome.zarr"
        writer = create_movie(path, large_frames.shape[1:], large_frames.dtype, frames_per_shard=3, direct_io=direct)
        for i, frame in enumerate(large_frames):
            if i != 4:
                writer.write(i, frame, timestamp=float(i))
        writer.close()
        assert writer.io_mode == ("direct" if direct else "buffered")
        stores[direct] = path
    expected = large_frames.copy()
    expected[4] = 0
    for shard in range(3):
        rel = f"0/c/{shard}/0/0"
        aligned = _chunks_by_index(stores[True] / rel, 3)
        packed = _chunks_by_index(stores[False] / rel, 3)
        assert [c is None for c in aligned] == [c is None for c in packed]
        present = [(a, p) for a, p in zip(aligned, packed) if a is not None]
        assert all(a[0] % _shards.ALIGN == 0 and a[1] == p[1] for a, p in present)
        assert all(len(p[1]) >= _shards.ALIGNED_CHUNK_MIN for _, p in present)
        # negative control: the packed store has no gaps, the in-place one has
        ends = [p[0] + len(p[1]) for _, p in present]
        assert [p[0] for _, p in present] == [0] + ends[:-1]
        if len(present) > 1:
            assert (stores[True] / rel).stat().st_size > (stores[False] / rel).stat().st_size
    for path in stores.values():
        assert np.array_equal(zarr.open_array(str(path / "0"), mode="r")[:], expected)
        assert np.array_equal(open_movie(path).frames(), expected)
        assert check_movie(path).ok


def test_frames_encode_through_numcodecs_where_c_blosc_is_out_of_reach(tmp_path, frames, monkeypatch):
    """No c-blosc symbol to call (another numcodecs build), or a first frame
    that does not round-trip: numcodecs encodes, and the files are the same."""
    from pipeline.io import _shards

    def store(name):
        path = tmp_path / name
        writer = create_movie(path, frames.shape[1:], frames.dtype, frames_per_shard=8, direct_io=False)
        for i, frame in enumerate(frames):
            writer.write(i, frame)
        writer.close()
        return writer, sorted((p.relative_to(path), p.read_bytes()) for p in (path / "0" / "c").rglob("*") if p.is_file())

    reference_writer, reference = store("reference.ome.zarr")
    assert reference_writer._encoder.in_place  # the in-place path ran
    monkeypatch.setattr(_shards, "_blosc_compress_ctx", lambda: None)
    writer, files = store("no-symbol.ome.zarr")
    assert not writer._encoder.in_place and files == reference
    monkeypatch.undo()
    monkeypatch.setattr(_shards.numcodecs.Blosc, "decode", lambda self, buf, out=None: b"\0" * frames[0].nbytes)
    with pytest.warns(UserWarning, match="round-trip"):
        writer, files = store("no-round-trip.ome.zarr")
    assert not writer._encoder.in_place and files == reference


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_shards_go_through_the_page_cache_where_o_direct_is_refused(
    tmp_path, frames, large_frames, monkeypatch, refused_at, size
):
    """A file system that refuses O_DIRECT (at open, as tmpfs before Linux 6.6;
    or at the first write, a block size not the page's): the shards are
    written through the page cache, the same files, and the writer says why.
    It asks once, not for every shard. Large chunks (written in place, with
    writev) fall back the same way."""
    from pipeline.io import _shards

    frames = large_frames if size == "large" else frames

    asked, direct_fds = [], set()
    real_open, real_write, real_writev, real_close = os.open, os.write, os.writev, os.close

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT:
            asked.append(path)
            if refused_at == "open":
                raise OSError(22, "Invalid argument")
            fd = real_open(path, flags, *args, **kwargs)
            direct_fds.add(fd)
            return fd
        return real_open(path, flags, *args, **kwargs)

    def refusing_write(fd, data):
        if fd in direct_fds:
            raise OSError(22, "Invalid argument")
        return real_write(fd, data)

    def refusing_writev(fd, buffers):
        if fd in direct_fds:
            raise OSError(22, "Invalid argument")
        return real_writev(fd, buffers)

    def close(fd):
        direct_fds.discard(fd)  # its number is free for the next file
        real_close(fd)

    monkeypatch.setattr(_shards.os, "open", refusing_open)
    monkeypatch.setattr(_shards.os, "close", close)
    monkeypatch.setattr(_shards.os, "write", refusing_write)
    monkeypatch.setattr(_shards.os, "writev", refusing_writev)
    path = tmp_path / "m.ome.zarr"
    writer = create_movie(path, frames.shape[1:], frames.dtype, frames_per_shard=7)
    for i, frame in enumerate(frames):
        writer.write(i, frame)
    writer.close()
    monkeypatch.undo()
    assert len(asked) == 1
    assert writer.io_mode == "buffered" and "O_DIRECT" in writer.direct_io_refused
    assert str(path / "0" / "c") in writer.direct_io_refused
    assert np.array_equal(open_movie(path).frames(), frames)
    assert not list(path.rglob("*.partial"))


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    atomic_write(target, b"new")
    assert target.read_text() == "new"


def test_update_attributes_merges_into_namespaces(tmp_path, frames):
    path = tmp_path / "m.ome.zarr"
    write_movie(path, frames[:2], metadata={"source": "camera"})
    update_attributes(path, {"trackflow": {"stream": {"fps": np.float64(50.0)}}, "ome": {"image-label": {}}})
    movie = open_movie(path)
    assert movie.attrs["source"] == "camera" and movie.attrs["stream"] == {"fps": 50.0}
    assert movie._root.attrs["ome"]["image-label"] == {}
    assert movie._root.attrs["ome"]["version"] == "0.5"


def test_table_round_trip_keeps_provenance(tmp_path):
    df = pd.DataFrame({"frame": [0, 1], "y": [1.5, 2.5], "x": [3.0, 4.0]})
    path = write_table(df, tmp_path / "t.parquet", stage="locate", params={"diameter": 11})
    back = read_table(path, required=("frame", "y", "x"))
    pd.testing.assert_frame_equal(back, df)
    meta = table_metadata(path)
    assert meta["stage"] == "locate" and meta["params"] == {"diameter": 11}
    assert "trackflow_version" in meta
    # the libraries it was written with
    assert meta["versions"]["numpy"] == np.__version__ and meta["versions"]["pandas"] == pd.__version__
    with pytest.raises(TableError, match=r"t\.parquet: missing column\(s\) \['mass'\]"):
        read_table(path, required=("mass",))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(TableError, match="bad.parquet"):
        read_table(tmp_path / "bad.parquet")


def test_water_viscosity_and_stokes_einstein():
    # CRC Handbook: 1.0016 mPa s at 20 C, 0.8900 at 25 C, 0.6913 at 37 C
    for celsius, eta in ((20, 1.0016e-3), (25, 0.8900e-3), (37, 0.6913e-3)):
        assert water_viscosity(273.15 + celsius) == pytest.approx(eta, rel=0.015)
    D = stokes_einstein_D(100.0, 298.15, 0.89e-3)
    assert D == pytest.approx(4.906, rel=1e-3)  # um^2/s for 100 nm in water at 25 C
    assert stokes_einstein_diameter(D, 298.15, 0.89e-3) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="temperature_K"):
        water_viscosity(25.0)


def _flip(path, offset, n=3):
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_an_error_naming_the_frame(tmp_path, frames):
    """Three bytes flipped inside a frame's compressed data used to decode into
    wrong pixels silently; the chunk's CRC-32C makes it an error naming the frame."""
    path = tmp_path / "f.ome.zarr"
    write_movie(path, frames, frames_per_shard=8)
    shard = path / "0" / "c" / "1" / "0" / "0"
    index = np.frombuffer(shard.read_bytes()[-(16 * 8 + 4) : -4], dtype="<u8").reshape(8, 2)
    _flip(shard, int(index[3, 0]) + int(index[3, 1]) // 2)  # frame 8 + 3
    movie = open_movie(path)
    assert np.array_equal(movie.frames(0, 11), frames[:11])
    with pytest.raises(MovieError, match=r"frame 11 cannot be read .*0/c/1/0/0.*CRC-32C") as err:
        movie.frames()
    assert str(path) in str(err.value)
    with pytest.raises(MovieError, match="frame 11 cannot be read"):
        movie[11]


def test_stores_without_chunk_checksums_still_read(tmp_path, frames):
    """A store written before the per-chunk CRC-32C reads by its own zarr.json."""
    path = tmp_path / "old.ome.zarr"
    write_movie(path, frames, frames_per_shard=8)
    meta_path = path / "0" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    sharding = meta["codecs"][0]["configuration"]
    sharding["codecs"] = [c for c in sharding["codecs"] if c["name"] != "crc32c"]
    meta_path.write_text(json.dumps(meta))
    zarr.open_array(str(path / "0"), mode="r+")[:] = frames
    assert np.array_equal(open_movie(path).frames(), frames)


def test_a_missing_shard_is_an_error_unless_its_frames_were_dropped(tmp_path, frames):
    path = tmp_path / "d.ome.zarr"
    write_movie(path, frames, frames_per_shard=8)
    shard = path / "0" / "c" / "1" / "0" / "0"
    shard.unlink()
    movie = open_movie(path)
    assert movie.complete and movie.attrs["dropped"] == []
    assert np.array_equal(movie.frames(16, 23), frames[16:])
    with pytest.raises(MovieError, match=rf"frame 8 cannot be read \({shard}; .*\): its shard file is missing"):
        movie.frames()
    with pytest.raises(MovieError, match="frame 12 cannot be read"):
        movie[12]
    # a shard whose frames were all dropped was never written: it reads as empty
    writer = create_movie(tmp_path / "g.ome.zarr", (8, 8), "uint8", frames_per_shard=3)
    for i in (0, 1, 4, 5):
        writer.write(i, np.full((8, 8), i + 1, np.uint8))
    writer.close(n_frames=9)
    gaps = open_movie(tmp_path / "g.ome.zarr")
    assert not (tmp_path / "g.ome.zarr" / "0" / "c" / "2").exists()
    assert gaps.frames()[:, 0, 0].tolist() == [1, 2, 0, 0, 5, 6, 0, 0, 0]


def test_a_failed_shard_write_ends_the_shape_before_it(tmp_path, frames, monkeypatch):
    """Finding 7: after a write failure the shape counted frames never written,
    and they read as zeros. Now the shape ends with the last shard on disk and
    ``write_error`` says why."""
    from pipeline.io import _shards

    real = _shards.write_shard
    calls = []

    def fail_second(path, chunks, **options):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, chunks, **options)

    monkeypatch.setattr(_shards, "write_shard", fail_second)
    path = tmp_path / "w.ome.zarr"
    writer = create_movie(path, frames.shape[1:], frames.dtype, frames_per_shard=4)
    with pytest.raises(MovieError, match="No space left"):
        try:  # the failure surfaces at a later write or at the close
            for i, frame in enumerate(frames):
                writer.write(i, frame)
        finally:
            writer.close(n_frames=30)
    movie = open_movie(path)
    assert not movie.complete
    assert len(movie) == 4 and movie.attrs["frames_written"] == 4 and movie.attrs["dropped"] == []
    assert "No space left on device" in movie.attrs["write_error"]
    assert np.array_equal(movie.frames(), frames[:4])
