"""The run page's quality control panel, read from the run's files.

The size stage's QC flags (``summary.json``'s ``qc``), its cross-checks of
the size estimated four ways, the localization error and motion blur, the
dropped frames, the refinement's fitted, failed and skipped features
(``refined.parquet``) and the tracks left out by the link and size stages,
and why. The index shows each run's flags too (:func:`qc_flags`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .data import GEFF_IMPORT, RunData, finite_number
from .html import NA, fmt

__all__ = ["QC_KEYS", "qc_flags", "qc_panel"]

# summary keys shown in the QC panel rather than among the other figures
QC_KEYS = {
    "qc", "cross_checks", "localization", "sigma_um", "sigma_source", "blur_R", "exposure_s",
    "dropped_frames", "n_frames", "n_tracks_in", "n_tracks_short", "n_tracks_outliers",
    "sigma_heterogeneity", "step_dispersion_estimate", "step_dispersion", "jump_rule", "n_jump_steps",
    "jump_fraction", "step_lag",
}
# the refine stage's fit_status values
_FITTED, _FAILED = "fitted", "failed"


def qc_flags(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """The size stage's QC flags, warnings first."""
    flags = [
        {"code": str(f.get("code", "")), "level": "warning" if f.get("level") == "warning" else "info",
         "message": str(f.get("message", ""))}
        for f in summary.get("qc") or [] if isinstance(f, Mapping)
    ]
    return sorted(flags, key=lambda f: f["level"] != "warning")


def _cross_checks(summary: Mapping[str, Any]) -> dict | None:
    checks = summary.get("cross_checks")
    if not isinstance(checks, Mapping):
        return None
    rows = [
        (label, fmt(finite_number(checks.get(key)), ".1f"))
        for key, label in (
            ("pooled_cve_nm", "pooled covariance estimator (all single-frame steps)"),
            ("emsd_nm", "ensemble-MSD slope"),
            ("distribution_mode_nm", "distribution: mode"),
            ("distribution_mean_nm", "distribution: mean"),
            ("distribution_d50_nm", "distribution: D50"),
        )
    ]
    deviation, tolerance = finite_number(checks.get("max_deviation")), finite_number(checks.get("tolerance"))
    agree = bool(checks.get("agree"))
    verdict = "The estimates agree" if agree else "The estimates disagree"
    verdict += f": largest deviation {fmt(deviation, '.1%')}, tolerance {fmt(tolerance, '.1%')}."
    return {"rows": rows, "agree": agree, "verdict": verdict}


def _localization(data: RunData) -> list[tuple[str, str, str]]:
    """Localization error and motion blur: the summary's ``localization``
    when it has one, else its older flat keys."""
    s = data.summary
    loc = s.get("localization") if isinstance(s.get("localization"), Mapping) else {}
    sigma = finite_number(loc.get("sigma_um", s.get("sigma_um")))
    blur = finite_number(loc.get("blur_R", s.get("blur_R")))
    exposure, exposure_source = finite_number(s.get("exposure_s")), "summary.json"
    if exposure is None and data.movie is not None:
        exposure, exposure_source = finite_number(data.movie.attrs.get("exposure_s")), "the movie's metadata"
    blur_source = loc.get("blur_source")
    if blur_source is None and exposure is not None:
        blur_source = f"exposure {fmt(exposure, '.4g')} s"
    pooled = finite_number(loc.get("pooled_sigma2_um2"))
    rows = [
        ("localization error σ (nm)", fmt(None if sigma is None else sigma * 1e3, ".1f"),
         str(loc.get("source", s.get("sigma_source")) or NA)),
    ]
    lag = s.get("step_lag") if isinstance(s.get("step_lag"), Mapping) else {}
    frames = lag.get("frames", 1)
    if pooled is not None:
        rows.append(("pooled localization variance σ² (nm²)", fmt(pooled * 1e6, ".4g"),
                     "covariance estimator over all single-frame steps" if frames == 1 else
                     f"covariance estimator over all steps of {frames} frames"))
    if lag:
        rows.append(("frames per step", str(frames), f"size.step_lag: {lag.get('source', NA)}; "
                     + str(lag.get("reason") or NA)))
    spread = finite_number(s.get("sigma_heterogeneity"))
    if spread is not None:
        rows.append(("spread of the tracks' σ (Q / (n − 1))", fmt(spread, ".3g"),
                     "1 when all tracks share one σ; above, each track's own σ, shrunk towards the sample's"))
    phi = finite_number(s.get("step_dispersion_estimate"))
    if phi is not None:
        used = finite_number(s.get("step_dispersion"))
        rows.append(("step dispersion φ", fmt(phi, ".3g"),
                     "1 for Brownian steps; the likelihood was widened by " + fmt(used, ".3g")
                     if used is not None and used > 1 else "1 for Brownian steps"))
    return rows + [
        ("motion blur factor R", fmt(blur, ".3g"), str(blur_source or NA)),
        ("exposure (s)", fmt(exposure, ".4g"), exposure_source if exposure is not None else "unknown"),
    ]


def _frames(data: RunData) -> list[tuple[str, str, str]]:
    if data.movie is not None:
        dropped = [int(i) for i in data.movie.dropped_frames]
        listed = ", ".join(map(str, dropped[:12])) + (" …" if len(dropped) > 12 else "")
        return [("Frames", str(len(data.movie)), ""), ("Dropped frames", str(len(dropped)), listed)]
    return [("Frames", fmt(data.summary.get("n_frames")), ""),
            ("Dropped frames", fmt(data.summary.get("dropped_frames")), "")]


