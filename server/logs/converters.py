"""Workout messages <-> domain values, with weights converted between kg and lb."""

from __future__ import annotations

from typing import Any

from repwise.v1 import common_pb2, log_pb2
from server.converters import enum_names, from_timestamp, timestamp
from server.errors import InvalidArgument
from server.logs.service import PerformedData, SetData, WorkoutData, WorkoutView, etag

KG_PER_LB = 0.45359237
SET_KIND_FROM_PB, SET_KIND_TO_PB = enum_names(log_pb2.SetKind, "SET_KIND_")
UNIT_FROM_PB: dict[int, str] = {common_pb2.WEIGHT_UNIT_KG: "kg", common_pb2.WEIGHT_UNIT_LB: "lb"}
UNIT_TO_PB: dict[str, Any] = {v: k for k, v in UNIT_FROM_PB.items()}


def unit(field: str, number: int, default: str) -> str:
    if number == common_pb2.WEIGHT_UNIT_UNSPECIFIED:
        return default
    if number not in UNIT_FROM_PB:
        raise InvalidArgument(field, "must be WEIGHT_UNIT_KG or WEIGHT_UNIT_LB")
    return UNIT_FROM_PB[number]


def _set_from_pb(item: log_pb2.ExerciseSet, field: str, to_kg: float) -> SetData:
    if item.kind == log_pb2.SET_KIND_UNSPECIFIED:
        kind = "normal"
    elif item.kind in SET_KIND_FROM_PB:
        kind = SET_KIND_FROM_PB[item.kind]
    else:
        raise InvalidArgument(f"{field}.kind", "unknown set kind")
    duration = None
    if item.HasField("duration"):
        if item.duration.seconds < 0 or item.duration.nanos < 0:
            raise InvalidArgument(f"{field}.duration", "must not be negative")
        duration = item.duration.ToTimedelta().total_seconds()
    return SetData(
        reps=item.reps if item.HasField("reps") else None,
        weight_kg=item.weight * to_kg if item.HasField("weight") else None,
        rpe=item.rpe if item.HasField("rpe") else None,
        rir=item.rir if item.HasField("rir") else None,
        duration_s=duration,
        distance_m=item.distance_m if item.HasField("distance_m") else None,
        kind=kind,
    )


def workout_from_pb(message: log_pb2.Workout, default_unit: str) -> WorkoutData:
    to_kg = (
        KG_PER_LB if unit("workout.weight_unit", message.weight_unit, default_unit) == "lb" else 1.0
    )
    return WorkoutData(
        id=message.id,
        started_at=from_timestamp(message.start_time) if message.HasField("start_time") else None,
        ended_at=from_timestamp(message.end_time) if message.HasField("end_time") else None,
        title=message.title,
        notes=message.notes,
        time_zone=message.time_zone,
        exercises=tuple(
            PerformedData(
                exercise_id=p.exercise_id,
                notes=p.notes,
                sets=tuple(
                    _set_from_pb(x, f"workout.exercises[{i}].sets[{j}]", to_kg)
                    for j, x in enumerate(p.sets)
                ),
            )
            for i, p in enumerate(message.exercises)
        ),
    )


def _weight_out(kg: float, unit_name: str) -> float:
    # Rounded so 225 lb stored as kg reads back as 225, not 224.99999999999997.
    return round(kg / KG_PER_LB if unit_name == "lb" else kg, 6)


def workout_to_pb(view: WorkoutView, unit_name: str) -> log_pb2.Workout:
    w = view.workout
    message = log_pb2.Workout(
        id=w.id,
        title=w.title,
        notes=w.notes,
        start_time=timestamp(w.started_at),
        time_zone=w.time_zone,
        weight_unit=UNIT_TO_PB[unit_name],
        etag=etag(w),
        create_time=timestamp(w.created_at),
        update_time=timestamp(w.updated_at),
    )
    if w.ended_at is not None:
        message.end_time.CopyFrom(timestamp(w.ended_at))
    if w.deleted_at is not None:
        message.delete_time.CopyFrom(timestamp(w.deleted_at))
    for performed in view.exercises:
        out = message.exercises.add(
            exercise_id=performed.exercise_id,
            exercise_name=performed.exercise_name,
            notes=performed.notes,
        )
        for item in performed.sets:
            s = out.sets.add(kind=SET_KIND_TO_PB[item.kind])
            if item.reps is not None:
                s.reps = item.reps
            if item.weight_kg is not None:
                s.weight = _weight_out(item.weight_kg, unit_name)
            if item.rpe is not None:
                s.rpe = item.rpe
            if item.rir is not None:
                s.rir = item.rir
            if item.duration_s is not None:
                s.duration.FromMilliseconds(round(item.duration_s * 1000))
            if item.distance_m is not None:
                s.distance_m = item.distance_m
    return message
