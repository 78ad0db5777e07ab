"""Every query of the outbox, the consumers' inbox and the materialized summaries."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import delete, func, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from server.auth.models import User
from server.events import summary
from server.events.models import OutboxEvent, ProcessedEvent, UserMetrics
from server.events.outbox import Event
from server.logs import stats
from server.logs.models import ChangeCounter

# Rows one prune statement deletes, so pruning never holds long locks.
PRUNE_BATCH = 1000


def _insert(s: Session) -> Any:
    return postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert


# --- outbox -------------------------------------------------------------------------------


def add_events(s: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Write events (outbox_events rows without id and published_at) in one statement."""
    if rows:
        s.execute(insert(OutboxEvent).values(list(rows)))


def _event(row: OutboxEvent) -> Event:
    return Event(
        id=row.id,
        kind=row.kind,
        user_id=row.user_id,
        workout_id=row.workout_id,
        change_seq=row.change_seq,
        occurred_at=row.occurred_at,
        payload=row.payload,
    )


def pending(s: Session, limit: int, *, claim: bool) -> list[Event]:
    """The oldest unpublished events, parked ones aside. With `claim` (PostgreSQL), they stay
    locked until the transaction ends and other relays skip them, so no two publish the same
    event."""
    query = (
        select(OutboxEvent)
        .where(OutboxEvent.published_at.is_(None), OutboxEvent.parked_at.is_(None))
        .order_by(OutboxEvent.id)
        .limit(limit)
    )
    if claim:
        query = query.with_for_update(skip_locked=True)
    return [_event(row) for row in s.scalars(query)]


def mark_published(s: Session, ids: Collection[int], at: datetime) -> None:
    if ids:
        s.execute(update(OutboxEvent).where(OutboxEvent.id.in_(list(ids))).values(published_at=at))


def record_failure(
    s: Session, ids: Collection[int], error: str, at: datetime, park_after: int
) -> int:
    """Count a failed delivery of these events, with its error; those that have now failed
    `park_after` times are parked. How many were parked."""
    if not ids:
        return 0
    chosen = OutboxEvent.id.in_(list(ids))
    s.execute(
        update(OutboxEvent)
        .where(chosen)
        .values(attempts=OutboxEvent.attempts + 1, error=error[: OutboxEvent.error.type.length])
    )
    parked = s.execute(
        update(OutboxEvent)
        .where(chosen, OutboxEvent.attempts >= park_after, OutboxEvent.parked_at.is_(None))
        .values(parked_at=at)
    )
    return cast(CursorResult[Any], parked).rowcount


def backlog(s: Session) -> tuple[int, datetime | None]:
    """How many events wait to be published, and when the oldest of them happened (parked
    ones aside: they wait for an operator)."""
    count, oldest = s.execute(
        select(func.count(), func.min(OutboxEvent.occurred_at)).where(
            OutboxEvent.published_at.is_(None), OutboxEvent.parked_at.is_(None)
        )
    ).one()
    return int(count), oldest


def prune(s: Session, before: datetime) -> int:
    """Delete up to PRUNE_BATCH published events, and as many inbox rows, older than
    `before`; the number of rows deleted. Ids grow with time, so each scan stops early."""
    old_events = (
        select(OutboxEvent.id)
        .where(OutboxEvent.published_at < before)
        .order_by(OutboxEvent.id)
        .limit(PRUNE_BATCH)
    )
    old_processed = (
        select(ProcessedEvent.consumer, ProcessedEvent.event_id)
        .where(ProcessedEvent.processed_at < before)
        .limit(PRUNE_BATCH)
    )
    key = tuple_(ProcessedEvent.consumer, ProcessedEvent.event_id)
    deleted = 0
    for statement in (
        delete(OutboxEvent).where(OutboxEvent.id.in_(old_events)),
        delete(ProcessedEvent).where(key.in_(old_processed)),
    ):
        deleted += cast(CursorResult[Any], s.execute(statement)).rowcount
    return deleted


# --- consumers ----------------------------------------------------------------------------


