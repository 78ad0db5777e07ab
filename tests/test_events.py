"""Workout events: the outbox written with every change, its relay (in-process and through
the real RabbitMQ broker) and the materialized summary GetSummary returns.

The AMQP tests need RabbitMQ at REPWISE_TEST_AMQP_URL (default: guest on 127.0.0.1:5672);
each uses an exchange and queues of its own, deleted at teardown.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from sqlalchemy import inspect, select

from client_sdk import RepwiseClient
from repwise.v1 import auth_pb2, common_pb2, log_pb2
from server import idempotency
from server.auth.models import User
from server.catalog.sources import seed_default_catalog
from server.config import ConfigError, Settings
from server.db import Database, utcnow
from server.events import consumer as events_consumer
from server.events import outbox
from server.events import repository as events_repo
from server.events.amqp import Publisher
from server.events.consumer import apply_events
from server.events.models import OutboxEvent, ProcessedEvent, UserMetrics
from server.events.relay import MAX_ATTEMPTS, Relay
from server.logs.import_command import run_import
from tests.conftest import PASSWORD, FakeClock, Running, bearer, register, rpc_error, start_server

AMQP_URL = os.environ.get("REPWISE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
WAIT_SECONDS = 30.0
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)  # a Wednesday
T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------------


def eventually(check: Callable[[], T], what: str, timeout: float = WAIT_SECONDS) -> T:
    """Poll `check` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}")
        time.sleep(0.02)


def workout(
    start: datetime,
    sets: tuple[tuple[int, float], ...] = ((5, 100.0),),
    *,
    warmups: int = 0,
    exercise: str = "barbell-bench-press",
    workout_id: str | None = None,
) -> log_pb2.Workout:
    message = log_pb2.Workout(id=workout_id or str(uuid.uuid4()))
    message.start_time.FromDatetime(start)
    performed = message.exercises.add(exercise_id=exercise)
    for _ in range(warmups):
        performed.sets.add(reps=10, weight=20, kind=log_pb2.SET_KIND_WARMUP)
    for reps, weight in sets:
        performed.sets.add(reps=reps, weight=weight)
    return message


def create(server: Running, md: Any, message: log_pb2.Workout, **fields: Any) -> log_pb2.Workout:
    request = log_pb2.CreateWorkoutRequest(workout=message, **fields)
    return server.logs.CreateWorkout(request, metadata=md).workout


def events_of(db: Database, user_id: str) -> list[OutboxEvent]:
    return db.run(
        lambda s: list(
            s.scalars(
                select(OutboxEvent).where(OutboxEvent.user_id == user_id).order_by(OutboxEvent.id)
            )
        ),
        write=False,
    )


def processed(db: Database, user_id: str) -> set[int]:
    """Ids of the events the metrics consumer has applied for the user."""
    return set(
        db.run(
            lambda s: s.scalars(
                select(ProcessedEvent.event_id).where(ProcessedEvent.user_id == user_id)
            ).all(),
            write=False,
        )
    )


def kinds(db: Database, user_id: str) -> list[tuple[str, str]]:
    return [(e.kind, e.workout_id) for e in events_of(db, user_id)]


def summary(server: Running, md: Any, **fields: Any) -> log_pb2.GetSummaryResponse:
    return server.logs.GetSummary(log_pb2.GetSummaryRequest(**fields), metadata=md)


def fresh_summary(server: Running, md: Any, workouts: int) -> log_pb2.GetSummaryResponse:
    """GetSummary once it reflects the caller's latest change and counts `workouts`."""

    last: list[log_pb2.GetSummaryResponse] = []

    def check() -> log_pb2.GetSummaryResponse | None:
        last[:] = [summary(server, md)]
        answer = last[0]
        done = (
            answer.latest_change_seq > 0
            and answer.applied_change_seq == answer.latest_change_seq
            and answer.total_workouts == workouts
        )
        return answer if done else None

    try:
        return eventually(check, f"a summary of {workouts} workouts")
    except AssertionError as error:
        raise AssertionError(f"{error}; the summary: {last}") from None


