"""TESTPLAN scenario "Load": many clients, some answers lost, every call retried.

Eight client threads (two per account, each its own connection) mix Login, CreateWorkout with
client-chosen ids and a request_id, SyncWorkouts batches (new workouts and one already
stored) and StreamHistory, through `DroppingProxy`: it cuts the connection as the server
finishes some calls, so the server has committed but the client sees only UNAVAILABLE. A
client sends the same request again until it is answered. Afterwards: the stored workouts
are exactly the acknowledged ids, each whole; every history stream showed every workout
acknowledged before it started, whole; no call ever ended UNKNOWN or INTERNAL (or anything
but the retryable UNAVAILABLE and RESOURCE_EXHAUSTED); and the database pool is back to no
checked-out connection, with a fresh call answered. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
import pytest

from repwise.v1 import auth_pb2, auth_pb2_grpc, log_pb2, log_pb2_grpc
from server.catalog.sources import seed_default_catalog
from tests.conftest import PASSWORD, bearer, register, start_server
from tests.faults import (
    RETRYABLE,
    CallLog,
    DroppingProxy,
    Shape,
    assert_whole,
    make_workout,
    stored_shapes,
    wait_until,
)

pytestmark = pytest.mark.slow

T = TypeVar("T")
SEED = 20261125
ACCOUNTS = 4
THREADS = 8
OPERATIONS = 30
DROP_RATE = 0.15
DEADLINE = 30.0
CREATED = log_pb2.SYNC_OUTCOME_CREATED
UNCHANGED = log_pb2.SYNC_OUTCOME_UNCHANGED
NOW = datetime.now(UTC).replace(microsecond=0)
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),  # a connection of its own per client
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Ledger:
    """What the clients sent, what the server acknowledged, every status they saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[str, Shape] = {}
        self.acked: dict[str, set[str]] = {}  # by email
        self.calls = CallLog()
        self.streams_checked = 0

    def send(self, workout_id: str, shape: Shape) -> None:
        with self.lock:
            self.sent[workout_id] = shape

    def ack(self, email: str, workout_ids: list[str]) -> None:
        with self.lock:
            self.acked.setdefault(email, set()).update(workout_ids)

    def acked_by(self, email: str) -> set[str]:
        with self.lock:
            return set(self.acked.get(email, ()))


class Device:
    """One client thread: its own channel through the proxy, retrying each call as it was."""

    def __init__(self, target: str, email: str, rng: random.Random, ledger: Ledger) -> None:
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.logs = log_pb2_grpc.LogServiceStub(self.channel)
        self.email = email
        self.rng = rng
        self.ledger = ledger
        self.md = bearer("")

    def until_answered(self, call: Callable[[], T]) -> T:
        return self.ledger.calls.until_answered(call, self.rng, RETRYABLE)

    def login(self) -> None:
        request = auth_pb2.LoginRequest(email=self.email, password=PASSWORD)
        answer = self.until_answered(lambda: self.auth.Login(request, timeout=DEADLINE))
        self.md = bearer(answer.access_token)

    def new_workout(self) -> log_pb2.Workout:
        start = NOW - timedelta(minutes=self.rng.randint(60, 400 * 24 * 60))
        workout, shape = make_workout(self.rng, start)
        self.ledger.send(workout.id, shape)
        return workout

    def create(self) -> None:
        workout = self.new_workout()
        request = log_pb2.CreateWorkoutRequest(
            workout=workout, request_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        )
        answer = self.until_answered(
            lambda: self.logs.CreateWorkout(request, metadata=self.md, timeout=DEADLINE)
        )
        assert answer.workout.id == workout.id and answer.workout.etag
        self.ledger.ack(self.email, [workout.id])

    def sync(self) -> None:
        fresh = [self.new_workout() for _ in range(self.rng.randint(1, 8))]
        request = log_pb2.SyncWorkoutsRequest(upserts=fresh)
        known = sorted(self.ledger.acked_by(self.email))
        again = self.rng.choice(known) if known else None
        answer = self.until_answered(
            lambda: self.logs.SyncWorkouts(request, metadata=self.md, timeout=DEADLINE)
        )
        outcomes = [(r.workout_id, r.outcome) for r in answer.results]
        assert all(outcome in (CREATED, UNCHANGED) for _, outcome in outcomes), answer.results
        assert [i for i, _ in outcomes] == [w.id for w in fresh]
        self.ledger.ack(self.email, [w.id for w in fresh])
        if again is not None:  # a workout stored earlier, sent again, changes nothing
            read = log_pb2.GetWorkoutRequest(id=again)
            stored = self.until_answered(
                lambda: self.logs.GetWorkout(read, metadata=self.md, timeout=DEADLINE)
            )
            resend = log_pb2.SyncWorkoutsRequest(upserts=[stored.workout])
            repeated = self.until_answered(
                lambda: self.logs.SyncWorkouts(resend, metadata=self.md, timeout=DEADLINE)
            )
            assert [r.outcome for r in repeated.results] == [UNCHANGED]

    def stream(self) -> None:
        before = self.ledger.acked_by(self.email)
        request = log_pb2.StreamHistoryRequest(chunk_size=self.rng.choice([5, 50, 500]))
        chunks = self.until_answered(
            lambda: list(self.logs.StreamHistory(request, metadata=self.md, timeout=DEADLINE))
        )
        seen: dict[str, list[log_pb2.PerformedExercise]] = {}
        for chunk in chunks:
            for entry in chunk.entries:
                seen.setdefault(entry.workout_id, []).append(entry.exercise)
        missing = before - set(seen)
        assert not missing, f"acknowledged workouts missing from the history: {missing}"
        with self.ledger.lock:
            sent = dict(self.ledger.sent)
            self.ledger.streams_checked += 1
        for workout_id, exercises in seen.items():
            shape = Shape(
                len(exercises),
                sum(len(e.sets) for e in exercises),
                sum(s.reps for e in exercises for s in e.sets),
            )
            assert sent.get(workout_id) == shape, (workout_id, shape, sent.get(workout_id))

    def run(self, operations: int) -> None:
        self.login()
        actions = [self.create] * 4 + [self.sync] * 3 + [self.stream] * 2 + [self.login]
        for _ in range(operations):
            self.rng.choice(actions)()


