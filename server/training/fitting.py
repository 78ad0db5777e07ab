"""Fits many users' parameters from their timelines at once (DESIGN.md §3):
ridge coefficients, score weights tuned on each user's latest history, and
sequence statistics. Pure numpy; the database side is in service.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from client_sdk.model import (
    DEFAULT_WEIGHTS,
    SequenceStats,
    Timeline,
    combine,
    sequence_stats_by_user,
    states,
    training_pairs,
)
from server.training.ranking import target_ranks
from server.training.replay import Candidates, step_terms, user_candidates
from server.training.ridge import fit_users

# Users with fewer training pairs than this keep the population coefficients.
MIN_SAMPLES = 20
# The newest pairs a user's coefficients are fitted on: habits drift.
MAX_SAMPLES = 1_000
# Score weights are tuned on each user's newest steps; below MIN_TUNE_STEPS the
# population defaults stand.
TUNE_STEPS = 40
MIN_TUNE_STEPS = 12
# Mean reciprocal rank a user's own weights must gain over the defaults.
TUNE_MARGIN = 0.01
# Scores this close tie: sums of the same counts in another order differ by rounding.
TIE_TOLERANCE = 1e-9


def weight_grid(defaults: np.ndarray = DEFAULT_WEIGHTS) -> np.ndarray:
    """Candidate score weights; the routine weight is fixed at 1 since only the
    ranking matters. The population defaults come first, so ties keep them.
    Similarity goes up to the routine's weight: users whose days follow muscle
    groups closely rank best with it there (`repwise eval --synthetic`)."""
    grid = np.array(
        [
            (1.0, t, s, f, d)
            for t in (0.0, 0.5, 1.5)
            for s in (0.15, 0.5, 1.0)
            for f in (0.0, 0.4)
            for d in (0.0, 1.0)
        ]
    )
    return np.vstack([defaults, grid])


@dataclass(frozen=True)
class UserParameters:
    coefficients: np.ndarray  # STATE_DIMENSIONS × feature dimensions
    lam: float
    weights: np.ndarray  # TERM_NAMES order
    stats: SequenceStats
    sample_count: int
    own_coefficients: bool
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResult:
    users: list[UserParameters]
    # Sums for the next population model, and each grid point's summed
    # reciprocal rank over every tuned step (for the population defaults).
    gram: np.ndarray
    cross: np.ndarray
    grid_reciprocal_rank: np.ndarray
    tuned_steps: int


def fit_timelines(
    tl: Timeline,
    user_count: int,
    phi: np.ndarray,
    prior: np.ndarray,
    ref_times: np.ndarray,
    default_weights: np.ndarray = DEFAULT_WEIGHTS,
) -> BatchResult:
    """Parameters for users 0..user_count-1 of tl (tl.user holds those numbers;
    a user may have no entries), statistics as of ref_times. Users keep
    default_weights (the population's) unless their own history clearly
    ranks better with other weights."""
    x, y, rows = training_pairs(tl, phi, newest=MAX_SAMPLES)
    owner = tl.user[rows]
    samples = np.bincount(owner, minlength=user_count)
    cut = np.searchsorted(owner, np.arange(1, user_count))
    xs, ys = np.split(x, cut), np.split(y, cut)
    enough = samples >= MIN_SAMPLES
    fit = fit_users(
        [xs[u] if enough[u] else xs[u][:0] for u in range(user_count)],
        [ys[u] if enough[u] else ys[u][:0] for u in range(user_count)],
        prior,
    )

    grid = weight_grid(default_weights)
    per_user_rr, per_user_steps, hit10 = _tune(tl, rows, phi, fit.coefficients, grid, user_count)
    best = np.argmax(per_user_rr, axis=1)
    gain = per_user_rr[np.arange(user_count), best] - per_user_rr[:, 0]
    # 40 steps are noisy: a user's own weights must beat the defaults clearly.
    tuned = (per_user_steps >= MIN_TUNE_STEPS) & (gain >= TUNE_MARGIN * per_user_steps)
    choice = np.where(tuned, best, 0)
    mrr = np.divide(
        per_user_rr[np.arange(user_count), choice],
        per_user_steps,
        out=np.zeros(user_count),
        where=per_user_steps > 0,
    )
    hits = np.divide(
        hit10[np.arange(user_count), choice],
        per_user_steps,
        out=np.zeros(user_count),
        where=per_user_steps > 0,
    )

    all_stats = _stats_for(tl, user_count, ref_times)
    users = [
        UserParameters(
            coefficients=fit.coefficients[u],
            lam=float(fit.lambdas[u]) if enough[u] else 0.0,
            weights=grid[choice[u]],
            stats=all_stats[u],
            sample_count=int(samples[u]),
            own_coefficients=bool(enough[u]),
            metrics={
                "tune_steps": float(per_user_steps[u]),
                "tune_mrr": float(mrr[u]),
                "tune_hit_at_10": float(hits[u]),
                "loo_mse": float(fit.loo_mse[u]),
            },
        )
        for u in range(user_count)
    ]
    return BatchResult(
        users=users,
        gram=x.T @ x,
        cross=x.T @ y,
        grid_reciprocal_rank=per_user_rr.sum(axis=0),
        tuned_steps=int(per_user_steps.sum()),
    )


def _stats_for(tl: Timeline, user_count: int, ref_times: np.ndarray) -> list[SequenceStats]:
    present = np.unique(tl.user)
    computed = dict(
        zip(present.tolist(), sequence_stats_by_user(tl, ref_times[present]), strict=True)
    )
    return [
        computed[u] if u in computed else _empty_stats(float(ref_times[u]))
        for u in range(user_count)
    ]


def _empty_stats(ref_time: float) -> SequenceStats:
    nothing = np.zeros(0)
    index = np.zeros(0, dtype=np.int64)
    return SequenceStats(
        ref_time, -1, index, nothing, nothing, nothing, index, index, nothing, nothing, index
    )


def _tune(
    tl: Timeline,
    rows: np.ndarray,
    phi: np.ndarray,
    coefficients: np.ndarray,
    grid: np.ndarray,
    user_count: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user and grid point: summed reciprocal rank and hits in the top 10 of
    the entry actually done next, over the user's newest TUNE_STEPS steps,
    with statistics live at each step."""
    owner = tl.user[rows]
    from_end = np.bincount(owner, minlength=user_count)[owner] - (
        np.arange(len(rows)) - np.searchsorted(owner, owner, side="left")
    )
    queries = rows[from_end <= TUNE_STEPS]
    cands = user_candidates(tl, queries)
    # Steps whose exercise was already done in the workout cannot be ranked.
    rankable = np.bincount(cands.query, weights=cands.target, minlength=len(queries)) > 0
    cands = _only(cands, rankable[cands.query])
    terms = step_terms(tl, queries, cands)

    query_user = tl.user[queries]
    terms[:, 2] = np.einsum(
        "ij,ij->i",
        _predicted(states(tl, phi, queries), query_user, coefficients)[cands.query],
        phi[cands.exercise],
    )

    rank = np.ones((len(queries), len(grid)))
    for g, weights in enumerate(grid):  # a short grid; each step runs over all rows
        scores = combine(terms, weights)
        rank[:, g] = target_ranks(
            cands.query, cands.target, scores, len(queries), tolerance=TIE_TOLERANCE
        )
    reciprocal = np.where(rankable[:, None], 1.0 / rank, 0.0)
    hit = np.where(rankable[:, None], rank <= 10, False).astype(np.float64)
    per_user_rr = _sum_by(query_user, reciprocal, user_count)
    per_user_hits = _sum_by(query_user, hit, user_count)
    steps = np.bincount(query_user, weights=rankable, minlength=user_count)
    return per_user_rr, steps, per_user_hits


def _predicted(state: np.ndarray, user: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Unit ŷ = sᵀW_user per row; rows are grouped by user, at most TUNE_STEPS each."""
    starts = np.searchsorted(user, user, side="left")
    slot = np.arange(len(user)) - starts
    padded = np.zeros((coefficients.shape[0], TUNE_STEPS, state.shape[1]))
    padded[user, slot] = state
    y = np.matmul(padded, coefficients)[user, slot]
    norm = np.linalg.norm(y, axis=1, keepdims=True)
    return np.divide(y, norm, out=np.zeros_like(y), where=norm > 0)


def _sum_by(group: np.ndarray, values: np.ndarray, groups: int) -> np.ndarray:
    """Sums of value rows by a nondecreasing group number."""
    cum = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    bounds = np.searchsorted(group, np.arange(groups + 1), side="left")
    return cum[bounds[1:]] - cum[bounds[:-1]]


def _only(cands: Candidates, mask: np.ndarray) -> Candidates:
    return Candidates(cands.query[mask], cands.exercise[mask], cands.target[mask])
