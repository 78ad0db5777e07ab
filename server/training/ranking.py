"""Where the exercise actually done next ranks among a step's candidates: the
one rule the trainer's weight tuning and `repwise eval` both score by."""

from __future__ import annotations

import numpy as np


def target_ranks(
    query: np.ndarray,
    target: np.ndarray,
    scores: np.ndarray,
    queries: int,
    tolerance: float = 0.0,
) -> np.ndarray:
    """Rank (from 1) of each query's target among its candidate rows.

    query : ndarray of shape (rows,), the query (0..queries-1) each row belongs to
    target : bool ndarray of shape (rows,), whether the row is its query's target
    scores : ndarray of shape (rows,)

    Candidates scoring above the target count 1, those tying with it ½ (the
    expected rank under a random tie-break); scores within `tolerance` of the
    target's tie with it, so that rounding noise (sums of the same counts
    accumulated in another order) decides nothing. Returns ndarray of shape
    (queries,); a query without a target row is ranked as if its target scored
    0, so callers mask those.
    """
    target_row = np.flatnonzero(target)
    target_score = np.zeros(queries)
    target_score[query[target_row]] = scores[target_row]
    against = target_score[query]
    if tolerance:
        tied = (np.abs(scores - against) <= tolerance) & ~target
        ahead = (scores > against + tolerance) + 0.5 * tied
    else:
        ahead = (scores > against) + 0.5 * ((scores == against) & ~target)
    return 1.0 + np.bincount(query, weights=ahead, minlength=queries)
