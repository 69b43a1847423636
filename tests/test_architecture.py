"""The package's layering: stages meet only through files, so no stage
module imports another, and the package's parts import each other without
cycles. Read from the source (every ``import`` statement, top level or
inside a function), not from what happens to be imported at run time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
STAGES = {"acquire", "locate", "refine", "link", "segment", "reassign", "size", "report"}
# run several stages together on purpose: the command line, and live analysis
# during acquisition (pipeline/live/__init__.py says why)
ORCHESTRATORS = {"cli", "live"}


def part_imports(package: Path) -> dict[str, set[str]]:
    """For each top-level part of ``package`` (a module or a sub-package), the
    other parts it imports, relative or absolute imports alike."""
    name = package.name
    edges: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).with_suffix("")
        if rel.parts == ("__init__",):  # the package's own __init__ only hands names on
            continue
        module = [name, *rel.parts]
        here = module[:-1]  # the package relative imports start from (for __init__, its own)
        part = module[1]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                targets = [".".join([*base, node.module] if node.module else base)]
                if node.level and not node.module:  # from . import x, y
                    targets = [".".join([*base, alias.name]) for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                pieces = target.split(".")
                if pieces[0] == name and len(pieces) > 1 and pieces[1] != part:
                    edges.setdefault(part, set()).add(pieces[1])
    return edges


def stage_violations(edges: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} imports {b}" for a, targets in edges.items() if a in STAGES for b in targets if b in STAGES
    )


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle between parts (each found once, from its smallest name)."""
    found = []

    def walk(path: list[str]) -> None:
        for nxt in sorted(edges.get(path[-1], ())):
            if nxt == path[0]:
                found.append(path)
            elif nxt not in path and nxt > path[0]:
                walk([*path, nxt])

    for start in sorted(edges):
        walk([start])
    return found


def test_no_stage_imports_another():
    edges = part_imports(PACKAGE)
    assert set(edges) >= {"acquire", "locate", "size", "report"}  # the scan saw the stages
    assert stage_violations(edges) == []
    orchestrated = {b for a in ORCHESTRATORS for b in edges.get(a, ()) if b in STAGES}
    assert orchestrated  # the orchestrators do import stages: they are the exception, not the scan's blind spot


def test_no_import_cycles_between_parts():
    assert cycles(part_imports(PACKAGE)) == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from ..size import size_tracks\n", ["locate imports size"]),  # relative, from a sub-package
        ("import pipeline.refine\n", ["locate imports refine"]),
        ("def f():\n    from pipeline.link.nearest import link_nearest\n", ["locate imports link"]),
        ("from ..io import movie\nfrom . import trackpy\n", []),
    ],
)
def test_the_scan_finds_a_stage_importing_another(tmp_path, source, expected):
    # negative control: a stage package that imports another is reported
    package = tmp_path / "pipeline"
    (package / "locate").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "locate" / "__init__.py").write_text("")
    (package / "locate" / "stage.py").write_text(source)
    assert stage_violations(part_imports(package)) == expected


def test_the_scan_finds_a_cycle(tmp_path):
    package = tmp_path / "pipeline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "io.py").write_text("from .physics import x\n")
    (package / "physics.py").write_text("from . import io\n")
    assert cycles(part_imports(package)) == [["io", "physics"]]
