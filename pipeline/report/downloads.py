"""The pages' downloads: CSV files inline as data URIs.

A run's figures and size distribution in the layout of an NTA instrument's
experiment summary (:func:`pipeline.io.nta.experiment_summary_csv`) and its
per-track sizes; on the index, the same over every run and per replicate group.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..io.nta import experiment_summary_csv
from .data import RunData
from .html import data_uri

__all__ = ["index_downloads", "run_downloads"]


def _csv_download(name: str, text: str, what: str) -> dict[str, str]:
    """A CSV file as the templates' download list offers it: inline, as a data URI."""
    return {"name": name, "href": data_uri(text, "text/csv"), "what": what}


def run_downloads(data: RunData) -> list[dict[str, str]]:
    """A run page's downloads: its figures and distribution as an NTA
    experiment summary, and its per-track sizes."""
    files = []
    if data.summary:
        files.append(_csv_download(
            f"{data.name}-summary.csv",
            experiment_summary_csv([(data.name, data.summary, data.distribution)], title=data.name),
            "the run's figures and its size distribution per bin, in the layout of an NTA experiment summary",
        ))
    sizes = data.tables.get("sizes")
    if sizes is not None:
        files.append(_csv_download(f"{data.name}-sizes.csv", sizes.to_csv(index=False, float_format="%.6g"),
                                   "per-track sizes (sizes.parquet)"))
    return files


def index_downloads(runs: Sequence[RunData], title: str) -> list[dict[str, str]]:
    """The index's downloads: every run's figures as one NTA experiment
    summary (titled ``title``), one per replicate group, and every run's
    per-track sizes in one table with a run column."""
    samples = [(d.name, d.summary, d.distribution) for d in runs if d.summary]
    downloads = []
    if samples:
        downloads.append(_csv_download(
            "experiment-summary.csv", experiment_summary_csv(samples, title=title),
            "every run's figures, their average and standard error, and the size distributions per bin "
            "(layout of an NTA experiment summary)",
        ))
    by_group: dict[str, list[RunData]] = {}
    for d in runs:
        if d.group is not None:
            by_group.setdefault(d.group, []).append(d)
    for group, members in sorted(by_group.items()):
        group_samples = [(d.name, d.summary, d.distribution) for d in members if d.summary]
        if group_samples:
            downloads.append(_csv_download(f"{group}-summary.csv", experiment_summary_csv(group_samples, title=group),
                                           f"group {group}: its runs' figures, average and standard error"))
    sizes = [d.tables["sizes"].assign(run=d.name) for d in runs if d.tables.get("sizes") is not None]
    if sizes:
        table = pd.concat(sizes, ignore_index=True)
        table = table[["run", *(c for c in table.columns if c != "run")]]
        downloads.append(_csv_download("sizes.csv", table.to_csv(index=False, float_format="%.6g"),
                                       "every run's per-track sizes (sizes.parquet), with a run column"))
    return downloads
