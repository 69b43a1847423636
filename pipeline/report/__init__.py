"""The report stage: one self-contained HTML page per run, and an index.

Each run page opens with its quality control: the size stage's QC flags
(``summary.json``'s ``qc``), its cross-checks of the size estimated four
ways, the localization error and motion blur, the dropped frames, the
refinement's fitted, failed and skipped features (``refined.parquet``) and
the tracks left out by the link and size stages, and why. Then a movie frame
with the tracks drawn over it, the key figures, the size distribution on a
log diameter axis (``distribution.csv``, the per-track diameters of
``sizes.parquet`` and the ground truth when simulated), the ensemble MSD with
its power-law fit, the features per frame, the acquisition metadata, every
stage's parameters, downloads (the run's figures in the layout of an NTA
instrument's experiment summary, its per-track sizes as CSV) and the
provenance (versions, the configuration's hash, the inputs' checksums).

The index draws every run's distribution and every replicate group's mean ±
standard error in one log-diameter plot, tabulates the NTA figure set of
every run and group with each run's QC flags, links to the run pages and
offers the whole experiment's summary and sizes for download.

Pages come from Jinja2 templates (``templates/``) and are self-contained:
inline CSS, plots and downloads as data URIs, no scripts, no external assets;
they can be mailed or archived as single files. Inputs that are absent are
noted on the page; inputs that are present but unreadable are errors naming
the file.

Modules, by what they hold:

- :mod:`~pipeline.report.data`: :func:`load_run` reads a run's files into a
  :class:`RunData`.
- :mod:`~pipeline.report.qc`: the run page's QC panel.
- :mod:`~pipeline.report.key_figures`: the NTA figure set, as the run page
  and the index tabulate it.
- :mod:`~pipeline.report.panels`: the figures the pages show, with their
  captions; :mod:`~pipeline.report.figures` draws them,
  :mod:`~pipeline.report.objects` those of segmented objects.
- :mod:`~pipeline.report.downloads`: the CSV downloads.
- :mod:`~pipeline.report.provenance`: stage settings, versions, checksums.
- :mod:`~pipeline.report.pages`: :func:`render_run` and :func:`render_index`;
  :mod:`~pipeline.report.html` renders the templates.
- :mod:`~pipeline.report.stage`: :func:`run`, the stage's entry point.

The report reads the stages' files, never the stage modules themselves.
"""

from .data import RunData, load_run
from .pages import render_index, render_run
from .stage import run

__all__ = ["run", "render_run", "render_index", "load_run", "RunData"]
