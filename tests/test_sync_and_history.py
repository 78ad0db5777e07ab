"""SyncWorkouts and StreamHistory through the real server (SQLite and PostgreSQL).

Covers per-item sync results, the change feed seen by other devices and other
users, retried and offline syncs, concurrent devices refreshing their tokens
(TESTPLAN 15, 25, 26, 27 and the two-devices scenario), history streaming and
a client cancelling history streams (TESTPLAN 21).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import text

from repwise.v1 import auth_pb2, common_pb2, log_pb2
from server.catalog.sources import seed_default_catalog
from tests.conftest import (
    PASSWORD,
    bearer,
    error_info,
    register,
    rpc_error,
    start_server,
)

CREATED = log_pb2.SYNC_OUTCOME_CREATED
UPDATED = log_pb2.SYNC_OUTCOME_UPDATED
UNCHANGED = log_pb2.SYNC_OUTCOME_UNCHANGED
CONFLICT = log_pb2.SYNC_OUTCOME_CONFLICT
INVALID = log_pb2.SYNC_OUTCOME_INVALID
DELETED = log_pb2.SYNC_OUTCOME_DELETED

BENCH = "barbell-bench-press"
SQUAT = "barbell-back-squat"
DEADLIFT = "barbell-deadlift"

BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


# --- helpers ------------------------------------------------------------------------------


def wid(i: int) -> str:
    return str(uuid.UUID(int=i))


def workout(
    i: int,
    start: datetime | None = None,
    *,
    title: str = "Session",
    exercises: tuple[tuple[str, float], ...] = ((BENCH, 100.0), (SQUAT, 140.0)),
    etag: str = "",
) -> log_pb2.Workout:
    """Workout `i` (id uuid(int=i)), one 5-rep set per exercise, weights in kg."""
    message = log_pb2.Workout(
        id=wid(i), title=title, etag=etag, weight_unit=common_pb2.WEIGHT_UNIT_KG
    )
    message.start_time.FromDatetime(start or BASE + timedelta(hours=i))
    for exercise_id, weight in exercises:
        performed = message.exercises.add(exercise_id=exercise_id)
        performed.sets.add(reps=5, weight=weight)
    return message


def sync(server, md, upserts=(), deletes=(), cursor="", page_size=0, **kwargs):  # type: ignore[no-untyped-def]
    return server.logs.SyncWorkouts(
        log_pb2.SyncWorkoutsRequest(
            upserts=list(upserts), deletes=list(deletes), cursor=cursor, page_size=page_size
        ),
        metadata=md,
        **kwargs,
    )


def outcomes(response: log_pb2.SyncWorkoutsResponse) -> list[int]:
    return [r.outcome for r in response.results]


def full_feed(
    server, md, page_size: int = 0, cursor: str = ""
) -> tuple[list[log_pb2.Workout], str]:  # type: ignore[no-untyped-def]
    """Every change after `cursor`, following has_more; returns (workouts, last cursor)."""
    changes: list[log_pb2.Workout] = []
    for _ in range(1000):
        response = sync(server, md, cursor=cursor, page_size=page_size)
        changes += [c.workout for c in response.changes]
        cursor = response.next_cursor
        if not response.has_more:
            return changes, cursor
    raise AssertionError("the change feed never ended")


def history(server, md, **fields) -> list[log_pb2.StreamHistoryResponse]:  # type: ignore[no-untyped-def]
    return list(server.logs.StreamHistory(log_pb2.StreamHistoryRequest(**fields), metadata=md))


def entries(chunks: list[log_pb2.StreamHistoryResponse]) -> list[log_pb2.HistoryEntry]:
    return [e for chunk in chunks for e in chunk.entries]


def keys(items: list[log_pb2.HistoryEntry]) -> list[tuple[datetime, str, int]]:
    return [(e.workout_start_time.ToDatetime(), e.workout_id, e.position) for e in items]


def workout_rows(server) -> Counter[str]:  # type: ignore[no-untyped-def]
    """Rows of the workouts table (every user, tombstones included), counted by id."""
    with server.server.db.engine.connect() as conn:
        return Counter(row[0] for row in conn.execute(text("SELECT id FROM workouts")))


def get_workout(server, md, workout_id: str) -> log_pb2.Workout:  # type: ignore[no-untyped-def]
    return server.logs.GetWorkout(log_pb2.GetWorkoutRequest(id=workout_id), metadata=md).workout


def login(server, email: str) -> auth_pb2.LoginResponse:  # type: ignore[no-untyped-def]
    return server.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))


@pytest.fixture
def catalog(server, clock):  # type: ignore[no-untyped-def]
    seed_default_catalog(server.server.db, clock)


@pytest.fixture
def user(server, catalog):  # type: ignore[no-untyped-def]
    """Metadata of a fresh user's first session."""
    return bearer(register(server).access_token)


