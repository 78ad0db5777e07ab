"""Multi-output ridge shrunk toward a prior, many users at once (DESIGN.md §3).

W_u = (XᵀX + λI)⁻¹ (XᵀY + λW0), which is W0 plus a zero-prior ridge fit of the
residual R = Y − XW0. Per user, λ is the grid value with the lowest closed-form
leave-one-out error: with XᵀX = V diag(d) Vᵀ and Q = XV, the hat diagonal is
h_i = Σ_k Q_ik² / (d_k + λ), and the LOO residual is (R_i − R̂_i) / (1 − h_i).

Users are fitted in padded batches (zero rows change nothing), each reduced to
the state columns the user ever uses: other columns are zero in X, so their
rows of W_u stay W0 exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

LAMBDA_GRID = np.logspace(-1, 3, 9)
# Users are batched by sample count, at most BATCH_USERS at a time (little
# padding) and so that one batch's padded X stays about BATCH_VALUES large.
BATCH_USERS = 16
BATCH_VALUES = 4_000_000


@dataclass(frozen=True)
class RidgeFit:
    coefficients: np.ndarray  # (users, p, q)
    lambdas: np.ndarray  # (users,)
    loo_mse: np.ndarray  # (users,) mean squared LOO residual per sample and output


def fit_one(
    x: np.ndarray, y: np.ndarray, lam: float, prior: np.ndarray | None = None
) -> np.ndarray:
    """W for one design at a fixed λ: (XᵀX + λI)⁻¹ (XᵀY + λ·prior)."""
    p = x.shape[1]
    prior = np.zeros((p, y.shape[1])) if prior is None else prior
    return np.linalg.solve(x.T @ x + lam * np.eye(p), x.T @ y + lam * prior)


def fit_population(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, sample: int = 20_000
) -> tuple[np.ndarray, float]:
    """W0 and its λ: λ by LOO on a sample of the pairs, W0 on all of them."""
    if len(x) == 0:
        return np.zeros((x.shape[1], y.shape[1])), float(LAMBDA_GRID[0])
    pick = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    zero = np.zeros((x.shape[1], y.shape[1]))
    lam = float(fit_users([x[pick]], [y[pick]], zero).lambdas[0])
    return fit_one(x, y, lam), lam


def fit_users(
    xs: list[np.ndarray], ys: list[np.ndarray], prior: np.ndarray, grid: np.ndarray = LAMBDA_GRID
) -> RidgeFit:
    """Fits every user's (X_u, Y_u) toward prior, λ_u by LOO over grid."""
    users = len(xs)
    p, q = prior.shape
    coefficients = np.broadcast_to(prior, (users, p, q)).copy()
    lambdas = np.full(users, float(grid[-1]))
    loo = np.zeros(users)
    sizes = np.array([len(x) for x in xs], dtype=np.int64)
    widths = np.array([np.count_nonzero(np.any(x != 0, axis=0)) for x in xs], dtype=np.int64)
    for batch in _batches(sizes, widths, p):
        w, lam, err = _fit_batch([xs[i] for i in batch], [ys[i] for i in batch], prior, grid)
        coefficients[batch] = w
        lambdas[batch] = lam
        loo[batch] = err
    return RidgeFit(coefficients, lambdas, loo)


def _batches(sizes: np.ndarray, widths: np.ndarray, p: int) -> Iterator[np.ndarray]:
    """Users with samples, in batches of similar width (state columns used: the
    eigendecomposition's size) and sample count, bounded by BATCH_VALUES."""
    order = np.lexsort((sizes, widths))
    order = order[sizes[order] > 0]
    start = 0
    while start < len(order):
        end = start + 1
        rows = int(sizes[order[start]])
        while end < len(order):
            rows = max(rows, int(sizes[order[end]]))
            if end - start >= BATCH_USERS or (end - start + 1) * rows * p > BATCH_VALUES:
                break
            end += 1
        yield order[start:end]
        start = end


def _fit_batch(
    xs: list[np.ndarray], ys: list[np.ndarray], prior: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch = len(xs)
    p, q = prior.shape
    n = max(len(x) for x in xs)
    x = np.zeros((batch, n, p))
    r = np.zeros((batch, n, q))
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        x[i, : len(xi)] = xi
        r[i, : len(xi)] = yi - xi @ prior
    counts = np.array([len(xi) for xi in xs], dtype=np.float64)

    # Only the columns some sample uses; the rest keep the prior.
    active = np.any(x != 0, axis=1)
    width = int(active.sum(axis=1).max())
    columns = np.argsort(~active, axis=1, kind="stable")[:, :width]
    xa = np.take_along_axis(x, columns[:, None, :], axis=2)

    d, v = np.linalg.eigh(np.matmul(xa.transpose(0, 2, 1), xa))
    d = np.maximum(d, 0.0)
    qmat = np.matmul(xa, v)  # (batch, n, width)
    proj = np.matmul(qmat.transpose(0, 2, 1), r)  # (batch, width, q)
    q2 = qmat * qmat

    errors = np.empty((batch, len(grid)))
    for g, lam in enumerate(grid):  # the grid is short; each step is batched
        inv = 1.0 / (d + lam)
        fitted = np.matmul(qmat * inv[:, None, :], proj)
        hat = np.einsum("bnk,bk->bn", q2, inv)
        loo = (r - fitted) / (1.0 - hat)[:, :, None]
        errors[:, g] = np.einsum("bnq,bnq->b", loo, loo) / (counts * q)
    best = np.argmin(errors, axis=1)
    lam = grid[best]
    inv = 1.0 / (d + lam[:, None])
    delta = np.matmul(v * inv[:, None, :], proj)  # (batch, width, q)
    w = np.broadcast_to(prior, (batch, p, q)).copy()
    rows = np.arange(batch)[:, None]
    w[rows, columns] += delta
    return w, lam, errors[np.arange(batch), best]
