"""LogService workout CRUD through the real server: client-chosen ids and idempotent
creates, validation naming the field, kg/lb units, per-user isolation, keyset listing,
etag-guarded updates and deletes, catalog interplay and account deletion."""

from __future__ import annotations

import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import text

from repwise.v1 import auth_pb2, catalog_pb2, common_pb2, log_pb2
from server.catalog.sources import seed_default_catalog
from tests.conftest import PASSWORD, bearer, error_info, make_admin, register, rpc_error

KG, LB = common_pb2.WEIGHT_UNIT_KG, common_pb2.WEIGHT_UNIT_LB
BENCH, SQUAT = "barbell-bench-press", "barbell-back-squat"
KG_PER_LB = 0.45359237


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def seeded(server, clock):
    seed_default_catalog(server.server.db, clock)
    return server


def ts(moment: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


def hours_ago(hours: float) -> datetime:
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=0)


def a_set(**fields) -> log_pb2.ExerciseSet:
    return log_pb2.ExerciseSet(**fields)


def workout(workout_id: str | None = None, start: datetime | None = None, **fields):
    start = start or hours_ago(2)
    fields.setdefault(
        "exercises",
        [
            log_pb2.PerformedExercise(
                exercise_id=BENCH,
                notes="felt strong",
                sets=[
                    a_set(reps=8, weight=80.0, rpe=8.0, kind=log_pb2.SET_KIND_NORMAL),
                    a_set(reps=6, weight=85.0, rir=1.0),
                ],
            )
        ],
    )
    fields.setdefault("end_time", ts(start + timedelta(hours=1)))
    fields.setdefault("title", "Push day")
    fields.setdefault("notes", "evening")
    fields.setdefault("time_zone", "UTC")
    return log_pb2.Workout(id=workout_id or str(uuid.uuid4()), start_time=ts(start), **fields)


def create(server, token: str, message: log_pb2.Workout, request_id: str = "") -> log_pb2.Workout:
    return server.logs.CreateWorkout(
        log_pb2.CreateWorkoutRequest(workout=message, request_id=request_id),
        metadata=bearer(token),
    ).workout


def get(server, token: str, workout_id: str, unit: int = 0) -> log_pb2.Workout:
    return server.logs.GetWorkout(
        log_pb2.GetWorkoutRequest(id=workout_id, weight_unit=unit), metadata=bearer(token)
    ).workout


def update(server, token: str, message: log_pb2.Workout, paths=()) -> log_pb2.Workout:
    return server.logs.UpdateWorkout(
        log_pb2.UpdateWorkoutRequest(
            workout=message, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        ),
        metadata=bearer(token),
    ).workout


def delete(server, token: str, workout_id: str, etag: str = "") -> None:
    server.logs.DeleteWorkout(
        log_pb2.DeleteWorkoutRequest(id=workout_id, etag=etag), metadata=bearer(token)
    )


def list_page(server, token: str, **request) -> log_pb2.ListWorkoutsResponse:
    return server.logs.ListWorkouts(log_pb2.ListWorkoutsRequest(**request), metadata=bearer(token))


def list_all(server, token: str, page_size: int = 2, **request) -> list[log_pb2.Workout]:
    found: list[log_pb2.Workout] = []
    page_token = ""
    for _ in range(1000):
        page = list_page(server, token, page_size=page_size, page_token=page_token, **request)
        assert len(page.workouts) <= page_size
        found.extend(page.workouts)
        if not page.next_page_token:
            return found
        assert len(page.workouts) == page_size, "only the last page may be short"
        page_token = page.next_page_token
    raise AssertionError("paging never ended")


