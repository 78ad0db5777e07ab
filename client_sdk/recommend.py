"""Local recommendations from a model bundle (DESIGN.md §3), offline.

`LocalModel.from_bundle(bundle)` turns the bundle into arrays; `observe()` adds
workouts logged since the bundle's statistics (so routine, transition,
frequency and recency stay live); `recommend()` scores every candidate with
client_sdk.model, the code the trainer uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client_sdk import features
from client_sdk.model import (
    DAY,
    RECENT_DAYS,
    SEQUENCE_PARAMETERS,
    STATE_NAMES,
    TERM_NAMES,
    SequenceStats,
    Timeline,
    combine,
    extend_stats,
    score_terms,
    states,
)

# Workouts starting after stats_time are new to the statistics; the server's
# float seconds may differ from the Timestamp's by rounding.
CUT_TOLERANCE_S = 0.001
# Double progression: add reps up to the top of the range, then add weight.
REP_RANGE = (6, 12)
WEIGHT_STEP_KG = 2.5


@dataclass(frozen=True)
class Recommendation:
    exercise_id: str
    name: str
    score: float
    # Each term's weighted contribution, by TERM_NAMES.
    contributions: dict[str, float]
    reason: str
    # Next weight (kg) × reps to try, from the latest session; None if unknown.
    suggested_weight_kg: float | None
    suggested_reps: int | None


@dataclass
class _Entry:
    time: float
    workout: str
    exercise: int


@dataclass
class LocalModel:
    version: int
    ids: list[str]
    names: list[str]
    phi: np.ndarray
    coefficients: np.ndarray
    weights: np.ndarray
    stats: SequenceStats
    top_sets: dict[int, tuple[float | None, int | None]]
    # Entries of the last RECENT_DAYS days (and the latest one), for the state.
    recent: list[_Entry] = field(default_factory=list)
    row: dict[str, int] = field(default_factory=dict)
    # The profile's equipment when known (RepwiseClient fills it in).
    equipment: list[str] | None = None

    @staticmethod
    def from_bundle(bundle: Any) -> LocalModel:
        """From a repwise.v1.ModelBundle message."""
        if not compatible(bundle):
            raise ValueError(
                f"bundle schema {bundle.schema_version} (features, state or sequence "
                f"parameters) does not match this SDK's {features.SCHEMA_VERSION}; upgrade the SDK"
            )
        ids = list(bundle.exercise_ids)
        row = {exercise_id: i for i, exercise_id in enumerate(ids)}
        cf = bundle.catalog_features
        w = bundle.coefficients
        sw = bundle.weights
        known = [s for s in bundle.exercise_stats if s.exercise_id in row]
        exercise = np.array([row[s.exercise_id] for s in known], dtype=np.int64)
        transitions = [
            t for t in bundle.transitions if t.from_exercise_id in row and t.to_exercise_id in row
        ]
        stats_time = bundle.stats_time.seconds + bundle.stats_time.nanos / 1e9
        stats = SequenceStats(
            ref_time=stats_time,
            last_exercise=row.get(bundle.last_exercise_id, -1),
            exercise=exercise,
            count=np.array([s.count for s in known], dtype=np.float64),
            decayed=np.array([s.decayed_count for s in known], dtype=np.float64),
            last_time=np.array([_seconds(s.last_time) for s in known], dtype=np.float64),
            from_exercise=np.array([row[t.from_exercise_id] for t in transitions], np.int64),
            to_exercise=np.array([row[t.to_exercise_id] for t in transitions], np.int64),
            transition_count=np.array([t.count for t in transitions], dtype=np.float64),
            transition_last_time=np.array([_seconds(t.last_time) for t in transitions]),
            transition_last_index=np.array([t.last_index for t in transitions], np.int64),
        )
        order = np.argsort(stats.exercise, kind="stable")
        stats = _sorted(stats, order)
        top_sets = {
            row[s.exercise_id]: (
                s.last_top_weight_kg if s.HasField("last_top_weight_kg") else None,
                s.last_top_reps if s.HasField("last_top_reps") else None,
            )
            for s in known
        }
        return LocalModel(
            version=bundle.model_version,
            ids=ids,
            names=list(bundle.exercise_names),
            phi=np.array(cf.values, dtype=np.float64).reshape(cf.rows, cf.cols),
            coefficients=np.array(w.values, dtype=np.float64).reshape(w.rows, w.cols),
            weights=np.array([sw.routine, sw.transition, sw.similarity, sw.frequency, sw.recency]),
            stats=stats,
            top_sets=top_sets,
            row=row,
        )

    @property
    def stats_time(self) -> float:
        return self.stats.ref_time

    def observe(self, entries: Iterable[Any]) -> None:
        """Adds logged history (repwise.v1.HistoryEntry messages, oldest first).

        Entries of workouts started after the statistics are added to them; every
        entry of the last RECENT_DAYS days feeds the state. Unknown exercises
        (created after the bundle) are skipped."""
        fresh: list[_Entry] = []
        for entry in entries:
            exercise = self.row.get(entry.exercise.exercise_id)
            if exercise is None:
                continue
            item = _Entry(_seconds(entry.workout_start_time), entry.workout_id, exercise)
            self.recent.append(item)
            if item.time > self.stats.ref_time + CUT_TOLERANCE_S:
                fresh.append(item)
            top = _top_set(entry.exercise.sets)
            if top is not None and item.time >= self._top_time(exercise):
                self.top_sets[exercise] = top
                self._top_times[exercise] = item.time
        if fresh:
            tl = _timeline(fresh)
            self.stats = extend_stats(self.stats, tl, max(float(tl.time.max()), self.stats_time))
        self.recent.sort(key=lambda e: e.time)

    def _top_time(self, exercise: int) -> float:
        return self._top_times.get(exercise, self.stats_time)

    def __post_init__(self) -> None:
        self._top_times: dict[int, float] = {}

    def recommend(
        self,
        k: int = 10,
        current_workout: Sequence[str] = (),
        *,
        now: float,
        equipment: Sequence[str] | None = None,
    ) -> list[Recommendation]:
        """The k best next exercises. current_workout: exercise ids done so far in
        the workout under way (not logged yet). equipment: what the user has
        (catalog exercises needing other equipment are left out; None: no limit)."""
        if k <= 0:
            raise ValueError("k must be positive")
        done = [self.row[e] for e in current_workout if e in self.row]
        start = now
        before = [e for e in self.recent if e.time < start]
        history = [e for e in before if e.time >= start - RECENT_DAYS * DAY] or before[-1:]
        if not history and self.stats.last_exercise >= 0:
            # No cached history: the bundle still knows the last exercise.
            last_row = self.stats.last_exercise
            seen = float(self.stats.last_time[np.searchsorted(self.stats.exercise, last_row)])
            history = [_Entry(seen, "\x00last", last_row)]
        current = [_Entry(start, "\x00current", e) for e in done]
        probe = _Entry(start, "\x00current", 0)
        tl = _timeline([*history, *current, probe])
        state = states(tl, self.phi)[-1]
        predicted = state @ self.coefficients
        norm = np.linalg.norm(predicted)
        predicted = predicted / norm if norm > 0 else predicted

        stats = extend_stats(self.stats, _timeline(current), start) if current else self.stats
        last = done[-1] if done else (stats.last_exercise if stats.last_exercise >= 0 else None)
        candidates = self._candidates(set(done), equipment)
        if not len(candidates):
            return []
        terms = score_terms(stats, last, candidates, start)
        terms[:, 2] = self.phi[candidates] @ predicted
        scores = combine(terms, self.weights)
        signs = np.array([1.0, 1.0, 1.0, 1.0, -1.0])
        out = []
        for i in _top(scores, k):
            exercise = int(candidates[i])
            contributions = terms[i] * self.weights * signs
            weight, reps = _next_set(self.top_sets.get(exercise))
            out.append(
                Recommendation(
                    exercise_id=self.ids[exercise],
                    name=self.names[exercise],
                    score=float(scores[i]),
                    contributions=dict(zip(TERM_NAMES, map(float, contributions), strict=True)),
                    reason=self._reason(terms[i], contributions, last),
                    suggested_weight_kg=weight,
                    suggested_reps=reps,
                )
            )
        return out

    def _candidates(self, done: set[int], equipment: Sequence[str] | None) -> np.ndarray:
        """The user's own exercises, plus catalog ones usable with their equipment."""
        allowed = np.ones(len(self.ids), dtype=bool)
        if equipment is not None:
            names = {f"equipment:{e}" for e in (*equipment, "body_only")}
            columns = [
                i for i, n in enumerate(features.FEATURE_NAMES) if n.startswith("equipment:")
            ]
            usable = [i for i in columns if features.FEATURE_NAMES[i] in names]
            needs_any = self.phi[:, columns].any(axis=1)
            allowed = np.asarray(~needs_any | self.phi[:, usable].any(axis=1), dtype=bool)
        allowed[self.stats.exercise] = True
        if done:
            allowed[list(done)] = False
        return np.flatnonzero(allowed)

    def _reason(self, terms: np.ndarray, contributions: np.ndarray, last: int | None) -> str:
        after = self.names[last] if last is not None else "your last exercise"
        best = int(np.argmax(contributions[:4]))
        if best == 0:
            return f"you usually do this after {after}"
        if best == 1:
            return f"often follows {after}"
        if best == 3:
            return "one of your regular exercises"
        fresh = "fresh muscles, " if terms[4] == 0 else ""
        return f"{fresh}similar to what you're predicted to want next"


