"""TESTPLAN 23 and the scenario "SIGKILL during a large sync", against a real `repwise serve`
process (tests/test_cli.py: serving) on a database of its own, SQLite and PostgreSQL.

- SIGTERM: a large SyncWorkouts (its transaction open) and a history stream (read slowly)
  are in flight when the signal arrives. Health watchers see NOT_SERVING, new calls get
  UNAVAILABLE, both calls finish whole, the process exits 0, and every workout is whole.
- SIGKILL: two clients send batches of 500 workouts; at a seeded random moment while a batch's
  transaction is open the server is killed (tests/faults.py `kill_when`: looked at with the
  server stopped; the database is read once the killed server's sessions are gone).
  Restarted on the same database, each batch is stored wholly or not at all (a sync is one
  transaction), each workout whole; sending every batch again stores the missing ones,
  changes none of the stored ones, and leaves every workout exactly once. SQLite's integrity
  check passes after the kill and at the end.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from repwise.v1 import auth_pb2, auth_pb2_grpc, log_pb2, log_pb2_grpc
from tests.conftest import PASSWORD, bearer
from tests.faults import (
    Shape,
    assert_whole,
    batches_all_or_nothing,
    fresh_database,
    kill_when,
    make_workout,
    named,
    sqlite_integrity,
    stored_shapes,
    wait_until,
    workout_write_in_progress,
)
from tests.test_cli import cli_env, serving

pytestmark = pytest.mark.slow

SECRET = "fault-tests-secret-of-at-least-32-bytes!"
CREATED = log_pb2.SYNC_OUTCOME_CREATED
UNCHANGED = log_pb2.SYNC_OUTCOME_UNCHANGED
NOW = datetime.now(UTC).replace(microsecond=0)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
KILLED = "repwise-serve-killed"  # the killed server's PostgreSQL sessions


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as database_url:
        yield database_url


def batch_of(
    rng: random.Random, size: int, first: datetime, *, exercises: int, sets: int
) -> tuple[list[log_pb2.Workout], dict[str, Shape]]:
    """`size` workouts an hour apart from `first`, each of the same size."""
    workouts, shapes = [], {}
    for i in range(size):
        start = first + timedelta(hours=i)
        workout, shape = make_workout(rng, start, exercises=exercises, sets=sets)
        workouts.append(workout)
        shapes[workout.id] = shape
    return workouts, shapes


def sign_up(channel: grpc.Channel, email: str) -> tuple[tuple[tuple[str, str]], str]:
    """(metadata of a new account's session, its user id)."""
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    account = auth.Register(auth_pb2.RegisterRequest(email=email, password=PASSWORD), timeout=30)
    return bearer(account.access_token), account.user.id


def sync(logs: log_pb2_grpc.LogServiceStub, md, workouts, timeout: float = 60):  # type: ignore[no-untyped-def]
    return logs.SyncWorkouts(
        log_pb2.SyncWorkoutsRequest(upserts=workouts), metadata=md, timeout=timeout
    )


def new_call_code(port: int, md) -> str:  # type: ignore[no-untyped-def]
    """The status of a call on a new connection."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        log_pb2_grpc.LogServiceStub(channel).ListWorkouts(
            log_pb2.ListWorkoutsRequest(page_size=1), metadata=md, timeout=5
        )
        return "OK"
    except grpc.RpcError as error:
        return str(error.code().name)
    finally:
        channel.close()


def test_sigterm_drains_in_flight_calls_and_exits_cleanly(url, tmp_path):
    rng = random.Random(23)
    env = cli_env(url, REPWISE_JWT_SECRET=SECRET, REPWISE_GRACE_SECONDS="20")
    with serving(env, tmp_path) as served:
        logs = log_pb2_grpc.LogServiceStub(served.channel)
        md, user_id = sign_up(served.channel, "drain@example.com")
        history: dict[str, Shape] = {}
        for first in (NOW - timedelta(days=30), NOW - timedelta(days=20)):
            workouts, shapes = batch_of(rng, 200, first, exercises=4, sets=3)
            assert {r.outcome for r in sync(logs, md, workouts).results} == {CREATED}
            history |= shapes
        # Older than the history, so the ascending stream (keyset pages) never meets it.
        large, large_shapes = batch_of(rng, 500, NOW - timedelta(days=400), exercises=6, sets=4)

        watch = health_pb2_grpc.HealthStub(served.channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=60
        )
        assert next(watch).status == SERVING
        streamed: list[log_pb2.HistoryEntry] = []
        synced: list[log_pb2.SyncWorkoutsResponse] = []
        errors: list[BaseException] = []
        reading = threading.Event()

        def read_history() -> None:
            request = log_pb2.StreamHistoryRequest(chunk_size=10)
            try:
                for chunk in logs.StreamHistory(request, metadata=md, timeout=60):
                    streamed.extend(chunk.entries)
                    reading.set()
                    time.sleep(0.02)  # a slow reader keeps the stream open
            except BaseException as error:  # reported below
                errors.append(error)

        def sync_large() -> None:
            try:
                synced.append(sync(logs, md, large))
            except BaseException as error:  # reported below
                errors.append(error)

        threads = [threading.Thread(target=read_history), threading.Thread(target=sync_large)]
        for thread in threads:
            thread.start()
        assert reading.wait(20), "the history stream never started"
        assert wait_until(lambda: workout_write_in_progress(url, [user_id]), 20, 0.005), (
            "the large sync never opened its transaction"
        )

        served.process.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        watch.cancel()  # a watcher holds its stream open; it must not hold up the exit
        # Health turns first, then the server stops taking calls: new ones are refused soon.
        assert wait_until(lambda: new_call_code(served.port, md) == "UNAVAILABLE", 10)
        assert any(t.is_alive() for t in threads), "the in-flight calls ended before the checks"

        for thread in threads:
            thread.join(timeout=60)
        assert not errors, [e.code() if isinstance(e, grpc.RpcError) else e for e in errors]
        assert [r.outcome for r in synced[0].results] == [CREATED] * len(large)
        seen: dict[str, list[log_pb2.PerformedExercise]] = {}
        for entry in streamed:
            seen.setdefault(entry.workout_id, []).append(entry.exercise)
        assert set(seen) == set(history)
        assert all(
            Shape(len(e), sum(len(x.sets) for x in e), sum(s.reps for x in e for s in x.sets))
            == history[i]
            for i, e in seen.items()
        )
        assert served.process.wait(timeout=40) == 0, served.logs()[-3000:]
        assert "Traceback" not in served.logs()

    sent = history | large_shapes
    stored = stored_shapes(url)
    assert set(stored) == set(sent)
    assert_whole(stored, sent)
    if url.startswith("sqlite"):
        assert sqlite_integrity(url) == "ok"


def test_sigkill_during_large_syncs_loses_no_acknowledged_batch_and_retries_store_each_once(
    url, tmp_path
):
    rng = random.Random(4242)
    env = cli_env(named(url, KILLED), REPWISE_JWT_SECRET=SECRET)
    clients = 2
    batches: list[list[list[log_pb2.Workout]]] = [[] for _ in range(clients)]
    sent: dict[str, Shape] = {}
    for c in range(clients):
        for b in range(2):
            first = NOW - timedelta(days=400 - 30 * b + c)
            workouts, shapes = batch_of(rng, 500, first, exercises=2, sets=3)
            batches[c].append(workouts)
            sent |= shapes
    acked: list[list[int]] = [[] for _ in range(clients)]
    in_flight = [False] * clients
    cut: list[grpc.StatusCode] = []

    with serving(env, tmp_path) as served:
        logs = log_pb2_grpc.LogServiceStub(served.channel)
        tokens, user_ids = zip(
            *(sign_up(served.channel, f"kill-{c}@example.com") for c in range(clients)), strict=True
        )

        def send(c: int) -> None:
            for b, workouts in enumerate(batches[c]):
                in_flight[c] = True
                try:
                    response = sync(logs, tokens[c], workouts)
                except grpc.RpcError as error:
                    cut.append(error.code())
                    return
                finally:
                    in_flight[c] = False
                assert {r.outcome for r in response.results} == {CREATED}
                acked[c].append(b)

        threads = [threading.Thread(target=send, args=(c,)) for c in range(clients)]
        for thread in threads:
            thread.start()
        assert wait_until(lambda: any(acked), 60), "no batch was ever acknowledged"
        time.sleep(rng.uniform(0, 0.5))  # a seeded moment within the load
        killed = kill_when(
            served.process,
            lambda: any(in_flight) and workout_write_in_progress(url, user_ids),
            30,
            url=url,
            name=KILLED,
        )
        assert killed, "no batch was in flight to be killed"
        assert served.process.wait(timeout=10) == -signal.SIGKILL
        for thread in threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in threads)

    # The kill cut at least one call, with a retryable status.
    assert cut and set(cut) == {grpc.StatusCode.UNAVAILABLE}, cut
    all_batches = [[w.id for w in workouts] for client in batches for workouts in client]
    stored = stored_shapes(url)
    assert_whole(stored, sent)
    batches_all_or_nothing(stored, all_batches)
    for c in range(clients):
        for b in acked[c]:
            assert all(w.id in stored for w in batches[c][b]), "an acknowledged batch was lost"
    if url.startswith("sqlite"):
        assert sqlite_integrity(url) == "ok"

    again = tmp_path / "restarted"
    again.mkdir()
    with serving(env, again) as served:
        logs = log_pb2_grpc.LogServiceStub(served.channel)
        for c in range(clients):
            for b, workouts in enumerate(batches[c]):
                outcomes = {r.outcome for r in sync(logs, tokens[c], workouts).results}
                expected = {UNCHANGED} if all(w.id in stored for w in workouts) else {CREATED}
                assert outcomes == expected, (c, b, outcomes)
    final = stored_shapes(url)
    assert set(final) == set(sent)
    assert_whole(final, sent)
    if url.startswith("sqlite"):
        assert sqlite_integrity(url) == "ok"
