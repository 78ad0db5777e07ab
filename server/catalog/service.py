"""Catalog rules: who sees and changes which exercise, validation, paging, seeding and imports."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime

from sqlalchemy import exc
from sqlalchemy.orm import Session

from client_sdk import features
from server import idempotency, paging
from server.auth.models import User
from server.auth.service import AuthService
from server.catalog import repository as repo
from server.catalog.models import Exercise
from server.db import Database
from server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)

RACE_RETRIES = 5
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
ID_NAMESPACE = uuid.UUID("8f5d3c1e-6a0b-4f7e-9b1d-2c4e6a8b0d1f")
EDITABLE_FIELDS = (
    "slug",
    "name",
    "aliases",
    "primary_muscles",
    "secondary_muscles",
    "equipment",
    "mechanic",
    "force",
    "level",
    "category",
    "instructions",
)


@dataclass(frozen=True)
class ExerciseSpec:
    """The editable fields of an exercise, as plain values."""

    name: str
    slug: str = ""
    aliases: tuple[str, ...] = ()
    primary_muscles: tuple[str, ...] = ()
    secondary_muscles: tuple[str, ...] = ()
    equipment: str | None = None
    mechanic: str | None = None
    force: str | None = None
    level: str | None = None
    category: str | None = None
    instructions: tuple[str, ...] = field(default=())


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "-".join(re.findall(r"[a-z0-9]+", ascii_text.lower()))[:100]


def stable_id(source_ref: str) -> str:
    """Ids of built-in and imported exercises are the same on every installation."""
    return str(uuid.uuid5(ID_NAMESPACE, source_ref))


def _clean(text: str) -> str:
    return " ".join(text.split())


def check_ref(field: str, value: str) -> str:
    """An exercise id or slug as a request names one. Ids are UUIDs and slugs at most 100
    characters, so anything longer or unprintable (NUL breaks PostgreSQL text) names none."""
    ref = value.strip()
    if not ref:
        raise InvalidArgument(field, "is required")
    if len(ref) > 100 or not ref.isprintable():
        raise InvalidArgument(field, "is not an exercise id or slug")
    return ref


def check_spec(spec: ExerciseSpec, prefix: str = "exercise") -> ExerciseSpec:
    """Validate and normalize; errors name the field as `exercise.<field>`."""
    name = _clean(spec.name)
    if not name:
        raise InvalidArgument(f"{prefix}.name", "is required")
    if len(name) > 200 or not name.isprintable():
        raise InvalidArgument(f"{prefix}.name", "must be at most 200 printable characters")
    slug = spec.slug or slugify(name)
    if not SLUG_RE.match(slug) or len(slug) > 100:
        raise InvalidArgument(
            f"{prefix}.slug", "must be lower-case letters and digits joined by single hyphens"
        )
    aliases = tuple(dict.fromkeys(a for a in map(_clean, spec.aliases) if a and a != name))
    if len(aliases) > 30 or any(len(a) > 200 or not a.isprintable() for a in aliases):
        raise InvalidArgument(
            f"{prefix}.aliases", "at most 30 aliases of at most 200 printable characters"
        )
    vocab = {
        "equipment": features.EQUIPMENT,
        "mechanic": features.MECHANICS,
        "force": features.FORCES,
        "level": features.LEVELS,
        "category": features.CATEGORIES,
    }
    for name_, allowed in vocab.items():
        value = getattr(spec, name_)
        if value is not None and value not in allowed:
            raise InvalidArgument(f"{prefix}.{name_}", f"unknown value {value!r}")
    for name_ in ("primary_muscles", "secondary_muscles"):
        for muscle in getattr(spec, name_):
            if muscle not in features.MUSCLES:
                raise InvalidArgument(f"{prefix}.{name_}", f"unknown muscle {muscle!r}")
    primary = tuple(dict.fromkeys(spec.primary_muscles))
    if not primary:
        raise InvalidArgument(f"{prefix}.primary_muscles", "name at least one muscle")
    secondary = tuple(m for m in dict.fromkeys(spec.secondary_muscles) if m not in primary)
    instructions = tuple(i.strip() for i in spec.instructions if i.strip())
    if len(instructions) > 50 or any(len(i) > 2000 for i in instructions):
        raise InvalidArgument(
            f"{prefix}.instructions", "at most 50 steps of at most 2000 characters"
        )
    return replace(
        spec,
        name=name,
        slug=slug,
        aliases=aliases,
        primary_muscles=primary,
        secondary_muscles=secondary,
        instructions=instructions,
    )


def _apply(exercise: Exercise, spec: ExerciseSpec) -> None:
    for name, value in asdict(spec).items():
        setattr(exercise, name, list(value) if isinstance(value, tuple) else value)
    exercise.name_key = spec.name.lower()
    exercise.search_text = "|".join(t.lower() for t in (spec.name, *spec.aliases))


def spec_of(exercise: Exercise) -> ExerciseSpec:
    return ExerciseSpec(
        name=exercise.name,
        slug=exercise.slug,
        aliases=tuple(exercise.aliases),
        primary_muscles=tuple(exercise.primary_muscles),
        secondary_muscles=tuple(exercise.secondary_muscles),
        equipment=exercise.equipment,
        mechanic=exercise.mechanic,
        force=exercise.force,
        level=exercise.level,
        category=exercise.category,
        instructions=tuple(exercise.instructions),
    )


def feature_vector(exercise: Exercise) -> dict[str, float]:
    return dict(features.sparse(features.encode(features.traits_of(exercise))))


def etag(exercise: Exercise) -> str:
    return str(exercise.version)


def new_exercise(
    spec: ExerciseSpec,
    *,
    exercise_id: str,
    owner_id: str | None,
    now: datetime,
    source_ref: str | None = None,
) -> Exercise:
    exercise = Exercise(
        id=exercise_id,
        owner_id=owner_id,
        archived=False,
        source_ref=source_ref,
        version=1,
        created_at=now,
        updated_at=now,
    )
    _apply(exercise, spec)
    return exercise


# --- paging -------------------------------------------------------------------------------


def _filter_digest(f: repo.ExerciseFilter) -> str:
    return hashlib.sha256(json.dumps(asdict(f), sort_keys=True).encode()).hexdigest()[:16]


def encode_page_token(f: repo.ExerciseFilter, last: Exercise) -> str:
    return paging.encode_token({"k": last.name_key, "i": last.id, "f": _filter_digest(f)})


def decode_page_token(f: repo.ExerciseFilter, token: str) -> tuple[str, str] | None:
    if not token:
        return None
    data = paging.decode_token(token)
    try:
        key, last_id, digest = data["k"], data["i"], data["f"]
    except KeyError:
        raise InvalidArgument("page_token", paging.NOT_OURS) from None
    if digest != _filter_digest(f):
        raise InvalidArgument("page_token", "was issued for other filters; start again without it")
    return str(key), str(last_id)


# --- the service ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    exercises: Sequence[Exercise]
    next_page_token: str


class CatalogService:
    def __init__(self, db: Database, auth: AuthService, now: Callable[[], datetime]) -> None:
        self.db = db
        self.auth = auth
        self.now = now

    def list(
        self, make_filter: Callable[[str], repo.ExerciseFilter], page_size: int, page_token: str
    ) -> Page:
        limit = paging.limit("page_size", page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)

        def work(s: Session) -> Page:
            f = make_filter(self.auth.current_user(s).id)
            rows = repo.list_page(s, f, decode_page_token(f, page_token), limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            return Page(rows, encode_page_token(f, rows[-1]) if more else "")

        return self.db.run(work, write=False)

    def get(self, id_or_slug: str) -> Exercise:
        ref = check_ref("id", id_or_slug)

        def work(s: Session) -> Exercise:
            user = self.auth.current_user(s)
            exercise = repo.get_visible(s, user.id, ref)
            if exercise is None:
                raise NotFound(f"no exercise {ref!r}", reason="EXERCISE_NOT_FOUND")
            return exercise

        return self.db.run(work, write=False)

    def create(
        self, spec: ExerciseSpec, public: bool, request_id: str, request_digest: str
    ) -> Exercise:
        spec = check_spec(spec)
        request_id = idempotency.check_request_id(request_id) if request_id else ""

        def work(s: Session) -> Exercise:
            user = self.auth.current_user(s)
            if public and user.role != "admin":
                raise PermissionDenied(
                    "only admins may add to the shared catalog; create a PRIVATE exercise instead",
                    reason="ADMIN_REQUIRED",
                )
            if request_id:
                previous = idempotency.find(
                    s, user.id, "CreateExercise", request_id, request_digest
                )
                if previous is not None:
                    found = repo.get_visible(s, user.id, previous)
                    if found is None:
                        raise FailedPrecondition(
                            "the exercise this request_id created has since been deleted; "
                            "send a new request_id to create it again",
                            reason="REQUEST_ID_RESOURCE_DELETED",
                        )
                    return found
            exercise = new_exercise(
                self._unique_slug(s, spec, None if public else user.id),
                exercise_id=str(uuid.uuid4()),
                owner_id=None if public else user.id,
                now=self.now(),
            )
            repo.add(s, exercise)
            if request_id:
                idempotency.remember(
                    s,
                    user.id,
                    "CreateExercise",
                    request_id,
                    request_digest,
                    exercise.id,
                    self.now(),
                )
            return exercise

        for _ in range(RACE_RETRIES):
            try:
                return self.db.run(work)
            except exc.IntegrityError:
                continue  # a concurrent create took the slug or the request_id: decide again
        raise Aborted("too many concurrent creates; retry", reason="CONCURRENT_CREATE")

    @staticmethod
    def _unique_slug(s: Session, spec: ExerciseSpec, owner_id: str | None) -> ExerciseSpec:
        """Shared exercises keep their slug (taken -> ALREADY_EXISTS); a private one whose
        slug the user already sees (theirs or shared) gets a suffix."""
        if not repo.slug_taken(s, spec.slug, owner_id):
            return spec
        if owner_id is None:
            raise AlreadyExists(f"an exercise with slug {spec.slug!r} exists", reason="SLUG_TAKEN")
        return replace(spec, slug=f"{spec.slug[:90]}-{uuid.uuid4().hex[:8]}")

    def _editable(self, s: Session, user: User, exercise_id: str) -> Exercise:
        exercise = repo.get_visible(s, user.id, exercise_id)
        if exercise is None:
            raise NotFound(f"no exercise {exercise_id!r}", reason="EXERCISE_NOT_FOUND")
        if exercise.owner_id is None and user.role != "admin":
            raise PermissionDenied(
                "only admins may change the shared catalog", reason="ADMIN_REQUIRED"
            )
        locked = repo.get_for_update(s, exercise.id)
        assert locked is not None
        return locked

    def update(self, exercise_id: str, changes: dict[str, object], expected_etag: str) -> Exercise:
        unknown = set(changes) - set(EDITABLE_FIELDS)
        if unknown:
            raise InvalidArgument("update_mask", f"cannot update {sorted(unknown)[0]!r}")
        exercise_id = check_ref("exercise.id", exercise_id)

        def work(s: Session) -> Exercise:
            user = self.auth.current_user(s)
            exercise = self._editable(s, user, exercise_id)
            if expected_etag and expected_etag != etag(exercise):
                raise Aborted(
                    "the exercise changed since it was read; read it again", reason="ETAG_MISMATCH"
                )
            spec = check_spec(replace(spec_of(exercise), **changes))  # type: ignore[arg-type]
            if spec.slug != exercise.slug and repo.slug_taken(s, spec.slug, exercise.owner_id):
                raise AlreadyExists(
                    f"an exercise with slug {spec.slug!r} exists", reason="SLUG_TAKEN"
                )
            if spec != spec_of(exercise):
                _apply(exercise, spec)
                exercise.version += 1
                exercise.updated_at = self.now()
                repo.set_muscles(s, exercise)
            return exercise

        return self.db.run(work)

    def delete(
        self, exercise_id: str, expected_etag: str, is_referenced: Callable[[Session, str], bool]
    ) -> bool:
        """Delete, or archive when workouts refer to the exercise; True if archived."""
        exercise_id = check_ref("id", exercise_id)

        def work(s: Session) -> bool:
            user = self.auth.current_user(s)
            exercise = self._editable(s, user, exercise_id)
            if expected_etag and expected_etag != etag(exercise):
                raise Aborted(
                    "the exercise changed since it was read; read it again", reason="ETAG_MISMATCH"
                )
            if is_referenced(s, exercise.id):
                exercise.archived = True
                exercise.version += 1
                exercise.updated_at = self.now()
                return True
            repo.delete_exercise(s, exercise)
            return False

        return self.db.run(work)


def words_of(query: str) -> tuple[str, ...]:
    return tuple(w for w in query.lower().split() if w)[:10]


def upsert_by_source(
    s: Session, items: Iterable[tuple[str, ExerciseSpec]], now: datetime
) -> tuple[int, int, int]:
    """Insert or update shared exercises keyed by source_ref. Returns (created, updated, unchanged).

    An existing exercise keeps its slug; a new one whose slug is taken gets a suffix.
    """
    items = list(items)
    existing = repo.by_source_refs(s, [ref for ref, _ in items])
    slugs = repo.shared_slugs(s)
    created = updated = unchanged = 0
    for ref, spec in items:
        row = existing.get(ref)
        if row is not None:
            spec = replace(spec, slug=row.slug)
            if spec == spec_of(row):
                unchanged += 1
                continue
            _apply(row, spec)
            row.version += 1
            row.updated_at = now
            repo.set_muscles(s, row)
            updated += 1
            continue
        slug, n = spec.slug, 2
        while slug in slugs:
            slug, n = f"{spec.slug[:95]}-{n}", n + 1
        slugs.add(slug)
        repo.add(
            s,
            new_exercise(
                replace(spec, slug=slug),
                exercise_id=stable_id(ref),
                owner_id=None,
                now=now,
                source_ref=ref,
            ),
        )
        created += 1
    return created, updated, unchanged