def assert_matches_stats(server: Running, md: Any, got: log_pb2.GetSummaryResponse) -> None:
    """The summary equals a recount: GetStats, and the sets of every live workout."""
    stats = server.logs.GetStats(log_pb2.GetStatsRequest(), metadata=md)
    assert got.activity == stats.activity
    assert got.record_count == len(stats.records)
    listed = server.logs.ListWorkouts(log_pb2.ListWorkoutsRequest(page_size=200), metadata=md)
    working = [
        item
        for w in listed.workouts
        for p in w.exercises
        for item in p.sets
        if item.kind != log_pb2.SET_KIND_WARMUP
    ]
    assert got.total_workouts == len(listed.workouts)
    assert got.total_sets == len(working)
    assert got.total_volume == pytest.approx(sum(s.weight * s.reps for s in working))
    if listed.workouts:
        assert got.last_workout_time == max(
            (w.start_time for w in listed.workouts), key=lambda t: t.ToDatetime()
        )


def signed_in(server: Running) -> tuple[Any, str]:
    answer = register(server)
    return bearer(answer.access_token), answer.user.id


@pytest.fixture
def logged(server: Running, clock: FakeClock) -> tuple[Running, Any, str]:
    """The in-process server with the catalog, a signed-in user and a frozen clock."""
    clock.freeze(NOW)
    seed_default_catalog(server.server.db, clock)
    md, user_id = signed_in(server)
    return server, md, user_id


# --- the broker -----------------------------------------------------------------------------


@contextlib.contextmanager
def channel() -> Iterator[BlockingChannel]:
    """A channel of the test's own on the broker."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPConnectionError as error:
        pytest.fail(f"RabbitMQ is required at {AMQP_URL}: {error!r}")
    try:
        yield connection.channel()
    finally:
        connection.close()


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    """An exchange, the server's queue and a tap queue of this test's own, deleted after."""
    tag = uuid.uuid4().hex[:12]
    made = {
        "amqp_exchange": f"repwise.test.{tag}",
        "amqp_queue": f"repwise.test.{tag}.metrics",
        "tap": f"repwise.test.{tag}.tap",
    }
    yield made
    with channel() as ch:
        ch.queue_delete(made["amqp_queue"])
        ch.queue_delete(made["tap"])
        ch.exchange_delete(made["amqp_exchange"])


def tap(ch: BlockingChannel, names: dict[str, str]) -> None:
    """Bind the test's own queue to the server's exchange: it receives every event too."""
    ch.exchange_declare(names["amqp_exchange"], exchange_type="topic", durable=True)
    ch.queue_declare(names["tap"], durable=True)
    ch.queue_bind(names["tap"], names["amqp_exchange"], routing_key=outbox.WORKOUT_EVENTS)


def next_message(ch: BlockingChannel, queue: str) -> tuple[Any, Any, bytes]:
    def get() -> tuple[Any, Any, bytes] | None:
        method, properties, body = ch.basic_get(queue, auto_ack=True)
        return (method, properties, body) if method is not None else None

    return eventually(get, f"a message in {queue}")


@contextlib.contextmanager
def amqp_server(
    db: Database, clock: FakeClock, names: dict[str, str], url: str = AMQP_URL
) -> Iterator[Running]:
    running = start_server(
        db,
        clock,
        amqp_url=url,
        amqp_exchange=names["amqp_exchange"],
        amqp_queue=names["amqp_queue"],
    )
    try:
        yield running
    finally:
        running.channel.close()
        running.server.stop(grace=0)


class Forwarder:
    """A TCP forwarder from a local port to the broker: the broker, reachable at last."""

    def __init__(self, listener: socket.socket) -> None:
        parts = urlsplit(AMQP_URL)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.listener = listener
        self.listener.listen()
        self.listener.settimeout(0.1)
        self.sockets: list[socket.socket] = []
        self.stopping = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def refusing_socket() -> socket.socket:
    """A bound socket not listening yet: connections to its port are refused, and no other
    process can take the port before a Forwarder listens on it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# --- the outbox -----------------------------------------------------------------------------


