"""TESTPLAN scenario "Two devices syncing overlapping workouts while refreshing tokens", with
the SDK as a phone and a watch would use it (tests/test_sync_and_history.py covers the same
race with raw stubs and explicit refreshes).

One account, two sessions: two `RepwiseClient`s on their own threads sync overlapping sets of
workouts in overlapping chunks for a few seconds, with 2-second access tokens and no leeway,
so each client refreshes several times mid-sync (ahead of expiry, or after an UNAUTHENTICATED).
Afterwards: the rows are the distinct ids, each created once and whole; GetStats' day and week
streaks equal a recount of the stored rows by the documented rules; and neither session was
revoked: both clients still call and refresh. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select

from client_sdk import RepwiseClient
from repwise.v1 import log_pb2
from server.auth.models import AuthSession
from server.catalog.sources import seed_default_catalog
from server.logs.models import Workout
from tests.conftest import PASSWORD, start_server
from tests.faults import Shape, assert_whole, make_workout, stored_shapes

pytestmark = pytest.mark.slow

CREATED = log_pb2.SYNC_OUTCOME_CREATED
UNCHANGED = log_pb2.SYNC_OUTCOME_UNCHANGED
ROUNDS = 12
DAY = timedelta(days=1)


def monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def recount(days: list[date], today: date, goal: int) -> tuple[int, int, int, int, int]:
    """(current_days, longest_days, current_weeks, longest_weeks, workouts_this_week) of
    workouts on local `days`, by the rules in server/logs/stats.py's docstring."""
    distinct = set(days)
    longest_days = run = 0
    for day in sorted(distinct):
        run = run + 1 if day - DAY in distinct else 1
        longest_days = max(longest_days, run)
    current_days, day = 0, today if today in distinct else today - DAY
    while day in distinct:
        current_days, day = current_days + 1, day - DAY

    per_week = Counter(monday(d) for d in days)
    met = {week for week, count in per_week.items() if count >= goal}
    longest_weeks = run = 0
    for week in sorted(met):
        run = run + 1 if week - 7 * DAY in met else 1
        longest_weeks = max(longest_weeks, run)
    this_week = monday(today)
    current_weeks, week = 0, this_week if this_week in met else this_week - 7 * DAY
    while week in met:
        current_weeks, week = current_weeks + 1, week - 7 * DAY
    return current_days, longest_days, current_weeks, longest_weeks, per_week[this_week]


def test_two_sdk_devices_sync_overlapping_workouts_while_their_tokens_rotate(db, clock, tmp_path):
    running = start_server(db, clock, access_token_seconds=2, jwt_leeway_seconds=0)
    seed_default_catalog(db, clock)
    rng = random.Random(6)
    now = datetime.now(UTC).replace(microsecond=0)
    # About two of three days over eight weeks, some with two workouts.
    starts = [
        now - timedelta(days=d, hours=h)
        for d in range(56)
        if rng.random() < 0.65
        for h in ([1, 5] if rng.random() < 0.2 else [1])
    ]
    sent: dict[str, Shape] = {}
    workouts = []
    for start in starts:
        workout, shape = make_workout(rng, start)
        workouts.append(workout)
        sent[workout.id] = shape
    rng.shuffle(workouts)
    shared, own = workouts[:30], {"phone": workouts[30:50], "watch": workouts[50:]}

    phone = RepwiseClient(running.target, timeout=30, cache_dir=tmp_path / "phone")
    watch = RepwiseClient(running.target, timeout=30, cache_dir=tmp_path / "watch")
    devices = {"phone": phone, "watch": watch}
    email = "two-devices@example.com"
    phone.register(email, PASSWORD)
    watch.login(email, PASSWORD)

    results: list[log_pb2.SyncResult] = []
    tokens_seen: dict[str, set[str]] = {name: set() for name in devices}
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(devices))

    def device(name: str) -> None:
        client = devices[name]
        mine = shared + own[name] if name == "phone" else own[name] + shared[::-1]
        pace = random.Random(name)
        try:
            barrier.wait(timeout=10)
            for r in range(ROUNDS):
                # Overlapping windows over the device's list: every workout is sent repeatedly.
                begin = (r * len(mine)) // ROUNDS
                chunk = (mine + mine)[begin : begin + len(mine) // 3]
                response = client.sync_workouts(chunk)
                with lock:
                    results.extend(response.results)
                    assert client.tokens is not None
                    tokens_seen[name].add(client.tokens.refresh_token)
                time.sleep(pace.uniform(0.3, 0.6))  # the sync spans several token lifetimes
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=device, args=(name,)) for name in devices]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a device hung"
        assert not errors, [repr(e) for e in errors]
        for name, seen in tokens_seen.items():
            assert len(seen) >= 3, f"the {name} refreshed only {len(seen) - 1} times"

        # Rows equal the distinct ids: each created once, every other send unchanged.
        assert {r.outcome for r in results} <= {CREATED, UNCHANGED}
        created = Counter(r.workout_id for r in results if r.outcome == CREATED)
        assert created == Counter(set(sent))
        stored = stored_shapes(db.url)
        assert set(stored) == set(sent)
        assert_whole(stored, sent)

        # Streaks equal a recount of the stored rows (the account's zone is UTC).
        stats = phone.get_stats().activity
        today = datetime.now(UTC).date()
        assert stats.time_zone == "UTC" and stats.weekly_goal == 3
        rows = db.run(
            lambda s: s.scalars(
                select(Workout.started_at).where(
                    Workout.user_id == phone.user_id, Workout.deleted_at.is_(None)
                )
            ).all(),
            write=False,
        )
        assert len(rows) == len(sent)
        assert (
            stats.current_days,
            stats.longest_days,
            stats.current_weeks,
            stats.longest_weeks,
            stats.workouts_this_week,
        ) == recount([r.astimezone(UTC).date() for r in rows], today, 3)
        assert stats.longest_days >= 2 and stats.longest_weeks >= 1  # the recount is not trivial

        # No legitimate session was revoked: both still call, and still refresh.
        for client in devices.values():
            assert client.get_me().email == email
            client.refresh()
            assert client.list_workouts(page_size=1).workouts
        sessions = db.run(
            lambda s: s.scalars(
                select(AuthSession).where(AuthSession.user_id == phone.user_id)
            ).all(),
            write=False,
        )
        assert len(sessions) == 2 and all(s.revoked_at is None for s in sessions)
    finally:
        for client in devices.values():
            client.close()
        running.channel.close()
        running.server.stop(grace=0)