# --- sync: per-item results ---------------------------------------------------------------


def test_sync_returns_one_result_per_item_in_request_order(server, user):
    first = sync(server, user, [workout(i) for i in (1, 2, 3, 4)])
    assert outcomes(first) == [CREATED] * 4
    etags = {r.workout_id: r.etag for r in first.results}
    assert all(etags.values())

    changed_2 = workout(2, title="Heavier", exercises=((BENCH, 105.0),), etag=etags[wid(2)])
    changed_3 = workout(3, title="Stale", etag="999")
    nan = workout(6)
    nan.exercises[0].sets[0].weight = float("nan")
    response = sync(
        server,
        user,
        [workout(5), workout(1), changed_2, changed_3, nan],
        deletes=[wid(4), wid(77)],
    )

    assert [r.workout_id for r in response.results] == [
        wid(5),
        wid(1),
        wid(2),
        wid(3),
        wid(6),
        wid(4),
        wid(77),
    ]
    assert outcomes(response) == [
        CREATED,
        UNCHANGED,
        UPDATED,
        CONFLICT,
        INVALID,
        DELETED,
        UNCHANGED,
    ]
    by_id = {r.workout_id: r for r in response.results}
    assert by_id[wid(2)].etag and by_id[wid(2)].etag != etags[wid(2)]
    assert by_id[wid(3)].etag == etags[wid(3)] and by_id[wid(3)].message
    assert by_id[wid(6)].field == "upserts[4].exercises[0].sets[0].weight"
    assert by_id[wid(6)].message
    assert get_workout(server, user, wid(2)).title == "Heavier"
    assert get_workout(server, user, wid(3)).title == "Session"
    assert workout_rows(server) == Counter({wid(i): 1 for i in (1, 2, 3, 4, 5)})


def test_upsert_of_changed_workout_without_current_etag_conflicts_and_keeps_server_copy(
    server, user
):
    created = sync(server, user, [workout(1)]).results[0]
    edit = workout(1, title="Device edit", exercises=((DEADLIFT, 180.0),))

    no_etag = sync(server, user, [edit]).results[0]
    assert no_etag.outcome == CONFLICT
    assert no_etag.etag == created.etag and no_etag.message

    updated = sync(server, user, [workout(1, title="Server edit", etag=created.etag)]).results[0]
    assert updated.outcome == UPDATED
    edit.etag = created.etag  # now stale
    stale = sync(server, user, [edit]).results[0]
    assert stale.outcome == CONFLICT and stale.etag == updated.etag

    kept = get_workout(server, user, wid(1))
    assert kept.title == "Server edit" and kept.etag == updated.etag
    assert [p.exercise_name for p in kept.exercises] == [
        "Barbell Bench Press",
        "Barbell Back Squat",
    ]
    assert [s.weight for p in kept.exercises for s in p.sets] == [100.0, 140.0]

    edit.etag = updated.etag
    assert sync(server, user, [edit]).results[0].outcome == UPDATED
    assert get_workout(server, user, wid(1)).title == "Device edit"


