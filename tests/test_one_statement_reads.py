"""The two hottest reads, GetWorkout and GetModelBundle "not modified", read in one statement
outside any transaction (server/single_statement.py): the session is still checked on every
call, the answers equal what the ORM paths give, and a pooled connection that died (a database
restart) is replaced without the caller noticing, while a database that refuses connections is
UNAVAILABLE. And a token whose signature was checked once still expires on time."""

from __future__ import annotations

import base64
import json
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from repwise.v1 import auth_pb2, common_pb2, log_pb2, training_pb2
from server.catalog.sources import seed_default_catalog
from server.logs import repository as logs_repo
from server.logs.service import MAX_EXERCISES, MAX_SETS
from server.training import repository as training_repo
from tests.conftest import PASSWORD, bearer, error_info, register, rpc_error
from tests.test_tokens import ACCESS_SECONDS, LEEWAY_SECONDS, assert_refused, get_me
from tests.test_training import log_routine


@pytest.fixture
def trained(server, clock):
    """A user with a trained model: (their metadata, their newest workout id, model version)."""
    now = clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    seed_default_catalog(server.server.db, clock)
    signed_up = register(server)
    md = bearer(signed_up.access_token)
    log_routine(server, md, now - timedelta(days=70), workouts=9)
    assert server.server.training.trainer.run_batch(training_repo.Selection()).trained == 1
    bundle = server.training.GetModelBundle(training_pb2.GetModelBundleRequest(), metadata=md)
    assert not bundle.bundle.is_population_model
    newest = server.logs.ListWorkouts(log_pb2.ListWorkoutsRequest(page_size=1), metadata=md)
    return signed_up, newest.workouts[0].id, bundle.bundle.model_version


def reads(server, md, workout_id: str, version: int) -> tuple[log_pb2.Workout, bool]:
    workout = server.logs.GetWorkout(log_pb2.GetWorkoutRequest(id=workout_id), metadata=md)
    bundle = server.training.GetModelBundle(
        training_pb2.GetModelBundleRequest(known_version=version), metadata=md
    )
    return workout.workout, bundle.not_modified


def assert_session_ended(server, md, workout_id: str, version: int) -> None:
    for call, request in (
        (server.logs.GetWorkout, log_pb2.GetWorkoutRequest(id=workout_id)),
        (server.training.GetModelBundle, training_pb2.GetModelBundleRequest(known_version=version)),
    ):
        error = rpc_error(call, request, metadata=md)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(error).reason == "SESSION_ENDED"


def test_both_reads_stop_at_once_when_the_session_ends(server, trained):
    signed_up, workout_id, version = trained
    md = bearer(signed_up.access_token)
    assert reads(server, md, workout_id, version)[1]
    other = server.auth.Login(auth_pb2.LoginRequest(email=signed_up.user.email, password=PASSWORD))
    other_md = bearer(other.access_token)

    server.auth.Logout(auth_pb2.LogoutRequest(), metadata=md)
    assert_session_ended(server, md, workout_id, version)
    assert reads(server, other_md, workout_id, version)[1]  # only that session ended

    fresh = server.auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=PASSWORD + "!"),
        metadata=other_md,
    )
    assert_session_ended(server, other_md, workout_id, version)
    assert reads(server, bearer(fresh.access_token), workout_id, version)[1]


def test_a_new_model_is_sent_instead_of_not_modified(server, trained, clock):
    signed_up, _, version = trained
    md = bearer(signed_up.access_token)
    log_routine(server, md, clock() - timedelta(days=1), workouts=1)
    clock.advance(60)
    assert server.server.training.trainer.run_batch(training_repo.Selection()).trained == 1
    answer = server.training.GetModelBundle(
        training_pb2.GetModelBundleRequest(known_version=version), metadata=md
    )
    assert not answer.not_modified and answer.bundle.model_version > version


