"""Tables of workout logs: a workout, its performed exercises in order, their sets."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime

# The kinds a set may have, as stored; history columns carry a set's kind as its index here.
SET_KINDS = ("warmup", "normal", "drop", "failure")


class Workout(Base):
    """One training session. Keyed by (user, client-chosen id), so ids never leak across users."""

    __tablename__ = "workouts"
    __table_args__ = (
        Index("ix_workouts_user_id_started_at", "user_id", "started_at"),
        Index("ix_workouts_user_id_change_seq", "user_id", "change_seq"),
    )

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    notes: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    time_zone: Mapped[str] = mapped_column(String(64))
    # SHA-256 of the canonical content: tells a retried create from a different one.
    content_hash: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    # Position in the user's change feed; grows with every create, update and delete.
    change_seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class WorkoutExercise(Base):
    __tablename__ = "workout_exercises"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "workout_id"], ["workouts.user_id", "workouts.id"], ondelete="CASCADE"
        ),
        Index("ix_workout_exercises_exercise_id", "exercise_id"),
    )

    user_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workout_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    exercise_id: Mapped[str] = mapped_column(ForeignKey("exercises.id"))
    notes: Mapped[str] = mapped_column(Text)


class WorkoutSet(Base):
    __tablename__ = "workout_sets"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "workout_id"], ["workouts.user_id", "workouts.id"], ondelete="CASCADE"
        ),
    )

    user_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workout_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    set_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    reps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    weight_kg: Mapped[float | None] = mapped_column(Float, nullable=True)
    rpe: Mapped[float | None] = mapped_column(Float, nullable=True)
    rir: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    distance_m: Mapped[float | None] = mapped_column(Float, nullable=True)
    kind: Mapped[str] = mapped_column(String(16))


class ChangeCounter(Base):
    """Per-user change-feed counter; its row lock orders a user's concurrent writes."""

    __tablename__ = "change_counters"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    value: Mapped[int] = mapped_column(BigInteger)
