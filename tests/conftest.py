"""Fixtures shared by the test files."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

# CI clones the repository with shared/ beside it
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def bulk_water_dir() -> Path:
    """The 40 real frames of 1 µm latex spheres in water (640x424 RGBA PNG)."""
    path = SHARED / "data" / "bulk_water"
    if not any(path.glob("bulk_water_*.png")):
        pytest.skip(f"real data missing: {path} (shared/ must sit beside the repository)")
    return path


# --- SLURM (tests/test_slurm.py, tests/test_distributed.py) -----------------
def on_ci() -> bool:
    """True on CI, where a service that cannot start fails its tests instead of skipping them."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str):
    """Skip with ``reason`` locally; fail on CI (where every service must run)."""
    if on_ci():
        pytest.fail(f"{reason} (CI is set: this must work here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def laptrack():
    """laptrack, a real tracker whose own geff export tests/test_geff.py reads
    (the test extra): skips locally without it, fails on CI."""
    try:
        import laptrack
    except ImportError:
        skip_or_fail("laptrack is not installed (pip install -e '.[test]')")
    return laptrack


@pytest.fixture(scope="session")
def slurm_cluster() -> dict:
    """A one-node SLURM cluster on this machine, started by tests/setup_slurm.sh
    (idempotent: a cluster already up is reused). Returns its partition and the
    job completion log, where every finished job leaves a line (read from
    ``scontrol show config``)."""
    setup = Path(__file__).resolve().parent / "setup_slurm.sh"
    partition = os.environ.get("SLURM_PARTITION", "debug")
    jobcomp_log = Path("/var/log/slurm/jobcomp.log")  # tests/setup_slurm.sh's JobCompLoc

    def node_ready() -> bool:
        try:
            state = subprocess.run(
                ["sinfo", "--noheader", "--partition", partition, "--format=%T"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return False
        return state.returncode == 0 and any(
            s.strip() in ("idle", "mixed", "allocated") for s in state.stdout.splitlines()
        )

    if not node_ready():
        if os.geteuid() != 0:
            skip_or_fail("SLURM is not running and starting it (tests/setup_slurm.sh) needs root")
        if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
            skip_or_fail("SLURM is not installed and there is no apt-get to install it")
        done = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not node_ready():
            skip_or_fail(f"tests/setup_slurm.sh could not start SLURM:\n{done.stdout}{done.stderr}")
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    settings = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", config, re.M))
    if settings.get("JobCompType") != "jobcomp/filetxt":
        skip_or_fail(f"this SLURM keeps no job completion log (JobCompType={settings.get('JobCompType')})")
    jobcomp_log = Path(settings.get("JobCompLoc", jobcomp_log))
    return {"partition": partition, "jobcomp_log": jobcomp_log}


def takes_o_direct(folder: Path) -> bool:
    """Whether the file system of ``folder`` opens files with O_DIRECT (where
    the movie writer bypasses the page cache)."""
    probe = Path(folder) / "o_direct.probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    except (OSError, AttributeError):  # refused, or a platform without O_DIRECT
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True


def spots_frame(rng, n=60, shape=(256, 256), snr=5.0, sigma=1.5, noise=10.0, background=100.0, min_distance=10.0,
                margin=6.0):
    """Gaussian spots (peak snr * noise) sampled at the pixel centres, at
    random positions at least ``min_distance`` apart and ``margin`` from the
    edges, on a flat background with white noise; and the positions."""
    positions = []
    while len(positions) < n:
        p = rng.uniform(margin, np.asarray(shape) - margin)
        if all(np.hypot(*(p - q)) >= min_distance for q in positions):
            positions.append(p)
    positions = np.array(positions)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, background)
    for y, x in positions:
        image += snr * noise * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    return (image + rng.normal(0, noise, shape)).astype(np.float32), positions
