"""Seeded synthetic users for tests, `repwise eval` and benchmarks.

Each user follows a realistic program built from the default catalog (by slug):
push/pull/legs, upper/lower, full body or a bro split, on a weekly schedule in
their own time zone and at their usual time of day. Over the months the routine
drifts: exercises are swapped for variants (often ones the user never did),
reordered, added and dropped, and now and then the user changes program. Days
are skipped, exercises skipped or done in another order, one-off exercises
tried, and breaks of one to three weeks taken (some while travelling to another
time zone). Sets are weight × reps that progress, deload and detrain after a
break, with warm-up sets for the big lifts; cardio and holds are timed.

    users = generate_users(200, seed=7)            # plain dataclasses, deterministic
    tl = to_timeline(users, catalog_feature_table())  # the model's Timeline
    load_users(db, users)                          # bulk insert into a database

User i of a seed is the same whatever the count, so a benchmark can generate
and load users in chunks (generate_user(i, seed)).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache, partial
from typing import Any
from zoneinfo import ZoneInfo

import bcrypt
import numpy as np

from client_sdk import features
from client_sdk.model import Timeline
from server.catalog.sources import DEFAULT_CATALOG
from server.db import Database
from server.logs.service import KG_PER_LB, PerformedData, SetData, WorkoutData, content_hash
from server.training import bulk
from server.training.service import FeatureTable

DEFAULT_END = datetime(2026, 11, 1, tzinfo=UTC)
SYNTHETIC_PASSWORD = "synthetic-password"
USER_NAMESPACE = uuid.UUID("5f1c0a3e-8d2b-4c71-9e46-0b7a2d9c3f15")

# Movement slots and the catalog exercises (slugs) that can fill them.
SLOTS: dict[str, tuple[str, ...]] = {
    "chest_press": (
        "barbell-bench-press", "dumbbell-bench-press", "machine-chest-press",
        "smith-machine-bench-press", "paused-bench-press",
    ),
    "incline_press": ("incline-barbell-bench-press", "incline-dumbbell-bench-press"),
    "decline_press": ("decline-barbell-bench-press", "chest-dip", "floor-press"),
    "overhead_press": (
        "barbell-overhead-press", "dumbbell-shoulder-press", "machine-shoulder-press",
        "arnold-press", "landmine-press",
    ),
    "chest_fly": ("cable-crossover", "pec-deck", "dumbbell-fly", "incline-dumbbell-fly"),
    "lateral_raise": ("dumbbell-lateral-raise", "cable-lateral-raise"),
    "front_raise": ("dumbbell-front-raise", "barbell-upright-row"),
    "triceps": (
        "triceps-pushdown", "rope-triceps-pushdown", "ez-bar-skull-crusher",
        "cable-overhead-triceps-extension", "dumbbell-overhead-triceps-extension",
        "close-grip-bench-press",
    ),
    "triceps_2": ("triceps-dip", "dumbbell-triceps-kickback", "diamond-push-up", "bench-dip"),
    "vertical_pull": (
        "pull-up", "lat-pulldown", "chin-up", "assisted-pull-up", "close-grip-lat-pulldown",
        "reverse-grip-lat-pulldown",
    ),
    "row": (
        "barbell-bent-over-row", "pendlay-row", "t-bar-row", "seated-cable-row", "machine-row",
        "one-arm-dumbbell-row",
    ),
    "lat_isolation": ("straight-arm-pulldown", "dumbbell-pullover"),
    "rear_delt": ("face-pull", "reverse-pec-deck", "dumbbell-reverse-fly", "band-pull-apart"),
    "biceps": (
        "barbell-curl", "dumbbell-curl", "ez-bar-curl", "cable-curl", "incline-dumbbell-curl",
    ),
    "biceps_2": (
        "dumbbell-hammer-curl", "ez-bar-preacher-curl", "machine-preacher-curl",
        "concentration-curl",
    ),
    "shrug": ("barbell-shrug", "dumbbell-shrug"),
    "deadlift": ("barbell-deadlift", "trap-bar-deadlift", "sumo-deadlift", "rack-pull"),
    "squat": (
        "barbell-back-squat", "barbell-front-squat", "safety-bar-squat", "hack-squat",
        "smith-machine-squat",
    ),
    "hinge": (
        "barbell-romanian-deadlift", "dumbbell-romanian-deadlift", "barbell-stiff-leg-deadlift",
        "barbell-good-morning",
    ),
    "leg_press": ("leg-press", "hack-squat", "dumbbell-goblet-squat"),
    "single_leg": ("bulgarian-split-squat", "dumbbell-lunge", "reverse-lunge", "dumbbell-step-up"),
    "leg_curl": ("lying-leg-curl", "seated-leg-curl", "nordic-hamstring-curl"),
    "leg_extension": ("leg-extension",),
    "glutes": ("barbell-hip-thrust", "glute-bridge", "cable-pull-through", "cable-glute-kickback"),
    "calves": ("standing-calf-raise", "seated-calf-raise", "leg-press-calf-raise"),
    "hips": ("hip-adduction-machine", "hip-abduction-machine"),
    "abs": (
        "hanging-leg-raise", "cable-crunch", "ab-wheel-rollout", "crunch", "hanging-knee-raise",
        "captains-chair-knee-raise", "plank", "russian-twist",
    ),
    "forearms": ("barbell-wrist-curl", "farmers-walk"),
    "lower_back": ("back-extension", "superman"),
}  # fmt: skip

CARDIO = ("treadmill-running", "stationary-bike", "rowing-machine", "elliptical", "stair-climber")


@dataclass(frozen=True)
class Day:
    title: str
    slots: tuple[str, ...]
    extras: tuple[str, ...]  # slots a drifting routine may add


@dataclass(frozen=True)
class Program:
    name: str
    days: tuple[Day, ...]
    schedules: tuple[tuple[int, ...], ...]  # weekdays trained (Monday = 0)
    share: float


PROGRAMS: tuple[Program, ...] = (
    Program(
        "push_pull_legs",
        (
            Day("Push", ("chest_press", "overhead_press", "incline_press", "chest_fly",
                         "lateral_raise", "triceps"),
                ("decline_press", "triceps_2", "front_raise")),
            Day("Pull", ("vertical_pull", "row", "lat_isolation", "rear_delt", "biceps",
                         "biceps_2"), ("shrug", "deadlift", "forearms")),
            Day("Legs", ("squat", "hinge", "leg_press", "leg_curl", "leg_extension", "calves"),
                ("single_leg", "glutes", "abs", "hips")),
        ),
        ((0, 2, 4), (0, 1, 2, 3, 4, 5), (0, 1, 3, 4, 5), (1, 3, 5)),
        0.3,
    ),
    Program(
        "upper_lower",
        (
            Day("Upper A", ("chest_press", "row", "overhead_press", "vertical_pull", "biceps",
                            "triceps"), ("lateral_raise", "rear_delt", "chest_fly")),
            Day("Lower A", ("squat", "hinge", "leg_curl", "calves", "abs"),
                ("leg_extension", "glutes", "single_leg")),
            Day("Upper B", ("incline_press", "vertical_pull", "row", "lateral_raise", "biceps_2",
                            "triceps_2"), ("chest_fly", "shrug", "rear_delt")),
            Day("Lower B", ("deadlift", "single_leg", "leg_extension", "leg_curl", "calves"),
                ("glutes", "abs", "hips", "lower_back")),
        ),
        ((0, 1, 3, 4), (0, 1, 3, 5), (0, 2, 4, 5)),
        0.25,
    ),
    Program(
        "full_body",
        (
            Day("Full Body A", ("squat", "chest_press", "row", "lateral_raise", "abs"),
                ("biceps", "triceps", "calves")),
            Day("Full Body B", ("deadlift", "overhead_press", "vertical_pull", "single_leg",
                                "biceps"), ("triceps", "rear_delt", "abs")),
            Day("Full Body C", ("leg_press", "incline_press", "row", "triceps", "calves"),
                ("leg_curl", "lateral_raise", "biceps_2")),
        ),
        ((0, 2, 4), (1, 3, 5), (0, 3), (1, 4, 6)),
        0.25,
    ),
    Program(
        "bro_split",
        (
            Day("Chest", ("chest_press", "incline_press", "chest_fly", "decline_press"),
                ("triceps_2", "abs")),
            Day("Back", ("deadlift", "vertical_pull", "row", "lat_isolation"),
                ("shrug", "lower_back", "rear_delt")),
            Day("Shoulders", ("overhead_press", "lateral_raise", "rear_delt", "shrug",
                              "front_raise"), ("abs",)),
            Day("Legs", ("squat", "leg_press", "leg_curl", "leg_extension", "calves"),
                ("hinge", "single_leg", "glutes")),
            Day("Arms", ("biceps", "triceps", "biceps_2", "triceps_2", "forearms"), ("abs",)),
        ),
        ((0, 1, 2, 3, 4), (0, 1, 2, 3, 5)),
        0.2,
    ),
)  # fmt: skip

TIME_ZONES = (
    "America/New_York", "America/Chicago", "America/Los_Angeles", "America/Sao_Paulo",
    "Europe/London", "Europe/Berlin", "Europe/Madrid", "Africa/Lagos", "Asia/Kolkata",
    "Asia/Tokyo", "Asia/Singapore", "Australia/Sydney", "UTC",
)  # fmt: skip
POUND_ZONES = frozenset({"America/New_York", "America/Chicago", "America/Los_Angeles"})

# Working weights of an average trainee (kg), by slug, else by equipment and mechanic.
BASE_KG = {
    "barbell-back-squat": 100, "barbell-front-squat": 80, "safety-bar-squat": 90,
    "barbell-deadlift": 130, "trap-bar-deadlift": 130, "sumo-deadlift": 125, "rack-pull": 150,
    "barbell-bench-press": 80, "paused-bench-press": 70, "close-grip-bench-press": 65,
    "incline-barbell-bench-press": 65, "decline-barbell-bench-press": 80, "floor-press": 70,
    "barbell-overhead-press": 50, "landmine-press": 30, "barbell-bent-over-row": 70,
    "pendlay-row": 70, "t-bar-row": 60, "barbell-romanian-deadlift": 90,
    "barbell-stiff-leg-deadlift": 80, "barbell-good-morning": 50, "barbell-hip-thrust": 100,
    "leg-press": 180, "hack-squat": 100, "smith-machine-squat": 90, "barbell-shrug": 100,
    "farmers-walk": 30, "leg-press-calf-raise": 120, "standing-calf-raise": 80,
}  # fmt: skip
BASE_BY_KIND = {
    ("barbell", "compound"): 60.0, ("barbell", "isolation"): 30.0,
    ("dumbbell", "compound"): 24.0, ("dumbbell", "isolation"): 12.0,
    ("machine", "compound"): 70.0, ("machine", "isolation"): 45.0,
    ("cable", "compound"): 55.0, ("cable", "isolation"): 20.0,
    ("ez_curl_bar", "isolation"): 30.0, ("kettlebells", "compound"): 20.0,
}  # fmt: skip
INCREMENT_KG = {"barbell": 2.5, "dumbbell": 2.0, "kettlebells": 4.0, "ez_curl_bar": 2.5}
INCREMENT_LB = {"barbell": 5.0, "dumbbell": 5.0, "kettlebells": 9.0, "ez_curl_bar": 5.0}
UNLOADED = frozenset({"body_only", "bands", "exercise_ball", "foam_roll", "medicine_ball"})
UNLOADED_SLUGS = frozenset(
    {"ab-wheel-rollout", "back-extension", "captains-chair-knee-raise", "glute-ham-raise"}
)
DISTANCE_PER_MINUTE = {
    "treadmill-running": 170.0,
    "stationary-bike": 450.0,
    "rowing-machine": 230.0,
}
DAY_SECONDS = 86_400.0


# --- the output -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyntheticSet:
    reps: int | None = None
    weight_kg: float | None = None
    rpe: float | None = None
    duration_s: float | None = None
    distance_m: float | None = None
    kind: str = "normal"  # warmup | normal | drop | failure


@dataclass(frozen=True, slots=True)
class SyntheticExercise:
    slug: str
    sets: tuple[SyntheticSet, ...]


@dataclass(frozen=True, slots=True)
class SyntheticWorkout:
    id: str  # a UUID
    started_at: datetime  # aware, UTC
    ended_at: datetime
    time_zone: str  # where the user was (IANA)
    title: str
    exercises: tuple[SyntheticExercise, ...]


@dataclass(frozen=True, slots=True)
class SyntheticUser:
    email: str
    display_name: str
    time_zone: str  # home zone
    preferred_unit: str  # kg | lb
    program: str  # the program at the start (users may switch later)
    workouts: tuple[SyntheticWorkout, ...]  # oldest first

    @property
    def entry_count(self) -> int:
        return sum(len(w.exercises) for w in self.workouts)


# --- the catalog ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Info:
    slug: str
    name: str
    primary: tuple[str, ...]
    equipment: str
    mechanic: str | None
    force: str | None
    category: str


@cache
def _catalog_records() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(DEFAULT_CATALOG.read_text())["exercises"])


@cache
def _catalog() -> dict[str, _Info]:
    return {
        r["slug"]: _Info(
            r["slug"],
            r["name"],
            tuple(r["primary_muscles"]),
            r.get("equipment") or "other",
            r.get("mechanic"),
            r.get("force"),
            r.get("category") or "strength",
        )
        for r in _catalog_records()
    }


@cache
def _one_off_pool() -> dict[str, tuple[str, ...]]:
    """Strength and plyometric exercises by primary muscle, for one-off tries."""
    pool: dict[str, list[str]] = {}
    for info in _catalog().values():
        if info.category in ("strength", "powerlifting", "plyometrics", "strongman"):
            for muscle in info.primary:
                pool.setdefault(muscle, []).append(info.slug)
    return {muscle: tuple(slugs) for muscle, slugs in pool.items()}


def catalog_feature_table() -> FeatureTable:
    """The built-in catalog as a FeatureTable whose ids are slugs: evaluation
    and tests without a database."""
    records = _catalog_records()
    phi = np.zeros((len(records), features.DIMENSIONS))
    for i, r in enumerate(records):
        phi[i] = features.encode(
            features.ExerciseTraits(
                primary_muscles=tuple(r["primary_muscles"]),
                secondary_muscles=tuple(r.get("secondary_muscles", ())),
                equipment=r.get("equipment"),
                mechanic=r.get("mechanic"),
                force=r.get("force"),
                level=r.get("level"),
                category=r.get("category"),
            )
        )
    ids = [r["slug"] for r in records]
    return FeatureTable(
        ids=ids,
        names=[r["name"] for r in records],
        owners=[None] * len(ids),
        archived=np.zeros(len(ids), dtype=bool),
        phi=phi,
        row={slug: i for i, slug in enumerate(ids)},
    )


# --- the generator ----------------------------------------------------------------------


@dataclass
class _Lift:
    weight: float | None  # kg; None for unloaded exercises
    reps: int
    sets: int
    last: float | None = None  # epoch seconds of the last session


@dataclass
class _Person:
    """A user's habits and the state of their training as time goes by."""

    rng: random.Random
    unit: str
    equipment_taste: dict[str, float]
    strength: float
    compound_scheme: tuple[int, int]  # sets, reps
    isolation_scheme: tuple[int, int]
    progress_chance: float
    warmups: int  # warm-up sets before barbell compounds
    logs_rpe: bool
    skip_exercise: float
    swap_order: float
    one_off: float
    cut_short: float
    cardio: str | None
    cardio_chance: float
    abs_finisher: float
    lifts: dict[str, _Lift] = field(default_factory=dict)

    def pick(self, options: Sequence[str]) -> str:
        catalog = _catalog()
        weights = [self.equipment_taste.get(catalog[s].equipment, 0.3) for s in options]
        return self.rng.choices(list(options), weights)[0]

    def routine(self, program: Program) -> list[list[tuple[str, str]]]:
        """Each day of the program as (slot, slug) pairs."""
        days = []
        for day in program.days:
            chosen: list[tuple[str, str]] = []
            for slot in day.slots:
                options = [s for s in SLOTS[slot] if s not in {c for _, c in chosen}]
                if options:
                    chosen.append((slot, self.pick(options)))
            days.append(chosen)
        return days

    def drift(self, program: Program, days: list[list[tuple[str, str]]], d: int) -> None:
        """One change to day d: a variant swap, a reorder, an addition or a removal."""
        rng = self.rng
        day = days[d]
        used = {slug for _, slug in day}
        roll = rng.random()
        if roll < 0.5:
            i = rng.randrange(len(day))
            slot = day[i][0]
            options = [s for s in SLOTS[slot] if s not in used]
            if options:
                day[i] = (slot, self.pick(options))
        elif roll < 0.75:
            if len(day) >= 3:
                i = rng.randrange(1 if rng.random() < 0.8 else 0, len(day) - 1)
                day[i], day[i + 1] = day[i + 1], day[i]
        elif roll < 0.9:
            slots = {slot for slot, _ in day}
            extras = [x for x in program.days[d].extras if x not in slots]
            if extras and len(day) < 8:
                slot = rng.choice(extras)
                options = [s for s in SLOTS[slot] if s not in used]
                if options:
                    day.insert(rng.randint(1, len(day)), (slot, self.pick(options)))
        elif len(day) > 4:
            del day[rng.randrange(1, len(day))]

    def session(self, day: list[tuple[str, str]]) -> list[str]:
        """The exercises of one workout of this day, in the order done."""
        rng = self.rng
        order = [slug for _, slug in day]
        if len(order) >= 3 and rng.random() < self.swap_order:
            i = rng.randrange(1, len(order) - 1)
            order[i], order[i + 1] = order[i + 1], order[i]
        done = [order[0]] + [s for s in order[1:] if rng.random() >= self.skip_exercise]
        if len(done) > 3 and rng.random() < self.cut_short:
            done = done[: rng.randint(3, len(done) - 1)]
        if rng.random() < self.one_off:
            done.insert(rng.randint(1, len(done)), self._one_off(done))
        if self.abs_finisher and rng.random() < self.abs_finisher:
            done.append(self.pick(SLOTS["abs"]))
        if self.cardio is not None and rng.random() < self.cardio_chance:
            cardio = self.cardio if rng.random() < 0.9 else rng.choice(CARDIO)
            done.insert(0, cardio)
        return list(dict.fromkeys(done))  # an exercise once per workout

    def _one_off(self, done: list[str]) -> str:
        catalog = _catalog()
        pool = _one_off_pool()
        if self.rng.random() < 0.7:
            muscle = self.rng.choice([m for s in done for m in catalog[s].primary])
            return self.rng.choice(pool[muscle])
        return self.rng.choice(pool[self.rng.choice(sorted(pool))])

    def sets(self, slug: str, when: float, deload: bool) -> tuple[SyntheticSet, ...]:
        info = _catalog()[slug]
        rng = self.rng
        if info.category == "cardio":
            minutes = rng.uniform(10, 35)
            per_minute = DISTANCE_PER_MINUTE.get(slug)
            distance = (
                float(round(minutes * per_minute * rng.uniform(0.85, 1.15))) if per_minute else None
            )
            return (SyntheticSet(duration_s=float(round(minutes * 60)), distance_m=distance),)
        if info.category == "stretching":
            return tuple(SyntheticSet(duration_s=rng.choice((30.0, 45.0, 60.0))) for _ in range(2))
        lift = self.lifts.get(slug) or self._new_lift(info)
        self.lifts[slug] = lift
        if lift.last is not None and when - lift.last > 14 * DAY_SECONDS:
            if lift.weight is not None:
                lift.weight = self._round(lift.weight * 0.9, info.equipment)
            lift.reps = max(5, lift.reps - 2)
        lift.last = when
        if info.force == "static" and (lift.weight is None or slug == "farmers-walk"):
            hold = float(min(180, 20 + 5 * lift.reps))
            if rng.random() < self.progress_chance:
                lift.reps += 1
            return tuple(
                SyntheticSet(weight_kg=lift.weight, duration_s=hold) for _ in range(lift.sets)
            )
        weight = lift.weight
        if weight is not None and deload:
            weight = self._round(weight * 0.85, info.equipment)
        out: list[SyntheticSet] = []
        if weight is not None and info.mechanic == "compound" and info.equipment == "barbell":
            for share, reps in ((0.0, 10), (0.5, 5), (0.7, 3))[: self.warmups]:
                load = self._round(20.0 if share == 0 else weight * share, "barbell")
                if load < weight:
                    out.append(SyntheticSet(reps=reps, weight_kg=load, kind="warmup"))
        for k in range(lift.sets):
            reps = lift.reps - (1 if k == lift.sets - 1 and rng.random() < 0.3 else 0)
            rpe = min(10.0, round(rng.uniform(6.5, 9.5) * 2) / 2) if self.logs_rpe else None
            kind = "failure" if k == lift.sets - 1 and rng.random() < 0.04 else "normal"
            out.append(SyntheticSet(reps=reps, weight_kg=weight, rpe=rpe, kind=kind))
        if weight is not None and info.mechanic == "isolation" and rng.random() < 0.05:
            drop = self._round(weight * 0.7, info.equipment)
            out.append(SyntheticSet(reps=lift.reps + 4, weight_kg=drop, kind="drop"))
        if not deload and rng.random() < self.progress_chance:
            if lift.weight is None:
                lift.reps = min(25, lift.reps + 1)
            else:
                step = self._round(INCREMENT_KG.get(info.equipment, 2.5), info.equipment)
                lift.weight = self._round(lift.weight + step, info.equipment)
        return tuple(out)

    def _new_lift(self, info: _Info) -> _Lift:
        rng = self.rng
        compound = info.mechanic == "compound"
        sets, reps = self.compound_scheme if compound else self.isolation_scheme
        if info.equipment in UNLOADED or info.slug in UNLOADED_SLUGS:
            return _Lift(None, rng.randint(6, 15), sets)
        base = BASE_KG.get(info.slug) or BASE_BY_KIND.get(
            (info.equipment, info.mechanic or "isolation"), 30.0
        )
        # A new exercise starts light: some way below the trainee's level.
        start = base * self.strength * rng.uniform(0.7, 0.95)
        return _Lift(self._round(start, info.equipment), reps, sets)

    def _round(self, kg: float, equipment: str) -> float:
        """kg rounded to the plates or dumbbells of the user's unit (at least one step)."""
        if self.unit == "lb":
            step = INCREMENT_LB.get(equipment, 5.0)
            return round(max(step, round(kg / KG_PER_LB / step) * step) * KG_PER_LB, 6)
        step = INCREMENT_KG.get(equipment, 2.5)
        return round(max(step, round(kg / step) * step), 6)


