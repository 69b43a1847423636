"""The ``train_detector`` stage: train the learned detector of a run.

``locate.method: learned`` detects with a network trained on trackflow's own
simulator (:mod:`pipeline.locate.learned`). Training is a stage of its own,
so that the workflow caches its output like any other: the rule
``train_detector`` writes ``results/{run}/detector/weights.npz`` (the
weights, with the training settings, the validation figures and the
provenance inside) and ``provenance.json`` (the same, readable), and its
params are exactly the training settings (:func:`pipeline.locate.learned.training_settings`
of the run's ``locate`` section). So it is made again only when one of them
changes (or the trackflow version does); changing what only the detection
reads (``learned.precision``, ``threshold``, ``separation``) re-runs locate
alone. ``trackflow train-detector`` does the same by hand.

The movie is read for its dimensionality only (2D frames or 3D volumes): the
training images are simulated, never taken from the data.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from ..io.movie import Movie, open_movie
from ..io.schema import ConfigError, check_section
from . import learned as _learned

__all__ = ["run", "check_settings"]

log = logging.getLogger("trackflow.train_detector")


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Training settings (:func:`pipeline.locate.learned.training_settings`),
    checked against ``locate.learned``'s schema; a locate section (with
    ``diameter`` or ``learned``) is resolved to them first.

    Raises
    ------
    ConfigError
        Naming the key.
    """
    settings = dict(settings)
    if "learned" in settings or "diameter" in settings:
        return _learned.training_settings(settings.get("diameter", 11), settings.get("learned"))
    unknown = sorted(set(settings) - set(_learned.TRAINING_KEYS) - {"recipe"})
    if unknown:
        raise ConfigError(f"train_detector: unknown training setting(s) {unknown} "
                          f"(allowed: {', '.join(_learned.TRAINING_KEYS)})")
    if settings.get("psf_sigma") is None:
        raise ConfigError("train_detector: psf_sigma is required (training_settings resolves it from the diameter)")
    check_section("locate", {"learned": {k: v for k, v in settings.items() if k != "recipe"}})
    recipe = settings.get("recipe", _learned.RECIPE)
    if recipe != _learned.RECIPE:
        raise ConfigError(f"train_detector: settings of training recipe {recipe}; this trackflow trains recipe "
                          f"{_learned.RECIPE}")
    return _learned.training_settings(11, {k: v for k, v in settings.items() if k != "recipe"})


def run(
    movie: str | os.PathLike | Movie,
    output: str | os.PathLike,
    settings: Mapping[str, Any],
    *,
    provenance: str | os.PathLike | None = None,
) -> _learned.Detector:
    """Train a run's detector and write it.

    Parameters
    ----------
    movie : path or Movie
        The run's movie (read for its dimensionality only).
    output : path
        The weights file (``.npz``), or a directory to write ``weights.npz``
        and ``provenance.json`` into.
    settings : mapping
        The training settings (a train_detector job's params), or the
        ``locate`` section to take them from.
    provenance : path, optional
        Where the readable JSON goes (default: ``provenance.json`` beside the weights).

    Returns
    -------
    Detector
    """
    resolved = check_settings(settings)
    opened = movie if isinstance(movie, Movie) else open_movie(movie)
    ndim = int(opened.ndim)
    output = Path(output)
    weights = output / "weights.npz" if output.suffix != ".npz" else output
    provenance = Path(provenance) if provenance is not None else weights.with_name("provenance.json")
    log.info("training a %dD detector for %s: %s", ndim, opened.path, resolved)
    detector = _learned.train(resolved, ndim)
    from .. import __version__
    from ..io.provenance import environment_lock_sha256
    from ..io.tables import library_versions

    detector.provenance.update(
        trackflow_version=__version__,
        environment_lock_sha256=environment_lock_sha256(),
        versions=library_versions(),
        movie=str(opened.path),
    )
    detector.save(weights, provenance)
    v = detector.validation
    log.info("%s: validation at precision 0.95: recall %.3f (precision %.3f, threshold %.2f) -> %s",
             opened.path, v["recall_0_95"], v["precision_0_95"], v["threshold_0_95"], weights)
    return detector
