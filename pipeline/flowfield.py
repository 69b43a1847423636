"""The flow field: matched displacement vectors, interpolated anywhere.

Each accepted match between frames t and t+1 is a displacement vector at the
feature's position at t, with the match's cost. The flow at a point is the
weighted mean of the vectors within a radius R, with weight
exp(−cost) / distance, so cheap (confident) and near matches count most, and
a vector exactly at the point wins outright.

After Nellie (Lefebvre et al., Nature Methods 2025), with the weight the right
way round: Nellie's own weighting makes far vectors weigh more for positive
costs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

__all__ = ["FlowField", "interpolate_flow", "flow_columns"]

# Distances below this (in the field's units) are exact hits.
EXACT_HIT = 1e-9
# Ridge on the gradient of a first-order fit, relative to the total weight
# (offsets are in units of the radius, so this is a weak prior of no gradient).
_GRADIENT_RIDGE = 0.002
# Query × neighbour entries handled at once by FlowField.at.
_BATCH_ENTRIES = 2**19


def flow_columns(ndim: int) -> tuple[list[str], list[str]]:
    """Position and displacement columns of a flow table: (['y','x'], ['dy','dx'])."""
    pos = ["z", "y", "x"][3 - ndim :]
    return pos, [f"d{c}" for c in pos]


class FlowField:
    """Displacement vectors at positions, interpolated by inverse distance
    and exp(−cost).

    Parameters
    ----------
    positions : array (n, ndim)
        Where the vectors start, in the units distances are measured in.
    displacements : array (n, ndim)
        The vectors (any units; they are averaged, never rescaled).
    costs : array (n,), optional
        Match costs; weight exp(−cost). Zero (weight 1) by default.
    groups : array (n,) of int, optional
        A label per vector (a track id, a source feature) that a query can
        exclude, e.g. so that a feature's own step never predicts itself.
    max_neighbours : int
        At most this many of the nearest vectors within the radius are used
        per query (bounded work per query; 24 is ample for a weighted mean
        or a linear fit).
    """

    def __init__(self, positions, displacements, costs=None, groups=None, *, max_neighbours: int = 24):
        self.positions = np.asarray(positions, dtype=np.float64)
        self.displacements = np.asarray(displacements, dtype=np.float64)
        n = len(self.positions)
        if self.positions.ndim != 2 or self.displacements.shape != self.positions.shape:
            raise ValueError(
                f"flow vectors need positions and displacements of the same shape (n, ndim), "
                f"got {self.positions.shape} and {self.displacements.shape}"
            )
        costs = np.zeros(n) if costs is None else np.asarray(costs, dtype=np.float64)
        if costs.shape != (n,):
            raise ValueError(f"flow costs must have shape ({n},), got {costs.shape}")
        if not (np.isfinite(self.positions).all() and np.isfinite(self.displacements).all()):
            raise ValueError("flow vectors have non-finite positions or displacements")
        # Costs are z-scores; clip so exp() stays finite and one vector can
        # outweigh another by at most e^40.
        self.weights = np.exp(-np.clip(np.nan_to_num(costs, nan=0.0), -20.0, 20.0))
        self.groups = None if groups is None else np.asarray(groups)
        self.max_neighbours = int(max_neighbours)
        self._tree = cKDTree(self.positions) if n else None

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def ndim(self) -> int:
        return self.positions.shape[1]

    def _neighbours(self, query: np.ndarray, radius: float, exclude):
        """Vector indices and distances, (m, k) each, of the vectors within
        ``radius`` of each query point: the nearest ``max_neighbours`` of
        them, so the work per query stays bounded however dense the vectors
        are (the far ones weigh least anyway). Empty slots have index -1."""
        k = min(self.max_neighbours + (0 if exclude is None else 1), len(self))
        dist, idx = self._tree.query(query, k=k, distance_upper_bound=radius)
        dist, idx = dist.reshape(len(query), k), idx.reshape(len(query), k)
        valid = idx < len(self)  # a missing neighbour comes back as index n
        if exclude is not None and self.groups is not None:
            valid[valid] = self.groups[idx[valid]] != np.broadcast_to(np.asarray(exclude)[:, None], idx.shape)[valid]
        idx = np.where(valid, idx, -1)
        return idx, np.where(valid, dist, np.inf)

    def at(
        self,
        query,
        radius: float,
        *,
        exclude=None,
        fill: float = 0.0,
        order: int = 0,
        shrink: bool = False,
        weighting: str = "cost_distance",
    ) -> np.ndarray:
        """Interpolated displacement at each ``query`` point, (m, ndim).

        Parameters
        ----------
        query : array (m, ndim)
        radius : float
            Only vectors within this distance contribute.
        exclude : array (m,), optional
            Per query, a group label whose vectors are ignored.
        fill : float
            Value where no vector lies within ``radius``.
        order : {0, 1}
            0: the weighted mean (Nellie's interpolation). 1: a weighted
            least-squares fit of a linear field (mean plus gradient) about the
            query, with the same weights, evaluated at the query: exact for
            uniform shear and rotation and unbiased where the neighbours lie
            on one side only (the edge of the field of view), where the mean
            is pulled towards the interior. The gradient is lightly ridged,
            so with few or collinear vectors it falls back to the mean.
        shrink : bool
            Shrink each estimate towards zero by max(0, 1 − SE²/|v̂|²), SE its
            standard error from the vectors' scatter (a positive-part
            James–Stein factor): a flow the neighbours cannot tell from zero
            (pure diffusion) then predicts no motion instead of noise.
        weighting : {"cost_distance", "equal"}
            ``cost_distance``: exp(−cost)/distance, the flow-field weight.
            ``equal``: every vector within reach the same weight, which
            averages the vectors' own noise down fastest (n vectors count as
            n); with ``order=1`` the fit stays local through its gradient
            term. An exact hit still wins.
        """
        if weighting not in ("cost_distance", "equal"):
            raise ValueError(f"flow weighting must be 'cost_distance' or 'equal', got {weighting!r}")
        query = np.asarray(query, dtype=np.float64).reshape(-1, self.ndim)
        m, ndim = len(query), self.ndim
        out = np.full((m, ndim), float(fill))
        if m == 0 or self._tree is None:
            return out
        if not radius > 0:
            raise ValueError(f"flow radius must be positive, got {radius}")
        if order not in (0, 1):
            raise ValueError(f"flow interpolation order must be 0 or 1, got {order!r}")
        # Queries go in batches, so memory stays bounded (batch × neighbours).
        batch = max(1, _BATCH_ENTRIES // (self.max_neighbours + 1))
        if m > batch:
            ex = None if exclude is None else np.asarray(exclude)
            for a in range(0, m, batch):
                out[a : a + batch] = self.at(
                    query[a : a + batch], radius, exclude=None if ex is None else ex[a : a + batch],
                    fill=fill, order=order, shrink=shrink, weighting=weighting,
                )
            return out
        idx, dist = self._neighbours(query, float(radius), exclude)
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        u = self.displacements[safe]  # (m, k, ndim)
        base = np.where(valid, self.weights[safe], 0.0)

        # An exact hit wins: the query takes the (cost-weighted) mean of the
        # vectors sitting on it and nothing else.
        exact = valid & (dist <= EXACT_HIT)
        has_exact = exact.any(axis=1)
        if has_exact.any():
            ew = np.where(exact[has_exact], base[has_exact], 0.0)
            out[has_exact] = np.einsum("mk,mkd->md", ew, u[has_exact]) / ew.sum(axis=1)[:, None]
        near = valid & ~exact & ~has_exact[:, None]
        if weighting == "equal":
            w = near.astype(np.float64)
        else:
            w = np.where(near, base / np.where(near, dist, 1.0), 0.0)
        total = w.sum(axis=1)
        found = total > 0
        if not found.any():
            return out
        w, u, total = w[found], u[found], total[found]
        if order == 0:
            design = np.ones(w.shape + (1,))
        else:
            offsets = (self.positions[safe[found]] - query[found][:, None, :]) / radius
            design = np.concatenate([np.ones(w.shape + (1,)), offsets], axis=2)
        weighted_t = (design * w[:, :, None]).transpose(0, 2, 1)  # (m, terms, k)
        M = weighted_t @ design
        if order == 1:
            M[:, 1:, 1:] += _GRADIENT_RIDGE * total[:, None, None] * np.eye(ndim)
        Minv = np.linalg.inv(M)
        coef = Minv @ (weighted_t @ u)  # (m, terms, ndim)
        estimate = coef[:, 0, :]
        if shrink:
            fitted = design @ coef
            scatter = np.sum(w * np.sum((u - fitted) ** 2, axis=2), axis=1) / total
            S = (weighted_t * w[:, None, :]) @ design
            var0 = np.einsum("ma,mab,mb->m", Minv[:, 0, :], S, Minv[:, :, 0])
            se2 = var0 * scatter
            norm2 = np.sum(estimate**2, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                factor = np.where(norm2 > 0, np.clip(1.0 - se2 / norm2, 0.0, 1.0), 0.0)
            estimate = estimate * factor[:, None]
        out[found] = estimate
        return out


def interpolate_flow(
    flow_df: pd.DataFrame,
    positions,
    *,
    radius: float,
    pixel_size_um=None,
    fill: float = 0.0,
    order: int = 0,
    max_neighbours: int = 256,
) -> np.ndarray:
    """Flow displacement at arbitrary positions, from a flow table.

    Parameters
    ----------
    flow_df : DataFrame
        ``[z,] y, x, [dz,] dy, dx, cost`` as written to ``flow.parquet``
        (positions in pixels, displacements in pixels per frame). Use the
        rows of one frame (or a few) for a time-resolved field.
    positions : array (m, ndim)
        Query points in pixels, in the same axis order.
    radius : float
        Vectors within this distance contribute: in pixels, or in µm when
        ``pixel_size_um`` is given.
    pixel_size_um : float or sequence, optional
        Pixel size per axis, to measure distances in µm (anisotropic voxels).
    fill : float
        Value where no vector lies within ``radius``.
    order : {0, 1}
        0: the weighted mean; 1: a weighted linear fit (see
        :meth:`FlowField.at`).
    max_neighbours : int
        At most this many of the nearest vectors within ``radius`` count
        (bounded work per point; the far ones weigh least anyway).

    Returns
    -------
    array (m, ndim)
        Displacement in pixels per frame: the mean of the vectors within
        ``radius`` weighted by exp(−cost)/distance; a vector exactly at a
        query point is returned as is.
    """
    ndim = 3 if "z" in flow_df.columns else 2
    pos_cols, disp_cols = flow_columns(ndim)
    missing = [c for c in (*pos_cols, *disp_cols) if c not in flow_df.columns]
    if missing:
        raise ValueError(f"flow table lacks column(s) {missing}")
    scale = pixel_scale(pixel_size_um, ndim)
    costs = flow_df["cost"].to_numpy(dtype=float) if "cost" in flow_df.columns else None
    field = FlowField(
        flow_df[pos_cols].to_numpy(dtype=float) * scale,
        flow_df[disp_cols].to_numpy(dtype=float),
        costs,
        max_neighbours=max_neighbours,
    )
    query = np.asarray(positions, dtype=float).reshape(-1, ndim) * scale
    return field.at(query, radius, fill=fill, order=order)


def pixel_scale(pixel_size_um, ndim: int) -> np.ndarray:
    """µm per pixel along each of ``ndim`` axes (1 where no pixel size is given)."""
    if pixel_size_um is None:
        return np.ones(ndim)
    scale = np.broadcast_to(np.asarray(pixel_size_um, dtype=float), (ndim,)).copy()
    if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"pixel_size_um must be positive per axis, got {pixel_size_um!r}")
    return scale