def _choose_program(rng: random.Random, avoid: str = "") -> Program:
    options = [p for p in PROGRAMS if p.name != avoid]
    return rng.choices(options, [p.share for p in options])[0]


def _person(rng: random.Random, unit: str) -> _Person:
    taste = {
        e: rng.gammavariate(0.8, 1.0) + 0.05
        for e in ("barbell", "dumbbell", "machine", "cable", "body_only", "ez_curl_bar")
    }
    has_cardio = rng.random() < 0.3
    return _Person(
        rng=rng,
        unit=unit,
        equipment_taste=taste,
        strength=rng.uniform(0.55, 1.4),
        compound_scheme=rng.choice(((5, 5), (3, 5), (4, 6), (3, 8), (4, 8), (3, 10))),
        isolation_scheme=rng.choice(((3, 10), (3, 12), (4, 12), (3, 15))),
        progress_chance=rng.uniform(0.25, 0.6),
        warmups=rng.choice((0, 1, 2, 3, 3)),
        logs_rpe=rng.random() < 0.3,
        skip_exercise=rng.uniform(0.02, 0.12),
        swap_order=rng.uniform(0.02, 0.12),
        one_off=rng.uniform(0.02, 0.15),
        cut_short=rng.uniform(0.02, 0.1),
        cardio=rng.choice(CARDIO) if has_cardio else None,
        cardio_chance=rng.uniform(0.5, 0.95),
        abs_finisher=rng.choice((0.0, 0.0, rng.uniform(0.1, 0.5))),
    )


