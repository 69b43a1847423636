"""Per-track diffusion: D and the localization error σ of every track.

- The covariance estimator (CVE; Vestergaard, Blainey & Flyvbjerg 2014),
  with the motion-blur factor R = t_exp / (6 Δt) (Michalet 2010; Berglund
  2010).
- A least-squares fit of the first p MSD points with p chosen iteratively
  (Michalet 2010; Michalet & Berglund 2012).

Only single-frame steps enter: a track that skips frames (linking with
memory) is cut into consecutive pieces for the step statistics, never read
as a longer single step. Steps are flow- or drift-corrected first
(:mod:`pipeline.size.steps`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ..io.schema import section_defaults
from .conditions import check_interval
from .steps import track_steps

__all__ = [
    "blur_factor", "cve", "optimal_msd_points", "msd_fit", "track_diffusion", "pooled_cve", "pooled_sigma2_se",
    "step_dispersion", "shrunk_sigma2",
]

#: The ``size`` section\'s defaults (workflow/schemas/size.schema.yaml), for keyword defaults.
_DEFAULTS = section_defaults("size")


def blur_factor(exposure_s: float | None, frame_interval_s: float) -> float:
    """Motion-blur factor R = t_exp / (6 Δt) of a rectangular exposure.

    ``exposure_s`` None means an instantaneous exposure (R = 0). The exposure
    cannot exceed the frame interval, so 0 <= R <= 1/6.

    References
    ----------
    Michalet, X. (2010) PRE 82:041914; Berglund, A. J. (2010) PRE 82:011917.
    """
    dt = check_interval(frame_interval_s)
    if exposure_s is None:
        return 0.0
    t = float(exposure_s)
    if not math.isfinite(t) or t < 0 or t > dt * (1 + 1e-9):
        raise ValueError(
            f"exposure_s (trackflow.exposure_s) must lie between 0 and the frame interval "
            f"{dt} s, got {exposure_s!r}"
        )
    return t / (6.0 * dt)


# ---------------------------------------------------------------------------
# CVE
# ---------------------------------------------------------------------------


def _cve_from_moments(msq, mcov, dt, R, sigma=None):
    """CVE from the per-axis mean squared step ``msq`` and the mean product
    of adjacent steps ``mcov`` (arrays broadcast)."""
    msq = np.asarray(msq, dtype=float)
    mcov = np.asarray(mcov, dtype=float)
    if sigma is None:
        D = msq / (2.0 * dt) + mcov / dt
        sigma2 = R * msq + (2.0 * R - 1.0) * mcov  # a product, not (2R-1)+cov
    else:
        s2 = float(sigma) ** 2
        D = (msq - 2.0 * s2) / (2.0 * (1.0 - 2.0 * R) * dt)
        sigma2 = np.full(np.shape(D), s2)
    return D, sigma2


def cve(steps: np.ndarray, dt: float, R: float = 0.0, sigma: float | None = None) -> tuple[float, float]:
    """Covariance-based estimator of D and σ² for ONE track.

    Per axis, with Δx_n the single-frame steps (Vestergaard et al. 2014, Eqs.
    14-15; Michalet 2010 for the blur terms)::

        D  = <Δx_n²> / (2 Δt) + <Δx_n Δx_{n+1}> / Δt
        σ² = R <Δx_n²> + (2R − 1) <Δx_n Δx_{n+1}>

    averaged over the axes. With a known σ (per axis)::

        D = (<Δx²> − 2σ²) / (2 (1 − 2R) Δt)

    Parameters
    ----------
    steps : ndarray, (n, ndim)
        Consecutive single-frame displacements of one track, µm (one axis may
        be given as shape (n,)).
    dt : float
        Frame interval Δt, s.
    R : float
        Motion-blur factor t_exp / (6 Δt), 0 <= R <= 1/4.
    sigma : float, optional
        Known static localization error per axis, µm; estimated when None.

    Returns
    -------
    D : float
        Diffusion coefficient, µm²/s (can be negative for short noisy tracks:
        the estimator is unbiased, not constrained).
    sigma2 : float
        Localization variance per axis, µm² (σ² itself when given).

    References
    ----------
    Vestergaard, C. L., Blainey, P. C. & Flyvbjerg, H. (2014) Optimal
    estimation of diffusion coefficients from single-particle trajectories.
    PRE 89:022726. Michalet, X. (2010) PRE 82:041914.
    """
    dt = check_interval(dt)
    if not 0.0 <= R <= 0.25:
        raise ValueError(f"blur factor R must lie in [0, 1/4], got {R}")
    steps = np.asarray(steps, dtype=float)
    if steps.ndim == 1:
        steps = steps[:, None]
    if steps.ndim != 2 or not np.all(np.isfinite(steps)):
        raise ValueError(f"steps must be a finite (n, ndim) array, got shape {steps.shape}")
    n = steps.shape[0]
    if n < (1 if sigma is not None else 2):
        raise ValueError(f"CVE needs at least {1 if sigma is not None else 2} steps, got {n}")
    msq = float(np.mean(steps**2))
    mcov = float(np.mean(steps[1:] * steps[:-1])) if n > 1 else 0.0
    D, sigma2 = _cve_from_moments(msq, mcov, dt, R, sigma)
    return float(D), float(sigma2)


# ---------------------------------------------------------------------------
# optimal-points MSD fit
# ---------------------------------------------------------------------------


def optimal_msd_points(x: float, n_positions: int, target: str = "slope") -> int:
    """Optimal number of MSD points p for an unweighted fit MSD(n) = a + b n.

    p = ⌊f L / (f³ + L³)^(1/3)⌋ with, for the slope b (hence D),
    f_b = 2 + 1.6 x^0.51 and L_b = 3 + (4.5 N^0.4 − 8.5)^1.2, and for the
    offset a (hence σ), f_a = 2 + 1.35 x^0.6 and L_a = 0.8 + 0.564 N
    (Michalet 2010, Eqs. 20-21, used by Michalet & Berglund 2012). Clipped
    to 2 <= p <= N − 1.

    Parameters
    ----------
    x : float
        Reduced localization error σ²/(DΔt) (with blur, the effective
        (σ² − 2RDΔt)/(DΔt), i.e. the MSD offset over its slope).
    n_positions : int
        Positions N in the track.
    target : "slope" or "offset"
    """
    N = int(n_positions)
    x = max(float(x), 0.0) if math.isfinite(x) else 1e6
    if target == "slope":
        f = 2.0 + 1.6 * x**0.51
        L = 3.0 + max(4.5 * N**0.4 - 8.5, 0.0) ** 1.2
    elif target == "offset":
        f = 2.0 + 1.35 * x**0.6
        L = 0.8 + 0.564 * N
    else:
        raise ValueError(f"target must be 'slope' or 'offset', got {target!r}")
    p = int(math.floor(f * L / (f**3 + L**3) ** (1.0 / 3.0)))
    return int(min(max(p, 2), max(N - 1, 2)))


def _lag_msd(positions: np.ndarray, frames: np.ndarray, max_lag: int):
    """Per-axis-averaged MSD of one track at exact frame lags 1..max_lag,
    with the number of pairs at each lag (gaps leave lags without pairs)."""
    frames = np.asarray(frames, dtype=np.int64)
    span = int(frames[-1] - frames[0]) + 1
    dense = np.full((span, positions.shape[1]), np.nan)
    dense[frames - frames[0]] = positions
    max_lag = min(int(max_lag), span - 1)
    msd = np.full(max_lag, np.nan)
    count = np.zeros(max_lag, dtype=np.int64)
    for lag in range(1, max_lag + 1):
        d = dense[lag:] - dense[:-lag]
        ok = np.isfinite(d[:, 0])
        count[lag - 1] = int(ok.sum())
        if count[lag - 1]:
            msd[lag - 1] = float(np.mean(d[ok] ** 2))
    return msd, count


def msd_fit(
    positions_um: np.ndarray,
    frames: np.ndarray,
    dt: float,
    R: float = 0.0,
    *,
    sigma: float | None = None,
    max_iter: int = 20,
) -> tuple[float, float, int]:
    """D and σ² of one track from an unweighted fit of its first p MSD points.

    The per-axis MSD is MSD(nΔt) = 2(σ² − 2RDΔt) + 2DΔt·n (Michalet 2010,
    Eq. 8 with blur). p starts at 2 and is updated from the reduced error
    x = a/b of the current fit with :func:`optimal_msd_points` until it stops
    changing (Michalet & Berglund 2012, Sec. IV). With a known σ the offset is
    fixed and only the slope is fitted (still with the optimal p).

    Returns
    -------
    D : float (µm²/s), sigma2 : float (µm² per axis), p : int (points used)

    References
    ----------
    Michalet, X. (2010) PRE 82:041914; Michalet, X. & Berglund, A. J. (2012)
    Optimal diffusion coefficient estimation in single-particle tracking.
    PRE 85:061916.
    """
    dt = check_interval(dt)
    positions_um = np.asarray(positions_um, dtype=float)
    if positions_um.ndim == 1:
        positions_um = positions_um[:, None]
    frames = np.asarray(frames)
    N = len(frames)
    if N < 3:
        return float("nan"), float("nan"), 0
    p_cap = min(N - 1, 100)
    msd, count = _lag_msd(positions_um, frames, p_cap)
    lags = np.arange(1, len(msd) + 1, dtype=float)

    def fit(p):
        ok = (lags <= p) & (count > 0)
        n, y = lags[ok], msd[ok]
        if sigma is not None:
            a = 2.0 * float(sigma) ** 2  # + the blur term, solved below
            if len(n) < 1:
                return float("nan"), float("nan")
            # y = 2σ² + b (n − 2R): least squares for b
            b = float(np.sum((y - a) * (n - 2 * R)) / np.sum((n - 2 * R) ** 2))
            return a - 2 * R * b, b
        if len(n) < 2:
            return float("nan"), float("nan")
        b, a = np.polyfit(n, y, 1)
        return float(a), float(b)

    p = 2
    seen = set()
    for _ in range(int(max_iter)):
        a, b = fit(p)
        if not (math.isfinite(a) and math.isfinite(b)):
            break
        x = a / b if b > 0 else float("inf")
        p_new = min(optimal_msd_points(x, N, "slope"), len(msd))
        if p_new == p or p_new in seen:
            p = p_new
            break
        seen.add(p)
        p = p_new
    a, b = fit(p)
    D = b / (2.0 * dt)
    sigma2 = a / 2.0 + 2.0 * R * D * dt if sigma is None else float(sigma) ** 2
    return float(D), float(sigma2), int(p)


# ---------------------------------------------------------------------------
# all tracks
# ---------------------------------------------------------------------------


#: Tracks with fewer single-frame steps do not enter the dispersion estimate
#: (their own mean is too close to each step).
DISPERSION_MIN_STEPS = 5
#: When the tracks' σ² differ beyond chance (Cochran's Q at this p-value),
#: a track's shrunk localization variance stays within LIMITED_TRANSLATION
#: of its own estimate's standard errors (:func:`shrunk_sigma2`).
HETEROGENEITY_P = 1e-3
LIMITED_TRANSLATION = 1.0


def step_dispersion(moments: pd.DataFrame, ndim: int, min_steps: float = DISPERSION_MIN_STEPS) -> tuple[float, float]:
    """How much more the squared steps of a track scatter about their mean
    than Brownian motion allows: φ = 1 for free diffusion with Gaussian
    localization error, whatever each track's D, σ and blur.

    A single-frame step is Gaussian, so its squared length x is
    μ·χ²(ndim)/ndim, with variance (2/ndim)·μ² about its track's mean μ.
    φ is the pooled ratio of the observed within-track variance to that,
    Σ_j Σ_i (x_ij − x̄_j)² / Σ_j (k_j − 1)·(2/ndim)·x̄_j² / (1 + 2/(ndim·k_j))
    (the last factor removes the bias of x̄_j² as an estimate of μ_j²), over
    tracks of at least :data:`DISPERSION_MIN_STEPS` steps: a quasi-likelihood
    dispersion parameter (McCullagh & Nelder 1989, §9.2.4). Mislinks,
    particles that stick and move, and video compression (macroblocks copied
    from the previous frame freeze a particle, which then catches up) all
    raise it; on simulated Brownian tracks it is 1.00 ± 0.01.

    Parameters
    ----------
    moments : DataFrame
        Per track ``n_steps``, ``sum_sq_um2`` and ``sum_sq2_um4`` (the sums
        over single-frame steps of x and x²).
    ndim : int
    min_steps : float
        Tracks with fewer steps are left out.

    Returns
    -------
    (φ, its standard error from the spread of the per-track ratios), NaN
    without a track long enough.
    """
    k = moments["n_steps"].to_numpy(dtype=float)
    use = k >= min_steps
    if not use.any():
        return float("nan"), float("nan")
    k = k[use]
    s1 = moments["sum_sq_um2"].to_numpy()[use]
    s2 = moments["sum_sq2_um4"].to_numpy()[use]
    mean = s1 / k
    within = s2 - k * mean**2  # Σ (x − x̄)²
    expected = (k - 1) * (2.0 / ndim) * mean**2 / (1.0 + 2.0 / (ndim * k))
    good = expected > 0
    if not good.any():
        return float("nan"), float("nan")
    within, expected = within[good], expected[good]
    phi = float(within.sum() / expected.sum())
    # the ratio estimator's standard error over tracks
    w = expected / expected.sum()
    n = len(w)
    resid = within / expected - phi
    se = float(np.sqrt(np.sum(w**2 * resid**2) * n / max(n - 1, 1))) if n > 1 else float("nan")
    return phi, se


def _sigma2_estimates(sizes: pd.DataFrame, ndim: int, R: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per track: which have a usable covariance estimate of σ² (2 or more
    adjacent pairs), the estimates σ̂²_j and their sampling variances
    v_j = (2R − 1)²·m_j²/(p_j·ndim) + 2R²·m_j²/(k_j·ndim), m_j the per-axis
    mean squared step, k_j the steps and p_j the adjacent pairs (the
    variance of a mean of products of adjacent steps and of squared steps,
    for Gaussian steps)."""
    k = sizes["n_steps"].to_numpy(dtype=float)
    pairs = sizes["n_pairs"].to_numpy(dtype=float)
    m = sizes["mean_sq_step_um2"].to_numpy(dtype=float) / ndim
    own = sizes["sigma2_um2"].to_numpy(dtype=float)
    use = (pairs >= 2) & np.isfinite(own) & np.isfinite(m) & (m > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (2.0 * R - 1.0) ** 2 * m**2 / (pairs * ndim) + 2.0 * R**2 * m**2 / (k * ndim)
    return use, own, v


def shrunk_sigma2(sizes: pd.DataFrame, ndim: int, R: float, sigma2: float,
                  negative: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """Each track's localization variance: its own covariance estimate
    shrunk towards the sample's ``sigma2`` by how much the tracks' σ truly
    differ (a random-effects model, DerSimonian & Laird 1986).

    With σ̂²_j and their sampling variances v_j (see :func:`_sigma2_estimates`),
    the between-track variance of the true σ² is DerSimonian and Laird's
    moment estimate τ² = max(0, (Q − (n − 1)) / (Σw − Σw²/Σw)), w_j = 1/v_j,
    Q = Σ w_j (σ̂²_j − σ̄²)², σ̄² the weighted mean; and σ²_j = σ² +
    τ²/(τ² + v_j)·(σ̂²_j − σ²), clipped at 0. When the tracks agree (Q
    about n − 1, as on simulated tracks, where τ² = 0) every track takes
    ``sigma2``, Walker's model; on bulk_water, whose dim and defocused
    tracks have several times the error of sharp ones, the precise tracks
    take about their own. When Q says the tracks differ beyond chance, no
    track moves by more than one standard error of its own estimate
    (limited translation, Efron & Morris 1972): the normal random-effects
    model takes bulk_water's few defocused tracks, with tens of times the
    typical σ², for noise, and shrunk to the sample's σ their noise passes
    for fast motion (a peak at 0.2-0.4 µm, 5 % of the tracks). Tracks with
    fewer than 2 pairs keep ``sigma2``.
    ``negative``: σ² below zero is kept, not clipped (the variance offset of
    steps over several frames, where positions smoothed in time act as
    more blur; see :mod:`pipeline.size.lag`).

    Returns
    -------
    (σ²_j per row of ``sizes``, {"heterogeneity": Q/(n − 1), "tau2_um4": τ²})
    """
    use, own, v_all = _sigma2_estimates(sizes, ndim, R)
    base = float(sigma2) if np.isfinite(sigma2) else 0.0
    base = base if negative else max(base, 0.0)
    floor = -np.inf if negative else 0.0
    out = np.full(len(sizes), base)
    if use.sum() < 3:
        return out, {"heterogeneity": float("nan"), "tau2_um4": 0.0}
    v = v_all[use]
    w = 1.0 / v
    mean = np.sum(w * own[use]) / w.sum()
    Q = float(np.sum(w * (own[use] - mean) ** 2))
    n = int(use.sum())
    tau2 = max(0.0, (Q - (n - 1)) / (w.sum() - np.sum(w**2) / w.sum()))
    shrunk = base + tau2 / (tau2 + v) * (own[use] - base)
    if stats.chi2.sf(Q, n - 1) < HETEROGENEITY_P:
        # The tracks truly differ. Limited translation (Efron & Morris 1972):
        # no track moves by more than LIMITED_TRANSLATION of its own standard
        # errors, so that the few tracks far noisier than the rest (defocused
        # particles), which the normal random-effects model takes for noise,
        # keep most of their error. Where they do not differ (simulated
        # tracks), all take the sample's σ², Walker's model.
        reach = LIMITED_TRANSLATION * np.sqrt(v)
        shrunk = np.clip(shrunk, own[use] - reach, own[use] + reach)
    out[use] = np.clip(shrunk, floor, None)
    return out, {"heterogeneity": Q / (n - 1), "tau2_um4": tau2}


def _per_track_moments(st: dict) -> pd.DataFrame:
    """Per track: rows, single-frame steps k, adjacent step pairs, the sum of
    squared steps (over axes) and of adjacent-step products (over axes)."""
    n_tracks = len(st["ids"])
    code = st["code"]
    steps, ok, pair_ok = st["steps"], st["step_ok"], st["pair_ok"]
    sq = np.sum(steps**2, axis=1) if len(steps) else np.zeros(0)
    prod = np.sum(steps[1:] * steps[:-1], axis=1) if len(steps) > 1 else np.zeros(0)
    step_code = code[:-1]
    pair_code = code[:-2]
    frames = st["frame"]
    first = np.full(n_tracks, np.iinfo(np.int64).max)
    last = np.full(n_tracks, np.iinfo(np.int64).min)
    np.minimum.at(first, code, frames)
    np.maximum.at(last, code, frames)
    return pd.DataFrame(
        {
            "particle": st["ids"],
            "n_frames": np.bincount(code, minlength=n_tracks),
            "first_frame": first,
            "last_frame": last,
            "n_steps": np.bincount(step_code[ok], minlength=n_tracks),
            "n_pairs": np.bincount(pair_code[pair_ok], minlength=n_tracks),
            "sum_sq_um2": np.bincount(step_code[ok], weights=sq[ok], minlength=n_tracks),
            "sum_prod_um2": np.bincount(pair_code[pair_ok], weights=prod[pair_ok], minlength=n_tracks),
            "sum_sq2_um4": np.bincount(step_code[ok], weights=sq[ok] ** 2, minlength=n_tracks),
            "n_outlier_steps": np.bincount(step_code[st["step_outlier"]], minlength=n_tracks),
        }
    )


def track_diffusion(
    tracks: pd.DataFrame,
    *,
    pixel_size_um,
    frame_interval_s: float,
    exposure_s: float | None = None,
    method: str = _DEFAULTS["method"],
    sigma_um: float | None = None,
    min_steps: int = _DEFAULTS["min_steps"],
    subtract_flow: bool = _DEFAULTS["subtract_flow"],
    outlier_p: float | None = _DEFAULTS["outlier_p"],
    remove_outliers: bool = _DEFAULTS["remove_outliers"],
    exclude_steps: np.ndarray | None = None,
) -> pd.DataFrame:
    """Diffusion coefficient and localization error of every track.

    Only single-frame steps are used (a gap in a track breaks it into
    consecutive pieces whose steps are pooled; products of adjacent steps are
    taken within the pieces only), after subtracting the flow or drift (see
    :mod:`pipeline.size.steps`). Keyword defaults are the ``size``
    section's (``workflow/schemas/size.schema.yaml``).

    Parameters
    ----------
    tracks : DataFrame
        ``frame, [z,] y, x, particle`` in pixels.
    pixel_size_um : float or sequence
        µm per pixel, per axis in the table's order (z, y, x / y, x).
    frame_interval_s : float
        Δt, s.
    exposure_s : float, optional
        Exposure time, s (motion blur R = t_exp/(6Δt)); None means R = 0.
    method : {"cve", "msd"}
        Covariance estimator (:func:`cve`) or optimal-points MSD fit
        (:func:`msd_fit`).
    sigma_um : float, optional
        Known localization error per axis, µm (the known-σ formulas).
    min_steps : int
        Tracks with fewer single-frame steps are left out (the caller counts
        them: ``len(tracks.particle.unique()) - len(result)``).
    outlier_p, remove_outliers
        Count (and optionally leave out) the steps too long for one
        diffusion coefficient (:func:`~pipeline.size.steps.outlier_steps`).
    subtract_flow : bool
        Subtract the flow or drift (see :func:`~pipeline.size.steps.track_steps`).
    exclude_steps : bool array, optional
        Steps to leave out, like gaps, in the order of
        :func:`~pipeline.size.steps.track_steps`'s ``steps`` (the jumps of
        the mislink model).

    Returns
    -------
    DataFrame, one row per kept track: ``particle, n_frames, first_frame,
    last_frame, n_steps, n_pairs, mean_sq_step_um2`` (mean over steps of the
    squared displacement summed over axes), ``D_um2_s``, ``sigma2_um2``
    (per axis; may be negative from noise), ``sigma_um`` (√ of it, clipped at
    0), ``n_outlier_steps`` and, for ``method="msd"``, ``msd_points``.
    ``attrs`` hold the pooled covariance estimate over every step of the
    kept tracks (``pooled_D_um2_s``, ``pooled_sigma2_um2`` and its standard
    error ``pooled_sigma2_se_um2``), ``blur_R``,
    the motion correction and the counts.
    """
    if method not in ("cve", "msd"):
        raise ValueError(f"size.method must be 'cve' or 'msd', got {method!r}")
    dt = check_interval(frame_interval_s)
    R = blur_factor(exposure_s, dt)
    st = track_steps(tracks, pixel_size_um=pixel_size_um, subtract_flow=subtract_flow, outlier_p=outlier_p,
                     remove_outliers=remove_outliers)
    # a track's length decides whether it is sized, not how many of its steps are excluded
    long_enough = np.bincount(st["code"][:-1][st["step_ok"]], minlength=len(st["ids"])) >= max(int(min_steps), 1)
    if exclude_steps is not None:
        # left out like gaps: neither the steps nor the pairs they are in count
        step_ok = st["step_ok"] & ~np.asarray(exclude_steps, dtype=bool)
        st = {**st, "step_ok": step_ok, "pair_ok": step_ok[1:] & step_ok[:-1]}
    out = _per_track_moments(st)
    ndim = st["ndim"]
    out = out[long_enough & (out["n_steps"].to_numpy() > 0)].reset_index(drop=True)
    pooled_D, pooled_s2 = pooled_cve(out, ndim, dt, R)
    pooled_s2_se = pooled_sigma2_se(out, ndim, R)
    dispersion, dispersion_se = step_dispersion(out, ndim)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean_sq_step_um2"] = out["sum_sq_um2"] / out["n_steps"]
        msq = out["sum_sq_um2"] / (out["n_steps"] * ndim)
        mcov = out["sum_prod_um2"] / (out["n_pairs"] * ndim)
    if method == "cve":
        D, s2 = _cve_from_moments(msq.to_numpy(), mcov.to_numpy(), dt, R, sigma_um)
        if sigma_um is None:
            # no adjacent step pair: the covariance (and so D) is undefined
            D = np.where(out["n_pairs"].to_numpy() > 0, D, np.nan)
            s2 = np.where(out["n_pairs"].to_numpy() > 0, s2, np.nan)
    else:
        D = np.full(len(out), np.nan)
        s2 = np.full(len(out), np.nan)
        p = np.zeros(len(out), dtype=np.int64)
        keep = np.isin(st["code"], np.searchsorted(st["ids"], out["particle"].to_numpy()))
        code = st["code"][keep]
        positions, frames = st["positions"][keep], st["frame"][keep]
        bounds = np.r_[0, np.flatnonzero(np.diff(code)) + 1, len(code)]
        for i in range(len(bounds) - 1):
            a, b = bounds[i], bounds[i + 1]
            D[i], s2[i], p[i] = msd_fit(positions[a:b], frames[a:b], dt, R, sigma=sigma_um)
        out["msd_points"] = p
    out["D_um2_s"] = D
    out["sigma2_um2"] = s2
    out["sigma_um"] = np.sqrt(np.clip(s2, 0.0, None))
    out = out.drop(columns=["sum_sq_um2", "sum_prod_um2", "sum_sq2_um4"])
    out.attrs.update(
        blur_R=R,
        motion=st["motion"],
        motion_columns=list(st["motion_columns"]),
        steps_missing_flow=st["steps_missing_flow"],
        n_tracks_in=len(st["ids"]),
        pooled_D_um2_s=pooled_D,
        pooled_sigma2_um2=pooled_s2,
        pooled_sigma2_se_um2=pooled_s2_se,
        step_dispersion=dispersion,
        step_dispersion_se=dispersion_se,
        outliers_removed=bool(remove_outliers),
    )
    return out


def pooled_cve(moments: pd.DataFrame, ndim: int, dt: float, R: float) -> tuple[float, float]:
    """D (µm²/s) and σ² (µm² per axis) by the covariance estimator over every
    single-frame step of every track at once (Vestergaard et al. 2014 with
    the moments pooled): one estimate for the sample, with the errors of
    short tracks averaged out. NaN without steps or step pairs."""
    n_steps = float(moments["n_steps"].sum()) * ndim
    n_pairs = float(moments["n_pairs"].sum()) * ndim
    if n_steps == 0 or n_pairs == 0:
        return float("nan"), float("nan")
    msq = float(moments["sum_sq_um2"].sum()) / n_steps
    mcov = float(moments["sum_prod_um2"].sum()) / n_pairs
    D, s2 = _cve_from_moments(msq, mcov, dt, R)
    return float(D), float(s2)


def pooled_sigma2_se(moments: pd.DataFrame, ndim: int, R: float) -> float:
    """Approximate standard error (µm²) of the pooled σ² of :func:`pooled_cve`,
    σ² = R·⟨Δx²⟩ + (2R − 1)·⟨ΔxₙΔxₙ₊₁⟩, from the sampling variances of the
    two moments (each step's squared length and each product has a variance
    of order ⟨Δx²⟩²)."""
    n_steps = float(moments["n_steps"].sum()) * ndim
    n_pairs = float(moments["n_pairs"].sum()) * ndim
    if n_steps == 0 or n_pairs == 0:
        return float("nan")
    msq = float(moments["sum_sq_um2"].sum()) / n_steps
    return float(np.hypot(R * msq * np.sqrt(2.0 / n_steps), (2.0 * R - 1.0) * msq / np.sqrt(n_pairs)))
