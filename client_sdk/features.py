"""Exercise features, schema v1 (DESIGN.md §3). Pure numpy: the server, the
trainer and the SDK all encode exercises with this one module.

φ(e) = [muscles | equipment | mechanic | force | level | category], where a
primary muscle counts 1.0 and a secondary 0.5, the rest are one-hot, and the
whole vector is scaled to unit length. Any change here bumps SCHEMA_VERSION.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

MUSCLES = (
    "abdominals", "abductors", "adductors", "biceps", "calves", "chest", "forearms", "glutes",
    "hamstrings", "lats", "lower_back", "middle_back", "neck", "quadriceps", "shoulders", "traps",
    "triceps",
)  # fmt: skip
EQUIPMENT = (
    "body_only", "barbell", "dumbbell", "kettlebells", "cable", "machine", "bands",
    "medicine_ball", "exercise_ball", "foam_roll", "ez_curl_bar", "other",
)  # fmt: skip
MECHANICS = ("compound", "isolation")
FORCES = ("push", "pull", "static")
LEVELS = ("beginner", "intermediate", "expert")
CATEGORIES = (
    "strength", "powerlifting", "olympic_weightlifting", "strongman", "plyometrics",
    "stretching", "cardio",
)  # fmt: skip

PRIMARY_WEIGHT = 1.0
SECONDARY_WEIGHT = 0.5

_BLOCKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("muscle", MUSCLES),
    ("equipment", EQUIPMENT),
    ("mechanic", MECHANICS),
    ("force", FORCES),
    ("level", LEVELS),
    ("category", CATEGORIES),
)
FEATURE_NAMES: tuple[str, ...] = tuple(
    f"{block}:{value}" for block, values in _BLOCKS for value in values
)
DIMENSIONS = len(FEATURE_NAMES)
_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class ExerciseTraits:
    """What the encoding reads of an exercise; None where a trait is unknown."""

    primary_muscles: tuple[str, ...]
    secondary_muscles: tuple[str, ...] = ()
    equipment: str | None = None
    mechanic: str | None = None
    force: str | None = None
    level: str | None = None
    category: str | None = None


def traits_of(exercise: Any) -> ExerciseTraits:
    """The traits of anything with the catalog's attribute names (a row, a spec)."""
    return ExerciseTraits(
        primary_muscles=tuple(exercise.primary_muscles),
        secondary_muscles=tuple(exercise.secondary_muscles),
        equipment=exercise.equipment,
        mechanic=exercise.mechanic,
        force=exercise.force,
        level=exercise.level,
        category=exercise.category,
    )


def encode(traits: ExerciseTraits) -> np.ndarray:
    """φ(e): ndarray of shape (DIMENSIONS,), unit length (all zeros if no trait is known).

    Raises ValueError naming the trait for a value outside the vocabulary.
    """
    vector = np.zeros(DIMENSIONS)
    for muscle in traits.secondary_muscles:
        vector[_index("muscle", muscle)] = SECONDARY_WEIGHT
    for muscle in traits.primary_muscles:  # primary wins if listed as both
        vector[_index("muscle", muscle)] = PRIMARY_WEIGHT
    for block in ("equipment", "mechanic", "force", "level", "category"):
        value = getattr(traits, block)
        if value is not None:
            vector[_index(block, value)] = 1.0
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _index(block: str, value: str) -> int:
    try:
        return _INDEX[f"{block}:{value}"]
    except KeyError:
        raise ValueError(f"unknown {block} {value!r}") from None


def sparse(vector: np.ndarray) -> Mapping[str, float]:
    """The non-zero dimensions of a feature vector, by name."""
    return {FEATURE_NAMES[i]: float(vector[i]) for i in np.flatnonzero(vector)}
