"""Every query of the training side: claims, log reads, model writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Float,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from client_sdk.model import MODEL_SCHEMA_VERSION
from server import single_statement
from server.auth.models import AuthSession, User
from server.auth.repository import LIVE_SESSION_FROM, LIVE_SESSION_WHERE
from server.catalog.models import Exercise
from server.db import Database, UTCDateTime
from server.logs.models import ChangeCounter, Workout, WorkoutExercise, WorkoutSet
from server.training.models import PopulationModel, TrainingState, UserModel

KEEP_VERSIONS = 3


def _is_postgres(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def _epoch(s: Session, column: Any) -> ColumnElement[float]:
    """A timestamp column as epoch seconds, computed by the database."""
    if _is_postgres(s):
        return cast(func.extract("epoch", column), Float)
    # SQLite keeps "YYYY-MM-DD HH:MM:SS.ffffff"; julianday() would round to milliseconds.
    return cast(func.strftime("%s", column), Float) + cast(func.substr(column, 20, 7), Float)


def ensure_states(s: Session) -> None:
    """A training state row for every user who has logged anything."""
    missing = select(ChangeCounter.user_id, literal(0), literal("")).where(
        ~exists().where(TrainingState.user_id == ChangeCounter.user_id)
    )
    upsert = postgresql.insert if _is_postgres(s) else sqlite.insert
    s.execute(
        upsert(TrainingState)
        .from_select(["user_id", "trained_change_seq", "last_error"], missing)
        .on_conflict_do_nothing()
    )


class Selection(NamedTuple):
    """Which users a batch trains. user_ids limits it to those users."""

    all_users: bool = False
    queued_only: bool = False
    offline_before: datetime | None = None
    trained_before: datetime | None = None
    user_ids: tuple[str, ...] | None = None


def _eligible(selection: Selection) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if selection.user_ids is not None:
        conditions.append(TrainingState.user_id.in_(selection.user_ids))
    if selection.queued_only:
        conditions.append(TrainingState.queued_at.is_not(None))
    elif not selection.all_users:
        conditions.append(ChangeCounter.value > TrainingState.trained_change_seq)
    if selection.offline_before is not None:
        conditions.append(
            ~exists().where(
                AuthSession.user_id == TrainingState.user_id,
                AuthSession.last_refreshed_at >= selection.offline_before,
            )
        )
    if selection.trained_before is not None:
        newest = (
            select(func.max(UserModel.trained_at))
            .where(UserModel.user_id == TrainingState.user_id)
            .scalar_subquery()
        )
        conditions.append(or_(newest.is_(None), newest < selection.trained_before))
    return conditions


def count_eligible(s: Session, selection: Selection) -> int:
    query = (
        select(func.count())
        .select_from(TrainingState)
        .join(ChangeCounter, ChangeCounter.user_id == TrainingState.user_id)
        .where(*_eligible(selection))
    )
    return int(s.scalar(query) or 0)


def claim(
    s: Session,
    worker: str,
    now: datetime,
    lease_until: datetime,
    selection: Selection,
    limit: int,
    after: str = "",
) -> list[str]:
    """Claims up to `limit` eligible users after user id `after` that no live
    claim holds (other workers' locked rows are skipped on PostgreSQL; SQLite
    has one writer at a time). The leases `worker` already holds are extended
    to `lease_until` too: a worker asking for more work is alive, and still
    needs the chunk it is fitting."""
    s.execute(
        update(TrainingState)
        .where(TrainingState.claimed_by == worker)
        .values(lease_until=lease_until)
    )
    query = (
        select(TrainingState.user_id)
        .join(ChangeCounter, ChangeCounter.user_id == TrainingState.user_id)
        .where(
            *_eligible(selection),
            TrainingState.user_id > after,
            or_(TrainingState.lease_until.is_(None), TrainingState.lease_until < now),
        )
        .order_by(TrainingState.user_id)
        .limit(limit)
    )
    if _is_postgres(s):
        query = query.with_for_update(skip_locked=True, of=TrainingState)
    user_ids = list(s.scalars(query))
    if user_ids:
        s.execute(
            update(TrainingState)
            .where(TrainingState.user_id.in_(user_ids))
            .values(claimed_by=worker, lease_until=lease_until)
        )
    return user_ids


class LogRow(NamedTuple):
    user_id: str
    workout_id: str
    started_at: float
    position: int
    exercise_id: str


def log_rows(s: Session, user_ids: Sequence[str]) -> Sequence[Any]:
    """(user_id, workout_id, started_at epoch s, position, exercise_id) of the
    users' live workouts, in (user, start, workout, position) order."""
    query = (
        select(
            Workout.user_id,
            Workout.id,
            _epoch(s, Workout.started_at),
            WorkoutExercise.position,
            WorkoutExercise.exercise_id,
        )
        .join(
            WorkoutExercise,
            and_(
                WorkoutExercise.user_id == Workout.user_id, WorkoutExercise.workout_id == Workout.id
            ),
        )
        .where(Workout.user_id.in_(user_ids), Workout.deleted_at.is_(None))
        .order_by(Workout.user_id, Workout.started_at, Workout.id, WorkoutExercise.position)
    )
    return s.execute(query).all()


