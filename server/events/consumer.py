"""The metrics consumer: keeps each user's summary (server/events/summary.py) materialized
from workout events, counting each event once however often it is delivered.

`apply_events` is the whole of it, in the caller's transaction: the in-process relay calls
it in the transaction that marks the events published; `AmqpConsumer` calls it for each
batch of messages from the broker, and acknowledges them only once it has committed.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pika.adapters.blocking_connection import BlockingChannel
from sqlalchemy import exc
from sqlalchemy.orm import Session

from server import metrics
from server.auth import repository as auth_repository
from server.auth.models import User
from server.db import Database, is_retryable, is_unavailable
from server.events import amqp, outbox, summary
from server.events import repository as repo
from server.events.models import UserMetrics
from server.logs.service import MAX_FUTURE, stat_history

log = logging.getLogger(__name__)

# The consumer's name in processed_events; the same in both delivery modes, so switching
# between them never applies an event twice.
METRICS_CONSUMER = "user-metrics"
# Messages the broker hands over before they are acknowledged, and the largest batch.
PREFETCH = 200
# Reconnect after a failure: first delay, doubling up to the last.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
# How often a consumer with nothing to do checks whether it should stop.
IDLE_CHECK_SECONDS = 0.25


@dataclass(frozen=True)
class Applied:
    applied: int  # events applied for the first time
    skipped: int  # duplicates, and events of users deleted since
    recomputed: int  # users whose summary was computed again


@dataclass(frozen=True)
class Computed:
    """A user's summary, and the (latest change, time zone, goal) it was computed for."""

    key: tuple[int, str, int]
    result: summary.Summary


def apply_events(
    s: Session,
    events: Sequence[outbox.Event],
    now: datetime,
    consumer: str = METRICS_CONSUMER,
    computed: Mapping[str, Computed] | None = None,
) -> Applied:
    """Apply events in the caller's transaction.

    Each event is recorded in the consumer's inbox; one recorded before (a redelivery, or a
    copy another consumer is applying right now, which this one waits for) counts for
    nothing. Each user with a new event gets their summary recomputed from their live
    workouts, unless it already reflects their latest change: the result never depends on
    which events came, in which order, or how often.

    With `computed` (SQLite, from `compute_summaries` before the write lock) nothing is
    computed here: a user's summary is stored if it is newer than their row's.
    """
    unique = list({event.id: event for event in events}.values())
    users = repo.existing_users(s, (event.user_id for event in unique))
    new = repo.claim_events(s, consumer, [e for e in unique if e.user_id in users], now)
    per_user = Counter(event.user_id for event in unique if event.id in new)
    rows = repo.lock_metrics(s, per_user, now)
    recomputed = 0
    for user_id, count in sorted(per_user.items()):
        row = rows[user_id]
        recomputed += _refresh(s, row, now, computed)
        row.events_applied += count
        row.updated_at = now
    return Applied(applied=len(new), skipped=len(events) - len(new), recomputed=recomputed)


def transient(error: BaseException) -> bool:
    """An outage, or a conflict the whole transaction is retried for: no event's fault."""
    if isinstance(error, exc.DBAPIError) and is_retryable(error):
        return True
    return is_unavailable(error)


def compute_summaries(
    s: Session, user_ids: Iterable[str], now: datetime
) -> tuple[dict[str, Computed], dict[str, Exception]]:
    """The summaries of these users that need computing, in a read transaction (one
    snapshot), so that SQLite's only write lock is not held meanwhile; and the users whose
    computation failed, with the error (an outage is raised instead)."""
    computed: dict[str, Computed] = {}
    failed: dict[str, Exception] = {}
    for user_id in sorted(set(user_ids)):
        try:
            user = auth_repository.get_user(s, user_id)
            if user is None:
                continue
            key = _key(s, user)
            row = repo.metrics(s, user_id)
            if row is None or not _reflects(row, key):
                computed[user_id] = _compute(s, user, key, now)
        except Exception as error:
            if transient(error):
                raise
            failed[user_id] = error
    return computed, failed


def _key(s: Session, user: User) -> tuple[int, str, int]:
    # Read before the workouts: what they show is at least this change (docs/events.md).
    latest = repo.latest_change_seq(s, user.id)
    return latest, user.time_zone, max(1, user.weekly_workout_goal)  # as statistics count it


def _reflects(row: UserMetrics, key: tuple[int, str, int]) -> bool:
    return (row.applied_change_seq, row.time_zone, row.weekly_goal) == key


def _compute(s: Session, user: User, key: tuple[int, str, int], now: datetime) -> Computed:
    # Workouts a client logged ahead of this clock (up to a day) count as well.
    workouts, exercises = stat_history(s, user.id, now + MAX_FUTURE)
    _, time_zone, goal = key
    result = summary.summarize(workouts, exercises, time_zone=time_zone, weekly_goal=goal, now=now)
    return Computed(key, result)


