"""The workflow deployed the standard way (snakemake-workflow-catalog):
the `.test/` configuration run through the whole workflow, `snakemake --lint`,
`snakefmt --check`, the catalog file, and the README's "Use it on your data":
a directory of one's own, outside the checkout, whose Snakefile uses
trackflow's workflow as a module.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
RUN_FILES = ("movie.ome.zarr", "tracks.parquet", "sizes.parquet", "distribution.csv", "summary.json")
# the one lint left: conda channels and container registries cannot be
# reached from these machines, so no rule names an environment (issue 17)
ALLOWED_LINT = {"Specify a conda environment or container for each rule."}


def snakemake(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def check_results(workdir: Path, runs: tuple[str, ...], group: str) -> None:
    results = workdir / "results"
    for run in runs:
        for name in RUN_FILES:
            assert (results / run / name).exists(), f"results/{run}/{name} missing"
    assert (results / "groups" / group / "summary.json").exists()
    page = (results / "report" / "index.html").read_text()
    assert all(run in page for run in runs)


@pytest.mark.slow
def test_test_config_runs_the_whole_workflow(tmp_path):
    """The catalog's CI command, `snakemake --cores 2 --directory .test`, from
    the checkout (which picks up profiles/default), on a copy of .test/ so
    that the checkout stays clean."""
    workdir = tmp_path / "test"
    shutil.copytree(REPO / ".test", workdir)
    done = snakemake("--directory", str(workdir), cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    check_results(workdir, ("tiny_1", "tiny_2"), "tiny")


def test_lint_finds_nothing_but_the_missing_environments():
    done = snakemake("--lint", cwd=REPO, timeout=120)
    out = done.stdout + done.stderr
    assert "Lints for" in out, out  # the lint ran and reported
    assert set(re.findall(r"^    \* (.*?):$", out, re.M)) == ALLOWED_LINT, out


def test_rules_are_formatted_with_snakefmt():
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or shutil.which("snakefmt")
    if snakefmt is None:
        pytest.fail("snakefmt is missing: pip install -e '.[test]'")
    done = subprocess.run([snakefmt, "--check", "workflow"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_catalog_file_says_how_to_run_it():
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert usage["mandatory-flags"]["flags"]
    assert set(usage["software-stack-deployment"]) >= {"conda", "apptainer", "apptainer+conda"}
    assert usage["report"] is True


def readme_snakefile() -> str:
    """The deployed Snakefile as the README's "Use it on your data" shows it."""
    section = (REPO / "README.md").read_text().split("## Use it on your data", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```snakemake\n(.*?)```", section, re.S)[1]


@pytest.mark.slow
def test_deployed_into_a_directory_of_ones_own(tmp_path):
    """The README's "Use it on your data": an empty directory outside the
    checkout, the README's workflow/Snakefile (trackflow's workflow as a
    module from a local path), the user's own config and two runs; then the
    results and `snakemake --report`."""
    mine = tmp_path / "my-experiment"
    (mine / "workflow").mkdir(parents=True)
    (mine / "workflow" / "Snakefile").write_text(readme_snakefile().replace("/path/to/trackflow", str(REPO)))
    (mine / "config").mkdir()
    (mine / "config" / "config.yaml").write_text(
        yaml.safe_dump({"runs": "config/runs.tsv", "compute": {"scheduler": "threads", "threads": 1}})
    )
    settings = "{diameters_nm: [%d], shape: [64, 64], n_frames: 20, n_particles: 8, seed: %d}"
    (mine / "config" / "runs.tsv").write_text(
        "run\tsource\tgroup\tsettings\n"
        f"day1\tsimulated\tbeads\t{settings % (150, 1)}\n"
        f"day2\tsimulated\tbeads\t{settings % (150, 2)}\n"
    )
    profile = ("--workflow-profile", str(REPO / "profiles" / "default"))
    done = snakemake(*profile, cwd=mine)
    assert done.returncode == 0, done.stdout + done.stderr
    check_results(mine, ("day1", "day2"), "beads")
    assert not (REPO / "results" / "day1").exists()

    done = snakemake(*profile, "--report", "report.zip", cwd=mine)
    assert done.returncode == 0, done.stdout + done.stderr
    with zipfile.ZipFile(mine / "report.zip") as z:
        page = z.read(next(n for n in z.namelist() if n.endswith("report/report.html"))).decode()
    assert "Size distribution of run day1" in page and "Summary of run day2" in page