def rows(db, table: str = "workouts") -> int:
    with db.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def assert_invalid(error: grpc.RpcError, field: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert field in error.details()
    assert error_info(error).metadata["field"] == field


def content(message: log_pb2.Workout) -> log_pb2.Workout:
    """The client-settable part of a workout, for comparing."""
    out = log_pb2.Workout()
    out.CopyFrom(message)
    for name in ("etag", "create_time", "update_time", "delete_time", "weight_unit"):
        out.ClearField(name)
    for performed in out.exercises:
        performed.exercise_name = ""
    return out


def set_unit(server, token: str, unit: int) -> None:
    server.auth.UpdateMe(
        auth_pb2.UpdateMeRequest(
            user=auth_pb2.User(preferred_unit=unit),
            update_mask=field_mask_pb2.FieldMask(paths=["preferred_unit"]),
        ),
        metadata=bearer(token),
    )


def bench_id(server, token: str) -> str:
    return server.catalog.GetExercise(
        catalog_pb2.GetExerciseRequest(id=BENCH), metadata=bearer(token)
    ).exercise.id


# --- create ----------------------------------------------------------------------------------


def test_create_echoes_content_and_fills_output_fields(seeded, db):
    token = register(seeded).access_token
    sent = workout()
    made = create(seeded, token, sent)
    assert made.id == sent.id
    assert made.title == "Push day" and made.notes == "evening"
    assert made.start_time == sent.start_time and made.end_time == sent.end_time
    assert made.time_zone == "UTC"
    assert made.weight_unit == KG
    assert made.etag
    assert made.create_time.seconds > 0 and made.update_time.seconds > 0
    assert not made.HasField("delete_time")
    [performed] = made.exercises
    assert performed.exercise_name == "Barbell Bench Press"
    assert performed.exercise_id == bench_id(seeded, token)
    assert performed.notes == "felt strong"
    assert [(s.reps, s.weight) for s in performed.sets] == [(8, 80.0), (6, 85.0)]
    assert performed.sets[0].rpe == 8.0 and not performed.sets[0].HasField("rir")
    assert performed.sets[1].rir == 1.0 and not performed.sets[1].HasField("rpe")
    assert [s.kind for s in performed.sets] == [log_pb2.SET_KIND_NORMAL] * 2
    assert get(seeded, token, sent.id) == made
    assert rows(db) == 1


def test_exercise_by_id_or_slug_both_work(seeded):
    token = register(seeded).access_token
    exercise_id = bench_id(seeded, token)
    by_slug = create(seeded, token, workout())
    by_id = create(
        seeded,
        token,
        workout(
            exercises=[log_pb2.PerformedExercise(exercise_id=exercise_id, sets=[a_set(reps=5)])]
        ),
    )
    assert by_slug.exercises[0].exercise_id == exercise_id
    assert by_id.exercises[0].exercise_id == exercise_id
    assert by_id.exercises[0].exercise_name == "Barbell Bench Press"


def test_unknown_exercise_names_the_field(seeded, db):
    token = register(seeded).access_token
    message = workout(
        exercises=[
            log_pb2.PerformedExercise(exercise_id=BENCH),
            log_pb2.PerformedExercise(exercise_id="no-such-exercise"),
        ]
    )
    error = rpc_error(create, seeded, token, message)
    assert_invalid(error, "workout.exercises[1].exercise_id")
    assert rows(db) == 0


def test_another_users_private_exercise_cannot_be_used(seeded, db):
    owner = register(seeded).access_token
    other = register(seeded).access_token
    private = seeded.catalog.CreateExercise(
        catalog_pb2.CreateExerciseRequest(
            exercise=catalog_pb2.Exercise(
                name="Secret Curl",
                primary_muscles=[common_pb2.MUSCLE_BICEPS],
                visibility=catalog_pb2.VISIBILITY_PRIVATE,
            )
        ),
        metadata=bearer(owner),
    ).exercise
    mine = create(
        seeded,
        owner,
        workout(
            exercises=[log_pb2.PerformedExercise(exercise_id=private.id, sets=[a_set(reps=5)])]
        ),
    )
    assert mine.exercises[0].exercise_name == "Secret Curl"
    for ref in (private.id, private.slug):
        message = workout(exercises=[log_pb2.PerformedExercise(exercise_id=ref)])
        error = rpc_error(create, seeded, other, message)
        assert_invalid(error, "workout.exercises[0].exercise_id")
    assert rows(db) == 1


# --- idempotency (TESTPLAN 25) ---------------------------------------------------------------


def test_same_create_twice_returns_the_original_and_stores_one_row(seeded, db, clock):
    token = register(seeded).access_token
    message = workout()
    first = create(seeded, token, message, request_id=str(uuid.uuid4()))
    clock.advance(60)
    second = create(seeded, token, message, request_id=str(uuid.uuid4()))
    assert second == first
    assert rows(db) == 1
    assert rows(db, "workout_exercises") == 1 and rows(db, "workout_sets") == 2


def test_request_id_retry_returns_the_original_and_reuse_for_another_workout_is_refused(seeded, db):
    token = register(seeded).access_token
    request_id = str(uuid.uuid4())
    first = workout()
    original = create(seeded, token, first, request_id)
    assert create(seeded, token, first, request_id) == original
    error = rpc_error(create, seeded, token, workout(), request_id)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(error).reason == "REQUEST_ID_REUSED"
    assert rows(db) == 1


def test_same_create_from_eight_threads_at_once_stores_one_row(seeded, db):
    token = register(seeded).access_token
    message = workout()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: create(seeded, token, message), range(8)))
    assert all(answer == answers[0] for answer in answers)
    assert answers[0].id == message.id
    assert rows(db) == 1
    assert rows(db, "workout_sets") == 2


