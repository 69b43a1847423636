"""The workflow's configuration: ``config.yaml`` and ``runs.tsv``.

Both are validated against the JSON schemas in ``workflow/schemas/`` (the
same files Snakemake validates with), with defaults filled in. A wrong key or
type is an error that names the file, the run and the key; unknown keys are
errors, never ignored.

``runs.tsv`` holds one row per run, tab-separated, with a header naming its
columns:

``run``
    Run id; outputs go to ``{results}/{run}/``.
``source``
    ``simulated`` or a path: a glob or directory of images, a ``.tif`` stack,
    a ``.zarr`` store, or a ``.geff`` store of tracks made by another tracker
    (its run skips acquire, locate, refine and link). Relative paths resolve
    against the directory Snakemake (or the caller) runs in, not against the
    TSV's directory.
``group`` (optional)
    Replicate group; runs of a group are merged into ``{results}/groups/{group}/``.
``settings`` (optional)
    A YAML flow mapping of source settings, e.g.
    ``{diameters_nm: [100], n_frames: 150, seed: 1}`` or
    ``{channel: 1, pixel_size_um: 0.3509, frame_interval_s: 0.041667}``; for
    a geff store the keys of :data:`pipeline.io.geff.GEFF_SETTINGS`.
``overrides`` (optional)
    A YAML flow mapping of stage keys for this run only, e.g.
    ``{locate: {minmass: 30}}``.

Empty cells and lines starting with ``#`` are allowed.
"""

from __future__ import annotations

import copy
import csv
import glob
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .geff import GEFF_SETTINGS
from .schema import SCHEMA_DIR, ConfigError, read_yaml as _read_yaml, validate as _validate

__all__ = [
    "ConfigError",
    "SCHEMA_DIR",
    "STAGE_SECTIONS",
    "RUN_SECTIONS",
    "RUN_COLUMNS",
    "load_config",
    "validate_config",
    "load_runs",
    "parse_runs",
    "stage_params",
    "group_params",
    "source_spec",
    "source_files",
    "canonical",
    "deep_merge",
    "infer_kind",
]

STAGE_SECTIONS = ("acquire", "locate", "refine", "link", "segment", "reassign", "size", "report")
# sections a run may override (the report covers all runs, so it has none)
RUN_SECTIONS = ("acquire", "locate", "refine", "link", "segment", "reassign", "size")
RUN_COLUMNS = ("run", "source", "group", "settings", "overrides")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


# ---------------------------------------------------------------------------
# config.yaml
# ---------------------------------------------------------------------------