def test_deletes_unknown_repeated_and_resurrecting_upsert(server, user):
    sync(server, user, [workout(1)])

    unknown = sync(server, user, deletes=[wid(9)]).results[0]
    assert (unknown.workout_id, unknown.outcome) == (wid(9), UNCHANGED)

    once = sync(server, user, deletes=[wid(1)]).results[0]
    twice = sync(server, user, deletes=[wid(1)]).results[0]
    assert once.outcome == DELETED and twice.outcome == DELETED
    assert twice.etag == once.etag

    # The same content, and other content: a tombstone is never silently revived.
    for upsert in (workout(1), workout(1, title="Revived", etag=once.etag)):
        result = sync(server, user, [upsert]).results[0]
        assert result.outcome == CONFLICT and result.message
    error = rpc_error(server.logs.GetWorkout, log_pb2.GetWorkoutRequest(id=wid(1)), metadata=user)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert workout_rows(server) == Counter({wid(1): 1})


def test_invalid_items_are_reported_alone_and_name_their_field(server, user):
    nan = workout(2)
    nan.exercises[0].sets[0].weight = float("nan")
    unknown_exercise = workout(3, exercises=((BENCH, 60.0), ("no-such-exercise", 10.0)))
    bad_id = workout(4)
    bad_id.id = "not-a-uuid"
    bad_kind = workout(5)
    bad_kind.exercises[1].sets[0].kind = 99  # type: ignore[assignment]

    response = sync(
        server, user, [workout(1), nan, unknown_exercise, bad_id, workout(6), bad_kind, workout(7)]
    )

    assert outcomes(response) == [CREATED, INVALID, INVALID, INVALID, CREATED, INVALID, CREATED]
    fields = [r.field for r in response.results]
    assert fields[1] == "upserts[1].exercises[0].sets[0].weight"
    assert fields[2] == "upserts[2].exercises[1].exercise_id"
    assert fields[3] == "upserts[3].id"
    assert fields[5] == "upserts[5].exercises[1].sets[0].kind"
    assert response.results[3].workout_id == "not-a-uuid"
    assert all(response.results[i].message for i in (1, 2, 3, 5))
    assert workout_rows(server) == Counter({wid(1): 1, wid(6): 1, wid(7): 1})
    assert {c.workout.id for c in response.changes} == {wid(1), wid(6), wid(7)}
    # Nothing of the invalid unknown-exercise workout is left behind, not even its children.
    assert history(server, user, exercise_ids=[BENCH]) and all(
        e.workout_id != wid(3) for e in entries(history(server, user))
    )


def test_more_than_500_upserts_is_refused_whole(server, user):
    error = rpc_error(sync, server, user, [workout(i) for i in range(1, 502)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).metadata["field"] == "upserts"
    assert workout_rows(server) == Counter()


def test_bad_cursor_and_negative_page_size_are_invalid_argument(server, user):
    for cursor in ("garbage", "c-1", "c12x", "c" + "9" * 30):
        error = rpc_error(sync, server, user, cursor=cursor)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, cursor
        assert error_info(error).metadata["field"] == "cursor"
    error = rpc_error(sync, server, user, page_size=-1)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).metadata["field"] == "page_size"


def test_sync_needs_a_token(server, catalog):
    error = rpc_error(sync, server, (), [workout(1)])
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert workout_rows(server) == Counter()


# --- change feed ------------------------------------------------------------------------


def test_second_device_pages_through_every_workout_exactly_once(server, catalog):
    account = register(server)
    phone = bearer(account.access_token)
    tablet = bearer(login(server, account.user.email).access_token)
    sync(server, phone, [workout(i) for i in range(1, 8)])

    pages, cursor = [], ""
    while True:
        response = sync(server, tablet, cursor=cursor, page_size=3)
        pages.append([c.workout.id for c in response.changes])
        assert response.next_cursor
        cursor = response.next_cursor
        if not response.has_more:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [i for page in pages for i in page]
    assert sorted(seen) == sorted(wid(i) for i in range(1, 8))

    caught_up = sync(server, tablet, cursor=cursor)
    assert not caught_up.changes and not caught_up.has_more
    assert caught_up.next_cursor == cursor

    everything, _ = full_feed(server, tablet)
    assert len(everything) == 7
    first = next(w for w in everything if w.id == wid(1))
    assert [p.exercise_name for p in first.exercises] == [
        "Barbell Bench Press",
        "Barbell Back Squat",
    ]
    assert first.etag and not first.HasField("delete_time")


