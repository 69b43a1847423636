"""Walker's likelihood step by step, with room for mislinks.

A linker that joins a particle to its neighbour puts one step in the track
that has nothing to do with the particle's diffusion. Walker's likelihood of
the mean squared step (:func:`~pipeline.size.walker.walker_likelihood`)
takes that jump at face value: one swapped link makes a slow particle look
fast, and on a sample with 5 % of links swapped the distribution's mode
falls to the grid's lower end (measured: 100, 200 and 400 nm all at 30 nm).
A hard outlier rule cannot help a track of two or three steps, whose own
scale the jump sets.

Here each single-frame step's squared length x is, with probability 1 − ε,
a Brownian step of its track (x = μ·χ²(ndim)/ndim, μ = 2·ndim·(DΔt + σ² −
2RDΔt) as in Walker's likelihood), and with probability ε a jump to
anywhere in the linker's reach: uniform in the ball whose radius is the
longest step of the table, so x has density (ndim/2)·x^(ndim/2 − 1)/r²^(ndim/2).
ε is one number for the sample, estimated with the distribution by EM
(each step's probability of being a jump, averaged); a track's likelihood
is the product over its steps. Without jumps (ε → 0) this is Walker's
likelihood exactly.

Adjacent steps of one track are correlated by localization error and blur;
the per-step product treats them as independent, so each track's
log-likelihood is tempered to the moment-matched shape that
:func:`~pipeline.size.walker.walker_likelihood` uses (a composite
likelihood with its curvature adjusted; Varin, Reid & Firth 2011), and by
the sample's step dispersion φ (:func:`~pipeline.size.diffusion.step_dispersion`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special

from .diffusion import step_dispersion

__all__ = ["jump_log_density", "step_log_likelihood", "jump_responsibilities", "weighted_dispersion"]

#: Steps scored per block (bounds memory: block × grid points doubles).
_BLOCK = 16384


def jump_log_density(sq: np.ndarray, ndim: int, reach2: float) -> np.ndarray:
    """log density of a squared step ``sq`` (µm²) of a jump uniform in the
    ``ndim``-ball of squared radius ``reach2``."""
    h = 0.5 * ndim
    return np.log(h) + (h - 1.0) * np.log(np.maximum(sq, 1e-300)) - h * np.log(reach2)


def _brownian_log_density(sq: np.ndarray, theta: np.ndarray, ndim: int) -> np.ndarray:
    """log density of squared steps ``sq`` (n, 1) with means ``theta`` (n, L):
    a Gamma of shape ndim/2 (the sum of ndim squared normals)."""
    h = 0.5 * ndim
    return (h * np.log(h) - special.gammaln(h) + (h - 1.0) * np.log(np.maximum(sq, 1e-300))
            - h * np.log(theta) - h * sq / theta)


def step_log_likelihood(
    sq: np.ndarray,
    step_row: np.ndarray,
    theta: np.ndarray,
    *,
    ndim: int,
    jump_fraction: float,
    log_jump: np.ndarray,
    temper: np.ndarray | float = 1.0,
) -> np.ndarray:
    """log L[j, l] = temper[j, l] · Σ_{i in track j} log((1 − ε) f(x_i | θ_jl) + ε g(x_i)).

    Parameters
    ----------
    sq : array (n,)
        Squared single-frame steps, µm² (summed over axes).
    step_row : int array (n,)
        The track (row of ``theta``) of each step.
    theta : array (J, L)
        Each track's mean squared step at each grid diameter, µm².
    ndim : int
    jump_fraction : float or array (n,)
        ε in [0, 1), per step or for all.
    log_jump : array (n,)
        :func:`jump_log_density` of each step.
    temper : float or array (J, L)
        Factor on each track's log-likelihood (≤ 1: fewer effective steps).
    """
    J, L = theta.shape
    out = np.zeros((J, L))
    eps = np.broadcast_to(np.asarray(jump_fraction, dtype=float), sq.shape)
    with np.errstate(divide="ignore"):
        log_keep, log_jump_prior = np.log1p(-eps), np.log(eps)
    for a in range(0, len(sq), _BLOCK):
        rows = step_row[a:a + _BLOCK]
        logf = _brownian_log_density(sq[a:a + _BLOCK, None], theta[rows], ndim)
        if np.any(eps[a:a + _BLOCK] > 0):
            logf = np.logaddexp(log_keep[a:a + _BLOCK, None] + logf,
                                (log_jump_prior[a:a + _BLOCK] + log_jump[a:a + _BLOCK])[:, None])
        _add_rows(out, rows, logf)
    return out * temper


def _add_rows(out: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """out[rows[i]] += values[i], by runs of equal rows when ``rows`` is
    sorted (steps come grouped by track), else unbuffered."""
    if rows.size > 1 and np.all(rows[1:] >= rows[:-1]):
        starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
        out[rows[starts]] += np.add.reduceat(values, starts, axis=0)
    else:
        np.add.at(out, rows, values)


def jump_responsibilities(
    sq: np.ndarray,
    step_row: np.ndarray,
    theta: np.ndarray,
    posterior: np.ndarray,
    *,
    ndim: int,
    jump_fraction: float,
    log_jump: np.ndarray,
) -> np.ndarray:
    """Each step's probability of being a jump, averaged over its track's
    posterior over the grid (``posterior`` (J, L), rows summing to 1);
    ``jump_fraction`` for all steps or per step."""
    eps = np.broadcast_to(np.asarray(jump_fraction, dtype=float), sq.shape)
    r = np.zeros(len(sq))
    if not np.any(eps > 0):
        return r
    # the grid points some track's posterior reaches (a few dozen of hundreds)
    cols = posterior.max(axis=0) > 1e-12 * posterior.max()
    theta, posterior = theta[:, cols], posterior[:, cols]
    for a in range(0, len(sq), _BLOCK):
        rows = step_row[a:a + _BLOCK]
        e = eps[a:a + _BLOCK, None]
        with np.errstate(divide="ignore"):
            lf = np.log1p(-e) + _brownian_log_density(sq[a:a + _BLOCK, None], theta[rows], ndim)
            lg = np.log(e) + log_jump[a:a + _BLOCK, None]
        r[a:a + _BLOCK] = np.sum(posterior[rows] * np.exp(lg - np.logaddexp(lf, lg)), axis=1)
    return r


def weighted_dispersion(sq: np.ndarray, step_row: np.ndarray, weight: np.ndarray, n_rows: int, ndim: int,
                        min_steps: int) -> tuple[float, float]:
    """The step dispersion φ (see :func:`~pipeline.size.diffusion.step_dispersion`)
    of the steps weighted by ``weight`` (their probability of being Brownian),
    so that jumps, which the mixture already explains, do not count twice."""
    k = np.bincount(step_row, weights=weight, minlength=n_rows)
    long_enough = np.bincount(step_row, minlength=n_rows) >= min_steps
    k = np.where(long_enough, np.maximum(k, min_steps), 0.0)  # the track's length decides, not its jumps
    moments = pd.DataFrame({
        "n_steps": k,
        "sum_sq_um2": np.bincount(step_row, weights=weight * sq, minlength=n_rows),
        "sum_sq2_um4": np.bincount(step_row, weights=weight * sq**2, minlength=n_rows),
    })
    return step_dispersion(moments, ndim, min_steps=min_steps)
