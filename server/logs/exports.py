"""Exporting a user's workouts: one JSON document, or a Strong-compatible CSV that
`imports.parse("strong", ...)` reads back to the same workouts. Both are streamed in chunks."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.orm import Session

from server.auth import repository as auth_repository
from server.catalog import repository as catalog_repository
from server.catalog.models import Exercise
from server.catalog.service import spec_of
from server.db import Database
from server.errors import InvalidArgument, NotFound
from server.logs import repository as repo
from server.logs.service import KG_PER_LB, M_PER_MILE, SetData, WorkoutView, views_of

CHUNK_BYTES = 64 * 1024
STRONG_COLUMNS = (
    "Date",
    "Workout Name",
    "Duration",
    "Exercise Name",
    "Set Order",
    "Weight",
    "Reps",
    "Distance",
    "Seconds",
    "Notes",
    "Workout Notes",
    "RPE",
)
_KIND_ORDER = {"warmup": "W", "drop": "D", "failure": "F"}


def _check_unit(unit: str) -> str:
    if unit not in ("kg", "lb"):
        raise ValueError(f"unit must be 'kg' or 'lb', not {unit!r}")
    return unit


def _weight(kg: float | None, unit: str) -> float | None:
    if kg is None:
        return None
    return round(kg if unit == "kg" else kg / KG_PER_LB, 6)


def _text(value: float | None) -> str:
    """Numbers as short as they can be without losing what was stored."""
    if value is None:
        return ""
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _set_json(item: SetData, unit: str) -> dict[str, Any]:
    return {
        "kind": item.kind,
        "reps": item.reps,
        "weight": _weight(item.weight_kg, unit),
        "rpe": item.rpe,
        "rir": item.rir,
        "duration_s": item.duration_s,
        "distance_m": item.distance_m,
    }


def workout_json(view: WorkoutView, unit: str) -> dict[str, Any]:
    w = view.workout
    return {
        "id": w.id,
        "title": w.title,
        "notes": w.notes,
        "start_time": _iso(w.started_at),
        "end_time": _iso(w.ended_at),
        "time_zone": w.time_zone,
        "version": w.version,
        "created_at": _iso(w.created_at),
        "updated_at": _iso(w.updated_at),
        "exercises": [
            {
                "exercise_id": p.exercise_id,
                "exercise_name": p.exercise_name,
                "notes": p.notes,
                "sets": [_set_json(s, unit) for s in p.sets],
            }
            for p in view.exercises
        ],
    }


def export_json(
    views: Iterable[WorkoutView], unit: str, extra: dict[str, Any] | None = None
) -> Iterator[bytes]:
    """{"format": "repwise-export", "version": 1, "weight_unit": unit, **extra,
    "workouts": [...]}, streamed about CHUNK_BYTES at a time; weights are in `unit`."""
    _check_unit(unit)
    head = {"format": "repwise-export", "version": 1, "weight_unit": unit, **(extra or {})}
    opening = json.dumps(head, ensure_ascii=False)[:-1] + ', "workouts": ['
    buffer = [opening]
    size = len(opening)
    first = True
    for view in views:
        piece = ("" if first else ",") + "\n" + json.dumps(workout_json(view, unit))
        first = False
        buffer.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    buffer.append("\n]}\n")
    yield "".join(buffer).encode()


def _duration(view: WorkoutView) -> str:
    w = view.workout
    if w.ended_at is None:
        return ""
    seconds = int((w.ended_at - w.started_at).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours}h"] if hours else []
    if minutes or (hours and seconds):
        parts.append(f"{minutes}m")
    if seconds:
        parts.append(f"{seconds}s")
    return " ".join(parts) or "0s"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _strong_rows(view: WorkoutView, unit: str, time_zone: str | None) -> Iterator[list[str]]:
    w = view.workout
    zone = _zone(time_zone or w.time_zone or "UTC")
    date = w.started_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
    head = [date, w.title, _duration(view)]
    workout_notes = w.notes
    if not view.exercises:
        yield [*head, "", "", "", "", "", "", "", workout_notes, ""]
        return
    distance_factor = 1000.0 if unit == "kg" else M_PER_MILE
    for performed in view.exercises:
        notes = performed.notes
        if not performed.sets:
            yield [*head, performed.exercise_name, "", "", "", "", "", notes, workout_notes, ""]
            notes = workout_notes = ""
            continue
        number = 0
        for item in performed.sets:
            if item.kind == "normal":
                number += 1
                order = str(number)
            else:
                order = _KIND_ORDER[item.kind]
            distance = None if item.distance_m is None else item.distance_m / distance_factor
            yield [
                *head,
                performed.exercise_name,
                order,
                _text(_weight(item.weight_kg, unit)),
                _text(None if item.reps is None else float(item.reps)),
                _text(distance),
                _text(item.duration_s),
                notes,
                workout_notes,
                _text(item.rpe),
            ]
            notes = workout_notes = ""


def export_strong_csv(
    views: Iterable[WorkoutView], unit: str, time_zone: str | None = None
) -> Iterator[bytes]:
    """Strong's comma CSV (its 2023+ columns, no unit columns): weights in `unit`, distances
    in km (kg) or miles (lb), dates as wall time in each workout's own time zone unless
    `time_zone` is given. Read it back with parse("strong", text, unit, time_zone)."""
    _check_unit(unit)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STRONG_COLUMNS)
    for view in views:
        writer.writerows(_strong_rows(view, unit, time_zone))
        if out.tell() >= CHUNK_BYTES:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()


def iter_views(db: Database, user_id: str, page_size: int = 200) -> Iterator[WorkoutView]:
    """All of a user's live workouts, oldest first, one short read transaction per page."""
    after: tuple[datetime, str] | None = None
    while True:

        def page(s: Session, after: tuple[datetime, str] | None = after) -> list[WorkoutView]:
            return views_of(s, repo.live_oldest_first(s, user_id, after, page_size))

        views = db.run(page, write=False)
        yield from views
        if len(views) < page_size:
            return
        last = views[-1].workout
        after = (last.started_at, last.id)


def export_user(db: Database, user_id: str, fmt: str, unit: str) -> Iterator[bytes]:
    """A user's data in chunks: "json" holds the profile, their own exercises and every
    workout; "strong-csv" holds the workouts (all Strong's format can carry)."""
    if fmt == "strong-csv":
        return export_strong_csv(iter_views(db, user_id), unit)
    if fmt != "json":
        raise InvalidArgument("format", f"unknown export format {fmt!r}")
    profile = db.run(lambda s: _profile(s, user_id), write=False)
    return export_json(iter_views(db, user_id), unit, profile)


def _exercise_json(exercise: Exercise) -> dict[str, Any]:
    return {"id": exercise.id, **asdict(spec_of(exercise))}  # tuples dump as JSON lists


def _profile(s: Session, user_id: str) -> dict[str, Any]:
    user = auth_repository.get_user(s, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}", reason="USER_NOT_FOUND")
    return {
        "user": {
            "email": user.email,
            "display_name": user.display_name,
            "time_zone": user.time_zone,
            "preferred_unit": user.preferred_unit,
            "weekly_workout_goal": user.weekly_workout_goal,
            "available_equipment": list(user.available_equipment),
            "created_at": _iso(user.created_at),
        },
        "exercises": [_exercise_json(e) for e in catalog_repository.owned_by(s, user_id)],
    }
