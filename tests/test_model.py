"""The recommender's math: states, live statistics, score terms and ridge, checked
against independent computations (scikit-learn, per-prefix recomputation)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV

from client_sdk.features import DIMENSIONS
from client_sdk.model import (
    STATE_DIMENSIONS,
    SequenceStats,
    Timeline,
    extend_stats,
    score_terms,
    sequence_stats,
    states,
)
from server.training.codec import (
    decode_coefficients,
    decode_stats,
    encode_coefficients,
    encode_stats,
)
from server.training.replay import step_terms, user_candidates
from server.training.ridge import LAMBDA_GRID, fit_one, fit_users

DAY = 86_400.0


def random_timeline(rng: np.random.Generator, users: int = 3, exercises: int = 9) -> Timeline:
    user, workout, time, exercise = [], [], [], []
    for u in range(users):
        t = 1.7e9 + u * 1000
        for w in range(12):
            t += int(rng.integers(1, 4)) * DAY
            for _ in range(int(rng.integers(2, 6))):
                user.append(u)
                workout.append(w)
                time.append(t)
                exercise.append(int(rng.integers(0, exercises)))
    return Timeline.of(user, workout, time, exercise)


def empty_stats(ref_time: float) -> SequenceStats:
    none, index = np.zeros(0), np.zeros(0, dtype=np.int64)
    return SequenceStats(ref_time, -1, index, none, none, none, index, index, none, none, index)


def test_batched_terms_equal_the_sdk_terms_on_every_prefix():
    """The trainer's replay and the SDK's scoring agree at every step."""
    rng = np.random.default_rng(1)
    tl = random_timeline(rng)
    starts = np.r_[0, np.flatnonzero(np.diff(tl.user)) + 1]
    queries = np.setdiff1d(np.arange(len(tl)), starts)
    cands = user_candidates(tl, queries)
    batched = step_terms(tl, queries, cands)
    assert np.abs(batched[:, [0, 1, 3, 4]]).sum() > 0
    for q, j in enumerate(queries):
        rows = np.flatnonzero(cands.query == q)
        prefix = np.flatnonzero((tl.user == tl.user[j]) & (np.arange(len(tl)) < j))
        stats = sequence_stats(tl.take(prefix), ref_time=tl.time[j] + 5)
        direct = score_terms(stats, int(tl.exercise[j - 1]), cands.exercise[rows], tl.time[j])
        np.testing.assert_allclose(batched[rows], direct, atol=1e-12)
        # Exercises already done in the workout are never candidates.
        same = (tl.user == tl.user[j]) & (tl.workout == tl.workout[j]) & (np.arange(len(tl)) < j)
        done = set(tl.exercise[same].tolist())
        assert not done & set(cands.exercise[rows].tolist())


@pytest.mark.parametrize("cut", [0, 1, 7, 40])
def test_extending_statistics_equals_recomputing_them(cut):
    rng = np.random.default_rng(cut)
    tl = random_timeline(rng, users=1)
    whole = sequence_stats(tl, ref_time=2e9)
    head = (
        sequence_stats(tl.take(np.arange(cut)), ref_time=tl.time[cut - 1])
        if cut
        else empty_stats(1.6e9)
    )
    extended = extend_stats(head, tl.take(np.arange(cut, len(tl))), 2e9)
    for name in SequenceStats.__dataclass_fields__:
        np.testing.assert_allclose(getattr(extended, name), getattr(whole, name), rtol=1e-12)


def test_routine_scores_the_latest_successor_highest():
    # a(0) → 1, later a → 2: 2 is "what followed a last time".
    tl = Timeline.of([0] * 4, [0, 0, 1, 1], [0, 0, DAY, DAY], [0, 1, 0, 2])
    stats = sequence_stats(tl, ref_time=2 * DAY)
    terms = score_terms(stats, 0, np.array([1, 2, 3]), 2 * DAY)
    assert terms[1, 0] == 1.0 and terms[0, 0] == 0.5 and terms[2, 0] == 0.0
    # One each: the back-off to decayed frequency favours the more recent; an
    # exercise never done gets nothing.
    assert terms[1, 1] > terms[0, 1] > terms[2, 1] == 0.0
    # Done a day ago: recovering; never done: fresh.
    assert 0 < terms[1, 4] < 1 and terms[2, 4] == 0.0


def test_states_follow_the_design():
    phi = np.eye(DIMENSIONS)[:4]
    tl = Timeline.of([0] * 5, [0, 0, 1, 1, 1], [0, 0, DAY, DAY, DAY], [0, 1, 2, 3, 0])
    s = states(tl, phi)
    assert s.shape == (5, STATE_DIMENSIONS) and np.all(s[:, -1] == 1)
    last, workout, recent = (s[:, i * DIMENSIONS : (i + 1) * DIMENSIONS] for i in range(3))
    assert not last[0].any() and last[3, 2] == 1  # entry 3 follows entry 2
    assert not workout[2].any()  # a workout's first entry: nothing done yet
    np.testing.assert_allclose(workout[4, [2, 3]], [0.5, 0.5])
    np.testing.assert_allclose(recent[3, [0, 1]], [0.5, 0.5])  # the workout a day before
    assert not recent[0].any()


def test_ridge_matches_scikit_learn_and_its_loo_choice():
    rng = np.random.default_rng(0)
    p, q = 40, 12
    xs, ys = [], []
    for _ in range(12):
        n = int(rng.integers(5, 120))
        x = rng.random((n, p))
        x[:, rng.random(p) < 0.3] = 0  # unused state columns, as with real users
        xs.append(x)
        ys.append(rng.random((n, q)))
    fit = fit_users(xs, ys, np.zeros((p, q)))
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        lam = fit.lambdas[i]
        reference = Ridge(alpha=lam, fit_intercept=False, solver="cholesky").fit(x, y)
        np.testing.assert_allclose(fit.coefficients[i], reference.coef_.T, atol=1e-8)
        assert RidgeCV(alphas=LAMBDA_GRID, fit_intercept=False).fit(x, y).alpha_ == lam


def test_ridge_shrinks_toward_the_prior_and_keeps_it_on_unused_columns():
    rng = np.random.default_rng(2)
    x = rng.random((30, 6))
    x[:, 5] = 0
    y = rng.random((30, 3))
    prior = rng.random((6, 3))
    fit = fit_users([x], [y], prior)
    lam = fit.lambdas[0]
    np.testing.assert_allclose(fit.coefficients[0], fit_one(x, y, lam, prior), atol=1e-10)
    np.testing.assert_allclose(fit.coefficients[0][5], prior[5])
    # A user without samples keeps the prior.
    assert np.array_equal(fit_users([x[:0]], [y[:0]], prior).coefficients[0], prior)


def test_stored_parameters_round_trip():
    rng = np.random.default_rng(4)
    tl = random_timeline(rng, users=1, exercises=6)
    stats = sequence_stats(tl, ref_time=2e9)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(6)]
    decoded_ids, decoded = decode_stats(encode_stats(stats, ids))
    assert decoded_ids == [ids[i] for i in stats.exercise]
    assert decoded.last_exercise == list(stats.exercise).index(stats.last_exercise)
    np.testing.assert_array_equal(decoded.count, stats.count)
    np.testing.assert_array_equal(
        [decoded_ids[i] for i in decoded.from_exercise], [ids[i] for i in stats.from_exercise]
    )
    prior = rng.random((STATE_DIMENSIONS, DIMENSIONS))
    w = prior.copy()
    w[[3, 90]] += 1.0
    blob = encode_coefficients(w, prior)
    assert len(blob) < 2 * 4 * DIMENSIONS + 10  # only the two changed rows
    np.testing.assert_allclose(decode_coefficients(blob, prior), w, rtol=1e-6)
