"""The report stage: self-contained HTML pages per run and an index over runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.io import create_movie, write_table
from pipeline.physics import stokes_einstein_D, water_viscosity
from pipeline.report import render_run, run

PIXEL_UM, DT_S, T_K = 0.1, 0.03, 298.15
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//|file:)""", re.I)
DATA_PNG = 'src="data:image/png;base64,'


def brownian_tracks(n_tracks=40, n_frames=30, diameter_nm=200.0, seed=0):
    """2D Brownian tracks in pixels, for a sphere of ``diameter_nm`` in water."""
    rng = np.random.default_rng(seed)
    D = stokes_einstein_D(diameter_nm, T_K, water_viscosity(T_K))
    step_px = np.sqrt(2 * D * DT_S) / PIXEL_UM
    start = rng.uniform(20, 180, (n_tracks, 2))
    pos = start + np.cumsum(rng.normal(0, step_px, (n_frames, n_tracks, 2)), axis=0)
    frame, particle = np.meshgrid(np.arange(n_frames), np.arange(n_tracks), indexing="ij")
    df = pd.DataFrame({"frame": frame.ravel(), "y": pos[..., 0].ravel(), "x": pos[..., 1].ravel(),
                       "particle": particle.ravel()})
    df["mass"] = rng.uniform(50, 150, len(df))
    return df.sort_values(["particle", "frame"]).reset_index(drop=True)


def write_run_movie(path, n_frames=30, dropped=(7,)):
    writer = create_movie(path, (8, 8), np.uint8, pixel_size_um=PIXEL_UM, frame_interval_s=DT_S,
                          metadata={"source": "test camera", "temperature_K": T_K, "exposure_s": 0.01})
    with writer:
        for i in range(n_frames):
            if i not in dropped:
                writer.write(i, np.full((8, 8), i, np.uint8))
        writer.set_attributes(frames_expected=n_frames)
    writer.close(n_frames=n_frames)


def make_run(root: Path, name: str, *, d50=123.4, refined=True, truth=False, size_outputs=True, seed=0):
    """A run directory in the layout the workflow writes, with hand-made size outputs."""
    run_dir = root / name
    tracks = brownian_tracks(seed=seed)
    write_run_movie(run_dir / "movie.ome.zarr")
    features = tracks.drop(columns="particle")
    write_table(features, run_dir / "features.parquet", stage="locate", params={"diameter": 11, "minmass": 20})
    if refined:
        failed = np.arange(len(features)) % 4 == 0
        refined_df = features.assign(cost=np.where(failed, np.nan, 0.1), cluster=0, cluster_size=1,
                                     fit_status=np.where(failed, "failed", "fitted"))
        write_table(refined_df, run_dir / "refined.parquet", stage="refine", params={"separation": 7},
                    extra={"n_features": len(features), "n_fits": len(features), "n_failed": int(failed.sum())})
    write_table(tracks, run_dir / "tracks.parquet", stage="link",
                params={"method": "nearest", "search_range": 5, "memory": 3}, extra={"features_in": len(tracks)})
    if truth:
        write_table(tracks.assign(diameter_nm=200.0), run_dir / "truth.parquet", stage="acquire")
    if size_outputs:
        per_track = np.random.default_rng(seed).normal(d50, 20, 40)
        write_table(pd.DataFrame({"particle": np.arange(40), "n_steps": 29, "D_um2_s": 2.0, "sigma_um": 0.02,
                                  "diameter_nm": per_track}), run_dir / "sizes.parquet", stage="size")
        grid = np.linspace(50, 300, 26)
        density = np.exp(-0.5 * ((grid - d50) / 20) ** 2)
        pd.DataFrame({"diameter_nm": grid, "bin_lo_nm": grid - 5, "bin_hi_nm": grid + 5,
                      "walker_density": density / density.sum() / 10, "naive_count": np.round(40 * density / density.sum()),
                      "naive_density": density / density.sum() / 10}).to_csv(run_dir / "distribution.csv", index=False)
        lagt = DT_S * np.arange(1, 11)
        summary = {
            "mean_nm": d50 + 1.5, "mode_nm": d50 - 2.0, "sd_nm": 20.0, "d10_nm": d50 - 25.0,
            "d50_nm": d50, "d90_nm": d50 + 25.0, "naive_d50_nm": d50 + 10.0, "d50_ci_nm": [d50 - 3, d50 + 3],
            "n_tracks": 40, "particles_per_frame": 38.7, "temperature_K": T_K, "viscosity_Pa_s": 8.9e-4,
            "viscosity_source": "water at T", "msd_powerlaw_n": 0.98, "msd_powerlaw_A": 9.6,
            "emsd": [{"lagt_s": float(t), "msd_um2": float(9.6 * t**0.98)} for t in lagt],
            "method": "cve", "notes": ["a note from sizing"], "params": {"method": "cve", "min_steps": 5},
            "trackflow_version": "0.1.0",
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def assert_self_contained(html: str):
    assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)
    assert "<script" not in html.lower()
    assert "<link" not in html.lower()  # no external style sheets


