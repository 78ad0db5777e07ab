"""`repwise import {strong,hevy,fitnotes} FILE --user EMAIL` and `repwise export`.

An import reads the file, matches its exercise names to what the user can see (the shared
catalog and their own exercises), prints the match table, creates a private exercise for
each name that matched nothing, then stores each workout under an id derived from the file
(uuid5 of the workout's key), so importing the same file again adds nothing.

New exercises are deterministic: their id is uuid5(user id, normalized name), so two
spellings that normalize alike ("Zercher Squats", "zercher squat") share one, and a later
import finds it again before any matching. Their equipment is read from the name
("(Barbell)", "Dumbbell ..."); their primary muscle is, in this order: the FitNotes Category
("Chest" -> chest, "Back" -> lats, "Legs" -> quadriceps, ...), a keyword of the name
("curl" -> biceps, "row" -> lats, "squat" -> quadriceps, ...), else the primary muscles of
the most similar catalog exercise by name. A name that is mostly distance or time with no
load becomes a "cardio" exercise, everything else "strength".
"""

from __future__ import annotations

import difflib
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session

from server.auth import repository as auth_repository
from server.auth.models import User
from server.auth.service import normalize_email
from server.catalog import repository as catalog_repository
from server.catalog.models import Exercise
from server.catalog.service import (
    CatalogService,
    ExerciseSpec,
    check_spec,
    new_exercise,
    slugify,
)
from server.db import Database
from server.errors import AlreadyExists, InvalidArgument, NotFound
from server.logs import exports
from server.logs.imports import (
    CatalogEntry,
    ImportedExercise,
    ImportedWorkout,
    Match,
    equipment_of,
    match_names,
    normalize,
    parse,
)
from server.logs.service import LogService, PerformedData, WorkoutData, check_workout

WORKOUT_NAMESPACE = uuid.UUID("4b0d6a57-3f0e-4c55-9a3c-2f61d7e8a901")
EXERCISE_NAMESPACE = uuid.UUID("c2a9e3f4-1b7d-4e8a-8f36-5d0c9b2a7e14")
IMPORT_REF_PREFIX = "import:"

CATEGORY_MUSCLES = {
    "chest": "chest",
    "back": "lats",
    "shoulders": "shoulders",
    "biceps": "biceps",
    "triceps": "triceps",
    "legs": "quadriceps",
    "abs": "abdominals",
    "core": "abdominals",
    "glutes": "glutes",
    "calves": "calves",
    "forearms": "forearms",
    "cardio": "quadriceps",
}
# First keyword found in the normalized name wins; more specific words come first.
KEYWORD_MUSCLES = (
    ("calf", "calves"),
    ("calves", "calves"),
    ("shrug", "traps"),
    ("leg curl", "hamstrings"),
    ("hamstring", "hamstrings"),
    ("romanian", "hamstrings"),
    ("deadlift", "hamstrings"),
    ("hip thrust", "glutes"),
    ("glute", "glutes"),
    ("bridge", "glutes"),
    ("squat", "quadriceps"),
    ("lunge", "quadriceps"),
    ("leg press", "quadriceps"),
    ("leg extension", "quadriceps"),
    ("tricep", "triceps"),
    ("pushdown", "triceps"),
    ("skull", "triceps"),
    ("wrist", "forearms"),
    ("curl", "biceps"),
    ("pulldown", "lats"),
    ("pull up", "lats"),
    ("chin up", "lats"),
    ("row", "lats"),
    ("bench", "chest"),
    ("fly", "chest"),
    ("chest", "chest"),
    ("push up", "chest"),
    ("dip", "chest"),
    ("raise", "shoulders"),
    ("press", "shoulders"),
    ("shoulder", "shoulders"),
    ("crunch", "abdominals"),
    ("plank", "abdominals"),
    ("sit up", "abdominals"),
    ("neck", "neck"),
)


@dataclass(frozen=True)
class ImportSummary:
    workouts: int  # in the file
    created: int
    unchanged: int  # already imported, identical
    conflicts: int  # already imported but changed since: left alone
    new_exercises: int  # created now (or that a real run would create, in a dry run)
    matches: dict[str, Match] = field(default_factory=dict)
    dry_run: bool = False


def workout_id(kind: str, imported: ImportedWorkout) -> str:
    return str(uuid.uuid5(WORKOUT_NAMESPACE, f"{kind}:{imported.key}"))


def custom_exercise_id(user_id: str, name: str) -> str:
    return str(uuid.uuid5(EXERCISE_NAMESPACE, f"{user_id}|{normalize(name)}"))


