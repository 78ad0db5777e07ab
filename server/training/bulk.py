"""Bulk reads and writes for synthetic users and evaluation: table-level
inserts of many users' accounts and logs at once (SQLite and PostgreSQL), and
the aggregate reads `repwise eval` needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from server.auth.models import User
from server.catalog.models import Exercise
from server.logs.models import ChangeCounter, Workout, WorkoutExercise, WorkoutSet

# Rows per INSERT statement: keeps each executemany batch's memory bounded.
BATCH_ROWS = 20_000


@dataclass
class Rows:
    """Plain values for each table, in foreign-key order."""

    users: list[dict[str, Any]] = field(default_factory=list)
    counters: list[dict[str, Any]] = field(default_factory=list)
    workouts: list[dict[str, Any]] = field(default_factory=list)
    exercises: list[dict[str, Any]] = field(default_factory=list)
    sets: list[dict[str, Any]] = field(default_factory=list)


def insert_rows(s: Session, rows: Rows) -> None:
    for model, values in (
        (User, rows.users),
        (ChangeCounter, rows.counters),
        (Workout, rows.workouts),
        (WorkoutExercise, rows.exercises),
        (WorkoutSet, rows.sets),
    ):
        table = cast(Table, model.__table__)
        for begin in range(0, len(values), BATCH_ROWS):
            s.execute(insert(table), values[begin : begin + BATCH_ROWS])


def shared_exercise_ids(s: Session, slugs: Sequence[str]) -> dict[str, str]:
    """Ids of shared catalog exercises by slug (those that exist)."""
    rows = s.execute(
        select(Exercise.slug, Exercise.id).where(
            Exercise.owner_id.is_(None), Exercise.slug.in_(list(slugs))
        )
    )
    return {slug: exercise_id for slug, exercise_id in rows}


def exercise_counts(s: Session, except_user: str | None = None) -> dict[str, int]:
    """How often each exercise was done in live workouts, over every user but one."""
    query = (
        select(WorkoutExercise.exercise_id, func.count())
        .join(
            Workout,
            (Workout.user_id == WorkoutExercise.user_id)
            & (Workout.id == WorkoutExercise.workout_id),
        )
        .where(Workout.deleted_at.is_(None))
        .group_by(WorkoutExercise.exercise_id)
    )
    if except_user is not None:
        query = query.where(WorkoutExercise.user_id != except_user)
    return {exercise_id: int(count) for exercise_id, count in s.execute(query)}
