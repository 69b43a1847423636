"""The ``trackflow`` command line: one subcommand per stage.

Every stage command takes its parameters the same way: ``--config FILE``
reads the stage's section of a config.yaml, ``--set key=value`` overrides one
key (the value is read as YAML), ``--params JSON`` gives the whole section.
The commands call the same functions as the Snakemake rules.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable

import yaml

from . import __version__

__all__ = ["main", "build_parser", "stage_params"]

log = logging.getLogger("trackflow")


def add_params_options(parser: argparse.ArgumentParser) -> None:
    """The common ways to give a stage its parameters."""
    group = parser.add_argument_group("parameters")
    group.add_argument("--config", metavar="FILE", help="config.yaml to take this stage's section from")
    group.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], help="override one key (YAML value)"
    )
    group.add_argument("--params", metavar="JSON", help="the stage's whole section as JSON")


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compute")
    group.add_argument(
        "--scheduler",
        choices=("threads", "processes", "synchronous", "address", "scheduler_file", "slurm"),
        help="Dask scheduler (default: the config's compute.scheduler, else threads)",
    )
    group.add_argument("--address", help="address of a running dask.distributed scheduler")
    group.add_argument("--scheduler-file", help="scheduler file of a running dask.distributed cluster")
    group.add_argument("--threads", type=int, help="local workers (default: all cores)")


def stage_params(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """Merge ``--config`` (the ``section``), ``--params`` and ``--set`` into a dict."""
    params: dict[str, Any] = {}
    if getattr(args, "config", None):
        from .io.config import load_config

        params.update(load_config(args.config).get(section) or {})
    if getattr(args, "params", None):
        try:
            params.update(json.loads(args.params))
        except json.JSONDecodeError as exc:
            raise SystemExit(f"trackflow {section}: --params is not valid JSON: {exc}")
    for item in getattr(args, "set", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"trackflow {section}: --set needs KEY=VALUE, got {item!r}")
        params[key.strip()] = yaml.safe_load(value)
    return params


def compute_params(args: argparse.Namespace) -> dict[str, Any]:
    compute: dict[str, Any] = {}
    if getattr(args, "config", None):
        from .io.config import load_config

        compute.update(load_config(args.config).get("compute") or {})
    for key in ("scheduler", "address", "scheduler_file"):
        if getattr(args, key, None):
            compute[key] = getattr(args, key)
    return compute


# ---------------------------------------------------------------------------
# One register function per command. Each adds its subparser and sets
# ``func``; keep each command's code inside its own function.
# ---------------------------------------------------------------------------

REGISTRY: list[Callable[[Any], None]] = []


def command(register: Callable[[Any], None]) -> Callable[[Any], None]:
    REGISTRY.append(register)
    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trackflow",
        description="Particle movies from the camera to a publication-ready report.",
    )
    parser.add_argument("--version", action="version", version=f"trackflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRY:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("trackflow: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        # bad input: one clear line naming the file, key or frame
        print(f"trackflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)

# --- acquire ---------------------------------------------------------------
# (commands of the acquire stage go here)

# --- locate ----------------------------------------------------------------
# (commands of the locate stage go here)

# --- refine ----------------------------------------------------------------
# (commands of the refine stage go here)

# --- link ------------------------------------------------------------------
# (commands of the link stage go here)

# --- size ------------------------------------------------------------------
# (commands of the size stage go here)

# --- report ----------------------------------------------------------------
# (commands of the report stage go here)

# --- segment ---------------------------------------------------------------
# (commands of the segment stage go here)

# --- reassign --------------------------------------------------------------
# (commands of the reassign stage go here)

# --- workflow --------------------------------------------------------------
# (commands of the workflow stage go here)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