def test_every_workout_change_writes_one_event_and_nothing_else_does(logged, tmp_path):
    server, md, user_id = logged
    db = server.server.db
    first = workout(NOW - timedelta(days=2), workout_id=str(uuid.uuid4()))
    stored = create(server, md, first, request_id=str(uuid.uuid4()))
    assert kinds(db, user_id) == [(outbox.CREATED, first.id)]

    # Retries, refusals and no-op changes write nothing.
    create(server, md, first)  # the same workout again: a retry
    stale = log_pb2.Workout()
    stale.CopyFrom(stored)
    stale.etag, stale.title = "stale", "changed"
    for call, request in (
        (server.logs.CreateWorkout, log_pb2.CreateWorkoutRequest(
            workout=workout(NOW, exercise="no-such-exercise"))),
        (server.logs.CreateWorkout, log_pb2.CreateWorkoutRequest(
            workout=workout(NOW, workout_id=first.id, sets=((1, 1),)))),  # id taken
        (server.logs.UpdateWorkout, log_pb2.UpdateWorkoutRequest(workout=stale)),
        (server.logs.DeleteWorkout, log_pb2.DeleteWorkoutRequest(id=str(uuid.uuid4()))),
    ):  # fmt: skip
        rpc_error(call, request, metadata=md)
    server.logs.UpdateWorkout(log_pb2.UpdateWorkoutRequest(workout=stored), metadata=md)
    assert kinds(db, user_id) == [(outbox.CREATED, first.id)]

    stored.title = "Push"
    updated = server.logs.UpdateWorkout(
        log_pb2.UpdateWorkoutRequest(workout=stored), metadata=md
    ).workout
    server.logs.DeleteWorkout(
        log_pb2.DeleteWorkoutRequest(id=first.id, etag=updated.etag), metadata=md
    )
    second, third = create(server, md, workout(NOW)), create(server, md, workout(NOW))
    third.title = "changed"
    synced = server.logs.SyncWorkouts(
        log_pb2.SyncWorkoutsRequest(
            upserts=[
                new := workout(NOW - timedelta(days=1)),
                third,  # updated
                second,  # unchanged
                workout(NOW, exercise="no-such-exercise"),  # invalid
            ],
            deletes=[second.id, first.id, str(uuid.uuid4())],  # deleted, already, unknown
        ),
        metadata=md,
    )
    assert [r.outcome for r in synced.results] == [
        log_pb2.SYNC_OUTCOME_CREATED, log_pb2.SYNC_OUTCOME_UPDATED,
        log_pb2.SYNC_OUTCOME_UNCHANGED, log_pb2.SYNC_OUTCOME_INVALID,
        log_pb2.SYNC_OUTCOME_DELETED, log_pb2.SYNC_OUTCOME_DELETED,
        log_pb2.SYNC_OUTCOME_UNCHANGED,
    ]  # fmt: skip

    # Imports: each new workout once; importing the same file again adds nothing.
    csv = tmp_path / "strong.csv"
    csv.write_text(
        "Date,Workout Name,Duration,Exercise Name,Set Order,Weight,Reps,Distance,Seconds,"
        "Notes,Workout Notes,RPE\n"
        '2026-11-20 18:30:00,"Push",1h,"Bench Press (Barbell)",1,100,5,0,0,"","",\n'
        '2026-11-21 18:30:00,"Legs",1h,"Squat (Barbell)",1,140,3,0,0,"","",\n'
    )
    email = server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=md).user.email
    for _ in range(2):
        run_import(db, server.server.catalog, server.server.logs, "strong", csv, email,
                   out=io.StringIO())  # fmt: skip

    rows = events_of(db, user_id)
    imported = [r.workout_id for r in rows[-2:]]
    assert [(r.kind, r.workout_id) for r in rows] == [
        (outbox.CREATED, first.id),
        (outbox.UPDATED, first.id),
        (outbox.DELETED, first.id),
        (outbox.CREATED, second.id),
        (outbox.CREATED, third.id),
        (outbox.CREATED, new.id),
        (outbox.UPDATED, third.id),
        (outbox.DELETED, second.id),
        (outbox.CREATED, imported[0]),
        (outbox.CREATED, imported[1]),
    ]
    # Each event carries its change's number in the user's feed, and the workout's state.
    assert [r.change_seq for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0].payload == {"started_at": (NOW - timedelta(days=2)).isoformat(), "version": 1}
    assert rows[2].payload["version"] == 3


