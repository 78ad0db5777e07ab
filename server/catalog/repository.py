"""Every query of the catalog tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, or_, select, tuple_
from sqlalchemy.orm import Session

from server.catalog.models import Exercise, ExerciseMuscle


@dataclass(frozen=True)
class ExerciseFilter:
    viewer_id: str
    muscle: str | None = None
    equipment: str | None = None
    category: str | None = None
    words: tuple[str, ...] = ()
    include_archived: bool = False
    only_private: bool = False


def _visible_to(viewer_id: str) -> ColumnElement[bool]:
    return or_(Exercise.owner_id.is_(None), Exercise.owner_id == viewer_id)


def list_page(
    s: Session, f: ExerciseFilter, after: tuple[str, str] | None, limit: int
) -> Sequence[Exercise]:
    """Exercises matching `f`, ordered by (name_key, id), after the keyset `after`."""
    query = select(Exercise).where(_visible_to(f.viewer_id))
    if f.only_private:
        query = query.where(Exercise.owner_id == f.viewer_id)
    if not f.include_archived:
        query = query.where(Exercise.archived.is_(False))
    if f.muscle:
        query = query.where(
            Exercise.id.in_(
                select(ExerciseMuscle.exercise_id).where(ExerciseMuscle.muscle == f.muscle)
            )
        )
    if f.equipment:
        query = query.where(Exercise.equipment == f.equipment)
    if f.category:
        query = query.where(Exercise.category == f.category)
    for word in f.words:
        query = query.where(Exercise.search_text.contains(word, autoescape=True))
    if after is not None:
        query = query.where(tuple_(Exercise.name_key, Exercise.id) > after)
    return s.scalars(query.order_by(Exercise.name_key, Exercise.id).limit(limit)).all()


def get_visible(s: Session, viewer_id: str, id_or_slug: str) -> Exercise | None:
    """By id, or by slug, the viewer's own exercise before a shared one of that slug."""
    return s.scalars(
        select(Exercise)
        .where(_visible_to(viewer_id), or_(Exercise.id == id_or_slug, Exercise.slug == id_or_slug))
        .order_by(Exercise.owner_id.is_(None))
    ).first()


def get_for_update(s: Session, exercise_id: str) -> Exercise | None:
    return s.scalars(
        select(Exercise).where(Exercise.id == exercise_id).with_for_update()
    ).one_or_none()


def slug_taken(s: Session, slug: str, owner_id: str | None) -> bool:
    """Whether `slug` is taken in the shared catalog or, for a user, among what they see."""
    namespace = Exercise.owner_id.is_(None) if owner_id is None else _visible_to(owner_id)
    return s.scalar(select(Exercise.id).where(Exercise.slug == slug, namespace)) is not None


def by_source_refs(s: Session, refs: Sequence[str]) -> dict[str, Exercise]:
    rows = s.scalars(select(Exercise).where(Exercise.source_ref.in_(refs))).all()
    return {row.source_ref: row for row in rows if row.source_ref}


def shared_slugs(s: Session) -> set[str]:
    return set(s.scalars(select(Exercise.slug).where(Exercise.owner_id.is_(None))).all())


def add(s: Session, exercise: Exercise) -> None:
    s.add(exercise)
    s.flush()
    set_muscles(s, exercise)


def set_muscles(s: Session, exercise: Exercise) -> None:
    s.execute(delete(ExerciseMuscle).where(ExerciseMuscle.exercise_id == exercise.id))
    muscles = {m: False for m in exercise.secondary_muscles} | {
        m: True for m in exercise.primary_muscles
    }
    s.add_all(
        ExerciseMuscle(exercise_id=exercise.id, muscle=m, is_primary=p) for m, p in muscles.items()
    )
    s.flush()


def delete_exercise(s: Session, exercise: Exercise) -> None:
    s.delete(exercise)
    s.flush()


def owned_by(s: Session, user_id: str) -> Sequence[Exercise]:
    """A user's own (private) exercises, by name."""
    return s.scalars(
        select(Exercise).where(Exercise.owner_id == user_id).order_by(Exercise.name_key)
    ).all()
