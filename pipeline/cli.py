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

__all__ = ["main", "build_parser", "stage_params", "log_to_file"]

log = logging.getLogger("trackflow")

# the command line and a Snakemake job's log file read alike
_LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def log_to_file(path: str) -> None:
    """Send this process's log (and Python warnings) to ``path``: a
    Snakemake job's ``log:`` file, in the same format as the command line."""
    logging.basicConfig(
        filename=path,
        level=logging.INFO,
        format=_LOG_FORMAT,
        force=True,
    )
    logging.captureWarnings(True)


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
        help="Dask scheduler (default: the config's compute.scheduler, else processes)",
    )
    group.add_argument("--address", help="address of a running dask.distributed scheduler")
    group.add_argument("--scheduler-file", help="scheduler file of a running dask.distributed cluster")
    group.add_argument("--threads", type=int, help="local workers (default: all cores)")


def _config_section(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The ``section`` of the ``--config`` file; empty without one (or without that section)."""
    if not getattr(args, "config", None):
        return {}
    from .io.config import load_config

    return dict(load_config(args.config).get(section) or {})


def stage_params(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """Merge ``--config`` (the ``section``), ``--params`` and ``--set`` into a dict."""
    params = _config_section(args, section)
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
    compute = _config_section(args, "compute")
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
        format=_LOG_FORMAT,
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


def _acquire_key_values(items: list[str], what: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"trackflow: {what} needs KEY=VALUE, got {item!r}")
        values[key.strip()] = yaml.safe_load(value)
    return values


def _acquire_summary(movie: Any) -> str:
    state = "complete" if movie.complete else f"INCOMPLETE ({movie.attrs.get('interrupted') or 'no end of stream'})"
    rejected = sum((movie.attrs.get("rejected") or {}).values())
    return (
        f"{movie.path}: {movie.attrs.get('frames_written')} frames written, "
        f"{len(movie.attrs.get('dropped') or [])} dropped, {rejected} rejected messages; {state}"
    )


def _add_security_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keys", metavar="DIR",
        help="CURVE keys from 'trackflow keys DIR': encrypt the stream, admit only authorised publishers",
    )
    p.add_argument(
        "--insecure", action="store_true",
        help="allow binding a non-loopback address without keys (anyone who can reach it can send)",
    )


@command
def _register_keys(sub: Any) -> None:
    p = sub.add_parser(
        "keys",
        help="create CURVE keys for a writer and its publisher (trackflow record --keys)",
        description="Write a writer (server) and a publisher (client) key pair into DIR, owner-only. "
        "The writer needs server.key_secret and authorized/; the publisher needs client.key_secret "
        "and server.key (pipeline.acquire.publish(keys=DIR)).",
    )
    p.add_argument("dir", metavar="DIR", help="folder for the keys (created, 0o700)")

    def run_keys(args: argparse.Namespace) -> int:
        from .acquire.security import create_keys

        for path in create_keys(args.dir).values():
            print(path)
        return 0

    p.set_defaults(func=run_keys)


@command
def _register_acquire(sub: Any) -> None:
    p = sub.add_parser(
        "acquire",
        help="stream a camera, simulation or files into a movie store (OME-Zarr)",
        description="Stream SOURCE over ZeroMQ into a movie store, with a live progress line "
        "(frames, fps, MB/s, dropped) on stderr.",
    )
    p.add_argument(
        "source",
        help="'simulated', an image glob or directory, a .tif stack, a .zarr store, or a JSON source dict",
    )
    p.add_argument(
        "-s", "--source-set", metavar="KEY=VALUE", action="append", default=[],
        help="a source key (YAML value): -s channel=1 -s pixel_size_um=0.3509 -s n_frames=200",
    )
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--frames", type=int, help="stop after N frames")
    limit.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.add_argument("-o", "--output", required=True, help="movie store to write (movie.ome.zarr)")
    p.add_argument("--endpoint", help="where the writer binds (default: a fresh loopback endpoint)")
    p.add_argument(
        "--pub", nargs="?", const="tcp://127.0.0.1:5556", metavar="ENDPOINT",
        help="offer frames to live viewers on a PUB socket (default tcp://127.0.0.1:5556)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--live-locate", action="store_true",
        help="also locate every frame as it reaches the store (the --config file's locate section); "
        "the features go beside the store as <name>.live_features.parquet",
    )
    _add_security_options(p)
    add_params_options(p)

    def run_acquire(args: argparse.Namespace) -> int:
        import contextlib

        from .acquire import acquire
        from .acquire.sources import parse_source

        source = parse_source(args.source, _acquire_key_values(args.source_set, "--source-set"))
        params = stage_params(args, "acquire")
        live, shard_seconds = contextlib.nullcontext(), None
        if args.live_locate or params.pop("live_locate", False):
            from .io.config import load_config
            from .live.locate import LIVE_SHARD_SECONDS, live_locate

            live = live_locate(args.output, load_config(args.config)["locate"] if args.config else {})
            shard_seconds = LIVE_SHARD_SECONDS
        with live:
            movie = acquire(
                source,
                args.output,
                frames=args.frames,
                duration_s=args.duration,
                endpoint=args.endpoint,
                pub_endpoint=args.pub or params.pop("pub_endpoint", None),
                overwrite=args.overwrite,
                progress=not args.quiet,
                report=False,  # the live line says it all; --quiet means quiet
                keys=args.keys,
                insecure=args.insecure,
                shard_seconds=shard_seconds,
                **params,
            )
        print(_acquire_summary(movie), file=sys.stderr)
        return 0 if movie.complete else 1

    p.set_defaults(func=run_acquire)


@command
def _register_record(sub: Any) -> None:
    p = sub.add_parser(
        "record",
        help="writer only: receive a frame stream (PULL) and write it to a movie store",
        description="Bind a PULL socket and write every frame received until the end of stream, "
        "for a camera publishing from another process (pipeline.acquire.publish).",
    )
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="where to bind (default %(default)s)")
    p.add_argument("-o", "--output", required=True, help="movie store to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--pixel-size-um", type=float, nargs="+", help="if the stream does not say: µm per pixel")
    p.add_argument("--frame-interval-s", type=float, help="if the stream does not say: seconds per frame")
    p.add_argument("--metadata", metavar="JSON", help="more acquisition metadata (temperature_K, ...)")
    p.add_argument("--run", help="accept only this run's messages")
    p.add_argument("--start-timeout", type=float, metavar="SECONDS", help="give up if no stream begins")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    _add_security_options(p)
    add_params_options(p)

    def run_record(args: argparse.Namespace) -> int:
        from .acquire import WRITER_KEYS, record
        from .io.schema import check_section

        settings = check_section("acquire", stage_params(args, "acquire"))
        metadata = json.loads(args.metadata) if args.metadata else {}
        if args.pixel_size_um:
            metadata["pixel_size_um"] = args.pixel_size_um
        if args.frame_interval_s:
            metadata["frame_interval_s"] = args.frame_interval_s
        movie = record(
            args.endpoint,
            args.output,
            overwrite=args.overwrite,
            metadata=metadata,
            run=args.run,
            start_timeout_s=args.start_timeout,
            progress=not args.quiet,
            acquisition=settings,
            keys=args.keys,
            insecure=args.insecure,
            **{k: settings[k] for k in WRITER_KEYS},
        )
        print(_acquire_summary(movie), file=sys.stderr)
        return 0 if movie.complete else 1

    p.set_defaults(func=run_record)


@command
def _register_preview(sub: Any) -> None:
    p = sub.add_parser(
        "preview",
        help="watch a running acquisition: particles per frame, tracks linked online, the size distribution so far",
        description="Subscribe to an acquisition's PUB socket (trackflow acquire --pub) and show, while the "
        "camera runs, particles per frame (the locate section), tracks linked online (the link section) and "
        "the size distribution of the tracks so far (the size section), in the terminal and on a page served "
        "on 127.0.0.1 (/ and /state.json). It never slows the recording; when it cannot keep up it analyses "
        "bursts of consecutive frames and says which fraction it analysed.",
    )
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5556", help="the PUB endpoint (default %(default)s)")
    p.add_argument("--config", metavar="FILE", help="config.yaml: its locate, link and size sections")
    p.add_argument("--diameter", type=int, help="locate.diameter, px, odd (over the config's)")
    p.add_argument("--minmass", type=float, help="locate.minmass (over the config's)")
    p.add_argument("--invert", action="store_true", help="dark particles on a bright background")
    p.add_argument("--search-range", type=float, help="link.search_range, px (over the config's)")
    p.add_argument(
        "-s", "--setting", metavar="KEY=VALUE", action="append", default=[],
        help="a condition the stream does not state (YAML value): pixel_size_um, frame_interval_s, "
        "exposure_s, temperature_K, viscosity_Pa_s",
    )
    p.add_argument("--workers", type=int, default=1, help="processes locating frames (default %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="the page's port on 127.0.0.1; 0: any free one (default %(default)s)")
    p.add_argument("--no-page", action="store_true", help="no page, the terminal only")
    p.add_argument("--view", choices=("auto", "rich", "log", "none"), default="auto",
                   help="terminal view: rich (a live panel), log (a line every 5 s), none (default: rich on a terminal)")
    p.add_argument("--size-every", type=float, default=5.0, metavar="SECONDS",
                   help="seconds between two size estimates (default %(default)s)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop when no frame comes for this long")
    p.add_argument("--json", metavar="FILE", help="write the final state here")

    def run_preview(args: argparse.Namespace) -> int:
        from .io.config import load_config
        from .live.preview import live_preview, summary_line

        config = load_config(args.config) if args.config else {}
        locate = dict(config.get("locate") or {})
        link = dict(config.get("link") or {})
        size = dict(config.get("size") or {})
        if args.diameter is not None:
            locate["diameter"] = args.diameter
        if args.minmass is not None:
            locate["minmass"] = args.minmass
        if args.invert:
            locate["invert"] = True
        if args.search_range is not None:
            link["search_range"] = args.search_range
        state = live_preview(
            args.endpoint,
            port=None if args.no_page else args.port,
            locate=locate,
            link=link,
            size=size,
            conditions=_acquire_key_values(args.setting, "--setting"),
            workers=args.workers,
            size_every_s=args.size_every,
            duration_s=args.duration,
            timeout_s=args.timeout,
            view=args.view,
        )
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
        print(summary_line(state), file=sys.stderr)
        return 0

    p.set_defaults(func=run_preview)

@command
def _register_check(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="verify a movie store: every chunk's checksum, the shard indexes, metadata, timestamps",
        description="Decode every frame of STORE (verifying each chunk's CRC-32C), check every "
        "shard file and its index, the OME and trackflow metadata (shape against frames_written "
        "and dropped) and the timestamps. Prints one line per problem, naming the frame or file. "
        "Exit 0: sound; 1: problems found; 2: STORE cannot be checked at all.",
    )
    p.add_argument("store", metavar="STORE", help="movie store (movie.ome.zarr)")

    def run_check(args: argparse.Namespace) -> int:
        from .io.check import check_movie

        report = check_movie(args.store)
        for line in report.problems:
            print(f"{report.path}: {line}")
        for line in report.notes:
            print(f"{report.path}: note: {line}", file=sys.stderr)
        verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        print(
            f"{report.path}: {report.frames} frames, {report.frames_decoded} decoded; {verdict}",
            file=sys.stderr,
        )
        return 0 if report.ok else 1

    p.set_defaults(func=run_check)

# --- locate ----------------------------------------------------------------


@command
def _register_locate(sub: Any) -> None:
    parser = sub.add_parser(
        "locate",
        help="find features in every frame of a movie (trackpy.locate or a matched filter, Dask-parallel)",
        description=(
            "Locate features in every frame of MOVIE (locate.method: trackpy.locate, "
            "matched: the matched-filter detector, or learned: a network trained by "
            "`trackflow train-detector`) and write features.parquet. Parameters: "
            "the config's `locate` section (method, diameter, minmass, matched, learned, ..., "
            "frames_per_task); compute: the `compute` section or the options below."
        ),
    )
    parser.add_argument("movie", metavar="MOVIE", help="movie store (movie.ome.zarr)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="features table to write (.parquet)")
    parser.add_argument("--detector", metavar="DIR",
                        help="trained detector for method learned (a directory or its weights.npz)")
    add_params_options(parser)
    add_compute_options(parser)

    def locate_command(args: argparse.Namespace) -> int:
        from .locate import run

        features = run(
            args.movie,
            args.output,
            stage_params(args, "locate"),
            compute=compute_params(args),
            threads=args.threads,
            detector=args.detector,
        )
        print(f"{args.output}: {len(features)} features")
        return 0

    parser.set_defaults(func=locate_command)

# --- train-detector --------------------------------------------------------


@command
def _register_train_detector(sub: Any) -> None:
    parser = sub.add_parser(
        "train-detector",
        help="train the learned detector (locate.method learned) on simulated images",
        description=(
            "Train the network of locate.method learned on images simulated with the `locate` "
            "section's learned settings (psf_sigma, radius, snr, density, noise, ...; config/README.md) "
            "and write DIR/weights.npz and DIR/provenance.json, as the workflow's train_detector rule "
            "does. MOVIE is read for its dimensionality only. Then: trackflow locate MOVIE -o "
            "features.parquet --set method=learned --detector DIR."
        ),
    )
    parser.add_argument("movie", metavar="MOVIE", help="movie store (movie.ome.zarr): 2D frames or 3D volumes")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="detector directory to write")
    add_params_options(parser)

    def train_command(args: argparse.Namespace) -> int:
        from .locate.train import run

        detector = run(args.movie, args.output, stage_params(args, "locate"))
        v = detector.validation
        print(f"{args.output}: trained in {detector.provenance['training_seconds']:.0f} s; on simulated "
              f"validation images recall {v['recall_0_95']:.3f} at precision {v['precision_0_95']:.3f}")
        return 0

    parser.set_defaults(func=train_command)


# --- refine ----------------------------------------------------------------


@command
def _register_refine(sub: Any) -> None:
    parser = sub.add_parser(
        "refine",
        help="least-squares refinement of located features (trackpy.refine_leastsq, Dask-parallel)",
        description=(
            "Refine the features of MOVIE (FEATURES, written by `trackflow locate`) by "
            "least-squares fits of clustered features and write refined.parquet. "
            "Parameters: the config's `refine` section (method, diameter (null: locate's), "
            "fit_function, param_mode, ..., max_failed_fraction); compute: the `compute` "
            "section or the options below."
        ),
    )
    parser.add_argument("movie", metavar="MOVIE", help="movie store (movie.ome.zarr)")
    parser.add_argument("features", metavar="FEATURES", help="features table (features.parquet)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="refined table to write (.parquet)")
    add_params_options(parser)
    add_compute_options(parser)

    def refine_command(args: argparse.Namespace) -> int:
        from .io.schema import check_section
        from .refine import failure_summary, run

        params = stage_params(args, "refine")
        refined = run(
            args.movie, args.features, args.output, params,
            compute=compute_params(args), threads=args.threads,
        )
        limit = check_section("refine", params)["max_failed_fraction"]
        summary = failure_summary(refined, max_failed_fraction=limit)
        flag = f" (above max_failed_fraction {limit})" if summary["failed_fraction_exceeded"] else ""
        print(
            f"{args.output}: {summary['n_features']} features, {summary['n_fits']} fits, "
            f"{summary['n_failed']} failed{flag}"
        )
        return 0

    parser.set_defaults(func=refine_command)

# --- link ------------------------------------------------------------------


@command
def _register_link(sub: Any) -> None:
    parser = sub.add_parser(
        "link",
        help="link features into tracks (tracks.parquet)",
        description="Link located (or refined) features into tracks: features.parquet or "
        "refined.parquet -> tracks.parquet, with the link section's parameters; compute (the "
        "flow linker's appearance step): the `compute` section or the options below.",
    )
    parser.add_argument("features", help="features.parquet or refined.parquet")
    parser.add_argument("-o", "--output", required=True, help="tracks.parquet to write")
    parser.add_argument("--movie", help="the run's movie.ome.zarr (needed for search_range_um)")
    parser.add_argument("--flow-output", help="also write the links' displacement vectors (flow.parquet)")
    parser.add_argument(
        "--geff-output",
        help="also write the tracks as a geff store for other tracking tools (tracks.geff; needs --movie)",
    )
    add_params_options(parser)
    add_compute_options(parser)

    def run_link(args: argparse.Namespace) -> int:
        from .link import run

        tracks = run(
            args.features,
            args.output,
            stage_params(args, "link"),
            movie=args.movie,
            flow_output=args.flow_output,
            geff_output=args.geff_output,
            compute=compute_params(args),
            threads=args.threads,
        )
        print(f"{args.output}: {tracks['particle'].nunique()} tracks, {len(tracks)} rows")
        return 0

    parser.set_defaults(func=run_link)


# --- size ------------------------------------------------------------------


@command
def _register_size(sub: Any) -> None:
    p = sub.add_parser(
        "size",
        help="diffusion coefficients, sizes, size distribution and concentration from tracks",
        description="Size every track (CVE or optimal MSD fit, with localization error and motion "
        "blur) and the sample (Walker's maximum-likelihood distribution beside the naive "
        "histogram). Writes sizes.parquet, distribution.csv and summary.json. TRACKS may be a geff "
        "store written by another tracker (laptrack, TrackMate, ...): without a movie, give the "
        "conditions with -s, e.g. -s pixel_size_um=0.2 -s frame_interval_s=0.033 -s temperature_K=295.",
    )
    p.add_argument("tracks", help="tracks.parquet (link stage) or a geff store (tracks.geff, another tracker's)")
    p.add_argument(
        "movie", nargs="?",
        help="the run's movie store (for pixel size, frame interval, conditions); none for tracks from elsewhere",
    )
    p.add_argument(
        "-s", "--setting", metavar="KEY=VALUE", action="append", default=[],
        help="without a movie, a condition as in runs.tsv's settings (YAML value): pixel_size_um, "
        "frame_interval_s, exposure_s, temperature_K, viscosity_Pa_s; space_unit, time_unit for geff axes "
        "that state none",
    )
    p.add_argument("--sizes", help="sizes table to write (default: sizes.parquet beside TRACKS)")
    p.add_argument("--distribution", help="distribution CSV (default: distribution.csv beside TRACKS)")
    p.add_argument("--summary", help="summary JSON (default: summary.json beside TRACKS)")
    p.add_argument(
        "--summary-csv", help="headline figures as NTA-style CSV (default: summary.csv beside TRACKS)"
    )
    p.add_argument("--run", help="the run's name in the summary (default: the name of TRACKS' directory)")
    add_params_options(p)

    def run_size(args: argparse.Namespace) -> int:
        from pathlib import Path

        from . import size

        here = Path(args.tracks).resolve().parent
        summary = size.run(
            args.tracks,
            args.movie,
            args.sizes or here / "sizes.parquet",
            args.distribution or here / "distribution.csv",
            args.summary or here / "summary.json",
            stage_params(args, "size"),
            summary_csv=args.summary_csv or here / "summary.csv",
            run_name=args.run or here.name,
            settings=_acquire_key_values(args.setting, "--setting"),
        )
        ci = summary.get("d50_ci_nm") or [None, None]
        print(
            f"{summary['n_tracks']} tracks: mode {summary.get('walker_mode_nm')} nm, "
            f"D50 {summary.get('walker_d50_nm')} nm (95% CI {ci[0]}-{ci[1]}), "
            f"naive mean {summary.get('naive_mean_nm')} nm; "
            f"concentration {summary.get('concentration_per_ml')} /mL"
        )
        return 0

    p.set_defaults(func=run_size)


@command
def _register_size_group(sub: Any) -> None:
    p = sub.add_parser(
        "size-group",
        help="merge replicate runs' size distributions (mean and standard error)",
        description="Merge the distribution.csv and summary.json of replicate runs (each RUN_DIR "
        "holds both) into one group distribution and summary.",
    )
    p.add_argument("group", help="group name")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of the group")
    p.add_argument("-o", "--outdir", required=True, help="directory for the group's outputs")
    add_params_options(p)

    def run_size_group(args: argparse.Namespace) -> int:
        from pathlib import Path

        from . import size

        dirs = [Path(d) for d in args.run_dirs]
        out = Path(args.outdir)
        summary = size.run_group(
            args.group,
            [d / "distribution.csv" for d in dirs],
            [d / "summary.json" for d in dirs],
            out / "distribution.csv",
            out / "summary.json",
            stage_params(args, "size"),
            summary_csv=out / "summary.csv",
            run_names=[d.resolve().name for d in dirs],
        )
        print(
            f"group {args.group}: {summary['n_replicates']} runs, mode "
            f"{summary.get('walker_mode_nm')} ± {summary.get('walker_mode_nm_sem')} nm -> {out}"
        )
        return 0

    p.set_defaults(func=run_size_group)

# --- report ----------------------------------------------------------------


@command
def _register_report(sub: Any) -> None:
    parser = sub.add_parser(
        "report",
        help="HTML report over runs (index.html and one page per run)",
        description="Write a self-contained HTML page per run directory and an index over all "
        "of them. A run is named after its directory.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="results/<run> directories")
    parser.add_argument("-o", "--output", required=True, help="index page to write, e.g. results/report/index.html")
    parser.add_argument(
        "--group", action="append", default=[], metavar="RUN=GROUP", help="put a run into a replicate group"
    )
    add_params_options(parser)

    def run_report(args: argparse.Namespace) -> int:
        from pathlib import Path

        from .report import run

        runs = [{"run": Path(d).resolve().name, "group": None, "dir": d} for d in args.run_dirs]
        names = {r["run"]: r for r in runs}
        for item in args.group:
            name, sep, group = item.partition("=")
            if not sep or name not in names or not group:
                raise ValueError(f"--group needs RUN=GROUP with RUN one of {sorted(names)}, got {item!r}")
            names[name]["group"] = group
        # a group's merged files lie where the workflow puts them: groups/<group>/ beside the runs
        groups = {r["group"]: Path(r["dir"]).parent / "groups" / r["group"] for r in runs if r["group"]}
        index = run(runs, args.output, stage_params(args, "report"), groups=groups)
        print(f"{index}: {len(runs)} run page(s) beside it")
        return 0

    parser.set_defaults(func=run_report)


# --- segment ---------------------------------------------------------------


@command
def _register_segment(sub: Any) -> None:
    parser = sub.add_parser(
        "segment",
        help="label the objects of every frame (labels.ome.zarr, Dask-parallel)",
        description=(
            "Segment every frame of MOVIE (smooth, threshold, fill holes, connected components, "
            "minimum size) and write an int32 label store with the movie's axes, chunks and scale. "
            "Parameters: the config's `segment` section; compute: the `compute` section or the "
            "options below."
        ),
    )
    parser.add_argument("movie", metavar="MOVIE", help="movie store (movie.ome.zarr)")
    parser.add_argument("-o", "--output", required=True, metavar="STORE", help="label store to write (labels.ome.zarr)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing label store")
    add_params_options(parser)
    add_compute_options(parser)

    def segment_command(args: argparse.Namespace) -> int:
        from .segment import run

        labels = run(
            args.movie,
            args.output,
            stage_params(args, "segment"),
            compute=compute_params(args),
            threads=args.threads,
            overwrite=args.overwrite,
        )
        print(f"{args.output}: {labels.attrs.get('n_objects')} objects in {len(labels)} frames")
        return 0

    parser.set_defaults(func=segment_command)

# --- reassign --------------------------------------------------------------


@command
def _register_reassign(sub: Any) -> None:
    parser = sub.add_parser(
        "reassign",
        help="carry object labels through time (reassigned.ome.zarr, objects.parquet)",
        description=(
            "Give the objects of LABELS (the segment stage's store) identities that persist "
            "through time, by flow-guided voxel matching between consecutive frames, and write "
            "the reassigned label store and a per-label, per-frame table (centroid, volume, "
            "velocity). Parameters: the config's `reassign` section."
        ),
    )
    parser.add_argument("movie", metavar="MOVIE", help="movie store (movie.ome.zarr)")
    parser.add_argument("labels", metavar="LABELS", help="label store (labels.ome.zarr)")
    parser.add_argument("-o", "--output", required=True, metavar="STORE", help="label store to write (reassigned.ome.zarr)")
    parser.add_argument("--table", required=True, metavar="FILE", help="per-label table to write (objects.parquet)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    add_params_options(parser)

    def reassign_command(args: argparse.Namespace) -> int:
        from .reassign import run

        objects = run(
            args.movie, args.labels, args.output, args.table, stage_params(args, "reassign"),
            overwrite=args.overwrite,
        )
        print(f"{args.output}: {objects['label'].nunique()} labels over {objects['frame'].nunique()} frames; {args.table}")
        return 0

    parser.set_defaults(func=reassign_command)

# --- workflow --------------------------------------------------------------


@command
def _register_demo(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="simulate a few runs and take them through the whole workflow to a report",
        description="Copy the shipped config/config.yaml and config/runs.tsv (simulated "
        "100 nm, 200 nm and mixed beads) into WORKDIR and run the Snakemake workflow there "
        "on this machine. Running it again re-runs only what changed.",
    )
    parser.add_argument("--workdir", default="demo", help="directory for config and results (default: ./demo)")
    parser.add_argument("--cores", type=int, default=2, help="cores Snakemake may use (default: 2)")
    parser.add_argument("-n", "--dry-run", action="store_true", help="only show the jobs that would run")

    def run_demo(args: argparse.Namespace) -> int:
        import shutil
        import subprocess
        from pathlib import Path

        project = Path(__file__).resolve().parents[1]
        snakefile = project / "workflow" / "Snakefile"
        profile = project / "profiles" / "default"
        shipped = project / "config"
        for needed in (snakefile, profile / "config.yaml", shipped / "config.yaml", shipped / "runs.tsv"):
            if not needed.exists():
                raise FileNotFoundError(
                    f"{needed} is missing: trackflow demo runs the workflow of a project checkout"
                )
        if args.cores < 1:
            raise ValueError(f"--cores must be at least 1, got {args.cores}")
        workdir = Path(args.workdir).resolve()
        (workdir / "config").mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "runs.tsv"):
            shutil.copyfile(shipped / name, workdir / "config" / name)
        cmd = [
            sys.executable, "-m", "snakemake",
            "--snakefile", str(snakefile),
            "--directory", str(workdir),
            "--workflow-profile", str(profile),
            "--cores", str(args.cores),
        ]  # fmt: skip
        if args.dry_run:
            cmd.append("--dry-run")
        print("trackflow demo: " + " ".join(cmd), flush=True)
        done = subprocess.run(cmd)
        if done.returncode != 0:
            print(f"trackflow demo: the workflow failed (exit {done.returncode}); see the log above", file=sys.stderr)
            return done.returncode
        if not args.dry_run:
            from .io.config import load_config

            results = load_config(workdir / "config" / "config.yaml")["results"]
            print(f"trackflow demo: report at {workdir / results / 'report' / 'index.html'}")
        return 0

    parser.set_defaults(func=run_demo)


@command
def _register_config_keys(sub: Any) -> None:
    parser = sub.add_parser(
        "config-keys",
        help="every config.yaml key with its type, default and meaning (from the schemas)",
        description="Print the reference of every config.yaml key as Markdown tables, made from "
        "workflow/schemas (the one place each key's default, type, range and description is "
        "written). With --update FILE or --check FILE, write it into (or compare it with) the "
        "generated part of FILE, e.g. config/README.md.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--update", metavar="FILE", help="rewrite FILE's generated part")
    action.add_argument("--check", metavar="FILE", help="exit 1 if FILE's generated part is stale")

    def run_config_keys(args: argparse.Namespace) -> int:
        from pathlib import Path

        from .io.schema import key_reference, with_key_reference

        if not (args.update or args.check):
            print(key_reference(), end="")
            return 0
        path = Path(args.update or args.check)
        text = path.read_text(encoding="utf-8")
        fresh = with_key_reference(text)
        if args.check:
            if fresh != text:
                print(f"{path}: the key tables are stale; run `make docs`", file=sys.stderr)
                return 1
            return 0
        path.write_text(fresh, encoding="utf-8")
        return 0

    parser.set_defaults(func=run_config_keys)


# --- view ------------------------------------------------------------------


@command
def _register_view(sub: Any) -> None:
    parser = sub.add_parser(
        "view",
        help="open a run in napari: movie, features, tracks and labels at physical scale",
        description=(
            "Open RUN_DIR (results/RUN) in napari: the movie at its physical scale (s, µm, from the "
            "store's OME-Zarr metadata), locate's features as points, link's tracks as tracks and "
            "the segment and reassign stages' label stores, those the run has. Needs napari: "
            "pip install 'trackflow[view]'."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run's results directory (holds movie.ome.zarr)")

    def view_command(args: argparse.Namespace) -> int:
        from .view import open_viewer

        try:
            viewer = open_viewer(args.run_dir)
        except ImportError as exc:
            print(f"trackflow view: error: {exc}", file=sys.stderr)
            return 2
        import napari

        log.info("%s: %s", args.run_dir, ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in viewer.layers))
        napari.run()
        return 0

    parser.set_defaults(func=view_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
