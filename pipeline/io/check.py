"""Verify a whole movie store: every chunk, the shard indexes, the metadata, the timestamps.

Reading a store checks only the frames read; :func:`check_movie` (the
``trackflow check`` command) goes through all of it and lists every problem
it finds, one line each, naming the frame or file:

- the OME-NGFF metadata (version, axes, a positive finite scale) and the
  ``trackflow`` attributes (the keys the writer publishes; the scale they
  repeat; shape = ``frames_written`` + ``dropped``; ``complete``,
  ``write_error``); ``trackflow.compression``, when the store records it,
  against zarr's codec metadata of the image;
- every shard file a claimed (not dropped) frame needs: present, its index
  readable with a matching CRC-32C, a chunk for every claimed frame;
- every frame decoded, which verifies its chunk's CRC-32C (stores written
  before the per-chunk checksum get a note that flipped bits there cannot be
  detected);
- the timestamps: the array, one per frame, NaN where a frame was dropped,
  never decreasing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _shards
from .movie import IMAGE_PATH, TIMESTAMPS_PATH, Movie, MovieError, _read_failure

__all__ = ["CheckReport", "check_movie"]

#: The ``trackflow`` attributes every store of the writer carries.
WRITER_KEYS = ("complete", "frames_written", "dropped", "first_seq", "frames_per_shard",
               "pixel_size_um", "frame_interval_s")  # fmt: skip


@dataclass
class CheckReport:
    """What :func:`check_movie` found.

    Attributes
    ----------
    path : Path
        The store.
    problems : list of str
        One line per problem, naming the frame or file; empty for a sound store.
    notes : list of str
        Facts worth knowing that are not errors (no per-chunk checksums, stray files).
    frames : int
        Frames in the store's shape.
    frames_decoded : int
        Frames read and decoded without error.
    """

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    frames: int = 0
    frames_decoded: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _json(path: Path) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise MovieError(f"{path} is missing: not a Zarr v3 store") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MovieError(f"{path}: unreadable Zarr metadata ({exc})") from exc


def _open(path: Path) -> Movie:
    """The store opened, or MovieError when it cannot be checked at all."""
    if not path.is_dir():
        raise FileNotFoundError(f"movie store {path} does not exist")
    # read the metadata as JSON first: a truncated file is named, not a zarr traceback
    _json(path / "zarr.json")
    _json(path / IMAGE_PATH / "zarr.json")
    try:
        return Movie(path)
    except MovieError:
        raise
    except Exception as exc:
        raise MovieError(f"{path}: cannot be opened as a movie store ({exc})") from exc


def _check_ome(movie: Movie, report: CheckReport) -> None:
    ome = movie._root.attrs.get("ome", {})
    if ome.get("version") != "0.5":
        report.problems.append(f"ome.version is {ome.get('version')!r}, expected '0.5' (OME-NGFF 0.5)")
    axes = ome["multiscales"][0]["axes"]
    for axis in axes:
        want = ("time", "second") if axis.get("name") == "t" else ("space", "micrometer")
        if (axis.get("type"), axis.get("unit")) != want:
            report.problems.append(
                f"ome axis {axis.get('name')!r}: type {axis.get('type')!r}, unit {axis.get('unit')!r}; "
                f"expected {want[0]!r}, {want[1]!r}"
            )
    scale = movie.scale
    if len(scale) != len(movie.axes) or not all(math.isfinite(s) and s > 0 for s in scale):
        report.problems.append(f"ome scale {list(scale)} must hold one positive finite value per axis {movie.axes}")


def _check_attributes(movie: Movie, report: CheckReport) -> set[int]:
    """Check the trackflow attributes; return the dropped frame indices."""
    attrs = movie.attrs
    for key in WRITER_KEYS:
        if key not in attrs:
            report.problems.append(f"trackflow.{key} is missing")
    n = len(movie)
    dropped: set[int] = set()
    raw = attrs.get("dropped", [])
    first = attrs.get("first_seq", 0)
    if not isinstance(raw, list) or not all(type(s) is int for s in raw) or type(first) is not int:
        report.problems.append("trackflow.dropped must be a list of integer sequence numbers, first_seq an integer")
    else:
        outside = [s for s in raw if not first <= s < first + n]
        if outside:
            report.problems.append(
                f"trackflow.dropped lists {len(outside)} sequence number(s) outside the movie "
                f"({first}..{first + n - 1}), first {outside[0]}"
            )
        if raw != sorted(set(raw)):
            report.problems.append("trackflow.dropped is not sorted or repeats a sequence number")
        dropped = {s - first for s in raw if first <= s < first + n}
    written = attrs.get("frames_written")
    if isinstance(written, int) and written + len(dropped) != n:
        report.problems.append(
            f"the shape says {n} frames, but frames_written ({written}) + dropped ({len(dropped)}) "
            f"= {written + len(dropped)}"
        )
    if "frames_per_shard" in attrs and attrs["frames_per_shard"] != movie.frames_per_shard:
        report.problems.append(
            f"trackflow.frames_per_shard is {attrs['frames_per_shard']}, the array's shards hold "
            f"{movie.frames_per_shard} frames"
        )
    for key, value in (("pixel_size_um", movie.pixel_size_um), ("frame_interval_s", movie.frame_interval_s)):
        if key in attrs and not np.allclose(np.asarray(attrs[key], dtype=float), value):
            report.problems.append(f"trackflow.{key} {attrs[key]} disagrees with the OME scale {value}")
    if attrs.get("complete") is False:
        why = attrs.get("interrupted") or "no clean end of the recording"
        report.problems.append(f"incomplete: the recording did not end cleanly ({why})")
    if attrs.get("write_error"):
        report.problems.append(f"writing failed: {attrs['write_error']}")
    return dropped


def _check_shards(movie: Movie, dropped: set[int], report: CheckReport) -> set[int]:
    """Check every shard file and its index; return the frames whose data cannot be read."""
    n, S = len(movie), movie.frames_per_shard
    bad: set[int] = set()
    expected = set()
    for shard in range(-(-n // S)):
        path = movie.shard_file(shard)
        expected.add(path)
        frames = range(shard * S, min(n, (shard + 1) * S))
        claimed = [i for i in frames if i not in dropped]
        if not path.is_file():
            if claimed:
                report.problems.append(
                    f"frames {claimed[0]}..{claimed[-1]}: shard file {path} is missing "
                    "(the frames are not listed as dropped)"
                )
                bad.update(claimed)
            continue
        try:
            index = _shards.read_index(path, S)
        except (OSError, ValueError) as exc:
            report.problems.append(f"frames {frames[0]}..{frames[-1]}: shard file {path}: {exc}")
            bad.update(frames)
            continue
        absent = _shards.absent(index)
        for i in claimed:
            if absent[i - shard * S]:
                report.problems.append(
                    f"frame {i}: the index of {path} has no data for it, and it is not listed as dropped"
                )
                bad.add(i)
    image_dir = movie.path / movie.array.path / "c"
    stray = sorted(p for p in image_dir.rglob("*") if p.is_file() and p not in expected) if image_dir.is_dir() else []
    if stray:
        report.notes.append(
            f"{len(stray)} file(s) under {image_dir} outside the movie's shape "
            f"(left by an interrupted write), e.g. {stray[0]}"
        )
    return bad


def _decode_frames(movie: Movie, skip: set[int], report: CheckReport) -> None:
    """Decode every frame not already known bad; zarr verifies each chunk's CRC-32C."""
    for start, stop in movie.chunk_bounds():
        todo = [i for i in range(start, stop) if i not in skip]
        if not todo:
            continue
        try:
            movie.array[todo[0] : todo[-1] + 1]
            report.frames_decoded += len(todo)
            continue
        except Exception:  # narrowed down frame by frame below
            pass
        for i in todo:
            try:
                movie.array[i]
                report.frames_decoded += 1
            except Exception as exc:
                file = movie.shard_file(i // movie.frames_per_shard)
                report.problems.append(f"frame {i} ({file}): {_read_failure(exc)}")


def _check_timestamps(movie: Movie, dropped: set[int], report: CheckReport) -> None:
    n, S = len(movie), movie.frames_per_shard
    meta_path = movie.path / TIMESTAMPS_PATH / "zarr.json"
    try:
        meta = _json(meta_path)
        array = movie._root[TIMESTAMPS_PATH]
    except (MovieError, KeyError) as exc:
        report.problems.append(f"timestamps: {exc if isinstance(exc, MovieError) else 'the array is missing'}")
        return
    if meta.get("shape") != [n] or meta.get("data_type") != "float64":
        report.problems.append(
            f"timestamps: shape {meta.get('shape')} and data type {meta.get('data_type')!r}, "
            f"expected [{n}] float64 (one per frame)"
        )
        return
    for shard in range(-(-n // S)):
        frames = [i for i in range(shard * S, min(n, (shard + 1) * S)) if i not in dropped]
        key = array.metadata.encode_chunk_key((shard,))
        if frames and not (movie.path / TIMESTAMPS_PATH / key).is_file():
            report.problems.append(
                f"timestamps of frames {frames[0]}..{frames[-1]}: file {movie.path / TIMESTAMPS_PATH / key} is missing"
            )
    try:
        ts = np.asarray(array[:], dtype=float)
    except Exception as exc:
        report.problems.append(f"timestamps cannot be read: {exc}")
        return
    stamped = [i for i in sorted(dropped) if np.isfinite(ts[i])]
    if stamped:
        report.problems.append(f"frame {stamped[0]} is listed as dropped but has a timestamp ({len(stamped)} such)")
    finite = np.flatnonzero(np.isfinite(ts))
    back = finite[1:][np.diff(ts[finite]) < 0]
    if back.size:
        report.problems.append(
            f"frame {int(back[0])}: timestamp {ts[back[0]]} is before the previous frame's "
            f"({back.size} such step(s) back in time)"
        )


def _chunk_codecs(meta: dict) -> list[str]:
    """Names of the codecs each chunk goes through (inside the sharding codec, if any)."""
    codecs = meta.get("codecs", [])
    for codec in codecs:
        if codec.get("name") == "sharding_indexed":
            codecs = codec.get("configuration", {}).get("codecs", [])
    return [codec.get("name") for codec in codecs]


def _check_compression(movie: Movie, meta: dict, report: CheckReport) -> None:
    """``trackflow.compression`` (stores written since it was recorded)
    against the Blosc codec zarr decodes the frames with."""
    recorded = movie.attrs.get("compression")
    if recorded is None:
        return
    codecs = meta.get("codecs", [])
    for codec in codecs:
        if codec.get("name") == "sharding_indexed":
            codecs = codec.get("configuration", {}).get("codecs", [])
    blosc = next((c.get("configuration", {}) for c in codecs if c.get("name") == "blosc"), None)
    if blosc is None:
        report.problems.append(f"trackflow.compression says {recorded}, but the image's codecs have no Blosc")
        return
    shuffle = {name: key for key, (_, name) in _shards.SHUFFLES.items()}.get(blosc.get("shuffle"))
    declared = {"codec": blosc.get("cname"), "shuffle": shuffle, "clevel": blosc.get("clevel")}
    if "typesize" in recorded:
        declared["typesize"] = blosc.get("typesize")
    differ = {key: (recorded.get(key), value) for key, value in declared.items() if recorded.get(key) != value}
    if differ:
        report.problems.append(
            "trackflow.compression disagrees with the image's Blosc codec: "
            + ", ".join(f"{key} {ours!r} against {theirs!r}" for key, (ours, theirs) in differ.items())
        )


def check_movie(path: str | os.PathLike) -> CheckReport:
    """Verify a whole movie store and list what is wrong with it.

    Parameters
    ----------
    path : path-like
        The store (``movie.ome.zarr``).

    Returns
    -------
    CheckReport
        ``problems`` empty when the store is sound.

    Raises
    ------
    FileNotFoundError
        There is no such store.
    MovieError
        The store cannot be checked at all: its root or image ``zarr.json``
        is missing or unreadable, or it is not an OME-Zarr movie.
    """
    path = Path(path)
    movie = _open(path)
    report = CheckReport(path=path, frames=len(movie))
    _check_ome(movie, report)
    dropped = _check_attributes(movie, report)
    image_meta = _json(path / movie.array.path / "zarr.json")
    _check_compression(movie, image_meta, report)
    if "crc32c" not in _chunk_codecs(image_meta):
        report.notes.append("the chunks carry no CRC-32C (written before it was added): changed bytes may go unnoticed")
    bad = _check_shards(movie, dropped, report)
    _decode_frames(movie, bad | dropped, report)
    _check_timestamps(movie, dropped, report)
    return report