def _visible(s: Session, user: User) -> list[Exercise]:
    rows = catalog_repository.list_page(
        s, catalog_repository.ExerciseFilter(viewer_id=user.id, include_archived=True), None, 10**7
    )
    return list(rows)


def _entry(exercise: Exercise) -> CatalogEntry:
    return CatalogEntry(
        id=exercise.id,
        name=exercise.name,
        aliases=tuple(exercise.aliases),
        equipment=exercise.equipment,
        primary_muscles=tuple(exercise.primary_muscles),
        private=exercise.owner_id is not None,
        fuzzy=not (exercise.source_ref or "").startswith(IMPORT_REF_PREFIX),
    )


def primary_muscle(name: str, category: str, catalog: Iterable[CatalogEntry]) -> str:
    """The documented rule: FitNotes category, a keyword, else the most similar exercise."""
    by_category = CATEGORY_MUSCLES.get(category.strip().lower())
    if by_category:
        return by_category
    plain = " " + " ".join(re.findall(r"[a-z0-9]+", name.lower().replace("-", " ")))
    plain = plain.replace(" pullup", " pull up").replace(" chinup", " chin up")
    plain = plain.replace(" pushup", " push up").replace(" situp", " sit up")
    for keyword, muscle in KEYWORD_MUSCLES:
        if f" {keyword}" in plain:
            return muscle
    target = normalize(name)
    ranked = sorted(
        (e for e in catalog if e.primary_muscles),
        key=lambda e: (-difflib.SequenceMatcher(None, target, normalize(e.name)).ratio(), e.name),
    )
    return ranked[0].primary_muscles[0] if ranked else "abdominals"


def _is_cardio(exercises: list[ImportedExercise]) -> bool:
    sets = [s for e in exercises for s in e.sets]
    if any(e.category.strip().lower() == "cardio" for e in exercises):
        return True
    timed = [s for s in sets if (s.distance_m or s.duration_s) and not s.weight_kg and not s.reps]
    return bool(sets) and len(timed) * 2 > len(sets)


def _spec(
    new_id: str, name: str, exercises: list[ImportedExercise], catalog: list[CatalogEntry]
) -> ExerciseSpec:
    category = next((e.category for e in exercises if e.category), "")
    return ExerciseSpec(
        name=name[:200],
        slug=slugify(name)[:90].strip("-") or f"exercise-{new_id[:8]}",
        primary_muscles=(primary_muscle(name, category, catalog),),
        equipment=equipment_of(name),
        category="cardio" if _is_cardio(exercises) else "strength",
    )


def _print_table(out: IO[str], matches: dict[str, Match]) -> None:
    width = max([len("name"), *(len(n) for n in matches)])
    new = "(new custom exercise)"
    target_width = max(
        [len("catalog exercise"), len(new), *(len(m.catalog_name) for m in matches.values())]
    )
    out.write(f"{'name':<{width}}  {'catalog exercise':<{target_width}}  method      score\n")
    for name, m in matches.items():
        target = m.catalog_name or new
        out.write(f"{name:<{width}}  {target:<{target_width}}  {m.method:<10}  {m.score:.2f}\n")


