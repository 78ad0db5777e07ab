"""The recommender's shared core (DESIGN.md §3), pure numpy.

The trainer and the SDK both build states, sequence statistics and score terms
with these functions, so training and inference cannot disagree. Everything is
vectorized over a `Timeline`, which may hold many users at once (the trainer)
or one (the SDK).

State s (STATE_NAMES): φ of the last exercise, the mean φ of the exercises so
far in the current workout (zero at its start), the mean φ of the exercises of
the previous RECENT_DAYS days before this workout, and a constant 1.

Score terms (TERM_NAMES), for a candidate e after the last exercise a:
- routine r(e|a) = ROUTINE_DECAY ** (times a was followed by something else
  since it was last followed by e); 1 for what followed a last time, 0 if never;
- transition P(e|a) = (c(a, e) + α·f̂(e)) / (c(a) + α), f̂ the user's decayed
  frequency distribution (the back-off), α = TRANSITION_SMOOTHING;
- similarity cos(ŷ, φ(e)) with ŷ = sᵀW;
- frequency f(e): count decayed with a half-life of FREQUENCY_HALF_LIFE_DAYS,
  divided by the user's largest;
- recency d(e): 1 if e was done at the start of this workout, falling linearly
  to 0 RECOVERY_HOURS later (earlier workouts only). It is subtracted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client_sdk.features import DIMENSIONS, FEATURE_NAMES

MODEL_SCHEMA_VERSION = 1
STATE_NAMES: tuple[str, ...] = (
    tuple(f"last:{name}" for name in FEATURE_NAMES)
    + tuple(f"workout:{name}" for name in FEATURE_NAMES)
    + tuple(f"recent:{name}" for name in FEATURE_NAMES)
    + ("bias",)
)
STATE_DIMENSIONS = len(STATE_NAMES)
TERM_NAMES = ("routine", "transition", "similarity", "frequency", "recency")

RECENT_DAYS = 7.0
ROUTINE_DECAY = 0.5
TRANSITION_SMOOTHING = 2.0
FREQUENCY_HALF_LIFE_DAYS = 30.0
RECOVERY_HOURS = 72.0
DAY = 86_400.0

# The constants above as the bundle's SequenceParameters carries them.
SEQUENCE_PARAMETERS = {
    "routine_decay": ROUTINE_DECAY,
    "transition_smoothing": TRANSITION_SMOOTHING,
    "frequency_half_life_days": FREQUENCY_HALF_LIFE_DAYS,
    "recovery_hours": RECOVERY_HOURS,
    "recent_days": RECENT_DAYS,
}

# Population defaults, in TERM_NAMES order; recency is subtracted.
DEFAULT_WEIGHTS = np.array([1.0, 0.5, 0.3, 0.2, 0.5])


@dataclass(frozen=True)
class Timeline:
    """Performed exercises, one entry each, sorted by (user, time, workout, position).

    time is the workout's start in epoch seconds (every entry of a workout shares
    it); exercise is a row of the feature matrix.
    """

    user: np.ndarray  # int64, grouped
    workout: np.ndarray  # int64, distinct per workout within a user
    time: np.ndarray  # float64
    exercise: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.exercise)

    @staticmethod
    def of(user: object, workout: object, time: object, exercise: object) -> Timeline:
        return Timeline(
            np.asarray(user, dtype=np.int64),
            np.asarray(workout, dtype=np.int64),
            np.asarray(time, dtype=np.float64),
            np.asarray(exercise, dtype=np.int64),
        )

    def take(self, index: np.ndarray) -> Timeline:
        return Timeline(
            self.user[index], self.workout[index], self.time[index], self.exercise[index]
        )


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """For each entry, the index of the first entry of its run of equal keys."""
    n = len(keys[0])
    new = np.ones(n, dtype=bool)
    if n:
        same = np.ones(n - 1, dtype=bool)
        for key in keys:
            same &= key[1:] == key[:-1]
        new[1:] = ~same
    starts = np.flatnonzero(new)
    return np.repeat(starts, np.diff(np.append(starts, n)))


def _time_keys(tl: Timeline) -> np.ndarray:
    """int64 keys ordering entries by (user, whole second) for window searches."""
    if not len(tl):
        return np.zeros(0, dtype=np.int64)
    seconds = np.floor(tl.time - tl.time.min()).astype(np.int64)
    return (tl.user << 40) + seconds


def states(tl: Timeline, phi: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """s_j, the state for predicting entry j from the same user's entries before
    it, for every entry, or only for `rows` (a sorted index array)."""
    n = len(tl)
    cum = np.zeros((n + 1, DIMENSIONS))
    np.cumsum(phi[tl.exercise], axis=0, out=cum[1:])
    index = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(index), STATE_DIMENSIONS))

    has_last = index > _group_starts(tl.user)[index]
    out[has_last, :DIMENSIONS] = phi[tl.exercise[index[has_last] - 1]]

    workout_start = _group_starts(tl.user, tl.workout)[index]
    done = index - workout_start
    sums = cum[index] - cum[workout_start]
    out[:, DIMENSIONS : 2 * DIMENSIONS] = sums / np.maximum(done, 1)[:, None]

    keys = _time_keys(tl)
    window = np.searchsorted(keys, keys[index] - int(RECENT_DAYS * DAY), side="left")
    window = np.minimum(window, workout_start)
    recent = workout_start - window
    sums = cum[workout_start] - cum[window]
    out[:, 2 * DIMENSIONS : 3 * DIMENSIONS] = sums / np.maximum(recent, 1)[:, None]
    out[:, -1] = 1.0
    return out


def training_pairs(
    tl: Timeline, phi: np.ndarray, newest: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, rows): states and next-exercise features for every entry that has a
    predecessor of the same user (only each user's `newest` such entries if
    given); rows are the entries' indexes."""
    rows = np.flatnonzero(np.arange(len(tl)) > _group_starts(tl.user))
    if newest is not None:
        owner = tl.user[rows]
        last = np.searchsorted(owner, owner, side="right")
        rows = rows[last - np.arange(len(rows)) <= newest]
    return states(tl, phi, rows), phi[tl.exercise[rows]], rows


