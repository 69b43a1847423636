"""A regularised maximum-likelihood size distribution: EM with a smoothing
step (EMS; Silverman, Jones, Wilson & Nychka 1990) on Walker's likelihood,
the amount of smoothing chosen by cross-validation.

Walker's unregularised EM over a fine grid converges to a comb of isolated
spikes (a maximum-likelihood mixing distribution is discrete; Lindsay 1983),
so its mode jumps between spikes from one sample to the next. EMS follows
every EM update by a convolution of the weights with a Gaussian in ln d; its
fixed point is a smooth distribution. The kernel width is the one whose fits
best predict held-out tracks (K-fold likelihood cross-validation), taking
the widest width within one standard error of the best (the one-standard-
error rule), so that the data, not a hand-set value, decide how smooth.

References
----------
Silverman, B. W., Jones, M. C., Wilson, J. D. & Nychka, D. W. (1990) A
smoothed EM approach to indirect estimation problems, with particular
reference to stereology and emission tomography. J. R. Stat. Soc. B
52:271-324. Lindsay, B. G. (1983) The geometry of mixture likelihoods: a
general theory. Ann. Stat. 11:86-94. Walker, J. G. (2012) Meas. Sci.
Technol. 23:065605.
"""

from __future__ import annotations

import numpy as np

from ..io.schema import section_defaults
from .walker import walker_em

__all__ = ["SMOOTHING_CANDIDATES", "smoothing_matrix", "ems", "fit_distribution", "choose_smoothing"]

#: The ``size`` section's defaults (workflow/schemas/size.schema.yaml), for keyword defaults.
_DEFAULTS = section_defaults("size")

#: Kernel widths tried by cross-validation: s.d. of the Gaussian in ln d
#: (0.02 = 2 % in diameter). 0 is plain EM (Walker's estimator).
SMOOTHING_CANDIDATES = (0.0, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3)

_WEIGHT_FLOOR = 1e-150  # as in walker.py: keeps products out of the subnormal range


def smoothing_matrix(grid_nm: np.ndarray, width: float) -> np.ndarray:
    """S (L, L) with ``S @ p`` the weights ``p`` spread by a Gaussian of s.d.
    ``width`` in ln d; columns sum to 1, so the total weight is kept."""
    x = np.log(np.asarray(grid_nm, dtype=float))
    if width <= 0:
        return np.eye(x.size)
    K = np.exp(-0.5 * ((x[:, None] - x[None, :]) / width) ** 2)
    return K / K.sum(axis=0, keepdims=True)


def ems(
    P: np.ndarray,
    S: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    max_iter: int = _DEFAULTS["max_iter"],
    tol: float = _DEFAULTS["tol"],
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, int, bool]:
    """EMS: p ← S · EM(p) until the weights stop changing.

    Parameters
    ----------
    P : array (J, L)
        Walker's likelihood of each track at each grid point
        (:func:`pipeline.size.walker.walker_likelihood`).
    S : array (L, L)
        The smoothing step (:func:`smoothing_matrix`); the identity gives
        Walker's EM.
    weights : array (J,), optional
        Per-track weights (bootstrap counts, a cross-validation fold).
    max_iter, tol
        Stop after ``max_iter`` updates, or when the mean log likelihood per
        track changes by less than ``tol`` in one update and no weight moves
        by more than ``tol``.
    start : array (L,), optional
        Starting weights (default uniform).

    Returns
    -------
    p : array (L,), sums to 1
    iterations : int
    converged : bool
    """
    J, L = P.shape
    w = np.ones(J) if weights is None else np.asarray(weights, dtype=float)
    keep = w > 0
    Pw, w = P[keep], w[keep]
    wsum = w.sum()
    p = np.full(L, 1.0 / L) if start is None else np.asarray(start, dtype=float) / np.sum(start)
    prev = -np.inf
    for it in range(1, int(max_iter) + 1):
        # einsum, not BLAS: one weighting's products are memory-bound, and a
        # shared multi-threaded BLAS slows them down (walker.py's _one_blas_thread)
        Q = np.maximum(np.einsum("jl,l->j", Pw, p), np.finfo(float).tiny)
        ll = float(np.dot(w, np.log(Q)) / wsum)
        em = p * np.einsum("j,jl->l", w / Q, Pw) / wsum
        new = S @ em
        new[new < _WEIGHT_FLOOR] = 0.0
        new /= new.sum()
        moved = float(np.max(np.abs(new - p)))
        p = new
        if abs(ll - prev) < tol and moved < tol:
            return p, it, True
        prev = ll
    return p, int(max_iter), False


def fit_distribution(
    P: np.ndarray,
    grid_nm: np.ndarray,
    width: float,
    *,
    weights: np.ndarray | None = None,
    max_iter: int = _DEFAULTS["max_iter"],
    tol: float = _DEFAULTS["tol"],
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, int, bool]:
    """The distribution for kernel width ``width``: :func:`ems`, or for
    width 0 Walker's EM (:func:`~pipeline.size.walker.walker_em`, SQUAREM,
    stopped at ``tol``). Returns ``(p, iterations, converged)``."""
    if width <= 0:
        pw, it, conv = walker_em(P, weights=None if weights is None else np.asarray(weights)[None, :],
                                 max_iter=max_iter, tol=tol, start=start)
        return pw[0], int(it[0]), bool(conv[0])
    return ems(P, smoothing_matrix(grid_nm, width), weights=weights, max_iter=max_iter, tol=tol, start=start)


def choose_smoothing(
    P: np.ndarray,
    grid_nm: np.ndarray,
    *,
    candidates=SMOOTHING_CANDIDATES,
    folds: int = 5,
    seed: int = 0,
    max_iter: int = _DEFAULTS["max_iter"],
    tol: float = _DEFAULTS["tol"],
) -> tuple[float, dict[str, list[float]]]:
    """The kernel width of :func:`ems`, by K-fold likelihood cross-validation.

    The tracks (rows of ``P``) are split at random into ``folds`` parts;
    for every candidate width, EMS is fitted on all parts but one and each
    held-out track scored by its log likelihood under that fit. The widest
    candidate whose mean score is within one standard error of the best is
    chosen, the standard error of the per-track differences from the best
    (paired: the same tracks score every candidate).

    Returns
    -------
    width : float
        The chosen s.d. in ln d.
    scores : dict
        ``candidates``, ``mean`` held-out log likelihood per track and
        ``se`` of its difference from the best, for the summary.
    """
    J = P.shape[0]
    folds = int(min(folds, J))
    if folds < 2:
        return float(max(candidates)), {"candidates": list(candidates), "mean": [], "se": []}
    fold = np.random.default_rng(seed).permutation(J) % folds
    # each track's log likelihood under the fit that did not see it
    held = np.zeros((len(candidates), J))
    for c, width in enumerate(candidates):
        for f in range(folds):
            test = fold == f
            p, _, _ = fit_distribution(P, grid_nm, width, weights=(~test).astype(float), max_iter=max_iter, tol=tol)
            held[c, test] = np.log(np.maximum(P[test] @ p, np.finfo(float).tiny))
    mean = held.mean(axis=1)
    best = int(np.argmax(mean))
    # paired over tracks: how much worse than the best, and how sure
    diff = held - held[best]
    se = diff.std(axis=1, ddof=1) / np.sqrt(J)
    within = [c for c in range(len(candidates)) if diff[c].mean() >= -se[c]]
    chosen = max(within, key=lambda c: candidates[c])
    return float(candidates[chosen]), {
        "candidates": [float(c) for c in candidates],
        "mean": [float(v) for v in mean],
        "se": [float(v) for v in se],
    }