def test_get_workout_answers_the_stored_workout_in_the_callers_unit(server, clock):
    seed_default_catalog(server.server.db, clock)
    md = bearer(register(server).access_token)
    server.auth.UpdateMe(
        auth_pb2.UpdateMeRequest(user=auth_pb2.User(preferred_unit=common_pb2.WEIGHT_UNIT_LB)),
        metadata=md,
    )
    workout = log_pb2.Workout(
        id=str(uuid.uuid4()),
        title="Pull",
        notes="felt strong",
        time_zone="Europe/Berlin",
        weight_unit=common_pb2.WEIGHT_UNIT_KG,
    )
    workout.start_time.FromDatetime(datetime(2026, 3, 1, 9, tzinfo=UTC))
    workout.end_time.FromDatetime(datetime(2026, 3, 1, 10, tzinfo=UTC))
    rows = workout.exercises.add(exercise_id="barbell-bent-over-row", notes="strict")
    rows.sets.add(reps=10, weight=40, kind=log_pb2.SET_KIND_WARMUP)
    rows.sets.add(reps=8, weight=70, rpe=8.5, rir=1.5)
    workout.exercises.add(exercise_id="assisted-pull-up")  # no sets logged
    carry = workout.exercises.add(exercise_id="barbell-curl")
    carry.sets.add(weight=30, distance_m=40.0, kind=log_pb2.SET_KIND_FAILURE)
    carry.sets[0].duration.FromSeconds(45)
    created = server.logs.CreateWorkout(
        log_pb2.CreateWorkoutRequest(workout=workout), metadata=md
    ).workout
    empty = log_pb2.Workout(id=str(uuid.uuid4()), title="Rest day")
    empty.start_time.FromDatetime(datetime(2026, 3, 2, 9, tzinfo=UTC))
    empty_created = server.logs.CreateWorkout(
        log_pb2.CreateWorkoutRequest(workout=empty), metadata=md
    ).workout

    def get(workout_id: str, unit: int = common_pb2.WEIGHT_UNIT_UNSPECIFIED) -> log_pb2.Workout:
        request = log_pb2.GetWorkoutRequest(id=workout_id, weight_unit=unit)
        return server.logs.GetWorkout(request, metadata=md).workout

    assert get(created.id, common_pb2.WEIGHT_UNIT_KG) == created
    in_lb = get(created.id)
    assert in_lb.weight_unit == common_pb2.WEIGHT_UNIT_LB
    assert in_lb.exercises[0].sets[1].weight == pytest.approx(70 / 0.45359237)
    listed = server.logs.ListWorkouts(log_pb2.ListWorkoutsRequest(), metadata=md).workouts
    assert {w.id: w for w in listed} == {created.id: in_lb, empty.id: get(empty.id)}
    assert get(empty.id, common_pb2.WEIGHT_UNIT_LB) == empty_created
    assert [len(p.sets) for p in in_lb.exercises] == [2, 0, 1]

    stranger = bearer(register(server).access_token)
    for who, workout_id in ((stranger, created.id), (md, str(uuid.uuid4()))):
        error = rpc_error(
            server.logs.GetWorkout, log_pb2.GetWorkoutRequest(id=workout_id), metadata=who
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
    server.logs.DeleteWorkout(log_pb2.DeleteWorkoutRequest(id=empty.id), metadata=md)
    error = rpc_error(server.logs.GetWorkout, log_pb2.GetWorkoutRequest(id=empty.id), metadata=md)
    assert error.code() == grpc.StatusCode.NOT_FOUND and error_info(error).reason == (
        "WORKOUT_NOT_FOUND"
    )


def test_the_largest_workout_is_read_in_bounded_memory(server, clock):
    """Each set's row carries only its own values: the notes, title and exercise names come
    once, not once per set (10,000 copies of ~12 KB made one read take over 100 MB)."""
    seed_default_catalog(server.server.db, clock)
    signed_up = register(server)
    md = bearer(signed_up.access_token)
    workout = log_pb2.Workout(
        id=str(uuid.uuid4()), title="t" * 200, notes="n" * 10_000, time_zone="UTC"
    )
    workout.start_time.FromDatetime(datetime(2026, 3, 1, 9, tzinfo=UTC))
    for position in range(MAX_EXERCISES):
        performed = workout.exercises.add(exercise_id="barbell-curl", notes=f"{position:04}" * 500)
        for reps in range(MAX_SETS):
            performed.sets.add(reps=reps + 1, weight=20 + position)
    created = server.logs.CreateWorkout(
        log_pb2.CreateWorkoutRequest(workout=workout), metadata=md
    ).workout
    assert server.logs.GetWorkout(
        log_pb2.GetWorkoutRequest(id=workout.id), metadata=md
    ).workout == (created)

    payload = signed_up.access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    db = server.server.db
    logs_repo.get_with_caller(db, claims["sid"], claims["sub"], workout.id)  # prepared, warm
    tracemalloc.start()
    try:
        found = logs_repo.get_with_caller(db, claims["sid"], claims["sub"], workout.id)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found is not None and found[1] is not None
    assert [len(p.sets) for p in found[2]] == [MAX_SETS] * MAX_EXERCISES
    assert peak < 20_000_000, f"{peak / 1e6:.1f} MB"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_connections_the_database_ended_are_replaced_unnoticed(server, trained):
    """A database restart ends every pooled connection (SQLite has no server to restart)."""
    signed_up, workout_id, version = trained
    md = bearer(signed_up.access_token)
    db = server.server.db
    stored = reads(server, md, workout_id, version)
    with create_engine(db.url, poolclass=NullPool).connect() as admin:
        ended = admin.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert ended > 0
    assert reads(server, md, workout_id, version) == stored  # prepared again on new ones


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_connections_that_lost_their_prepared_statements_prepare_them_again(server, trained):
    """The server forgets them while the connection lives on (DEALLOCATE ALL, DISCARD ALL), or
    the connection's record of them is lost while the server keeps them."""
    signed_up, workout_id, version = trained
    md = bearer(signed_up.access_token)
    db = server.server.db
    stored = reads(server, md, workout_id, version)

    def on_every_pooled_connection(change) -> None:  # type: ignore[no-untyped-def]
        held = [db.engine.connect() for _ in range(db.engine.pool.checkedin())]
        try:
            recorded = [c.connection.info.get("repwise_prepared", set()) for c in held]
            assert any("repwise_get_workout" in names for names in recorded)
            for connection, names in zip(held, recorded, strict=True):
                change(connection, names)
        finally:
            for connection in held:
                connection.close()

    on_every_pooled_connection(lambda c, _: c.exec_driver_sql("DEALLOCATE ALL"))
    assert reads(server, md, workout_id, version) == stored
    assert reads(server, md, workout_id, version) == stored
    on_every_pooled_connection(lambda _, names: names.clear())
    assert reads(server, md, workout_id, version) == stored


def test_a_database_refusing_connections_is_unavailable(server, trained, monkeypatch):
    signed_up, workout_id, version = trained
    md = bearer(signed_up.access_token)
    db = server.server.db
    stored = reads(server, md, workout_id, version)
    refusal = "unable to open database file" if db.is_sqlite else "connection refused"

    def refuse(*args: object) -> None:
        raise db.engine.dialect.loaded_dbapi.OperationalError(refusal)

    db.engine.pool.dispose()  # every read needs a new connection
    monkeypatch.setattr(db.engine.pool, "_creator", refuse)
    for call, request in (
        (server.logs.GetWorkout, log_pb2.GetWorkoutRequest(id=workout_id)),
        (server.training.GetModelBundle, training_pb2.GetModelBundleRequest(known_version=version)),
    ):
        error = rpc_error(call, request, metadata=md)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert "SELECT" not in error.details()
    monkeypatch.undo()
    assert reads(server, md, workout_id, version) == stored


def test_a_token_verified_once_still_expires_and_its_forged_twin_is_refused(server, clock):
    """Each process checks a token's signature once; its time claims are checked each call."""
    clock.freeze()
    token = register(server).access_token
    assert get_me(server, token).email
    header, claims, signature = token.split(".")
    forged = f"{header}.{claims}.{signature[::-1]}"
    assert_refused(server, forged, reason="TOKEN_INVALID")
    clock.advance(ACCESS_SECONDS + LEEWAY_SECONDS - 1)
    assert get_me(server, token).email
    clock.advance(2)
    assert_refused(server, token, reason="TOKEN_EXPIRED")
