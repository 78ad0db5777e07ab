"""Writes tests/parity/vectors.json, the recommender's test vectors for other languages.

    .venv/bin/python -m tests.parity.make_vectors [--out tests/parity/vectors.json]

Starts the real server in-process on a temporary SQLite file with its clock frozen at NOW,
seeds the default catalog, registers one user, logs a fixed routine (fixed workout ids and
times, ROUTINE below), trains with the batch trainer, downloads the user's ModelBundle over
gRPC and writes client_sdk.parity.vectors() of it for SCENARIOS. Everything is deterministic:
running it twice writes the same file, and it only changes when the trainer or the SDK changes.
tests/test_parity.py checks that the SDK still computes the committed vectors.

The routine and the scenarios are also what tests/test_parity.py runs against a live server.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from client_sdk.parity import Scenario, vectors
from repwise.v1 import auth_pb2, common_pb2, log_pb2, training_pb2
from server.catalog.service import stable_id
from server.catalog.sources import seed_default_catalog
from server.db import Database
from server.migrate import upgrade
from server.training import repository as repo
from tests.conftest import PASSWORD, FakeClock, Running, bearer, start_server

VECTORS = Path(__file__).with_name("vectors.json")
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
EMAIL = "parity@example.com"
_IDS = uuid.UUID("5b0c7c52-4f0e-4a55-9d8e-0f6d2a3b9c11")

PUSH = ("barbell-bench-press", "barbell-overhead-press", "cable-crossover", "bench-dip")
PULL = ("assisted-pull-up", "barbell-bent-over-row", "barbell-curl", "cable-curl")
LEGS = ("barbell-back-squat", "barbell-romanian-deadlift", "bulgarian-split-squat")
# Some weeks one exercise is swapped for another of the same muscles.
SWAPS = {
    "cable-crossover": "dumbbell-fly",
    "barbell-curl": "dumbbell-hammer-curl",
    "bulgarian-split-squat": "leg-press",
}
WORKOUTS = 30


def exercise_id(slug: str) -> str:
    """The id of a default-catalog exercise (the same on every installation)."""
    return stable_id(f"builtin:{slug}")


def workout_id(name: str) -> str:
    return str(uuid.uuid5(_IDS, name))


def routine(start: datetime, workouts: int = WORKOUTS) -> list[tuple[str, datetime, list[str]]]:
    """(workout id, start time, exercise slugs) of a push/pull/legs routine every other day,
    at varying hours, with swapped orders, swapped and skipped exercises, so routine and
    transition terms see more than one successor."""
    out = []
    for w in range(workouts):
        slugs = list((PUSH, PULL, LEGS)[w % 3])
        if w % 4 == 3:
            slugs[1], slugs[2] = slugs[2], slugs[1]
        if w % 5 == 1:
            slugs = [SWAPS.get(s, s) for s in slugs]
        if w % 7 == 6:
            slugs = slugs[:-1]
        # A quarter second on odd workouts: Timestamps with nanos.
        when = start + timedelta(days=2 * w, hours=(5 * w) % 7, milliseconds=250 * (w % 2))
        out.append((workout_id(f"routine-{w}"), when, slugs))
    return out


def workout_message(
    workout: str, when: datetime, slugs: Sequence[str], w: int = 0
) -> log_pb2.Workout:
    m = log_pb2.Workout(id=workout, title="ppl")
    m.start_time.FromDatetime(when)
    for slug in slugs:
        performed = m.exercises.add(exercise_id=slug)
        performed.sets.add(reps=10, weight=20, kind=log_pb2.SET_KIND_WARMUP)
        performed.sets.add(reps=8, weight=50 + w)
        performed.sets.add(reps=6 + w % 7, weight=55 + w)
    return m


def log_workouts(
    server: Running, md: Any, workouts: Sequence[tuple[str, datetime, Sequence[str]]]
) -> None:
    for w, (workout, when, slugs) in enumerate(workouts):
        server.logs.CreateWorkout(
            log_pb2.CreateWorkoutRequest(workout=workout_message(workout, when, slugs, w)),
            metadata=md,
        )


def entries(
    workouts: Sequence[tuple[str, datetime, Sequence[str]]],
) -> list[tuple[str, str, float]]:
    """A scenario's history items of workouts (oldest first)."""
    return [
        (exercise_id(slug), workout, when.timestamp())
        for workout, when, slugs in workouts
        for slug in slugs
    ]


