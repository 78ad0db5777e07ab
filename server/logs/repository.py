"""Every query of the workout tables."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, delete, exists, insert, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.catalog.models import Exercise
from server.logs.models import ChangeCounter, Workout, WorkoutExercise, WorkoutSet


def get(s: Session, user_id: str, workout_id: str, *, for_update: bool = False) -> Workout | None:
    query = select(Workout).where(Workout.user_id == user_id, Workout.id == workout_id)
    if for_update:
        query = query.with_for_update()
    return s.scalars(query).one_or_none()


def list_page(
    s: Session,
    user_id: str,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> Sequence[Workout]:
    """Live workouts, newest first, after the keyset (started_at, id)."""
    query = select(Workout).where(Workout.user_id == user_id, Workout.deleted_at.is_(None))
    if start is not None:
        query = query.where(Workout.started_at >= start)
    if end is not None:
        query = query.where(Workout.started_at < end)
    if after is not None:
        query = query.where(tuple_(Workout.started_at, Workout.id) < after)
    order = (Workout.started_at.desc(), Workout.id.desc())
    return s.scalars(query.order_by(*order).limit(limit)).all()


def children(
    s: Session, user_id: str, workout_ids: Sequence[str]
) -> dict[str, list[tuple[WorkoutExercise, str, list[WorkoutSet]]]]:
    """Per workout: its performed exercises in order, with the exercise's name and its sets."""
    if not workout_ids:
        return {}
    rows = s.execute(
        select(WorkoutExercise, Exercise.name)
        .join(Exercise, Exercise.id == WorkoutExercise.exercise_id)
        .where(WorkoutExercise.user_id == user_id, WorkoutExercise.workout_id.in_(workout_ids))
        .order_by(WorkoutExercise.workout_id, WorkoutExercise.position)
    ).all()
    sets: dict[tuple[str, int], list[WorkoutSet]] = defaultdict(list)
    for row in s.scalars(
        select(WorkoutSet)
        .where(WorkoutSet.user_id == user_id, WorkoutSet.workout_id.in_(workout_ids))
        .order_by(WorkoutSet.workout_id, WorkoutSet.position, WorkoutSet.set_index)
    ):
        sets[(row.workout_id, row.position)].append(row)
    result: dict[str, list[tuple[WorkoutExercise, str, list[WorkoutSet]]]] = defaultdict(list)
    for performed, name in rows:
        result[performed.workout_id].append(
            (performed, name, sets[(performed.workout_id, performed.position)])
        )
    return result


def add_children(
    s: Session, exercises: Sequence[dict[str, Any]], sets: Sequence[dict[str, Any]]
) -> None:
    """Bulk-insert a workout's performed exercises and sets (one executemany each), through
    the tables rather than the ORM: the ORM's bulk path cost more than the statements."""
    if exercises:
        s.execute(insert(cast(Table, WorkoutExercise.__table__)), exercises)
    if sets:
        s.execute(insert(cast(Table, WorkoutSet.__table__)), sets)


def delete_children(s: Session, user_id: str, workout_id: str) -> None:
    s.execute(
        delete(WorkoutSet).where(WorkoutSet.user_id == user_id, WorkoutSet.workout_id == workout_id)
    )
    s.execute(
        delete(WorkoutExercise).where(
            WorkoutExercise.user_id == user_id, WorkoutExercise.workout_id == workout_id
        )
    )


def lock_changes(s: Session, user_id: str) -> None:
    """Lock the user's change counter (creating it if needed) until commit.

    Every workout write takes this lock first, so one user's writers run one
    after another: no two can both find an id missing and insert it, and change
    numbers become visible in order (the change feed never skips one).
    """
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    s.execute(insert(ChangeCounter).values(user_id=user_id, value=0).on_conflict_do_nothing())
    s.execute(select(ChangeCounter.value).where(ChangeCounter.user_id == user_id).with_for_update())


