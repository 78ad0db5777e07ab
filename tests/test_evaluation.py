"""`repwise eval`: the chronological replay checked step by step against the
SDK's own scoring, the acceptance criterion on synthetic users, and the command
on synthetic users, a database user and an import file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from client_sdk.model import (
    Timeline,
    _group_starts,
    combine,
    predicted_features,
    score_terms,
    sequence_stats,
    states,
)
from server.catalog.sources import seed_default_catalog
from server.cli import main
from server.db import utcnow
from server.errors import InvalidArgument
from server.logs.models import Workout
from server.training.evaluation import (
    BASELINES,
    RECOMMENDERS,
    evaluate,
    evaluate_synthetic,
    evaluate_user,
    replay,
    split,
)
from server.training.synthetic import (
    SyntheticUser,
    _catalog,
    catalog_feature_table,
    generate_users,
    load_users,
    to_timeline,
)

TERM = {"routine": 0, "transition": 1, "ridge": 2, "frequency": 3}
COUNT_WORKOUTS = select(func.count()).select_from(Workout)


@pytest.fixture(scope="module")
def small() -> tuple[Timeline, np.ndarray, list[SyntheticUser]]:
    users = generate_users(7, seed=4, weeks=12)
    table = catalog_feature_table()
    return to_timeline(users, table), table.phi, users


def rank_bounds(scores: np.ndarray, target: int) -> tuple[float, float]:
    """The target's rank with near-ties all counted half, from both sides of 1e-9."""
    others = np.delete(scores, target)
    mine = scores[target]
    above = float((others > mine + 1e-9).sum())
    near = float((np.abs(others - mine) <= 1e-9).sum())
    return 1 + above, 1 + above + near


def test_replay_ranks_are_the_sdk_scores_at_every_step(small):
    """Every step ranked as the SDK would have ranked it live, chunked or not."""
    tl, phi, _ = small
    result = replay(tl, 7, phi, chunk_users=3)
    train = result.train
    popularity = np.bincount(tl.exercise[train], minlength=len(phi)).astype(float)
    workout_start = _group_starts(tl.user, tl.workout)
    assert len(result.steps) > 200
    for s, j in enumerate(result.steps):
        u = tl.user[j]
        assert not train[j] and tl.user[j - 1] == u
        prefix = np.flatnonzero((tl.user == u) & (np.arange(len(tl)) < j))
        done = set(tl.exercise[workout_start[j] : j].tolist())
        # What the user did before this step, and the target (new ones come from the
        # catalog); never what the user only does later.
        seen = set(tl.exercise[prefix].tolist()) | {int(tl.exercise[j])}
        candidates = np.array(sorted(seen - done))
        target = int(np.flatnonzero(candidates == tl.exercise[j])[0])
        stats = sequence_stats(tl.take(prefix), ref_time=float(tl.time[j - 1]))
        terms = score_terms(stats, int(tl.exercise[j - 1]), candidates, float(tl.time[j]))
        state = states(tl.take(np.append(prefix, j)), phi)[-1]
        terms[:, 2] = phi[candidates] @ predicted_features(state, result.coefficients[u])
        scores = {"weighted": combine(terms, result.weights[u])}
        scores.update({name: terms[:, k] for name, k in TERM.items()})
        for name, values in scores.items():
            low, high = rank_bounds(values, target)
            assert low <= result.ranks[name][s] <= high, (name, j)
        assert result.candidates[s] == len(candidates)
        # Popularity: every catalog exercise not yet done in the workout.
        pool = np.array(sorted(set(range(len(phi))) - done))
        low, high = rank_bounds(popularity[pool], int(np.flatnonzero(pool == tl.exercise[j])[0]))
        assert low <= result.ranks["popularity"][s] <= high


