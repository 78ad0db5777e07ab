"""Workout rules: validation, client-chosen ids, idempotent creates, etags, tombstones."""

from __future__ import annotations

import contextvars
import hashlib
import json
import math
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import exc
from sqlalchemy.orm import Session

from server import idempotency, paging
from server.auth import repository as auth_repository
from server.auth.models import User
from server.auth.service import AuthService, iana_time_zones, session_ended
from server.catalog.service import check_ref
from server.db import Database
from server.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    shown,
)
from server.events import outbox
from server.events import repository as outbox_repo
from server.logs import columns, stats
from server.logs import repository as repo
from server.logs.models import SET_KINDS, Workout, WorkoutSet

KG_PER_LB = 0.45359237
M_PER_MILE = 1609.344
MAX_EXERCISES = 100
MAX_SETS = 100
MAX_FUTURE = timedelta(days=1)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
MAX_DURATION = timedelta(days=2)
MAX_SYNC_ITEMS = 500
DEFAULT_STAT_WEEKS = 12
MAX_STAT_WEEKS = 104
DEFAULT_CHANGES = 200
MAX_CHANGES = 1000
DEFAULT_CHUNK = 500
HISTORY_WORKOUTS_PER_READ = 200
# The columnar form reads pages of workouts growing from the first size to the last: the
# first message goes out soon, then fewer round trips (its per-set cost is small).
HISTORY_COLUMN_FIRST_READ = 250
HISTORY_COLUMN_WORKOUTS_PER_READ = 1000
# Pages of the columnar form read at once, each by a helper thread with its own connection.
HISTORY_COLUMN_READERS = 2
MAX_CHUNK = 5000
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 200


T = TypeVar("T")


@dataclass(frozen=True)
class SetData:
    reps: int | None = None
    weight_kg: float | None = None
    rpe: float | None = None
    rir: float | None = None
    duration_s: float | None = None
    distance_m: float | None = None
    kind: str = "normal"


@dataclass(frozen=True)
class PerformedData:
    exercise_id: str  # id or slug on input; the resolved id once checked
    notes: str = ""
    sets: tuple[SetData, ...] = ()


@dataclass(frozen=True)
class WorkoutData:
    id: str
    started_at: datetime | None
    ended_at: datetime | None = None
    title: str = ""
    notes: str = ""
    time_zone: str = ""
    exercises: tuple[PerformedData, ...] = ()


@dataclass(frozen=True)
class PerformedView:
    exercise_id: str
    exercise_name: str
    notes: str
    sets: tuple[SetData, ...]


@dataclass(frozen=True)
class WorkoutView:
    workout: Workout
    exercises: tuple[PerformedView, ...]


@dataclass(frozen=True)
class Caller:
    user_id: str
    email: str
    preferred_unit: str


@dataclass(frozen=True)
class HistoryEntry:
    workout_id: str
    started_at: datetime
    position: int
    exercise: PerformedView


@dataclass(frozen=True)
class SyncItem:
    """One upsert of a sync: the converted workout, or why it could not be converted."""

    workout_id: str
    data: WorkoutData | None
    etag: str = ""
    error: DomainError | None = None


@dataclass(frozen=True)
class SyncResultData:
    workout_id: str
    outcome: str  # created, updated, unchanged, conflict, invalid, deleted
    message: str = ""
    field: str = ""
    etag: str = ""


@dataclass(frozen=True)
class SyncOutcome:
    results: tuple[SyncResultData, ...]
    changes: tuple[WorkoutView, ...]
    next_cursor: str
    has_more: bool


def _set_data(row: WorkoutSet) -> SetData:
    return SetData(
        reps=row.reps,
        weight_kg=row.weight_kg,
        rpe=row.rpe,
        rir=row.rir,
        duration_s=row.duration_s,
        distance_m=row.distance_m,
        kind=row.kind,
    )


def encode_cursor(change_seq: int) -> str:
    return f"c{change_seq}"


def decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    if not (cursor.startswith("c") and cursor[1:].isdigit() and len(cursor) < 20):
        raise InvalidArgument("cursor", "is not a next_cursor from a previous sync")
    return int(cursor[1:])


# Control characters but tab, line feed and carriage return.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _check_text(field: str, value: str) -> None:
    # NUL and other control characters break PostgreSQL text and every CSV export.
    if _CONTROL.search(value):
        raise InvalidArgument(field, "must not contain control characters")