def test_a_change_rolled_back_leaves_no_event(logged, monkeypatch):
    server, md, user_id = logged

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the disk filled up after the insert")

    # The failure comes after the workout and its event were written, in the same transaction.
    monkeypatch.setattr(idempotency, "remember", fail)
    message = workout(NOW)
    error = rpc_error(
        server.logs.CreateWorkout,
        log_pb2.CreateWorkoutRequest(workout=message, request_id=str(uuid.uuid4())),
        metadata=md,
    )
    assert error.code() == grpc.StatusCode.INTERNAL
    assert events_of(server.server.db, user_id) == []
    missing = rpc_error(
        server.logs.GetWorkout, log_pb2.GetWorkoutRequest(id=message.id), metadata=md
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND


# --- the summary, delivered in-process -----------------------------------------------------


def test_get_summary_before_any_event_and_its_errors(logged):
    server, md, _ = logged
    server.auth.UpdateMe(_update_me(time_zone="Europe/Paris", weekly_workout_goal=4), metadata=md)
    got = summary(server, md, weight_unit=common_pb2.WEIGHT_UNIT_LB)
    assert (got.total_workouts, got.total_sets, got.record_count, got.events_applied) == (0,) * 4
    assert (got.applied_change_seq, got.latest_change_seq) == (0, 0)
    assert not got.HasField("update_time") and not got.HasField("last_workout_time")
    assert got.activity.time_zone == "Europe/Paris" and got.activity.weekly_goal == 4
    assert got.weight_unit == common_pb2.WEIGHT_UNIT_LB

    error = rpc_error(server.logs.GetSummary, log_pb2.GetSummaryRequest())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = rpc_error(server.logs.GetSummary, log_pb2.GetSummaryRequest(weight_unit=7), metadata=md)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "weight_unit" in error.details()


def _update_me(**fields: Any) -> auth_pb2.UpdateMeRequest:
    return auth_pb2.UpdateMeRequest(
        user=auth_pb2.User(**fields), update_mask={"paths": list(fields)}
    )


def test_in_process_delivery_updates_the_summary_after_create(logged):
    server, md, user_id = logged
    for days_ago in (2, 1, 0):
        create(server, md, workout(NOW - timedelta(days=days_ago, hours=1)))
    got = fresh_summary(server, md, workouts=3)
    assert got.activity.current_days == 3 and got.activity.longest_days == 3
    assert got.events_applied == 3 and got.latest_change_seq == 3
    assert got.update_time.ToDatetime(UTC) == NOW
    assert_matches_stats(server, md, got)
    assert all(e.published_at == NOW for e in events_of(server.server.db, user_id))


def test_summary_equals_a_recount_after_edits_and_deletes(logged):
    server, md, _ = logged
    made = [
        create(server, md, workout(NOW - timedelta(days=d), ((5, 100 + d), (3, 110)), warmups=1))
        for d in (9, 8, 6, 5, 4, 3, 1, 0)
    ]
    # Move one workout to another day, delete two (one through sync), log another by sync.
    moved = made[2]
    moved.start_time.FromDatetime(NOW - timedelta(days=15))
    moved.exercises[0].sets.add(reps=1, weight=150)  # a new heaviest set
    server.logs.UpdateWorkout(log_pb2.UpdateWorkoutRequest(workout=moved), metadata=md)
    server.logs.DeleteWorkout(log_pb2.DeleteWorkoutRequest(id=made[6].id), metadata=md)
    synced = server.logs.SyncWorkouts(
        log_pb2.SyncWorkoutsRequest(
            upserts=[workout(NOW - timedelta(days=2), ((8, 60),), exercise="barbell-back-squat")],
            deletes=[made[7].id],
        ),
        metadata=md,
    )
    assert [r.outcome for r in synced.results] == [
        log_pb2.SYNC_OUTCOME_CREATED, log_pb2.SYNC_OUTCOME_DELETED,
    ]  # fmt: skip
    got = fresh_summary(server, md, workouts=7)
    assert got.events_applied == 8 + 4
    assert got.activity.current_days == 0  # today and yesterday were deleted
    assert got.activity.longest_days == 4  # days 5..2 ago
    assert_matches_stats(server, md, got)
    in_lb = summary(server, md, weight_unit=common_pb2.WEIGHT_UNIT_LB)
    assert in_lb.total_volume == pytest.approx(got.total_volume / 0.45359237)


def test_streaks_age_with_time_as_get_stats_says(logged, clock):
    server, md, _ = logged
    server.auth.UpdateMe(_update_me(weekly_workout_goal=2), metadata=md)
    for days_ago in (9, 8, 3, 2, 1):  # two weeks meeting the goal, then a streak of days
        create(server, md, workout(NOW - timedelta(days=days_ago)))
    before = fresh_summary(server, md, workouts=5)
    assert before.activity.current_days == 3 and before.activity.current_weeks == 2
    email = server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=md).user.email
    for hours in (12, 24, 36, 60, 24 * 5, 24 * 12, 24 * 20):
        clock.freeze(NOW + timedelta(hours=hours))
        login = server.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
        md = bearer(login.access_token)
        got = summary(server, md)
        # No event since: the same materialized values, aged to the new day and week.
        assert (got.events_applied, got.update_time) == (before.events_applied, before.update_time)
        assert_matches_stats(server, md, got)