def generate_user(
    index: int, seed: int = 0, *, weeks: int = 26, end: datetime = DEFAULT_END
) -> SyntheticUser:
    """User `index` of `seed`: a history of between weeks/2 and `weeks` weeks
    ending within a few days of `end`."""
    rng = random.Random(f"repwise-synthetic:{seed}:{index}")
    home = rng.choice(TIME_ZONES)
    unit = "lb" if home in POUND_ZONES else "kg"
    person = _person(rng, unit)
    program = _choose_program(rng)
    first_program = program.name
    schedule = rng.choice(program.schedules)
    days = person.routine(program)
    rotation = 0
    hour = rng.choice((6.0, 7.0, 12.0, 17.0, 18.0, 19.0, 20.0)) + rng.uniform(-0.5, 0.5)
    drift_weeks = rng.uniform(4.0, 12.0)
    breaks_per_year = rng.uniform(0.0, 4.0)
    skip_day = rng.uniform(0.03, 0.2)
    deload_weeks = rng.choice((0, 5, 6, 8, 10))
    trip_chance = rng.uniform(0.0, 0.04)

    zone = ZoneInfo(home)
    last_day = (end - timedelta(days=rng.randint(0, 3))).astimezone(zone).date()
    span = max(14, round(rng.uniform(0.5, 1.0) * weeks * 7))
    day = last_day - timedelta(days=span)
    break_until: date | None = None
    travel: tuple[str, date] | None = None
    week = 0
    workouts: list[SyntheticWorkout] = []
    while day <= last_day:
        if day.weekday() == 0 or week == 0:
            week += 1
            if break_until is None and rng.random() < breaks_per_year / 52:
                break_until = day + timedelta(days=rng.randint(7, 21))
            if travel is None and rng.random() < trip_chance:
                travel = (rng.choice([z for z in TIME_ZONES if z != home]), day + timedelta(6))
            if rng.random() < 1 / 104:  # a new program, now and then
                program = _choose_program(rng, avoid=program.name)
                schedule = rng.choice(program.schedules)
                days = person.routine(program)
                rotation = 0
            for d in range(len(days)):
                if rng.random() < 1 / drift_weeks:
                    person.drift(program, days, d)
        if travel is not None and day > travel[1]:
            travel = None
        if break_until is not None:
            if day < break_until:
                day += timedelta(days=1)
                continue
            break_until = None
        scheduled = day.weekday() in schedule
        if scheduled and rng.random() < skip_day:
            if rng.random() < 0.3:
                rotation += 1  # that day's workout is skipped, not postponed
            scheduled = False
        if scheduled or rng.random() < 0.02:  # and an odd extra day
            where = travel[0] if travel is not None else home
            local = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(where)) + timedelta(
                hours=min(22.5, max(5.0, hour + rng.gauss(0, 0.6)))
            )
            start = local.astimezone(UTC).replace(microsecond=0)
            deload = bool(deload_weeks) and week % deload_weeks == 0
            d = rotation % len(days)
            slugs = person.session(days[d])
            when = start.timestamp()
            performed = tuple(SyntheticExercise(s, person.sets(s, when, deload)) for s in slugs)
            minutes = sum(2.5 * len(p.sets) for p in performed) + rng.uniform(3, 12)
            workouts.append(
                SyntheticWorkout(
                    id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    started_at=start,
                    ended_at=start + timedelta(minutes=round(minutes)),
                    time_zone=where,
                    title=program.days[d].title,
                    exercises=performed,
                )
            )
            rotation += 1
        day += timedelta(days=1)
    workouts.sort(key=lambda w: w.started_at)
    return SyntheticUser(
        email=f"synthetic-{seed}-{index}@example.com",
        display_name=f"Synthetic {seed}-{index}",
        time_zone=home,
        preferred_unit=unit,
        program=first_program,
        workouts=tuple(workouts),
    )