def compatible(bundle: Any) -> bool:
    """Whether this SDK computes with the bundle's schema (features, state, parameters)."""
    return (
        tuple(bundle.feature_names) == features.FEATURE_NAMES
        and tuple(bundle.state_names) == STATE_NAMES
        and all(
            getattr(bundle.sequence_parameters, name) == value
            for name, value in SEQUENCE_PARAMETERS.items()
        )
    )


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k best scores, best first; ties go to the lower index."""
    if k < len(scores):
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        pool = np.flatnonzero(scores >= kth)
    else:
        pool = np.arange(len(scores))
    return pool[np.lexsort((pool, -scores[pool]))][:k]


def _seconds(ts: Any) -> float:
    return float(ts.seconds) + ts.nanos / 1e9


def _sorted(stats: SequenceStats, order: np.ndarray) -> SequenceStats:
    return SequenceStats(
        ref_time=stats.ref_time,
        last_exercise=stats.last_exercise,
        exercise=stats.exercise[order],
        count=stats.count[order],
        decayed=stats.decayed[order],
        last_time=stats.last_time[order],
        from_exercise=stats.from_exercise,
        to_exercise=stats.to_exercise,
        transition_count=stats.transition_count,
        transition_last_time=stats.transition_last_time,
        transition_last_index=stats.transition_last_index,
    )


def _timeline(entries: Sequence[_Entry]) -> Timeline:
    workouts = {w: i for i, w in enumerate(dict.fromkeys(e.workout for e in entries))}
    return Timeline.of(
        np.zeros(len(entries), dtype=np.int64),
        [workouts[e.workout] for e in entries],
        [e.time for e in entries],
        [e.exercise for e in entries],
    )


def _top_set(sets: Iterable[Any]) -> tuple[float | None, int | None] | None:
    """(weight kg, reps) of the heaviest working set; None without working sets."""
    best: tuple[float | None, int | None] | None = None
    for s in sets:
        if s.kind == 1:  # SET_KIND_WARMUP
            continue
        weight = s.weight if s.HasField("weight") else None
        reps = s.reps if s.HasField("reps") else None
        if best is None or (weight or 0.0, reps or 0) > (best[0] or 0.0, best[1] or 0):
            best = (weight, reps)
    return best


def _next_set(top: tuple[float | None, int | None] | None) -> tuple[float | None, int | None]:
    """Double progression from the latest top set."""
    if top is None:
        return None, None
    weight, reps = top
    if reps is None:
        return weight, None
    low, high = REP_RANGE
    if weight and reps >= high:
        return weight + WEIGHT_STEP_KG, low
    return weight, reps + 1