def test_racing_creates_of_one_id_or_one_request_id_store_one_workout(seeded, db):
    """Creates that all find the id (or request_id) free before any commits: the primary
    keys decide, and the losers answer as a retry or ALREADY_EXISTS, never INTERNAL."""

    def outcome(call):  # type: ignore[no-untyped-def]
        try:
            return call().id
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined]

    token = register(seeded).access_token
    same_id = workout()
    variants = []
    for reps in range(8):  # one id, eight contents
        variant = log_pb2.Workout()
        variant.CopyFrom(same_id)
        variant.exercises[0].sets[0].reps = reps
        variants.append(variant)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda v: outcome(lambda: create(seeded, token, v)), variants))
    assert answers.count(same_id.id) == 1
    assert answers.count(grpc.StatusCode.ALREADY_EXISTS) == 7
    assert rows(db) == 1 and rows(db, "workout_sets") == 2

    request_id = str(uuid.uuid4())
    others = [workout() for _ in range(8)]  # one request_id, eight workouts
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda w: outcome(lambda: create(seeded, token, w, request_id)), others)
        )
    stored = [a for a in answers if isinstance(a, str)]
    assert len(stored) == 1 and stored[0] in {w.id for w in others}
    assert answers.count(grpc.StatusCode.ALREADY_EXISTS) == 7
    assert rows(db) == 2

    # The change feed numbers every stored workout once, in order, without a duplicate.
    with db.engine.connect() as conn:
        seqs = conn.execute(text("SELECT change_seq FROM workouts ORDER BY change_seq")).scalars()
        numbers = list(seqs)
    assert len(set(numbers)) == len(numbers) == 2


def test_same_id_with_other_content_is_already_exists_and_changes_nothing(seeded, db):
    token = register(seeded).access_token
    message = workout()
    original = create(seeded, token, message)
    changed = log_pb2.Workout()
    changed.CopyFrom(message)
    changed.exercises[0].sets[0].reps = 9
    error = rpc_error(create, seeded, token, changed)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    retitled = log_pb2.Workout()
    retitled.CopyFrom(message)
    retitled.title = "Another title"
    assert rpc_error(create, seeded, token, retitled).code() == grpc.StatusCode.ALREADY_EXISTS
    assert get(seeded, token, message.id) == original
    assert rows(db) == 1


def test_deleted_workouts_id_cannot_be_created_again(seeded, db):
    token = register(seeded).access_token
    message = workout()
    create(seeded, token, message)
    delete(seeded, token, message.id)
    error = rpc_error(create, seeded, token, message)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert rpc_error(get, seeded, token, message.id).code() == grpc.StatusCode.NOT_FOUND
    assert rows(db) == 1  # the tombstone only


def test_two_users_may_use_the_same_id_independently(seeded, db):
    alice = register(seeded).access_token
    bob = register(seeded).access_token
    shared_id = str(uuid.uuid4())
    hers = create(seeded, alice, workout(shared_id, title="Alice"))
    his = create(
        seeded,
        bob,
        workout(
            shared_id,
            exercises=[log_pb2.PerformedExercise(exercise_id=SQUAT, sets=[a_set(reps=3)])],
        ),
    )
    assert hers.id == his.id == shared_id
    assert get(seeded, alice, shared_id).exercises[0].exercise_name == "Barbell Bench Press"
    assert get(seeded, bob, shared_id).exercises[0].exercise_name == "Barbell Back Squat"
    delete(seeded, bob, shared_id)
    assert get(seeded, alice, shared_id) == hers
    assert rows(db) == 2


