"""The shared progress reporter: log lines with percentage, rate and time left
when not on a terminal, a tqdm bar on one, silence when turned off; and the
stages that use it (acquire, locate and refine through map_frame_chunks,
segment) on small real movies with real schedulers."""

from __future__ import annotations

import io
import logging
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.acquire import acquire
from pipeline.compute import map_frame_chunks
from pipeline.io import write_movie
from pipeline.progress import dask_compute, progress, progress_mode
from pipeline.segment import segment_movie
from pipeline.simulate.objects import simulate_objects

LINE = re.compile(r"^(\w+): (\d+)/(\d+) frames \((\d+)%\), ([\d.e+-]+) frames/s, (.*)$")


def progress_lines(caplog, label: str) -> list[re.Match]:
    """The parsed progress lines of ``label``, in order."""
    lines = [r.getMessage() for r in caplog.records if r.name == "trackflow.progress"]
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    return [m for m in parsed if m[1] == label]


@pytest.fixture
def log_mode(monkeypatch, caplog):
    """Progress as in a Snakemake job: log lines, every advance (interval 0)."""
    monkeypatch.setenv("TRACKFLOW_PROGRESS", "log")
    monkeypatch.setenv("TRACKFLOW_PROGRESS_INTERVAL", "0")
    caplog.set_level(logging.INFO, logger="trackflow.progress")
    return caplog


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- the reporter ------------------------------------------------------------------


def test_log_lines_have_percentage_rate_and_time_left(log_mode):
    with progress("locate", total=4) as advance:
        for _ in range(4):
            advance(1)
    lines = progress_lines(log_mode, "locate")
    assert [int(m[2]) for m in lines] == [1, 2, 3, 4]
    assert [int(m[4]) for m in lines] == [25, 50, 75, 100]
    assert all(float(m[5]) > 0 for m in lines)
    assert all(re.fullmatch(r"\d+:\d\d:\d\d left", m[6]) for m in lines[:-1])
    assert re.fullmatch(r"done in \d+:\d\d:\d\d", lines[-1][6])


def test_log_lines_are_spaced_by_the_interval(monkeypatch, caplog):
    monkeypatch.setenv("TRACKFLOW_PROGRESS", "log")
    caplog.set_level(logging.INFO, logger="trackflow.progress")
    with progress("refine", total=1000, interval_s=3600) as advance:
        for _ in range(1000):
            advance(1)
    # nothing within the hour, then the one closing line
    assert [m[0].split(",")[0] for m in progress_lines(caplog, "refine")] == ["refine: 1000/1000 frames (100%)"]


def test_unknown_total_and_an_early_stop(log_mode):
    with progress("acquire") as advance:
        advance.update_to(7)
    with progress("segment", total=10) as advance:
        advance(4)
    lines = [r.getMessage() for r in log_mode.records]
    assert re.match(r"acquire: 7 frames, [\d.e+-]+ frames/s, \d+:\d\d:\d\d elapsed$", lines[0])
    assert lines[-1].startswith("segment: 4/10 frames (40%)") and "stopped after" in lines[-1]


def test_a_terminal_gets_a_bar_and_no_log_lines(monkeypatch, caplog):
    monkeypatch.delenv("TRACKFLOW_PROGRESS", raising=False)
    caplog.set_level(logging.INFO, logger="trackflow.progress")
    terminal = _Terminal()
    with progress("locate", total=5, stream=terminal) as advance:
        assert advance.mode == "tty"
        advance(5)
    assert "locate" in terminal.getvalue() and "100%" in terminal.getvalue() and "5/5" in terminal.getvalue()
    assert not caplog.records


@pytest.mark.parametrize("how", ["enabled", "env"])
def test_disabled_is_quiet(how, monkeypatch, caplog):
    """Negative control: turned off, neither log lines nor a bar."""
    monkeypatch.setenv("TRACKFLOW_PROGRESS", "0" if how == "env" else "log")
    caplog.set_level(logging.DEBUG)
    terminal = _Terminal()
    with progress("locate", total=3, interval_s=0, stream=terminal,
                  enabled=False if how == "enabled" else None) as advance:  # fmt: skip
        assert advance.mode == "off"
        advance(3)
    assert terminal.getvalue() == "" and not caplog.records


def test_mode_follows_the_stream_and_the_environment(monkeypatch):
    monkeypatch.delenv("TRACKFLOW_PROGRESS", raising=False)
    assert progress_mode(stream=_Terminal()) == "tty"
    assert progress_mode(stream=io.StringIO()) == "log"
    monkeypatch.setenv("TRACKFLOW_PROGRESS", "log")
    assert progress_mode(stream=_Terminal()) == "log"
    monkeypatch.setenv("TRACKFLOW_PROGRESS", "off")
    assert progress_mode(stream=_Terminal()) == "off"
    monkeypatch.setenv("TRACKFLOW_PROGRESS_INTERVAL", "soon")
    monkeypatch.setenv("TRACKFLOW_PROGRESS", "log")
    with pytest.raises(ValueError, match="TRACKFLOW_PROGRESS_INTERVAL"):
        with progress("x", total=1):
            pass


