"""The store's compression (acquire.codec, shuffle, clevel): every option,
written through the real publisher and writer process, reads back the
camera's frames bit for bit, records its settings, and passes
``trackflow check``; a store whose record disagrees with its codec fails it.
"""

import json

import numpy as np
import pytest

from conftest import takes_o_direct
from pipeline.acquire import SimulatedCamera, acquire
from pipeline.cli import main
from pipeline.io.check import check_movie
from pipeline.io.movie import DEFAULT_COMPRESSION, open_movie, update_attributes
from pipeline.io.schema import ConfigError, check_section

SOURCE = dict(shape=(48, 64), n_frames=12, n_particles=6, seed=5, frame_interval_s=0.01)

OPTIONS = [
    {"codec": "lz4", "shuffle": "bit", "clevel": 5},
    {"codec": "lz4", "shuffle": "byte", "clevel": 1},
    {"codec": "zstd", "shuffle": "byte", "clevel": 1},
    {"codec": "lz4", "shuffle": "none", "clevel": 0},
]


def camera_frames():
    return np.stack([f.data for f in SimulatedCamera(**SOURCE).frames()])


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_every_compression_is_lossless_recorded_and_checked(tmp_path, options, capsys):
    out = tmp_path / "movie.ome.zarr"
    movie = acquire(SimulatedCamera(**SOURCE), out, frames_per_shard=5, report=False, **options)
    assert movie.complete and len(movie) == SOURCE["n_frames"]
    assert np.array_equal(movie.frames(), camera_frames())
    # trackflow's record, zarr's codec metadata and the acquisition settings agree
    assert movie.attrs["compression"] == {
        "compressor": "blosc", **options, "typesize": 2, "checksum": "crc32c",
    }  # fmt: skip
    assert {k: movie.attrs["acquisition"][k] for k in options} == options
    codecs = json.loads((out / "0" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    blosc = codecs[1]["configuration"]
    assert (blosc["cname"], blosc["clevel"]) == (options["codec"], options["clevel"])
    assert blosc["shuffle"] == {"bit": "bitshuffle", "byte": "shuffle", "none": "noshuffle"}[options["shuffle"]]
    assert check_movie(out).ok
    assert main(["check", str(out)]) == 0
    assert "OK" in capsys.readouterr().err


def test_the_options_read_alike_and_differ_only_in_size(tmp_path):
    sizes = {}
    for options in OPTIONS:
        out = tmp_path / "-".join(str(v) for v in options.values()) / "movie.ome.zarr"
        acquire(SimulatedCamera(**SOURCE), out, report=False, **options)
        sizes[options["codec"], options["shuffle"], options["clevel"]] = open_movie(out).attrs["stream"][
            "bytes_compressed"
        ]
        assert np.array_equal(open_movie(out).frames(), camera_frames())
    assert sizes["lz4", "none", 0] > max(v for k, v in sizes.items() if k != ("lz4", "none", 0))


def test_the_defaults_are_the_schema_s():
    assert {k: check_section("acquire", {})[k] for k in ("codec", "shuffle", "clevel")} == DEFAULT_COMPRESSION


@pytest.mark.parametrize("key,value", [("codec", "snappy"), ("shuffle", "bitshuffle"), ("clevel", 10)])
def test_a_bad_compression_key_is_named(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        check_section("acquire", {key: value})
    with pytest.raises((ConfigError, ValueError), match=key):
        acquire(SimulatedCamera(**SOURCE), tmp_path / "m.ome.zarr", report=False, **{key: value})
    assert not (tmp_path / "m.ome.zarr").exists()


def test_check_fails_a_store_whose_record_disagrees_with_its_codec(tmp_path):
    """Negative control: the record is compared with zarr's codec metadata."""
    out = tmp_path / "movie.ome.zarr"
    acquire(SimulatedCamera(**SOURCE), out, report=False, codec="lz4", shuffle="bit", clevel=5)
    assert check_movie(out).ok
    update_attributes(out, {"trackflow": {"compression": {**open_movie(out).attrs["compression"], "codec": "zstd"}}})
    (problem,) = check_movie(out).problems
    assert "trackflow.compression disagrees" in problem and "codec 'zstd' against 'lz4'" in problem


def test_direct_io_is_recorded_and_changes_no_byte(tmp_path):
    """acquire.direct_io through the writer process: the store says how its
    shards were written (stream.write_mode), and the frames and shard files
    are the same either way."""
    stores = {}
    for direct in (True, False):
        out = tmp_path / str(direct) / "movie.ome.zarr"
        movie = acquire(SimulatedCamera(**SOURCE), out, frames_per_shard=5, report=False, direct_io=direct)
        assert np.array_equal(movie.frames(), camera_frames())
        stores[direct] = (out, movie.attrs["stream"])
    assert stores[True][1]["write_mode"] == ("direct" if takes_o_direct(tmp_path) else "buffered")
    assert stores[False][1]["write_mode"] == "buffered" and stores[False][1]["direct_io_refused"] is None
    shards = {d: sorted((out / "0" / "c").iterdir()) for d, (out, _) in stores.items()}
    assert [p.name for p in shards[True]] == [p.name for p in shards[False]]
    for a, b in zip(shards[True], shards[False]):
        assert (a / "0" / "0").read_bytes() == (b / "0" / "0").read_bytes()
