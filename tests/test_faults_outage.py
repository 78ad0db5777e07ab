"""TESTPLAN scenario "Database outage and restart mid-load", on a PostgreSQL cluster of the
test's own (tests/faults.py: OwnPostgres) so that it can be crashed and started again.

Four clients keep creating workouts (CreateWorkout with a request_id, and SyncWorkouts
batches), each call sent again with the same ids until answered. Mid-load the cluster stops
as in a crash (`pg_ctl stop -m immediate`): calls fail with UNAVAILABLE long before their
deadline and without SQL text, and health turns NOT_SERVING. The cluster starts again: health
returns to SERVING with the same server process and the clients' retries go through. Every
workout is then stored exactly once and whole, and no call ever ended otherwise than OK or
UNAVAILABLE.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from repwise.v1 import log_pb2, log_pb2_grpc
from server.catalog.sources import seed_default_catalog
from server.db import Database
from server.migrate import upgrade
from tests.conftest import bearer, register, rpc_error, start_server
from tests.faults import (
    CallLog,
    Shape,
    assert_whole,
    make_workout,
    own_postgres,
    stored_shapes,
    wait_until,
)
from tests.test_server_behaviour import NOT_SERVING, SERVING, assert_no_leak, health_status

pytestmark = pytest.mark.slow

SEED = 715
CLIENTS = 4
DEADLINE = 20.0
# "Fast": a refused call answers in well under its deadline.
FAST = 5.0
UNAVAILABLE_ONLY = frozenset({grpc.StatusCode.UNAVAILABLE})
START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)


class Writer:
    """A client creating workouts until told to stop, each retried until answered."""

    def __init__(self, logs: log_pb2_grpc.LogServiceStub, token: str, seed: str) -> None:
        self.logs = logs
        self.md = bearer(token)
        self.rng = random.Random(seed)
        self.calls = CallLog()
        self.sent: dict[str, Shape] = {}
        self.acked: list[str] = []
        self.error: BaseException | None = None

    def _new(self) -> log_pb2.Workout:
        start = START + timedelta(minutes=self.rng.randint(0, 29 * 24 * 60))
        workout, shape = make_workout(self.rng, start)
        self.sent[workout.id] = shape
        return workout

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if self.rng.random() < 0.5:
                    workout = self._new()
                    create = log_pb2.CreateWorkoutRequest(
                        workout=workout, request_id=str(uuid.uuid4())
                    )
                    self.calls.until_answered(
                        lambda r=create: self.logs.CreateWorkout(
                            r, metadata=self.md, timeout=DEADLINE
                        ),
                        self.rng,
                        UNAVAILABLE_ONLY,
                    )
                    self.acked.append(workout.id)
                else:
                    batch = log_pb2.SyncWorkoutsRequest(upserts=[self._new() for _ in range(3)])
                    answer = self.calls.until_answered(
                        lambda r=batch: self.logs.SyncWorkouts(
                            r, metadata=self.md, timeout=DEADLINE
                        ),
                        self.rng,
                        UNAVAILABLE_ONLY,
                    )
                    assert {r.outcome for r in answer.results} <= {
                        log_pb2.SYNC_OUTCOME_CREATED,
                        log_pb2.SYNC_OUTCOME_UNCHANGED,
                    }, answer.results
                    self.acked += [w.id for w in batch.upserts]
                time.sleep(0.01)
        except BaseException as error:  # reported by the test
            self.error = error


def test_a_database_crash_mid_load_is_unavailable_then_recovers_without_losing_a_workout(clock):
    with own_postgres() as cluster:
        db = Database(cluster.url, pool_size=8)
        upgrade(db.engine)
        seed_default_catalog(db, clock)
        running = start_server(db, clock)
        stop = threading.Event()
        writers = [
            Writer(running.logs, register(running).access_token, f"{SEED}:{i}")
            for i in range(CLIENTS)
        ]
        threads = [threading.Thread(target=w.run, args=(stop,)) for w in writers]

        def acked() -> int:
            return sum(len(w.acked) for w in writers)

        try:
            for thread in threads:
                thread.start()
            assert wait_until(lambda: acked() >= 40, 60), "the load never got going"
            assert health_status(running.channel) == SERVING

            cluster.stop("immediate")
            assert wait_until(lambda: health_status(running.channel) == NOT_SERVING, 15), (
                "health stayed SERVING with the database down"
            )
            probe, _ = make_workout(random.Random(SEED), START)
            began = time.monotonic()
            error = rpc_error(
                running.logs.CreateWorkout,
                log_pb2.CreateWorkoutRequest(workout=probe),
                metadata=writers[0].md,
                timeout=DEADLINE,
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert time.monotonic() - began < FAST
            assert_no_leak(error.details() or "")
            down_at = time.monotonic()
            during_outage = acked()
            time.sleep(1.0)  # the clients keep retrying against the dead database
            up_at = time.monotonic()
            cluster.start()
            assert wait_until(lambda: health_status(running.channel) == SERVING, 30), (
                "health did not return to SERVING after the database came back"
            )
            assert wait_until(lambda: acked() >= during_outage + 40, 60), (
                "the clients' retries did not go through after the restart"
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            running.channel.close()
            running.server.stop(grace=0)
            db.dispose()
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert [w.error for w in writers if w.error] == []

        attempts = [a for w in writers for a in w.calls.attempts]
        refused = [seconds for code, _, seconds in attempts if code == "UNAVAILABLE"]
        assert {code for code, _, _ in attempts} == {"OK", "UNAVAILABLE"}
        assert max(refused) < FAST, f"an UNAVAILABLE took {max(refused):.1f} s"
        within_outage = [
            code
            for code, start, seconds in attempts
            if down_at <= start and start + seconds < up_at
        ]
        assert within_outage and set(within_outage) == {"UNAVAILABLE"}, within_outage

        sent = {i: shape for w in writers for i, shape in w.sent.items()}
        acknowledged = [i for w in writers for i in w.acked]
        assert len(acknowledged) == len(set(acknowledged)) == len(sent)
        stored = stored_shapes(cluster.url)
        assert set(stored) == set(sent)
        assert_whole(stored, sent)
