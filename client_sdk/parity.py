"""Test vectors for ports of the recommender to other languages (a mobile app, a web client).

A port downloads the same ModelBundle and must reproduce the SDK's top-k, exercise ids in
order and scores to 1e-9 relative. `vectors(bundle, scenarios)` says what the SDK answers:
for each scenario (history logged since the bundle, the workout under way, the time, the
equipment, k) the top k of `LocalModel` built from the bundle, fed the history through
`LocalModel.observe` and asked `LocalModel.recommend`, the very path `RepwiseClient.recommend`
takes. The result is plain JSON:

    {
      "format": "repwise-parity-vectors", "format_version": 1,
      "bundle": {"model_version": 3, "schema_version": 1, "base64": "<serialized ModelBundle>"},
      "scenarios": [
        {"name": "...",
         "history": [{"exercise_id": "...", "workout_id": "...", "workout_start": 1795000000.0}],
         "current_workout": ["..."], "now": 1795600000.0, "equipment": ["dumbbell"] | null,
         "k": 10,
         "expected": [{"exercise_id": "...", "score": 1.2345}]}
      ]
    }

history is oldest first, one item per performed exercise, workout_start in epoch seconds (the
value the SDK reads from the HistoryEntry's Timestamp). tests/parity/vectors.json is such a
file; tests/parity/recommend.js is an independent port checked against it.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from client_sdk.recommend import LocalModel
from repwise.v1 import log_pb2, training_pb2

FORMAT = "repwise-parity-vectors"
FORMAT_VERSION = 1
# How close a port's scores must be to the SDK's.
RELATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Scenario:
    """What a client knows when it asks for recommendations.

    history: (exercise_id, workout_id, workout start in epoch seconds) per performed exercise,
    oldest first, as the SDK streams it (the workouts since the bundle's statistics and the
    last days). current_workout: exercise ids done so far in the workout under way. equipment:
    what the user has (None: no limit)."""

    name: str
    now: float
    history: Sequence[tuple[str, str, float]] = ()
    current_workout: Sequence[str] = ()
    equipment: Sequence[str] | None = None
    k: int = 10

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "history": [
                {"exercise_id": e, "workout_id": w, "workout_start": _seconds(_timestamp(t))}
                for e, w, t in self.history
            ],
            "current_workout": list(self.current_workout),
            "now": float(self.now),
            "equipment": None if self.equipment is None else list(self.equipment),
            "k": self.k,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Scenario:
        equipment = data.get("equipment")
        return Scenario(
            name=str(data.get("name", "")),
            now=float(data["now"]),
            history=[
                (str(h["exercise_id"]), str(h["workout_id"]), float(h["workout_start"]))
                for h in data.get("history", ())
            ],
            current_workout=[str(e) for e in data.get("current_workout", ())],
            equipment=None if equipment is None else [str(e) for e in equipment],
            k=int(data.get("k", 10)),
        )


def history_entries(history: Iterable[tuple[str, str, float]]) -> list[log_pb2.HistoryEntry]:
    """The HistoryEntry messages `LocalModel.observe` reads (exercise, workout, start time)."""
    out = []
    for exercise_id, workout_id, start in history:
        entry = log_pb2.HistoryEntry(workout_id=workout_id)
        entry.workout_start_time.CopyFrom(_timestamp(start))
        entry.exercise.exercise_id = exercise_id
        out.append(entry)
    return out


def model_for(bundle: training_pb2.ModelBundle, scenario: Scenario) -> LocalModel:
    """The SDK's model from the bundle, brought up to date with the scenario's history."""
    model = LocalModel.from_bundle(bundle)
    model.observe(history_entries(scenario.history))
    return model


def top_k(bundle: training_pb2.ModelBundle, scenario: Scenario) -> list[dict[str, Any]]:
    """The SDK's answer: [{"exercise_id", "score"}], best first."""
    recs = model_for(bundle, scenario).recommend(
        scenario.k,
        scenario.current_workout,
        now=scenario.now,
        equipment=scenario.equipment,
    )
    return [{"exercise_id": r.exercise_id, "score": r.score} for r in recs]


def vectors(
    bundle: training_pb2.ModelBundle, scenarios: Iterable[Scenario], *, about: str = ""
) -> dict[str, Any]:
    """Test vectors: the bundle and, per scenario, its inputs and the SDK's top k."""
    out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    if about:
        out["about"] = about
    out["relative_tolerance"] = RELATIVE_TOLERANCE
    out["bundle"] = {
        "model_version": bundle.model_version,
        "schema_version": bundle.schema_version,
        "base64": base64.b64encode(bundle.SerializeToString(deterministic=True)).decode("ascii"),
    }
    out["scenarios"] = [
        {**scenario.to_json(), "expected": top_k(bundle, scenario)} for scenario in scenarios
    ]
    return out


def bundle_of(data: Mapping[str, Any]) -> training_pb2.ModelBundle:
    """The ModelBundle embedded in test vectors."""
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"not {FORMAT} version {FORMAT_VERSION} test vectors")
    bundle = training_pb2.ModelBundle()
    bundle.ParseFromString(base64.b64decode(data["bundle"]["base64"]))
    return bundle


def scenarios_of(data: Mapping[str, Any]) -> list[Scenario]:
    return [Scenario.from_json(s) for s in data["scenarios"]]


def mismatches(
    expected: Sequence[Mapping[str, Any]],
    actual: Sequence[Mapping[str, Any]],
    rel: float = RELATIVE_TOLERANCE,
) -> list[str]:
    """How `actual` top-k differs from `expected`: ids and order exactly, scores to `rel`
    relative; empty when they agree."""
    problems = []
    want = [e["exercise_id"] for e in expected]
    got = [a["exercise_id"] for a in actual]
    if want != got:
        problems.append(f"exercise ids differ: expected {want}, got {got}")
    for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
        if not math.isclose(float(e["score"]), float(a["score"]), rel_tol=rel, abs_tol=0.0):
            problems.append(
                f"rank {i + 1} ({e['exercise_id']}): score {a['score']!r}, expected {e['score']!r}"
            )
    return problems


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp for epoch seconds (to the nanosecond)."""
    whole = math.floor(seconds)
    nanos = min(round((seconds - whole) * 1e9), 999_999_999)
    return timestamp_pb2.Timestamp(seconds=whole, nanos=nanos)


def _seconds(ts: Any) -> float:
    """Epoch seconds of a Timestamp, computed as LocalModel does."""
    return float(ts.seconds) + ts.nanos / 1e9
