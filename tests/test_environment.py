"""The locked environment: requirements.lock in step with pyproject.toml, and
its hash in every output's provenance (null when not installed from it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from test_report import make_run

from pipeline.io import open_movie, table_metadata, write_movie, write_table
from pipeline.io import provenance
from pipeline.io.provenance import LOCK_ENV_VAR, LOCK_MARKER, environment_lock_sha256, file_sha256
from pipeline.report import render_run

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / provenance.LOCK_FILE
#: the extras the lock holds (the Makefile's LOCK_EXTRAS)
LOCKED_EXTRAS = ("test", "slurm", "view", "learn")


def parse_lock(text: str) -> dict[str, list[dict]]:
    """name -> its entries: ``{"version", "marker", "hashes"}`` (a universal
    lock may pin a package differently per Python version)."""
    entries: dict[str, list[dict]] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\n", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", first)
        assert match, f"not a pinned requirement: {first!r}"
        entries.setdefault(canonicalize_name(match[1]), []).append(
            {"version": match[2], "marker": match[3], "hashes": re.findall(r"--hash=sha256:([0-9a-f]{64})", block)}
        )
    return entries


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in LOCKED_EXTRAS:
        requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return requirements


def test_the_lock_pins_every_dependency_of_pyproject_with_hashes():
    locked = parse_lock(LOCK.read_text())
    assert len(locked) > 100  # the whole environment, not only the direct dependencies
    for name, entries in locked.items():
        for entry in entries:
            assert entry["hashes"], f"{name}=={entry['version']} has no hash"
    here = default_environment()
    for requirement in pyproject_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} (pyproject.toml) is not in {LOCK.name}: run `make lock`"
        # the pin this interpreter installs satisfies pyproject's range
        pins = [e for e in locked[name] if e["marker"] is None or Marker(e["marker"]).evaluate(here)]
        assert len(pins) == 1, f"{name}: {len(pins)} pins apply to this Python"
        assert requirement.specifier.contains(pins[0]["version"], prereleases=True), (
            f"{name}=={pins[0]['version']} in {LOCK.name} does not satisfy pyproject's {requirement}: run `make lock`"
        )


def test_every_optional_dependency_group_is_locked_or_deliberately_not():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) == set(LOCKED_EXTRAS)
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK_EXTRAS := " + " ".join(f"--extra {e}" for e in LOCKED_EXTRAS) in makefile


def test_the_parser_catches_a_lagging_lock():
    """Negative control: a lock without numpy, or with an unhashed pin, fails."""
    text = LOCK.read_text()
    without = re.sub(r"\nnumpy==[^\n]*(?:\n\s+[^\n]*)*", "", text)
    assert "numpy" not in parse_lock(without)
    with pytest.raises(AssertionError, match="not a pinned"):
        parse_lock("numpy>=2\n")
    assert parse_lock("numpy==2.0\n")["numpy"][0]["hashes"] == []


# -- the hash in the provenance -------------------------------------------------------------


@pytest.fixture
def locked_environment(monkeypatch):
    """This process as if installed from the lock (the variable an image sets)."""
    sha = file_sha256(LOCK)
    monkeypatch.setenv(LOCK_ENV_VAR, sha)
    environment_lock_sha256.cache_clear()
    yield sha
    environment_lock_sha256.cache_clear()


@pytest.fixture
def unlocked_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(LOCK_ENV_VAR, raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # no marker there
    environment_lock_sha256.cache_clear()
    yield
    environment_lock_sha256.cache_clear()


def outputs(tmp_path: Path) -> dict:
    """A table, a movie store, a size summary and a group summary, as the stages write them."""
    from pipeline import size

    write_table(pd.DataFrame({"frame": [0], "y": [1.0], "x": [2.0]}), tmp_path / "features.parquet", stage="locate")
    movie = write_movie(tmp_path / "movie.ome.zarr", np.zeros((2, 4, 4), np.uint8), pixel_size_um=0.1,
                        frame_interval_s=0.1)  # fmt: skip
    recorded = {"table": table_metadata(tmp_path / "features.parquet"), "movie": open_movie(movie.path).attrs}
    runs = [make_run(tmp_path, name, size_outputs=False, seed=seed) for seed, name in enumerate(("r1", "r2"))]
    for run_dir in runs:
        size.run(run_dir / "tracks.parquet", run_dir / "movie.ome.zarr", run_dir / "sizes.parquet",
                 run_dir / "distribution.csv", run_dir / "summary.json", {"n_bootstrap": 20},
                 run_name=run_dir.name)  # fmt: skip
    recorded["sizes"] = table_metadata(runs[0] / "sizes.parquet")
    recorded["summary"] = json.loads((runs[0] / "summary.json").read_text())
    size.run_group("g", [r / "distribution.csv" for r in runs], [r / "summary.json" for r in runs],
                   tmp_path / "g" / "distribution.csv", tmp_path / "g" / "summary.json")  # fmt: skip
    recorded["group"] = json.loads((tmp_path / "g" / "summary.json").read_text())
    recorded["report"] = render_run(runs[0])
    return recorded


def test_outputs_carry_the_locks_hash(locked_environment, tmp_path):
    recorded = outputs(tmp_path)
    for name in ("table", "movie", "sizes", "summary", "group"):
        assert recorded[name]["environment_lock_sha256"] == locked_environment, name
    assert f"<td>{locked_environment}</td>" in recorded["report"]


def test_outputs_say_null_without_a_lock(unlocked_environment, tmp_path):
    """Negative control: an environment not installed from the lock records null, not a guess."""
    recorded = outputs(tmp_path)
    for name in ("table", "movie", "sizes", "summary", "group"):
        assert recorded[name]["environment_lock_sha256"] is None, name
    assert file_sha256(LOCK) not in recorded["report"] and "null (not installed from a lock)" in recorded["report"]


def test_the_install_step_records_the_hash_in_the_environment(unlocked_environment, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from pipeline.io.provenance import _main; "
         f"sys.prefix = {str(tmp_path)!r}; sys.exit(_main(['record', {str(LOCK)!r}]))"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / LOCK_MARKER).read_text().strip() == file_sha256(LOCK)
    assert environment_lock_sha256() == file_sha256(LOCK)  # sys.prefix is tmp_path here too


def test_a_malformed_hash_is_an_error_not_a_provenance(monkeypatch):
    monkeypatch.setenv(LOCK_ENV_VAR, "not-a-hash")
    environment_lock_sha256.cache_clear()
    try:
        with pytest.raises(ValueError, match=LOCK_ENV_VAR):
            environment_lock_sha256()
    finally:
        environment_lock_sha256.cache_clear()
