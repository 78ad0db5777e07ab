"""Validates the built-in default exercise catalog (server/catalog/data/default_catalog.json).

Plain data checks: no server or database. The catalog must use the API's
vocabularies, have stable unique slugs, unambiguous names and aliases (they
are used to match exercise names from Strong/Hevy/FitNotes imports), cover
every muscle and every kind of equipment, and carry instructions written for
this project rather than copied from the free-exercise-db reference data.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CATALOG_PATH = REPO_ROOT / "server" / "catalog" / "data" / "default_catalog.json"
# CI checks out shared/ beside the repository.
REFERENCE_PATH = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "exercise-catalog" / "exercises.json"
)

MUSCLES = (
    "abdominals",
    "abductors",
    "adductors",
    "biceps",
    "calves",
    "chest",
    "forearms",
    "glutes",
    "hamstrings",
    "lats",
    "lower_back",
    "middle_back",
    "neck",
    "quadriceps",
    "shoulders",
    "traps",
    "triceps",
)
EQUIPMENT = (
    "body_only",
    "barbell",
    "dumbbell",
    "kettlebells",
    "cable",
    "machine",
    "bands",
    "medicine_ball",
    "exercise_ball",
    "foam_roll",
    "ez_curl_bar",
    "other",
)
MECHANICS = ("compound", "isolation", None)
FORCES = ("push", "pull", "static", None)
LEVELS = ("beginner", "intermediate", "expert")
CATEGORIES = (
    "strength",
    "powerlifting",
    "olympic_weightlifting",
    "strongman",
    "plyometrics",
    "stretching",
    "cardio",
)
FIELDS = {
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
}
SLUG_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
MIN_EXERCISES = 150


def _load_catalog() -> dict[str, Any]:
    with CATALOG_PATH.open(encoding="utf-8") as f:
        return json.load(f)


CATALOG = _load_catalog()
EXERCISES: list[dict[str, Any]] = CATALOG["exercises"]
IDS = [str(e.get("slug", i)) for i, e in enumerate(EXERCISES)]


def _norm(text: str) -> str:
    """Case-insensitive, whitespace-normalized form used for name matching."""
    return " ".join(text.split()).casefold()


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


@pytest.fixture(scope="module")
def reference_instructions() -> set[str]:
    if not REFERENCE_PATH.is_file():
        pytest.fail(
            f"reference exercise data not found at {REFERENCE_PATH}; the shared/ directory "
            "(shared/data/exercise-catalog/exercises.json) must be checked out beside the repo "
            "so the default catalog can be checked against it",
            pytrace=False,
        )
    with REFERENCE_PATH.open(encoding="utf-8") as f:
        reference = json.load(f)
    return {step.strip() for exercise in reference for step in exercise.get("instructions", [])}


def test_top_level_shape() -> None:
    assert set(CATALOG) == {"version", "exercises"}
    assert CATALOG["version"] == 1
    assert isinstance(EXERCISES, list)
    assert len(EXERCISES) >= MIN_EXERCISES


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_fields_and_types(exercise: dict[str, Any]) -> None:
    assert set(exercise) == FIELDS
    assert isinstance(exercise["slug"], str)
    assert isinstance(exercise["name"], str)
    assert 1 <= len(exercise["name"]) <= 200
    assert exercise["name"] == exercise["name"].strip()
    for key in ("aliases", "primary_muscles", "secondary_muscles", "instructions"):
        assert _is_str_list(exercise[key]), key
    for key in ("equipment", "level", "category"):
        assert isinstance(exercise[key], str), key
    for key in ("mechanic", "force"):
        assert exercise[key] is None or isinstance(exercise[key], str), key


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_vocabularies(exercise: dict[str, Any]) -> None:
    assert exercise["equipment"] in EQUIPMENT
    assert exercise["mechanic"] in MECHANICS
    assert exercise["force"] in FORCES
    assert exercise["level"] in LEVELS
    assert exercise["category"] in CATEGORIES
    for muscle in exercise["primary_muscles"] + exercise["secondary_muscles"]:
        assert muscle in MUSCLES


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_muscles(exercise: dict[str, Any]) -> None:
    primary, secondary = exercise["primary_muscles"], exercise["secondary_muscles"]
    assert len(primary) >= 1
    assert len(secondary) <= 3
    assert len(set(primary)) == len(primary)
    assert len(set(secondary)) == len(secondary)
    assert not set(primary) & set(secondary), "a muscle is both primary and secondary"


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_instructions(exercise: dict[str, Any]) -> None:
    steps = exercise["instructions"]
    assert 2 <= len(steps) <= 6
    for step in steps:
        assert step.strip(), "empty instruction"
        assert step == step.strip()


@pytest.mark.parametrize("exercise", EXERCISES, ids=IDS)
def test_aliases_are_clean(exercise: dict[str, Any]) -> None:
    own = [_norm(exercise["name"])]
    for alias in exercise["aliases"]:
        assert alias.strip(), "empty alias"
        assert alias == alias.strip()
        key = _norm(alias)
        assert key not in own, f"alias {alias!r} repeats the name or another alias"
        own.append(key)


def test_slugs_valid_and_unique() -> None:
    bad = [s for s in IDS if not SLUG_RE.fullmatch(s)]
    assert not bad, f"malformed slugs: {bad}"
    dupes = [s for s, n in Counter(IDS).items() if n > 1]
    assert not dupes, f"duplicate slugs: {dupes}"


def test_names_unique() -> None:
    counts = Counter(_norm(e["name"]) for e in EXERCISES)
    dupes = [name for name, n in counts.items() if n > 1]
    assert not dupes, f"duplicate names: {dupes}"


def test_no_name_or_alias_shared_between_exercises() -> None:
    owner: dict[str, str] = {}
    clashes = []
    for exercise in EXERCISES:
        for text in [exercise["name"], *exercise["aliases"]]:
            key = _norm(text)
            other = owner.setdefault(key, exercise["slug"])
            if other != exercise["slug"]:
                clashes.append(f"{text!r}: {other} and {exercise['slug']}")
    assert not clashes, "names/aliases used by more than one exercise:\n" + "\n".join(clashes)


@pytest.mark.parametrize("muscle", MUSCLES)
def test_every_muscle_is_primary_at_least_twice(muscle: str) -> None:
    count = sum(muscle in e["primary_muscles"] for e in EXERCISES)
    assert count >= 2, f"{muscle} is a primary muscle of only {count} exercise(s)"


@pytest.mark.parametrize("equipment", EQUIPMENT)
def test_every_equipment_used_at_least_twice(equipment: str) -> None:
    count = sum(e["equipment"] == equipment for e in EXERCISES)
    assert count >= 2, f"{equipment} is used by only {count} exercise(s)"


def test_instructions_not_copied_from_reference(reference_instructions: set[str]) -> None:
    copied = [
        f"{e['slug']}: {step!r}"
        for e in EXERCISES
        for step in e["instructions"]
        if step.strip() in reference_instructions
    ]
    assert not copied, "instructions copied from free-exercise-db:\n" + "\n".join(copied)
