"""ExportData streams a user's whole history as JSON or Strong CSV that imports read back."""

import json
import uuid
from datetime import UTC, datetime, timedelta

import grpc

from repwise.v1 import catalog_pb2, common_pb2, log_pb2
from server.catalog.sources import seed_default_catalog
from server.logs import imports
from tests.conftest import bearer, register, rpc_error


def log_workouts(server, token, count):
    start = datetime(2026, 1, 5, 18, tzinfo=UTC)
    for i in range(count):
        workout = log_pb2.Workout(id=str(uuid.UUID(int=i + 1)), title=f"Day {i}")
        workout.start_time.FromDatetime(start + timedelta(days=i))
        bench = workout.exercises.add(exercise_id="barbell-bench-press")
        bench.sets.add(reps=5, weight=100 + i, kind=log_pb2.SET_KIND_NORMAL)
        bench.sets.add(reps=8, weight=60, kind=log_pb2.SET_KIND_WARMUP)
        server.logs.CreateWorkout(
            log_pb2.CreateWorkoutRequest(workout=workout), metadata=bearer(token)
        )


def export(server, token, fmt, unit=common_pb2.WEIGHT_UNIT_UNSPECIFIED) -> bytes:
    chunks = server.logs.ExportData(
        log_pb2.ExportDataRequest(format=fmt, weight_unit=unit), metadata=bearer(token)
    )
    return b"".join(chunk.data for chunk in chunks)


def test_json_export_holds_every_workout_and_only_the_callers(server, clock):
    seed_default_catalog(server.server.db, clock)
    mine, other = register(server), register(server)
    log_workouts(server, mine.access_token, 3)
    log_workouts(server, other.access_token, 1)
    document = json.loads(export(server, mine.access_token, log_pb2.EXPORT_FORMAT_JSON))
    assert document["format"] == "repwise-export"
    assert [w["title"] for w in document["workouts"]] == ["Day 0", "Day 1", "Day 2"]
    assert json.loads(export(server, other.access_token, log_pb2.EXPORT_FORMAT_UNSPECIFIED))[
        "workouts"
    ][0]["id"] == str(uuid.UUID(int=1))


def test_strong_csv_export_reads_back_to_the_same_sets(server, clock):
    seed_default_catalog(server.server.db, clock)
    account = register(server)
    log_workouts(server, account.access_token, 2)
    text = export(
        server, account.access_token, log_pb2.EXPORT_FORMAT_STRONG_CSV, common_pb2.WEIGHT_UNIT_LB
    ).decode()
    workouts = imports.parse("strong", text, "lb", "UTC")
    assert len(workouts) == 2
    sets = workouts[1].exercises[0].sets
    assert [(s.reps, s.kind) for s in sets] == [(5, "normal"), (8, "warmup")]
    assert abs(sets[0].weight_kg - 101) < 1e-6


def test_unknown_export_format_names_the_field(server):
    account = register(server)
    error = rpc_error(export, server, account.access_token, 99)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format" in error.details()


def test_json_export_holds_the_profile_and_own_exercises(server, clock):
    seed_default_catalog(server.server.db, clock)
    account = register(server, display_name="Ann")
    custom = catalog_pb2.Exercise(name="Zercher Carry", primary_muscles=[common_pb2.MUSCLE_TRAPS])
    server.catalog.CreateExercise(
        catalog_pb2.CreateExerciseRequest(exercise=custom), metadata=bearer(account.access_token)
    )
    document = json.loads(export(server, account.access_token, log_pb2.EXPORT_FORMAT_JSON))
    assert document["user"]["display_name"] == "Ann"
    assert document["user"]["time_zone"] == "UTC"
    assert [e["name"] for e in document["exercises"]] == ["Zercher Carry"]
    assert document["exercises"][0]["primary_muscles"] == ["traps"]
