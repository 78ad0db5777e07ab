"""StreamHistory's columnar form (StreamHistoryRequest.columnar) through the real server, on
SQLite and PostgreSQL: it carries exactly what the per-entry form carries, in the same order
and the same chunks, for every filter, both orders, kg and lb, sets with and without each
measure, and pages of workouts smaller than a chunk; errors are the same; a cancelled
columnar stream gives back its server thread and its database connections.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest

from repwise.v1 import auth_pb2, catalog_pb2, common_pb2, log_pb2
from server.catalog.sources import seed_default_catalog
from server.logs import service as log_service
from server.logs import wire
from tests.conftest import bearer, error_info, register, rpc_error, start_server

BENCH = "barbell-bench-press"
SQUAT = "barbell-back-squat"
DEADLIFT = "barbell-deadlift"
ROW = "seated-cable-row"
BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
ASC, DESC = common_pb2.SORT_ORDER_ASCENDING, common_pb2.SORT_ORDER_DESCENDING
KG, LB = common_pb2.WEIGHT_UNIT_KG, common_pb2.WEIGHT_UNIT_LB


def wid(i: int) -> str:
    return str(uuid.UUID(int=i))


def a_set(**fields: object) -> log_pb2.ExerciseSet:
    duration = fields.pop("duration_ms", None)
    item = log_pb2.ExerciseSet(**fields)  # type: ignore[arg-type]
    if duration is not None:
        item.duration.FromMilliseconds(int(duration))  # type: ignore[call-overload]
    return item


def varied_workout(i: int, start: datetime, custom_id: str) -> log_pb2.Workout:
    """Workout `i`: sets with every measure, none, some; kinds; notes; an exercise without
    sets; weights that do not round-trip through lb exactly."""
    message = log_pb2.Workout(id=wid(i), title=f"Day {i}", weight_unit=KG)
    message.start_time.FromDatetime(start + timedelta(microseconds=i * 137))
    first = message.exercises.add(exercise_id=BENCH, notes=f"felt strong {i}" if i % 2 else "")
    first.sets.extend(
        [
            a_set(reps=5, weight=100.0 + i * 0.1, rpe=8.5, kind=log_pb2.SET_KIND_WARMUP),
            a_set(reps=0, weight=0.0, rir=2.0, kind=log_pb2.SET_KIND_NORMAL),
            a_set(),  # no measure at all: stored as a NORMAL set
            a_set(weight=102.0583, kind=log_pb2.SET_KIND_DROP),
            a_set(reps=12, weight=61.2349999, rpe=10.0, rir=0.0, kind=log_pb2.SET_KIND_FAILURE),
        ]
    )
    message.exercises.add(exercise_id=SQUAT)  # performed, no sets logged
    if i % 3 == 0:
        cardio = message.exercises.add(exercise_id=ROW, notes="intervals")
        cardio.sets.extend(
            [
                a_set(duration_ms=90_500 + i, distance_m=400.25),
                a_set(duration_ms=0, distance_m=0.0),
                a_set(duration_ms=1, reps=20),
            ]
        )
    custom = message.exercises.add(exercise_id=custom_id)
    custom.sets.extend([a_set(reps=10 + k, weight=17.5 * k) for k in range(i % 4)])
    if i % 5 == 0:
        message.exercises.add(exercise_id=DEADLIFT).sets.add(reps=1, weight=227.5)
    return message


def stream(running, md, **fields):  # type: ignore[no-untyped-def]
    request = log_pb2.StreamHistoryRequest(**fields)
    return list(running.logs.StreamHistory(request, metadata=md, timeout=30))


def entries_of(columns: log_pb2.HistoryColumns) -> list[log_pb2.HistoryEntry]:
    """The per-entry form of one columnar chunk, built only from what the chunk says."""
    count = len(columns.workout_ids)
    for name in ("workout_start_unix_micros", "positions", "exercise_ids", "notes"):
        assert len(getattr(columns, name)) == count, name
    sets = len(columns.set_entries)
    for name in ("reps", "weights", "rpes", "rirs", "duration_millis", "distances_m", "kinds"):
        assert len(getattr(columns, name)) == sets, name
    assert list(columns.set_entries) == sorted(columns.set_entries)
    assert all(0 <= e < count for e in columns.set_entries)
    assert set(columns.exercise_names) == set(columns.exercise_ids)
    out = []
    for i in range(count):
        entry = log_pb2.HistoryEntry(
            workout_id=columns.workout_ids[i], position=columns.positions[i]
        )
        entry.workout_start_time.FromMicroseconds(columns.workout_start_unix_micros[i])
        entry.exercise.exercise_id = columns.exercise_ids[i]
        entry.exercise.exercise_name = columns.exercise_names[columns.exercise_ids[i]]
        entry.exercise.notes = columns.notes[i]
        out.append(entry)
    for j in range(sets):
        item = out[columns.set_entries[j]].exercise.sets.add(kind=columns.kinds[j])
        assert columns.kinds[j] != log_pb2.SET_KIND_UNSPECIFIED
        if columns.reps[j] != -1:
            item.reps = columns.reps[j]
        for source, target in (
            ("weights", "weight"),
            ("rpes", "rpe"),
            ("rirs", "rir"),
            ("distances_m", "distance_m"),
        ):
            value = getattr(columns, source)[j]
            if not math.isnan(value):
                setattr(item, target, value)
        if columns.duration_millis[j] != -1:
            item.duration.FromMilliseconds(columns.duration_millis[j])
    return out


def assert_same_stream(running, md, **fields) -> list[log_pb2.HistoryEntry]:  # type: ignore[no-untyped-def]
    """The columnar stream equals the per-entry one chunk by chunk; returns the entries."""
    plain = stream(running, md, **fields)
    columnar = stream(running, md, columnar=True, **fields)
    assert all(not p.HasField("columns") for p in plain)
    assert all(not c.entries for c in columnar)
    assert [c.weight_unit for c in columnar] == [p.weight_unit for p in plain]
    assert [len(c.columns.workout_ids) for c in columnar] == [len(p.entries) for p in plain]
    for p, c in zip(plain, columnar, strict=True):
        rebuilt = entries_of(c.columns)
        assert rebuilt == list(p.entries)
        # Not only equal messages: the same bytes, so no float differs in its last bit.
        assert [e.SerializeToString(deterministic=True) for e in rebuilt] == [
            e.SerializeToString(deterministic=True) for e in p.entries
        ]
    return [e for p in plain for e in p.entries]


@pytest.fixture
def catalog(server, clock):  # type: ignore[no-untyped-def]
    seed_default_catalog(server.server.db, clock)


@pytest.fixture
def history(server, catalog):  # type: ignore[no-untyped-def]
    """A user with 23 varied workouts (two at the same instant, one deleted), and the id of
    their custom exercise. Another user has workouts too."""
    md = bearer(register(server).access_token)
    custom = server.catalog.CreateExercise(
        catalog_pb2.CreateExerciseRequest(
            exercise=catalog_pb2.Exercise(
                name="Garage Sled Push",
                primary_muscles=[common_pb2.MUSCLE_QUADRICEPS],
                visibility=catalog_pb2.VISIBILITY_PRIVATE,
            )
        ),
        metadata=md,
    ).exercise.id
    starts = [BASE + timedelta(days=i) for i in range(1, 23)]
    workouts = [varied_workout(i, start, custom) for i, start in enumerate(starts, 1)]
    same = varied_workout(40, BASE + timedelta(days=5), custom)
    same.start_time.CopyFrom(workouts[4].start_time)
    empty = log_pb2.Workout(id=wid(41), title="Nothing logged", weight_unit=KG)
    empty.start_time.FromDatetime(BASE + timedelta(days=7, hours=1))
    answer = server.logs.SyncWorkouts(
        log_pb2.SyncWorkoutsRequest(upserts=[*workouts, same, empty]), metadata=md
    )
    assert {r.outcome for r in answer.results} == {log_pb2.SYNC_OUTCOME_CREATED}
    server.logs.SyncWorkouts(log_pb2.SyncWorkoutsRequest(deletes=[wid(9)]), metadata=md)
    other = bearer(register(server).access_token)
    server.logs.SyncWorkouts(
        log_pb2.SyncWorkoutsRequest(upserts=[varied_workout(7, BASE, BENCH)]), metadata=other
    )
    return md, custom


@pytest.fixture
def small_pages(monkeypatch):  # type: ignore[no-untyped-def]
    """Pages of 2, then 4 workouts, so chunks span pages and the read-ahead runs many
    times."""
    monkeypatch.setattr(log_service, "HISTORY_COLUMN_FIRST_READ", 2)
    monkeypatch.setattr(log_service, "HISTORY_COLUMN_WORKOUTS_PER_READ", 4)


@pytest.mark.parametrize("order", [0, ASC, DESC])
@pytest.mark.parametrize("chunk_size", [0, 1, 2, 7, 500])
def test_columnar_stream_carries_exactly_the_per_entry_stream(
    server, history, small_pages, order, chunk_size
):
    md, _custom = history
    entries = assert_same_stream(server, md, order=order, chunk_size=chunk_size)
    assert len({e.workout_id for e in entries}) == 22  # 23 with sets or exercises, one deleted
    assert wid(9) not in {e.workout_id for e in entries}
    assert sum(len(e.exercise.sets) for e in entries) > 100


def test_columnar_stream_with_default_pages(server, history):
    md, _custom = history
    for order in (ASC, DESC):
        for chunk_size in (0, 3, 5000, 9999):  # above the maximum: the maximum
            assert_same_stream(server, md, order=order, chunk_size=chunk_size)


@pytest.mark.parametrize("unit", [0, KG, LB])
def test_columnar_weights_in_either_unit(server, history, small_pages, unit):
    md, _custom = history
    entries = assert_same_stream(server, md, weight_unit=unit, chunk_size=4)
    columnar = stream(server, md, weight_unit=unit, columnar=True)
    assert {c.weight_unit for c in columnar} == {LB if unit == LB else KG}
    weights = [w for c in columnar for w in c.columns.weights if not math.isnan(w)]
    if unit == LB:
        assert max(weights) == pytest.approx(227.5 / 0.45359237)
        assert any(w != round(w, 3) for w in weights)  # conversions that are not exact
    else:
        assert max(weights) == 227.5
    assert entries


def test_columnar_stream_for_a_user_who_prefers_pounds(server, history):
    md, _custom = history
    server.auth.UpdateMe(
        auth_pb2.UpdateMeRequest(
            user=auth_pb2.User(preferred_unit=LB),
            update_mask={"paths": ["preferred_unit"]},
        ),
        metadata=md,
    )
    assert_same_stream(server, md, chunk_size=6)
    assert {c.weight_unit for c in stream(server, md, columnar=True)} == {LB}


def test_columnar_filters(server, history, small_pages):
    md, custom = history
    span = common_pb2.TimeRange()
    span.start_time.FromDatetime(BASE + timedelta(days=5))
    span.end_time.FromDatetime(BASE + timedelta(days=12))
    only_start = common_pb2.TimeRange()
    only_start.start_time.FromDatetime(BASE + timedelta(days=18))
    only_end = common_pb2.TimeRange()
    only_end.end_time.FromDatetime(BASE + timedelta(days=3))
    for order in (ASC, DESC):
        for chunk_size in (1, 3, 0):
            by_time = assert_same_stream(
                server, md, time_range=span, order=order, chunk_size=chunk_size
            )
            assert by_time and all(
                BASE + timedelta(days=5)
                <= e.workout_start_time.ToDatetime(tzinfo=UTC)
                < BASE + timedelta(days=12)
                for e in by_time
            )
            assert assert_same_stream(server, md, time_range=only_start, order=order)
            assert assert_same_stream(server, md, time_range=only_end, order=order)
            for refs in ([DEADLIFT], [ROW, custom], [SQUAT]):
                picked = assert_same_stream(
                    server, md, exercise_ids=refs, order=order, chunk_size=chunk_size
                )
                assert picked
            both = assert_same_stream(
                server, md, exercise_ids=[ROW], time_range=span, order=order, chunk_size=2
            )
            assert {e.exercise.exercise_name for e in both} == {"Seated Cable Row"}


def test_columnar_stream_of_nothing_sends_no_message(server, history):
    md, _custom = history
    nothing = common_pb2.TimeRange()
    nothing.start_time.FromDatetime(BASE - timedelta(days=30))
    nothing.end_time.FromDatetime(BASE - timedelta(days=20))
    assert stream(server, md, columnar=True, time_range=nothing) == []
    assert stream(server, md, time_range=nothing) == []
    newcomer = bearer(register(server).access_token)
    assert stream(server, newcomer, columnar=True) == []
    # A workout with an exercise but no sets: one entry, no sets.
    lone = log_pb2.Workout(id=wid(99), weight_unit=KG)
    lone.start_time.FromDatetime(BASE)
    lone.exercises.add(exercise_id=BENCH)
    server.logs.SyncWorkouts(log_pb2.SyncWorkoutsRequest(upserts=[lone]), metadata=newcomer)
    (only,) = stream(server, newcomer, columnar=True)
    assert list(only.columns.workout_ids) == [wid(99)] and len(only.columns.set_entries) == 0
    assert_same_stream(server, newcomer)


def test_columnar_never_shows_another_users_workouts(server, history):
    md, _custom = history
    other = bearer(register(server).access_token)
    assert stream(server, other, columnar=True) == []
    mine = {w for c in stream(server, md, columnar=True) for w in c.columns.workout_ids}
    assert wid(7) in mine
    third = bearer(register(server).access_token)
    server.logs.SyncWorkouts(
        log_pb2.SyncWorkoutsRequest(upserts=[varied_workout(7, BASE, BENCH)]), metadata=third
    )
    (theirs,) = stream(server, third, columnar=True)
    assert set(theirs.columns.workout_ids) == {wid(7)}
    assert_same_stream(server, third)


def test_columnar_errors_are_the_per_entry_errors(server, history):
    md, _custom = history
    for columnar in (False, True):
        error = rpc_error(stream, server, md, columnar=columnar, chunk_size=-1)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).metadata["field"] == "chunk_size"
        error = rpc_error(stream, server, md, columnar=columnar, exercise_ids=[BENCH, "nope"])
        assert error_info(error).metadata["field"] == "exercise_ids[1]"
        error = rpc_error(stream, server, md, columnar=columnar, weight_unit=7)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        error = rpc_error(stream, server, (), columnar=columnar)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_columnar_stream_needs_a_live_session(server, catalog, small_pages):
    tokens = register(server)
    md = bearer(tokens.access_token)
    workouts = []
    for i in range(1, 13):
        w = log_pb2.Workout(id=wid(i), weight_unit=KG)
        w.start_time.FromDatetime(BASE + timedelta(days=i))
        w.exercises.add(exercise_id=BENCH).sets.add(reps=5, weight=60.0)
        workouts.append(w)
    server.logs.SyncWorkouts(log_pb2.SyncWorkoutsRequest(upserts=workouts), metadata=md)
    assert len(stream(server, md, columnar=True, chunk_size=1)) == 12
    server.auth.Logout(auth_pb2.LogoutRequest(), metadata=md)
    error = rpc_error(stream, server, md, columnar=True, chunk_size=1)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_packed_arrays_encode_as_extend_does():
    """wire.py's encodings read back into exactly the values extend would have stored."""
    rng = np.random.default_rng(7)
    edges = [0, 1, 127, 128, 16383, 16384, 2**31 - 1, -1, -(2**31), 2**40, -(2**40)]
    ints = np.array(edges + rng.integers(-(2**62), 2**62, 500).tolist(), np.int64)
    small = np.array([0, 1, 5, 127, 128, 300, 4999], np.int32)
    floats = np.array([0.0, -0.0, 1.5, np.nan, 1e300, -2.5e-300, 102.0583], np.float64)
    cases = [
        ("workout_start_unix_micros", ints, wire.packed_varints),
        ("positions", small, wire.packed_varints),
        ("positions", np.array([-1, 7, -(2**31)], np.int32), wire.packed_varints),
        ("reps", np.array([-1, 0, 1, -(2**31), 2**31 - 1], np.int32), wire.packed_sint),
        ("duration_millis", ints, wire.packed_sint),
        ("weights", floats, wire.packed_doubles),
        ("kinds", np.array([1, 2, 3, 4, 0], np.int32), wire.packed_varints),
        ("set_entries", np.array([], np.int32), wire.packed_varints),
    ]
    for name, values, encode in cases:
        field = log_pb2.HistoryColumns.DESCRIPTOR.fields_by_name[name]
        expected = log_pb2.HistoryColumns()
        getattr(expected, name).extend(values.tolist())
        decoded = log_pb2.HistoryColumns()
        decoded.MergeFromString(encode(field.number, values))
        assert decoded.SerializeToString() == expected.SerializeToString(), name


