"""Workout messages <-> domain values, with weights converted between kg and lb."""

from __future__ import annotations

from typing import Any

import numpy as np

from repwise.v1 import common_pb2, log_pb2
from server.converters import enum_names, optional_timestamp, timestamp
from server.errors import InvalidArgument
from server.events.service import SummaryView
from server.logs import stats, wire
from server.logs.columns import HistoryColumns
from server.logs.models import SET_KINDS
from server.logs.service import (
    KG_PER_LB,
    HistoryEntry,
    PerformedData,
    PerformedView,
    SetData,
    SyncResultData,
    WorkoutData,
    WorkoutView,
    etag,
)

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
        seconds, nanos = item.duration.seconds, item.duration.nanos
        if seconds < 0 or not 0 <= nanos < 1_000_000_000:
            raise InvalidArgument(f"{field}.duration", "must be a non-negative duration")
        duration = seconds + nanos / 1e9  # range-checked by check_set
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
        started_at=optional_timestamp(message, "start_time", "workout.start_time"),
        ended_at=optional_timestamp(message, "end_time", "workout.end_time"),
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
        performed_to_pb(performed, unit_name, message.exercises.add())
    return message


def performed_to_pb(
    performed: PerformedView, unit_name: str, out: log_pb2.PerformedExercise
) -> log_pb2.PerformedExercise:
    out.exercise_id = performed.exercise_id
    out.exercise_name = performed.exercise_name
    out.notes = performed.notes
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
    return out


SYNC_OUTCOME_FROM_PB, SYNC_OUTCOME_TO_PB = enum_names(log_pb2.SyncOutcome, "SYNC_OUTCOME_")


def sync_result_to_pb(result: SyncResultData) -> log_pb2.SyncResult:
    return log_pb2.SyncResult(
        workout_id=result.workout_id,
        outcome=SYNC_OUTCOME_TO_PB[result.outcome],
        message=result.message,
        field=result.field,
        etag=result.etag,
    )


def history_entry_to_pb(entry: HistoryEntry, unit_name: str) -> log_pb2.HistoryEntry:
    message = log_pb2.HistoryEntry(
        workout_id=entry.workout_id,
        workout_start_time=timestamp(entry.started_at),
        position=entry.position,
    )
    performed_to_pb(entry.exercise, unit_name, message.exercise)
    return message


# Set kinds by their index in SET_KINDS; the last element answers the index -1 (unknown).
_KINDS_PB = np.array(
    [SET_KIND_TO_PB[kind] for kind in SET_KINDS] + [log_pb2.SET_KIND_UNSPECIFIED], np.int32
)


def _weights_out(kg: np.ndarray, unit_name: str) -> np.ndarray:
    """_weight_out of every weight, exactly (Python's round, not numpy's), computed once per
    distinct weight: a chunk holds few."""
    if not len(kg):
        return kg
    distinct, inverse = np.unique(kg, return_inverse=True)  # NaNs become one
    converted = np.array([_weight_out(w, unit_name) for w in distinct.tolist()], np.float64)
    return converted[inverse.reshape(-1)]


_COLUMN = log_pb2.HistoryColumns.DESCRIPTOR.fields_by_name