def take_change_seq(s: Session, user_id: str) -> int:
    """lock_changes and next_change_seq in one statement: an upsert that returns the number."""
    dialect_insert = (
        postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    )
    statement = (
        dialect_insert(ChangeCounter)
        .values(user_id=user_id, value=1)
        .on_conflict_do_update(
            index_elements=[ChangeCounter.user_id], set_={"value": ChangeCounter.value + 1}
        )
        .returning(ChangeCounter.value)
    )
    return int(s.execute(statement).scalar_one())


def next_change_seq(s: Session, user_id: str) -> int:
    """The user's next change number (call lock_changes first)."""
    return int(
        s.execute(
            update(ChangeCounter)
            .where(ChangeCounter.user_id == user_id)
            .values(value=ChangeCounter.value + 1)
            .returning(ChangeCounter.value)
        ).scalar_one()
    )


class ExerciseRef(NamedTuple):
    id: str
    slug: str
    name: str
    owner_id: str | None


def visible_exercises(s: Session, user_id: str, refs: Sequence[str]) -> dict[str, ExerciseRef]:
    """Exercises the user can log, by each id or slug asked for (only the columns needed)."""
    rows = [
        ExerciseRef(*row)
        for row in s.execute(
            select(Exercise.id, Exercise.slug, Exercise.name, Exercise.owner_id).where(
                or_(Exercise.owner_id.is_(None), Exercise.owner_id == user_id),
                or_(Exercise.id.in_(refs), Exercise.slug.in_(refs)),
            )
        )
    ]
    found: dict[str, ExerciseRef] = {}
    # Shared first, so the user's own exercise wins a slug both use.
    for row in sorted(rows, key=lambda row: row.owner_id is not None):
        found[row.id] = row
        found[row.slug] = row
    return found


def exercise_is_referenced(s: Session, exercise_id: str) -> bool:
    return bool(s.scalar(select(exists().where(WorkoutExercise.exercise_id == exercise_id))))


def changes_since(s: Session, user_id: str, after_seq: int, limit: int) -> Sequence[Workout]:
    """Workouts (tombstones included) changed after `after_seq`, oldest change first."""
    return s.scalars(
        select(Workout)
        .where(Workout.user_id == user_id, Workout.change_seq > after_seq)
        .order_by(Workout.change_seq)
        .limit(limit)
    ).all()


# Set fields in SetData's order; history reads them as plain tuples (no ORM objects: the
# stream's cost is per set).
SET_COLUMNS = (
    WorkoutSet.reps,
    WorkoutSet.weight_kg,
    WorkoutSet.rpe,
    WorkoutSet.rir,
    WorkoutSet.duration_s,
    WorkoutSet.distance_m,
    WorkoutSet.kind,
)


class HistoryRow(NamedTuple):
    workout_id: str
    position: int
    exercise_id: str
    notes: str
    started_at: datetime
    exercise_name: str
    sets: list[tuple[Any, ...]]  # SET_COLUMNS values, in set order


def history_workouts(
    s: Session,
    user_id: str,
    *,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, str] | None,
    descending: bool,
    limit: int,
) -> list[tuple[datetime, str]]:
    """(started_at, id) of the next live workouts in history order, after the keyset `after`:
    an index range on (user_id, started_at), so each page costs the same however long the
    history."""
    query = select(Workout.started_at, Workout.id).where(
        Workout.user_id == user_id, Workout.deleted_at.is_(None)
    )
    if start is not None:
        query = query.where(Workout.started_at >= start)
    if end is not None:
        query = query.where(Workout.started_at < end)
    key = tuple_(Workout.started_at, Workout.id)
    if after is not None:
        query = query.where(key < after if descending else key > after)
    order = (Workout.started_at, Workout.id)
    query = query.order_by(*(c.desc() for c in order) if descending else order)
    return [(started, workout_id) for started, workout_id in s.execute(query.limit(limit))]