def open_stream(running, request, md, patience: float = 2.0):  # type: ignore[no-untyped-def]
    """Open a stream and read its first message, retrying briefly while the server's one
    stream slot (max_workers=2) is still held by a stream cancelled a moment ago."""
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


def test_cancelled_columnar_streams_release_workers_and_connections(db, clock, small_pages):
    running = start_server(db, clock, max_workers=2)
    try:
        seed_default_catalog(running.server.db, clock)
        md = bearer(register(running).access_token)
        workouts = []
        for i in range(1, 61):
            w = log_pb2.Workout(id=wid(i), weight_unit=KG)
            w.start_time.FromDatetime(BASE + timedelta(hours=i))
            w.exercises.add(exercise_id=BENCH).sets.add(reps=5, weight=60.0 + i)
            workouts.append(w)
        running.logs.SyncWorkouts(log_pb2.SyncWorkoutsRequest(upserts=workouts), metadata=md)

        request = log_pb2.StreamHistoryRequest(chunk_size=1, columnar=True)
        for _ in range(10):
            call, first = open_stream(running, request, md)
            assert len(first.columns.workout_ids) == 1
            call.cancel()
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            assert info.value.code() == grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]

        # The server still answers, and a whole columnar stream still works.
        started = time.monotonic()
        changes = running.logs.SyncWorkouts(
            log_pb2.SyncWorkoutsRequest(), metadata=md, timeout=5
        ).changes
        assert len(changes) == 60 and time.monotonic() - started < 5
        call, first = open_stream(running, log_pb2.StreamHistoryRequest(columnar=True), md)
        assert len(first.columns.workout_ids) == 60 and list(call) == []
        assert len(first.columns.set_entries) == 60

        pool = running.server.db.engine.pool
        deadline = time.monotonic() + 3
        while pool.checkedout() and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        running.channel.close()
        running.server.stop(grace=0)