def generate_users(
    count: int, seed: int = 0, *, weeks: int = 26, end: datetime = DEFAULT_END, first: int = 0
) -> list[SyntheticUser]:
    """Users first..first+count-1 of `seed` (see generate_user)."""
    return [generate_user(i, seed, weeks=weeks, end=end) for i in range(first, first + count)]


# --- the model's view -------------------------------------------------------------------


def to_timeline(
    users: Sequence[SyntheticUser],
    table: FeatureTable,
    exercise_ids: Mapping[str, str] | None = None,
) -> Timeline:
    """The users' entries as a Timeline: user numbers are positions in `users`,
    exercises rows of `table` (exercise_ids maps slugs to the table's ids; by
    default the ids are the slugs, as in catalog_feature_table())."""
    user: list[int] = []
    workout: list[int] = []
    time: list[float] = []
    exercise: list[int] = []
    number = 0
    for u, person in enumerate(users):
        for w in person.workouts:
            start = w.started_at.timestamp()
            for p in w.exercises:
                exercise_id = exercise_ids[p.slug] if exercise_ids is not None else p.slug
                user.append(u)
                workout.append(number)
                time.append(start)
                exercise.append(table.row[exercise_id])
            number += 1
    return Timeline.of(user, workout, time, exercise)


# --- the database -----------------------------------------------------------------------