def history_rows(
    s: Session,
    user_id: str,
    workouts: Sequence[tuple[datetime, str]],
    exercise_ids: Sequence[str],
    descending: bool,
) -> list[HistoryRow]:
    """The performed exercises (with names and sets) of these workouts, in the workouts'
    order and by position within each (last first when `descending`, so newest-first is the
    exact reverse of oldest-first); only `exercise_ids` when given."""
    ids = [workout_id for _, workout_id in workouts]
    query = (
        select(
            WorkoutExercise.workout_id,
            WorkoutExercise.position,
            WorkoutExercise.exercise_id,
            WorkoutExercise.notes,
            Exercise.name,
        )
        .join(Exercise, Exercise.id == WorkoutExercise.exercise_id)
        .where(WorkoutExercise.user_id == user_id, WorkoutExercise.workout_id.in_(ids))
    )
    if exercise_ids:
        query = query.where(WorkoutExercise.exercise_id.in_(exercise_ids))
    performed: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in s.execute(query):
        performed[row[0]].append(tuple(row))
    sets: dict[tuple[str, int], list[tuple[Any, ...]]] = defaultdict(list)
    for workout_id, position, *values in s.execute(
        select(WorkoutSet.workout_id, WorkoutSet.position, *SET_COLUMNS)
        .where(WorkoutSet.user_id == user_id, WorkoutSet.workout_id.in_(list(performed)))
        .order_by(WorkoutSet.workout_id, WorkoutSet.position, WorkoutSet.set_index)
    ):
        sets[(workout_id, position)].append(tuple(values))
    rows = []
    for started, workout_id in workouts:
        for _, position, exercise_id, notes, name in sorted(
            performed.get(workout_id, ()), key=lambda row: row[1], reverse=descending
        ):
            rows.append(
                HistoryRow(
                    workout_id,
                    position,
                    exercise_id,
                    notes,
                    started,
                    name,
                    sets[(workout_id, position)],
                )
            )
    return rows


def stat_rows(
    s: Session, user_id: str, until: datetime
) -> tuple[Sequence[Workout], list[tuple[WorkoutExercise, list[WorkoutSet]]], Sequence[Exercise]]:
    """Everything statistics read, in three queries by user (no long IN lists): live workouts
    started by `until`, their performed exercises with sets, and those exercises."""
    live = (
        (Workout.user_id == WorkoutExercise.user_id)
        & (Workout.id == WorkoutExercise.workout_id)
        & Workout.deleted_at.is_(None)
        & (Workout.started_at <= until)
    )
    workouts = s.scalars(
        select(Workout)
        .where(
            Workout.user_id == user_id, Workout.deleted_at.is_(None), Workout.started_at <= until
        )
        .order_by(Workout.started_at, Workout.id)
    ).all()
    performed = s.scalars(
        select(WorkoutExercise)
        .join(Workout, live)
        .where(WorkoutExercise.user_id == user_id)
        .order_by(WorkoutExercise.workout_id, WorkoutExercise.position)
    ).all()
    sets: dict[tuple[str, int], list[WorkoutSet]] = defaultdict(list)
    for item in s.scalars(
        select(WorkoutSet)
        .join(
            Workout,
            (Workout.user_id == WorkoutSet.user_id)
            & (Workout.id == WorkoutSet.workout_id)
            & Workout.deleted_at.is_(None)
            & (Workout.started_at <= until),
        )
        .where(WorkoutSet.user_id == user_id)
        .order_by(WorkoutSet.workout_id, WorkoutSet.position, WorkoutSet.set_index)
    ):
        sets[(item.workout_id, item.position)].append(item)
    exercises = s.scalars(
        select(Exercise).where(
            Exercise.id.in_(
                select(WorkoutExercise.exercise_id)
                .where(WorkoutExercise.user_id == user_id)
                .distinct()
            )
        )
    ).all()
    return workouts, [(p, sets[(p.workout_id, p.position)]) for p in performed], exercises


def live_oldest_first(
    s: Session, user_id: str, after: tuple[datetime, str] | None, limit: int
) -> Sequence[Workout]:
    """Live workouts, oldest first, after the keyset (started_at, id)."""
    query = select(Workout).where(Workout.user_id == user_id, Workout.deleted_at.is_(None))
    if after is not None:
        query = query.where(tuple_(Workout.started_at, Workout.id) > after)
    return s.scalars(query.order_by(Workout.started_at, Workout.id).limit(limit)).all()
