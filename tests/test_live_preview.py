"""``trackflow preview``: a real acquisition (publisher, writer process, PUB
socket) watched by the live analysis, its page fetched over HTTP on
127.0.0.1 while the camera runs; a deliberately slow preview must leave the
recording whole and say how much it analysed."""

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
import trackpy

from pipeline.acquire import SimulatedCamera, acquire
from pipeline.io.movie import open_movie
from pipeline.live.preview import LivePreview, OnlineTracks, size_interval, size_summary
from pipeline.locate import locate_frames

LOCATE = {"diameter": 9, "minmass": 300}
LINK = {"search_range": 10, "memory": 0}
CAMERA = dict(shape=(128, 128), n_particles=10, diameters_nm=[100], seed=4, frame_interval_s=1 / 30,
              exposure_s=0.01, temperature_K=295.0, pixel_size_um=0.2)  # fmt: skip


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["Content-Type"], response.read()


class Watched:
    """A preview in a thread (its page served), and an acquisition paced
    like a camera publishing to it."""

    def __init__(self, tmp_path, n_frames, rate_fps, **preview):
        self.endpoint = free_endpoint()
        self.preview = LivePreview(self.endpoint, locate=LOCATE, link=LINK, size_every_s=1.0, **preview)
        self.url = self.preview.serve(0)
        self.states = []
        self.result = {}
        self.thread = threading.Thread(
            target=lambda: self.result.setdefault("state", self.preview.run(timeout_s=30, view="none")), daemon=True
        )
        self.thread.start()
        time.sleep(3)  # its worker processes up, its socket connected (PUB does not wait for subscribers)
        self.store = tmp_path / "movie.ome.zarr"
        self.camera = SimulatedCamera(**CAMERA, n_frames=n_frames)
        self.rate_fps = rate_fps

    def acquire(self, during=None):
        poller = None
        if during is not None:
            poller = threading.Thread(target=during, daemon=True)
            poller.start()
        movie = acquire(self.camera, self.store, rate_fps=self.rate_fps, pub_endpoint=self.endpoint, report=False)
        if poller is not None:
            poller.join(60)
        self.thread.join(120)
        assert not self.thread.is_alive(), "the preview did not end with the stream"
        self.preview.close()
        return movie, self.result["state"]


def test_the_preview_analyses_a_real_stream_and_serves_a_page_that_updates(tmp_path):
    watched = Watched(tmp_path, n_frames=150, rate_fps=30)
    seen = []

    def poll():
        for _ in range(40):
            kind, body = get(watched.url + "state.json")
            assert kind == "application/json"
            seen.append(json.loads(body))
            if seen[-1]["ended"]:
                break
            time.sleep(0.25)
        kind, page = get(watched.url)
        seen.append(page.decode())

    movie, state = watched.acquire(during=poll)
    assert watched.url.startswith("http://127.0.0.1:")
    page = seen.pop()
    assert "trackflow preview" in page and "Size distribution" in page and "<svg" in page
    analysed = [s["frames_analysed"] for s in seen]
    assert len(set(analysed)) >= 3 and analysed == sorted(analysed), analysed  # it updated while the camera ran
    assert any(not s["ended"] for s in seen)
    # small frames at 30 fps: it keeps up, analysing every frame it received
    # (the PUB side may still drop one on a loaded machine)
    assert movie.complete and len(movie) == 150 and movie.attrs["dropped"] == []
    assert state["ended"] and state["frames_analysed"] == state["frames_received"] >= 140
    assert state["frames_skipped_busy"] == 0 and state["analysed_fraction"] >= 0.95
    assert state["particles_mean"] > 3 and state["tracks"]["total"] >= 5
    size = state["size"]
    assert size["n_tracks"] >= 5 and 50 < size["walker_d50_nm"] < 200
    assert state["conditions"]["pixel_size_um"] == [0.2, 0.2] and state["conditions"]["temperature_K"] == 295.0
    # the particles per frame it shows are trackpy.locate's on the recorded frames
    seq, n = state["particles_recent"][-1]
    assert n == len(locate_frames(open_movie(movie.path).frames(seq, seq + 1), seq, **LOCATE))