@cache
def synthetic_password_hash() -> str:
    """One bcrypt hash of SYNTHETIC_PASSWORD, shared by every synthetic user."""
    return bcrypt.hashpw(SYNTHETIC_PASSWORD.encode(), bcrypt.gensalt(4)).decode("ascii")


def user_id(person: SyntheticUser) -> str:
    return str(uuid.uuid5(USER_NAMESPACE, person.email))


def load_users(
    db: Database,
    users: Sequence[SyntheticUser],
    *,
    chunk_users: int = 200,
    now: datetime | None = None,
) -> list[str]:
    """Writes the users (password SYNTHETIC_PASSWORD), their workouts, performed
    exercises and sets, and change counters straight into the database with bulk
    inserts, as if each workout had been created once: version 1, change_seq
    1..n in order, the counter at n. The default catalog must be seeded. One
    transaction per chunk of users. Returns the users' ids, in order."""
    slugs = sorted({p.slug for person in users for w in person.workouts for p in w.exercises})
    ids = db.run(lambda s: bulk.shared_exercise_ids(s, slugs), write=False)
    missing = [slug for slug in slugs if slug not in ids]
    if missing:
        raise ValueError(f"not in the shared catalog (seed the default catalog): {missing[:5]}")
    hashed = synthetic_password_hash()
    created = now or datetime.now(UTC)
    out: list[str] = []
    for begin in range(0, len(users), chunk_users):
        rows = bulk.Rows()
        for person in users[begin : begin + chunk_users]:
            out.append(_rows_of(person, ids, hashed, created, rows))
        db.run(partial(bulk.insert_rows, rows=rows), honour_deadline=False)
    return out