def stream_history(server: Running, md: Any, since: float) -> list[tuple[str, str, float]]:
    """What RepwiseClient.local_model streams: entries of workouts started since `since`."""
    request = log_pb2.StreamHistoryRequest(weight_unit=common_pb2.WEIGHT_UNIT_KG)
    request.time_range.start_time.FromDatetime(datetime.fromtimestamp(since, UTC))
    return [
        (
            e.exercise.exercise_id,
            e.workout_id,
            e.workout_start_time.seconds + e.workout_start_time.nanos / 1e9,
        )
        for chunk in server.logs.StreamHistory(request, metadata=md)
        for e in chunk.entries
    ]


# Workouts logged after the bundle was trained (as of NOW, before LATER).
AFTER = [
    (
        workout_id("after-0"),
        NOW - timedelta(hours=20),
        ["assisted-pull-up", "face-pull", "barbell-bent-over-row", "barbell-curl"],
    ),
    (workout_id("after-1"), NOW + timedelta(hours=20), ["barbell-back-squat", "leg-press"]),
]
LATER = NOW + timedelta(days=1, hours=2)
UNKNOWN_EXERCISE = "00000000-0000-4000-8000-00000000dead"


def scenarios(
    recent: Sequence[tuple[str, str, float]], after: Sequence[tuple[str, str, float]]
) -> list[Scenario]:
    """The parity scenarios. recent: the history the SDK streams at NOW (the last week);
    after: the entries of AFTER (logged after the bundle)."""
    now, later = NOW.timestamp(), LATER.timestamp()
    bench, press = exercise_id("barbell-bench-press"), exercise_id("barbell-overhead-press")
    squat, row = exercise_id("barbell-back-squat"), exercise_id("barbell-bent-over-row")
    kettlebell = exercise_id("kettlebell-swing")  # in the catalog, never done
    return [
        Scenario("start of a workout", now, recent, (), None, 10),
        Scenario("mid-workout", now, recent, (bench, press), None, 10),
        Scenario("equipment filter", now, recent, (squat,), ("dumbbell", "cable"), 15),
        Scenario("body weight only, every candidate ranked", now, recent, (), (), 1000),
        Scenario("every candidate ranked", now, recent, (press,), None, 1000),
        Scenario(
            "workouts logged after the bundle",
            later,
            [*recent, *after, (UNKNOWN_EXERCISE, workout_id("after-1"), after[-1][2])],
            (row,),
            None,
            10,
        ),
        Scenario(
            "after the bundle, start of a workout, unknown exercise under way",
            later,
            [*recent, *after],
            (UNKNOWN_EXERCISE,),
            ("barbell", "dumbbell"),
            12,
        ),
        Scenario("a new exercise under way", now, recent, (kettlebell,), None, 10),
        Scenario("no history cached: the bundle's last exercise", now, (), (), None, 10),
        Scenario("nothing in the last week", now + 30 * 86_400.0, recent, (squat,), None, 10),
    ]


def sign_in(server: Running, email: str) -> Any:
    """Call metadata with a fresh access token of `email`."""
    login = server.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    return bearer(login.access_token)


def train_user(server: Running, clock: FakeClock, email: str = EMAIL) -> Any:
    """Seeds the catalog, registers `email`, logs the routine and trains; returns metadata."""
    clock.freeze(NOW)
    seed_default_catalog(server.server.db, clock)
    server.auth.Register(auth_pb2.RegisterRequest(email=email, password=PASSWORD))
    md = sign_in(server, email)
    log_workouts(server, md, routine(NOW - timedelta(days=62)))
    summary = server.server.training.trainer.run_batch(repo.Selection())
    assert summary.trained >= 1 and summary.failed == 0, summary
    return md


def build() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        db = Database(f"sqlite:///{Path(directory) / 'repwise.db'}")
        upgrade(db.engine)
        clock = FakeClock()
        running = start_server(db, clock)
        try:
            md = train_user(running, clock)
            bundle = running.training.GetModelBundle(
                training_pb2.GetModelBundleRequest(), metadata=md
            ).bundle
            stats_time = bundle.stats_time.seconds + bundle.stats_time.nanos / 1e9
            since = min(stats_time, NOW.timestamp() - 7 * 86_400.0)
            recent = stream_history(running, md, since)
        finally:
            running.channel.close()
            running.server.stop(grace=0)
            db.dispose()
    return vectors(
        bundle,
        scenarios(recent, entries(AFTER)),
        about=(
            "Test vectors of repwise's local recommender (client_sdk.parity): a port must "
            "reproduce each scenario's expected top k from the bundle, ids in order and scores "
            "to relative_tolerance. Regenerate: .venv/bin/python -m tests.parity.make_vectors"
        ),
    )


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=VECTORS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out.write_text(dumps(build()))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