def test_nothing_after_the_cut_is_fitted_on(small):
    """Scrambling every test entry leaves the fitted parameters as they were."""
    tl, phi, _ = small
    first = replay(tl, 7, phi)
    rng = np.random.default_rng(0)
    scrambled = tl.exercise.copy()
    test = np.flatnonzero(~first.train)
    scrambled[test] = rng.permutation(scrambled[test])
    other = replay(Timeline(tl.user, tl.workout, tl.time, scrambled), 7, phi)
    assert np.array_equal(first.train, other.train)
    np.testing.assert_array_equal(first.coefficients, other.coefficients)
    np.testing.assert_array_equal(first.weights, other.weights)
    assert first.tuned.all()


def test_the_cut_is_a_workout_boundary_near_the_fraction(small):
    tl, _, users = small
    for fraction in (0.1, 0.25, 0.5):
        train = split(tl, len(users), fraction)
        for u, user in enumerate(users):
            mine = train[tl.user == u]
            cut = int(mine.sum())
            assert mine[:cut].all() and not mine[cut:].any()  # a prefix
            sizes = [len(w.exercises) for w in user.workouts]
            assert cut in np.cumsum(sizes)  # at a workout's start
            test = len(mine) - cut
            if sizes[-1] > fraction * len(mine):
                assert test == sizes[-1]  # the last workout alone
            else:
                assert fraction * len(mine) - max(sizes) < test <= fraction * len(mine)
    # Two workouts: the second is the test part; one workout has nothing to test.
    two = Timeline.of([0] * 5, [0, 0, 0, 1, 1], [1e9] * 3 + [1e9 + 86400] * 2, [1, 2, 3, 1, 2])
    assert split(two, 1, 0.25).tolist() == [True, True, True, False, False]
    assert split(two.take(np.arange(3)), 1, 0.25).all()
    with pytest.raises(InvalidArgument):
        split(tl, len(users), 1.0)


def test_weighted_recommender_beats_every_baseline_on_synthetic_users():
    """The acceptance criterion of the issue: hit@10 and MRR, two populations."""
    for seed in (0, 1):
        report = evaluate_synthetic(120, seed=seed)
        assert report.steps > 8000 and report.evaluated_users == 120
        weighted = report.results["weighted"]
        for name in BASELINES:
            assert weighted.hit_at_10 > report.results[name].hit_at_10, (seed, name)
            assert weighted.mrr > report.results[name].mrr, (seed, name)
        assert report.beats_baselines()
        # Sanity: the numbers are hit rates, ordered by k.
        for m in report.results.values():
            assert 0 <= m.hit_at_1 <= m.hit_at_5 <= m.hit_at_10 <= 1 and 0 < m.mrr <= 1


# --- the command --------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", "eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_synthetic_prints_the_table_and_json(capsys):
    code, out, _ = run(capsys, "--synthetic", "12", "--seed", "2")
    assert code == 0
    report = evaluate_synthetic(12, seed=2)
    lines = out.splitlines()
    assert lines[0].startswith("12 synthetic users (seed 2): ")
    assert f"{report.steps} steps of 12 users" in lines[0]
    header = lines.index("recommender    hit@1   hit@5  hit@10     MRR")
    rows = [line.split() for line in lines[header + 1 : header + 1 + len(RECOMMENDERS)]]
    assert [r[0] for r in rows] == list(RECOMMENDERS)
    for name, *values in rows:
        m = report.results[name]
        assert [float(v) for v in values] == [
            round(x, 3) for x in (m.hit_at_1, m.hit_at_5, m.hit_at_10, m.mrr)
        ]
    assert "every baseline at hit@10 and MRR" in lines[-1]

    code, out, _ = run(capsys, "--synthetic", "12", "--seed", "2", "--json")
    assert code == 0
    data = json.loads(out)
    assert data == json.loads(json.dumps(report.to_json()))
    assert set(data["results"]) == set(RECOMMENDERS)
    assert set(data["results"]["weighted"]) == {"hit_at_1", "hit_at_5", "hit_at_10", "mrr"}


def test_eval_refuses_bad_arguments(capsys):
    code, _, err = run(capsys, "--synthetic", "5", "--test-fraction", "1.5")
    assert code == 1 and "must be between 0 and 1" in err
    with pytest.raises(SystemExit):
        main(["eval", "--synthetic", "5", "--user", "a@example.com"])