def _rows_of(
    person: SyntheticUser,
    ids: Mapping[str, str],
    hashed: str,
    now: datetime,
    rows: bulk.Rows,
) -> str:
    uid = user_id(person)
    joined = person.workouts[0].started_at - timedelta(days=1) if person.workouts else now
    rows.users.append(
        {
            "id": uid, "email": person.email, "password_hash": hashed,
            "display_name": person.display_name, "role": "user", "time_zone": person.time_zone,
            "preferred_unit": person.preferred_unit, "weekly_workout_goal": 3,
            "available_equipment": [], "version": 1, "created_at": joined,
            "updated_at": joined, "password_changed_at": joined,
        }
    )  # fmt: skip
    if person.workouts:
        rows.counters.append({"user_id": uid, "value": len(person.workouts)})
    for seq, w in enumerate(person.workouts, start=1):
        data = WorkoutData(
            id=w.id,
            started_at=w.started_at,
            ended_at=w.ended_at,
            title=w.title,
            time_zone=w.time_zone,
            exercises=tuple(
                PerformedData(
                    exercise_id=ids[p.slug],
                    sets=tuple(
                        SetData(
                            reps=s.reps, weight_kg=s.weight_kg, rpe=s.rpe,
                            duration_s=s.duration_s, distance_m=s.distance_m, kind=s.kind,
                        )
                        for s in p.sets
                    ),
                )
                for p in w.exercises
            ),
        )  # fmt: skip
        rows.workouts.append(
            {
                "user_id": uid, "id": w.id, "title": w.title, "notes": "",
                "started_at": w.started_at, "ended_at": w.ended_at, "time_zone": w.time_zone,
                "content_hash": content_hash(data), "version": 1, "change_seq": seq,
                "created_at": w.ended_at, "updated_at": w.ended_at, "deleted_at": None,
            }
        )  # fmt: skip
        for position, p in enumerate(w.exercises):
            key = {"user_id": uid, "workout_id": w.id, "position": position}
            rows.exercises.append({**key, "exercise_id": ids[p.slug], "notes": ""})
            rows.sets.extend(
                {
                    **key, "set_index": i, "reps": s.reps, "weight_kg": s.weight_kg,
                    "rpe": s.rpe, "rir": None, "duration_s": s.duration_s,
                    "distance_m": s.distance_m, "kind": s.kind,
                }
                for i, s in enumerate(p.sets)
            )  # fmt: skip
    return uid