def test_the_sdk_reads_the_summary(logged, tmp_path):
    server, _, _ = logged
    with RepwiseClient(server.target, cache_dir=tmp_path) as client:
        client.register(f"sdk-{uuid.uuid4().hex[:8]}@example.com", PASSWORD)
        client.create_workout(workout(NOW, ((5, 100.0), (5, 100.0))))
        got = eventually(
            lambda: (
                (answer := client.get_summary(common_pb2.WEIGHT_UNIT_KG)).total_workouts and answer
            ),
            "the SDK's summary",
        )
    assert got.total_sets == 2 and got.total_volume == 1000
    assert got.applied_change_seq == got.latest_change_seq == 1


# --- the summary, delivered through RabbitMQ ------------------------------------------------


def test_a_workout_reaches_the_summary_through_the_broker_once(db, clock, names):
    clock.freeze(NOW)
    seed_default_catalog(db, clock)
    with channel() as ch, amqp_server(db, clock, names) as server:
        tap(ch, names)
        md, user_id = signed_in(server)
        first = create(server, md, workout(NOW - timedelta(days=1)))

        method, properties, body = next_message(ch, names["tap"])
        (event,) = events_of(db, user_id)
        assert method.routing_key == outbox.CREATED and properties.type == outbox.CREATED
        assert properties.message_id == str(event.id)
        assert properties.delivery_mode == pika.DeliveryMode.Persistent.value
        assert properties.content_type == "application/json"
        decoded = outbox.decode(body)
        assert (decoded.user_id, decoded.workout_id, decoded.change_seq) == (user_id, first.id, 1)

        got = fresh_summary(server, md, workouts=1)
        assert got.activity.current_days == 1 and got.events_applied == 1
        eventually(lambda: events_of(db, user_id)[0].published_at is not None, "published")

        # The broker delivers the same message again: it counts once. (Confirmed: queued
        # before the relay publishes the next event.)
        ch.confirm_delivery()
        ch.basic_publish(names["amqp_exchange"], method.routing_key, body, properties)
        # An event from the past arrives late (out of order): the summary stays exact.
        late = outbox.Event(
            id=10**12 + event.id, kind=outbox.UPDATED, user_id=user_id, workout_id=first.id,
            change_seq=0, occurred_at=NOW - timedelta(days=3), payload={},
        )  # fmt: skip
        ch.basic_publish(names["amqp_exchange"], late.kind, outbox.encode(late), properties)
        second = create(server, md, workout(NOW))
        (_, second_event) = events_of(db, user_id)
        # The copy is ahead of the late event in the queue: once the late event and the second
        # workout's are applied, the copy was seen too.
        eventually(lambda: {late.id, second_event.id} <= processed(db, user_id), "the late event")
        got = fresh_summary(server, md, workouts=2)
        assert got.events_applied == 3  # two workouts and the late event; not the copy
        assert processed(db, user_id) == {event.id, late.id, second_event.id}
        assert second_event.workout_id == second.id
        assert got.activity.current_days == 2
        assert_matches_stats(server, md, got)
        assert ch.queue_declare(names["amqp_queue"], passive=True).method.message_count == 0


