"""Fuzzing every RPC (TESTPLAN 19), through the real server on SQLite and PostgreSQL.

The methods come from the generated descriptors (every service of every repwise.v1 *_pb2
module, plus grpc.health.v1.Health/Check) when the tests are collected, so an RPC added later
is fuzzed without a change here; reflection confirms nothing served is left out. Each method
gets:

- generic: any message of its request type (tests/proto_strategies.py: boundary integers,
  NaN/inf/subnormal floats, unicode, NUL and huge strings, unknown enums, bad Timestamps...);
- valid-mutated: a valid request (a hand-written example, or plausible values by field name for
  a method without one) with up to three fields changed, so the calls reach past the first
  check into the services and the database;
- raw-bytes: a body that is mostly not a valid protobuf encoding. grpcio alone would answer
  INTERNAL ("Exception deserializing request!"); the server answers INVALID_ARGUMENT once the
  token is checked (UNAUTHENTICATED first for a closed method without one)
  (server/interceptors.py), and RESOURCE_EXHAUSTED past the 4 MiB limit;
- every field at its worst: the valid request with one field at a time at each of its worst
  values, a deterministic sweep.

Each request goes out as no caller, a normal user or an admin. Only deliberate codes may come
back; every failure has a short message without traceback or SQL (the one exception: health
answers an unknown service name with NOT_FOUND and no message, as grpc.health.v1 specifies).
Methods that end sessions (Logout, ChangePassword, DeleteAccount, SetUserRole) and the
sign-in methods get fresh accounts for every example; updates and deletes fresh resources.
After each method, health is SERVING and the fuzz user and admin still work.

REPWISE_FUZZ_EXAMPLES=10 runs ten times as many examples, REPWISE_FUZZ_SEED=7 other ones
(long local runs).
"""

from __future__ import annotations

import importlib
import operator
import os
import pkgutil
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import repwise.v1
from repwise.v1 import auth_pb2, catalog_pb2, common_pb2, log_pb2, training_pb2
from server.auth.service import iana_time_zones
from server.catalog.sources import seed_default_catalog
from server.db import Database
from server.interceptors import is_open
from tests import proto_strategies as ps
from tests.conftest import (
    PASSWORD,
    FakeClock,
    Running,
    _empty_tables,
    bearer,
    make_admin,
    register,
    start_server,
)

# --- the methods -------------------------------------------------------------------------------

HEALTH_CHECK = health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]


def _service_modules() -> list[Any]:
    names = sorted(m.name for m in pkgutil.iter_modules(repwise.v1.__path__))
    return [importlib.import_module(f"repwise.v1.{n}") for n in names if n.endswith("_pb2")]


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


SERVICES = [s for m in _service_modules() for s in m.DESCRIPTOR.services_by_name.values()]
METHODS = [m for s in SERVICES for m in s.methods] + [HEALTH_CHECK]
KINDS = ("generic", "valid-mutated", "raw-bytes")
# Examples per method and kind; a whole run of this file stays near a minute on both databases.
EXAMPLES = {"generic": 8, "valid-mutated": 16, "raw-bytes": 4}
SCALE = float(os.environ.get("REPWISE_FUZZ_EXAMPLES", "1"))
# Unset, every run draws the same examples; a seed explores others (long local runs).
SEED = os.environ.get("REPWISE_FUZZ_SEED")

AUTH = "/repwise.v1.AuthService/"
CATALOG = "/repwise.v1.CatalogService/"
LOGS = "/repwise.v1.LogService/"
TRAINING = "/repwise.v1.TrainingService/"
# These end the caller's sessions or sign in with a password (throttled per email): every
# example runs them with fresh accounts, so the fuzz user and admin are never signed out.
FRESH_ACCOUNTS = {
    AUTH + name
    for name in ("Login", "Refresh", "Logout", "ChangePassword", "DeleteAccount", "SetUserRole")
}
# These change or delete what they are given: every example starting from a valid request
# gets a fresh workout or fresh exercises.
FRESH_WORKOUT = {LOGS + "UpdateWorkout", LOGS + "DeleteWorkout"}
FRESH_EXERCISES = {CATALOG + "UpdateExercise", CATALOG + "DeleteExercise"}
ADMIN_ONLY = {AUTH + "SetUserRole", TRAINING + "RunBatch"}

# --- what may come back ------------------------------------------------------------------------

C = grpc.StatusCode
ALLOWED = {
    C.OK,
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.ALREADY_EXISTS,
    C.FAILED_PRECONDITION,
    C.ABORTED,
    C.PERMISSION_DENIED,
    C.UNAUTHENTICATED,
    C.RESOURCE_EXHAUSTED,  # sign-in throttling, TrainNow's cooldown, requests over 4 MiB
    C.OUT_OF_RANGE,
}
LEAK_WORDS = re.compile(r"traceback|sqlalchemy|psycopg|sqlite3|File \"", re.IGNORECASE)
LEAK_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|INTO|SET|WHERE)\b")
MAX_MESSAGE_CHARS = 1000
MAX_STREAM_MESSAGES = 10_000
CALL_TIMEOUT = 60