def validate_config(config: Mapping[str, Any], *, source: str = "config", schema_dir=None) -> dict:
    """Validate a config dict against ``config.schema.yaml`` and return a
    copy with every default filled in.

    Raises
    ------
    ConfigError
        Naming the offending key, e.g. ``config.yaml: unknown key 'locate.minmas'``.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(config).__name__}")
    return _validate(dict(config), "config.schema.yaml", source, schema_dir=schema_dir)


def load_config(path: str | os.PathLike, *, schema_dir=None) -> dict:
    """Read ``config.yaml``, validate it and fill in the defaults.

    Parameters
    ----------
    path : path-like
        The YAML file. An empty file is the all-defaults config.
    schema_dir : path-like, optional
        Where the schemas are; by default the project's ``workflow/schemas``.
    """
    path = Path(path)
    config = _read_yaml(path, "config file")
    return validate_config(config or {}, source=str(path), schema_dir=schema_dir)


# ---------------------------------------------------------------------------
# runs.tsv
# ---------------------------------------------------------------------------


def _flow_mapping(text: str, where: str) -> dict:
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not a YAML mapping ({exc})") from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a YAML mapping like {{key: value}}, got {text!r}")
    return value


def infer_kind(source: str) -> str:
    """The kind of a source: ``simulated``, ``zarr``, ``tiff``, ``images`` or
    ``geff`` (tracks, not a movie)."""
    if source == "simulated":
        return "simulated"
    stripped = source.rstrip("/")
    lower = stripped.lower()
    if lower.endswith(".geff"):
        return "geff"
    if lower.endswith(".zarr"):
        return "zarr"
    if glob.has_magic(stripped) or os.path.isdir(stripped):
        return "images"
    if lower.endswith((".tif", ".tiff")):
        return "tiff"
    if lower.endswith(_IMAGE_SUFFIXES):
        return "images"
    raise ConfigError(
        f"cannot tell the kind of source {source!r}: give 'simulated', a glob or directory of "
        "images, a .tif stack, a .zarr store or a .geff store of tracks, or set 'kind' in the run's settings"
    )


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """``base`` updated by ``override``; nested mappings merge, anything else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_runs(rows: Iterable[Mapping[str, str]], config: Mapping[str, Any], *, source: str = "runs",
               schema_dir=None) -> list[dict]:
    """Validate parsed rows of ``runs.tsv`` (see :func:`load_runs`)."""
    runs: list[dict] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        unknown = sorted(set(row) - set(RUN_COLUMNS))
        if unknown:
            raise ConfigError(f"{source}: unknown column(s) {unknown} (allowed: {', '.join(RUN_COLUMNS)})")
        name = (row.get("run") or "").strip()
        label = f"{source}: run {name!r}" if name else f"{source}: row {number}"
        # empty cells are absent keys, so the schema's defaults apply
        record: dict[str, Any] = {}
        for key in ("run", "source", "group"):
            if (row.get(key) or "").strip():
                record[key] = row[key].strip()
        record["settings"] = _flow_mapping(row.get("settings") or "", f"{label}: settings")
        record["overrides"] = _flow_mapping(row.get("overrides") or "", f"{label}: overrides")
        record = _validate(record, "runs.schema.yaml", label, schema_dir=schema_dir)
        if record["run"] in seen:
            raise ConfigError(f"{source}: run {record['run']!r} appears twice")
        seen.add(record["run"])
        kind = record["settings"].get("kind")
        if kind is None:
            try:
                kind = infer_kind(record["source"])
            except ConfigError as exc:
                raise ConfigError(f"{label}: {exc}") from None
        if (kind == "simulated") != (record["source"] == "simulated"):
            raise ConfigError(f"{label}: settings.kind {kind!r} does not fit source {record['source']!r}")
        record["kind"] = kind
        if kind == "geff":
            _check_geff_run(record, label)
        if kind != "simulated":
            # files carry no trustworthy physical scale: say so before any job runs
            missing = [k for k in ("pixel_size_um", "frame_interval_s") if record["settings"].get(k) is None]
            if missing:
                raise ConfigError(
                    f"{label}: settings lack {', '.join(repr(k) for k in missing)} (a {kind} source carries no "
                    "physical scale), e.g. {pixel_size_um: 0.35, frame_interval_s: 0.0417}"
                )
        # every overridden section must still be a valid section once merged
        for section, override in record["overrides"].items():
            _validate(
                deep_merge(config.get(section) or {}, override),
                f"{section}.schema.yaml",
                f"{label}: overrides: {section}",
                schema_dir=schema_dir,
            )
        runs.append(record)
    if not runs:
        raise ConfigError(f"{source}: no runs (add one row per movie)")
    groups = {}
    for run in runs:
        if run["group"] is not None:
            groups.setdefault(run["group"], []).append(run)
    names = {run["run"] for run in runs}
    for group, members in groups.items():
        if group in names:
            raise ConfigError(f"{source}: group {group!r} has the same name as a run")
        group_params(config, members)  # the members must agree on their size keys
    return runs


def _check_geff_run(record: Mapping[str, Any], label: str) -> None:
    """A run whose tracks come from a geff store: its settings are the
    physical conditions (:data:`GEFF_SETTINGS`), and only the size stage
    runs on it, so it can override only ``size``."""
    unknown = sorted(set(record["settings"]) - set(GEFF_SETTINGS) - {"kind"})
    if unknown:
        raise ConfigError(f"{label}: settings: unknown key(s) {unknown} for a geff source "
                          f"(allowed: {', '.join(GEFF_SETTINGS)})")
    for key in ("space_unit", "time_unit"):
        if record["settings"].get(key) is not None and not isinstance(record["settings"][key], str):
            raise ConfigError(f"{label}: settings: {key} must be a unit name, got {record['settings'][key]!r}")
    stages = sorted(set(record["overrides"]) - {"size"})
    if stages:
        raise ConfigError(f"{label}: overrides: {', '.join(stages)}: a geff source's tracks are sized as they "
                          "are (only size runs on them)")