def test_an_unreachable_broker_keeps_events_pending_until_it_is_back(db, clock, names, caplog):
    clock.freeze(NOW)
    seed_default_catalog(db, clock)
    refusing = refusing_socket()
    url = f"amqp://guest:guest@127.0.0.1:{refusing.getsockname()[1]}/%2F"
    caplog.set_level(logging.WARNING, logger="server.events")
    forwarder = None
    try:
        with amqp_server(db, clock, names, url) as server:
            md, user_id = signed_in(server)
            logged = create(server, md, workout(NOW))  # logged whatever the broker does
            assert logged.id
            eventually(
                lambda: any("outbox relay failed" in r.getMessage() for r in caplog.records),
                "the relay to fail",
            )
            (event,) = events_of(db, user_id)
            assert event.published_at is None
            assert summary(server, md).events_applied == 0

            forwarder = Forwarder(refusing)  # the broker is reachable again
            got = fresh_summary(server, md, workouts=1)
            assert got.activity.current_days == 1 and got.events_applied == 1
            # Marked once the broker confirmed it (the consumer may have applied it already).
            eventually(lambda: events_of(db, user_id)[0].published_at is not None, "published")
    finally:
        if forwarder is not None:
            forwarder.close()
        refusing.close()


def test_relays_in_parallel_publish_every_event(db, names):
    """Two relays (two workers) on one outbox: every event reaches the broker; on PostgreSQL
    exactly once (claimed rows), on SQLite at least once (consumers skip copies)."""
    user_id = _user(db)
    _events_for(db, user_id, 250)
    relays = [
        Relay(
            db,
            publisher=Publisher(AMQP_URL, names["amqp_exchange"], names["amqp_queue"]),
            now=utcnow,
            poll_seconds=0.05,
            retention=timedelta(days=7),
        )
        for _ in range(2)
    ]
    for relay in relays:
        relay.start()
    try:
        eventually(lambda: db.run(events_repo.backlog, write=False)[0] == 0, "an empty outbox")
    finally:
        for relay in relays:
            relay.stop(timeout=10)
    with channel() as ch:
        ids = []
        while (got := ch.basic_get(names["amqp_queue"], auto_ack=True))[0] is not None:
            ids.append(int(got[1].message_id))
    published = sorted(e.id for e in events_of(db, user_id))
    assert sorted(set(ids)) == published
    if not db.is_sqlite:
        assert len(ids) == len(published)


def _user(db: Database) -> str:
    user_id = str(uuid.uuid4())

    def add(s: Any) -> None:
        s.add(
            User(
                id=user_id, email=f"{user_id}@example.com", password_hash="-", display_name="",
                created_at=NOW, updated_at=NOW, password_changed_at=NOW,
            )
        )  # fmt: skip

    db.run(add)
    return user_id


def test_pruning_keeps_pending_events_and_recent_ones(logged):
    server, md, user_id = logged
    db = server.server.db
    create(server, md, workout(NOW))
    fresh_summary(server, md, workouts=1)
    pending = outbox.workout_event(
        outbox.CREATED, user_id=user_id, workout_id=str(uuid.uuid4()), change_seq=99,
        started_at=NOW, version=1, occurred_at=NOW - timedelta(days=30),
    )  # fmt: skip
    server.server.relay.stop()  # so that this one stays pending
    db.run(lambda s: events_repo.add_events(s, [pending]))

    assert db.run(lambda s: events_repo.prune(s, NOW - timedelta(seconds=1))) == 0
    assert db.run(lambda s: events_repo.prune(s, NOW + timedelta(seconds=1))) == 2
    (left,) = events_of(db, user_id)
    assert left.published_at is None and left.change_seq == 99
    assert db.run(lambda s: s.scalars(select(ProcessedEvent)).all(), write=False) == []
    # The summary itself stays.
    assert db.run(lambda s: s.get(UserMetrics, user_id), write=False) is not None


