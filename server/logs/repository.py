"""Every query of the workout tables."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

import numpy as np
from sqlalchemy import Table, bindparam, delete, exists, insert, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server import single_statement
from server.auth.repository import LIVE_SESSION_FROM, LIVE_SESSION_WHERE
from server.catalog.models import Exercise
from server.db import Database
from server.events import repository as outbox_repo
from server.logs.models import SET_KINDS, ChangeCounter, Workout, WorkoutExercise, WorkoutSet

# Statements every create runs, built once: building one costs more than running it.
_GET = select(Workout).where(
    Workout.user_id == bindparam("user_id"), Workout.id == bindparam("workout_id")
)
_GET_FOR_UPDATE = _GET.with_for_update()


def get(s: Session, user_id: str, workout_id: str, *, for_update: bool = False) -> Workout | None:
    parameters = {"user_id": user_id, "workout_id": workout_id}
    return s.scalars(_GET_FOR_UPDATE if for_update else _GET, parameters).one_or_none()


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


# GetWorkout in one statement: the caller's preferred unit while the session is live, and the
# live workout, one row per set (or per performed exercise without sets). The wide columns come
# only on the first row they belong to: repeated on every set, a largest-allowed workout's notes
# made 10,000 rows of ~12 KB, over 100 MB for one call.
_FIRST_ROW = "row_number() OVER (ORDER BY e.position, st.set_index) = 1"
_FIRST_OF_EXERCISE = "row_number() OVER (PARTITION BY e.position ORDER BY st.set_index) = 1"
_CALLER_AND_WORKOUT = (
    "u.preferred_unit, w.version, w.title, w.notes, w.started_at, w.ended_at, w.time_zone, "
    "w.content_hash, w.change_seq, w.created_at, w.updated_at"
)


def _only_when(condition: str, columns: str) -> str:
    return ", ".join(f"CASE WHEN {condition} THEN {c} END" for c in columns.split(", "))


_GET_WITH_CALLER = single_statement.Statement(
    "get_workout",
    f"""
SELECT {_only_when(_FIRST_ROW, _CALLER_AND_WORKOUT)},
    e.position, {_only_when(_FIRST_OF_EXERCISE, "e.exercise_id, e.notes, x.name")},
    st.set_index, st.reps, st.weight_kg, st.rpe, st.rir, st.duration_s, st.distance_m, st.kind
FROM {LIVE_SESSION_FROM}
LEFT JOIN workouts w ON w.user_id = s.user_id AND w.id = :workout_id AND w.deleted_at IS NULL
LEFT JOIN workout_exercises e ON e.user_id = w.user_id AND e.workout_id = w.id
LEFT JOIN exercises x ON x.id = e.exercise_id
LEFT JOIN workout_sets st
    ON st.user_id = e.user_id AND st.workout_id = e.workout_id AND st.position = e.position