def test_report_pages_and_index(tmp_path):
    results = tmp_path / "results"
    make_run(results, "r1", d50=123.4, truth=True)
    make_run(results, "r2", d50=131.2, seed=1)
    make_run(results, "r3", d50=250.6, refined=False, seed=2)
    group_dir = results / "groups" / "g"
    group_dir.mkdir(parents=True)
    (group_dir / "summary.json").write_text(json.dumps({"n_replicates": 2, "d50_nm": 127.3, "d50_nm_sem": 3.9}))
    runs = [{"run": "r1", "group": "g", "dir": str(results / "r1")},
            {"run": "r2", "group": "g", "dir": str(results / "r2")},
            {"run": "r3", "group": None, "dir": str(results / "r3")}]
    index = run(runs, results / "report" / "index.html", {"title": "Latex beads"}, groups={"g": group_dir})

    assert index == results / "report" / "index.html"
    html = index.read_text()
    assert_self_contained(html)
    assert "Latex beads" in html
    for name, d50 in (("r1", "123.4"), ("r2", "131.2"), ("r3", "250.6")):
        assert f'href="{name}.html"' in html and d50 in html
    # replicates shown together with their merged figures, the ungrouped run apart
    group_part, _, rest = html.partition("Runs without a group")
    assert "Group g" in group_part and "r1.html" in group_part and "r2.html" in group_part
    assert "127.3 ± 3.9" in group_part and "r3.html" in rest
    assert group_part.count(DATA_PNG) == 1

    page = (results / "report" / "r1.html").read_text()
    assert_self_contained(page)
    assert page.count(DATA_PNG) == 4  # tracks over a frame, size distribution, features per frame, MSD
    for text in ("123.4", "133.4",  # D50 (Walker) and naive D50
                 "95 % CI 120.4–126.4", "38.7", "298.15", "0.89",  # CI, particles/frame, T, viscosity (mPa·s)
                 "25.0% (300 of 1200)",  # failed refinement fits
                 "Ground truth: mean diameter", "200.0", "a note from sizing", "test camera",
                 "MSD power-law exponent n</td><td class=\"num\">0.980"):
        assert text in page, text
    dropped_row = re.search(r"Dropped frames</td><td[^>]*>(\d+)<", page)
    assert dropped_row and dropped_row.group(1) == "1"
    # provenance: every stage's parameters and version
    for text in ("features.parquet", "refined.parquet", "tracks.parquet", "sizes.parquet",
                 "<code>search_range</code> = 5", "<code>minmass</code> = 20", "<code>min_steps</code> = 5"):
        assert text in page, text
    assert "refine off" in (results / "report" / "r3.html").read_text()


def test_missing_optional_inputs_are_noted(tmp_path):
    run_dir = make_run(tmp_path, "bare", refined=False, size_outputs=False)
    html = render_run(run_dir)
    assert_self_contained(html)
    assert "Absent inputs: summary.json, distribution.csv, sizes.parquet" in html
    assert "n/a" in html
    assert "No size distribution" in html
    # the MSD falls back to the tracks; tracks over a frame and features per frame still drawn
    assert html.count(DATA_PNG) == 3
    assert "computed by the report" in html
    fit = re.search(r"MSD power-law exponent n</td><td[^>]*>n/a", html)
    assert fit  # the key figure stays n/a: it comes from the size stage

    # a run with nothing but its directory still renders
    (tmp_path / "empty").mkdir()
    html = render_run(tmp_path / "empty", run="empty")
    assert "movie.ome.zarr is absent" in html and html.count(DATA_PNG) == 0


