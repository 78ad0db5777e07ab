"""Score terms at many points of many histories at once, as the SDK would have
computed them live at each point (client_sdk.model.score_terms on the stats of
everything before it). The trainer tunes score weights with it and `repwise
eval` replays histories with it; no Python loop over users or samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client_sdk.model import (
    DAY,
    FREQUENCY_HALF_LIFE_DAYS,
    RECOVERY_HOURS,
    ROUTINE_DECAY,
    TERM_NAMES,
    TRANSITION_SMOOTHING,
    Timeline,
    _group_starts,
)


@dataclass(frozen=True)
class Candidates:
    """Flat (query, candidate) rows: query is an index into the queried entries,
    exercise the candidate's feature row, target whether it was done next."""

    query: np.ndarray
    exercise: np.ndarray
    target: np.ndarray


def user_candidates(tl: Timeline, queries: np.ndarray) -> Candidates:
    """For each queried entry j: the exercises its user did before j, and the one
    done at j (new ones come from the catalog), except those done earlier in j's
    workout (the recommender never repeats within a workout)."""
    every = user_candidates_all(tl, queries)
    entry = queries[every.query]
    keep = (every.target | _done_before(tl, entry, every.exercise)) & ~_done_in_workout(
        tl, entry, every.exercise
    )
    return Candidates(every.query[keep], every.exercise[keep], every.target[keep])


def _done_before(tl: Timeline, entry: np.ndarray, exercise: np.ndarray) -> np.ndarray:
    """Whether the user of entry did exercise before entry."""
    keys, _ = _occurrences(tl)
    key = _key(tl.user[entry], exercise, tl)
    before = np.searchsorted(keys, key * len(tl) + entry, side="left")
    return before > np.searchsorted(keys, key * len(tl), side="left")


def _done_in_workout(tl: Timeline, entry: np.ndarray, exercise: np.ndarray) -> np.ndarray:
    """Whether exercise occurs in entry's workout before entry."""
    keys, _ = _occurrences(tl)
    start = _group_starts(tl.user, tl.workout)[entry]
    key = _key(tl.user[entry], exercise, tl)
    before = np.searchsorted(keys, key * len(tl) + entry, side="left")
    lo = np.searchsorted(keys, key * len(tl) + start, side="left")
    return before > lo


def _key(user: np.ndarray, exercise: np.ndarray, tl: Timeline) -> np.ndarray:
    return user * (int(tl.exercise.max(initial=0)) + 1) + exercise


