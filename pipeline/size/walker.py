"""Walker's maximum-likelihood size distribution: the number-weighted
distribution over a log-spaced diameter grid that best explains every
track's mean squared step, given its number of steps and one localization
error for all tracks, fitted by EM (Walker 2012) accelerated by SQUAREM
(Varadhan & Roland 2008)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import special
from threadpoolctl import threadpool_limits

from ..io.schema import section_defaults
from ..physics import stokes_einstein_D
from .conditions import check_interval

__all__ = ["diameter_grid", "walker_likelihood", "walker_em", "walker_distribution"]

#: The ``size`` section\'s defaults (workflow/schemas/size.schema.yaml), for keyword defaults.
_DEFAULTS = section_defaults("size")


def diameter_grid(grid_min_nm: float, grid_max_nm: float, grid_points: int) -> np.ndarray:
    """``grid_points`` diameters, nm, evenly spaced in log d from
    ``grid_min_nm`` to ``grid_max_nm``."""
    return np.exp(np.linspace(np.log(grid_min_nm), np.log(grid_max_nm), int(grid_points)))


def walker_likelihood(
    mean_sq_step_um2,
    n_steps,
    *,
    frame_interval_s: float,
    temperature_K: float,
    viscosity_Pa_s: float,
    grid_nm: np.ndarray,
    ndim: int = 2,
    sigma_um: float = 0.0,
    R: float = 0.0,
    n_pairs=None,
) -> np.ndarray:
    """Likelihood matrix P[j, l] of track j's mean squared step m_j given
    diameter grid point l, each row scaled so that its maximum is 1 (EM only
    needs ratios along a row).

    A single-frame step has per-axis variance v = 2(DΔt + σ² − 2RDΔt), so its
    squared length (summed over ``ndim`` axes) has mean
    θ = 2·ndim·(DΔt + σ² − 2RDΔt) (in 2D the 4DΔt + 4(σ² − 2RDΔt) of Walker
    2012 with the offset of Michalet 2010). The squared lengths of k_j steps
    are a sum of k_j·ndim squared normals, so
    m_j ~ Gamma(shape a = k_j·ndim/2, scale θ/a) — Walker's Gamma(k, θ/k) in
    2D. Noise and blur also correlate adjacent steps (covariance
    c = −(σ² − 2RDΔt) per axis); with ``n_pairs`` given, the shape is
    moment-matched to the resulting variance,
    a = (ndim/2)·k² / (k + 2·n_pairs·(c/v)²), which reduces to Walker's when
    c = 0.

    Parameters
    ----------
    mean_sq_step_um2, n_steps : arrays (J,)
        m_j in µm² and k_j.
    grid_nm : array (L,)
        Diameters, nm.
    n_pairs : array (J,), optional
        Adjacent step pairs per track (k_j − 1 without gaps).

    References
    ----------
    Walker, J. G. (2012) Improved nano-particle tracking analysis. Meas. Sci.
    Technol. 23:065605. Michalet, X. (2010) PRE 82:041914.
    """
    m = np.asarray(mean_sq_step_um2, dtype=float)[:, None]
    k = np.asarray(n_steps, dtype=float)[:, None]
    dt = check_interval(frame_interval_s)
    D = np.asarray(stokes_einstein_D(np.asarray(grid_nm, dtype=float), temperature_K, viscosity_Pa_s))[None, :]
    s2 = float(sigma_um) ** 2
    per_axis = D * dt + s2 - 2.0 * R * D * dt  # v / 2
    theta = 2.0 * ndim * per_axis
    a = 0.5 * ndim * k
    if n_pairs is not None:
        rho = -(s2 - 2.0 * R * D * dt) / (2.0 * per_axis)  # c / v
        pairs = np.asarray(n_pairs, dtype=float)[:, None]
        a = 0.5 * ndim * k**2 / (k + 2.0 * pairs * rho**2)
    logp = a * np.log(a) - special.gammaln(a) + (a - 1.0) * np.log(m) - a * np.log(theta) - a * m / theta
    logp -= logp.max(axis=1, keepdims=True)
    # Flush negligible likelihoods to zero: together with the weight floor
    # of the EM (1e-150) every product p_l P_jl stays far from the subnormal
    # range, whose arithmetic is ~100x slower.
    return np.where(logp > -300.0, np.exp(np.maximum(logp, -300.0)), 0.0)


_WEIGHT_FLOOR = 1e-150  # EM weights below this are dead (see walker_likelihood)


def _one_blas_thread():
    """BLAS on this thread alone. One weighting's products are memory-bound,
    and a multi-threaded BLAS slows down many-fold when the cores are shared
    (Snakemake jobs, Dask workers); many weightings at once (the bootstrap's
    replicates) are matrix products, where one BLAS thread is about 5x
    numpy's einsum (100 replicates of 7,068 tracks: 2.0 s against 11.1 s)."""
    return threadpool_limits(1, user_api="blas")


