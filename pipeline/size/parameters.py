"""The ``size`` section: checked against its schema, and its defaults.

``workflow/schemas/size.schema.yaml`` is the one home of every key's
default, type, range and description (see :mod:`pipeline.io.schema`); this
module only adds what a JSON schema cannot say.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..io.schema import ConfigError, check_section, section_schema

__all__ = ["check_params"]


def check_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``size`` section with defaults filled in, validated.

    Unknown keys, wrong types and out-of-range values raise
    :class:`~pipeline.io.schema.ConfigError` (a ValueError) naming the key
    (``size.<key>``), as does what the schema cannot express: a non-finite
    number, or ``grid_max_nm`` not above ``grid_min_nm``.

    Returns
    -------
    dict
        Every key, in the schema's order; integers as int and numbers as
        float, whichever YAML or numpy gave (the values recorded in
        ``summary.json`` and used as counts).
    """
    p = _declared_types(check_section("size", params))
    if p["grid_max_nm"] <= p["grid_min_nm"]:
        raise ConfigError(
            f"size.grid_max_nm must be larger than size.grid_min_nm ({p['grid_min_nm']}), "
            f"got {p['grid_max_nm']!r}"
        )
    return p


def _declared_types(p: dict[str, Any]) -> dict[str, Any]:
    """``p`` in the schema's key order, numbers cast to their declared type;
    a JSON schema has no word for "finite", so infinities and NaN stop here."""
    out = {}
    for key, sub in section_schema("size")["properties"].items():
        value = p[key]
        kinds = sub.get("type")
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if value is not None and ("number" in kinds or "integer" in kinds):
            if not math.isfinite(float(value)):
                raise ConfigError(f"size.{key} must be finite, got {value!r}")
            value = int(value) if "integer" in kinds else float(value)
        out[key] = value
    return out
