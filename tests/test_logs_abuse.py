"""Inputs from review that once reached the client as INTERNAL, or could lose data."""

import base64
import io
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest

from repwise.v1 import log_pb2
from server.catalog.sources import seed_default_catalog
from server.errors import InvalidArgument
from server.logs.import_command import run_import
from server.logs.service import PerformedData, SetData, WorkoutData, check_workout, content_hash
from tests.conftest import bearer, register, rpc_error

FAR_FUTURE_SECONDS = 253402300800  # 10000-01-01, past what a datetime holds


@pytest.fixture
def token(server, clock):
    seed_default_catalog(server.server.db, clock)
    return register(server).access_token


def workout(**fields) -> log_pb2.Workout:
    message = log_pb2.Workout(id=str(uuid.uuid4()), **fields)
    if not message.HasField("start_time"):
        message.start_time.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    message.exercises.add(exercise_id="barbell-bench-press").sets.add(reps=5, weight=100)
    return message


def create(server, token, message):
    return server.logs.CreateWorkout(
        log_pb2.CreateWorkoutRequest(workout=message), metadata=bearer(token)
    )


def assert_invalid(error: grpc.RpcError, field: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert field in error.details()


def test_timestamps_out_of_range_name_their_field(server, token):
    message = workout()
    message.start_time.seconds = FAR_FUTURE_SECONDS
    assert_invalid(rpc_error(create, server, token, message), "workout.start_time")
    request = log_pb2.ListWorkoutsRequest()
    request.time_range.end_time.seconds = FAR_FUTURE_SECONDS
    error = rpc_error(server.logs.ListWorkouts, request, metadata=bearer(token))
    assert_invalid(error, "time_range.end_time")
    stats = log_pb2.GetStatsRequest()
    stats.as_of.FromDatetime(datetime(1, 1, 1, tzinfo=UTC))
    assert_invalid(rpc_error(server.logs.GetStats, stats, metadata=bearer(token)), "as_of")


def test_a_bad_upsert_fails_alone_and_the_rest_of_the_sync_lands(server, token):
    bad, good = workout(), workout()
    bad.start_time.seconds = FAR_FUTURE_SECONDS
    answer = server.logs.SyncWorkouts(
        log_pb2.SyncWorkoutsRequest(upserts=[bad, good]), metadata=bearer(token)
    )
    outcomes = [(r.outcome, r.field) for r in answer.results]
    assert outcomes == [
        (log_pb2.SYNC_OUTCOME_INVALID, "upserts[0].start_time"),
        (log_pb2.SYNC_OUTCOME_CREATED, ""),
    ]


def test_an_enormous_duration_is_invalid(server, token):
    message = workout()
    message.exercises[0].sets[0].duration.seconds = 10**14
    assert_invalid(rpc_error(create, server, token, message), "sets[0].duration")


@pytest.mark.parametrize("field", ["title", "notes"])
def test_control_characters_are_refused(server, token, field):
    message = workout(**{field: "bench\x00day"})
    assert_invalid(rpc_error(create, server, token, message), f"workout.{field}")


def test_control_characters_in_a_history_filter_are_refused(server, token):
    request = log_pb2.StreamHistoryRequest(exercise_ids=["bench\x00"])
    error = rpc_error(lambda: list(server.logs.StreamHistory(request, metadata=bearer(token))))
    assert_invalid(error, "exercise_ids[0]")


def test_a_page_token_without_a_zone_is_invalid(server, token):
    forged = base64.urlsafe_b64encode(
        json.dumps({"t": "2026-01-01T00:00:00", "i": str(uuid.uuid4())}).encode()
    ).decode()
    request = log_pb2.ListWorkoutsRequest(page_token=forged)
    error = rpc_error(server.logs.ListWorkouts, request, metadata=bearer(token))
    assert_invalid(error, "page_token")


def test_a_delete_of_a_workout_changed_after_the_cursor_is_a_conflict(server, token):
    stored = create(server, token, workout()).workout
    synced = server.logs.SyncWorkouts(log_pb2.SyncWorkoutsRequest(), metadata=bearer(token))
    edited = log_pb2.Workout()
    edited.CopyFrom(stored)
    edited.title = "Edited on the tablet"
    server.logs.UpdateWorkout(log_pb2.UpdateWorkoutRequest(workout=edited), metadata=bearer(token))
    # The phone, which has not seen the edit, deletes with its old cursor.
    answer = server.logs.SyncWorkouts(
        log_pb2.SyncWorkoutsRequest(deletes=[stored.id], cursor=synced.next_cursor),
        metadata=bearer(token),
    )
    assert answer.results[0].outcome == log_pb2.SYNC_OUTCOME_CONFLICT
    kept = server.logs.GetWorkout(log_pb2.GetWorkoutRequest(id=stored.id), metadata=bearer(token))
    assert kept.workout.title == "Edited on the tablet"


def test_the_same_instant_with_another_offset_is_the_same_content():
    berlin = timezone(timedelta(hours=1))
    exercises = (PerformedData("x", "", (SetData(reps=5, weight_kg=100.0),)),)
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    local = WorkoutData(str(uuid.UUID(int=1)), datetime(2026, 11, 20, 10, tzinfo=berlin), None,
                        exercises=exercises)  # fmt: skip
    utc = WorkoutData(str(uuid.UUID(int=1)), datetime(2026, 11, 20, 9, tzinfo=UTC), None,
                      exercises=exercises)  # fmt: skip
    assert content_hash(check_workout(local, now, "UTC")) == content_hash(
        check_workout(utc, now, "UTC")
    )


def test_an_import_with_an_absurd_duration_fails_cleanly(server, clock, tmp_path):
    seed_default_catalog(server.server.db, clock)
    account = register(server)
    export = tmp_path / "strong.csv"
    export.write_text(
        "Date,Workout Name,Duration,Exercise Name,Set Order,Weight,Reps,Distance,Seconds,"
        "Notes,Workout Notes,RPE\n"
        '2026-11-20 18:00:00,"Push",99999999999999999999h,"Bench Press (Barbell)",1,100,5,'
        '0,0,"","",\n'
    )
    with pytest.raises(InvalidArgument):
        run_import(
            server.server.db, server.server.catalog, server.server.logs, "strong", export,
            account.user.email, dry_run=False, unit="kg", time_zone=None, out=io.StringIO(),
        )  # fmt: skip


def test_a_request_id_retry_after_an_update_returns_the_current_workout(server, token):
    message = workout()
    request = log_pb2.CreateWorkoutRequest(workout=message, request_id=str(uuid.uuid4()))
    first = server.logs.CreateWorkout(request, metadata=bearer(token)).workout
    edited = log_pb2.Workout()
    edited.CopyFrom(first)
    edited.title = "Renamed"
    server.logs.UpdateWorkout(log_pb2.UpdateWorkoutRequest(workout=edited), metadata=bearer(token))
    retried = server.logs.CreateWorkout(request, metadata=bearer(token)).workout
    assert (retried.id, retried.title) == (first.id, "Renamed")
    server.logs.DeleteWorkout(log_pb2.DeleteWorkoutRequest(id=first.id), metadata=bearer(token))
    error = rpc_error(server.logs.CreateWorkout, request, metadata=bearer(token))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