WHERE {LIVE_SESSION_WHERE}
ORDER BY e.position, st.set_index
""",
)


class PerformedRow(NamedTuple):
    exercise_id: str
    notes: str
    exercise_name: str
    sets: list[Sequence[Any]]  # SET_COLUMNS values, in set order


def get_with_caller(
    db: Database, session_id: str, user_id: str, workout_id: str
) -> tuple[str, Workout | None, list[PerformedRow]] | None:
    """The caller's preferred unit and their live workout with its performed exercises and
    sets, in one statement outside any transaction; None once the session has ended."""
    rows = single_statement.fetch(
        db,
        _GET_WITH_CALLER,
        {"session_id": session_id, "user_id": user_id, "workout_id": workout_id},
    )
    if not rows:
        return None
    first = rows[0]
    if first[1] is None:
        return first[0], None, []
    utc = single_statement.utc
    workout = Workout(
        user_id=user_id, id=workout_id, version=first[1], title=first[2], notes=first[3],
        started_at=utc(first[4]), ended_at=utc(first[5]), time_zone=first[6],
        content_hash=first[7], change_seq=first[8], created_at=utc(first[9]),
        updated_at=utc(first[10]), deleted_at=None,
    )  # fmt: skip
    performed: list[PerformedRow] = []
    position = None
    for row in rows:
        if row[11] is None:
            break  # a workout without exercises
        if row[11] != position:
            position = row[11]
            performed.append(PerformedRow(row[12], row[13], row[14], []))
        if row[15] is not None:
            performed[-1].sets.append(row[16:])
    return first[0], workout, performed


_WORKOUT_COLUMNS = (
    "user_id", "id", "title", "notes", "started_at", "ended_at", "time_zone", "content_hash",
    "version", "change_seq", "created_at", "updated_at", "deleted_at",
)  # fmt: skip
_SET_ARRAYS = (
    ("position", "int4"), ("set_index", "int4"), ("reps", "int4"), ("weight_kg", "float8"),
    ("rpe", "float8"), ("rir", "float8"), ("duration_s", "float8"), ("distance_m", "float8"),
    ("kind", "text"),
)  # fmt: skip
# PostgreSQL: a workout with its performed exercises and sets in one statement (one round
# trip instead of three, or four with the change number), the children passed as arrays.
# The foreign keys are checked at the end of the statement, when the workout row is there.
_PG_ADD_CHILDREN = """
, performed AS (
    INSERT INTO workout_exercises (user_id, workout_id, position, exercise_id, notes)
    SELECT %(w_user_id)s, %(w_id)s, e.position, e.exercise_id, e.notes
    FROM unnest(%(e_position)s::int4[], %(e_exercise_id)s::text[], %(e_notes)s::text[])
        AS e(position, exercise_id, notes)
)
INSERT INTO workout_sets (user_id, workout_id, {set_columns})
SELECT %(w_user_id)s, %(w_id)s, x.*
FROM unnest({set_arrays}) AS x
""".format(
    set_columns=", ".join(c for c, _ in _SET_ARRAYS),
    set_arrays=", ".join(f"%(s_{c})s::{t}[]" for c, t in _SET_ARRAYS),
)
# The workout's outbox event (server/events), in the same statement: no round trip of its own.
_PG_ADD_EVENT = """
, event AS (
    INSERT INTO outbox_events (user_id, workout_id, change_seq, kind, occurred_at, payload)
    SELECT %(w_user_id)s, %(w_id)s, {change_seq}, %(o_kind)s, %(o_occurred_at)s,
        %(o_payload)s::json{source}
)"""
_PG_ADD_WORKOUT = {
    # With the change number given (the caller holds the user's lock).
    False: f"""
WITH workout AS (
    INSERT INTO workouts ({", ".join(_WORKOUT_COLUMNS)})
    VALUES ({", ".join(f"%(w_{c})s" for c in _WORKOUT_COLUMNS)})
)"""
    + _PG_ADD_EVENT.format(change_seq="%(w_change_seq)s", source="")
    + _PG_ADD_CHILDREN,
    # Taking the next change number first: take_change_seq, in the same statement.
    True: f"""
