"""Every query of the workout tables."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, exists, or_, select, tuple_, update
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
    s: Session, exercises: Sequence[WorkoutExercise], sets: Sequence[WorkoutSet]
) -> None:
    s.add_all(exercises)
    s.flush()
    s.add_all(sets)
    s.flush()


def delete_children(s: Session, user_id: str, workout_id: str) -> None:
    s.execute(
        delete(WorkoutSet).where(WorkoutSet.user_id == user_id, WorkoutSet.workout_id == workout_id)
    )
    s.execute(
        delete(WorkoutExercise).where(
            WorkoutExercise.user_id == user_id, WorkoutExercise.workout_id == workout_id
        )
    )


def next_change_seq(s: Session, user_id: str) -> int:
    """Take the user's next change number, holding the counter's row lock until commit."""
    bumped = s.execute(
        update(ChangeCounter)
        .where(ChangeCounter.user_id == user_id)
        .values(value=ChangeCounter.value + 1)
        .returning(ChangeCounter.value)
    ).scalar_one_or_none()
    if bumped is not None:
        return int(bumped)
    s.add(ChangeCounter(user_id=user_id, value=1))
    s.flush()
    return 1


def visible_exercises(s: Session, user_id: str, refs: Sequence[str]) -> dict[str, Exercise]:
    """Exercises the user can log, by each id or slug asked for."""
    rows = s.scalars(
        select(Exercise).where(
            or_(Exercise.owner_id.is_(None), Exercise.owner_id == user_id),
            or_(Exercise.id.in_(refs), Exercise.slug.in_(refs)),
        )
    ).all()
    found: dict[str, Exercise] = {}
    for row in rows:
        found[row.id] = row
        found.setdefault(row.slug, row)
    return found


def exercise_is_referenced(s: Session, exercise_id: str) -> bool:
    return bool(s.scalar(select(exists().where(WorkoutExercise.exercise_id == exercise_id))))