def _em_map(p, P, W, wsum):
    """One EM update of the rows of ``p``; also returns the mean log
    likelihood per track at ``p`` (before the update). BLAS products: call
    it under :func:`_one_blas_thread`."""
    Q = np.maximum(p @ P.T, np.finfo(float).tiny)  # Σ_l p_l P_jl
    ll = np.sum(W * np.log(Q), axis=1) / wsum[:, 0]
    new = p * ((W / Q) @ P) / wsum
    new[new < _WEIGHT_FLOOR] = 0.0  # dead grid points: keep products out of subnormal range
    return new, ll


def walker_em(
    P: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    max_iter: int = _DEFAULTS["max_iter"],
    tol: float = _DEFAULTS["tol"],
    start: np.ndarray | None = None,
    accelerate: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximise Σ_j w_j log Σ_l p_l P[j, l] over grid weights p by EM
    (Walker 2012): p_l ← p_l · Σ_j w_j P_jl / (Σ_l' p_l' P_jl') / Σ_j w_j.

    Several weightings (bootstrap replicates) are solved at once: ``weights``
    (B, J) gives B problems, returned as B rows. With ``accelerate`` the EM
    map is extrapolated by SQUAREM (Varadhan & Roland 2008, scheme S3, with
    a fall-back to the plain EM step whenever the extrapolation does not
    increase the likelihood), which needs several times fewer EM updates for
    the same likelihood. Each problem stops when its mean log likelihood per
    track improves by less than ``tol`` in one cycle (one EM update, or one
    SQUAREM cycle of three), or after ``max_iter`` EM updates (both default
    to the ``size`` section's).

    Returns
    -------
    p : (B, L) weights (each row sums to 1)
    iterations : (B,) int, EM updates used
    converged : (B,) bool

    References
    ----------
    Walker, J. G. (2012) Meas. Sci. Technol. 23:065605. Varadhan, R. &
    Roland, C. (2008) Simple and globally convergent methods for accelerating
    the convergence of any EM algorithm. Scand. J. Stat. 35:335-353.
    """
    P_full = np.asarray(P, dtype=float)
    J, L_full = P_full.shape
    # grid points that no track supports (P <= 1e-10 everywhere, rows scaled to
    # max 1) lose their weight in the first update: leave them out altogether
    support = P_full.max(axis=0) > 1e-10 if J else np.ones(L_full, dtype=bool)
    P = np.ascontiguousarray(P_full[:, support])
    L = P.shape[1]
    W = np.ones((1, J)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    B = W.shape[0]
    wsum = W.sum(axis=1, keepdims=True)
    if start is None:
        p = np.full((B, L), 1.0 / L)
    else:
        p = np.tile(np.asarray(start, float)[support], (B, 1))
    p /= p.sum(axis=1, keepdims=True)
    iterations = np.zeros(B, dtype=np.int64)
    converged = np.zeros(B, dtype=bool)
    active = np.arange(B)
    prev = np.full(B, -np.inf)
    max_iter = int(max_iter)
    with _one_blas_thread():
        while active.size:
            pa, Wa, wa = p[active], W[active], wsum[active]
            if accelerate and iterations[active[0]] + 3 <= max_iter:
                p1, ll0 = _em_map(pa, P, Wa, wa)
                p2, ll1 = _em_map(p1, P, Wa, wa)
                r = p1 - pa
                v = p2 - p1 - r
                rn = np.sqrt(np.sum(r**2, axis=1))
                vn = np.sqrt(np.sum(v**2, axis=1))
                with np.errstate(invalid="ignore", divide="ignore"):
                    alpha = np.where(vn > 0, -rn / vn, -1.0)
                alpha = np.minimum(alpha, -1.0)[:, None]
                trial = pa - 2 * alpha * r + alpha**2 * v
                trial[trial < _WEIGHT_FLOOR] = 0.0
                trial /= np.maximum(trial.sum(axis=1, keepdims=True), np.finfo(float).tiny)
                p3, ll3 = _em_map(trial, P, Wa, wa)
                worse = ~(ll3 >= ll1)  # extrapolation failed: keep the plain EM step
                new = np.where(worse[:, None], p2, p3)
                ll = np.where(worse, ll1, ll3)
                iterations[active] += 3
            else:
                new, ll = _em_map(pa, P, Wa, wa)
                iterations[active] += 1
            p[active] = new
            done = (ll - prev[active] < tol) & np.isfinite(prev[active])
            prev[active] = ll
            converged[active[done]] = True
            active = active[~done & (iterations[active] < max_iter)]
    p /= p.sum(axis=1, keepdims=True)
    full = np.zeros((B, L_full))
    full[:, support] = p
    return full, iterations, converged


def walker_distribution(
    mean_sq_step_um2,
    n_steps,
    *,
    frame_interval_s: float,
    temperature_K: float,
    viscosity_Pa_s: float,
    ndim: int = 2,
    sigma_um: float = 0.0,
    R: float = 0.0,
    grid_nm: np.ndarray | None = None,
    max_iter: int = _DEFAULTS["max_iter"],
    tol: float = _DEFAULTS["tol"],
    n_pairs=None,
) -> pd.DataFrame:
    """Number-weighted size distribution by Walker's maximum-likelihood EM.

    Parameters
    ----------
    mean_sq_step_um2 : array (J,)
        Per track, the mean over its k_j single-frame steps of the squared
        displacement (summed over axes), µm².
    n_steps : array (J,)
        k_j.
    frame_interval_s, temperature_K, viscosity_Pa_s : float
    ndim : int
        2 or 3 (axes the displacements were summed over).
    sigma_um : float
        Localization error per axis, µm.
    R : float
        Motion-blur factor.
    grid_nm : array, optional
        Diameter grid, nm (default: the ``size`` section's ``grid_points``
        log-spaced points from ``grid_min_nm`` to ``grid_max_nm``).
    max_iter, tol : EM stopping (see :func:`walker_em`).
    n_pairs : array (J,), optional
        See :func:`walker_likelihood`.

    Returns
    -------
    DataFrame ``diameter_nm, weight`` (weights sum to 1), with
    ``attrs`` ``iterations``, ``converged``, ``log_likelihood``.

    References
    ----------
    Walker, J. G. (2012) Meas. Sci. Technol. 23:065605.
    """
    if grid_nm is None:
        grid = diameter_grid(_DEFAULTS["grid_min_nm"], _DEFAULTS["grid_max_nm"], _DEFAULTS["grid_points"])
    else:
        grid = np.asarray(grid_nm, dtype=float)
    m = np.asarray(mean_sq_step_um2, dtype=float)
    k = np.asarray(n_steps, dtype=float)
    if m.shape != k.shape:
        raise ValueError(f"mean_sq_step_um2 and n_steps differ in length ({m.shape} vs {k.shape})")
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim}")
    bad = ~(np.isfinite(m) & (m > 0) & np.isfinite(k) & (k >= 1))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} track(s) have no usable mean squared step (m > 0 and k >= 1 needed)"
        )
    if m.size == 0:
        out = pd.DataFrame({"diameter_nm": grid, "weight": np.full(grid.size, np.nan)})
        out.attrs.update(iterations=0, converged=False, log_likelihood=float("nan"))
        return out
    P = walker_likelihood(
        m, k, frame_interval_s=frame_interval_s, temperature_K=temperature_K,
        viscosity_Pa_s=viscosity_Pa_s, grid_nm=grid, ndim=ndim, sigma_um=sigma_um, R=R, n_pairs=n_pairs,
    )
    p, it, conv = walker_em(P, max_iter=max_iter, tol=tol)
    ll = float(np.mean(np.log(np.maximum(P @ p[0], np.finfo(float).tiny))))
    out = pd.DataFrame({"diameter_nm": grid, "weight": p[0]})
    out.attrs.update(iterations=int(it[0]), converged=bool(conv[0]), log_likelihood=ll)
    return out