def test_other_device_receives_exactly_the_edits_and_deletes_since_its_cursor(server, catalog):
    account = register(server)
    phone = bearer(account.access_token)
    tablet = bearer(login(server, account.user.email).access_token)
    created = sync(server, phone, [workout(i) for i in range(1, 6)])
    etags = {r.workout_id: r.etag for r in created.results}
    _, tablet_cursor = full_feed(server, tablet)

    sync(server, phone, [workout(1, title="Edited", etag=etags[wid(1)])], deletes=[wid(2)])
    first_edit = sync(server, phone, [workout(3, title="Edit one", etag=etags[wid(3)])])
    sync(server, phone, [workout(3, title="Edit two", etag=first_edit.results[0].etag)])
    sync(server, phone, [workout(8)])

    changes, _ = full_feed(server, tablet, cursor=tablet_cursor)
    assert sorted(w.id for w in changes) == sorted([wid(1), wid(2), wid(3), wid(8)])
    by_id = {w.id: w for w in changes}
    assert by_id[wid(1)].title == "Edited" and len(by_id[wid(1)].exercises) == 2
    assert by_id[wid(3)].title == "Edit two"
    tombstone = by_id[wid(2)]
    assert tombstone.HasField("delete_time") and not tombstone.exercises
    for live in (wid(1), wid(3), wid(8)):
        assert not by_id[live].HasField("delete_time")
    # Oldest change first: the feed is ordered by when each workout last changed.
    assert [w.id for w in changes] == [wid(1), wid(2), wid(3), wid(8)]


def test_users_never_see_each_others_workouts(server, catalog):
    alice = bearer(register(server).access_token)
    bob = bearer(register(server).access_token)
    sync(server, alice, [workout(i, title="Alice") for i in (1, 2)])

    assert full_feed(server, bob)[0] == []
    assert entries(history(server, bob)) == []

    taken = sync(server, bob, [workout(1, title="Bob", exercises=((DEADLIFT, 200.0),))])
    assert outcomes(taken) == [CREATED]
    bob_feed, _ = full_feed(server, bob)
    assert [(w.id, w.title) for w in bob_feed] == [(wid(1), "Bob")]
    assert {e.workout_id for e in entries(history(server, bob))} == {wid(1)}

    alices = get_workout(server, alice, wid(1))
    assert alices.title == "Alice"
    assert [p.exercise_id for p in alices.exercises] != [
        p.exercise_id for p in bob_feed[0].exercises
    ]
    alice_feed, _ = full_feed(server, alice)
    assert sorted((w.id, w.title) for w in alice_feed) == [(wid(1), "Alice"), (wid(2), "Alice")]
    # Bob deleting the id removes only his copy.
    assert outcomes(sync(server, bob, deletes=[wid(1), wid(2)])) == [DELETED, UNCHANGED]
    assert get_workout(server, alice, wid(1)).title == "Alice"
    assert workout_rows(server) == Counter({wid(1): 2, wid(2): 1})


# --- retries and offline devices ----------------------------------------------------------


def test_same_sync_sent_twice_stores_each_workout_once(server, user):
    request = [workout(i) for i in (1, 2, 3)] + [workout(2)]  # a duplicate within the request
    first = sync(server, user, request)
    assert outcomes(first) == [CREATED, CREATED, CREATED, UNCHANGED]
    second = sync(server, user, request)
    assert outcomes(second) == [UNCHANGED] * 4
    assert [r.etag for r in second.results] == [r.etag for r in first.results]
    assert workout_rows(server) == Counter({wid(i): 1 for i in (1, 2, 3)})