def check_workout_id(value: str, field: str = "workout.id") -> str:
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise InvalidArgument(field, "must be a UUID chosen by the client") from None


def _number(field: str, value: float | None, low: float, high: float) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise InvalidArgument(field, "must be a finite number")
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low:g} and {high:g}")
    return value


def check_set(item: SetData, field: str) -> SetData:
    _number(f"{field}.reps", item.reps, 0, 1000)
    _number(f"{field}.weight", item.weight_kg, 0, 1000)
    rpe = _number(f"{field}.rpe", item.rpe, 1, 10)
    if rpe is not None and rpe * 2 != int(rpe * 2):
        raise InvalidArgument(f"{field}.rpe", "must be in steps of 0.5")
    _number(f"{field}.rir", item.rir, 0, 10)
    _number(f"{field}.duration", item.duration_s, 0, 24 * 3600)
    _number(f"{field}.distance_m", item.distance_m, 0, 1_000_000)
    if item.kind not in SET_KINDS:
        raise InvalidArgument(f"{field}.kind", "unknown set kind")
    return item


def check_workout(data: WorkoutData, now: datetime, default_zone: str) -> WorkoutData:
    """Validate everything but exercise references; errors name the field."""
    workout_id = check_workout_id(data.id)
    if data.started_at is None:
        raise InvalidArgument("workout.start_time", "is required")
    if not EARLIEST <= data.started_at <= now + MAX_FUTURE:
        raise InvalidArgument("workout.start_time", "must be after 1970 and at most a day ahead")
    if data.ended_at is not None and not (
        data.started_at <= data.ended_at <= data.started_at + MAX_DURATION
    ):
        raise InvalidArgument(
            "workout.end_time", "must be after start_time and at most two days later"
        )
    title, notes = " ".join(data.title.split()), data.notes.strip()
    _check_text("workout.title", title)
    _check_text("workout.notes", notes)
    if len(title) > 200:
        raise InvalidArgument("workout.title", "must be at most 200 characters")
    if len(notes) > 10_000:
        raise InvalidArgument("workout.notes", "must be at most 10000 characters")
    zone = data.time_zone or default_zone
    if zone not in iana_time_zones():
        raise InvalidArgument("workout.time_zone", f"{shown(zone)} is not an IANA time zone")
    if len(data.exercises) > MAX_EXERCISES:
        raise InvalidArgument("workout.exercises", f"at most {MAX_EXERCISES} exercises")
    for i, performed in enumerate(data.exercises):
        field = f"workout.exercises[{i}]"
        check_ref(f"{field}.exercise_id", performed.exercise_id)
        _check_text(f"{field}.notes", performed.notes)
        if len(performed.sets) > MAX_SETS:
            raise InvalidArgument(f"{field}.sets", f"at most {MAX_SETS} sets")
        if len(performed.notes) > 2000:
            raise InvalidArgument(f"{field}.notes", "must be at most 2000 characters")
        for j, item in enumerate(performed.sets):
            check_set(item, f"{field}.sets[{j}]")
    # Instants in UTC, so the same moment sent with another offset is the same content.
    started = data.started_at.astimezone(UTC)
    ended = data.ended_at.astimezone(UTC) if data.ended_at is not None else None
    return replace(
        data, id=workout_id, title=title, notes=notes, time_zone=zone,
        started_at=started, ended_at=ended,
    )  # fmt: skip


def content_hash(data: WorkoutData) -> str:
    """SHA-256 of a workout's canonical content (floats to 6 decimals). Built by hand:
    dataclasses.asdict was a third of a create's CPU."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 6)

    body = [
        data.id, data.title, data.notes, str(data.started_at), str(data.ended_at), data.time_zone,
        [
            [
                p.exercise_id, p.notes,
                [[s.reps, rounded(s.weight_kg), rounded(s.rpe), rounded(s.rir),
                  rounded(s.duration_s), rounded(s.distance_m), s.kind] for s in p.sets],
            ]
            for p in data.exercises
        ],
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()


def etag(workout: Workout) -> str:
    return str(workout.version)


def _event(kind: str, workout: Workout) -> dict[str, Any]:
    """The outbox row of a change, as the workout is after it."""
    return outbox.workout_event(
        kind,
        user_id=workout.user_id,
        workout_id=workout.id,
        change_seq=workout.change_seq,
        started_at=workout.started_at,
        version=workout.version,
        occurred_at=workout.updated_at,
    )


def _rows(user_id: str, data: WorkoutData) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The performed-exercise and set rows of a workout, as plain values for bulk inserts."""
    exercises: list[dict[str, Any]] = []
    sets: list[dict[str, Any]] = []
    for position, performed in enumerate(data.exercises):
        key = {"user_id": user_id, "workout_id": data.id, "position": position}
        exercises.append({**key, "exercise_id": performed.exercise_id, "notes": performed.notes})
        sets.extend({**key, "set_index": i, **vars(item)} for i, item in enumerate(performed.sets))
    return exercises, sets