def load_runs(path: str | os.PathLike, config: Mapping[str, Any], *, schema_dir=None) -> list[dict]:
    """Read and validate ``runs.tsv``.

    Parameters
    ----------
    path : path-like
        The TSV file (columns ``run``, ``source`` and optionally ``group``,
        ``settings``, ``overrides``).
    config : mapping
        The validated config: override sections are validated merged with it.

    Returns
    -------
    list of dict
        One per run, in file order: ``run``, ``source`` (as written; relative
        paths resolve against the working directory), ``kind``
        (``simulated``/``images``/``tiff``/``zarr``/``geff``), ``group`` (or None),
        ``settings`` and ``overrides`` (dicts).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            lines = [line for line in fh if line.strip() and not line.lstrip().startswith("#")]
    except FileNotFoundError:
        raise FileNotFoundError(f"runs table {path} does not exist (config key 'runs')") from None
    if not lines:
        raise ConfigError(f"{path}: empty; expected a header line and one row per run")
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
    header = [h.strip() for h in (reader.fieldnames or [])]
    for required in ("run", "source"):
        if required not in header:
            raise ConfigError(f"{path}: header lacks the column {required!r} (columns: {header})")
    rows = []
    for row in reader:
        if None in row:  # more cells than header columns
            raise ConfigError(
                f"{path}: row {reader.line_num - 1} has more cells than the header "
                f"(a tab inside a settings mapping?): {row[None]}"
            )
        rows.append({k.strip(): (v or "") for k, v in row.items()})
    return parse_runs(rows, config, source=str(path), schema_dir=schema_dir)


# ---------------------------------------------------------------------------
# what a rule needs
# ---------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """Mappings with sorted keys, recursively: a stable ``repr`` for
    Snakemake's params trigger regardless of the order keys were merged in."""
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def stage_params(config: Mapping[str, Any], run: Mapping[str, Any] | None, section: str) -> dict:
    """The stage's config section merged with the run's overrides of it.

    Parameters
    ----------
    config : mapping
        The validated config.
    run : mapping or None
        A run from :func:`load_runs` (None: the section alone).
    section : str
        One of :data:`STAGE_SECTIONS`.
    """
    if section not in STAGE_SECTIONS:
        raise ConfigError(f"unknown stage section {section!r} (sections: {', '.join(STAGE_SECTIONS)})")
    params = dict(config.get(section) or {})
    if run is not None:
        params = deep_merge(params, (run.get("overrides") or {}).get(section) or {})
    return canonical(params)


def group_params(config: Mapping[str, Any], members: Iterable[Mapping[str, Any]]) -> dict:
    """The ``size`` params of a replicate group: its runs must agree on them."""
    members = list(members)
    by_run = {m["run"]: stage_params(config, m, "size") for m in members}
    first = next(iter(by_run.values()))
    differing = [run for run, p in by_run.items() if p != first]
    if differing:
        group = members[0].get("group")
        raise ConfigError(
            f"runs of group {group!r} have different 'size' overrides ({', '.join(sorted(by_run))}); "
            "replicates are merged with one set of size parameters"
        )
    return first


def source_spec(run: Mapping[str, Any]) -> dict:
    """The ``source`` argument of ``pipeline.acquire.run`` for a run:
    ``{"kind": ..., "path": ... (not for simulated), **settings}``."""
    spec = {"kind": run["kind"]}
    if run["kind"] != "simulated":
        spec["path"] = run["source"]
    spec.update({k: v for k, v in (run.get("settings") or {}).items() if k != "kind"})
    return canonical(spec)


def source_files(run: Mapping[str, Any]) -> list[str]:
    """Input files of a file-based run (for Snakemake's input and mtime
    triggers): the glob's or directory's images, the TIFF, or the Zarr store.
    A source that matches nothing is an error naming the run and path."""
    if run["kind"] == "simulated":
        return []
    path = run["source"]
    if run["kind"] == "images":
        pattern = path
        if not glob.has_magic(path):
            pattern = os.path.join(path, "*")
        files = sorted(
            f for f in glob.glob(pattern) if f.lower().endswith(_IMAGE_SUFFIXES) and os.path.isfile(f)
        )
        if not files:
            raise ConfigError(f"run {run['run']!r}: source {path!r} matches no image files")
        return files
    if not os.path.exists(path):
        raise ConfigError(f"run {run['run']!r}: source {path!r} does not exist")
    return [path.rstrip("/")]
