"""config.yaml and runs.tsv: validation against the workflow's schemas,
defaults, per-run overrides, and the errors that name the bad key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser, main as cli_main, stage_params as cli_stage_params
from pipeline.io.config import (
    RUN_SECTIONS,
    SCHEMA_DIR,
    STAGE_SECTIONS,
    ConfigError,
    canonical,
    load_config,
    load_runs,
    source_files,
    source_spec,
    stage_params,
    validate_config,
)
from pipeline.io.schema import with_key_reference

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "config.yaml"
RUNS = REPO / "config" / "runs.tsv"
SECTIONS = (*STAGE_SECTIONS, "compute", "resources")


def section_schema(section: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / f"{section}.schema.yaml").read_text())


def defaults_of(schema: dict) -> dict:
    return {k: v["default"] for k, v in (schema.get("properties") or {}).items() if "default" in v}


def write_runs(path: Path, *rows: str, header: str = "run\tsource\tgroup\tsettings\toverrides") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(CONFIG)


# -- schemas ------------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
def test_every_section_schema_rejects_unknown_keys(section):
    schema = section_schema(section)
    assert schema.get("type") == "object"
    assert schema.get("additionalProperties") is False, f"{section}.schema.yaml lets unknown keys through"


@pytest.mark.parametrize("name", ["config", "runs"])
def test_top_level_schemas_reject_unknown_keys(name):
    schema = yaml.safe_load((SCHEMA_DIR / f"{name}.schema.yaml").read_text())
    assert schema["additionalProperties"] is False
    if name == "runs":
        assert schema["properties"]["overrides"]["additionalProperties"] is False


# -- config.yaml ----------------------------------------------------------------


def test_shipped_config_is_valid_and_complete(config):
    assert set(SECTIONS) <= set(config)
    assert config["runs"] == "config/runs.tsv" and config["results"] == "results"
    # every default of every section schema is filled in (from the $ref'd files)
    for section in SECTIONS:
        for key, value in defaults_of(section_schema(section)).items():
            assert key in config[section], f"default of {section}.{key} not filled in"
    shipped = yaml.safe_load(CONFIG.read_text())
    for section, values in shipped.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert config[section][key] == value  # given values win over defaults


def test_empty_config_is_all_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("")
    config = load_config(path)
    assert config["runs"] == "config/runs.tsv"
    for section in SECTIONS:
        for key, default in defaults_of(section_schema(section)).items():
            if isinstance(default, dict):  # nested defaults are filled in too
                assert default.items() <= config[section][key].items()
            else:
                assert config[section][key] == default, f"{section}.{key}"
    assert config["compute"]["slurm"]["jobs"] == 1  # a default inside a nested object


def test_validation_does_not_change_the_input_or_the_schema():
    given = {"link": {"memory": 1}}
    first = validate_config(given)
    assert given == {"link": {"memory": 1}}
    first["link"]["flow"]["x"] = 1  # a filled-in default is a copy, not the schema's object
    assert validate_config({})["link"]["flow"] == defaults_of(section_schema("link")["properties"]["flow"])


@pytest.mark.parametrize(
    "text, named",
    [
        ("link:\n  serch_range: 5\n", "'link.serch_range'"),
        ("lnk:\n  search_range: 5\n", "'lnk'"),
        ("link:\n  memory: three\n", "link.memory"),
        ("link:\n  memory: -1\n", "link.memory"),
        ("compute:\n  threads: 0\n", "compute.threads"),
        ("results: 3\n", "results"),
    ],
)
def test_bad_key_or_type_names_the_key(tmp_path, text, named):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert named in message and str(path) in message


def test_unreadable_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("link: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_cli_config_option_reads_the_validated_section(config):
    parser = build_parser()
    args = parser.parse_args(["link", "f.parquet", "-o", "t.parquet", "--config", str(CONFIG), "--set", "memory=1"])
    params = cli_stage_params(args, "link")
    assert params["memory"] == 1
    assert params["search_range"] == config["link"]["search_range"]
    assert set(params) == set(config["link"])


# -- runs.tsv -------------------------------------------------------------------


def test_shipped_runs_are_valid(config):
    runs = load_runs(RUNS, config)
    assert len(runs) >= 3
    assert len({r["run"] for r in runs}) == len(runs)
    for run in runs:
        assert run["kind"] == "simulated"
        spec = source_spec(run)
        assert spec["kind"] == "simulated" and "path" not in spec


def test_runs_columns_settings_overrides_and_kinds(tmp_path, config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "frames").mkdir()
    for i in range(3):
        (tmp_path / "frames" / f"f{i}.png").write_bytes(b"")
    (tmp_path / "stack.tif").write_bytes(b"")
    (tmp_path / "old.ome.zarr").mkdir()
    path = write_runs(
        tmp_path / "runs.tsv",
        "# a comment line",
        "a\tsimulated\treps\t{diameters_nm: [100], n_frames: 40, seed: 1}\t{link: {memory: 1}}",
        "b\tsimulated\treps\t{seed: 2}\t",
        "c\tframes/*.png\t\t{channel: 1, pixel_size_um: 0.3509, frame_interval_s: 0.04}\t",
        "d\tframes\t\t{pixel_size_um: 0.1, frame_interval_s: 0.1}\t",
        "e\tstack.tif\t\t{pixel_size_um: 0.1, frame_interval_s: 0.1}\t",
        "f\told.ome.zarr/\t\t{pixel_size_um: 0.1, frame_interval_s: 0.1}\t",
        "g\tframes/f0.png\t\t{kind: tiff, pixel_size_um: 0.1, frame_interval_s: 0.1}\t",
    )
    runs = {r["run"]: r for r in load_runs(path, config)}
    assert list(runs) == list("abcdefg")
    assert runs["a"]["settings"] == {"diameters_nm": [100], "n_frames": 40, "seed": 1}
    assert runs["a"]["overrides"] == {"link": {"memory": 1}}
    assert runs["a"]["group"] == runs["b"]["group"] == "reps"
    assert runs["c"]["group"] is None and runs["c"]["overrides"] == {}
    kinds = {name: run["kind"] for name, run in runs.items()}
    assert kinds == dict(a="simulated", b="simulated", c="images", d="images", e="tiff", f="zarr", g="tiff")
    # relative paths resolve against the working directory
    assert source_files(runs["c"]) == [f"frames/f{i}.png" for i in range(3)]
    assert source_files(runs["d"]) == [f"frames/f{i}.png" for i in range(3)]
    assert source_files(runs["f"]) == ["old.ome.zarr"]
    assert source_spec(runs["c"]) == {
        "kind": "images", "path": "frames/*.png", "channel": 1, "pixel_size_um": 0.3509, "frame_interval_s": 0.04
    }


def test_bulk_water_sequence_is_found(tmp_path, config, monkeypatch, bulk_water_dir):
    monkeypatch.chdir(REPO)  # the documented relative path is from the project directory
    path = write_runs(
        tmp_path / "runs.tsv",
        "water\t../shared/data/bulk_water/*.png\t\t{channel: 1, pixel_size_um: 0.3509, frame_interval_s: 0.041667}\t",
    )
    (run,) = load_runs(path, config)
    files = source_files(run)
    assert len(files) == 40 and files[0].endswith("bulk_water_000.png")


@pytest.mark.parametrize(
    "row, named",
    [
        ("a\tsimulated\t\t\t{link: {memroy: 1}}", ["run 'a'", "link", "'memroy'"]),
        ("a\tsimulated\t\t\t{link: {memory: many}}", ["run 'a'", "link", "memory"]),
        ("a\tsimulated\t\t\t{lnik: {memory: 1}}", ["run 'a'", "'overrides.lnik'"]),
        ("a\tsimulated\t\t\t{report: {}}", ["run 'a'", "'overrides.report'"]),
        ("a\tsimulated\t\t{seed: 1\t", ["run 'a'", "settings"]),
        ("a\tsimulated\t\t[1, 2]\t", ["run 'a'", "settings", "mapping"]),
        ("a b\tsimulated\t\t\t", ["run 'a b'", "run"]),
        ("groups\tsimulated\t\t\t", ["run 'groups'"]),
        ("a\t\t\t\t", ["run 'a'", "source"]),
        ("a\tmovie.avi\t\t\t", ["run 'a'", "movie.avi", "kind"]),
        ("a\tframes.tif\t\t{kind: simulated}\t", ["run 'a'", "kind"]),
        ("a\tframes.tif\t\t{pixel_size_um: 0.1}\t", ["run 'a'", "'frame_interval_s'", "physical scale"]),
    ],
)
def test_bad_run_names_run_and_key(tmp_path, config, row, named):
    path = write_runs(tmp_path / "runs.tsv", row)
    with pytest.raises(ConfigError) as err:
        load_runs(path, config)
    for part in named:
        assert part in str(err.value), (part, str(err.value))


def test_table_level_errors(tmp_path, config):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        load_runs(tmp_path / "missing.tsv", config)
    dup = write_runs(tmp_path / "dup.tsv", "a\tsimulated\t\t\t", "a\tsimulated\t\t\t")
    with pytest.raises(ConfigError, match="'a' appears twice"):
        load_runs(dup, config)
    extra_column = write_runs(tmp_path / "col.tsv", "a\tsimulated\tx", header="run\tsource\tcolour")
    with pytest.raises(ConfigError, match="colour"):
        load_runs(extra_column, config)
    no_source = write_runs(tmp_path / "nosrc.tsv", "a", header="run")
    with pytest.raises(ConfigError, match="'source'"):
        load_runs(no_source, config)
    too_many = write_runs(tmp_path / "cells.tsv", "a\tsimulated\t\t\t\textra")
    with pytest.raises(ConfigError, match="more cells"):
        load_runs(too_many, config)
    empty = write_runs(tmp_path / "empty.tsv")
    with pytest.raises(ConfigError, match="no runs"):
        load_runs(empty, config)
    group_is_run = write_runs(tmp_path / "g.tsv", "a\tsimulated\ta\t\t")
    with pytest.raises(ConfigError, match="group 'a'"):
        load_runs(group_is_run, config)


def test_replicates_must_agree_on_size_params(tmp_path, config):
    size_keys = list(section_schema("size")["properties"])
    key = next(k for k in size_keys if section_schema("size")["properties"][k].get("type") == "integer")
    path = write_runs(
        tmp_path / "runs.tsv", "a\tsimulated\tg\t\t", f"b\tsimulated\tg\t\t{{size: {{{key}: 7}}}}"
    )
    with pytest.raises(ConfigError, match="group 'g'"):
        load_runs(path, config)


# -- stage params -----------------------------------------------------------------


def test_stage_params_merge_overrides_without_touching_config(tmp_path, config):
    path = write_runs(
        tmp_path / "runs.tsv",
        "a\tsimulated\t\t\t{link: {memory: 1, flow: {gate: 3}}}",
        "b\tsimulated\t\t\t",
    )
    a, b = load_runs(path, config)
    before = copy.deepcopy(config)
    merged = stage_params(config, a, "link")
    assert merged["memory"] == 1 and merged["flow"] == {**config["link"]["flow"], "gate": 3}
    assert merged["search_range"] == config["link"]["search_range"]
    assert config == before
    assert stage_params(config, b, "link") == canonical(config["link"])
    assert list(merged) == sorted(merged)  # a stable repr for Snakemake's params trigger
    with pytest.raises(ConfigError, match="'lnik'"):
        stage_params(config, a, "lnik")
    assert set(RUN_SECTIONS) < set(STAGE_SECTIONS)


# -- docs -------------------------------------------------------------------------


def test_every_key_has_a_default_and_a_description():
    """The schemas are the one home of each key's default and meaning, so none may lack them."""
    lacking = []
    for section in SECTIONS:
        schema = section_schema(section)
        for key, sub in schema.get("properties", {}).items():
            nested = sub.get("properties", {}) if sub.get("type") == "object" else {}
            for name, spec in [(key, sub), *((f"{key}.{k}", v) for k, v in nested.items())]:
                if "default" not in spec or not spec.get("description"):
                    lacking.append(f"{section}.{name}")
    assert not lacking, f"keys without a default or a description: {lacking}"


def test_readme_key_tables_are_generated_from_the_schemas(capsys):
    readme = REPO / "config" / "README.md"
    assert cli_main(["config-keys", "--check", str(readme)]) == 0, "config/README.md is stale: run `make docs`"
    stale = readme.read_text().replace("| `link.memory` | integer ≥ 0 | `3` |", "| `link.memory` | integer ≥ 0 | `4` |")
    assert stale != readme.read_text()
    assert with_key_reference(stale) == readme.read_text()
    assert cli_main(["config-keys"]) == 0
    assert "| `locate.diameter` |" in capsys.readouterr().out
