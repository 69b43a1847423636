"""The preview's page: one small HTML document, made on every request from
the preview's state, that reloads itself every two seconds (no script)."""

from __future__ import annotations

import html
import math
from typing import Any

__all__ = ["render_page"]

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.2em} table{border-collapse:collapse} td{padding:.15em .8em .15em 0}
td:first-child{font-weight:600;text-align:right} .note{color:#a60} svg{display:block;margin:.8em 0}
"""


def format_figure(value: Any, unit: str = "", digits: int = 1) -> str:
    """A figure for the terminal view and the page: ``digits`` decimals for a
    float, '–' for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _bars(dist: dict, width: int = 480, height: int = 140) -> str:
    """The size distribution (Walker's fractions) as SVG bars on the log-spaced bins."""
    d, w = dist["diameter_nm"], dist["walker_fraction"]
    if not d:
        return ""
    top = max(w) or 1.0
    step = width / len(d)
    bars = "".join(
        f'<rect x="{i * step:.1f}" y="{height - 20 - (height - 30) * f / top:.1f}" width="{max(step - 1, 1):.1f}" '
        f'height="{(height - 30) * f / top:.1f}" fill="#3b6ea5"><title>{di:.0f} nm: {f:.3f}</title></rect>'
        for i, (di, f) in enumerate(zip(d, w))
    )
    ticks = "".join(
        f'<text x="{i * step:.1f}" y="{height - 5}" font-size="10">{d[i]:.0f}</text>'
        for i in range(0, len(d), max(1, len(d) // 6))
    )
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="size distribution">{bars}{ticks}'
            f'<text x="{width - 30}" y="{height - 5}" font-size="10">nm</text></svg>')  # fmt: skip


def _sparkline(points: list, width: int = 480, height: int = 60) -> str:
    """Particles per analysed frame, the last frames analysed."""
    if len(points) < 2:
        return ""
    seqs = [p[0] for p in points]
    counts = [p[1] for p in points]
    lo, hi = min(seqs), max(seqs)
    top = max(counts) or 1
    xy = " ".join(
        f"{(s - lo) / max(hi - lo, 1) * width:.1f},{height - 2 - (height - 4) * c / top:.1f}" for s, c in zip(seqs, counts)
    )
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="particles per frame">'
            f'<polyline points="{xy}" fill="none" stroke="#a5533b"/></svg>')  # fmt: skip


def render_page(state: dict) -> str:
    """The page for one state of :class:`pipeline.live.preview.LivePreview`."""
    e = html.escape
    size = state["size"]
    fraction = state["analysed_fraction"]
    tracks = state["tracks"]
    rows = [
        ("frames", f"{state['frames_analysed']} analysed of {state['frames_published']} published "
                   f"({format_figure(None if fraction is None else 100 * fraction, ' %', 0)}), lag {format_figure(state['lag_frames'])}"),
        ("particles", f"{format_figure(state['particles_last'])} in frame {format_figure(state['last_analysed_seq'])}, "
                      f"{format_figure(state['particles_mean'])} per frame on average"),
        ("tracks", f"{tracks['total']} ({tracks['active']} running, {tracks['finished']} finished)"),
        ("D50", f"{format_figure(size.get('walker_d50_nm'), ' nm')} (mode {format_figure(size.get('walker_mode_nm'), ' nm')}, "
                f"per-track D50 {format_figure(size.get('naive_d50_nm'), ' nm')}) from {size.get('n_tracks', 0)} tracks"),
    ]  # fmt: skip
    table = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in rows)
    note = f'<p class="note">{e(size["note"])}</p>' if size.get("note") else ""
    dist = size.get("distribution")
    status = "ended" if state["ended"] else "live"
    refresh = "" if state["ended"] else '<meta http-equiv="refresh" content="2">'
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>trackflow preview ({status})</title><style>{_STYLE}</style></head><body>"
        f"<h1>trackflow preview: {e(state['endpoint'])} ({status}, {state['elapsed_s']:.0f} s)</h1>"
        f"<table>{table}</table>{note}"
        f"<h2>Size distribution (Walker)</h2>{_bars(dist) if dist else '<p>none yet</p>'}"
        f"<h2>Particles per frame</h2>{_sparkline(state['particles_recent'])}"
        f'<p><a href="state.json">state.json</a></p></body></html>'
    )
