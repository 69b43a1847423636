"""``trackflow check``: a whole store verified, every problem named."""

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.io import MovieError, create_movie, write_movie
from pipeline.io.check import check_movie


@pytest.fixture
def store(tmp_path):
    frames = np.random.default_rng(3).integers(0, 4096, size=(23, 40, 56), dtype=np.uint16)
    path = tmp_path / "m.ome.zarr"
    write_movie(path, frames, frames_per_shard=8, timestamps=0.1 * np.arange(len(frames)))
    return path


def _chunk(shard, pos, n=8):
    index = np.frombuffer(shard.read_bytes()[-(16 * n + 4) : -4], dtype="<u8").reshape(n, 2)
    return int(index[pos, 0]), int(index[pos, 1])


def test_a_sound_store_passes(store, capsys):
    report = check_movie(store)
    assert report.ok and report.frames == report.frames_decoded == 23 and not report.notes
    assert main(["check", str(store)]) == 0
    assert "23 frames, 23 decoded; OK" in capsys.readouterr().err


def test_gaps_listed_as_dropped_are_sound(tmp_path):
    writer = create_movie(tmp_path / "g.ome.zarr", (8, 8), "uint8", frames_per_shard=3)
    for i in (0, 1, 4, 5):
        writer.write(i, np.full((8, 8), i + 1, np.uint8), timestamp=float(i))
    writer.close(n_frames=9)  # frames 6..8: a whole shard dropped, never written
    report = check_movie(tmp_path / "g.ome.zarr")
    assert report.ok, report.problems
    assert report.frames_decoded == 4


def test_a_flipped_byte_names_the_frame(store, capsys):
    shard = store / "0" / "c" / "1" / "0" / "0"
    offset, size = _chunk(shard, 2)
    data = bytearray(shard.read_bytes())
    for i in range(offset + size // 2, offset + size // 2 + 3):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["check", str(store)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "frame 10 " in out[0] and "0/c/1/0/0" in out[0] and "CRC-32C" in out[0]


def test_a_flipped_byte_in_a_shard_index_names_the_shard(store):
    shard = store / "0" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    (problem,) = check_movie(store).problems
    assert problem.startswith("frames 0..7: shard file") and "index's CRC-32C does not match" in problem


def test_a_deleted_shard_is_named(store, capsys):
    shard = store / "0" / "c" / "1" / "0" / "0"
    shard.unlink()
    assert main(["check", str(store)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert f"frames 8..15: shard file {shard} is missing" in line


def test_inconsistent_metadata_and_timestamps_are_named(store):
    root = json.loads((store / "zarr.json").read_text())
    tf = root["attributes"]["trackflow"]
    tf["frames_written"] = 30
    tf["dropped"] = [40]
    tf["complete"] = False
    (store / "zarr.json").write_text(json.dumps(root))
    ts_chunk = store / "timestamps" / "c" / "1"
    ts = np.frombuffer(ts_chunk.read_bytes(), "<f8").copy()
    ts[3] = -1.0
    ts_chunk.write_bytes(ts.tobytes())
    problems = "\n".join(check_movie(store).problems)
    assert "outside the movie (0..22), first 40" in problems
    assert "frames_written (30) + dropped (0) = 30" in problems
    assert "incomplete" in problems
    assert "frame 11: timestamp -1.0 is before the previous frame's" in problems


def test_a_truncated_zarr_json_is_unusable_input(store, capsys):
    meta = store / "0" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40])
    with pytest.raises(MovieError, match=r"0/zarr.json: unreadable Zarr metadata"):
        check_movie(store)
    assert main(["check", str(store)]) == 2
    assert "unreadable Zarr metadata" in capsys.readouterr().err
    assert main(["check", str(store.parent / "nope.ome.zarr")]) == 2


def test_a_store_without_chunk_checksums_gets_a_note(store):
    meta_path = store / "0" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    sharding = meta["codecs"][0]["configuration"]
    sharding["codecs"] = [c for c in sharding["codecs"] if c["name"] != "crc32c"]
    meta_path.write_text(json.dumps(meta))
    import zarr

    frames = np.random.default_rng(3).integers(0, 4096, size=(23, 40, 56), dtype=np.uint16)
    zarr.open_array(str(store / "0"), mode="r+")[:] = frames
    report = check_movie(store)
    assert report.ok and "no CRC-32C" in report.notes[0]


def test_a_store_after_a_failed_write_is_consistent(tmp_path, monkeypatch):
    """Finding 7: the shape and dropped agree with what reached disk; check
    names the write error and the incomplete recording, nothing else."""
    from pipeline.io import _shards

    real, calls = _shards.write_shard, []

    def fail_third(path, chunks, **options):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, chunks, **options)

    monkeypatch.setattr(_shards, "write_shard", fail_third)
    writer = create_movie(tmp_path / "w.ome.zarr", (8, 8), "uint8", frames_per_shard=2)
    with pytest.raises(MovieError):
        try:
            for i in range(12):
                if i != 1:
                    writer.write(i, np.full((8, 8), i, np.uint8), timestamp=float(i))
        finally:
            writer.close(n_frames=12)
    report = check_movie(tmp_path / "w.ome.zarr")
    assert report.frames == 4 and report.frames_decoded == 3
    assert len(report.problems) == 2
    assert report.problems[0].startswith("incomplete") and "No space left" in report.problems[1]
