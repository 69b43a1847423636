"""The parameter schemas: one home for each key's default, type, range and
description.

Every section of ``config.yaml`` (a stage's parameters, ``compute``,
``resources``) is described by ``workflow/schemas/<section>.schema.yaml``.
That file is the only place a key's default, type, range and description
are written: the workflow validates ``config.yaml`` and ``runs.tsv`` against
it, each stage's ``run`` checks its section against it (:func:`check_section`,
defaults filled in), library functions take their keyword defaults from it
(:func:`section_defaults`), and the key tables of ``config/README.md`` are
generated from it (:func:`key_reference`; ``make docs``).

Why the schema and not the function signatures: users write YAML, Snakemake
and editors understand JSON schema, and a schema says what a signature
cannot (ranges, enums, per-axis lists, nested sections) in a form every
entry point (rule, command line, Python) can check the same way. Checks a
schema cannot express (one value per axis of *this* movie, a grid's lower
end below its upper end) stay in the stage that knows them.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import yaml

__all__ = [
    "SCHEMA_DIR",
    "ConfigError",
    "check_section",
    "section_defaults",
    "section_schema",
    "validate",
    "key_reference",
    "with_key_reference",
]

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"


class ConfigError(ValueError):
    """A configuration or a stage's parameters are malformed; the message
    names the file, run or section, and the key."""


def read_yaml(path: Path, what: str) -> Any:
    """``path`` parsed as YAML; a missing file or bad YAML names the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def module_available(name: str) -> bool:
    """Whether the module ``name`` can be imported (found, not imported)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _needs_extra(validator, needs, instance, schema):
    """The schema keyword ``x-needs-extra``: ``{value: {extra, modules}}``; a
    value whose modules are not installed is an error naming the optional
    extra that brings them (``locate.method: learned`` needs ``trackflow[learn]``)."""
    from jsonschema import ValidationError

    if not isinstance(instance, str) or instance not in needs:
        return
    wanted = needs[instance]
    missing = [m for m in wanted.get("modules", ()) if not module_available(m)]
    if missing:
        extra = wanted["extra"]
        yield ValidationError(
            f"{instance!r} needs the optional extra trackflow[{extra}] ({', '.join(missing)} not installed): "
            f"pip install 'trackflow[{extra}]' (make install and make test install it)"
        )


def _is_integer(checker, instance) -> bool:
    # numpy scalars and integral floats (1.0) count, as in JSON; bool does not
    if isinstance(instance, (bool, np.bool_)):
        return False
    if isinstance(instance, (Integral, np.integer)):
        return True
    return isinstance(instance, (float, np.floating)) and float(instance).is_integer()


def _is_number(checker, instance) -> bool:
    return isinstance(instance, (Real, np.number)) and not isinstance(instance, (bool, np.bool_))


def _is_boolean(checker, instance) -> bool:
    return isinstance(instance, (bool, np.bool_))


def _is_array(checker, instance) -> bool:
    # a tuple or an array from Python code is a list in YAML
    return isinstance(instance, (list, tuple)) or (isinstance(instance, np.ndarray) and instance.ndim == 1)


@lru_cache(maxsize=None)
def _validators(schema_dir: str, name: str):
    """The schema ``schema_dir/name`` with a registry resolving its relative
    ``$ref``s, a validator class that fills in defaults, and a plain one.
    Both accept numpy scalars and tuples where JSON has numbers, booleans and arrays."""
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    base = Path(schema_dir)

    def retrieve(uri: str) -> Resource:
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        path = Path(url2pathname(urlparse(uri).path))
        if not path.exists():
            raise ConfigError(f"schema {path} (referenced from {base / name}) does not exist")
        contents = read_yaml(path, "schema")
        # Without its "$schema", a referenced schema is checked by the
        # default-filling class below; with it, jsonschema switches to the
        # plain validator and nested defaults are silently not filled (this
        # is why snakemake.utils.validate cannot be used here).
        contents.pop("$schema", None)
        return Resource(contents=contents, specification=DRAFT202012)

    schema = read_yaml(base / name, "schema")
    schema["$id"] = (base / name).resolve().as_uri()
    registry = Registry(retrieve=retrieve)
    types = Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_number, "boolean": _is_boolean, "array": _is_array}
    )
    plain = validators.extend(Draft202012Validator, type_checker=types)
    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub:
                    # a copy: filling nested defaults must not change the schema
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    plain = validators.extend(plain, {"x-needs-extra": _needs_extra})
    filling = validators.extend(plain, {"properties": fill_defaults})
    return schema, registry, filling, plain


def _format_error(error, prefix: str, defs: Mapping[str, Any]) -> list[str]:
    path = ".".join([prefix, *map(str, error.absolute_path)] if prefix else map(str, error.absolute_path))
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted((error.schema.get("properties") or {}).keys())
        unknown = sorted(set(error.instance) - set(allowed), key=str)
        hint = f"allowed: {', '.join(allowed)}" if allowed else "this section takes no keys"
        if prefix:
            # a stage's own section: "size.grid_pionts: unknown key 'grid_pionts'"
            return [f"{path}.{key}: unknown key '{key}' ({hint})" for key in unknown]
        keys = ", ".join(repr(f"{path}.{k}" if path else k) for k in unknown)
        return [f"unknown key {keys} ({hint})"]
    if error.validator in ("oneOf", "anyOf"):
        # "is not valid under any of the given schemas" says nothing: name what was expected
        try:
            expected = _type_text(error.schema, defs)
        except KeyError:  # validating config.yaml: the $ref points into the section's own file
            try:
                section_defs = section_schema(str(error.absolute_path[0])).get("$defs") or {}
                expected = _type_text(error.schema, section_defs)
            except (IndexError, KeyError, FileNotFoundError, ConfigError):
                return [f"{path or '(top level)'}: {error.message}"]
        return [f"{path or '(top level)'}: {_short_repr(error.instance)} is not valid; expected {expected}"]
    return [f"{path or '(top level)'}: {error.message}"]


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate(instance: Any, schema_name: str, what: str | None, *, fill: bool = True, schema_dir=None,
             prefix: str = "") -> Any:
    """Validate ``instance`` against ``schema_dir/schema_name``.

    Returns a copy with the defaults filled in (``fill``). Every problem is
    raised at once, as one :class:`ConfigError` beginning with ``what`` (if
    given), each naming its key (``prefix`` is put before the keys' paths).
    """
    schema, registry, filling, plain = _validators(str(schema_dir or SCHEMA_DIR), schema_name)
    instance = copy.deepcopy(instance)
    cls = filling if fill else plain
    errors = sorted(cls(schema, registry=registry).iter_errors(instance),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        defs = schema.get("$defs") or {}
        lines = [line for error in errors for line in _format_error(error, prefix, defs)]
        raise ConfigError((f"{what}: " if what else "") + "; ".join(dict.fromkeys(lines)))
    return instance


def section_schema(section: str, *, schema_dir=None) -> dict:
    """The schema of one section (``locate``, ``size``, ``compute``, ...)."""
    return copy.deepcopy(_validators(str(schema_dir or SCHEMA_DIR), f"{section}.schema.yaml")[0])


def check_section(section: str, params: Mapping[str, Any] | None = None, *, fill: bool = True,
                  schema_dir=None) -> dict[str, Any]:
    """A section's parameters, checked against its schema, defaults filled in.

    Parameters
    ----------
    section : str
        ``acquire``, ``locate``, ``refine``, ``link``, ``segment``,
        ``reassign``, ``size``, ``report``, ``compute`` or ``resources``.
    params : mapping, optional
        The section as given (missing keys take their defaults).
    fill : bool
        Fill in the defaults of missing keys (else only check what is given).

    Returns
    -------
    dict
        A new dict, keys in the schema's order; ``params`` is not changed.

    Raises
    ------
    ConfigError
        Naming every bad key, e.g. ``size.grid_pionts: unknown key
        'grid_pionts' (allowed: ...)`` or ``link.memory: 'three' is not of
        type 'integer'``.
    """
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{section}: expected a mapping of keys, got {type(params).__name__}")
    checked = validate(dict(params or {}), f"{section}.schema.yaml", None, fill=fill, schema_dir=schema_dir,
                       prefix=section)
    # the schema's order, whatever order the keys came in: provenance reads alike for every run
    order = _validators(str(schema_dir or SCHEMA_DIR), f"{section}.schema.yaml")[0].get("properties") or {}
    return {**{key: checked[key] for key in order if key in checked}, **checked}


@lru_cache(maxsize=None)
def _defaults(section: str, schema_dir: str | None) -> str:
    return json.dumps(check_section(section, {}, schema_dir=schema_dir))


def section_defaults(section: str, *, schema_dir=None) -> dict[str, Any]:
    """Every key of a section with its default (nested sections filled in);
    a fresh dict on every call."""
    return json.loads(_defaults(section, None if schema_dir is None else str(schema_dir)))


# ---------------------------------------------------------------------------
# config/README.md's key tables
# ---------------------------------------------------------------------------


#: The part of config/README.md that :func:`key_reference` writes.
GENERATED_BEGIN = "<!-- BEGIN key tables: generated from workflow/schemas by `make docs`; edit the schemas, not this -->"
GENERATED_END = "<!-- END key tables -->"


def _resolve(sub: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = sub.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return {**defs[ref.rsplit("/", 1)[-1]], **{k: v for k, v in sub.items() if k != "$ref"}}
    return sub


def _type_text(sub: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """A short human reading of a property's type."""
    shared = "$ref" in sub
    sub = _resolve(sub, defs)
    if "enum" in sub:
        return "one of " + ", ".join(f"`{v}`" if isinstance(v, str) else f"`{json.dumps(v)}`" for v in sub["enum"])
    for combiner in ("oneOf", "anyOf"):
        if combiner in sub:
            return " or ".join(dict.fromkeys(_type_text(s, defs) for s in sub[combiner]))
    kind = sub.get("type")
    if isinstance(kind, list):
        return " or ".join(_type_text({**sub, "type": k}, defs) for k in kind)
    if kind == "integer" and sub.get("not") == {"multipleOf": 2}:
        return "odd integer" + _range_text(sub)
    if kind in ("number", "integer"):
        return kind + _range_text(sub)
    if kind == "array" and isinstance(sub.get("items"), Mapping):
        return f"array of {_type_text(sub['items'], defs)}"
    if kind == "object":
        if sub.get("properties") and shared:  # a shared definition: name its keys (no rows of their own)
            return "mapping: " + ", ".join(f"`{k}`" for k in sub["properties"])
        if isinstance(sub.get("additionalProperties"), Mapping):
            return f"mapping of {_type_text(sub['additionalProperties'], defs)}"
        return "mapping"
    return kind or "any"


def _range_text(sub: Mapping[str, Any]) -> str:
    """`` ≥ 1``, `` > 0``, `` in [0, 100]`` ... from a number's bounds."""
    low = (">", sub["exclusiveMinimum"]) if "exclusiveMinimum" in sub else (("≥", sub["minimum"]) if "minimum" in sub else None)
    high = ("<", sub["exclusiveMaximum"]) if "exclusiveMaximum" in sub else (("≤", sub["maximum"]) if "maximum" in sub else None)
    parts = [f"{bound[0]} {bound[1]:g}" for bound in (low, high) if bound]
    return (" " + " and ".join(parts)) if parts else ""


def _default_text(sub: Mapping[str, Any]) -> str:
    if "default" not in sub:
        return "required"
    value = sub["default"]
    return "null" if value is None else f"`{json.dumps(value, ensure_ascii=False)}`"


def _rows(properties: Mapping[str, Any], prefix: str, defs: Mapping[str, Any]) -> Iterator[str]:
    for key, sub in properties.items():
        description = " ".join(str(sub.get("description", "")).split())
        yield f"| `{prefix}{key}` | {_type_text(sub, defs)} | {_default_text(sub)} | {description} |"
        # an inline section's keys get rows of their own (link.flow.gate, ...)
        if "$ref" not in sub and sub.get("type") == "object" and sub.get("properties"):
            yield from _rows(sub["properties"], f"{prefix}{key}.", defs)


def _table(properties: Mapping[str, Any], prefix: str, defs: Mapping[str, Any]) -> list[str]:
    return ["| key | type | default | meaning |", "| --- | --- | --- | --- |", *_rows(properties, prefix, defs)]


def key_reference(*, schema_dir=None) -> str:
    """Markdown: the top-level keys of ``config.yaml``, then for each section
    its schema's description and a table of its keys (type, default,
    meaning), nested sections' keys included. ``config/README.md`` holds it
    between :data:`GENERATED_BEGIN` and :data:`GENERATED_END`."""
    top = _validators(str(schema_dir or SCHEMA_DIR), "config.schema.yaml")[0]
    plain = {k: v for k, v in top["properties"].items() if "$ref" not in v}
    parts = ["Top level:", "", *_table(plain, "", {}), ""]
    for section, sub in top["properties"].items():
        if "$ref" not in sub:
            continue
        schema = section_schema(section, schema_dir=schema_dir)
        description = " ".join(str(schema.get("description", "")).split())
        parts += [f"### `{section}`", "", description, "",
                  *_table(schema.get("properties") or {}, f"{section}.", schema.get("$defs") or {}), ""]
    return "\n".join(parts).rstrip() + "\n"


def with_key_reference(text: str, *, schema_dir=None) -> str:
    """``text`` (config/README.md) with its generated part made anew."""
    try:
        head, rest = text.split(GENERATED_BEGIN + "\n", 1)
        _, tail = rest.split(GENERATED_END, 1)
    except ValueError:
        raise ConfigError(f"the text has no generated part (lines {GENERATED_BEGIN!r} ... {GENERATED_END!r})") from None
    return f"{head}{GENERATED_BEGIN}\n\n{key_reference(schema_dir=schema_dir)}\n{GENERATED_END}{tail}"