@dataclass
class Outcome:
    code: grpc.StatusCode
    message: str
    status: str  # the rich status (google.rpc.Status details) as text, or ""


def _rich_status(call: Any) -> str:
    try:
        status = rpc_status.from_call(call)
    except ValueError:  # details that disagree with code/message
        return "<rich status disagrees with the status line>"
    return str(status) if status is not None else ""


def invoke(
    channel: grpc.Channel, method: MethodDescriptor, request: Message | bytes, metadata: Any
) -> Outcome:
    """Call a method with a message or raw bytes; a stream is read to its end."""
    raw = isinstance(request, bytes)
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    kind = "unary_stream" if method.server_streaming else "unary_unary"
    multicallable = getattr(channel, kind)(
        path(method),
        request_serializer=None if raw else request_type.SerializeToString,
        response_deserializer=None if raw else response_type.FromString,
    )
    try:
        if not method.server_streaming:
            _, call = multicallable.with_call(request, metadata=metadata, timeout=CALL_TIMEOUT)
            return Outcome(call.code(), call.details() or "", "")
        stream = multicallable(request, metadata=metadata, timeout=CALL_TIMEOUT)
        for count, _ in enumerate(stream):
            if count >= MAX_STREAM_MESSAGES:
                stream.cancel()
                raise AssertionError(f"{path(method)} streamed over {MAX_STREAM_MESSAGES} messages")
        return Outcome(stream.code(), stream.details() or "", "")
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "", _rich_status(error))


def check(outcome: Outcome, method: MethodDescriptor, field: str = "") -> None:
    """Only deliberate codes; a failure has a short message, without internals. `field` names
    the field a request was built around, for the report."""
    answer = f"{outcome.code.name}: {outcome.message[:300]!r}"
    where = f"{path(method)} ({field or 'request'}) answered {answer}"
    assert outcome.code in ALLOWED, where
    if outcome.code == C.OK:
        return
    if method is HEALTH_CHECK and outcome.code == C.NOT_FOUND:
        # grpcio-health-checking's own answer for an unknown service name: the code alone,
        # as the grpc.health.v1 protocol specifies.
        return
    assert outcome.message.strip(), f"{where}: a failure without a message"
    assert len(outcome.message) <= MAX_MESSAGE_CHARS, (
        f"{where}: a {len(outcome.message)}-char message"
    )
    for text in (outcome.message, outcome.status):
        assert not LEAK_WORDS.search(text), f"{where}: internals in the status: {text[:2000]}"
        assert not LEAK_SQL.search(text), f"{where}: SQL in the status: {text[:2000]}"


# --- the server and what it holds --------------------------------------------------------------


@dataclass
class Account:
    email: str
    access_token: str
    refresh_token: str

    @property
    def metadata(self) -> tuple[tuple[str, str]]:
        return bearer(self.access_token)


@dataclass
class Pool:
    """What the server really holds, for valid requests and plausible values."""

    user: Account
    admin: Account
    now: datetime
    exercise_refs: list[str]  # ids and slugs the user can see
    workouts: list[tuple[str, str]]  # the user's (id, etag)
    private_exercise: tuple[str, str]  # the user's own (id, etag)
    public_exercise: tuple[str, str]  # an admin-made shared one (id, etag)
    page_tokens: list[str]
    cursors: list[str]


