"""Every store trackflow writes, read by the OME-Zarr reader napari-ome-zarr
uses (the ``ome-zarr`` package) and validated against the NGFF 0.5 models
(``ome-zarr-models``, which ome-zarr depends on): movies (2D, 3D, streamed
through the acquire writer process, with dropped frames) and label stores
(segment, reassign), with their axes, units, scale and pixels.

trackflow writes one resolution level (no pyramid), so each store has one
dataset; the label stores are stand-alone images marked ``image-label``
whose ``source.image`` points at the movie, which ome-zarr opens beneath them.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.io import open_movie, write_movie
from pipeline.io.movie import create_movie
from pipeline.simulate.objects import simulate_objects

from conftest import on_ci

try:
    import ome_zarr.reader as ome_zarr_reader
    from ome_zarr.io import parse_url
except ImportError:  # installed by trackflow[test]: on CI its absence is a failure
    if on_ci():
        raise
    pytest.skip("ome-zarr is not installed (pip install 'trackflow[test]')", allow_module_level=True)

SYNC = {"scheduler": "synchronous"}


def read_nodes(path) -> list:
    """ome-zarr's nodes for a store, as napari-ome-zarr reads them."""
    location = parse_url(str(path), mode="r")
    assert location is not None, f"ome-zarr does not recognise {path} as a Zarr store"
    return list(ome_zarr_reader.Reader(location)())


def check_image(node, movie, *, label: bool) -> None:
    """The node holds the store's image with its axes, units and scale."""
    specs = {type(spec).__name__ for spec in node.specs}
    assert "Multiscales" in specs and (("Label" in specs) == label), specs
    axes = node.metadata["axes"]
    assert [a["name"] for a in axes] == list(movie.axes)
    assert [a["type"] for a in axes] == ["time"] + ["space"] * movie.ndim
    assert [a["unit"] for a in axes] == ["second"] + ["micrometer"] * movie.ndim
    (transforms,) = node.metadata["coordinateTransformations"]  # one resolution level
    assert transforms == [{"type": "scale", "scale": list(movie.scale)}]
    (data,) = node.data
    assert data.shape == movie.array.shape and data.dtype == movie.dtype
    np.testing.assert_array_equal(np.asarray(data), movie.frames())


def validate(path, *, label: bool) -> None:
    """NGFF 0.5 validation by ome-zarr-models (what the spec's schemas say)."""
    import zarr
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    (ImageLabel if label else Image).from_zarr(zarr.open_group(str(path), mode="r"))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Every kind of store, written by trackflow's own functions."""
    from pipeline import acquire, reassign, segment

    root = tmp_path_factory.mktemp("ome")
    made = {}
    frames2d, _, _ = simulate_objects(shape=(40, 48), n_frames=6, n_objects=3, pixel_size_um=0.2, seed=1)
    made["movie_2d"] = write_movie(root / "2d" / "movie.ome.zarr", frames2d, pixel_size_um=0.2,
                                   frame_interval_s=0.1, frames_per_shard=4)  # fmt: skip
    made["labels_2d"] = segment.run(made["movie_2d"].path, root / "2d" / "labels.ome.zarr", {}, compute=SYNC)
    reassign.run(made["movie_2d"].path, made["labels_2d"].path, root / "2d" / "reassigned.ome.zarr",
                 root / "2d" / "objects.parquet", {})  # fmt: skip
    made["reassigned_2d"] = open_movie(root / "2d" / "reassigned.ome.zarr")
    frames3d, _, _ = simulate_objects(shape=(10, 32, 32), n_frames=4, n_objects=3, seed=2)
    made["movie_3d"] = write_movie(root / "3d" / "movie.ome.zarr", frames3d, pixel_size_um=(0.5, 0.2, 0.2),
                                   frame_interval_s=0.25, frames_per_shard=3)  # fmt: skip
    made["labels_3d"] = segment.run(made["movie_3d"].path, root / "3d" / "labels.ome.zarr",
                                    {"sigma": [0.4, 1.0, 1.0]}, compute=SYNC)  # fmt: skip
    # through the ZeroMQ writer process, as the workflow acquires
    source = {"kind": "simulated", "shape": [32, 40], "n_frames": 10, "seed": 3}
    acquire.run(source, root / "sim" / "movie.ome.zarr", {"frames_per_shard": 4}, truth=root / "sim" / "truth.parquet")
    made["acquired"] = open_movie(root / "sim" / "movie.ome.zarr")
    # frames that never arrived: left unwritten, read as zeros
    writer = create_movie(root / "gaps" / "movie.ome.zarr", (16, 16), np.uint16, pixel_size_um=(0.3, 0.2),
                          frame_interval_s=0.05, frames_per_shard=2)  # fmt: skip
    with writer:
        for i in (0, 1, 4, 5):
            writer.write(i, np.full((16, 16), i + 1, np.uint16))
    writer.close(n_frames=7)
    made["dropped"] = open_movie(root / "gaps" / "movie.ome.zarr")
    return made


@pytest.mark.parametrize("name", ["movie_2d", "movie_3d", "acquired", "dropped"])
def test_ome_zarr_reads_every_movie(stores, name):
    movie = stores[name]
    (node,) = read_nodes(movie.path)
    assert node.visible
    check_image(node, movie, label=False)
    validate(movie.path, label=False)


@pytest.mark.parametrize("name", ["labels_2d", "labels_3d", "reassigned_2d"])
def test_ome_zarr_reads_label_stores_with_their_movie_beneath(stores, name):
    labels = stores[name]
    nodes = read_nodes(labels.path)
    # the movie named by image-label's source, hidden, then the labels
    assert len(nodes) == 2
    movie_node, label_node = nodes
    movie = open_movie(labels.path.parent / "movie.ome.zarr")
    assert not movie_node.visible and label_node.visible
    check_image(movie_node, movie, label=False)
    check_image(label_node, labels, label=True)
    assert labels.frames().max() > 0  # objects were found: the comparison means something
    validate(labels.path, label=True)


def test_a_store_without_ome_metadata_is_refused(stores, tmp_path):
    """Negative control: the same store without its 'ome' attributes is no
    OME-Zarr image to either reader or validator."""
    broken = tmp_path / "movie.ome.zarr"
    shutil.copytree(stores["movie_2d"].path, broken)
    meta = json.loads((broken / "zarr.json").read_text())
    del meta["attributes"]["ome"]
    (broken / "zarr.json").write_text(json.dumps(meta))
    nodes = read_nodes(broken)
    assert not any(type(spec).__name__ == "Multiscales" for node in nodes for spec in node.specs)
    with pytest.raises(Exception):
        validate(broken, label=False)