def predicted_features(state: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """ŷ = sᵀW, unit length (zero stays zero)."""
    y = state @ coefficients
    norm = np.linalg.norm(y, axis=-1, keepdims=True)
    return np.divide(y, norm, out=np.zeros_like(y), where=norm > 0)


@dataclass(frozen=True)
class SequenceStats:
    """One user's sequence statistics as of ref_time (DESIGN.md §3).

    Per exercise (rows of the feature matrix): count, decayed count at ref_time,
    last_time. Per transition a → e: count, last_time and last_index, the
    ordinal (from 1) among the transitions out of a of its latest occurrence.
    last_exercise is the latest entry's exercise (−1 for none): the source of
    the next transition.
    """

    ref_time: float
    last_exercise: int
    exercise: np.ndarray
    count: np.ndarray
    decayed: np.ndarray
    last_time: np.ndarray
    from_exercise: np.ndarray
    to_exercise: np.ndarray
    transition_count: np.ndarray
    transition_last_time: np.ndarray
    transition_last_index: np.ndarray


def sequence_stats(tl: Timeline, ref_time: float) -> SequenceStats:
    """Statistics of a one-user timeline, as of ref_time (≥ its last entry)."""
    return sequence_stats_by_user(tl, np.array([ref_time]))[0]


def sequence_stats_by_user(tl: Timeline, ref_times: np.ndarray) -> list[SequenceStats]:
    """Statistics of each user of a timeline (in order of appearance), each as of
    its ref_times entry."""
    if not len(tl):
        return []
    users, user_of = np.unique(tl.user, return_inverse=True)
    ref = np.asarray(ref_times, dtype=np.float64)[user_of]
    weights = np.exp2(-(ref - tl.time) / (FREQUENCY_HALF_LIFE_DAYS * DAY))
    keys, inverse, count = np.unique(
        np.stack([user_of, tl.exercise]), axis=1, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    decayed = np.bincount(inverse, weights=weights, minlength=keys.shape[1])
    last_time = np.full(keys.shape[1], -np.inf)
    np.maximum.at(last_time, inverse, tl.time)

    dest = np.flatnonzero(np.arange(len(tl)) > _group_starts(tl.user))
    owner, src, dst, when = user_of[dest], tl.exercise[dest - 1], tl.exercise[dest], tl.time[dest]
    # Ordinal of each transition among those out of the same exercise.
    order = np.lexsort((dest, src, owner))
    ordinal = np.empty(len(dest), dtype=np.int64)
    ordinal[order] = np.arange(len(dest)) - _group_starts(owner[order], src[order]) + 1
    pairs, pair_inverse, pair_count = np.unique(
        np.stack([owner, src, dst]), axis=1, return_inverse=True, return_counts=True
    )
    pair_inverse = pair_inverse.reshape(-1)
    pair_last = np.full(pairs.shape[1], -np.inf)
    np.maximum.at(pair_last, pair_inverse, when)
    pair_index = np.zeros(pairs.shape[1], dtype=np.int64)
    np.maximum.at(pair_index, pair_inverse, ordinal)

    ends = np.append(np.flatnonzero(tl.user[1:] != tl.user[:-1]), len(tl) - 1)
    last_exercise = tl.exercise[ends] if len(tl) else np.zeros(0, dtype=np.int64)
    ex_cut = np.searchsorted(keys[0], np.arange(1, len(users)))
    tr_cut = np.searchsorted(pairs[0], np.arange(1, len(users)))
    return [
        SequenceStats(
            ref_time=float(ref_times[u]),
            last_exercise=int(last_exercise[u]),
            exercise=e,
            count=c.astype(np.float64),
            decayed=d,
            last_time=lt,
            from_exercise=a,
            to_exercise=b,
            transition_count=tc.astype(np.float64),
            transition_last_time=tt,
            transition_last_index=ti,
        )
        for u, (e, c, d, lt, a, b, tc, tt, ti) in enumerate(
            zip(
                np.split(keys[1], ex_cut),
                np.split(count, ex_cut),
                np.split(decayed, ex_cut),
                np.split(last_time, ex_cut),
                np.split(pairs[1], tr_cut),
                np.split(pairs[2], tr_cut),
                np.split(pair_count, tr_cut),
                np.split(pair_last, tr_cut),
                np.split(pair_index, tr_cut),
                strict=True,
            )
        )
    ]


def extend_stats(stats: SequenceStats, new: Timeline, ref_time: float) -> SequenceStats:
    """The statistics of the old entries followed by `new` (one user, all after
    the old ones), as of ref_time: what sequence_stats of the whole would give."""
    if not len(new):
        return stats
    half_life = FREQUENCY_HALF_LIFE_DAYS * DAY
    decay = np.exp2(-(ref_time - stats.ref_time) / half_life)
    exercise, inverse = np.unique(
        np.concatenate([stats.exercise, new.exercise]), return_inverse=True
    )
    k = len(exercise)
    count = np.bincount(inverse, np.concatenate([stats.count, np.ones(len(new))]), k)
    decayed = np.bincount(
        inverse,
        np.concatenate([stats.decayed * decay, np.exp2(-(ref_time - new.time) / half_life)]),
        k,
    )
    last_time = np.full(k, -np.inf)
    np.maximum.at(last_time, inverse, np.concatenate([stats.last_time, new.time]))

    previous = [stats.last_exercise] if stats.last_exercise >= 0 else []
    src = np.concatenate([np.asarray(previous, dtype=np.int64), new.exercise[:-1]])
    dst = new.exercise[len(new) - len(src) :]
    when = new.time[len(new) - len(src) :]
    # New transitions continue each source's ordinals.
    size = int(max(src.max(initial=0), stats.from_exercise.max(initial=0))) + 1
    out_before = np.bincount(stats.from_exercise, stats.transition_count, size)
    order = np.lexsort((np.arange(len(src)), src))
    rank = np.empty(len(src), dtype=np.int64)
    rank[order] = np.arange(len(src)) - _group_starts(src[order]) + 1
    ordinal = out_before[src].astype(np.int64) + rank
    pairs, pair_inverse = np.unique(
        np.stack(
            [
                np.concatenate([stats.from_exercise, src]),
                np.concatenate([stats.to_exercise, dst]),
            ]
        ),
        axis=1,
        return_inverse=True,
    )
    pair_inverse = pair_inverse.reshape(-1)
    m = pairs.shape[1]
    pair_count = np.bincount(
        pair_inverse, np.concatenate([stats.transition_count, np.ones(len(src))]), m
    )
    pair_last = np.full(m, -np.inf)
    np.maximum.at(pair_last, pair_inverse, np.concatenate([stats.transition_last_time, when]))
    pair_index = np.zeros(m, dtype=np.int64)
    np.maximum.at(pair_index, pair_inverse, np.concatenate([stats.transition_last_index, ordinal]))
    return SequenceStats(
        ref_time=float(ref_time),
        last_exercise=int(new.exercise[-1]),
        exercise=exercise,
        count=count,
        decayed=decayed,
        last_time=last_time,
        from_exercise=pairs[0],
        to_exercise=pairs[1],
        transition_count=pair_count,
        transition_last_time=pair_last,
        transition_last_index=pair_index,
    )


def score_terms(
    stats: SequenceStats,
    last: int | None,
    candidates: np.ndarray,
    workout_start: float,
) -> np.ndarray:
    """Routine, transition, frequency and recency terms for each candidate row:
    (len(candidates), 5) in TERM_NAMES order, similarity left 0 for the caller."""
    size = int(max(candidates.max(initial=-1), stats.exercise.max(initial=-1))) + 1
    slot = np.full(size, -1)
    slot[stats.exercise] = np.arange(len(stats.exercise))
    at = slot[candidates]
    terms = np.zeros((len(candidates), len(TERM_NAMES)))

    decay = np.exp2(-(workout_start - stats.ref_time) / (FREQUENCY_HALF_LIFE_DAYS * DAY))
    # at is −1 where an exercise has no statistics: it indexes an appended filler.
    decayed = np.append(stats.decayed, 0.0)[at] * decay
    top = stats.decayed.max(initial=0.0) * decay
    if top > 0:
        terms[:, 3] = decayed / top
    total = stats.decayed.sum() * decay
    share = decayed / total if total > 0 else decayed

    ago = workout_start - np.append(stats.last_time, -np.inf)[at]
    terms[:, 4] = np.clip(1.0 - ago / (RECOVERY_HOURS * 3600.0), 0.0, 1.0)

    out_of_last = stats.from_exercise == last if last is not None else np.zeros(0, dtype=bool)
    followers = np.zeros(size)
    last_index = np.zeros(size)
    followers[stats.to_exercise[out_of_last]] = stats.transition_count[out_of_last]
    last_index[stats.to_exercise[out_of_last]] = stats.transition_last_index[out_of_last]
    from_last = followers.sum()
    count = followers[candidates]
    terms[:, 0] = np.where(count > 0, ROUTINE_DECAY ** (from_last - last_index[candidates]), 0.0)
    terms[:, 1] = (count + TRANSITION_SMOOTHING * share) / (from_last + TRANSITION_SMOOTHING)
    return terms


def combine(terms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """score = w_r·r + w_t·P + w_s·cos + w_f·f − w_d·d."""
    signs = np.array([1.0, 1.0, 1.0, 1.0, -1.0])
    return terms @ (weights * signs)