# -- Dask ------------------------------------------------------------------------------


def _frames_seen(frames: np.ndarray, first_frame: int) -> pd.DataFrame:
    return pd.DataFrame({"frame": np.arange(first_frame, first_frame + len(frames))})


@pytest.fixture(scope="module")
def small_movie(tmp_path_factory):
    frames, _, _ = simulate_objects(shape=(48, 48), n_frames=12, n_objects=4, pixel_size_um=0.2, seed=3)
    path = tmp_path_factory.mktemp("progress") / "movie.ome.zarr"
    return write_movie(path, frames, pixel_size_um=0.2, frame_interval_s=0.1, frames_per_shard=3)


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_map_frame_chunks_reports_frames_as_tasks_finish(small_movie, scheduler, log_mode):
    table = map_frame_chunks(_frames_seen, small_movie, compute={"scheduler": scheduler}, threads=2,
                             frames_per_task=3, progress="refine")  # fmt: skip
    assert table["frame"].tolist() == list(range(12))
    lines = progress_lines(log_mode, "refine")
    assert [int(m[2]) for m in lines] == [3, 6, 9, 12] and lines[-1][4] == "100"
    assert all(int(m[3]) == 12 for m in lines)


def test_map_frame_chunks_without_a_label_reports_nothing(small_movie, log_mode):
    map_frame_chunks(_frames_seen, small_movie, compute={"scheduler": "threads"}, threads=2, frames_per_task=3)
    assert not [r for r in log_mode.records if r.name == "trackflow.progress"]


def test_a_distributed_client_is_followed_through_its_futures(log_mode):
    import dask
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        tasks = [dask.delayed(sum, pure=True)([i, 1]) for i in range(4)]
        with progress("locate", total=8) as advance:
            results = dask_compute(*tasks, advance=advance, weights=[2] * 4, scheduler=client)
    assert results == (1, 2, 3, 4)
    lines = progress_lines(log_mode, "locate")
    assert sorted(int(m[2]) for m in lines) == [2, 4, 6, 8]


# -- the stages --------------------------------------------------------------------------


def test_locate_logs_its_progress(small_movie, log_mode):
    from pipeline.locate import locate_movie

    features = locate_movie(small_movie, diameter=7, compute={"scheduler": "threads"}, threads=2, frames_per_task=3)
    assert len(features)
    lines = progress_lines(log_mode, "locate")
    assert [int(m[2]) for m in lines] == [3, 6, 9, 12] and lines[-1][4] == "100"


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_segment_logs_its_progress(small_movie, tmp_path, scheduler, log_mode):
    labels = segment_movie(small_movie, tmp_path / "labels.ome.zarr", compute={"scheduler": scheduler},
                           threads=2, frames_per_task=3)  # fmt: skip
    assert labels.complete
    lines = progress_lines(log_mode, "segment")
    assert [int(m[2]) for m in lines] == [3, 6, 9, 12]
    assert [int(m[4]) for m in lines] == [25, 50, 75, 100]
    assert all(m[6].endswith("left") for m in lines[:-1]) and lines[-1][6].startswith("done in")


def test_segment_is_quiet_when_progress_is_off(small_movie, tmp_path, monkeypatch, caplog):
    """Negative control: the same stage, TRACKFLOW_PROGRESS=0: no progress lines."""
    monkeypatch.setenv("TRACKFLOW_PROGRESS", "0")
    caplog.set_level(logging.INFO)
    labels = segment_movie(small_movie, tmp_path / "labels.ome.zarr", compute={"scheduler": "threads"},
                           threads=2, frames_per_task=3)  # fmt: skip
    assert labels.complete
    assert not [r for r in caplog.records if r.name == "trackflow.progress"]
    assert any(r.name == "trackflow.segment" for r in caplog.records)  # the stage itself still logs


def test_acquire_reports_frames_written_of_expected(tmp_path, log_mode):
    # paced at 40 fps (1.5 s) in shards of 4 frames: the writer's count grows while it runs
    movie = acquire({"kind": "simulated", "shape": [32, 32], "n_particles": 3, "seed": 2}, tmp_path / "m.ome.zarr",
                    frames=60, frames_per_shard=4, rate_fps=40)  # fmt: skip
    assert movie.complete and len(movie) == 60
    lines = progress_lines(log_mode, "acquire")
    assert len(lines) >= 2, [m[0] for m in lines]
    counts = [int(m[2]) for m in lines]
    assert counts == sorted(counts) and counts[-1] == 60 and all(c % 4 == 0 for c in counts[:-1])
    assert all(int(m[3]) == 60 for m in lines) and lines[-1][4] == "100"
    assert any(m[6].endswith("left") for m in lines[:-1])


def test_acquire_with_its_live_line_does_not_also_log(tmp_path, log_mode):
    acquire({"kind": "simulated", "shape": [32, 32], "n_particles": 3, "seed": 2}, tmp_path / "m.ome.zarr",
            frames=8, frames_per_shard=4, progress=True)  # fmt: skip
    assert not progress_lines(log_mode, "acquire")