def test_report_with_the_size_stage_outputs(tmp_path):
    from pipeline.size import run as size_run

    run_dir = tmp_path / "sim"
    write_run_movie(run_dir / "movie.ome.zarr", dropped=())
    tracks = brownian_tracks(n_tracks=60, n_frames=40, diameter_nm=200.0, seed=4)
    write_table(tracks, run_dir / "tracks.parquet", stage="link")
    write_table(tracks.drop(columns="particle"), run_dir / "features.parquet", stage="locate")
    summary = size_run(run_dir / "tracks.parquet", run_dir / "movie.ome.zarr", run_dir / "sizes.parquet",
                       run_dir / "distribution.csv", run_dir / "summary.json", {"n_bootstrap": 0})
    html = render_run(run_dir)
    assert_self_contained(html)
    assert f"{summary['d50_nm']:.1f}" in html
    assert f"{summary['naive_d50_nm']:.1f}" in html
    assert html.count(DATA_PNG) == 4
    assert "Ensemble mean squared displacement from summary.json" in html
    assert f"{summary['msd_powerlaw_n']:.3f}" in html
    assert "Absent inputs" not in html


def test_bad_input_is_named(tmp_path):
    run_dir = make_run(tmp_path, "r1")
    (run_dir / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"summary\.json"):
        render_run(run_dir)
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "tracks.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"tracks\.parquet"):
        render_run(run_dir)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run([{"run": "x", "dir": str(tmp_path / "nowhere")}], tmp_path / "index.html", {})
    with pytest.raises(ValueError, match="'histogram_binz'"):
        run([{"run": "r1", "dir": str(run_dir)}], tmp_path / "index.html", {"histogram_binz": 5})
    with pytest.raises(ValueError, match="listed twice"):
        run([{"run": "r1", "dir": str(run_dir)}] * 2, tmp_path / "index.html", {})
    with pytest.raises(ValueError, match="'index'"):
        run([{"run": "index", "dir": str(run_dir)}], tmp_path / "index.html", {})
    assert not (tmp_path / "index.html").exists()


def test_cli_report(tmp_path, capsys):
    make_run(tmp_path, "a", d50=111.1)
    make_run(tmp_path, "b", d50=222.2, seed=1)
    out = tmp_path / "report" / "index.html"
    code = main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out),
                 "--group", "a=pair", "--group", "b=pair", "--set", "title=CLI report"])
    assert code == 0
    assert "2 run page(s)" in capsys.readouterr().out
    html = out.read_text()
    assert "CLI report" in html and "Group pair" in html and "111.1" in html and "222.2" in html
    assert (tmp_path / "report" / "a.html").exists() and (tmp_path / "report" / "b.html").exists()
    assert main(["report", str(tmp_path / "a"), "-o", str(out), "--group", "zz=pair"]) == 2
    assert "--group" in capsys.readouterr().err


def test_segmented_run_shows_its_objects(tmp_path):
    """A run that went through segment and reassign gets a montage of its
    reassigned labels and the labels' lifetimes, read from the stage outputs."""
    from pipeline import reassign, segment
    from pipeline.simulate import simulate_objects

    results = tmp_path / "results"
    run_dir = make_run(results, "cells")
    frames, _, _ = simulate_objects(shape=(48, 64), n_frames=6, n_objects=4, radius_px=(5, 7),
                                    displacement_px=2.0, pixel_size_um=(0.2, 0.2), seed=3)
    movie = run_dir / "movie.ome.zarr"  # the run's own movie: the objects' frames
    from pipeline.io import write_movie

    write_movie(movie, frames, pixel_size_um=0.2, frame_interval_s=0.5, overwrite=True)
    segment.run(movie, tmp_path / "labels.ome.zarr", {}, compute={"scheduler": "synchronous"})
    reassign.run(movie, tmp_path / "labels.ome.zarr", run_dir / "reassigned.ome.zarr",
                 run_dir / "objects.parquet", {})
    run([{"run": "cells", "group": None, "dir": str(run_dir)}], results / "report" / "index.html", {})
    page = (results / "report" / "cells.html").read_text()
    assert_self_contained(page)
    assert "Objects (segment and reassign)" in page and "label lifetimes" in page
    assert page.count(DATA_PNG) == 5  # the four run figures and the montage
    # runs without objects get no such section
    plain = make_run(results, "beads")
    assert "Objects (segment and reassign)" not in render_run(plain)