def _refinement(data: RunData) -> list[tuple[str, str, str]]:
    """Fits attempted (fitted or failed) and features skipped, as configured:
    a skipped feature is never a failed fit. From the ``fit_status`` column,
    the counts of refined.parquet's provenance beside it."""
    refined = data.tables.get("refined")
    if refined is None:
        return [("n/a (refine off)", "", "")]
    meta = data.meta.get("refined", {})
    method = (meta.get("params") or {}).get("method")
    n = len(refined)
    if "fit_status" in refined.columns:
        status = refined["fit_status"].astype(str)
        fitted, failed = int((status == _FITTED).sum()), int((status == _FAILED).sum())
    elif {"n_fits", "n_failed"} <= set(meta):
        failed = int(meta["n_failed"])
        fitted = int(meta["n_fits"]) - failed
    else:
        return [("n/a (refined.parquet records no fit status)", fmt(n), "")]
    attempted, skipped = fitted + failed, n - fitted - failed
    rows = [
        ("features", fmt(n), f"method: {method}" if method else ""),
        ("fitted", fmt(fitted), f"{fitted / attempted:.1%} of attempted" if attempted else "none attempted"),
        ("failed (located position kept)", fmt(failed),
         f"{failed / attempted:.1%} ({failed} of {attempted})" if attempted else "none attempted"),
        ("skipped (not attempted, as configured)", fmt(skipped), f"{skipped / n:.1%} of features" if n else ""),
    ]
    if "n_clustered" in meta:
        rows.append(("features in clusters", fmt(meta["n_clustered"]), ""))
    if meta.get("n_in_clusters_too_large"):
        rows.append(("skipped: cluster too large", fmt(meta["n_in_clusters_too_large"]), ""))
    if meta.get("failed_fraction_exceeded"):
        rows.append(("failed share above refine.max_failed_fraction", "yes",
                     fmt(meta.get("max_failed_fraction"), ".1%")))
    return rows


def _left_out(data: RunData) -> list[tuple[str, str, str, str]]:
    """Tracks the link and size stages left out, with their rules, from
    tracks.parquet's provenance and summary.json (sizes.parquet's provenance
    when there is no summary)."""
    link = data.meta.get("tracks", {})
    lp = link.get("params") or {}
    rows = []
    geff = link.get("geff") if link.get("stage") == GEFF_IMPORT else None
    if isinstance(geff, Mapping):  # nothing is left out: branched tracks are split
        where = (f"from {link.get('input', 'a geff store')}: {fmt(geff.get('n_nodes'))} detections, "
                 f"{fmt(geff.get('n_tracks'))} tracks")
        rows.append(("geff import", "tracks split at divisions", fmt(geff.get("n_divisions")),
                     f"each branch a track of its own, no detection dropped ({where})"))
        rows.append(("geff import", "tracks split at merges", fmt(geff.get("n_merges")),
                     f"{fmt(geff.get('n_edges_cut'))} edges cut in all"))
    if "stubs_removed" in link:
        rows.append(("link", "short tracks (stubs)", fmt(link["stubs_removed"]),
                     f"fewer than link.min_length = {fmt(lp.get('min_length'))} frames; "
                     f"{fmt(link.get('stub_features_removed'))} features"))
    if "appearance_removed" in link:
        bounds = ", ".join(f"{k} = {fmt(lp[k])}" for k in ("min_mass", "max_size", "max_ecc") if lp.get(k) is not None)
        rows.append(("link", "tracks by appearance", fmt(link["appearance_removed"]),
                     f"mean mass, size or eccentricity outside {bounds or 'no bounds (filter off)'}; "
                     f"{fmt(link.get('appearance_features_removed'))} features"))
    size = {**data.meta.get("sizes", {}), **data.summary}
    sp = size.get("params") or {}
    if "n_tracks_short" in size:
        rows.append(("size", "short tracks", fmt(size["n_tracks_short"]),
                     f"fewer than size.min_steps = {fmt(sp.get('min_steps'))} single-frame steps"))
    if size.get("jump_rule"):
        eps = finite_number(size.get("jump_fraction"))
        rows.append(("size", "steps scored as jumps (mislinks)", fmt(size.get("n_jump_steps")),
                     f"{size['jump_rule']} (fitted ε = {fmt(None if eps is None else 100 * eps, '.2g')} %)"))
    if "n_tracks_outliers" in size:
        rows.append(("size", "outlier tracks", fmt(size["n_tracks_outliers"]),
                     str(size.get("outlier_rule") or "steps not consistent with one diffusion coefficient")))
    return rows


def qc_panel(data: RunData) -> dict:
    """The run page's QC panel, as ``run.html.j2`` reads it (``qc``): the
    size stage's flags, its cross-checks, the localization error and blur,
    the frames, the refinement's fits and the tracks left out."""
    flags = qc_flags(data.summary)
    no_flags = "No QC flags." if "qc" in data.summary else "No QC flags (summary.json records no quality checks)."
    return {
        "flags": flags, "no_flags": no_flags, "cross_checks": _cross_checks(data.summary),
        "localization": _localization(data), "frames": _frames(data),
        "refinement": _refinement(data), "left_out": _left_out(data),
    }