# --- validation (TESTPLAN 17) ----------------------------------------------------------------

SET_FIELD = "workout.exercises[0].sets[1]"


def with_bad_set(**fields) -> log_pb2.Workout:
    return workout(
        exercises=[
            log_pb2.PerformedExercise(
                exercise_id=BENCH, sets=[a_set(reps=5, weight=60.0), a_set(**fields)]
            )
        ]
    )


BAD_SETS = [
    ({"weight": math.nan}, "weight"),
    ({"weight": math.inf}, "weight"),
    ({"weight": -math.inf}, "weight"),
    ({"weight": -5.0}, "weight"),
    ({"weight": 5000.0}, "weight"),
    ({"reps": 1001}, "reps"),
    ({"reps": -1}, "reps"),
    ({"rpe": 0.0}, "rpe"),
    ({"rpe": 11.0}, "rpe"),
    ({"rpe": 7.3}, "rpe"),
    ({"rpe": math.nan}, "rpe"),
    ({"rir": 11.0}, "rir"),
    ({"rir": -1.0}, "rir"),
    ({"duration": Duration(seconds=-30)}, "duration"),
    ({"distance_m": -1.0}, "distance_m"),
    ({"distance_m": math.inf}, "distance_m"),
    ({"kind": 42}, "kind"),
]


@pytest.mark.parametrize(
    ("fields", "name"), BAD_SETS, ids=[f"{n}={next(iter(f.values()))}" for f, n in BAD_SETS]
)
def test_bad_set_values_name_the_field(seeded, db, fields, name):
    token = register(seeded).access_token
    error = rpc_error(create, seeded, token, with_bad_set(**fields))
    assert_invalid(error, f"{SET_FIELD}.{name}")
    assert rows(db) == 0


def _bad_workouts():
    start = hours_ago(3)
    future = datetime.now(UTC) + timedelta(days=2)
    cases = []

    def case(name, field, message):
        cases.append(pytest.param(message, field, id=name))

    no_start = workout()
    no_start.ClearField("start_time")
    no_start.ClearField("end_time")
    case("missing-start", "workout.start_time", no_start)
    future_start = workout(start=future)
    future_start.ClearField("end_time")
    case("start-2-days-ahead", "workout.start_time", future_start)
    case(
        "end-before-start",
        "workout.end_time",
        workout(start=start, end_time=ts(start - timedelta(minutes=1))),
    )
    case(
        "end-over-2-days-later",
        "workout.end_time",
        workout(start=start - timedelta(days=3), end_time=ts(start)),
    )
    case("bad-uuid", "workout.id", workout("not-a-uuid"))
    empty_id = workout()
    empty_id.id = ""
    case("empty-id", "workout.id", empty_id)
    case("unknown-zone", "workout.time_zone", workout(time_zone="Mars/Olympus_Mons"))
    too_long = workout()
    too_long.title = "x" * 201
    case("title-201", "workout.title", too_long)
    case(
        "101-exercises",
        "workout.exercises",
        workout(exercises=[log_pb2.PerformedExercise(exercise_id=BENCH)] * 101),
    )
    case(
        "101-sets",
        "workout.exercises[0].sets",
        workout(
            exercises=[log_pb2.PerformedExercise(exercise_id=BENCH, sets=[a_set(reps=1)] * 101)]
        ),
    )
    case("weight-unit-99", "workout.weight_unit", workout(weight_unit=99))
    return cases


@pytest.mark.parametrize(("message", "field"), _bad_workouts())
def test_bad_workouts_name_the_field(seeded, db, message, field):
    token = register(seeded).access_token
    error = rpc_error(create, seeded, token, message)
    assert_invalid(error, field)
    assert rows(db) == 0


