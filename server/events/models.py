"""Tables of the event outbox, the consumers' inbox and the materialized user summaries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime

# SQLite numbers rows only in an INTEGER PRIMARY KEY column (64-bit there anyway).
EVENT_ID = BigInteger().with_variant(Integer(), "sqlite")


class OutboxEvent(Base):
    """A workout change, written in the transaction that made it; the relay publishes it."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        # The relay's work list: only unpublished rows, so it stays small however long the log.
        Index(
            "ix_outbox_events_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
        # Ids are never reused once pruned: consumers remember the ids they have applied.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    # Indexed for the cascade of an account deletion.
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workout_id: Mapped[str] = mapped_column(String(36))
    # The workout's position in the user's change feed after this change.
    change_seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))  # workout.created / .updated / .deleted
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # In-process deliveries that failed; at MAX_ATTEMPTS (relay.py) the event is parked, set
    # aside with its error so that it stops blocking the others.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    parked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    error: Mapped[str | None] = mapped_column(String(300), nullable=True)


class ProcessedEvent(Base):
    """Events a consumer has applied: a redelivered event finds its row and is skipped."""

    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # Indexed for the cascade of an account deletion.
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UserMetrics(Base):
    """A user's summary as of `computed_at`, recomputed from their live workouts."""

    __tablename__ = "user_metrics"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    current_day_streak: Mapped[int] = mapped_column(Integer)
    longest_day_streak: Mapped[int] = mapped_column(Integer)
    current_week_streak: Mapped[int] = mapped_column(Integer)
    longest_week_streak: Mapped[int] = mapped_column(Integer)
    workouts_this_week: Mapped[int] = mapped_column(Integer)
    weekly_goal: Mapped[int] = mapped_column(Integer)
    time_zone: Mapped[str] = mapped_column(String(64))
    total_workouts: Mapped[int] = mapped_column(Integer)
    total_sets: Mapped[int] = mapped_column(BigInteger)
    total_volume_kg: Mapped[float] = mapped_column(Float)
    record_count: Mapped[int] = mapped_column(Integer)
    # Start of the latest workout counted: the current streaks age from it (summary.as_of).
    last_workout_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The user's change number the values reflect (at least); see docs/events.md.
    applied_change_seq: Mapped[int] = mapped_column(BigInteger)
    events_applied: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
