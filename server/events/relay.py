"""The outbox relay: delivers the events that workout changes wrote to the outbox.

One thread per server process (each `serve --workers N` worker runs its own), woken at once
after a local commit that wrote events and every poll interval otherwise (events written by
other processes: other workers, replicas, `repwise import`). A pass takes the oldest
unpublished events, delivers them and marks them published. On PostgreSQL it claims them
with FOR UPDATE SKIP LOCKED until its commit, so relays never deliver the same event twice in
normal operation.

- AMQP (a publisher given): persistent messages with publisher confirms; events are marked
  published only after the broker confirmed them all. A broker error rolls the pass back
  (the events stay pending) and the relay reconnects with backoff.
- In-process (no publisher): the metrics consumer applies them in the very transaction that
  marks them published, each user's in a savepoint: events that fail stay pending and are
  parked after MAX_ATTEMPTS passes, so they never hold back other users' events. On SQLite
  the summaries are computed before that (write) transaction, in a read one.

At least once both ways: a crash after the broker's confirm and before the commit publishes
the events again; consumers count each event once (server/events/consumer.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from server import metrics
from server.db import Database
from server.events import amqp, consumer, outbox
from server.events import repository as repo

log = logging.getLogger(__name__)

# Events delivered per pass (and per transaction).
BATCH = 100
# After a pass that delivered events the relay pauses, twice as long as the pass took (at
# least the minimum): under load more events gather meanwhile, each user's are applied with
# one recomputation, and delivery takes at most about a third of the process's time.
MIN_PAUSE_SECONDS = 0.1
# The backlog is measured for the metrics at most this often.
REPORT_EVERY_SECONDS = 1.0
# An idle relay answers the broker's heartbeats this often (brokers expect one a minute).
KEEP_ALIVE_SECONDS = 15.0
PRUNE_EVERY_SECONDS = 3600
# In-process deliveries an event may fail before it is parked (set aside, with its error).
MAX_ATTEMPTS = 5
# After a failure: first delay, doubling up to the last.
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0


class Relay:
    def __init__(
        self,
        db: Database,
        *,
        publisher: amqp.Publisher | None,
        now: Callable[[], datetime],
        poll_seconds: float,
        retention: timedelta,
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.now = now
        self.poll_seconds = poll_seconds
        self.retention = retention
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0
        self._next_report = 0.0

    def start(self) -> None:
        self._wake.set()  # a first pass at once: events may be waiting from before
        self._thread = threading.Thread(target=self._run, name="repwise-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # stuck on the broker; its connection is the thread's to close
        if self.publisher is not None:
            self.publisher.close()

    def wake(self) -> None:
        """A local commit wrote events: deliver them now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while not self._stopping.is_set():
            self._wake.clear()  # commits from here on wake the next pass
            started = time.monotonic()
            try:
                delivered = self._drain()
                self._prune()
            except Exception as error:
                if self.publisher is not None:
                    self.publisher.close()
                log.warning(
                    "outbox relay failed (%s); events stay pending, retrying in %.1f s",
                    amqp.failure(error), delay,
                )  # fmt: skip
                self._report(force=True)
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            if delay > RETRY_FIRST_SECONDS:
                log.info("outbox relay delivering again")
                delay = RETRY_FIRST_SECONDS
            self._report(force=not delivered)
            if delivered:
                pause = max(MIN_PAUSE_SECONDS, 2 * (time.monotonic() - started))
                if self._stopping.wait(pause):
                    return
            self._idle()

    def _idle(self) -> None:
        """Wait for a wake or the poll interval, keeping the broker connection alive."""
        deadline = time.monotonic() + self.poll_seconds
        self._keep_alive()
        while not self._wake.wait(min(KEEP_ALIVE_SECONDS, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                return
            self._keep_alive()

    def _keep_alive(self) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.keep_alive()
        except Exception as error:  # the next pass connects again
            log.info("broker connection lost while idle (%s)", amqp.failure(error))
            self.publisher.close()

    def _drain(self) -> int:
        """Deliver batches until one comes back short; how many events were delivered."""
        total = 0
        while not self._stopping.is_set():
            delivered = self.run_pass()
            if delivered:
                metrics.outbox_published(delivered)
            total += delivered
            if delivered < BATCH:
                break
        return total

    def run_pass(self) -> int:
        """Deliver the oldest pending events (up to BATCH); how many were delivered."""
        if not self.db.is_sqlite:
            return self.db.run(self._deliver_claimed, honour_deadline=False)
        # SQLite has one writer: look without its write lock, publish or compute the
        # summaries outside it too, then apply and mark in a short write. (A relay in another
        # process may deliver the same events meanwhile: consumers count each event once.)
        batch = self.db.run(lambda s: repo.pending(s, BATCH, claim=False), write=False)
        if not batch:
            return 0
        if self.publisher is None:
            now = self.now()
            users = {event.user_id for event in batch}
            computed, failed = self.db.run(
                lambda s: consumer.compute_summaries(s, users, now), write=False
            )
            return self.db.run(
                lambda s: self._apply(s, batch, now, computed, dict(failed)),
                honour_deadline=False,
            )
        self.publisher.publish(batch)
        self.db.run(lambda s: self._mark(s, batch), honour_deadline=False)
        return len(batch)

    def _deliver_claimed(self, s: Session) -> int:
        batch = repo.pending(s, BATCH, claim=True)
        if not batch:
            return 0
        if self.publisher is None:
            return self._apply(s, batch, self.now(), None, {})
        self.publisher.publish(batch)
        self._mark(s, batch)
        return len(batch)

    def _apply(
        self,
        s: Session,
        batch: list[outbox.Event],
        now: datetime,
        computed: dict[str, consumer.Computed] | None,
        failed: dict[str, Exception],
    ) -> int:
        """Apply in-process and mark published, each user's events in a savepoint of their
        own: a user whose events fail keeps them pending (parked after MAX_ATTEMPTS) and
        holds back nobody else. How many events were delivered."""
        by_user: dict[str, list[outbox.Event]] = {}
        for event in batch:
            by_user.setdefault(event.user_id, []).append(event)
        for user_id, events in sorted(by_user.items()):  # user order: no deadlocks
            if user_id in failed:
                continue
            try:
                with s.begin_nested():
                    consumer.apply_events(s, events, now, computed=computed)
            except Exception as error:
                if consumer.transient(error):
                    raise
                failed[user_id] = error
        delivered = [event for event in batch if event.user_id not in failed]
        self._mark(s, delivered)
        for user_id, failure in failed.items():
            ids = [event.id for event in by_user[user_id]]
            reason = amqp.failure(failure)
            parked = repo.record_failure(s, ids, reason, now, MAX_ATTEMPTS)
            log.error("applying events %s failed (%s)", ids, reason)
            if parked:
                log.error("parked %d events of user %s after %d attempts", parked, user_id,
                          MAX_ATTEMPTS)  # fmt: skip
                metrics.outbox_parked(parked)
        return len(delivered)

    def _mark(self, s: Session, batch: list[outbox.Event]) -> None:
        repo.mark_published(s, [event.id for event in batch], self.now())

    def _prune(self) -> None:
        """Now and then, delete published events (and inbox rows) past the retention."""
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        before = self.now() - self.retention
        deleted = 1
        while deleted and not self._stopping.is_set():
            deleted = self.db.run(lambda s: repo.prune(s, before), honour_deadline=False)

    def _report(self, *, force: bool) -> None:
        """The backlog, for the metrics (unless measured less than a second ago and not
        `force`); skipped while the database is unreachable."""
        if not force and time.monotonic() < self._next_report:
            return
        self._next_report = time.monotonic() + REPORT_EVERY_SECONDS
        try:
            pending, oldest = self.db.run(repo.backlog, write=False)
        except Exception:
            log.debug("outbox backlog unknown", exc_info=True)
            return
        lag = (self.now() - oldest).total_seconds() if oldest is not None else 0.0
        metrics.outbox_state(pending, max(0.0, lag))