def test_lost_answers_retried_under_load_store_each_workout_once(db, clock):
    running = start_server(db, clock)
    seed_default_catalog(db, clock)
    proxy = DroppingProxy(("127.0.0.1", running.server.port or 0), DROP_RATE, SEED)
    ledger = Ledger()
    emails = [register(running).user.email for _ in range(ACCOUNTS)]
    failures: list[BaseException] = []
    devices = [
        Device(
            f"127.0.0.1:{proxy.port}",
            emails[i % ACCOUNTS],
            random.Random(f"{SEED}:{i}"),
            ledger,
        )
        for i in range(THREADS)
    ]

    def work(device: Device) -> None:
        try:
            device.run(OPERATIONS)
        except BaseException as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(d,)) for d in devices]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert not failures, [
            (e.code(), e.details()) if isinstance(e, grpc.RpcError) else repr(e) for e in failures
        ]

        # The proxy did lose answers, and clients saw nothing but retryable codes.
        assert proxy.cuts >= 10, (proxy.cuts, proxy.calls_ended)
        codes = ledger.calls.codes()
        assert set(codes) <= {"OK", *(c.name for c in RETRYABLE)}, codes
        assert codes["UNAVAILABLE"] >= proxy.cuts // 2, (codes, proxy.cuts)
        assert ledger.streams_checked >= 10

        # Nothing lost, nothing duplicated: the rows are the acknowledged ids, each whole.
        acked = set().union(*ledger.acked.values())
        assert acked == set(ledger.sent), "a workout was sent but never acknowledged"
        stored = stored_shapes(db.url)
        assert set(stored) == acked, (len(stored), len(acked))
        assert_whole(stored, ledger.sent)

        # No connection is left checked out, and a fresh call is answered.
        assert wait_until(lambda: db.engine.pool.checkedout() == 0, 15), (
            f"{db.engine.pool.checkedout()} connections still checked out"
        )
        signed_in = running.auth.Login(
            auth_pb2.LoginRequest(email=emails[0], password=PASSWORD), timeout=10
        )
        listed = running.logs.ListWorkouts(
            log_pb2.ListWorkoutsRequest(page_size=200),
            metadata=bearer(signed_in.access_token),
            timeout=10,
        )
        assert {w.id for w in listed.workouts} <= ledger.acked[emails[0]]
        assert len(listed.workouts) == min(200, len(ledger.acked[emails[0]]))
    finally:
        for device in devices:
            device.channel.close()
        proxy.close()
        running.channel.close()
        running.server.stop(grace=0)