def test_offline_device_syncing_days_later_creates_no_duplicates(server, catalog, clock):
    clock.freeze()
    account = register(server)
    phone = bearer(account.access_token)
    start = clock() - timedelta(days=1)
    batch = [workout(i, start + timedelta(hours=i)) for i in (1, 2, 3)]
    first = sync(server, phone, batch)
    assert outcomes(first) == [CREATED] * 3
    stale_etag = first.results[0].etag
    # Meanwhile another session edits workout 1.
    other = bearer(login(server, account.user.email).access_token)
    sync(server, other, [workout(1, start + timedelta(hours=1), title="Web", etag=stale_etag)])

    clock.advance(3 * 24 * 3600)  # the phone comes back online three days later
    tokens = server.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=account.refresh_token))
    phone = bearer(tokens.access_token)
    offline_edit = workout(1, start + timedelta(hours=1), title="Phone", etag=stale_etag)
    response = sync(server, phone, [offline_edit, *batch[1:], workout(4, start)])

    assert outcomes(response) == [CONFLICT, UNCHANGED, UNCHANGED, CREATED]
    assert get_workout(server, phone, wid(1)).title == "Web"
    assert workout_rows(server) == Counter({wid(i): 1 for i in (1, 2, 3, 4)})


# --- concurrency ------------------------------------------------------------------------


@pytest.mark.parametrize("history_before", [False, True], ids=["new-account", "with-history"])
def test_two_devices_syncing_overlapping_workouts_while_refreshing_tokens(
    server, catalog, history_before
):
    """history_before: the account already synced once, so only the workouts themselves
    (not the account's first change) are contended."""
    account = register(server)
    if history_before:
        assert outcomes(sync(server, bearer(account.access_token), [workout(999)])) == [CREATED]
    devices = {
        "phone": (bearer(account.access_token), account.refresh_token),
        "watch": (
            bearer((signed := login(server, account.user.email)).access_token),
            signed.refresh_token,
        ),
    }
    shared = [workout(i, title="Shared") for i in range(1, 21)]
    own = {
        "phone": [workout(100 + i, title="Phone") for i in range(15)],
        "watch": [workout(200 + i, title="Watch") for i in range(15)],
    }
    distinct = {w.id for w in shared} | {w.id for batch in own.values() for w in batch}
    stored = distinct | ({wid(999)} if history_before else set())

    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    results: list[log_pb2.SyncResult] = []
    latest_access: dict[str, str] = {}
    lock = threading.Lock()

    def syncer(name: str) -> None:
        md = devices[name][0]
        # Both devices start with the same shared workouts, so their first writes collide.
        upserts = shared + own[name] if name == "phone" else shared[:5] + own[name] + shared[5:]
        try:
            barrier.wait(timeout=10)
            for chunk in (upserts[:18], upserts[10:], upserts):  # overlapping, then a retry
                response = sync(server, md, chunk, timeout=30)
                with lock:
                    results.extend(response.results)
        except BaseException as error:  # reported below
            errors.append(error)

    def refresher(name: str) -> None:
        token = devices[name][1]
        try:
            barrier.wait(timeout=10)
            for _ in range(5):
                tokens = server.auth.Refresh(
                    auth_pb2.RefreshRequest(refresh_token=token), timeout=30
                )
                token = tokens.refresh_token
                latest_access[name] = tokens.access_token
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [
        threading.Thread(target=target, args=(name,))
        for name in devices
        for target in (syncer, refresher)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, [
        (e.code(), e.details()) if isinstance(e, grpc.RpcError) else repr(e) for e in errors
    ]

    assert {r.outcome for r in results} <= {CREATED, UNCHANGED}, [
        (r.workout_id, r.outcome, r.message) for r in results if r.outcome not in (1, 3)
    ]
    created = Counter(r.workout_id for r in results if r.outcome == CREATED)
    assert created == Counter({i: 1 for i in distinct})

    rows = workout_rows(server)
    assert set(rows) == stored and set(rows.values()) == {1}
    assert sum(rows.values()) == len(stored)

    for name in devices:  # neither session was revoked, old or new access token
        for md in (devices[name][0], bearer(latest_access[name])):
            feed, _ = full_feed(server, md, page_size=7)
            assert Counter(w.id for w in feed) == Counter({i: 1 for i in stored})


# --- history ------------------------------------------------------------------------------


def test_history_needs_a_token(server, user):
    sync(server, user, [workout(1)])
    call = server.logs.StreamHistory(log_pb2.StreamHistoryRequest())
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_history_chunks(server, user):
    sync(server, user, [workout(i) for i in range(1, 5)])  # 8 entries

    chunks = history(server, user, chunk_size=3)
    assert [len(c.entries) for c in chunks] == [3, 3, 2]
    assert [len(c.entries) for c in history(server, user)] == [8]
    assert [len(c.entries) for c in history(server, user, chunk_size=1)] == [1] * 8
    assert [len(c.entries) for c in history(server, user, chunk_size=10_000)] == [8]
    assert keys(entries(chunks)) == keys(entries(history(server, user)))

    error = rpc_error(history, server, user, chunk_size=-1)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).metadata["field"] == "chunk_size"