def run_import(
    db: Database,
    catalog_service: CatalogService,
    logs_service: LogService,
    kind: str,
    path: str | Path,
    email: str,
    *,
    dry_run: bool = False,
    unit: str | None = None,
    time_zone: str | None = None,
    out: IO[str],
) -> ImportSummary:
    """Import one export file for the user with this email; see the module docstring.

    `unit` says what weights mean in files that do not say (default: the user's preferred
    unit); `time_zone` whose wall time the file's times are (default: the user's zone).
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgument(str(path), f"cannot read the file: {error}") from None

    def find_user(s: Session) -> tuple[User, list[Exercise]]:
        user = auth_repository.get_user_by_email(s, normalize_email(email))
        if user is None:
            raise NotFound(f"no user with email {email}", reason="USER_NOT_FOUND")
        return user, _visible(s, user)

    user, visible = db.run(find_user, write=False)
    zone = time_zone or user.time_zone or "UTC"
    file_unit = unit or user.preferred_unit
    try:
        workouts = parse(kind, text, file_unit, zone)
    except (ValueError, OverflowError) as error:
        raise InvalidArgument(str(path), str(error)) from None
    if unit is None:
        out.write(
            f"weights without a unit in the file are read as {file_unit} "
            "(the user's preferred unit; --unit changes it)\n"
        )

    by_id = {e.id: e for e in visible}
    catalog = [_entry(e) for e in visible if not e.archived]
    names = list(dict.fromkeys(e.name for w in workouts for e in w.exercises))
    matches: dict[str, Match] = {}
    for name in names:
        known = by_id.get(custom_exercise_id(user.id, name))
        if known is not None:  # made by an earlier import: always the same answer
            matches[name] = Match(known.id, "exact", 1.0, known.name)
    rest = match_names([n for n in names if n not in matches], catalog)
    matches = {name: matches.get(name) or rest[name] for name in names}
    _print_table(out, matches)

    # New exercises, one per normalized name.
    performed_by_name: dict[str, list[ImportedExercise]] = {}
    for w in workouts:
        for e in w.exercises:
            performed_by_name.setdefault(e.name, []).append(e)
    new_specs: dict[str, ExerciseSpec] = {}
    for name, m in matches.items():
        if m.method != "new":
            continue
        new_id = custom_exercise_id(user.id, name)
        matches[name] = Match(new_id, "new", 0.0, "")
        if new_id not in new_specs:
            try:
                new_specs[new_id] = check_spec(
                    _spec(new_id, name, performed_by_name[name], catalog)
                )
            except InvalidArgument as error:
                raise InvalidArgument(str(path), f"exercise {name!r}: {error.message}") from None

    now = logs_service.now()
    data: list[tuple[ImportedWorkout, WorkoutData]] = []
    for w in workouts:
        item = WorkoutData(
            id=workout_id(kind, w),
            started_at=w.started_at,
            ended_at=w.ended_at,
            title=w.title,
            notes=w.notes,
            time_zone=w.time_zone,
            exercises=tuple(
                PerformedData(
                    exercise_id=str(matches[e.name].exercise_id), notes=e.notes, sets=e.sets
                )
                for e in w.exercises
            ),
        )
        try:
            check_workout(item, now, zone)
        except InvalidArgument as error:
            raise InvalidArgument(
                str(path),
                f"the workout starting at line {w.line} ({w.started_at:%Y-%m-%d %H:%M}): "
                f"{error.message}",
            ) from None
        data.append((w, item))

    if dry_run:
        out.write(
            f"dry run: {len(workouts)} workouts and {len(new_specs)} new exercises; "
            "nothing was stored\n"
        )
        return ImportSummary(len(workouts), 0, 0, 0, len(new_specs), matches, dry_run=True)

    def create_exercises(s: Session) -> int:
        made = 0
        for new_id, spec in new_specs.items():
            if catalog_repository.get_visible(s, user.id, new_id) is not None:
                continue
            slug = spec.slug
            if catalog_repository.slug_taken(s, slug, user.id):
                slug = f"{slug}-{new_id[:8]}"
            catalog_repository.add(
                s,
                new_exercise(
                    replace(spec, slug=slug),
                    exercise_id=new_id,
                    owner_id=user.id,
                    now=catalog_service.now(),
                    source_ref=f"{IMPORT_REF_PREFIX}{new_id}",
                ),
            )
            made += 1
        return made

    made = db.run(create_exercises) if new_specs else 0
    created = unchanged = conflicts = 0
    for w, item in data:
        try:
            _, is_new = logs_service.create_for(user.id, item)
        except AlreadyExists:
            conflicts += 1
            out.write(
                f"skipped the workout of {w.started_at:%Y-%m-%d %H:%M} (line {w.line}): "
                "it was imported before and has changed since\n"
            )
            continue
        if is_new:
            created += 1
        else:
            unchanged += 1
    out.write(
        f"imported {path}: {created} new workouts, {unchanged} unchanged, "
        f"{conflicts} changed since an earlier import (left alone), {made} new exercises\n"
    )
    return ImportSummary(len(workouts), created, unchanged, conflicts, made, matches)


def run_export(
    db: Database,
    email: str,
    fmt: str,
    *,
    unit: str | None = None,
    write: Callable[[bytes], object],
) -> int:
    """Write all of a user's workouts as "json" or "strong-csv"; returns the bytes written."""

    def find_user(s: Session) -> User:
        user = auth_repository.get_user_by_email(s, normalize_email(email))
        if user is None:
            raise NotFound(f"no user with email {email}", reason="USER_NOT_FOUND")
        return user

    user = db.run(find_user, write=False)
    chosen = unit or user.preferred_unit
    chunks = exports.export_user(db, user.id, fmt, chosen)
    total = 0
    for chunk in chunks:
        write(chunk)
        total += len(chunk)
    return total
