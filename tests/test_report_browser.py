"""The report in a real browser: headless Chromium (the operating system's
``chromium`` and ``chromium-driver`` packages; .ci/run installs them) opens
every page of a demo-like report, and the test fails on any console error,
on an image that does not load, or on a figure shown that differs from
summary.json. Screenshots of every page are saved (into
``$TRACKFLOW_SCREENSHOTS`` when set, e.g. ``docs/``, else the test's
temporary directory).

Without Chromium the test skips, except on CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import skip_or_fail
from test_report import DT_S, PIXEL_UM, T_K, make_run

from pipeline.io import create_movie, read_table
from pipeline.report import run

CHROMEDRIVER = Path("/usr/bin/chromedriver")

# what the size stage's quality checks add to a summary (shown in the QC panel)
QC = [
    {"code": "sizes_disagree", "level": "warning",
     "message": "the distribution's D50 is 12 % above the pooled-covariance size (tolerance 10 %)"},
    {"code": "exposure_unknown", "level": "info", "message": "no exposure_s: blur factor R = 1/6 assumed"},
]


def spot_movie(path: Path, tracks, shape=(200, 200), dropped=(7,)) -> None:
    """A movie with a Gaussian spot at every track position: the frame the
    run page draws the tracks over then shows the particles under them."""
    n_frames = int(tracks["frame"].max()) + 1
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    rng = np.random.default_rng(0)
    shutil.rmtree(path, ignore_errors=True)
    writer = create_movie(path, shape, np.uint8, pixel_size_um=PIXEL_UM, frame_interval_s=DT_S,
                          metadata={"source": "test camera", "temperature_K": T_K, "exposure_s": 0.01})
    with writer:
        for i in range(n_frames):
            if i in dropped:
                continue
            image = rng.normal(20, 3, shape)
            for _, row in tracks[tracks["frame"] == i].iterrows():
                image += 150 * np.exp(-((yy - row["y"]) ** 2 + (xx - row["x"]) ** 2) / (2 * 1.5**2))
            writer.write(i, np.clip(image, 0, 255).astype(np.uint8))
        writer.set_attributes(frames_expected=n_frames)
    writer.close(n_frames=n_frames)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A demo-like report: two replicates of a group (one with QC flags and
    cross-checks) and a run without a group."""
    results = tmp_path_factory.mktemp("browser") / "results"
    for name, d50, seed, kwargs in (("beads_1", 123.4, 0, {"truth": True}), ("beads_2", 131.2, 1, {}),
                                    ("large", 250.6, 2, {"refined": False})):
        run_dir = make_run(results, name, d50=d50, seed=seed, **kwargs)
        spot_movie(run_dir / "movie.ome.zarr", read_table(run_dir / "tracks.parquet"))
    summary_path = results / "beads_1" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary.update(
        qc=QC, mode_ci_nm=[117.0, 126.0],
        cross_checks={"pooled_cve_nm": 110.2, "emsd_nm": 112.5, "distribution_mean_nm": 124.9,
                      "distribution_d50_nm": 123.4, "tolerance": 0.1, "max_deviation": 0.12, "agree": False},
        localization={"sigma_um": 0.021, "source": "pooled over all steps", "blur_R": 1 / 6,
                      "blur_source": "assumed: full-frame exposure"},
    )
    summary_path.write_text(json.dumps(summary))
    group_dir = results / "groups" / "beads"
    group_dir.mkdir(parents=True)
    (group_dir / "summary.json").write_text(json.dumps(
        {"n_replicates": 2, "d50_nm": 127.3, "d50_nm_sem": 3.9, "mode_nm": 125.3, "mode_nm_sem": 3.9}))
    runs = [{"run": "beads_1", "group": "beads", "dir": str(results / "beads_1")},
            {"run": "beads_2", "group": "beads", "dir": str(results / "beads_2")},
            {"run": "large", "group": None, "dir": str(results / "large")}]
    return run(runs, results / "report" / "index.html", {"title": "Latex beads"}, groups={"beads": group_dir},
               config_sha256="0" * 64)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not CHROMEDRIVER.exists():
        skip_or_fail("headless Chromium is not installed (apt-get install chromium chromium-driver)")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def open_page(driver, path: Path, screenshots: Path) -> None:
    """Load a page, fail on console errors and images that do not load, and
    save a screenshot of the whole page."""
    driver.get(path.as_uri())
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"{path.name}: console errors {errors}"
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
    assert images, f"{path.name} shows no image"
    broken = [alt for alt, complete, width in images if not complete or width == 0]
    assert not broken, f"{path.name}: images that did not load: {broken}"
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1280, min(int(height), 16000))
    screenshots.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(screenshots / f"report-{path.stem}.png"))
    driver.set_window_size(1280, 1000)