def test_history_order_is_stable_across_identical_start_times(server, user):
    same = BASE + timedelta(days=1)
    sync(
        server,
        user,
        [
            workout(3, same),
            workout(1, same),
            workout(9, BASE),
            workout(2, same, exercises=((DEADLIFT, 150.0), (BENCH, 90.0), (SQUAT, 120.0))),
            workout(8, BASE + timedelta(days=2)),
        ],
    )
    expected = [(BASE, wid(9), 0), (BASE, wid(9), 1)]
    expected += [(same, wid(1), p) for p in (0, 1)]
    expected += [(same, wid(2), p) for p in (0, 1, 2)]
    expected += [(same, wid(3), p) for p in (0, 1)]
    expected += [(BASE + timedelta(days=2), wid(8), p) for p in (0, 1)]
    expected = [(t.replace(tzinfo=None), i, p) for t, i, p in expected]

    for chunk_size in (0, 1, 2, 4):  # keyset paging across chunk boundaries
        ascending = entries(history(server, user, chunk_size=chunk_size))
        assert keys(ascending) == expected, chunk_size
        explicit = history(
            server, user, chunk_size=chunk_size, order=common_pb2.SORT_ORDER_ASCENDING
        )
        assert keys(entries(explicit)) == expected
        descending = history(
            server, user, chunk_size=chunk_size, order=common_pb2.SORT_ORDER_DESCENDING
        )
        assert keys(entries(descending)) == list(reversed(expected)), chunk_size

    second = [e for e in entries(history(server, user)) if e.workout_id == wid(2)]
    assert [e.exercise.exercise_name for e in second] == [
        "Barbell Deadlift",
        "Barbell Bench Press",
        "Barbell Back Squat",
    ]


def test_history_time_range_is_half_open(server, user):
    days = [BASE + timedelta(days=d) for d in range(4)]
    sync(server, user, [workout(i + 1, day) for i, day in enumerate(days)])

    span = common_pb2.TimeRange()
    span.start_time.FromDatetime(days[1])
    span.end_time.FromDatetime(days[3])
    selected = entries(history(server, user, time_range=span))
    assert sorted({e.workout_id for e in selected}) == [wid(2), wid(3)]

    only_start = common_pb2.TimeRange()
    only_start.start_time.FromDatetime(days[2])
    assert {e.workout_id for e in entries(history(server, user, time_range=only_start))} == {
        wid(3),
        wid(4),
    }
    only_end = common_pb2.TimeRange()
    only_end.end_time.FromDatetime(days[1])
    assert {e.workout_id for e in entries(history(server, user, time_range=only_end))} == {wid(1)}