def history_columns_to_pb(
    chunk: HistoryColumns, unit_name: str, out: log_pb2.HistoryColumns
) -> log_pb2.HistoryColumns:
    """A chunk in columns: the same values history_entry_to_pb gives its entries, with the
    sentinels log.proto documents (-1, NaN) for measures not given. The numbers go in as
    whole packed arrays (wire.py), the strings with extend."""
    out.workout_ids.extend(chunk.workout_ids)
    out.exercise_ids.extend(chunk.exercise_ids)
    out.notes.extend(chunk.notes)
    for exercise_id, name in chunk.exercise_names.items():
        out.exercise_names[exercise_id] = name
    duration = chunk.duration_s
    # round() of each set's milliseconds, as performed_to_pb: both round half to even.
    millis = np.where(np.isnan(duration), -1, np.rint(np.nan_to_num(duration) * 1000))

    def number(name: str) -> int:
        return int(_COLUMN[name].number)

    out.MergeFromString(
        b"".join(
            (
                wire.packed_varints(number("workout_start_unix_micros"), chunk.started_micros),
                wire.packed_varints(number("positions"), chunk.positions),
                wire.packed_varints(number("set_entries"), chunk.set_entries),
                wire.packed_sint(number("reps"), chunk.reps),
                wire.packed_doubles(number("weights"), _weights_out(chunk.weight_kg, unit_name)),
                wire.packed_doubles(number("rpes"), chunk.rpe),
                wire.packed_doubles(number("rirs"), chunk.rir),
                wire.packed_sint(number("duration_millis"), millis),
                wire.packed_doubles(number("distances_m"), chunk.distance_m),
                wire.packed_varints(number("kinds"), _KINDS_PB[chunk.kinds]),
            )
        )
    )
    return out


RECORD_KIND_FROM_PB, RECORD_KIND_TO_PB = enum_names(log_pb2.RecordKind, "RECORD_KIND_")
_, MUSCLE_TO_PB = enum_names(common_pb2.Muscle, "MUSCLE_")


def activity_to_pb(a: stats.ActivityStreaks) -> log_pb2.ActivityStreaks:
    return log_pb2.ActivityStreaks(
        current_days=a.current_days,
        longest_days=a.longest_days,
        current_weeks=a.current_weeks,
        longest_weeks=a.longest_weeks,
        weekly_goal=a.weekly_goal,
        workouts_this_week=a.workouts_this_week,
        time_zone=a.time_zone,
    )


def summary_to_pb(view: SummaryView, unit_name: str) -> log_pb2.GetSummaryResponse:
    result = view.summary
    message = log_pb2.GetSummaryResponse(
        activity=activity_to_pb(result.activity),
        total_workouts=result.total_workouts,
        total_sets=result.total_sets,
        total_volume=_weight_out(result.total_volume_kg, unit_name),
        record_count=result.record_count,
        weight_unit=UNIT_TO_PB[unit_name],
        events_applied=view.events_applied,
        applied_change_seq=view.applied_change_seq,
        latest_change_seq=view.latest_change_seq,
    )
    if result.last_workout_at is not None:
        message.last_workout_time.CopyFrom(timestamp(result.last_workout_at))
    if view.updated_at is not None:
        message.update_time.CopyFrom(timestamp(view.updated_at))
    return message


def stats_to_pb(result: stats.Stats, unit_name: str) -> log_pb2.GetStatsResponse:
    def weight(kg: float) -> float:
        return _weight_out(kg, unit_name)

    return log_pb2.GetStatsResponse(
        activity=activity_to_pb(result.activity),
        progress=[
            log_pb2.ExerciseProgress(
                exercise_id=p.exercise_id,
                exercise_name=p.exercise_name,
                current_streak=p.current_streak,
                longest_streak=p.longest_streak,
                last_best_e1rm=weight(p.last_best_e1rm),
                last_volume=weight(p.last_volume),
                last_time=timestamp(p.last_time),
            )
            for p in result.progress
        ],
        records=[
            log_pb2.PersonalRecord(
                exercise_id=r.exercise_id,
                kind=RECORD_KIND_TO_PB[r.kind],
                # Reps are counts; every other record is a weight (or weight × reps).
                value=r.value if r.kind == "most_reps" else weight(r.value),
                weight=weight(r.weight),
                reps=r.reps,
                workout_id=r.workout_id,
                time=timestamp(r.time),
            )
            for r in result.records
        ],
        weekly_volume=[
            log_pb2.WeeklyMuscleVolume(
                week_start=v.week_start.isoformat(),
                muscle=MUSCLE_TO_PB[v.muscle],
                sets=v.sets,
                tonnage=weight(v.tonnage_kg),
            )
            for v in result.weekly_volume
        ],
        weight_unit=UNIT_TO_PB[unit_name],
    )