def test_limits_are_inclusive(seeded, db):
    token = register(seeded).access_token
    message = workout(
        exercises=[
            log_pb2.PerformedExercise(
                exercise_id=BENCH,
                sets=[a_set(reps=1000, weight=1000.0, rpe=10.0, rir=10.0)]
                + [a_set(reps=0, weight=0.0, rpe=1.0, rir=0.0)] * 99,
            )
        ]
        * 100,
    )
    message.title = "t" * 200
    made = create(seeded, token, message)
    assert len(made.exercises) == 100 and all(len(p.sets) == 100 for p in made.exercises)
    assert rows(db) == 1


# --- units -----------------------------------------------------------------------------------


def test_lb_user_with_unspecified_unit_round_trips_pounds(seeded, db):
    token = register(seeded).access_token
    set_unit(seeded, token, LB)
    message = workout(
        exercises=[
            log_pb2.PerformedExercise(
                exercise_id=SQUAT, sets=[a_set(reps=5, weight=225.0), a_set(reps=8, weight=135.5)]
            )
        ]
    )
    made = create(seeded, token, message)
    assert made.weight_unit == LB
    assert [s.weight for s in made.exercises[0].sets] == [225.0, 135.5]
    read = get(seeded, token, message.id)
    assert read.weight_unit == LB
    assert [s.weight for s in read.exercises[0].sets] == [225.0, 135.5]
    in_kg = get(seeded, token, message.id, KG)
    assert in_kg.weight_unit == KG
    assert in_kg.exercises[0].sets[0].weight == pytest.approx(102.0582, abs=1e-4)
    assert in_kg.exercises[0].sets[1].weight == pytest.approx(135.5 * KG_PER_LB, abs=1e-4)
    listed = list_page(seeded, token, weight_unit=KG).workouts
    assert listed[0].exercises[0].sets[0].weight == pytest.approx(102.0582, abs=1e-4)
    with db.engine.connect() as conn:
        stored = conn.execute(text("SELECT weight_kg FROM workout_sets ORDER BY set_index")).all()
    assert stored[0][0] == pytest.approx(102.0582, abs=1e-4)


def test_kg_user_sending_lb_is_stored_in_kg(seeded, db):
    token = register(seeded).access_token
    message = workout(
        weight_unit=LB,
        exercises=[
            log_pb2.PerformedExercise(exercise_id=BENCH, sets=[a_set(reps=5, weight=225.0)])
        ],
    )
    made = create(seeded, token, message)
    assert made.weight_unit == LB and made.exercises[0].sets[0].weight == 225.0
    read = get(seeded, token, message.id)
    assert read.weight_unit == KG
    assert read.exercises[0].sets[0].weight == pytest.approx(102.0582, abs=1e-4)
    with db.engine.connect() as conn:
        stored = conn.execute(text("SELECT weight_kg FROM workout_sets")).scalar_one()
    assert stored == pytest.approx(225 * KG_PER_LB, abs=1e-9)


def test_weight_limit_applies_after_conversion(seeded, db):
    token = register(seeded).access_token
    ok = workout(
        weight_unit=LB,
        exercises=[log_pb2.PerformedExercise(exercise_id=BENCH, sets=[a_set(weight=2000.0)])],
    )
    create(seeded, token, ok)  # 907 kg
    too_heavy = workout(
        weight_unit=LB,
        exercises=[log_pb2.PerformedExercise(exercise_id=BENCH, sets=[a_set(weight=2300.0)])],
    )
    assert_invalid(
        rpc_error(create, seeded, token, too_heavy), "workout.exercises[0].sets[0].weight"
    )
    assert rows(db) == 1


def test_get_with_unknown_unit_is_invalid(seeded):
    token = register(seeded).access_token
    message = create(seeded, token, workout())
    error = rpc_error(get, seeded, token, message.id, 99)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- get / list ------------------------------------------------------------------------------


def test_another_users_workout_answers_like_an_unknown_id(seeded):
    alice = register(seeded).access_token
    bob = register(seeded).access_token
    hers = create(seeded, alice, workout())
    theirs = rpc_error(get, seeded, bob, hers.id)
    unknown_id = str(uuid.uuid4())
    unknown = rpc_error(get, seeded, bob, unknown_id)
    assert theirs.code() == unknown.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(theirs).reason == error_info(unknown).reason
    assert theirs.details().replace(hers.id, "<id>") == unknown.details().replace(
        unknown_id, "<id>"
    )
    assert list_page(seeded, bob).workouts == []
    assert get(seeded, alice, hers.id) == hers