class Fuzz:
    """The running server with a seeded catalog, a user with workouts, and an admin."""

    def __init__(self, running: Running, clock: FakeClock) -> None:
        self.running = running
        self.clock = clock
        seed_default_catalog(running.server.db, clock)
        self.pool = self._setup()

    def account(self) -> Account:
        response = register(self.running)
        return Account(response.user.email, response.access_token, response.refresh_token)

    def admin_account(self) -> Account:
        response = make_admin(self.running)
        return Account(response.user.email, response.access_token, response.refresh_token)

    def create_workout(self, account: Account, refs: list[str], start: datetime) -> tuple[str, str]:
        workout = log_pb2.Workout(
            id=str(uuid.uuid4()), title="Push day", start_time=_ts(start), time_zone="UTC"
        )
        for i, ref in enumerate(refs):
            performed = workout.exercises.add(exercise_id=ref, notes=f"note {i}")
            performed.sets.add(reps=5, weight=60.0 + i, rpe=8.0, kind=log_pb2.SET_KIND_NORMAL)
            performed.sets.add(reps=8, weight=50.0, rir=2.0)
        created = self.running.logs.CreateWorkout(
            log_pb2.CreateWorkoutRequest(workout=workout), metadata=account.metadata
        ).workout
        return created.id, created.etag

    def create_exercise(self, account: Account, visibility: int) -> tuple[str, str]:
        exercise = catalog_pb2.Exercise(
            name=f"Fuzz move {uuid.uuid4().hex[:8]}",
            primary_muscles=[common_pb2.MUSCLE_CHEST],
            equipment=common_pb2.EQUIPMENT_DUMBBELL,
            visibility=visibility,
        )
        created = self.running.catalog.CreateExercise(
            catalog_pb2.CreateExerciseRequest(exercise=exercise), metadata=account.metadata
        ).exercise
        return created.id, created.etag

    def _setup(self) -> Pool:
        user, admin = self.account(), self.admin_account()
        catalog = self.running.catalog.ListExercises(
            catalog_pb2.ListExercisesRequest(page_size=500), metadata=user.metadata
        ).exercises
        refs = [e.id for e in catalog[::10]] + [e.slug for e in catalog[5::10]]
        now = self.clock()
        workouts = [
            self.create_workout(user, refs[i : i + 3], now - timedelta(days=3 * i + 1))
            for i in range(8)
        ]
        private = self.create_exercise(user, catalog_pb2.VISIBILITY_PRIVATE)
        public = self.create_exercise(admin, catalog_pb2.VISIBILITY_PUBLIC)
        page_tokens = [
            self.running.catalog.ListExercises(
                catalog_pb2.ListExercisesRequest(page_size=2), metadata=user.metadata
            ).next_page_token,
            self.running.logs.ListWorkouts(
                log_pb2.ListWorkoutsRequest(page_size=2), metadata=user.metadata
            ).next_page_token,
        ]
        cursor = self.running.logs.SyncWorkouts(
            log_pb2.SyncWorkoutsRequest(page_size=3), metadata=user.metadata
        ).next_cursor
        return Pool(
            user=user,
            admin=admin,
            now=now,
            exercise_refs=[*refs, private[0], public[0]],
            workouts=workouts,
            private_exercise=private,
            public_exercise=public,
            page_tokens=page_tokens,
            cursors=["c0", cursor],
        )

    def pool_for(self, method: str, valid: bool = True) -> Pool:
        """The pool for one example: fresh accounts where the method needs them, and fresh
        resources when the request starts from a valid one."""
        pool = replace(self.pool, now=self.clock())
        if method in FRESH_ACCOUNTS:
            pool = replace(pool, user=self.account(), admin=self.admin_account())
        if valid and method in FRESH_WORKOUT:
            start = pool.now - timedelta(hours=2)
            workout = self.create_workout(pool.user, pool.exercise_refs[:2], start)
            pool = replace(pool, workouts=[workout])
        if valid and method in FRESH_EXERCISES:
            pool = replace(
                pool,
                private_exercise=self.create_exercise(pool.user, catalog_pb2.VISIBILITY_PRIVATE),
                public_exercise=self.create_exercise(pool.admin, catalog_pb2.VISIBILITY_PUBLIC),
            )
        return pool

    def callers(self, pool: Pool) -> list[tuple[str, Any]]:
        return [("anonymous", ()), ("user", pool.user.metadata), ("admin", pool.admin.metadata)]

    def still_serving(self) -> None:
        health = health_pb2_grpc.HealthStub(self.running.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        for account in (self.pool.user, self.pool.admin):
            me = self.running.auth.GetMe(auth_pb2.GetMeRequest(), metadata=account.metadata)
            assert me.user.email == account.email
        history = self.running.logs.StreamHistory(
            log_pb2.StreamHistoryRequest(), metadata=self.pool.user.metadata, timeout=10
        )
        assert all(chunk.entries for chunk in history)


@pytest.fixture(scope="module")
def fuzz(database: Database) -> Iterator[Fuzz]:
    clock = FakeClock()
    running = start_server(database, clock)
    try:
        yield Fuzz(running, clock)
    finally:
        running.channel.close()
        running.server.stop(grace=0)
        _empty_tables(database)


# --- valid requests ----------------------------------------------------------------------------

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")
UNITS = (common_pb2.WEIGHT_UNIT_UNSPECIFIED, common_pb2.WEIGHT_UNIT_KG, common_pb2.WEIGHT_UNIT_LB)
NAME_TEXT = st.text("abcdefghijklmnopqrstuvwxyzÅéß -'0123456789", min_size=1, max_size=30).filter(
    str.strip
)
UUIDS = st.uuids().map(str)
# Whether to set an optional part: its simplest value is True, so the first example of each
# strategy sets everything, and poisoning it reaches every field.
SET_FIRST = st.booleans().map(operator.not_)


def _ts(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def instants(pool: Pool) -> st.SearchStrategy[Timestamp]:
    """Within the last 400 days, or up to an hour ahead."""
    offsets = st.integers(-400 * 86400, 3600)
    return offsets.map(lambda s: _ts(pool.now + timedelta(seconds=s)))


def time_ranges(pool: Pool) -> st.SearchStrategy[common_pb2.TimeRange]:
    @st.composite
    def build(draw: st.DrawFn) -> common_pb2.TimeRange:
        span = common_pb2.TimeRange()
        if draw(SET_FIRST):
            span.start_time.CopyFrom(draw(instants(pool)))
        if draw(SET_FIRST):
            span.end_time.CopyFrom(draw(instants(pool)))
        return span

    return build()


@st.composite
def exercise_sets(draw: st.DrawFn) -> log_pb2.ExerciseSet:
    kinds = [v.number for v in log_pb2.SetKind.DESCRIPTOR.values]
    item = log_pb2.ExerciseSet(kind=draw(st.sampled_from(kinds)))
    if draw(SET_FIRST):
        item.reps = draw(st.integers(0, 30))
    if draw(SET_FIRST):
        item.weight = draw(st.floats(0, 300))
    if draw(SET_FIRST):
        item.rpe = draw(st.integers(2, 20)) / 2
    if draw(SET_FIRST):
        item.rir = draw(st.integers(0, 10))
    if draw(SET_FIRST):
        item.duration.FromMilliseconds(draw(st.integers(0, 3_600_000)))
    if draw(SET_FIRST):
        item.distance_m = draw(st.floats(0, 10_000))
    return item


def workouts(pool: Pool, ids: st.SearchStrategy[str]) -> st.SearchStrategy[log_pb2.Workout]:
    @st.composite
    def build(draw: st.DrawFn) -> log_pb2.Workout:
        start = draw(instants(pool))
        workout = log_pb2.Workout(
            id=draw(ids),
            title=draw(NAME_TEXT),
            notes=draw(st.sampled_from(("", "felt strong", "knee ok\nnext: deload"))),
            start_time=start,
            time_zone=draw(st.sampled_from(("", *ZONES))),
            weight_unit=draw(st.sampled_from(UNITS)),
        )
        if draw(SET_FIRST):
            workout.end_time.CopyFrom(start)
            workout.end_time.seconds += draw(st.integers(60, 3 * 3600))
        for _ in range(draw(st.integers(1, 3))):
            performed = workout.exercises.add(exercise_id=draw(st.sampled_from(pool.exercise_refs)))
            performed.sets.extend(draw(st.lists(exercise_sets(), min_size=1, max_size=3)))
        return workout

    return build()


def catalog_exercises(pool: Pool) -> st.SearchStrategy[catalog_pb2.Exercise]:
    muscles = [v.number for v in common_pb2.Muscle.DESCRIPTOR.values if v.number]
    equipment = [v.number for v in common_pb2.Equipment.DESCRIPTOR.values]
    return st.builds(
        catalog_pb2.Exercise,
        name=NAME_TEXT,
        aliases=st.lists(NAME_TEXT, max_size=2),
        primary_muscles=st.lists(st.sampled_from(muscles), min_size=1, max_size=2),
        secondary_muscles=st.lists(st.sampled_from(muscles), max_size=2),
        equipment=st.sampled_from(equipment),
        instructions=st.lists(NAME_TEXT, max_size=2),
        visibility=st.just(catalog_pb2.VISIBILITY_PRIVATE),
    )


def _mask(names: tuple[str, ...]) -> st.SearchStrategy[field_mask_pb2.FieldMask]:
    return st.lists(st.sampled_from(names), max_size=2, unique=True).map(
        lambda paths: field_mask_pb2.FieldMask(paths=paths)
    )


PROFILE_FIELDS = ("display_name", "time_zone", "preferred_unit", "weekly_workout_goal")


def _valid_examples(pool: Pool) -> dict[str, st.SearchStrategy[Message]]:
    """A valid request per method, as the fuzz user (or the admin, for ADMIN_ONLY) sends it."""
    workout_id, workout_etag = pool.workouts[0]
    private_id, private_etag = pool.private_exercise
    return {
        AUTH + "Register": st.builds(
            auth_pb2.RegisterRequest,
            email=UUIDS.map(lambda u: f"new-{u[:12]}@example.com"),
            password=st.just(PASSWORD),
            display_name=st.one_of(st.just(""), NAME_TEXT),
        ),
        AUTH + "Login": st.just(auth_pb2.LoginRequest(email=pool.user.email, password=PASSWORD)),
        AUTH + "Refresh": st.just(auth_pb2.RefreshRequest(refresh_token=pool.user.refresh_token)),
        AUTH + "Logout": st.builds(auth_pb2.LogoutRequest, all_sessions=st.booleans()),
        AUTH + "GetMe": st.just(auth_pb2.GetMeRequest()),
        AUTH + "UpdateMe": st.builds(
            auth_pb2.UpdateMeRequest,
            user=st.builds(
                auth_pb2.User,
                display_name=NAME_TEXT,
                time_zone=st.sampled_from(ZONES),
                preferred_unit=st.sampled_from(UNITS[1:]),
                weekly_workout_goal=st.integers(1, 14),
            ),
            update_mask=_mask(PROFILE_FIELDS),
        ),
        AUTH + "ChangePassword": st.just(
            auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=PASSWORD + "!")
        ),
        AUTH + "DeleteAccount": st.just(auth_pb2.DeleteAccountRequest(password=PASSWORD)),
        AUTH + "SetUserRole": st.builds(
            auth_pb2.SetUserRoleRequest,
            email=st.just(pool.user.email),
            role=st.sampled_from((auth_pb2.ROLE_USER, auth_pb2.ROLE_ADMIN)),
        ),
        CATALOG + "ListExercises": st.builds(
            catalog_pb2.ListExercisesRequest,
            page_size=st.integers(0, 20),
            query=st.sampled_from(("", "press", "barbell curl", "squat")),
            muscle=st.sampled_from([v.number for v in common_pb2.Muscle.DESCRIPTOR.values]),
            include_archived=st.booleans(),
            only_private=st.booleans(),
        ),
        CATALOG + "GetExercise": st.builds(
            catalog_pb2.GetExerciseRequest, id=st.sampled_from(pool.exercise_refs)
        ),
        CATALOG + "CreateExercise": st.builds(
            catalog_pb2.CreateExerciseRequest,
            exercise=catalog_exercises(pool),
            request_id=st.one_of(st.just(""), UUIDS),
        ),
        CATALOG + "UpdateExercise": st.builds(
            catalog_pb2.UpdateExerciseRequest,
            exercise=catalog_exercises(pool).map(
                lambda e: catalog_pb2.Exercise(
                    id=private_id, etag=private_etag, name=e.name, aliases=e.aliases
                )
            ),
            update_mask=_mask(("name", "aliases")),
        ),
        CATALOG + "DeleteExercise": _deletes(
            catalog_pb2.DeleteExerciseRequest, pool.private_exercise
        ),
        LOGS + "CreateWorkout": st.builds(
            log_pb2.CreateWorkoutRequest,
            workout=workouts(pool, UUIDS),
            request_id=st.one_of(st.just(""), UUIDS),
        ),
        LOGS + "GetWorkout": st.builds(
            log_pb2.GetWorkoutRequest,
            id=st.sampled_from([w for w, _ in pool.workouts]),
            weight_unit=st.sampled_from(UNITS),
        ),
        LOGS + "ListWorkouts": st.builds(
            log_pb2.ListWorkoutsRequest,
            page_size=st.integers(0, 20),
            time_range=time_ranges(pool),
            weight_unit=st.sampled_from(UNITS),
        ),
        LOGS + "UpdateWorkout": st.builds(
            log_pb2.UpdateWorkoutRequest,
            workout=workouts(pool, st.just(workout_id)).map(lambda w: _with(w, etag=workout_etag)),
        ),
        LOGS + "DeleteWorkout": _deletes(log_pb2.DeleteWorkoutRequest, pool.workouts[0]),
        LOGS + "SyncWorkouts": st.builds(
            log_pb2.SyncWorkoutsRequest,
            upserts=st.lists(workouts(pool, UUIDS), min_size=1, max_size=3),
            deletes=st.lists(UUIDS, min_size=1, max_size=2),
            cursor=st.sampled_from((*pool.cursors[::-1], "")),
            page_size=st.integers(1, 50),
        ),
        LOGS + "StreamHistory": st.builds(
            log_pb2.StreamHistoryRequest,
            time_range=time_ranges(pool),
            exercise_ids=st.lists(st.sampled_from(pool.exercise_refs), min_size=1, max_size=3),
            order=st.sampled_from([v.number for v in common_pb2.SortOrder.DESCRIPTOR.values]),
            weight_unit=st.sampled_from(UNITS),
            chunk_size=st.integers(0, 10),
            columnar=st.booleans(),
        ),
        LOGS + "GetStats": st.builds(
            log_pb2.GetStatsRequest,
            as_of=instants(pool),
            weeks=st.integers(0, 104),
            weight_unit=st.sampled_from(UNITS),
        ),
        LOGS + "ExportData": st.builds(
            log_pb2.ExportDataRequest,
            format=st.sampled_from([v.number for v in log_pb2.ExportFormat.DESCRIPTOR.values]),
            weight_unit=st.sampled_from(UNITS),
        ),
        TRAINING + "GetModelBundle": st.builds(
            training_pb2.GetModelBundleRequest, known_version=st.integers(0, 3)
        ),
        TRAINING + "TrainNow": st.just(training_pb2.TrainNowRequest()),
        TRAINING + "GetTrainingStatus": st.just(training_pb2.GetTrainingStatusRequest()),
        TRAINING + "RunBatch": st.builds(training_pb2.RunBatchRequest, all_users=st.booleans()),
        path(HEALTH_CHECK): st.builds(
            health_pb2.HealthCheckRequest,
            service=st.sampled_from(("", *(s.full_name for s in SERVICES))),
        ),
    }


def _deletes(request_type: type[Message], resource: tuple[str, str]) -> st.SearchStrategy[Message]:
    """Deletes of a resource (id, etag), with or without its etag."""
    resource_id, etag = resource
    return st.builds(request_type, id=st.just(resource_id), etag=st.sampled_from(("", etag)))


def _with(message: Message, **fields: Any) -> Message:
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def plausible(pool: Pool) -> ps.Plausible:
    """Realistic values by field name, from what the server holds."""
    workout_ids = st.sampled_from([w for w, _ in pool.workouts])
    refs = st.sampled_from(pool.exercise_refs)
    etags = st.sampled_from(
        [e for _, e in pool.workouts] + [pool.private_exercise[1], pool.public_exercise[1], "1"]
    )
    return ps.Plausible(
        by_name={
            "id": st.one_of(workout_ids, refs, UUIDS),
            "exercise_id": refs,
            "exercise_ids": refs,
            "deletes": st.one_of(workout_ids, UUIDS),
            "request_id": st.one_of(UUIDS, st.just("fuzz-request-1")),
            "etag": etags,
            "email": st.sampled_from((pool.user.email, pool.admin.email, "nobody@example.com")),
            "password": st.sampled_from((PASSWORD, PASSWORD + "!", "short")),
            "current_password": st.sampled_from((PASSWORD, "wrong password")),
            "new_password": st.sampled_from((PASSWORD, "a new good password", "x" * 73)),
            "refresh_token": st.just(pool.user.refresh_token),
            "display_name": NAME_TEXT,
            "time_zone": st.sampled_from((*ZONES, "Mars/Olympus", "utc", "")),
            "page_token": st.sampled_from(pool.page_tokens),
            "cursor": st.sampled_from(pool.cursors),
            "query": st.sampled_from(("press", "dumbbell row", "zzz")),
            "slug": st.sampled_from(("barbell-bench-press", "new-slug", "Bad Slug")),
            "service": st.sampled_from([s.full_name for s in SERVICES] + ["", "nope"]),
            "reps": st.integers(0, 1001),
            "weight": st.floats(0, 1001),
            "rpe": st.integers(0, 21).map(lambda n: n / 2),
            "rir": st.floats(0, 11),
            "weekly_workout_goal": st.integers(0, 15),
            "weeks": st.integers(0, 105),
            "known_version": st.integers(0, 5),
        },
        # For fields of methods added since, which have no hand-written example.
        by_suffix=[
            ("_id", st.one_of(workout_ids, refs, UUIDS)),
            ("_ids", st.one_of(workout_ids, refs, UUIDS)),
            ("_token", st.sampled_from(pool.page_tokens)),
        ],
        messages={
            "google.protobuf.Timestamp": instants(pool),
            "google.protobuf.Duration": st.integers(0, 90_000).map(lambda s: Duration(seconds=s)),
        },
    )


def valid_requests(method: MethodDescriptor, pool: Pool) -> st.SearchStrategy[Message]:
    """The hand-written valid requests, or for a method without them (one added since)
    plausible values by field name."""
    if method.client_streaming:
        raise AssertionError(f"{path(method)} streams requests: no strategy for it yet")
    valid = _valid_examples(pool).get(path(method))
    return ps.plausible_messages(method.input_type, plausible(pool)) if valid is None else valid


def requests(kind: str, method: MethodDescriptor, pool: Pool) -> st.SearchStrategy[Any]:
    """The requests of one kind for a method: messages, or bytes for raw-bytes."""
    hints = plausible(pool)
    valid = valid_requests(method, pool)
    if kind == "generic":
        return ps.messages(method.input_type)
    if kind == "valid-mutated":
        return ps.mutations(valid, hints)
    serialized = st.one_of(valid, ps.messages(method.input_type)).map(
        lambda m: m.SerializeToString()
    )
    return ps.corrupted(serialized)


def _fuzz_settings(kind: str) -> settings:
    return settings(
        max_examples=max(1, round(EXAMPLES[kind] * SCALE)),
        deadline=None,
        derandomize=SEED is None,
        database=None,
        suppress_health_check=list(HealthCheck),
        # Explaining a failure re-runs it holding every variant: gigabytes with 4 MiB values.
        phases=[p for p in Phase if p != Phase.explain],
    )


# --- the tests ---------------------------------------------------------------------------------


def test_every_served_service_is_fuzzed(fuzz: Fuzz) -> None:
    """What the server serves (by reflection) is what this file fuzzes, so nothing drops out."""
    stub = reflection_pb2_grpc.ServerReflectionStub(fuzz.running.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [answer] = stub.ServerReflectionInfo(iter([request]), timeout=10)
    served = {s.name for s in answer.list_services_response.service}
    fuzzed = {s.full_name for s in SERVICES} | {HEALTH_CHECK.containing_service.full_name}
    assert served - {"grpc.reflection.v1alpha.ServerReflection"} == fuzzed
    assert {"AuthService", "CatalogService", "LogService", "TrainingService"} <= {
        s.name for s in SERVICES
    }
    assert not (set(_valid_examples(fuzz.pool)) - {path(m) for m in METHODS}), "stale examples"


@pytest.mark.parametrize("method", METHODS, ids=path)
def test_valid_example_succeeds(fuzz: Fuzz, method: MethodDescriptor) -> None:
    """The starting points of valid-mutated really are valid: each one answers OK. A method
    without a hand-written example (one added since) starts from plausible values instead,
    which need only get a deliberate answer."""

    @settings(max_examples=3, deadline=None, derandomize=True, database=None)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        pool = fuzz.pool_for(path(method))
        caller = pool.admin if path(method) in ADMIN_ONLY else pool.user
        request = data.draw(valid_requests(method, pool))
        outcome = invoke(fuzz.running.channel, method, request, caller.metadata)
        check(outcome, method)
        if path(method) == TRAINING + "TrainNow" and outcome.code == C.RESOURCE_EXHAUSTED:
            return  # the cooldown after the first example
        if path(method) in _valid_examples(pool):
            assert outcome.code == C.OK, f"{path(method)}: {outcome.code.name} {outcome.message}"

    run()


@pytest.mark.parametrize("method", METHODS, ids=path)
def test_every_field_at_its_worst(fuzz: Fuzz, method: MethodDescriptor) -> None:
    """The simplest valid request (which sets every part), with one field at a time at each
    of its worst values (proto_strategies.poisoned: NUL, 70 kB strings, integer limits, NaN,
    unknown enums, impossible Timestamps...): a deliberate answer every time."""
    fresh = path(method) in FRESH_ACCOUNTS | FRESH_WORKOUT | FRESH_EXERCISES

    @settings(max_examples=1, deadline=None, derandomize=True, database=None)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        drawn_for = fuzz.pool_for(path(method))
        valid = data.draw(valid_requests(method, drawn_for))
        for field, request in ps.poisoned(valid):
            pool = drawn_for
            if fresh:  # the variant aimed at accounts and resources of its own
                pool = fuzz.pool_for(path(method))
                _retarget(request, _pool_values(drawn_for, pool))
            caller = pool.admin if path(method) in ADMIN_ONLY else pool.user
            outcome = invoke(fuzz.running.channel, method, request, caller.metadata)
            check(outcome, method, field)

    run()
    fuzz.still_serving()


def _pool_values(old: Pool, new: Pool) -> dict[str, str]:
    """Each account and resource value of one pool, mapped to the other's."""
    pairs = [
        (old.user.email, new.user.email),
        (old.user.refresh_token, new.user.refresh_token),
        (old.workouts[0][0], new.workouts[0][0]),
        (old.private_exercise[0], new.private_exercise[0]),
        (old.public_exercise[0], new.public_exercise[0]),
    ]
    return dict(pairs)


def _retarget(message: Message, swaps: dict[str, str]) -> None:
    """Replace every string field value found in `swaps`, at any depth."""
    for f, value in message.ListFields():
        if f.type == f.TYPE_STRING and f.is_repeated:
            value[:] = [swaps.get(v, v) for v in value]
        elif f.type == f.TYPE_STRING:
            setattr(message, f.name, swaps.get(value, value))
        elif f.message_type is not None and not ps.is_map(f):
            for item in value if f.is_repeated else [value]:
                _retarget(item, swaps)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS, ids=path)
def test_fuzz(fuzz: Fuzz, method: MethodDescriptor, kind: str) -> None:
    limit = fuzz.running.server.settings.max_message_bytes

    @_fuzz_settings(kind)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        pool = fuzz.pool_for(path(method), valid=kind != "generic")
        name, metadata = data.draw(st.sampled_from(fuzz.callers(pool)), label="caller")
        request = data.draw(requests(kind, method, pool), label="request")
        outcome = invoke(fuzz.running.channel, method, request, metadata)
        check(outcome, method)
        if isinstance(request, bytes) and len(request) > limit:
            assert outcome.code == C.RESOURCE_EXHAUSTED, f"{name}: {outcome}"
        elif isinstance(request, bytes) and not metadata and not is_open(path(method)):
            assert outcome.code == C.UNAUTHENTICATED, f"{name}: {outcome}"
        elif isinstance(request, bytes) and not _parses(method, request):
            assert outcome.code == C.INVALID_ARGUMENT, f"{name}: {outcome}"
            assert "not a valid protobuf message" in outcome.message

    (run if SEED is None else seed(int(SEED))(run))()
    fuzz.still_serving()


def _parses(method: MethodDescriptor, data: bytes) -> bool:
    try:
        message_factory.GetMessageClass(method.input_type).FromString(data)
    except (DecodeError, RuntimeError):
        return False
    return True


def test_invalid_bytes_are_invalid_argument(fuzz: Fuzz) -> None:
    """grpcio answers a body it cannot parse with INTERNAL; the server makes it INVALID_ARGUMENT,
    for open and closed methods alike, after the token is checked (so a caller without a token
    learns nothing about the body)."""
    export = next(m for m in METHODS if path(m) == LOGS + "ExportData")
    get_me = next(m for m in METHODS if path(m) == AUTH + "GetMe")
    # Field 1 with a length far past the end: invalid for every message type.
    garbage = b"\x0a\xff\xff\xff\xff\x0f"
    for method, metadata in (
        (next(m for m in METHODS if path(m) == AUTH + "Register"), ()),
        (HEALTH_CHECK, ()),
        (export, fuzz.pool.user.metadata),
        (get_me, fuzz.pool.user.metadata),
    ):
        outcome = invoke(fuzz.running.channel, method, garbage, metadata)
        assert outcome.code == C.INVALID_ARGUMENT, outcome
        assert outcome.message == f"request: is not a valid protobuf message for {path(method)}"
        assert "MALFORMED_REQUEST" in outcome.status
    for method in (export, get_me):
        outcome = invoke(fuzz.running.channel, method, garbage, ())
        assert outcome.code == C.UNAUTHENTICATED, outcome


def test_time_zones_in_examples_are_real() -> None:
    assert set(ZONES) <= iana_time_zones()


# --- what fuzzing found (regressions) ----------------------------------------------------------

LONG = "x" * 70_000


def _found_cases(pool: Pool) -> list[tuple[str, Message, str]]:
    """(method, request, the field the answer must name): each once answered INTERNAL on
    PostgreSQL (NUL in text) or echoed a 70 kB value in its message."""
    workout = log_pb2.Workout(id=str(uuid.uuid4()), start_time=_ts(pool.now), time_zone=LONG)
    workout.exercises.add(exercise_id="squat")
    mask = field_mask_pb2.FieldMask(paths=[LONG])
    named = catalog_pb2.Exercise(name="Fuzzed", primary_muscles=[common_pb2.MUSCLE_CHEST])
    with_alias = catalog_pb2.Exercise(aliases=["a\x00b"])
    with_alias.MergeFrom(named)
    return [
        (CATALOG + "GetExercise", catalog_pb2.GetExerciseRequest(id="\x00"), "id"),
        (CATALOG + "GetExercise", catalog_pb2.GetExerciseRequest(id=LONG), "id"),
        (CATALOG + "DeleteExercise", catalog_pb2.DeleteExerciseRequest(id="a\x00b"), "id"),
        (
            CATALOG + "UpdateExercise",
            catalog_pb2.UpdateExerciseRequest(exercise=catalog_pb2.Exercise(id="\x00", name="x")),
            "exercise.id",
        ),
        (
            CATALOG + "UpdateExercise",
            catalog_pb2.UpdateExerciseRequest(
                exercise=catalog_pb2.Exercise(id=pool.private_exercise[0]), update_mask=mask
            ),
            "update_mask",
        ),
        (
            CATALOG + "CreateExercise",
            catalog_pb2.CreateExerciseRequest(exercise=with_alias),
            "exercise.aliases",
        ),
        (CATALOG + "ListExercises", catalog_pb2.ListExercisesRequest(query="a\x00b"), "query"),
        (
            LOGS + "StreamHistory",
            log_pb2.StreamHistoryRequest(exercise_ids=[LONG]),
            "exercise_ids[0]",
        ),
        (
            LOGS + "CreateWorkout",
            log_pb2.CreateWorkoutRequest(workout=workout),
            "workout.time_zone",
        ),
        (
            AUTH + "UpdateMe",
            auth_pb2.UpdateMeRequest(user=auth_pb2.User(time_zone=LONG)),
            "time_zone",
        ),
        (AUTH + "UpdateMe", auth_pb2.UpdateMeRequest(update_mask=mask), "update_mask"),
    ]


def test_what_fuzzing_found_is_invalid_argument_with_a_short_message(fuzz: Fuzz) -> None:
    by_path = {path(m): m for m in METHODS}
    for method, request, field in _found_cases(fuzz.pool):
        outcome = invoke(fuzz.running.channel, by_path[method], request, fuzz.pool.user.metadata)
        assert outcome.code == C.INVALID_ARGUMENT, (method, field, outcome)
        assert outcome.message.startswith(f"{field}: "), (method, outcome.message)
        assert len(outcome.message) < 400, (method, outcome.message)


def test_an_unknown_exercise_padded_with_spaces_is_named_briefly(fuzz: Fuzz) -> None:
    padded = "no-such-move" + " " * 70_000
    by_path = {path(m): m for m in METHODS}
    workout = log_pb2.Workout(id=str(uuid.uuid4()), start_time=_ts(fuzz.pool.now))
    workout.exercises.add(exercise_id=padded)
    for method, request in (
        (CATALOG + "GetExercise", catalog_pb2.GetExerciseRequest(id=padded)),
        (LOGS + "CreateWorkout", log_pb2.CreateWorkoutRequest(workout=workout)),
        (LOGS + "StreamHistory", log_pb2.StreamHistoryRequest(exercise_ids=[padded])),
    ):
        outcome = invoke(fuzz.running.channel, by_path[method], request, fuzz.pool.user.metadata)
        assert outcome.code in (C.NOT_FOUND, C.INVALID_ARGUMENT), (method, outcome)
        assert "no exercise 'no-such-move" in outcome.message, (method, outcome.message)
        assert len(outcome.message) < 200, (method, outcome.message)