def existing_users(s: Session, user_ids: Iterable[str]) -> set[str]:
    """Those of these users that still exist, share-locked (PostgreSQL) until the transaction
    ends: an account deleted meanwhile waits, so nothing is written for a user who is gone."""
    rows = s.execute(
        select(User.id)
        .where(User.id.in_(sorted(set(user_ids))))
        .order_by(User.id)
        .with_for_update(key_share=True)
    )
    return {user_id for (user_id,) in rows}


def claim_events(s: Session, consumer: str, events: Sequence[Event], at: datetime) -> set[int]:
    """Record events as processed by `consumer`; the ids of those not recorded before (the
    others are duplicates). A copy being processed at the same time waits for this one."""
    if not events:
        return set()
    statement = (
        _insert(s)(ProcessedEvent)
        .values(
            [
                {"consumer": consumer, "event_id": e.id, "user_id": e.user_id, "processed_at": at}
                for e in events
            ]
        )
        .on_conflict_do_nothing()
        .returning(ProcessedEvent.event_id)
    )
    return {event_id for (event_id,) in s.execute(statement)}


def lock_metrics(s: Session, user_ids: Iterable[str], now: datetime) -> dict[str, UserMetrics]:
    """The users' summaries, locked until commit (in user order, so two consumers never
    deadlock). A missing one is first created empty, as reflecting no change yet (-1), so
    that it is computed."""
    ordered = sorted(set(user_ids))
    if not ordered:
        return {}
    placeholder = {
        **summary_values(summary.empty("UTC", 1, now)),
        "applied_change_seq": -1,
        "events_applied": 0,
        "updated_at": now,
    }
    s.execute(
        _insert(s)(UserMetrics)
        .values([{**placeholder, "user_id": user_id} for user_id in ordered])
        .on_conflict_do_nothing()
    )
    rows = s.scalars(
        select(UserMetrics)
        .where(UserMetrics.user_id.in_(ordered))
        .order_by(UserMetrics.user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {row.user_id: row for row in rows}


def metrics(s: Session, user_id: str) -> UserMetrics | None:
    return s.get(UserMetrics, user_id)


def summary_values(result: summary.Summary) -> dict[str, Any]:
    """A summary as user_metrics column values."""
    a = result.activity
    return {
        "current_day_streak": a.current_days,
        "longest_day_streak": a.longest_days,
        "current_week_streak": a.current_weeks,
        "longest_week_streak": a.longest_weeks,
        "workouts_this_week": a.workouts_this_week,
        "weekly_goal": a.weekly_goal,
        "time_zone": a.time_zone,
        "total_workouts": result.total_workouts,
        "total_sets": result.total_sets,
        "total_volume_kg": result.total_volume_kg,
        "record_count": result.record_count,
        "last_workout_at": result.last_workout_at,
        "computed_at": result.computed_at,
    }


def store_summary(row: UserMetrics, result: summary.Summary, change_seq: int) -> None:
    """Put a summary reflecting the user's change `change_seq` in their (locked) row."""
    for name, value in summary_values(result).items():
        setattr(row, name, value)
    row.applied_change_seq = change_seq


def summary_of(row: UserMetrics) -> summary.Summary:
    return summary.Summary(
        activity=stats.ActivityStreaks(
            current_days=row.current_day_streak,
            longest_days=row.longest_day_streak,
            current_weeks=row.current_week_streak,
            longest_weeks=row.longest_week_streak,
            weekly_goal=row.weekly_goal,
            workouts_this_week=row.workouts_this_week,
            time_zone=row.time_zone,
        ),
        total_workouts=row.total_workouts,
        total_sets=row.total_sets,
        total_volume_kg=row.total_volume_kg,
        record_count=row.record_count,
        last_workout_at=row.last_workout_at,
        computed_at=row.computed_at,
    )


def latest_change_seq(s: Session, user_id: str) -> int:
    """The number of the user's latest workout change (0 before the first)."""
    value = s.scalar(select(ChangeCounter.value).where(ChangeCounter.user_id == user_id))
    return int(value or 0)