def _occurrences(tl: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys (user, exercise, entry index) and the entry indexes in that order."""
    index = np.arange(len(tl))
    composite = _key(tl.user, tl.exercise, tl) * len(tl) + index
    order = np.argsort(composite, kind="stable")
    return composite[order], index[order]


def step_terms(tl: Timeline, queries: np.ndarray, cands: Candidates) -> np.ndarray:
    """Terms (rows × 5, TERM_NAMES order, similarity 0) of each candidate row at
    its query entry j: statistics of the user's entries before j, last = j − 1."""
    n = len(tl)
    entry = queries[cands.query]
    user = tl.user[entry]
    when = tl.time[entry]
    terms = np.zeros((len(entry), len(TERM_NAMES)))

    # Per (user, exercise): how many times, how decayed, and when last, before j.
    keys, order = _occurrences(tl)
    user_first = tl.time[_group_starts(tl.user)]
    half_life = FREQUENCY_HALF_LIFE_DAYS * DAY
    growth = np.exp2((tl.time - user_first) / half_life)
    cum = np.concatenate([[0.0], np.cumsum(growth[order])])
    key = _key(user, cands.exercise, tl)
    lo = np.searchsorted(keys, key * n, side="left")
    hi = np.searchsorted(keys, key * n + entry, side="left")
    scale = np.exp2(-(when - user_first[entry]) / half_life)
    decayed = (cum[hi] - cum[lo]) * scale
    seen = hi > lo
    last_time = np.where(seen, tl.time[order[np.maximum(hi - 1, 0)]], -np.inf)

    # Frequency is scaled by, and the back-off shares taken of, all the user's
    # exercises as of j, including those left out of the candidates.
    top_all, total_all = _user_decayed_totals(tl, queries, keys, cum)
    top = top_all[cands.query]
    total = total_all[cands.query]
    terms[:, 3] = np.divide(decayed, top, out=np.zeros_like(decayed), where=top > 0)
    share = np.divide(decayed, total, out=np.zeros_like(decayed), where=total > 0)
    ago = when - last_time
    terms[:, 4] = np.clip(1.0 - ago / (RECOVERY_HOURS * 3600.0), 0.0, 1.0)

    # Transitions a → e with a = the entry before j, destinations before j.
    prev = tl.exercise[entry - 1]
    has_prev = np.arange(n) > _group_starts(tl.user)
    dest = np.flatnonzero(has_prev)
    width = int(tl.exercise.max(initial=0)) + 1
    src_key = _key(tl.user[dest], tl.exercise[dest - 1], tl)
    src_sorted = np.sort(src_key * n + dest)
    pair_key = src_key * width + tl.exercise[dest]
    pair_order = np.argsort(pair_key * n + dest, kind="stable")
    pair_sorted = (pair_key * n + dest)[pair_order]
    # Ordinal of each transition among those out of the same exercise.
    src_rank = np.searchsorted(src_sorted, src_key * n + dest, side="left")
    src_lo = np.searchsorted(src_sorted, src_key * n, side="left")
    ordinal = (src_rank - src_lo + 1)[pair_order]

    row_src = _key(user, prev, tl)
    from_last = np.searchsorted(src_sorted, row_src * n + entry, side="left") - np.searchsorted(
        src_sorted, row_src * n, side="left"
    )
    row_pair = row_src * width + cands.exercise
    p_lo = np.searchsorted(pair_sorted, row_pair * n, side="left")
    p_hi = np.searchsorted(pair_sorted, row_pair * n + entry, side="left")
    count = (p_hi - p_lo).astype(np.float64)
    last_index = np.where(p_hi > p_lo, ordinal[np.maximum(p_hi - 1, 0)], 0)
    terms[:, 0] = np.where(count > 0, ROUTINE_DECAY ** (from_last - last_index), 0.0)
    terms[:, 1] = (count + TRANSITION_SMOOTHING * share) / (from_last + TRANSITION_SMOOTHING)
    return terms


def _user_decayed_totals(
    tl: Timeline,
    queries: np.ndarray,
    keys: np.ndarray,
    cum: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the largest and the summed decayed count over all the user's
    exercises, from entries before the query."""
    everything = user_candidates_all(tl, queries)
    n = len(tl)
    entry = queries[everything.query]
    key = _key(tl.user[entry], everything.exercise, tl)
    lo = np.searchsorted(keys, key * n, side="left")
    hi = np.searchsorted(keys, key * n + entry, side="left")
    user_first = tl.time[_group_starts(tl.user)]
    scale = np.exp2(-(tl.time[entry] - user_first[entry]) / (FREQUENCY_HALF_LIFE_DAYS * DAY))
    decayed = (cum[hi] - cum[lo]) * scale
    top = np.zeros(len(queries))
    np.maximum.at(top, everything.query, decayed)
    total = np.bincount(everything.query, weights=decayed, minlength=len(queries))
    return top, total


def user_candidates_all(tl: Timeline, queries: np.ndarray) -> Candidates:
    """Every exercise each queried entry's user ever did, none left out."""
    pairs = np.unique(np.stack([tl.user, tl.exercise]), axis=1)
    first = np.searchsorted(pairs[0], tl.user[queries], side="left")
    last = np.searchsorted(pairs[0], tl.user[queries], side="right")
    sizes = last - first
    query = np.repeat(np.arange(len(queries)), sizes)
    offset = np.arange(len(query)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    exercise = pairs[1][np.repeat(first, sizes) + offset]
    return Candidates(query, exercise, exercise == tl.exercise[queries[query]])
