"""Training statistics: activity streaks, progressive overload, personal records, muscle volume.

Pure functions over already-loaded workouts; the service loads the rows and converts units.
All weights are kilograms, volumes and tonnages are kilogram-repetitions (Σ weight × reps).

Rules, as users see them:

- Only workouts started at or before ``as_of`` count; later ones are ignored.
- Days and weeks are counted in the user's time zone (an IANA name). Each workout's start is
  converted to a local calendar date, so a 23:30 session in New York is that evening's day
  even though it is the next day in UTC, and daylight-saving changes never shift or merge days.
- **Day streak**: consecutive local dates with at least one workout. The current streak counts
  back from today; if there is no workout today yet it counts back from yesterday, because a
  streak only breaks once a whole day passes without training. Otherwise it is 0.
- **Week streak**: consecutive ISO weeks (Monday to Sunday) with at least ``weekly_goal``
  workouts. The running week counts as soon as it meets the goal; until then it does not break
  the streak, which counts back from last week. ``workouts_this_week`` is the number of
  workouts in the running week so far. A goal below 1 is treated as 1.
- **Estimated 1RM** (Epley): weight × (1 + reps / 30), where reps are the reps to failure:
  the reps done plus the reps in reserve (RIR, or 10 − RPE when only RPE is given). A single
  rep to failure is the weight itself. Sets without weight or reps, or with more than 12 reps
  to failure, give no estimate: the formula is unreliable there.
- Warm-up sets count for nothing below: not for 1RM, volume, records or muscle volume.
- **Session**: one exercise within one workout. Its best e1RM is the best over its sets; its
  volume is Σ weight × reps over its sets.
- **Progressive-overload streak**: consecutive sessions of an exercise whose best e1RM *or*
  volume is strictly greater than the previous session's. The first session starts no streak.
  The current streak is the one ending with the latest session (0 if it did not beat the one
  before); the longest is over all history.
- **Personal records** per exercise, each kept with the workout where it was first reached (a
  later equal result does not replace it): heaviest weight (with that set's reps), best e1RM
  (with that set's weight and reps), most reps in one set (with that set's weight; for equal
  reps the heavier set wins) and most volume in one session.
- **Weekly muscle volume**, for the ``weeks`` most recent ISO weeks up to and including the
  running one: for each muscle, the number of sets of exercises that train it as a *primary*
  muscle and their tonnage (Σ weight × reps). A set counts fully for each primary muscle of its
  exercise; secondary muscles are not credited. Weeks and muscles with no sets are left out.
- Exercises no longer in the catalog still count for activity, progress and records (with an
  empty name) but add no muscle volume.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    # Only for annotations: the service imports this module, so a runtime import would cycle.
    from server.logs.service import PerformedData, SetData

HEAVIEST_WEIGHT = "heaviest_weight"
BEST_E1RM = "best_e1rm"
MOST_REPS = "most_reps"
MOST_VOLUME = "most_volume"
# In RecordKind enum order, which is also the order records are listed in per exercise.
RECORD_KINDS = (HEAVIEST_WEIGHT, BEST_E1RM, MOST_REPS, MOST_VOLUME)

MAX_E1RM_REPS = 12  # Epley drifts badly past ~12 reps to failure
WARMUP = "warmup"
# Sums of float weights pick up rounding noise; "beat" means beat by more than that.
_EPSILON = 1e-9
_WEEK = timedelta(days=7)
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class StatWorkout:
    id: str
    started_at: datetime  # timezone-aware, UTC
    exercises: tuple[PerformedData, ...]  # in logged order


@dataclass(frozen=True)
class ExerciseInfo:
    name: str
    primary_muscles: tuple[str, ...]  # client_sdk.features.MUSCLES vocabulary
    secondary_muscles: tuple[str, ...] = ()


@dataclass(frozen=True)
class ActivityStreaks:
    current_days: int
    longest_days: int
    current_weeks: int
    longest_weeks: int
    weekly_goal: int  # workouts per ISO week, as counted (at least 1)
    workouts_this_week: int
    time_zone: str  # IANA name the days and weeks were counted in


@dataclass(frozen=True)
class ExerciseProgress:
    exercise_id: str
    exercise_name: str  # "" when the exercise is no longer in the catalog
    current_streak: int  # sessions
    longest_streak: int  # sessions
    last_best_e1rm: float  # kg; 0 when the latest session gave no estimate
    last_volume: float  # kg × reps
    last_time: datetime  # start of the latest session's workout


@dataclass(frozen=True)
class PersonalRecord:
    exercise_id: str
    kind: str  # one of RECORD_KINDS
    value: float  # kg, kg, reps or kg × reps, by kind
    weight: float  # kg of the set; 0 for most_volume
    reps: int  # of the set; 0 for most_volume
    workout_id: str  # where it was first reached
    time: datetime  # that workout's start


@dataclass(frozen=True)
class WeeklyMuscleVolume:
    week_start: date  # local Monday
    muscle: str
    sets: int
    tonnage_kg: float  # Σ weight × reps


@dataclass(frozen=True)
class Stats:
    activity: ActivityStreaks
    progress: tuple[ExerciseProgress, ...]  # latest session first
    records: tuple[PersonalRecord, ...]  # by exercise id, then RECORD_KINDS order
    weekly_volume: tuple[WeeklyMuscleVolume, ...]  # by week, then muscle


def estimated_1rm(
    weight_kg: float, reps: int, rpe: float | None = None, rir: float | None = None
) -> float:
    """Epley estimate in kg from reps to failure (reps + RIR, or reps + 10 − RPE).

    Returns 0.0 when the set gives no estimate: no weight, no reps, or more than 12 reps to
    failure. RIR wins over RPE when both are logged.
    """
    if not weight_kg or weight_kg <= 0 or not reps or reps < 1:
        return 0.0
    reserve = rir if rir is not None else (10 - rpe if rpe is not None else 0.0)
    to_failure = reps + max(0.0, reserve)  # RPE above 10 is not "negative reserve"
    if to_failure > MAX_E1RM_REPS:
        return 0.0
    if to_failure == 1:
        return float(weight_kg)  # a true single is the 1RM; Epley would overshoot by 1/30
    return weight_kg * (1 + to_failure / 30)


def _set_e1rm(item: SetData) -> float:
    return estimated_1rm(item.weight_kg or 0.0, item.reps or 0, item.rpe, item.rir)


def _set_volume(item: SetData) -> float:
    return (item.weight_kg or 0.0) * (item.reps or 0)


def _beats(new: float, old: float) -> bool:
    return new > old + _EPSILON


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _runs(keys: Iterable[date], step: timedelta) -> tuple[set[date], int]:
    """The set of keys and the length of the longest run of keys `step` apart."""
    present = set(keys)
    longest = 0
    for key in present:
        if key - step in present:
            continue  # not the start of a run; counted from its start
        length = 1
        while key + length * step in present:
            length += 1
        longest = max(longest, length)
    return present, longest


def _run_back(present: set[date], start: date, step: timedelta) -> int:
    length = 0
    while start - length * step in present:
        length += 1
    return length


def _activity(
    local_days: list[date], today: date, time_zone: str, weekly_goal: int
) -> ActivityStreaks:
    days, longest_days = _runs(local_days, _DAY)
    if today in days:
        current_days = _run_back(days, today, _DAY)
    else:
        # No workout yet today: the streak is alive if it reaches yesterday.
        current_days = _run_back(days, today - _DAY, _DAY)

    per_week: dict[date, int] = defaultdict(int)
    for day in local_days:
        per_week[_monday(day)] += 1
    this_week = _monday(today)
    met, longest_weeks = _runs((w for w, n in per_week.items() if n >= weekly_goal), _WEEK)
    # The running week only counts once it meets the goal; before that it doesn't break it.
    start = this_week if this_week in met else this_week - _WEEK
    return ActivityStreaks(
        current_days=current_days,
        longest_days=longest_days,
        current_weeks=_run_back(met, start, _WEEK),
        longest_weeks=longest_weeks,
        weekly_goal=weekly_goal,
        workouts_this_week=per_week.get(this_week, 0),
        time_zone=time_zone,
    )


@dataclass
class _Session:
    best_e1rm: float = 0.0
    volume: float = 0.0


@dataclass
class _Progress:
    """Running state of one exercise while walking its sessions in time order."""

    last: _Session
    last_time: datetime
    streak: int = 0
    longest: int = 0


@dataclass
class _Record:
    value: float
    weight: float
    reps: int
    workout_id: str
    time: datetime


def _offer(
    records: dict[tuple[str, str], _Record], key: tuple[str, str], candidate: _Record
) -> None:
    """Keep `candidate` only if it strictly beats the record: the first to reach a value keeps it.

    most_reps ties on reps go to the heavier set.
    """
    current = records.get(key)
    if (
        current is None
        or _beats(candidate.value, current.value)
        or (
            key[1] == MOST_REPS
            and candidate.value == current.value
            and _beats(candidate.weight, current.weight)
        )
    ):
        records[key] = candidate


def _utc(moment: datetime) -> datetime:
    # Naive datetimes would silently be read in the host's zone; they're meant as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def compute_stats(
    workouts: Sequence[StatWorkout],
    exercises: Mapping[str, ExerciseInfo],
    *,
    time_zone: str,
    weekly_goal: int,
    as_of: datetime,
    weeks: int = 12,
) -> Stats:
    """All statistics of one user's history as of `as_of`; see the module docstring for rules.

    `exercises` maps exercise ids to catalog info; `weeks` is how many ISO weeks of muscle
    volume to return (0 or less: none). O(n log n) in the number of workouts and sets.
    """
    zone = ZoneInfo(time_zone)
    as_of = _utc(as_of)
    goal = max(1, weekly_goal)
    today = as_of.astimezone(zone).date()
    this_week = _monday(today)
    first_volume_week = this_week - max(0, weeks - 1) * _WEEK

    # Time order decides streaks and which equal record came first; the id breaks exact ties.
    history = sorted(
        (w for w in workouts if _utc(w.started_at) <= as_of),
        key=lambda w: (_utc(w.started_at), w.id),
    )

    local_days: list[date] = []
    progress: dict[str, _Progress] = {}
    records: dict[tuple[str, str], _Record] = {}
    volume: dict[tuple[date, str], list[float]] = defaultdict(lambda: [0, 0.0])

    for workout in history:
        started = _utc(workout.started_at)
        # Local date through the zone, never local-time arithmetic: DST-safe.
        day = started.astimezone(zone).date()
        local_days.append(day)
        week = _monday(day)
        count_volume = weeks > 0 and first_volume_week <= week <= this_week

        # An exercise logged twice in one workout is still one session.
        sessions: dict[str, _Session] = {}
        for performed in workout.exercises:
            exercise_id = performed.exercise_id
            session = sessions.setdefault(exercise_id, _Session())
            info = exercises.get(exercise_id)
            muscles = dict.fromkeys(info.primary_muscles) if info and count_volume else {}
            for item in performed.sets:
                if item.kind == WARMUP:
                    continue
                e1rm, set_volume = _set_e1rm(item), _set_volume(item)
                weight, reps = item.weight_kg or 0.0, item.reps or 0
                session.best_e1rm = max(session.best_e1rm, e1rm)
                session.volume += set_volume
                for muscle in muscles:
                    bucket = volume[(week, muscle)]
                    bucket[0] += 1
                    bucket[1] += set_volume
                if reps >= 1 and weight > 0:
                    _offer(
                        records,
                        (exercise_id, HEAVIEST_WEIGHT),
                        _Record(weight, weight, reps, workout.id, started),
                    )
                if e1rm > 0:
                    _offer(
                        records,
                        (exercise_id, BEST_E1RM),
                        _Record(e1rm, weight, reps, workout.id, started),
                    )
                if reps >= 1:
                    _offer(
                        records,
                        (exercise_id, MOST_REPS),
                        _Record(float(reps), weight, reps, workout.id, started),
                    )

        for exercise_id, session in sessions.items():
            if session.volume > 0:
                _offer(
                    records,
                    (exercise_id, MOST_VOLUME),
                    _Record(session.volume, 0.0, 0, workout.id, started),
                )
            state = progress.get(exercise_id)
            if state is None:
                progress[exercise_id] = _Progress(last=session, last_time=started)
                continue
            if _beats(session.best_e1rm, state.last.best_e1rm) or _beats(
                session.volume, state.last.volume
            ):
                state.streak += 1
                state.longest = max(state.longest, state.streak)
            else:
                state.streak = 0
            state.last, state.last_time = session, started

    def name(exercise_id: str) -> str:
        info = exercises.get(exercise_id)
        return info.name if info else ""

    kind_order = {kind: i for i, kind in enumerate(RECORD_KINDS)}
    return Stats(
        activity=_activity(local_days, today, time_zone, goal),
        progress=tuple(
            ExerciseProgress(
                exercise_id=exercise_id,
                exercise_name=name(exercise_id),
                current_streak=state.streak,
                longest_streak=state.longest,
                last_best_e1rm=state.last.best_e1rm,
                last_volume=state.last.volume,
                last_time=state.last_time,
            )
            for exercise_id, state in sorted(
                progress.items(), key=lambda item: (-item[1].last_time.timestamp(), item[0])
            )
        ),
        records=tuple(
            PersonalRecord(
                exercise_id=exercise_id,
                kind=kind,
                value=record.value,
                weight=record.weight,
                reps=record.reps,
                workout_id=record.workout_id,
                time=record.time,
            )
            for (exercise_id, kind), record in sorted(
                records.items(), key=lambda item: (item[0][0], kind_order[item[0][1]])
            )
        ),
        weekly_volume=tuple(
            WeeklyMuscleVolume(week_start=week, muscle=muscle, sets=int(sets), tonnage_kg=tonnage)
            for (week, muscle), (sets, tonnage) in sorted(volume.items())
        ),
    )