def views_of(s: Session, workouts: Sequence[Workout]) -> list[WorkoutView]:
    """Workouts with their performed exercises (and names) and sets, in two queries."""
    if not workouts:
        return []
    children = repo.children(s, workouts[0].user_id, [w.id for w in workouts])
    return [
        WorkoutView(
            workout=w,
            exercises=tuple(
                PerformedView(
                    exercise_id=p.exercise_id,
                    exercise_name=name,
                    notes=p.notes,
                    sets=tuple(_set_data(x) for x in sets),
                )
                for p, name, sets in children.get(w.id, [])
            ),
        )
        for w in workouts
    ]


def _view_from(workout: Workout, checked: WorkoutData, names: dict[str, str]) -> WorkoutView:
    """The view of a workout whose stored content is `checked`, without reading it back."""
    return WorkoutView(
        workout=workout,
        exercises=tuple(
            PerformedView(p.exercise_id, names.get(p.exercise_id, ""), p.notes, p.sets)
            for p in checked.exercises
        ),
    )


class LogService:
    def __init__(
        self,
        db: Database,
        auth: AuthService,
        now: Callable[[], datetime],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.auth = auth
        self.now = now
        # Called after a commit that wrote workout events (wakes the outbox relay).
        self.on_change = on_change

    def _resolve(self, s: Session, user_id: str, data: WorkoutData) -> WorkoutData:
        """Exercise ids or slugs -> ids of exercises this user can see."""
        return self._resolve_named(s, user_id, data)[0]

    @staticmethod
    def _resolve_named(
        s: Session, user_id: str, data: WorkoutData
    ) -> tuple[WorkoutData, dict[str, str]]:
        """Like _resolve, and the names of the exercises by id."""
        found = repo.visible_exercises(s, user_id, [p.exercise_id for p in data.exercises])
        resolved = []
        for i, performed in enumerate(data.exercises):
            exercise = found.get(performed.exercise_id)
            if exercise is None:
                raise InvalidArgument(
                    f"workout.exercises[{i}].exercise_id",
                    f"no exercise {shown(performed.exercise_id)} in the catalog or your exercises",
                )
            resolved.append(replace(performed, exercise_id=exercise.id))
        names = {e.id: e.name for e in found.values()}
        return replace(data, exercises=tuple(resolved)), names

    def _view(self, s: Session, workout: Workout) -> WorkoutView:
        return views_of(s, [workout])[0]

    def preferred_unit(self) -> str:
        return self.caller().preferred_unit

    def caller(self) -> Caller:
        def work(s: Session) -> Caller:
            user = self.auth.current_user(s)
            return Caller(user.id, user.email, user.preferred_unit)

        return self.db.run(work, write=False)

    def create(
        self, build: Callable[[str], WorkoutData], request_id: str = ""
    ) -> tuple[WorkoutView, str]:
        """Store a new workout for the caller; `build` makes it from the caller's preferred
        unit, so the whole call is one transaction. Returns the stored workout and that unit.

        A retry (same id, same content) returns the original; an optional request_id
        (AIP-155) may not be reused for another request.
        """
        request_id = idempotency.check_request_id(request_id) if request_id else ""
        view, _, user = self._create(self.auth.current_user, build, request_id)
        return view, user.preferred_unit

    def create_for(self, user_id: str, data: WorkoutData) -> tuple[WorkoutView, bool]:
        """Store a workout for a named user (imports, tools); True if it was new."""

        def owner(s: Session) -> User:
            user = auth_repository.get_user(s, user_id)
            if user is None:
                raise NotFound(f"no user {user_id}", reason="USER_NOT_FOUND")
            return user

        view, created, _ = self._create(owner, lambda _unit: data, "")
        return view, created

    def _create(
        self,
        owner: Callable[[Session], User],
        build: Callable[[str], WorkoutData],
        request_id: str,
    ) -> tuple[WorkoutView, bool, User]:
        def work(s: Session) -> tuple[WorkoutView, bool, User]:
            user = owner(s)
            data = check_workout(build(user.preferred_unit), self.now(), user.time_zone)
            checked, names = self._resolve_named(s, user.id, data)
            digest = content_hash(checked)

            def stored() -> tuple[WorkoutView, bool, User] | None:
                """The answer if this create was made before (or its id is taken)."""
                if request_id and idempotency.find(
                    s, user.id, "CreateWorkout", request_id, digest
                ):  # raises for a request_id used before for another request
                    earlier = repo.get(s, user.id, checked.id)
                    if earlier is None or earlier.deleted_at is not None:
                        raise FailedPrecondition(
                            "the workout this request_id created has since been deleted",
                            reason="REQUEST_ID_RESOURCE_DELETED",
                        )
                    # A retry of a create whose workout changed since: its current state.
                    return views_of(s, [earlier])[0], False, user
                existing = repo.get(s, user.id, checked.id)
                if existing is None:
                    return None
                if existing.deleted_at is None and existing.content_hash == digest:
                    # A retry: the same content as stored, so the answer is built from it.
                    return _view_from(existing, checked, names), False, user
                raise AlreadyExists(
                    f"workout {checked.id} already exists with other content"
                    + (" (it was deleted)" if existing.deleted_at else ""),
                    reason="WORKOUT_EXISTS",
                )

            # A retry reads its answer without writing or waiting for the user's lock.
            answer = stored()
            if answer is not None:
                return answer
            # Storing takes a change number, which locks the user's counter until commit: one
            # writer per user at a time, so change numbers become visible in order. Only the
            # insert (one statement on PostgreSQL) and the commit run under the lock. A copy
            # of this create that committed meanwhile makes the insert fail on the primary
            # key (or the request_id's): the work is then decided again (below), and answers
            # as the retry it is.
            workout = self._insert(s, user, checked, digest, None)
            if request_id:
                idempotency.remember(
                    s, user.id, "CreateWorkout", request_id, digest, checked.id, self.now()
                )
            return _view_from(workout, checked, names), True, user

        try:
            result = self.db.run(work)
        except exc.IntegrityError:
            # A copy of this create committed first (primary key), or an exercise it names
            # was deleted meanwhile (foreign key): decide again, which now finds the stored
            # workout, or names the missing exercise as INVALID_ARGUMENT.
            result = self.db.run(work)
        if result[1]:
            self.on_change()
        return result

    def get(self, workout_id: str) -> tuple[WorkoutView, str]:
        """The caller's workout and their preferred unit: one statement checks the session
        and reads both (the hottest read; see server/single_statement.py)."""
        workout_id = check_workout_id(workout_id, "id")
        principal = self.auth.principal()
        found = repo.get_with_caller(self.db, principal.session_id, principal.user_id, workout_id)
        if found is None:
            raise session_ended()
        preferred, workout, performed = found
        if workout is None:
            raise NotFound(f"no workout {workout_id}", reason="WORKOUT_NOT_FOUND")
        exercises = tuple(
            PerformedView(
                p.exercise_id, p.exercise_name, p.notes, tuple(SetData(*x) for x in p.sets)
            )
            for p in performed
        )
        return WorkoutView(workout, exercises), preferred

    def list_workouts(
        self, start: datetime | None, end: datetime | None, page_size: int, page_token: str
    ) -> tuple[list[WorkoutView], str]:
        limit = paging.limit("page_size", page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token)

        def work(s: Session) -> tuple[list[WorkoutView], str]:
            user = self.auth.current_user(s)
            rows = list(repo.list_page(s, user.id, start, end, after, limit + 1))
            more = len(rows) > limit
            rows = rows[:limit]
            token = encode_page_token(rows[-1]) if more else ""
            return views_of(s, rows), token

        return self.db.run(work, write=False)

    def update(self, data: WorkoutData, expected_etag: str) -> WorkoutView:
        """Replace the workout's content; a stale etag changes nothing."""

        def work(s: Session) -> WorkoutView:
            user = self.auth.current_user(s)
            checked = self._resolve(s, user.id, check_workout(data, self.now(), user.time_zone))
            repo.lock_changes(s, user.id)
            workout = repo.get(s, user.id, checked.id, for_update=True)
            if workout is None or workout.deleted_at is not None:
                raise NotFound(f"no workout {checked.id}", reason="WORKOUT_NOT_FOUND")
            if expected_etag and expected_etag != etag(workout):
                raise Aborted(
                    "the workout changed since it was read; read it again", reason="ETAG_MISMATCH"
                )
            digest = content_hash(checked)
            if digest != workout.content_hash:
                outbox_repo.add_events(s, [self._replace(s, user, workout, checked, digest)])
            return self._view(s, workout)

        view = self.db.run(work)
        self.on_change()
        return view

    def delete(self, workout_id: str, expected_etag: str) -> None:
        """Delete, keeping a tombstone so other devices learn of it when they sync."""
        workout_id = check_workout_id(workout_id, "id")

        def work(s: Session) -> None:
            user = self.auth.current_user(s)
            repo.lock_changes(s, user.id)
            workout = repo.get(s, user.id, workout_id, for_update=True)
            if workout is None or workout.deleted_at is not None:
                raise NotFound(f"no workout {workout_id}", reason="WORKOUT_NOT_FOUND")
            if expected_etag and expected_etag != etag(workout):
                raise Aborted(
                    "the workout changed since it was read; read it again", reason="ETAG_MISMATCH"
                )
            outbox_repo.add_events(s, [self._tombstone(s, user, workout)])

        self.db.run(work)
        self.on_change()

    def _insert(
        self, s: Session, user: User, checked: WorkoutData, digest: str, change_seq: int | None
    ) -> Workout:
        """Store a new, validated workout and its exercises and sets. Without a change
        number, take one (locking the user's counter until commit) in the same breath."""
        now = self.now()
        values = {
            "user_id": user.id,
            "id": checked.id,
            "title": checked.title,
            "notes": checked.notes,
            "started_at": checked.started_at,
            "ended_at": checked.ended_at,
            "time_zone": checked.time_zone,
            "content_hash": digest,
            "version": 1,
            "change_seq": change_seq,  # None: taken by add_workout
            "created_at": now,
            "updated_at": now,
            "deleted_at": None,
        }
        workout = Workout(**values)  # what was stored, for the answer; not in the session
        repo.add_workout(s, values, *_rows(user.id, checked), _event(outbox.CREATED, workout))
        return workout

    def _replace(
        self, s: Session, user: User, workout: Workout, checked: WorkoutData, digest: str
    ) -> dict[str, Any]:
        """Store new content for a workout; the change's outbox row, for the caller to write."""
        for name in ("title", "notes", "started_at", "ended_at", "time_zone"):
            setattr(workout, name, getattr(checked, name))
        workout.content_hash = digest
        workout.version += 1
        workout.change_seq = repo.next_change_seq(s, user.id)
        workout.updated_at = self.now()
        repo.delete_children(s, user.id, workout.id)
        repo.add_children(s, *_rows(user.id, checked))
        return _event(outbox.UPDATED, workout)

    def _tombstone(self, s: Session, user: User, workout: Workout) -> dict[str, Any]:
        """Delete a workout's content, keeping its row; the change's outbox row."""
        now = self.now()
        repo.delete_children(s, user.id, workout.id)
        workout.deleted_at = now
        workout.updated_at = now
        workout.version += 1
        workout.change_seq = repo.next_change_seq(s, user.id)
        return _event(outbox.DELETED, workout)

    # --- sync ---------------------------------------------------------------------------

    def sync(
        self, items: Sequence[SyncItem], deletes: Sequence[str], cursor: str, page_size: int
    ) -> SyncOutcome:
        """Apply a device's upserts and deletes, each on its own (one result per item, in
        order), then return the changes after the device's cursor, tombstones included."""
        if len(items) > MAX_SYNC_ITEMS:
            raise InvalidArgument("upserts", f"at most {MAX_SYNC_ITEMS} workouts per call")
        if len(deletes) > MAX_SYNC_ITEMS:
            raise InvalidArgument("deletes", f"at most {MAX_SYNC_ITEMS} ids per call")
        limit = paging.limit("page_size", page_size, DEFAULT_CHANGES, MAX_CHANGES)
        after = decode_cursor(cursor)

        def work(s: Session) -> SyncOutcome:
            user = self.auth.current_user(s)
            repo.lock_changes(s, user.id)
            changes: list[dict[str, Any]] = []  # outbox rows of updates and deletes
            results = [self._sync_one(s, user, i, item, changes) for i, item in enumerate(items)]
            results += [
                self._sync_delete(s, user, i, ref, after, changes) for i, ref in enumerate(deletes)
            ]
            outbox_repo.add_events(s, changes)
            changed = list(repo.changes_since(s, user.id, after, limit + 1))
            more = len(changed) > limit
            changed = changed[:limit]
            next_cursor = encode_cursor(changed[-1].change_seq if changed else after)
            return SyncOutcome(tuple(results), tuple(views_of(s, changed)), next_cursor, more)

        outcome = self.db.run(work)
        if any(r.outcome in ("created", "updated", "deleted") for r in outcome.results):
            self.on_change()
        return outcome

    def _sync_one(
        self, s: Session, user: User, index: int, item: SyncItem, changes: list[dict[str, Any]]
    ) -> SyncResultData:
        try:
            if item.error is not None:
                raise item.error
            assert item.data is not None
            with s.begin_nested():  # an item's failure undoes only that item
                return self._upsert(s, user, item.data, item.etag, changes)
        except DomainError as error:
            # Name the field as the request does: upserts[3].exercises[0]..., not workout.*
            field = (error.field or "").replace("workout", f"upserts[{index}]", 1)
            message = error.message.replace("workout", f"upserts[{index}]", 1)
            return SyncResultData(item.workout_id, "invalid", message, field)

    def _upsert(
        self,
        s: Session,
        user: User,
        data: WorkoutData,
        base_etag: str,
        changes: list[dict[str, Any]],
    ) -> SyncResultData:
        checked = self._resolve(s, user.id, check_workout(data, self.now(), user.time_zone))
        digest = content_hash(checked)
        workout = repo.get(s, user.id, checked.id, for_update=True)
        if workout is None:
            workout = self._insert(s, user, checked, digest, repo.next_change_seq(s, user.id))
            return SyncResultData(checked.id, "created", etag=etag(workout))
        if workout.deleted_at is not None:
            return SyncResultData(
                checked.id, "conflict", "deleted on another device", etag=etag(workout)
            )
        if workout.content_hash == digest:
            return SyncResultData(checked.id, "unchanged", etag=etag(workout))
        if base_etag != etag(workout):
            return SyncResultData(
                checked.id,
                "conflict",
                "changed on the server since this device's copy; the server's copy was kept",
                etag=etag(workout),
            )
        changes.append(self._replace(s, user, workout, checked, digest))
        return SyncResultData(checked.id, "updated", etag=etag(workout))

    def _sync_delete(
        self,
        s: Session,
        user: User,
        index: int,
        ref: str,
        cursor_seq: int,
        changes: list[dict[str, Any]],
    ) -> SyncResultData:
        """Tombstone a workout, unless it changed after the device's cursor (the device
        has not seen that change, so deleting would throw it away)."""
        try:
            workout_id = check_workout_id(ref, f"deletes[{index}]")
        except InvalidArgument as error:
            return SyncResultData(ref, "invalid", error.message, error.field or "")
        workout = repo.get(s, user.id, workout_id, for_update=True)
        if workout is None:
            return SyncResultData(workout_id, "unchanged", "the server has no such workout")
        if workout.deleted_at is None:
            if cursor_seq and workout.change_seq > cursor_seq:
                return SyncResultData(
                    workout_id,
                    "conflict",
                    "changed on the server since this device's cursor; sync, then delete again",
                    etag=etag(workout),
                )
            changes.append(self._tombstone(s, user, workout))
        return SyncResultData(workout_id, "deleted", etag=etag(workout))

    # --- history ------------------------------------------------------------------------

    def history(
        self,
        *,
        start: datetime | None,
        end: datetime | None,
        exercise_refs: Sequence[str],
        descending: bool,
        chunk_size: int,
    ) -> Iterator[list[HistoryEntry]]:
        """The caller's performed exercises in chunks. Each chunk is read in its own short
        transaction, so a stream the client abandons holds no connection."""
        limit = paging.limit("chunk_size", chunk_size, DEFAULT_CHUNK, MAX_CHUNK)
        user_id, exercise_ids, _ = self._history_scope(exercise_refs)
        after: tuple[datetime, str] | None = None
        chunk: list[HistoryEntry] = []
        while True:

            def page(
                s: Session, after: tuple[datetime, str] | None = after
            ) -> tuple[list[tuple[datetime, str]], list[repo.HistoryRow]]:
                self.auth.current_user(s)  # the session may have ended mid-stream
                workouts = repo.history_workouts(
                    s, user_id, start=start, end=end, after=after, descending=descending,
                    limit=HISTORY_WORKOUTS_PER_READ,
                )  # fmt: skip
                return workouts, repo.history_rows(s, user_id, workouts, exercise_ids, descending)

            workouts, rows = self.db.run(page, write=False)
            for row in rows:
                chunk.append(
                    HistoryEntry(
                        workout_id=row.workout_id,
                        started_at=row.started_at,
                        position=row.position,
                        exercise=PerformedView(
                            exercise_id=row.exercise_id,
                            exercise_name=row.exercise_name,
                            notes=row.notes,
                            sets=tuple(SetData(*values) for values in row.sets),
                        ),
                    )
                )
                if len(chunk) == limit:
                    yield chunk
                    chunk = []
            if len(workouts) < HISTORY_WORKOUTS_PER_READ:
                if chunk:
                    yield chunk
                return
            after = workouts[-1]

    def history_columns(
        self,
        *,
        start: datetime | None,
        end: datetime | None,
        exercise_refs: Sequence[str],
        descending: bool,
        chunk_size: int,
    ) -> tuple[str, Iterator[columns.HistoryColumns]]:
        """The same chunks as `history`, each as columns (StreamHistory's columnar form), and
        the caller's preferred unit.

        Pages of workouts are read in their own short transactions, each checking that the
        session is still live, ahead of the caller in helper threads (_read_pages): the
        database works on the next pages while this one is sent.
        """
        limit = paging.limit("chunk_size", chunk_size, DEFAULT_CHUNK, MAX_CHUNK)
        user_id, exercise_ids, preferred_unit = self._history_scope(exercise_refs)

        def page(
            after: Key | None, size: int, publish: Callable[[Key | None], None]
        ) -> columns.HistoryColumns:
            def work(s: Session) -> columns.HistoryColumns:
                self.auth.current_user(s)  # the session may have ended mid-stream
                workouts = repo.history_workouts(
                    s, user_id, start=start, end=end, after=after, descending=descending,
                    limit=size + 1,
                )  # fmt: skip
                more = len(workouts) > size
                workouts = workouts[:size]
                publish(workouts[-1] if more else None)
                ids = [workout_id for _, workout_id in workouts]
                entries = repo.history_entry_columns(s, user_id, ids, exercise_ids)
                names = repo.exercise_names(s, sorted(set(entries.exercise_ids)))
                sets = repo.history_set_columns(s, user_id, ids, exercise_ids)
                return columns.build_page(workouts, entries, names, sets, descending)

            return self.db.run(work, write=False)

        return preferred_unit, columns.rechunk(_read_pages(page), limit)

    def _history_scope(self, exercise_refs: Sequence[str]) -> tuple[str, list[str], str]:
        """The caller's id, the ids of the exercises a history request names and the caller's
        preferred unit."""
        for i, ref in enumerate(exercise_refs):
            check_ref(f"exercise_ids[{i}]", ref)

        def resolve(s: Session) -> tuple[str, list[str], str]:
            user = self.auth.current_user(s)
            ids = []
            if exercise_refs:
                found = repo.visible_exercises(s, user.id, list(exercise_refs))
                for i, ref in enumerate(exercise_refs):
                    if ref not in found:
                        raise InvalidArgument(f"exercise_ids[{i}]", f"no exercise {shown(ref)}")
                    ids.append(found[ref].id)
            return user.id, ids, user.preferred_unit

        return self.db.run(resolve, write=False)

    # --- statistics ---------------------------------------------------------------------

    def stats(self, as_of: datetime | None, weeks: int) -> tuple[stats.Stats, str]:
        """The caller's statistics as of an instant (default now), and their preferred unit."""
        if weeks < 0 or weeks > MAX_STAT_WEEKS:
            raise InvalidArgument("weeks", f"must be between 0 and {MAX_STAT_WEEKS}")
        moment = as_of or self.now()
        if not EARLIEST <= moment <= self.now() + MAX_FUTURE:
            raise InvalidArgument("as_of", "must be after 1970 and at most a day ahead")

        def work(s: Session) -> tuple[stats.Stats, str]:
            user = self.auth.current_user(s)
            workouts, exercises = stat_history(s, user.id, moment)
            result = stats.compute_stats(
                workouts,
                exercises,
                time_zone=user.time_zone,
                weekly_goal=user.weekly_workout_goal,
                as_of=moment,
                weeks=weeks or DEFAULT_STAT_WEEKS,
            )
            return result, user.preferred_unit

        return self.db.run(work, write=False)


def stat_history(
    s: Session, user_id: str, until: datetime
) -> tuple[list[stats.StatWorkout], dict[str, stats.ExerciseInfo]]:
    """A user's live workouts started by `until`, and the exercises they name, as statistics
    take them."""
    workouts, performed, exercises = repo.stat_rows(s, user_id, until)
    return (
        [
            stats.StatWorkout(
                workout_id,
                started,
                tuple(
                    PerformedData(p.exercise_id, p.notes, tuple(SetData(*x) for x in p.sets))
                    for p in performed.get(workout_id, ())
                ),
            )
            for workout_id, started in workouts
        ],
        {
            exercise_id: stats.ExerciseInfo(name, tuple(primary), tuple(secondary))
            for exercise_id, name, primary, secondary in exercises
        },
    )


Key = tuple[datetime, str]
_END = object()  # "no page after this one", in place of a key


def _read_pages(page: Callable[[Key | None, int, Callable[[Key | None], None]], T]) -> Iterator[T]:
    """Every page of a keyset walk, in order. `page(after, size, publish)` reads up to `size`
    workouts after the key `after` (None: from the first) and returns the page; as soon as it
    knows them, it calls `publish` with the key the next page starts after (None: there is
    no next page).

    HISTORY_COLUMN_READERS pages are read at once, each in a helper thread (in the caller's
    context: the same principal and deadline) and its own transaction: the next page starts
    as soon as this one has published its last key, so one page's queries run while another
    is decoded and the caller sends a third. Pages start small, so the first message goes out
    soon, and grow to HISTORY_COLUMN_WORKOUTS_PER_READ. Closing the iterator waits for the
    reads under way, so no connection stays checked out."""

    def run(after: Future[Any], size: int, following: Future[Any]) -> Any:
        def publish(key: Key | None) -> None:
            if not following.done():  # a retried transaction publishes again
                following.set_result(_END if key is None else key)

        try:
            start_after = after.result()
            if start_after is _END:
                publish(None)
                return _END
            return page(start_after, size, publish)
        except BaseException as error:
            if not following.done():
                following.set_exception(error)
            raise
        finally:
            publish(None)  # never leave the next page waiting

    readers = HISTORY_COLUMN_READERS
    size = min(HISTORY_COLUMN_FIRST_READ, HISTORY_COLUMN_WORKOUTS_PER_READ)
    key: Future[Any] = Future()
    key.set_result(None)
    in_flight: deque[Future[Any]] = deque()
    pool = ThreadPoolExecutor(readers, thread_name_prefix="repwise-history")
    try:
        while True:
            while len(in_flight) < readers:  # as many workers as reads: none waits queued
                following: Future[Any] = Future()
                task = pool.submit(contextvars.copy_context().run, run, key, size, following)
                in_flight.append(task)
                key = following
                size = min(size * 2, HISTORY_COLUMN_WORKOUTS_PER_READ)
            block = in_flight.popleft().result()
            if block is _END:
                return
            yield block
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_page_token(last: Workout) -> str:
    return paging.encode_token({"t": last.started_at.isoformat(), "i": last.id})


def decode_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    data = paging.decode_token(token)
    try:
        moment, last_id = datetime.fromisoformat(data["t"]), str(uuid.UUID(data["i"]))
        if moment.tzinfo is None:
            raise ValueError("no zone")
        return moment, last_id
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidArgument("page_token", paging.NOT_OURS) from None