def change_seqs(s: Session, user_ids: Sequence[str]) -> dict[str, int]:
    rows = s.execute(
        select(ChangeCounter.user_id, ChangeCounter.value).where(
            ChangeCounter.user_id.in_(user_ids)
        )
    )
    return {user_id: int(value) for user_id, value in rows}


def all_exercises(s: Session) -> Sequence[Any]:
    return s.execute(
        select(
            Exercise.id,
            Exercise.name,
            Exercise.owner_id,
            Exercise.archived,
            Exercise.primary_muscles,
            Exercise.secondary_muscles,
            Exercise.equipment,
            Exercise.mechanic,
            Exercise.force,
            Exercise.level,
            Exercise.category,
        ).order_by(Exercise.id)
    ).all()


def latest_population(s: Session) -> PopulationModel | None:
    """The newest population model of the current schema."""
    return s.scalars(
        select(PopulationModel)
        .where(PopulationModel.schema_version == MODEL_SCHEMA_VERSION)
        .order_by(PopulationModel.version.desc())
        .limit(1)
    ).first()


def newest_population_version(s: Session) -> int:
    return int(s.scalar(select(func.max(PopulationModel.version))) or 0)


def population(s: Session, version: int) -> PopulationModel | None:
    return s.get(PopulationModel, version)


def add_population(s: Session, model: PopulationModel) -> int:
    """Adds a version (after every stored one) and returns it; drops old versions
    no stored user model was trained against."""
    newest_stored = s.scalar(select(func.max(PopulationModel.version))) or 0
    model.version = max(model.version, newest_stored + 1)
    s.add(model)
    s.flush()
    newest = list(
        s.scalars(
            select(PopulationModel.version)
            .order_by(PopulationModel.version.desc())
            .limit(KEEP_VERSIONS)
        )
    )
    s.execute(
        delete(PopulationModel).where(
            PopulationModel.version.not_in(newest),
            ~exists().where(UserModel.population_version == PopulationModel.version),
        )
    )
    return model.version


def held_claims(s: Session, worker: str, user_ids: Sequence[str]) -> dict[str, int | None]:
    """The users whose claim `worker` still holds, locked, with their current version."""
    query = select(TrainingState.user_id, TrainingState.current_version).where(
        TrainingState.user_id.in_(user_ids), TrainingState.claimed_by == worker
    )
    if _is_postgres(s):
        query = query.with_for_update()
    return {user_id: version for user_id, version in s.execute(query)}


def write_models(
    s: Session, models: list[dict[str, Any]], seqs: dict[str, int], read_at: datetime
) -> None:
    """Inserts new versions, points the users at them, releases their claims,
    and keeps each user's newest KEEP_VERSIONS versions. A TrainNow queued
    after the logs were read (at read_at) stays queued: it asked for newer logs."""
    if not models:
        return
    s.execute(insert(UserModel), models)
    states = cast_table(TrainingState)
    s.execute(
        update(states)
        .where(states.c.user_id == bindparam("uid"))
        .values(
            current_version=bindparam("version"),
            trained_change_seq=bindparam("seq"),
            claimed_by=None,
            lease_until=None,
            queued_at=case(
                (states.c.queued_at <= bindparam("read_at", type_=UTCDateTime()), None),
                else_=states.c.queued_at,
            ),
            last_error="",
            failed_at=None,
        ),
        [
            {
                "uid": m["user_id"],
                "version": m["version"],
                "seq": seqs.get(m["user_id"], 0),
                "read_at": read_at,
            }
            for m in models
        ],
    )
    user_ids = [m["user_id"] for m in models]
    um = UserModel.__table__.alias("um")
    keep = (
        select(um.c.version)
        .where(um.c.user_id == UserModel.user_id)
        .order_by(um.c.version.desc())
        .limit(KEEP_VERSIONS)
    )
    s.execute(
        delete(UserModel).where(UserModel.user_id.in_(user_ids), UserModel.version.not_in(keep))
    )


