"""A user's training summary: activity streaks, personal records and totals, computed with the
rules of server/logs/stats.py and kept materialized per user (docs/events.md).

Pure functions: the consumer loads the workouts and stores the result.

- Totals count live workouts, and working sets (warm-ups excluded, as statistics do) with
  their volume Σ weight × reps in kg.
- ``record_count`` is the number of personal records GetStats lists (exercise × kind).
- A workout that starts after the moment of computing (a client's clock runs ahead; up to a
  day is accepted) counts as started at that moment: its event will not come again when the
  server's clock catches up.
- Streaks age without events: a summary computed on Monday and read on Thursday has lost its
  current day streak, exactly as GetStats would say on Thursday (``activity_as_of``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from server.logs import stats

_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)


@dataclass(frozen=True)
class Summary:
    activity: stats.ActivityStreaks  # as of computed_at
    total_workouts: int
    total_sets: int  # working sets
    total_volume_kg: float  # Σ weight × reps of working sets
    record_count: int
    last_workout_at: datetime | None  # start of the latest workout counted
    computed_at: datetime


def summarize(
    workouts: Sequence[stats.StatWorkout],
    exercises: Mapping[str, stats.ExerciseInfo],
    *,
    time_zone: str,
    weekly_goal: int,
    now: datetime,
) -> Summary:
    """The summary of a user's live workouts at `now`."""
    counted = [w if w.started_at <= now else replace(w, started_at=now) for w in workouts]
    result = stats.compute_stats(
        counted, exercises, time_zone=time_zone, weekly_goal=weekly_goal, as_of=now, weeks=0
    )
    working = [
        item
        for workout in counted
        for performed in workout.exercises
        for item in performed.sets
        if item.kind != stats.WARMUP
    ]
    return Summary(
        activity=result.activity,
        total_workouts=len(counted),
        total_sets=len(working),
        total_volume_kg=sum((item.weight_kg or 0.0) * (item.reps or 0) for item in working),
        record_count=len(result.records),
        last_workout_at=max((w.started_at for w in counted), default=None),
        computed_at=now,
    )


def empty(time_zone: str, weekly_goal: int, now: datetime) -> Summary:
    """The summary of a user without workouts (or not yet computed)."""
    return summarize([], {}, time_zone=time_zone, weekly_goal=weekly_goal, now=now)


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def activity_as_of(summary: Summary, now: datetime) -> stats.ActivityStreaks:
    """The activity streaks at `now` (not before computed_at), given no workout changed since
    the summary was computed: days and weeks that passed without training end the current
    streaks, and a new week starts with no workouts."""
    activity = summary.activity
    zone = ZoneInfo(activity.time_zone)
    then = summary.computed_at.astimezone(zone).date()
    today = now.astimezone(zone).date()
    if today <= then:
        return activity
    # The current day streak ends on the latest workout's day; it lives while that was
    # today or yesterday.
    last = summary.last_workout_at
    alive = last is not None and last.astimezone(zone).date() >= today - _DAY
    current_days = activity.current_days if alive else 0
    if _monday(today) == _monday(then):
        current_weeks, this_week = activity.current_weeks, activity.workouts_this_week
    else:
        # The week computed in has ended: the streak lives on only if that week met the
        # goal and is last week (the new week does not break it before it ends).
        met = activity.workouts_this_week >= activity.weekly_goal
        last_week = _monday(today) - _WEEK == _monday(then)
        current_weeks, this_week = (activity.current_weeks if met and last_week else 0), 0
    return replace(
        activity,
        current_days=current_days,
        current_weeks=current_weeks,
        workouts_this_week=this_week,
    )