def test_a_slow_preview_never_costs_the_recording_a_frame(tmp_path):
    """Negative control: an analysis that takes 0.25 s a frame, 8 times
    slower than the camera. The recording is complete, none dropped; the
    preview analysed bursts of consecutive frames and says it analysed less
    than all of them."""
    watched = Watched(tmp_path, n_frames=240, rate_fps=30, slow_s=0.25, buffer_frames=8)
    movie, state = watched.acquire()
    assert movie.complete and movie.attrs["frames_written"] == 240 and movie.attrs["dropped"] == []
    frames = np.stack([f.data for f in SimulatedCamera(**CAMERA, n_frames=240).frames()])
    assert np.array_equal(movie.frames(), frames)
    assert state["frames_published"] >= 230
    assert 0 < state["analysed_fraction"] < 0.5, state["analysed_fraction"]
    assert state["frames_skipped_busy"] > 0 and state["bursts"] >= 1
    # it took consecutive frames: tracks with single-frame steps
    seqs = [s for s, _ in state["particles_recent"]]
    assert sum(b - a == 1 for a, b in zip(seqs, seqs[1:])) >= len(seqs) // 2


def test_online_linking_is_trackpy_s_linking(tmp_path):
    """Frame by frame through trackpy's Linker: the same tracks as trackpy.link on all features."""
    movie = np.stack([f.data for f in SimulatedCamera(**CAMERA, n_frames=40).frames()])
    features = locate_frames(movie, 0, **LOCATE)
    online = OnlineTracks(**LINK)
    for frame, rows in features.groupby("frame"):
        online.add(int(frame), rows.reset_index(drop=True))
    ours = online.table()
    theirs = trackpy.link(features, LINK["search_range"], memory=0)
    key = ["frame", "y", "x"]

    def tracks(table):
        return sorted(tuple(map(tuple, g[key].round(6).to_numpy())) for _, g in table.groupby("particle"))

    assert len(ours) == len(features) and tracks(ours) == tracks(theirs)


def test_a_gap_longer_than_memory_ends_the_tracks():
    online = OnlineTracks(search_range=5, memory=1)
    dot = pd.DataFrame({"y": [10.0], "x": [10.0]})
    for frame in (0, 1, 3, 6, 7):  # 1 -> 3 is within memory 1; 3 -> 6 is not
        online.add(frame, dot.assign(frame=frame))
    particles = online.table().groupby("particle")["frame"].apply(list).tolist()
    assert particles == [[0, 1, 3], [6, 7]] and online.restarts == 1


def test_size_summary_waits_for_the_conditions():
    tracks = pd.DataFrame({"frame": range(10), "y": np.arange(10.0), "x": 0.0, "particle": 0})
    out = size_summary(tracks, {}, {"min_length": 5}, {})
    assert out["n_tracks"] == 0 and "metadata" in out["note"]


@pytest.mark.slow
def test_trackflow_preview_command(tmp_path):
    endpoint = free_endpoint()
    out = tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "preview", "--endpoint", endpoint, "--diameter", "9",
         "--minmass", "300", "--search-range", "10", "--port", "0", "--view", "log", "--timeout", "20",
         "--json", str(out)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(4)
    acquire(SimulatedCamera(**CAMERA, n_frames=60), tmp_path / "movie.ome.zarr", rate_fps=30,
            pub_endpoint=endpoint, report=False)  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "preview: http://127.0.0.1:" in err and "frames analysed" in err
    state = json.loads(out.read_text())
    assert state["ended"] and state["frames_analysed"] > 0


def test_size_estimates_back_off_when_they_take_long():
    """An estimate that takes 7.5 s (1800 frames of 1024x1024 at 30 fps) is
    not restarted at once: the frames' analysis keeps two thirds of a core."""
    assert size_interval(5.0, None) == 5.0
    assert size_interval(5.0, 0.4) == 5.0
    assert size_interval(5.0, 7.5) == 22.5
