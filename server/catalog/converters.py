"""Catalog messages <-> domain values."""

from __future__ import annotations

from client_sdk import features
from repwise.v1 import catalog_pb2, common_pb2
from server.catalog.models import Exercise
from server.catalog.repository import ExerciseFilter
from server.catalog.service import EDITABLE_FIELDS, ExerciseSpec, etag, feature_vector, words_of
from server.converters import enum_names, timestamp
from server.errors import InvalidArgument, shown

MUSCLE_FROM_PB, MUSCLE_TO_PB = enum_names(common_pb2.Muscle, "MUSCLE_")
EQUIPMENT_FROM_PB, EQUIPMENT_TO_PB = enum_names(common_pb2.Equipment, "EQUIPMENT_")
MECHANIC_FROM_PB, MECHANIC_TO_PB = enum_names(catalog_pb2.Mechanic, "MECHANIC_")
FORCE_FROM_PB, FORCE_TO_PB = enum_names(catalog_pb2.Force, "FORCE_")
LEVEL_FROM_PB, LEVEL_TO_PB = enum_names(catalog_pb2.Level, "LEVEL_")
CATEGORY_FROM_PB, CATEGORY_TO_PB = enum_names(catalog_pb2.Category, "CATEGORY_")
_SINGLE = {
    "equipment": (EQUIPMENT_FROM_PB, EQUIPMENT_TO_PB),
    "mechanic": (MECHANIC_FROM_PB, MECHANIC_TO_PB),
    "force": (FORCE_FROM_PB, FORCE_TO_PB),
    "level": (LEVEL_FROM_PB, LEVEL_TO_PB),
    "category": (CATEGORY_FROM_PB, CATEGORY_TO_PB),
}


def _enum(field: str, number: int, names: dict[int, str]) -> str | None:
    """Unspecified (0) is "unknown"; any other number must be a known value."""
    if number == 0:
        return None
    if number not in names:
        raise InvalidArgument(field, f"unknown value {number}")
    return names[number]


def exercise_to_pb(exercise: Exercise) -> catalog_pb2.Exercise:
    message = catalog_pb2.Exercise(
        id=exercise.id,
        slug=exercise.slug,
        name=exercise.name,
        aliases=exercise.aliases,
        primary_muscles=[MUSCLE_TO_PB[m] for m in exercise.primary_muscles],
        secondary_muscles=[MUSCLE_TO_PB[m] for m in exercise.secondary_muscles],
        instructions=exercise.instructions,
        visibility=catalog_pb2.VISIBILITY_PUBLIC
        if exercise.owner_id is None
        else catalog_pb2.VISIBILITY_PRIVATE,
        archived=exercise.archived,
        features=catalog_pb2.ExerciseFeatures(
            schema_version=features.SCHEMA_VERSION, values=feature_vector(exercise)
        ),
        etag=etag(exercise),
        create_time=timestamp(exercise.created_at),
        update_time=timestamp(exercise.updated_at),
    )
    for name, (_, to_pb) in _SINGLE.items():
        value = getattr(exercise, name)
        if value is not None:
            setattr(message, name, to_pb[value])
    return message


def _muscles(field: str, numbers: list[int]) -> tuple[str, ...]:
    return tuple(m for n in numbers if (m := _enum(field, n, MUSCLE_FROM_PB)) is not None)


def field_values(message: catalog_pb2.Exercise, paths: list[str]) -> dict[str, object]:
    """The editable fields named by `paths` (all editable fields if empty), as domain values."""
    for path in paths:
        if path not in EDITABLE_FIELDS:
            raise InvalidArgument(
                "update_mask",
                f"{shown(path)} cannot be updated; settable: {', '.join(EDITABLE_FIELDS)}",
            )
    values: dict[str, object] = {}
    for path in paths or EDITABLE_FIELDS:
        if path in _SINGLE:
            values[path] = _enum(f"exercise.{path}", getattr(message, path), _SINGLE[path][0])
        elif path in ("primary_muscles", "secondary_muscles"):
            values[path] = _muscles(f"exercise.{path}", list(getattr(message, path)))
        elif path in ("aliases", "instructions"):
            values[path] = tuple(getattr(message, path))
        else:
            values[path] = getattr(message, path)
    return values


def spec_from_pb(message: catalog_pb2.Exercise) -> ExerciseSpec:
    return ExerciseSpec(**field_values(message, []))  # type: ignore[arg-type]


def update_changes(message: catalog_pb2.Exercise, paths: list[str]) -> dict[str, object]:
    """An empty mask means every field that is set in the message."""
    if paths:
        return field_values(message, paths)
    return {k: v for k, v in field_values(message, []).items() if v not in (None, "", ())}


def filter_from_pb(request: catalog_pb2.ListExercisesRequest, viewer_id: str) -> ExerciseFilter:
    if len(request.query) > 200 or not request.query.isprintable():
        raise InvalidArgument("query", "must be at most 200 printable characters")
    return ExerciseFilter(
        viewer_id=viewer_id,
        muscle=_enum("muscle", request.muscle, MUSCLE_FROM_PB),
        equipment=_enum("equipment", request.equipment, EQUIPMENT_FROM_PB),
        category=_enum("category", request.category, CATEGORY_FROM_PB),
        words=words_of(request.query),
        include_archived=request.include_archived,
        only_private=request.only_private,
    )
