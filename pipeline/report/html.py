"""The report's HTML: Jinja2 templates (``templates/``), rendered into one
self-contained page each (inline CSS, images and downloads as data URIs, no
scripts, no external assets)."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import jinja2

__all__ = ["fmt", "render", "data_uri", "NA"]

NA = "n/a"

# autoescape: every value from the runs' files (names, notes, parameters) is
# text, never markup
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pipeline.report", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def fmt(value: Any, spec: str = ".6g") -> str:
    """A value for display: numbers with ``spec``, missing ones as ``n/a``."""
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return NA if not math.isfinite(value) else format(value, spec)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return ", ".join(fmt(v, spec) for v in value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _numeric(text: Any) -> bool:
    """Whether a table cell reads as a number (right-aligned then)."""
    try:
        float(str(text).split()[0].replace(",", ""))
        return True
    except (ValueError, IndexError):
        return False


_ENV.filters["fmt"] = fmt
_ENV.tests["numeric"] = _numeric


def data_uri(content: bytes | str, mime: str) -> str:
    """``content`` as a base64 data URI (text is encoded as UTF-8)."""
    raw = content.encode("utf-8") if isinstance(content, str) else content
    return f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")


def render(template: str, **context: Any) -> str:
    """One page from its template (``run.html.j2``, ``index.html.j2``)."""
    return _ENV.get_template(template).render(**context)