@pytest.fixture
def loaded(db, monkeypatch):
    """Three synthetic users in the test database, which `repwise` is pointed at."""
    monkeypatch.setenv("REPWISE_DATABASE_URL", db.url)
    seed_default_catalog(db, utcnow)
    users = generate_users(3, seed=8, weeks=16)
    load_users(db, users)
    return db, users


def test_eval_user_replays_a_database_user(capsys, loaded):
    db, users = loaded
    user = users[1]
    code, out, _ = run(capsys, "--user", user.email.upper(), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["source"] == f"user {user.email}" and data["users"] == 1
    assert data == json.loads(json.dumps(evaluate_user(db, user.email).to_json()))
    # The same user replayed from memory: the same steps and, but for popularity
    # (which counts the other users' logs here), the same figures.
    table = catalog_feature_table()
    alone = evaluate(to_timeline([user], table), 1, table.phi)
    assert data["steps"] == alone.steps > 20
    for name in RECOMMENDERS[:-1]:
        for metric, value in data["results"][name].items():
            assert value == pytest.approx(getattr(alone.results[name], metric), abs=1e-9)

    code, out, _ = run(capsys, "--user", user.email)
    assert code == 0 and out.startswith(f"user {user.email}: ")

    code, _, err = run(capsys, "--user", "nobody@example.com")
    assert code == 1 and "no user with email nobody@example.com" in err


def strong_csv(path: Path, user: SyntheticUser, extra: str = "") -> None:
    """The user's workouts as a Strong export (UTC, kg); `extra` an exercise name
    the catalog does not know, added to every third workout."""
    names = {slug: info.name for slug, info in _catalog().items()}
    header = "Date,Workout Name,Duration,Exercise Name,Set Order,Weight,Reps,Distance,Seconds,"
    with path.open("w", newline="") as sink:
        out = csv.writer(sink)
        out.writerow([*header.split(",")[:-1], "Notes", "Workout Notes", "RPE"])
        for number, w in enumerate(user.workouts):
            when = w.started_at.strftime("%Y-%m-%d %H:%M:%S")
            performed = [(names[p.slug], p.sets) for p in w.exercises]
            if extra and number % 3 == 0:
                performed.append((extra, performed[0][1]))
            for name, sets in performed:
                for i, s in enumerate(sets):
                    order = "W" if s.kind == "warmup" else str(i + 1)
                    out.writerow(
                        [when, w.title, "1h", name, order, s.weight_kg or 0, s.reps or 0, 0,
                         int(s.duration_s or 0), "", "", ""]
                    )  # fmt: skip


def test_eval_import_replays_a_file_without_storing_it(capsys, loaded, tmp_path):
    db, users = loaded
    user = users[2]
    path = tmp_path / "strong.csv"
    strong_csv(path, user)
    code, out, _ = run(capsys, "--import", "strong", str(path), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["source"] == "strong export strong.csv"
    from_db = evaluate_user(db, user.email)
    assert data["steps"] == from_db.steps > 20
    for name in RECOMMENDERS[:-1]:
        for metric, value in data["results"][name].items():
            assert value == pytest.approx(getattr(from_db.results[name], metric), abs=1e-9)

    # Names the catalog does not know become exercises of their own; nothing is stored.
    before = db.run(lambda s: s.execute(COUNT_WORKOUTS).scalar_one(), write=False)
    strong_csv(path, user, extra="Zercher Carry Thing")
    code, out, _ = run(capsys, "--import", "strong", str(path))
    assert code == 0 and out.startswith("strong export strong.csv: ")
    assert db.run(lambda s: s.execute(COUNT_WORKOUTS).scalar_one(), write=False) == before

    code, _, err = run(capsys, "--import", "garmin", str(path))
    assert code == 1 and "unknown kind" in err
    code, _, err = run(capsys, "--import", "strong", str(tmp_path / "missing.csv"))
    assert code == 1 and "cannot read the file" in err