def cell_after(driver, label: str) -> str:
    """The text of the cell right after the first cell reading ``label``."""
    return driver.execute_script(
        "const td = Array.from(document.querySelectorAll('td')).find(c => c.textContent.trim() === arguments[0]);"
        "return td && td.nextElementSibling ? td.nextElementSibling.textContent.trim() : null;", label)


def index_row(driver, run_name: str) -> dict[str, str]:
    """A run's row of the index's figure table, by column header."""
    return driver.execute_script(
        "const table = Array.from(document.querySelectorAll('table')).find(t => t.querySelector('a[href]'));"
        "const header = Array.from(table.rows[0].cells).map(c => c.textContent.trim());"
        "const row = Array.from(table.rows).find(r => r.cells[0].textContent.trim() === arguments[0]);"
        "return Object.fromEntries(Array.from(row.cells).map((c, i) => [header[i], c.textContent.trim()]));",
        run_name)


def with_ci(value: float, ci) -> str:
    return f"{value:.1f}" + (f" ({ci[0]:.1f}–{ci[1]:.1f})" if ci else "")


def test_every_page_loads_and_shows_summary_json(report, browser, tmp_path):
    screenshots = Path(os.environ.get("TRACKFLOW_SCREENSHOTS") or tmp_path)
    results = report.parent.parent
    open_page(browser, report, screenshots)
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('a[href$=\".html\"]')).map(a => a.getAttribute('href'));")
    assert sorted(links) == ["beads_1.html", "beads_2.html", "large.html"]
    downloads = browser.execute_script(
        "return Array.from(document.querySelectorAll('a[download]')).map(a => a.getAttribute('download'));")
    assert {"experiment-summary.csv", "beads-summary.csv", "sizes.csv"} <= set(downloads)
    for name in links:
        summary = json.loads((results / Path(name).stem / "summary.json").read_text())
        row = index_row(browser, Path(name).stem)
        # the figures shown are summary.json's, formatted as the page formats them
        assert row["D50 (nm)"] == with_ci(summary["d50_nm"], summary.get("d50_ci_nm"))
        assert row["Mode (nm)"] == with_ci(summary["mode_nm"], summary.get("mode_ci_nm"))
        assert row["Valid tracks"] == str(summary["n_tracks"])
        assert row["QC flags"] == (", ".join(f["code"] for f in summary["qc"]) if "qc" in summary else "n/a")

    for name in links:
        page = report.parent / name
        open_page(browser, page, screenshots)
        summary = json.loads((results / page.stem / "summary.json").read_text())
        d50 = cell_after(browser, "D50 diameter")
        assert d50.startswith(f"{summary['d50_nm']:.1f}"), d50
        assert cell_after(browser, "Mode diameter").startswith(f"{summary['mode_nm']:.1f}")
        assert cell_after(browser, "Particles per frame") == f"{summary['particles_per_frame']:.3g}"
        assert browser.find_element("link text", "← all runs").get_attribute("href").endswith("index.html")
        flags = browser.execute_script(
            "return Array.from(document.querySelectorAll('ul.flags li code')).map(c => c.textContent);")
        assert flags == [f["code"] for f in summary.get("qc", [])]
    assert len(list(screenshots.glob("report-*.png"))) >= 4