WITH seq AS (
    INSERT INTO change_counters (user_id, value) VALUES (%(w_user_id)s, 1)
    ON CONFLICT (user_id) DO UPDATE SET value = change_counters.value + 1
    RETURNING value
), workout AS (
    INSERT INTO workouts ({", ".join(_WORKOUT_COLUMNS)})
    SELECT {", ".join("seq.value" if c == "change_seq" else f"%(w_{c})s" for c in _WORKOUT_COLUMNS)}
    FROM seq
)"""
    + _PG_ADD_EVENT.format(change_seq="seq.value", source=" FROM seq")
    + _PG_ADD_CHILDREN,
}


def add_workout(
    s: Session,
    values: dict[str, Any],
    exercises: Sequence[dict[str, Any]],
    sets: Sequence[dict[str, Any]],
    event: dict[str, Any],
) -> None:
    """Insert a workout row with its performed exercises and sets (through the tables: the
    ORM's flush and bulk paths cost more than the statements), and its outbox event. A
    change_seq of None takes the user's next change number (take_change_seq: the user's lock
    until commit), for the workout and the event alike."""
    take = values["change_seq"] is None
    if s.get_bind().dialect.name != "postgresql":
        if take:
            values = {**values, "change_seq": take_change_seq(s, values["user_id"])}
        s.execute(insert(cast(Table, Workout.__table__)), [values])
        add_children(s, exercises, sets)
        outbox_repo.add_events(s, [{**event, "change_seq": values["change_seq"]}])
        return
    parameters = {f"w_{column}": values[column] for column in _WORKOUT_COLUMNS}
    parameters.update(
        o_kind=event["kind"],
        o_occurred_at=event["occurred_at"],
        o_payload=json.dumps(event["payload"]),
    )
    for column in ("position", "exercise_id", "notes"):
        parameters[f"e_{column}"] = [row[column] for row in exercises]
    for column, _ in _SET_ARRAYS:
        parameters[f"s_{column}"] = [row[column] for row in sets]
    s.connection().exec_driver_sql(_PG_ADD_WORKOUT[take], parameters)


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


_TAKE_CHANGE_SEQ = {
    name: dialect.insert(ChangeCounter)
    .values(user_id=bindparam("user_id"), value=1)
    .on_conflict_do_update(
        index_elements=[ChangeCounter.user_id], set_={"value": ChangeCounter.value + 1}
    )
    .returning(ChangeCounter.value)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def take_change_seq(s: Session, user_id: str) -> int:
    """lock_changes and next_change_seq in one statement: an upsert that returns the number."""
    statement = _TAKE_CHANGE_SEQ[s.get_bind().dialect.name]
    return int(s.execute(statement, {"user_id": user_id}).scalar_one())


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


_VISIBLE_EXERCISES = select(Exercise.id, Exercise.slug, Exercise.name, Exercise.owner_id).where(
    or_(Exercise.owner_id.is_(None), Exercise.owner_id == bindparam("user_id")),
    or_(
        Exercise.id.in_(bindparam("ids", expanding=True)),
        Exercise.slug.in_(bindparam("slugs", expanding=True)),
    ),
)


def visible_exercises(s: Session, user_id: str, refs: Sequence[str]) -> dict[str, ExerciseRef]:
    """Exercises the user can log, by each id or slug asked for (only the columns needed)."""
    parameters = {"user_id": user_id, "ids": list(refs), "slugs": list(refs)}
    rows = [ExerciseRef(*row) for row in s.execute(_VISIBLE_EXERCISES, parameters)]
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
    rows = s.connection().execute(query.limit(limit))  # Core rows: no ORM result work
    return [(started, workout_id) for started, workout_id in rows]


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


# --- history in columns (StreamHistory's columnar form) -----------------------------------
#
# A page of workouts is read as columns: numpy arrays and plain lists, no Python object per
# set. On PostgreSQL each query returns one row whose columns are aggregates (big-endian
# binary values that numpy reads as they are, or text split once), so neither psycopg2 nor
# SQLAlchemy has per-row work. A workout is referred to by its index in the page asked for,
# and rows are keyed so the caller can put them in order: they come in no promised order.
# Positions and set indexes are below 2**16 (at most 100 exercises of 100 sets each are
# accepted).


class EntryColumns(NamedTuple):
    """Performed exercises, one element per entry, in no particular order."""

    key: np.ndarray  # int64: workout index << 16 | position
    exercise_ids: list[str]
    notes: list[str]


class SetColumns(NamedTuple):
    """Sets, one element per set, in no particular order."""

    key: np.ndarray  # int64: workout index << 32 | position << 16 | set index
    reps: np.ndarray  # int32; -1 when not given
    weight_kg: np.ndarray  # float64; NaN when not given (stored values are always finite)
    rpe: np.ndarray
    rir: np.ndarray
    duration_s: np.ndarray
    distance_m: np.ndarray
    kind: np.ndarray  # int8: index in SET_KINDS; -1 for a kind it does not know


def _empty_sets() -> SetColumns:
    floats = np.empty(0, np.float64)
    return SetColumns(
        np.empty(0, np.int64), np.empty(0, np.int32), floats, floats, floats, floats, floats,
        np.empty(0, np.int8),
    )  # fmt: skip


# Every workout one primary-key range scan (LATERAL, kept apart by OFFSET 0), whatever the
# planner thinks of the table's size.
_PG_PAGE = """
FROM unnest(%(workout_ids)s::text[]) WITH ORDINALITY AS p(id, ord)
CROSS JOIN LATERAL (
    SELECT {columns} FROM {table} x
    WHERE x.user_id = %(user_id)s AND x.workout_id = p.id{only}
    OFFSET 0
) x
"""
# Exercise ids are UUIDs (no commas); notes, seldom given, come only where not empty.
_PG_ENTRY_KEY = "int8send(((p.ord - 1) << 16) | x.position)"
_PG_ENTRIES = (
    f"SELECT string_agg({_PG_ENTRY_KEY}, ''), string_agg(x.exercise_id, ','),"
    f" string_agg({_PG_ENTRY_KEY}, '') FILTER (WHERE x.notes <> ''),"
    " array_agg(x.notes) FILTER (WHERE x.notes <> '')"
    + _PG_PAGE.format(columns="x.position, x.exercise_id, x.notes", table="workout_exercises",
                      only="{only}")
)  # fmt: skip
_ONLY_ENTRIES = " AND x.exercise_id = ANY(%(exercise_ids)s::text[])"
_KIND_CODE = (
    "CASE x.kind "
    + " ".join(f"WHEN '{kind}' THEN {code}" for code, kind in enumerate(SET_KINDS))
    + " ELSE -1 END"
)
# One binary record per set, all of them concatenated (one aggregate is cheaper than one
# per column); SQL NULLs become the sentinels. Reps and kind share an int4.
_PG_SETS = (
    "SELECT string_agg("
    "int8send(((p.ord - 1) << 32) | (x.position::int8 << 16) | x.set_index)"
    f" || int4send(((coalesce(x.reps, -1) + 1) << 4) | (({_KIND_CODE}) + 1))"
    " || float8send(coalesce(x.weight_kg, 'NaN')) || float8send(coalesce(x.rpe, 'NaN'))"
    " || float8send(coalesce(x.rir, 'NaN')) || float8send(coalesce(x.duration_s, 'NaN'))"
    " || float8send(coalesce(x.distance_m, 'NaN')), '')"
    + _PG_PAGE.format(
        columns="x.position, x.set_index, x.reps, x.weight_kg, x.rpe, x.rir, x.duration_s,"
        " x.distance_m, x.kind",
        table="workout_sets",
        only="{only}",
    )
)
_ONLY_SETS = (
    " AND x.position IN (SELECT e.position FROM workout_exercises e"
    " WHERE e.user_id = %(user_id)s AND e.workout_id = p.id"
    " AND e.exercise_id = ANY(%(exercise_ids)s::text[]))"
)
_SET_RECORD = np.dtype(
    [("key", ">i8"), ("code", ">i4")]
    + [(name, ">f8") for name in ("weight_kg", "rpe", "rir", "duration_s", "distance_m")]
)
_KIND_INDEX = {kind: code for code, kind in enumerate(SET_KINDS)}


def _pg_one_row(
    s: Session, sql: str, user_id: str, workout_ids: Sequence[str], exercise_ids: Sequence[str]
) -> tuple[Any, ...]:
    parameters = {
        "workout_ids": list(workout_ids),
        "user_id": user_id,
        "exercise_ids": list(exercise_ids),
    }
    # The driver's SQL as it is (no statement compiled); errors still come as SQLAlchemy's.
    return tuple(s.connection().exec_driver_sql(sql, parameters).one())


def history_entry_columns(
    s: Session, user_id: str, workout_ids: Sequence[str], exercise_ids: Sequence[str]
) -> EntryColumns:
    """The performed exercises of these workouts (only of `exercise_ids` when given)."""
    if not workout_ids:
        return EntryColumns(np.empty(0, np.int64), [], [])
    if s.get_bind().dialect.name == "postgresql":
        sql = _PG_ENTRIES.format(only=_ONLY_ENTRIES if exercise_ids else "")
        row = _pg_one_row(s, sql, user_id, workout_ids, exercise_ids)
        if row[0] is None:  # none
            return EntryColumns(np.empty(0, np.int64), [], [])
        keys = np.frombuffer(row[0], ">i8").astype(np.int64)
        ids = row[1].split(",")
        if len(ids) == len(keys):  # else an id with a comma: read it the plain way
            notes = [""] * len(keys)
            if row[2] is not None:
                where = {key: i for i, key in enumerate(keys.tolist())}
                noted = np.frombuffer(row[2], ">i8").tolist()
                for key, text in zip(noted, row[3], strict=True):
                    notes[where[key]] = text
            return EntryColumns(keys, ids, notes)
    index = {workout_id: i for i, workout_id in enumerate(workout_ids)}
    query = select(
        WorkoutExercise.workout_id,
        WorkoutExercise.position,
        WorkoutExercise.exercise_id,
        WorkoutExercise.notes,
    ).where(WorkoutExercise.user_id == user_id, WorkoutExercise.workout_id.in_(workout_ids))
    if exercise_ids:
        query = query.where(WorkoutExercise.exercise_id.in_(exercise_ids))
    rows = s.connection().execute(query).all()
    return EntryColumns(
        np.array([index[row[0]] << 16 | row[1] for row in rows], np.int64),
        [row[2] for row in rows],
        [row[3] for row in rows],
    )


def history_set_columns(
    s: Session, user_id: str, workout_ids: Sequence[str], exercise_ids: Sequence[str]
) -> SetColumns:
    """The sets of these workouts (only of `exercise_ids` when given)."""
    if not workout_ids:
        return _empty_sets()
    if s.get_bind().dialect.name == "postgresql":
        sql = _PG_SETS.format(only=_ONLY_SETS if exercise_ids else "")
        (data,) = _pg_one_row(s, sql, user_id, workout_ids, exercise_ids)
        if data is None:  # no sets
            return _empty_sets()
        records = np.frombuffer(data, _SET_RECORD)
        code = records["code"].astype(np.int32)

        def floats(name: str) -> np.ndarray:
            return records[name].astype(np.float64)

        return SetColumns(
            records["key"].astype(np.int64), (code >> 4) - 1, floats("weight_kg"),
            floats("rpe"), floats("rir"), floats("duration_s"), floats("distance_m"),
            ((code & 15) - 1).astype(np.int8),
        )  # fmt: skip
    return _plain_set_columns(s, user_id, workout_ids, exercise_ids)


def _plain_set_columns(
    s: Session, user_id: str, workout_ids: Sequence[str], exercise_ids: Sequence[str]
) -> SetColumns:
    """Any other database: plain rows, turned into columns here."""
    query = select(
        WorkoutSet.workout_id, WorkoutSet.position, WorkoutSet.set_index, *SET_COLUMNS
    ).where(WorkoutSet.user_id == user_id, WorkoutSet.workout_id.in_(workout_ids))
    if exercise_ids:
        query = query.where(
            exists().where(
                WorkoutExercise.user_id == WorkoutSet.user_id,
                WorkoutExercise.workout_id == WorkoutSet.workout_id,
                WorkoutExercise.position == WorkoutSet.position,
                WorkoutExercise.exercise_id.in_(exercise_ids),
            )
        )
    rows = s.connection().execute(query).all()
    if not rows:
        return _empty_sets()
    index = {workout_id: i for i, workout_id in enumerate(workout_ids)}
    workout, position, set_index, reps, weight, rpe, rir, duration, distance, kind = zip(
        *rows, strict=True
    )

    def floats(values: tuple[Any, ...]) -> np.ndarray:
        return np.array(values, dtype=np.float64)  # None -> NaN

    return SetColumns(
        np.array([index[w] for w in workout], np.int64) << 32
        | np.array(position, np.int64) << 16
        | np.array(set_index, np.int64),
        np.array([-1 if r is None else r for r in reps], np.int32),
        floats(weight), floats(rpe), floats(rir), floats(duration), floats(distance),
        np.array([_KIND_INDEX.get(k, -1) for k in kind], np.int8),
    )  # fmt: skip


def exercise_names(s: Session, exercise_ids: Sequence[str]) -> dict[str, str]:
    """Names of these exercises, by id."""
    if not exercise_ids:
        return {}
    query = select(Exercise.id, Exercise.name).where(Exercise.id.in_(exercise_ids))
    return {exercise_id: name for exercise_id, name in s.connection().execute(query)}


class StatExercise(NamedTuple):
    exercise_id: str
    notes: str
    sets: list[tuple[Any, ...]]  # SET_COLUMNS values, in set order


def stat_rows(
    s: Session, user_id: str, until: datetime
) -> tuple[
    list[tuple[str, datetime]],
    dict[str, list[StatExercise]],
    list[tuple[str, str, list[str], list[str]]],
]:
    """Everything statistics read, in four queries by user (no long IN lists), as plain rows
    (ORM objects cost most of the time on long histories): live workouts started by `until`
    as (id, started_at) in time order; their performed exercises with sets, by workout, in
    position order; and those exercises as (id, name, primary muscles, secondary muscles)."""
    live = (
        (Workout.user_id == user_id) & Workout.deleted_at.is_(None) & (Workout.started_at <= until)
    )
    rows = s.connection().execute
    workouts = [
        (workout_id, started)
        for workout_id, started in rows(
            select(Workout.id, Workout.started_at)
            .where(live)
            .order_by(Workout.started_at, Workout.id)
        )
    ]
    sets: dict[tuple[str, int], list[tuple[Any, ...]]] = defaultdict(list)
    for workout_id, position, *values in rows(
        select(WorkoutSet.workout_id, WorkoutSet.position, *SET_COLUMNS)
        .join(
            Workout, (Workout.user_id == WorkoutSet.user_id) & (Workout.id == WorkoutSet.workout_id)
        )
        .where(live)
        .order_by(WorkoutSet.workout_id, WorkoutSet.position, WorkoutSet.set_index)
    ):
        sets[(workout_id, position)].append(tuple(values))
    performed: dict[str, list[StatExercise]] = defaultdict(list)
    for workout_id, position, exercise_id, notes in rows(
        select(
            WorkoutExercise.workout_id,
            WorkoutExercise.position,
            WorkoutExercise.exercise_id,
            WorkoutExercise.notes,
        )
        .join(
            Workout,
            (Workout.user_id == WorkoutExercise.user_id)
            & (Workout.id == WorkoutExercise.workout_id),
        )
        .where(live)
        .order_by(WorkoutExercise.workout_id, WorkoutExercise.position)
    ):
        performed[workout_id].append(
            StatExercise(exercise_id, notes, sets.get((workout_id, position), []))
        )
    exercises = [
        (exercise_id, name, list(primary), list(secondary))
        for exercise_id, name, primary, secondary in rows(
            select(
                Exercise.id, Exercise.name, Exercise.primary_muscles, Exercise.secondary_muscles
            ).where(
                Exercise.id.in_(
                    select(WorkoutExercise.exercise_id)
                    .where(WorkoutExercise.user_id == user_id)
                    .distinct()
                )
            )
        )
    ]
    return workouts, performed, exercises


def live_oldest_first(
    s: Session, user_id: str, after: tuple[datetime, str] | None, limit: int
) -> Sequence[Workout]:
    """Live workouts, oldest first, after the keyset (started_at, id)."""
    query = select(Workout).where(Workout.user_id == user_id, Workout.deleted_at.is_(None))
    if after is not None:
        query = query.where(tuple_(Workout.started_at, Workout.id) > after)
    return s.scalars(query.order_by(Workout.started_at, Workout.id).limit(limit)).all()
