"""Small HTML building blocks for the report: one self-contained page (inline
CSS, images as data URIs, no scripts, no external assets)."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any, Iterable, Sequence

__all__ = ["fmt", "page", "table", "figure", "section", "NA"]

NA = "n/a"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 1.8em; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.8em 0; }
figure img { max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; }
.muted { color: #777; font-size: 0.9em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.3em 0.8em; }
code { font-size: 0.9em; }
nav a { margin-right: 1em; }
"""


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


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None, *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (for cells built here)."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            text = str(cell) if raw else escape(str(cell))
            numeric = isinstance(cell, str) and _looks_numeric(cell)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _looks_numeric(text: str) -> bool:
    try:
        float(text.split()[0].replace(",", ""))
        return True
    except (ValueError, IndexError):
        return False


def figure(uri: str | None, caption: str, missing: str) -> str:
    """An inline image with its caption, or a note saying why there is none."""
    if uri is None:
        return f'<p class="note">{escape(missing)}</p>'
    return f'<figure><img src="{uri}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def page(title: str, body: str, footer: str = "") -> str:
    """A whole HTML document with the inline style sheet."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"{body}\n<footer class=\"muted\"><hr>{footer}</footer>\n</body>\n</html>\n"
    )