def _refresh(
    s: Session, row: UserMetrics, now: datetime, computed: Mapping[str, Computed] | None
) -> bool:
    """Bring a (locked) summary up to date unless it reflects the user's latest change, time
    zone and goal already; True if a new one was stored."""
    user = auth_repository.get_user(s, row.user_id)
    assert user is not None  # share-locked by existing_users
    key = _key(s, user)
    if _reflects(row, key):
        return False
    if computed is None:
        ready = _compute(s, user, key, now)
    else:
        # Computed before this transaction. If the user changed something since, that
        # change's own event is on its way and computes again; meanwhile a summary newer
        # than the row's is still progress (and exact for the change it names).
        ready_or_none = computed.get(row.user_id)
        if ready_or_none is None:
            return False
        ready = ready_or_none
        if ready.key != key and ready.key[0] <= row.applied_change_seq:
            return False
    repo.store_summary(row, ready.result, ready.key[0])
    return True


class AmqpConsumer:
    """A thread consuming the metrics queue: each batch of messages is applied in one
    transaction and acknowledged after the commit, so a crash or a lost connection before
    then has the broker deliver them again (and the inbox skips what was committed)."""

    def __init__(
        self,
        db: Database,
        url: str,
        exchange: str,
        queue: str,
        now: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.url = url
        self.exchange = exchange
        self.queue = queue
        self.now = now
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="repwise-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while not self._stopping.is_set():
            try:
                self._consume()
            except Exception as error:
                log.warning(
                    "event consumer failed (%s); reconnecting to %s in %.1f s",
                    amqp.failure(error), amqp.describe(self.url), delay,
                )  # fmt: skip
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            else:
                delay = RETRY_FIRST_SECONDS

    def _consume(self) -> None:
        """Consume until stopped; raises on any broker or database error (unacknowledged
        messages go back to the queue when the connection closes)."""
        connection = amqp.connect(self.url)
        try:
            channel = connection.channel()
            amqp.declare(channel, self.exchange, self.queue)
            channel.basic_qos(prefetch_count=PREFETCH)
            log.info("consuming %s at %s", self.queue, amqp.describe(self.url))
            batch: list[tuple[int, bytes]] = []
            for method, _properties, body in channel.consume(
                self.queue, inactivity_timeout=IDLE_CHECK_SECONDS
            ):
                if self._stopping.is_set():
                    break
                if method is None:  # idle
                    continue
                batch.append((method.delivery_tag, body))
                # A batch is what has arrived: large under load, one message otherwise.
                if len(batch) >= PREFETCH or not channel.get_waiting_message_count():
                    self._handle(channel, batch)
                    batch = []
        finally:
            amqp.close(connection)

    def _handle(self, channel: BlockingChannel, batch: list[tuple[int, bytes]]) -> None:
        decoded: list[tuple[int, outbox.Event]] = []
        for tag, body in batch:
            try:
                decoded.append((tag, outbox.decode(body)))
            except outbox.MalformedEvent as error:
                self._reject(channel, tag, str(error))
        if not decoded:
            return
        try:
            self._apply([event for _, event in decoded])
        except Exception as error:
            if transient(error):
                raise
            # One bad event must not hold back the others: find it, and drop it.
            log.warning(
                "a batch of %d events failed (%s); applying them one by one",
                len(decoded), amqp.failure(error),
            )  # fmt: skip
            for tag, event in decoded:
                try:
                    self._apply([event])
                except Exception as error:
                    if transient(error):
                        raise
                    self._reject(channel, tag, f"event {event.id}: {amqp.failure(error)}")
                else:
                    channel.basic_ack(tag)
            return
        channel.basic_ack(decoded[-1][0], multiple=True)  # every earlier one is answered too

    def _apply(self, events: list[outbox.Event]) -> None:
        now = self.now()
        computed = None
        if self.db.is_sqlite:
            users = {event.user_id for event in events}
            computed, failed = self.db.run(lambda s: compute_summaries(s, users, now), write=False)
            if failed:
                raise next(iter(failed.values()))
        result = self.db.run(lambda s: apply_events(s, events, now, computed=computed))
        if result.skipped:
            log.info("skipped %d events already applied", result.skipped)

    @staticmethod
    def _reject(channel: BlockingChannel, tag: int, reason: str) -> None:
        """Never applicable: drop it (to a dead-letter exchange, if the queue has one)."""
        log.error("rejecting message %d: %s", tag, reason)
        metrics.events_rejected(1)
        channel.basic_reject(tag, requeue=False)