def test_get_with_bad_id_is_invalid(seeded):
    token = register(seeded).access_token
    assert_invalid(rpc_error(get, seeded, token, "nope"), "id")


def test_list_is_newest_first_and_pages_see_each_workout_once(seeded):
    token = register(seeded).access_token
    base = hours_ago(100)
    made = [create(seeded, token, workout(start=base + timedelta(hours=i))) for i in range(5)]
    first = list_page(seeded, token, page_size=2)
    assert len(first.workouts) == 2 and first.next_page_token
    walked = list_all(seeded, token, page_size=2)
    assert [w.id for w in walked] == [w.id for w in reversed(made)]
    assert walked == list(reversed(made))
    assert [w.id for w in list_page(seeded, token).workouts] == [w.id for w in reversed(made)]
    assert list_page(seeded, token).next_page_token == ""


def test_list_pages_ties_on_start_time_by_id(seeded):
    token = register(seeded).access_token
    start = hours_ago(5)
    ids = {create(seeded, token, workout(start=start)).id for _ in range(5)}
    walked = [w.id for w in list_all(seeded, token, page_size=2)]
    assert sorted(walked) == sorted(ids) and len(walked) == 5


def test_list_time_range_is_half_open(seeded):
    token = register(seeded).access_token
    base = hours_ago(100)
    made = [create(seeded, token, workout(start=base + timedelta(hours=i))) for i in range(5)]
    span = common_pb2.TimeRange(
        start_time=ts(base + timedelta(hours=1)), end_time=ts(base + timedelta(hours=3))
    )
    found = list_all(seeded, token, page_size=10, time_range=span)
    assert [w.id for w in found] == [made[2].id, made[1].id]
    only_start = common_pb2.TimeRange(start_time=ts(base + timedelta(hours=3)))
    assert [w.id for w in list_all(seeded, token, time_range=only_start)] == [
        made[4].id,
        made[3].id,
    ]


def test_list_rejects_negative_page_size_and_garbage_tokens(seeded):
    token = register(seeded).access_token
    create(seeded, token, workout())
    assert_invalid(rpc_error(list_page, seeded, token, page_size=-1), "page_size")
    for garbage in ("garbage!!", "bm90IGpzb24", "e30"):
        assert_invalid(rpc_error(list_page, seeded, token, page_token=garbage), "page_token")


def test_deleted_workouts_are_not_listed(seeded):
    token = register(seeded).access_token
    base = hours_ago(10)
    kept = create(seeded, token, workout(start=base))
    gone = create(seeded, token, workout(start=base + timedelta(hours=1)))
    delete(seeded, token, gone.id)
    assert [w.id for w in list_all(seeded, token)] == [kept.id]


# --- update ----------------------------------------------------------------------------------


def test_full_replace_with_current_etag(seeded, db, clock):
    token = register(seeded).access_token
    clock.freeze()
    made = create(seeded, token, workout())
    clock.advance(120)
    changed = content(made)
    changed.etag = made.etag
    changed.title = "Leg day"
    del changed.exercises[:]
    changed.exercises.add(exercise_id=SQUAT, sets=[a_set(reps=3, weight=140.0)] * 3)
    updated = update(seeded, token, changed)
    assert updated.etag and updated.etag != made.etag
    assert updated.title == "Leg day"
    assert [p.exercise_name for p in updated.exercises] == ["Barbell Back Squat"]
    assert [(s.reps, s.weight) for s in updated.exercises[0].sets] == [(3, 140.0)] * 3
    assert updated.create_time == made.create_time
    assert updated.update_time.ToDatetime() - made.update_time.ToDatetime() == timedelta(
        seconds=120
    )
    assert get(seeded, token, made.id) == updated
    assert rows(db, "workout_sets") == 3 and rows(db, "workout_exercises") == 1


def test_update_with_stale_etag_is_aborted_and_changes_nothing(seeded):
    token = register(seeded).access_token
    made = create(seeded, token, workout())
    first = content(made)
    first.etag = made.etag
    first.title = "First writer"
    current = update(seeded, token, first)
    second = content(made)
    second.etag = made.etag
    second.title = "Second writer"
    second.exercises[0].sets[0].reps = 1
    error = rpc_error(update, seeded, token, second)
    assert error.code() == grpc.StatusCode.ABORTED
    assert get(seeded, token, made.id) == current


