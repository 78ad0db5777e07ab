"""The synthetic-user generator (determinism, realism) and its bulk loader, read
back through the real server on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from client_sdk.model import _group_starts
from repwise.v1 import auth_pb2, common_pb2, log_pb2
from server.catalog.sources import DEFAULT_CATALOG, seed_default_catalog
from server.training import bulk
from server.training import repository as training_repository
from server.training.service import BatchTrainer, load_feature_table, timeline_of
from server.training.synthetic import (
    PROGRAMS,
    SYNTHETIC_PASSWORD,
    SyntheticUser,
    catalog_feature_table,
    generate_user,
    generate_users,
    load_users,
    to_timeline,
    user_id,
)
from tests.conftest import bearer

CATALOG = {e["slug"]: e for e in json.loads(DEFAULT_CATALOG.read_text())["exercises"]}


@pytest.fixture(scope="module")
def population() -> list[SyntheticUser]:
    return generate_users(60, seed=11, weeks=40)


def slugs_between(user: SyntheticUser, first: int, last: int) -> set[str]:
    return {p.slug for w in user.workouts[first:last] for p in w.exercises}


# --- determinism --------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_users_whatever_the_count():
    assert generate_users(4, seed=3) == generate_users(4, seed=3)
    assert generate_users(6, seed=3)[5] == generate_user(5, seed=3)
    assert generate_users(3, seed=3, first=2) == generate_users(5, seed=3)[2:]
    assert generate_user(0, seed=3) != generate_user(0, seed=4)
    assert len({u.email for u in generate_users(20, seed=3)}) == 20


# --- realism ------------------------------------------------------------------------------


def test_users_follow_programs_of_catalog_exercises(population):
    assert {u.program for u in population} == {p.name for p in PROGRAMS}
    for user in population:
        assert user.workouts
        starts = [w.started_at for w in user.workouts]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        for w in user.workouts:
            assert w.started_at.tzinfo == UTC and w.ended_at > w.started_at
            slugs = [p.slug for p in w.exercises]
            assert slugs and len(set(slugs)) == len(slugs)  # each exercise once per workout
            assert set(slugs) <= CATALOG.keys()
    # Days of a program carry their titles, and rotate.
    titles = Counter(w.title for u in population for w in u.workouts)
    assert {"Push", "Pull", "Legs", "Upper A", "Lower B", "Full Body A", "Chest", "Arms"} <= set(
        titles
    )


def test_routines_drift_and_new_exercises_appear(population):
    drifted = 0
    new_late = 0
    for user in population:
        n = len(user.workouts)
        early, late = slugs_between(user, 0, n // 4), slugs_between(user, 3 * n // 4, n)
        drifted += bool(early - late)  # exercises dropped or swapped for variants
        new_late += bool(late - slugs_between(user, 0, 3 * n // 4))  # never done before
    assert drifted >= 0.8 * len(population)
    assert new_late >= 0.6 * len(population)


def test_order_changes_and_skipped_exercises(population):
    reordered = skipped = 0
    for user in population:
        by_title: dict[str, list[tuple[str, ...]]] = {}
        for w in user.workouts:
            by_title.setdefault(w.title, []).append(tuple(p.slug for p in w.exercises))
        orders = [o for sessions in by_title.values() for o in sessions]
        # The same pair of exercises done in both orders within one day type.
        pairs: dict[tuple[str, str], set[bool]] = {}
        for sessions in by_title.values():
            for order in sessions:
                for i, a in enumerate(order):
                    for b in order[i + 1 :]:
                        pairs.setdefault((min(a, b), max(a, b)), set()).add(a < b)
        reordered += any(len(seen) == 2 for seen in pairs.values())
        skipped += len({len(o) for o in orders}) > 1
    assert reordered >= 0.8 * len(population)
    assert skipped == len(population)


def test_breaks_skipped_days_and_one_off_exercises(population):
    with_break = with_one_off = 0
    for user in population:
        gaps = np.diff([w.started_at.timestamp() for w in user.workouts]) / 86_400
        assert gaps.max() < 40
        with_break += bool((gaps >= 8).any())
        counts = Counter(p.slug for w in user.workouts for p in w.exercises)
        with_one_off += any(c == 1 for c in counts.values())
    assert 0.2 * len(population) <= with_break < len(population)
    assert with_one_off >= 0.7 * len(population)


def test_time_zones_and_times_of_day(population):
    assert len({u.time_zone for u in population}) >= 6
    travelled = 0
    for user in population:
        hours = [
            w.started_at.astimezone(ZoneInfo(w.time_zone)).hour
            + w.started_at.astimezone(ZoneInfo(w.time_zone)).minute / 60
            for w in user.workouts
        ]
        assert all(5 <= h <= 23 for h in hours)
        assert statistics.pstdev(hours) < 1.5  # a usual time of day
        travelled += any(w.time_zone != user.time_zone for w in user.workouts)
        assert user.preferred_unit == (
            "lb" if user.time_zone.startswith(("America/New", "America/Ch", "America/Lo")) else "kg"
        )
    assert travelled >= 1


def test_sets_progress_deload_and_warm_up(population):
    progressed = dipped = warmed = timed = 0
    for user in population:
        top: dict[str, list[float]] = {}
        for w in user.workouts:
            for p in w.exercises:
                working = [s for s in p.sets if s.kind != "warmup"]
                assert working
                warm = [s for s in p.sets if s.kind == "warmup"]
                if warm:
                    warmed += 1
                    heaviest = max(s.weight_kg or 0 for s in working)
                    assert all(s.weight_kg is not None and s.weight_kg < heaviest for s in warm)
                    assert p.sets[: len(warm)] == tuple(warm)  # warm-ups come first
                if CATALOG[p.slug]["category"] == "cardio":
                    (only,) = p.sets
                    assert only.duration_s and only.reps is None and only.weight_kg is None
                    timed += 1
                weights = [s.weight_kg for s in working if s.weight_kg is not None]
                if weights:
                    top.setdefault(p.slug, []).append(max(weights))
                for s in p.sets:
                    assert s.reps is None or 0 < s.reps <= 30
                    assert s.weight_kg is None or 0 < s.weight_kg < 400
        series = [t for t in top.values() if len(t) >= 8]
        progressed += sum(t[-1] > t[0] for t in series) > len(series) / 2
        dipped += any(b < a for t in series for a, b in itertools.pairwise(t))
    assert progressed >= 0.8 * len(population)
    assert dipped >= 0.5 * len(population)  # deloads and detraining after breaks
    assert warmed and timed


def test_the_timeline_holds_every_entry_in_order(population):
    table = catalog_feature_table()
    users = population[:10]
    tl = to_timeline(users, table)
    assert len(tl) == sum(u.entry_count for u in users)
    keys = np.stack([tl.user, tl.time, tl.workout])
    assert (np.diff(tl.user) >= 0).all()
    assert np.all(np.lexsort(keys[::-1]) == np.arange(len(tl)))
    first = users[0].workouts[0]
    assert [table.ids[e] for e in tl.exercise[: len(first.exercises)]] == [
        p.slug for p in first.exercises
    ]
    assert tl.time[0] == first.started_at.timestamp()


# --- the bulk loader ----------------------------------------------------------------------


def list_all(server, md) -> list[log_pb2.Workout]:  # type: ignore[no-untyped-def]
    out: list[log_pb2.Workout] = []
    token = ""
    while True:
        page = server.logs.ListWorkouts(
            log_pb2.ListWorkoutsRequest(
                page_size=200, page_token=token, weight_unit=common_pb2.WEIGHT_UNIT_KG
            ),
            metadata=md,
        )
        out += page.workouts
        token = page.next_page_token
        if not token:
            return out


def test_loaded_users_read_back_through_the_server(server, clock):
    clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    db = server.server.db
    seed_default_catalog(db, clock)
    users = generate_users(6, seed=5, weeks=10)
    ids = load_users(db, users, chunk_users=4, now=clock())
    assert ids == [user_id(u) for u in users]
    by_slug = db.run(lambda s: bulk.shared_exercise_ids(s, list(CATALOG)), write=False)
    slug_of = {exercise_id: slug for slug, exercise_id in by_slug.items()}

    for user in (users[0], users[5]):
        login = server.auth.Login(
            auth_pb2.LoginRequest(email=user.email, password=SYNTHETIC_PASSWORD)
        )
        md = bearer(login.access_token)
        me = server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=md)
        assert (me.user.time_zone, me.user.email) == (user.time_zone, user.email)
        listed = sorted(list_all(server, md), key=lambda w: w.start_time.ToDatetime())
        assert [w.id for w in listed] == [w.id for w in user.workouts]
        for got, want in zip(listed, user.workouts, strict=True):
            assert got.start_time.ToDatetime(UTC) == want.started_at
            assert got.end_time.ToDatetime(UTC) == want.ended_at
            assert (got.title, got.time_zone, got.etag) == (want.title, want.time_zone, "1")
            assert [slug_of[p.exercise_id] for p in got.exercises] == [
                p.slug for p in want.exercises
            ]
            for gp, wp in zip(got.exercises, want.exercises, strict=True):
                assert len(gp.sets) == len(wp.sets)
                for gs, ws in zip(gp.sets, wp.sets, strict=True):
                    assert (gs.reps if gs.HasField("reps") else None) == ws.reps
                    weight = gs.weight if gs.HasField("weight") else None
                    assert weight == pytest.approx(ws.weight_kg, abs=1e-6)
                    if ws.duration_s is not None:
                        assert gs.duration.ToMilliseconds() == ws.duration_s * 1000

        chunks = server.logs.StreamHistory(log_pb2.StreamHistoryRequest(), metadata=md)
        entries = [e for chunk in chunks for e in chunk.entries]
        assert [(e.workout_id, e.position) for e in entries] == [
            (w.id, i) for w in user.workouts for i in range(len(w.exercises))
        ]
        # The change feed: one change per workout, the cursor at the counter.
        feed = server.logs.SyncWorkouts(log_pb2.SyncWorkoutsRequest(page_size=1000), metadata=md)
        assert len(feed.changes) == len(user.workouts)
        assert feed.next_cursor == f"c{len(user.workouts)}"
        # The stored content hash is the server's own: re-creating a workout is a retry.
        again = listed[0]
        again.ClearField("etag")
        created = server.logs.CreateWorkout(
            log_pb2.CreateWorkoutRequest(workout=again), metadata=md
        )
        assert created.workout.etag == "1"

    # The trainer reads the same timeline and sees every user as having new logs.
    table = db.run(load_feature_table, write=False)
    by_id = sorted(zip(ids, users, strict=True))  # the trainer reads users in id order
    sorted_ids = [i for i, _ in by_id]
    rows = db.run(lambda s: training_repository.log_rows(s, sorted_ids), write=False)
    stored = timeline_of(rows, sorted_ids, table)
    expected = to_timeline([u for _, u in by_id], table, by_slug)
    assert np.array_equal(stored.user, expected.user)
    assert np.array_equal(stored.exercise, expected.exercise)
    np.testing.assert_allclose(stored.time, expected.time, atol=1e-3)
    assert np.array_equal(
        _group_starts(stored.user, stored.workout), _group_starts(expected.user, expected.workout)
    )
    db.run(training_repository.ensure_states)
    eligible = db.run(
        lambda s: training_repository.count_eligible(s, training_repository.Selection())
    )
    assert eligible == len(users)
    summary = BatchTrainer(db, clock).run_batch(training_repository.Selection())
    assert (summary.trained, summary.failed) == (len(users), 0)


def test_loading_needs_the_catalog(db):
    with pytest.raises(ValueError, match="seed the default catalog"):
        load_users(db, generate_users(1, seed=1, weeks=3))