def test_history_exercise_filter_by_id_or_slug(server, user):
    sync(
        server,
        user,
        [
            workout(1),
            workout(2, exercises=((DEADLIFT, 180.0),)),
            workout(3, exercises=((SQUAT, 150.0), (DEADLIFT, 190.0))),
        ],
    )
    by_slug = entries(history(server, user, exercise_ids=[DEADLIFT]))
    assert [(e.workout_id, e.position) for e in by_slug] == [(wid(2), 0), (wid(3), 1)]
    deadlift_id = by_slug[0].exercise.exercise_id
    assert deadlift_id and {e.exercise.exercise_id for e in by_slug} == {deadlift_id}
    by_id = entries(history(server, user, exercise_ids=[deadlift_id]))
    assert keys(by_id) == keys(by_slug)

    both = entries(history(server, user, exercise_ids=[BENCH, deadlift_id]))
    assert [(e.workout_id, e.position) for e in both] == [(wid(1), 0), (wid(2), 0), (wid(3), 1)]

    error = rpc_error(history, server, user, exercise_ids=[BENCH, "no-such-exercise"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).metadata["field"] == "exercise_ids[1]"


def test_history_excludes_deleted_workouts(server, user):
    sync(server, user, [workout(i) for i in (1, 2, 3)])
    sync(server, user, deletes=[wid(2)])
    assert {e.workout_id for e in entries(history(server, user))} == {wid(1), wid(3)}


def test_history_in_pounds(server, user):
    sync(server, user, [workout(1, exercises=((BENCH, 100.0),))])

    pounds = history(server, user, weight_unit=common_pb2.WEIGHT_UNIT_LB)
    assert [c.weight_unit for c in pounds] == [common_pb2.WEIGHT_UNIT_LB]
    weight = entries(pounds)[0].exercise.sets[0].weight
    assert weight == pytest.approx(100 / 0.45359237, abs=1e-5)

    kilos = history(server, user, weight_unit=common_pb2.WEIGHT_UNIT_KG)
    assert kilos[0].weight_unit == common_pb2.WEIGHT_UNIT_KG
    assert entries(kilos)[0].exercise.sets[0].weight == pytest.approx(100.0)
    assert history(server, user)[0].weight_unit == common_pb2.WEIGHT_UNIT_KG


def test_history_never_shows_another_users_workouts(server, catalog):
    alice = bearer(register(server).access_token)
    bob = bearer(register(server).access_token)
    sync(server, alice, [workout(i) for i in (1, 2)])
    sync(server, bob, [workout(3, exercises=((DEADLIFT, 100.0),))])

    assert {e.workout_id for e in entries(history(server, alice))} == {wid(1), wid(2)}
    assert {e.workout_id for e in entries(history(server, bob))} == {wid(3)}
    assert entries(history(server, bob, exercise_ids=[BENCH])) == []


def open_stream(running, request, md, patience: float = 2.0):  # type: ignore[no-untyped-def]
    """Open a history stream and read its first message. With max_workers=2 the server admits
    one stream at a time and refuses more with RESOURCE_EXHAUSTED ("retry shortly"); a
    cancelled stream's slot is freed moments after the client sees CANCELLED, so retry like a
    client would, but only briefly: a slot that stays taken is a leak."""
    deadline = time.monotonic() + patience
    while True:
        call = running.logs.StreamHistory(request, metadata=md, timeout=10)
        try:
            return call, next(call)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
                raise
            assert time.monotonic() < deadline, "a cancelled stream never gave back its slot"
            time.sleep(0.02)


def test_cancelled_history_streams_release_workers_and_connections(db, clock):
    running = start_server(db, clock, max_workers=2)
    try:
        seed_default_catalog(running.server.db, clock)
        md = bearer(register(running).access_token)
        sixty = [workout(i, exercises=((BENCH, 60.0 + i),)) for i in range(1, 61)]
        assert outcomes(sync(running, md, sixty)) == [CREATED] * 60

        request = log_pb2.StreamHistoryRequest(chunk_size=1)
        for _ in range(10):
            call, first = open_stream(running, request, md)
            assert len(first.entries) == 1
            call.cancel()
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            assert info.value.code() == grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]

        started = time.monotonic()
        response = sync(running, md, timeout=5)
        assert time.monotonic() - started < 5
        assert len(response.changes) == 60
        call, first = open_stream(running, log_pb2.StreamHistoryRequest(), md)
        assert len(first.entries) == 60 and list(call) == []

        pool = running.server.db.engine.pool
        deadline = time.monotonic() + 3
        while pool.checkedout() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.checkedout() == 0
    finally:
        running.channel.close()
        running.server.stop(grace=0)