def test_update_with_unchanged_content_keeps_the_etag(seeded, clock):
    token = register(seeded).access_token
    made = create(seeded, token, workout())
    clock.advance(60)
    same = content(made)
    same.etag = made.etag
    again = update(seeded, token, same)
    assert again.etag == made.etag
    assert again.update_time == made.update_time
    assert get(seeded, token, made.id) == made


def test_update_with_a_mask_is_invalid(seeded):
    token = register(seeded).access_token
    made = create(seeded, token, workout())
    changed = content(made)
    changed.title = "Masked"
    assert_invalid(rpc_error(update, seeded, token, changed, ["title"]), "update_mask")
    assert get(seeded, token, made.id) == made


def test_update_of_another_users_workout_is_not_found(seeded):
    alice = register(seeded).access_token
    bob = register(seeded).access_token
    hers = create(seeded, alice, workout())
    attempt = content(hers)
    attempt.title = "Bob was here"
    error = rpc_error(update, seeded, bob, attempt)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    unknown = content(hers)
    unknown.id = str(uuid.uuid4())
    assert rpc_error(update, seeded, bob, unknown).code() == grpc.StatusCode.NOT_FOUND
    assert get(seeded, alice, hers.id) == hers


def test_update_validates_like_create(seeded):
    token = register(seeded).access_token
    made = create(seeded, token, workout())
    bad = content(made)
    bad.etag = made.etag
    bad.exercises[0].sets[1].weight = math.nan
    assert_invalid(rpc_error(update, seeded, token, bad), "workout.exercises[0].sets[1].weight")
    assert get(seeded, token, made.id) == made


# --- delete ----------------------------------------------------------------------------------


def test_delete_with_stale_etag_then_current(seeded):
    token = register(seeded).access_token
    made = create(seeded, token, workout())
    changed = content(made)
    changed.etag = made.etag
    changed.title = "Renamed"
    current = update(seeded, token, changed)
    error = rpc_error(delete, seeded, token, made.id, made.etag)
    assert error.code() == grpc.StatusCode.ABORTED
    assert get(seeded, token, made.id) == current
    delete(seeded, token, made.id, current.etag)
    assert rpc_error(get, seeded, token, made.id).code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(delete, seeded, token, made.id).code() == grpc.StatusCode.NOT_FOUND


def test_another_user_cannot_delete_yours(seeded, db):
    alice = register(seeded).access_token
    bob = register(seeded).access_token
    hers = create(seeded, alice, workout())
    assert rpc_error(delete, seeded, bob, hers.id).code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error(delete, seeded, bob, hers.id, hers.etag).code() == grpc.StatusCode.NOT_FOUND
    assert get(seeded, alice, hers.id) == hers
    assert rows(db, "workout_sets") == 2


# --- catalog and account interplay -----------------------------------------------------------


def test_deleting_a_referenced_exercise_archives_it_and_the_workout_still_reads(seeded):
    admin = make_admin(seeded).access_token
    token = register(seeded).access_token
    made = create(seeded, token, workout())
    archived = seeded.catalog.DeleteExercise(
        catalog_pb2.DeleteExerciseRequest(id=made.exercises[0].exercise_id),
        metadata=bearer(admin),
    ).archived
    assert archived is True
    read = get(seeded, token, made.id)
    assert read.exercises[0].exercise_name == "Barbell Bench Press"
    assert read == made


def test_deleting_the_account_removes_its_workouts(seeded, db):
    leaving = register(seeded).access_token
    staying = register(seeded).access_token
    for _ in range(3):
        create(seeded, leaving, workout())
    deleted = create(seeded, leaving, workout())
    delete(seeded, leaving, deleted.id)
    kept = create(seeded, staying, workout())
    assert rows(db) == 5
    seeded.auth.DeleteAccount(
        auth_pb2.DeleteAccountRequest(password=PASSWORD), metadata=bearer(leaving)
    )
    assert rows(db) == 1
    assert rows(db, "workout_exercises") == 1 and rows(db, "workout_sets") == 2
    assert get(seeded, staying, kept.id) == kept