def test_a_deleted_account_takes_its_events_and_summary_along(logged):
    server, md, user_id = logged
    db = server.server.db
    create(server, md, workout(NOW))
    fresh_summary(server, md, workouts=1)
    server.auth.DeleteAccount(auth_pb2.DeleteAccountRequest(password=PASSWORD), metadata=md)
    assert events_of(db, user_id) == [] and processed(db, user_id) == set()
    assert db.run(lambda s: s.get(UserMetrics, user_id), write=False) is None
    # An event still on its way (in the broker) for the deleted user is skipped.
    late = outbox.Event(
        id=10**12, kind=outbox.CREATED, user_id=user_id, workout_id=str(uuid.uuid4()),
        change_seq=2, occurred_at=NOW, payload={},
    )  # fmt: skip
    applied = db.run(lambda s: apply_events(s, [late], NOW))
    assert (applied.applied, applied.skipped) == (0, 1)
    assert processed(db, user_id) == set()


def _events_for(db: Database, user_id: str, count: int) -> list[int]:
    """Write `count` pending events for the user; their ids."""
    rows = [
        outbox.workout_event(
            outbox.CREATED, user_id=user_id, workout_id=str(uuid.uuid4()), change_seq=i,
            started_at=NOW, version=1, occurred_at=NOW,
        )
        for i in range(1, count + 1)
    ]  # fmt: skip
    db.run(lambda s: events_repo.add_events(s, rows))
    return [e.id for e in events_of(db, user_id)][-count:]