def cast_table(model: type[Any]) -> Table:
    """A mapped class's Table (typed as one, for Core statements)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


def release(s: Session, worker: str, user_ids: Sequence[str], error: str, now: datetime) -> None:
    """Gives up claims; with an error, the users are marked failed."""
    values: dict[str, Any] = {"claimed_by": None, "lease_until": None}
    if error:
        values.update(last_error=error[:2000], failed_at=now, queued_at=None)
    s.execute(
        update(TrainingState)
        .where(TrainingState.user_id.in_(user_ids), TrainingState.claimed_by == worker)
        .values(**values)
    )


def ensure_state(s: Session, user_id: str) -> TrainingState:
    upsert = postgresql.insert if _is_postgres(s) else sqlite.insert
    s.execute(
        upsert(TrainingState)
        .values(user_id=user_id, trained_change_seq=0, last_error="")
        .on_conflict_do_nothing()
    )
    row = s.get(TrainingState, user_id, with_for_update=_is_postgres(s))
    assert row is not None
    return row


def user_model(s: Session, user_id: str, version: int) -> UserModel | None:
    return s.get(UserModel, (user_id, version))


# What GetModelBundle needs to answer "not modified": the caller's current model version and
# schema, and the newest population model of this schema.
_BUNDLE_VERSION = single_statement.Statement(
    "bundle_version",
    f"""
SELECT m.version, m.schema_version,
    (SELECT max(p.version) FROM population_models p WHERE p.schema_version = :schema_version)
FROM {LIVE_SESSION_FROM}
LEFT JOIN training_states t ON t.user_id = s.user_id
LEFT JOIN user_models m ON m.user_id = t.user_id AND m.version = t.current_version
WHERE {LIVE_SESSION_WHERE}
""",
)


class BundleVersions(NamedTuple):
    model_version: int | None
    model_schema_version: int | None
    population_version: int | None  # the newest of the current schema


def bundle_versions(db: Database, session_id: str, user_id: str) -> BundleVersions | None:
    """The caller's current model version and the newest population version, in one
    statement outside any transaction; None once the session has ended."""
    rows = single_statement.fetch(
        db,
        _BUNDLE_VERSION,
        {"session_id": session_id, "user_id": user_id, "schema_version": MODEL_SCHEMA_VERSION},
    )
    return BundleVersions(*rows[0]) if rows else None


def state_and_model(s: Session, user_id: str) -> tuple[TrainingState | None, UserModel | None]:
    """The user's training state and the model version it points to, if any."""
    st = s.get(TrainingState, user_id)
    model = user_model(s, user_id, st.current_version) if st and st.current_version else None
    return st, model


def has_logs(s: Session, user_id: str) -> bool:
    query = select(Workout.id).where(Workout.user_id == user_id, Workout.deleted_at.is_(None))
    return s.scalar(query.limit(1)) is not None


def user_equipment(s: Session, user_id: str) -> list[str]:
    return list(s.scalar(select(User.available_equipment).where(User.id == user_id)) or [])


def latest_top_sets(s: Session, user_id: str) -> dict[str, tuple[float | None, int | None]]:
    """Per exercise: (weight kg, reps) of the heaviest working set of its latest session."""
    latest = (
        select(
            WorkoutExercise.exercise_id,
            WorkoutExercise.workout_id,
            WorkoutExercise.position,
            func.row_number()
            .over(
                partition_by=WorkoutExercise.exercise_id,
                order_by=(Workout.started_at.desc(), WorkoutExercise.position.desc()),
            )
            .label("recency"),
        )
        .join(
            Workout,
            and_(
                Workout.user_id == WorkoutExercise.user_id, Workout.id == WorkoutExercise.workout_id
            ),
        )
        .where(WorkoutExercise.user_id == user_id, Workout.deleted_at.is_(None))
        .subquery()
    )
    rows = s.execute(
        select(latest.c.exercise_id, WorkoutSet.weight_kg, WorkoutSet.reps)
        .join(
            WorkoutSet,
            and_(
                WorkoutSet.user_id == user_id,
                WorkoutSet.workout_id == latest.c.workout_id,
                WorkoutSet.position == latest.c.position,
            ),
        )
        .where(latest.c.recency == 1, WorkoutSet.kind != "warmup")
    )
    top: dict[str, tuple[float | None, int | None]] = {}
    for exercise_id, weight, reps in rows:
        best = top.get(exercise_id)
        if best is None or (weight or 0.0, reps or 0) > (best[0] or 0.0, best[1] or 0):
            top[exercise_id] = (weight, reps)
    return top
