"""GetStats through the real server: streaks, progress, records and volume follow edits."""

import uuid
from datetime import UTC, datetime, timedelta

import grpc

from repwise.v1 import common_pb2, log_pb2
from server.catalog.sources import seed_default_catalog
from tests.conftest import bearer, register, rpc_error


def test_stats_follow_logs_and_deletes_in_the_requested_unit(server, clock):
    now = clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    seed_default_catalog(server.server.db, clock)
    md = bearer(register(server).access_token)
    for i, kg in enumerate([100, 105, 110]):
        m = log_pb2.Workout(id=str(uuid.UUID(int=i + 1)))
        m.start_time.FromDatetime(now - timedelta(days=2 - i))
        m.exercises.add(exercise_id="barbell-bench-press").sets.add(reps=5, weight=kg)
        server.logs.CreateWorkout(log_pb2.CreateWorkoutRequest(workout=m), metadata=md)
    r = server.logs.GetStats(log_pb2.GetStatsRequest(), metadata=md)
    assert r.activity.current_days == 3, r.activity
    assert r.progress[0].current_streak == 2, r.progress
    heaviest = next(x for x in r.records if x.kind == log_pb2.RECORD_KIND_HEAVIEST_WEIGHT)
    assert heaviest.value == 110
    assert any(v.muscle == common_pb2.MUSCLE_CHEST for v in r.weekly_volume)
    lb = server.logs.GetStats(
        log_pb2.GetStatsRequest(weight_unit=common_pb2.WEIGHT_UNIT_LB), metadata=md
    )
    heaviest_lb = next(x for x in lb.records if x.kind == log_pb2.RECORD_KIND_HEAVIEST_WEIGHT)
    assert abs(heaviest_lb.value - 242.508) < 0.01
    # Deleting the latest workout shortens the day streak and the overload streak.
    server.logs.DeleteWorkout(log_pb2.DeleteWorkoutRequest(id=str(uuid.UUID(int=3))), metadata=md)
    r2 = server.logs.GetStats(log_pb2.GetStatsRequest(), metadata=md)
    assert r2.activity.current_days == 2 and r2.progress[0].current_streak == 1


def test_stats_refuse_a_bad_week_count(server):
    md = bearer(register(server).access_token)
    error = rpc_error(server.logs.GetStats, log_pb2.GetStatsRequest(weeks=105), metadata=md)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "weeks" in error.details()