def break_history_of(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    """Computing this user's summary raises, as a bug their data triggers would."""
    real = events_consumer.stat_history

    def stat_history(s: Any, user_id: str, until: datetime) -> Any:
        if user_id == bad:
            raise RuntimeError("a bug that only this user's history triggers")
        return real(s, user_id, until)

    monkeypatch.setattr(events_consumer, "stat_history", stat_history)


def test_events_no_queue_takes_stay_pending_until_the_queue_is_back(db, names):
    user_id = _user(db)
    relay = Relay(
        db,
        publisher=Publisher(AMQP_URL, names["amqp_exchange"], names["amqp_queue"]),
        now=utcnow,
        poll_seconds=60,
        retention=timedelta(days=7),
    )
    try:
        _events_for(db, user_id, 1)
        assert relay.run_pass() == 1  # the publisher declared the queue
        with channel() as ch:
            ch.queue_delete(names["amqp_queue"])  # someone deletes it mid-run
        (lost,) = _events_for(db, user_id, 1)
        # The broker confirms an unroutable message too: publishing must fail instead.
        with pytest.raises(pika.exceptions.UnroutableError):
            relay.run_pass()
        assert events_of(db, user_id)[-1].published_at is None

        relay.publisher.close()  # as the relay does after a failure: reconnect, declare
        assert relay.run_pass() == 1
        assert events_of(db, user_id)[-1].published_at is not None
        with channel() as ch:
            method, properties, _ = ch.basic_get(names["amqp_queue"], auto_ack=True)
        assert method is not None and properties.message_id == str(lost)
    finally:
        relay.publisher.close()


def test_an_event_failing_to_apply_holds_back_no_one_and_is_parked(db, monkeypatch):
    bad, good = _user(db), _user(db)
    bad_ids = _events_for(db, bad, 2)  # older than the good user's: first in the batch
    (good_id,) = _events_for(db, good, 1)
    break_history_of(monkeypatch, bad)
    relay = Relay(db, publisher=None, now=utcnow, poll_seconds=60, retention=timedelta(days=7))
    assert relay.run_pass() == 1
    assert processed(db, good) == {good_id} and processed(db, bad) == set()
    assert db.run(lambda s: s.get(UserMetrics, good), write=False).events_applied == 1
    failing = events_of(db, bad)
    assert [(e.published_at, e.attempts, e.parked_at) for e in failing] == [(None, 1, None)] * 2
    assert "RuntimeError: a bug" in (failing[0].error or "")

    for _ in range(MAX_ATTEMPTS - 1):
        assert relay.run_pass() == 0
    parked = events_of(db, bad)
    assert [e.id for e in parked if e.parked_at is not None] == bad_ids
    assert all(e.published_at is None and e.attempts == MAX_ATTEMPTS for e in parked)
    assert db.run(events_repo.backlog, write=False) == (0, None)
    (late,) = _events_for(db, good, 1)  # delivery goes on past the parked events
    assert relay.run_pass() == 1 and late in processed(db, good)


def test_summaries_are_computed_without_holding_the_write_lock(logged, monkeypatch):
    """A user's summary is computed while other writes go on (SQLite has one write lock); a
    change committed meanwhile is summarized by its own event."""
    server, md, _ = logged
    db = server.server.db
    server.server.relay.stop()  # driven by hand below
    create(server, md, workout(NOW - timedelta(days=1)))
    real = events_consumer.stat_history
    concurrent: list[bool] = []

    def stat_history(s: Any, user: str, until: datetime) -> Any:
        if not concurrent:
            writer = threading.Thread(target=create, args=(server, md, workout(NOW)))
            writer.start()
            writer.join(timeout=3)  # well under SQLite's 10 s busy timeout
            concurrent.append(not writer.is_alive())
        return real(s, user, until)

    monkeypatch.setattr(events_consumer, "stat_history", stat_history)
    relay = Relay(db, publisher=None, now=lambda: NOW, poll_seconds=60, retention=timedelta(1))
    assert relay.run_pass() == 1
    assert concurrent == [True]
    first = summary(server, md)
    assert (first.applied_change_seq, first.latest_change_seq, first.events_applied) == (1, 2, 1)

    assert relay.run_pass() == 1
    got = fresh_summary(server, md, workouts=2)
    assert got.events_applied == 2
    assert_matches_stats(server, md, got)


def test_bad_messages_on_the_queue_block_no_following_event(db, clock, names, monkeypatch):
    clock.freeze(NOW)
    seed_default_catalog(db, clock)
    huge = outbox.Event(
        id=2**70, kind=outbox.CREATED, user_id=str(uuid.uuid4()), workout_id=str(uuid.uuid4()),
        change_seq=1, occurred_at=NOW, payload={},
    )  # fmt: skip
    with pytest.raises(outbox.MalformedEvent):
        outbox.decode(outbox.encode(huge))
    with channel() as ch, amqp_server(db, clock, names) as server:
        md, _ = signed_in(server)
        bad_md, bad_user = signed_in(server)
        break_history_of(monkeypatch, bad_user)
        ch.confirm_delivery()
        for event in (huge, replace(huge, id=1, change_seq=-1), replace(huge, id=1, user_id=7)):
            ch.basic_publish(names["amqp_exchange"], huge.kind, outbox.encode(event))
        create(server, bad_md, workout(NOW))
        create(server, md, workout(NOW))
        got = fresh_summary(server, md, workouts=1)
        assert got.events_applied == 1
        assert processed(db, bad_user) == set()
        assert summary(server, bad_md).events_applied == 0

        def drained() -> bool:
            queue = ch.queue_declare(names["amqp_queue"], passive=True).method
            return queue.message_count == 0 and queue.consumer_count == 1

        eventually(drained, "the bad messages to be dropped, not requeued")


def test_account_deletion_finds_events_by_index(db):
    """ON DELETE CASCADE looks rows up by user_id: without an index, a scan per deletion."""
    inspector = inspect(db.engine)
    for table in ("outbox_events", "processed_events"):
        assert ["user_id"] in [index["column_names"] for index in inspector.get_indexes(table)]


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REPWISE_AMQP_URL", "http://127.0.0.1:5672/"),
        ("REPWISE_AMQP_URL", "amqp://127.0.0.1:port/"),
        ("REPWISE_AMQP_EXCHANGE", "amq.topic"),
        ("REPWISE_AMQP_QUEUE", "metrics queue"),
        ("REPWISE_OUTBOX_POLL_SECONDS", "0"),
        ("REPWISE_OUTBOX_POLL_SECONDS", "nan"),
        ("REPWISE_OUTBOX_RETENTION_DAYS", "-1"),
    ],
)
def test_bad_event_settings_are_refused_by_name(variable, value):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value}, need_secret=False)


def test_the_broker_password_stays_out_of_the_settings_repr():
    settings = Settings.from_env(
        {"REPWISE_AMQP_URL": "amqp://app:hunter2@broker:5672/%2F"}, need_secret=False
    )
    assert settings.amqp_url == "amqp://app:hunter2@broker:5672/%2F"
    assert "hunter2" not in repr(settings)
