"""How many frames a step spans: the lag at which the tracks' steps are
Brownian, chosen from the correlation of their single-frame steps.

Every estimator of the size stage reads D from single-frame steps under one
model: Brownian motion seen through white localization noise and motion
blur within the exposure. Under it, a track's steps are correlated with
their neighbours only (through the noise and the blur), never two or more
frames apart. The long-time diffusion coefficient is the sum of the steps'
autocovariance over all lags (Green–Kubo), so the covariance estimator
(Vestergaard, Blainey & Flyvbjerg 2014), which stops at the neighbours,
reads D too low by 2 Σ_{k≥2} ρ_k / (1 + 2 Σ_{k≥1} ρ_k) when they are not
zero (ρ_k the correlation of steps k frames apart).

Positions smoothed in time over more than one frame (a camera's frame
blending or temporal noise filter, video compression that predicts frames
from their neighbours) or a persistent residual flow make them positive:
measured on the real bulk_water footage (trackpy's example movie, frames
of a compressed QuickTime movie in which every 12th interval's steps are
twice the others', as a 12-frame group of pictures makes), ρ_2 = 0.055 and
ρ_3 + ρ_4 = 0.03: single-frame steps read D 13 % low, and the
maximum-likelihood distribution came out 35 % too large. Over L frames a
step sums the correlations within it, and the covariance estimator on
L-frame steps misses only those beyond L frames: the sizes are read from
steps over L frames. Each track is taken every L-th frame L times, once
from each of its first L frames (no frame left out), and a track's L
likelihoods are averaged in log (a composite likelihood in which each
track counts once), so that no choice of frames moves the result (one
phase alone moved bulk_water's D50 by 15 %).

Negative correlations two or more frames apart (a particle confined, or
reflected by a wall) are not corrected: longer steps do not help there.

Functions: :func:`step_correlation` (ρ_k and the tails with their standard
errors), :func:`choose_step_lag` (the rule), :func:`lag_phases` (the
tracks taken every L-th frame, every phase) and :func:`phase_track`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["step_correlation", "choose_step_lag", "lag_phases", "phase_track"]

#: Lags (frames) of the step correlation measured; the longest step lag.
STEP_CORRELATION_LAGS = 8
#: The correlation at some lag of two frames or more must exceed this many
#: standard errors for the steps to count as correlated (one-sided: 0.13 %
#: false alarms per lag, about 1 % over the seven lags).
DETECTION_Z = 3.0
#: Then the lag is the shortest whose remaining tail, at its upper one-sided
#: 95 % bound, biases D by less than this fraction.
BIAS_TOLERANCE = 0.05
UPPER_BOUND_Z = 1.645
#: Fewer step pairs two frames apart than this: too few to tell (lag 1).
MIN_PAIRS = 200


def step_correlation(steps: dict[str, Any], max_lag: int = STEP_CORRELATION_LAGS) -> dict[str, Any]:
    """Correlation of the single-frame steps k = 1 … ``max_lag`` frames apart.

    Each track's steps are scaled by its own mean squared step, so that a
    dim, noisy track does not outweigh the sharp ones, and the products of
    steps k frames apart (same track, both single-frame steps) are averaged
    over all tracks, each pair counting once: ρ_k. Standard errors treat
    tracks as the independent units (the linearised ratio estimator), so a
    heavy-tailed step or a few long tracks do not make them too small.

    Parameters
    ----------
    steps : dict
        :func:`~pipeline.size.steps.track_steps`'s result.
    max_lag : int
        The longest lag, frames.

    Returns
    -------
    dict
        ``rho`` (ρ_1 … ρ_max_lag), ``rho_se``, ``n_pairs`` (per lag), ``tail`` and
        ``tail_se`` (entry ℓ − 1: Σ_{k>ℓ} ρ_k and its standard error, for
        ℓ = 1 … max_lag − 1) and ``total`` (1 + 2 Σ ρ_k: the long-time D
        over what the single-frame step variance says).
    """
    ok = steps["step_ok"]
    code = steps["code"][:-1][ok]
    frame = steps["frame"][:-1][ok]
    d = steps["steps"][ok]
    out: dict[str, Any] = {"rho": [], "rho_se": [], "n_pairs": [], "tail": [], "tail_se": [], "total": None}
    if code.size == 0:
        return out
    ndim = d.shape[1]
    n_tracks = int(code.max()) + 1
    sq = np.sum(d**2, axis=1) / ndim
    count = np.bincount(code, minlength=n_tracks)
    mean_sq = np.bincount(code, weights=sq, minlength=n_tracks) / np.maximum(count, 1)
    # one key per (track, frame): the step k frames later has key + k
    span = int(frame.max() - frame.min()) + max_lag + 2
    key = code.astype(np.int64) * span + (frame - frame.min())
    order = np.argsort(key, kind="stable")
    key, d, code = key[order], d[order], code[order]
    sums = np.zeros((n_tracks, max_lag + 1))
    pairs = np.zeros((n_tracks, max_lag + 1))
    usable = mean_sq[code] > 0
    for k in range(max_lag + 1):
        j = np.minimum(np.searchsorted(key, key + k), key.size - 1)
        hit = (key[j] == key + k) & usable
        u = np.sum(d[hit] * d[j[hit]], axis=1) / ndim / mean_sq[code[hit]]
        sums[:, k] = np.bincount(code[hit], weights=u, minlength=n_tracks)
        pairs[:, k] = np.bincount(code[hit], minlength=n_tracks)
    n_pairs = pairs.sum(axis=0)
    rho = sums.sum(axis=0) / np.maximum(n_pairs, 1)
    # each track's share of every ρ_k's deviation (linearised ratio estimator)
    share = (sums - rho * pairs) / np.maximum(n_pairs, 1)
    tail = [float(rho[lag + 1:].sum()) for lag in range(1, max_lag)]
    tail_se = [float(np.sqrt(np.sum(share[:, lag + 1:].sum(axis=1) ** 2))) for lag in range(1, max_lag)]
    rho_se = np.sqrt(np.sum(share**2, axis=0))
    out.update(
        rho=[float(v) for v in rho[1:]], rho_se=[float(v) for v in rho_se[1:]],
        n_pairs=[int(v) for v in n_pairs[1:]], tail=tail, tail_se=tail_se, total=float(1.0 + 2.0 * rho[1:].sum()),
    )
    return out


def choose_step_lag(correlation: dict[str, Any], blur_R: float | None = None) -> tuple[int, str]:
    """The step lag (frames) from :func:`step_correlation`, and why.

    Lag 1 unless the correlation at some lag k ≥ 2 is positive beyond
    ``DETECTION_Z`` of its standard errors (each lag tested alone: the sum
    over all lags would drown a correlation of two or three frames in the
    noise of the far ones; too few pairs to tell: lag 1), or, with the blur
    factor ``blur_R`` known (from the exposure), the neighbours' correlation
    ρ_1 exceeds by as much the most that blur and noise allow, R / (1 − 2R)
    (a frame blended with its neighbour: ρ_1 ≈ 1/2). Then the shortest
    lag ℓ whose remaining tail Σ_{k>ℓ} ρ_k, at its upper one-sided 95 %
    bound, biases D by less than ``BIAS_TOLERANCE``: the lag at which the
    data show the steps Brownian, not merely the lag at which the tail stops
    being significant (a short movie has little power to see it).
    """
    rho, rho_se = correlation["rho"], correlation["rho_se"]
    tail, se, total = correlation["tail"], correlation["tail_se"], correlation["total"]
    if not tail or correlation["n_pairs"][1] < MIN_PAIRS:
        return 1, "too few steps two frames apart to measure their correlation"
    z = [r / s if s > 0 else 0.0 for r, s in zip(rho[1:], rho_se[1:])]
    strongest = int(np.argmax(z))
    neighbours_max = None if blur_R is None else blur_R / (1.0 - 2.0 * blur_R)
    z1 = 0.0 if neighbours_max is None or not rho_se[0] > 0 else (rho[0] - neighbours_max) / rho_se[0]
    if not z[strongest] > DETECTION_Z and not z1 > DETECTION_Z:
        return 1, (f"steps two or more frames apart uncorrelated (at most {z[strongest]:.1f} standard errors, "
                   f"ρ{strongest + 2} = {rho[strongest + 1]:.3f})"
                   + ("" if neighbours_max is None else
                      f", and neighbours within what blur allows (ρ1 = {rho[0]:.3f}, at most {neighbours_max:.3f})"))
    if z[strongest] > DETECTION_Z:
        seen = (f"steps correlated {strongest + 2} frames apart (ρ{strongest + 2} = {rho[strongest + 1]:.3f}, "
                f"{z[strongest]:.1f} standard errors)")
    else:
        seen = (f"neighbouring steps correlated beyond what the exposure's blur allows (ρ1 = {rho[0]:.3f}, "
                f"at most {neighbours_max:.3f}; {z1:.1f} standard errors)")
    denominator = max(total, 1e-9)
    for lag in range(2, len(tail) + 1):
        bound = tail[lag - 1] + UPPER_BOUND_Z * se[lag - 1]
        if 2.0 * bound / denominator < BIAS_TOLERANCE:
            break
    else:
        lag = len(tail) + 1
    return lag, (f"{seen}; from {lag} frames on the rest biases D by less than {BIAS_TOLERANCE:.0%} "
                 "(95 % bound)")


def lag_phases(steps: dict[str, Any], lag: int, position_columns: list[str]) -> pd.DataFrame:
    """Every track taken every ``lag``-th frame, once from each of its first
    ``lag`` frames: ``lag`` tracks per track, whose one-frame steps are the
    track's ``lag``-frame steps (all of them, no frame left out).

    Positions are in pixels with the flow or drift already subtracted
    (``frame, <position columns>, particle``); frames are renumbered from 0
    along each phase, so that an L-frame step is one frame apart. A row
    missing from the track (a gap the linker bridged) leaves a gap, as any
    other. ``particle`` is ``code * lag + phase``, ``code`` the track's
    index in ``steps["ids"]``: :func:`phase_track` maps it back.
    """
    particle, frame, code = steps["particle"], steps["frame"], steps["code"]
    starts = np.r_[0, np.flatnonzero(particle[1:] != particle[:-1]) + 1] if particle.size else np.zeros(0, int)
    first = np.repeat(frame[starts], np.diff(np.r_[starts, frame.size]))
    offset = frame - first
    phase = offset % lag
    table = pd.DataFrame(steps["positions"] / steps["pixel_size_um"], columns=position_columns)
    table.insert(0, "frame", offset // lag)
    table["particle"] = code.astype(np.int64) * lag + phase
    return table.sort_values(["particle", "frame"], kind="stable").reset_index(drop=True)


def phase_track(pseudo: np.ndarray, lag: int) -> np.ndarray:
    """The track index (into ``steps["ids"]``) of :func:`lag_phases`' tracks."""
    return np.asarray(pseudo, dtype=np.int64) // lag
