"""Unit tests of server.logs.stats: activity streaks in the user's zone (late nights, DST, ISO
weeks across the new year), e1RM with RPE/RIR, progressive-overload streaks, personal records,
weekly muscle volume, as_of and recomputation after edits."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from server.logs.service import PerformedData, SetData
from server.logs.stats import (
    ActivityStreaks,
    ExerciseInfo,
    PersonalRecord,
    StatWorkout,
    WeeklyMuscleVolume,
    compute_stats,
    estimated_1rm,
)

UTC_ZONE = "UTC"
NY = "America/New_York"
BERLIN = "Europe/Berlin"
BENCH, SQUAT, CURL, GONE = "bench", "squat", "curl", "gone"
CATALOG = {
    BENCH: ExerciseInfo("Bench Press", ("chest",), ("triceps", "shoulders")),
    SQUAT: ExerciseInfo("Back Squat", ("quadriceps", "glutes"), ("hamstrings",)),
    CURL: ExerciseInfo("Curl", ("biceps",), ("forearms",)),
}


def at(y: int, m: int, d: int, hh: int = 12, mm: int = 0, zone: str = UTC_ZONE) -> datetime:
    """A local wall-clock time in `zone`, as the UTC instant the server stores."""
    return datetime(y, m, d, hh, mm, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def s(reps: int | None, weight: float | None, kind: str = "normal", **extra: float) -> SetData:
    return SetData(reps=reps, weight_kg=weight, kind=kind, **extra)


def w(wid: str, started: datetime, *performed: tuple[str, tuple[SetData, ...]]) -> StatWorkout:
    return StatWorkout(
        id=wid,
        started_at=started,
        exercises=tuple(PerformedData(exercise_id=e, sets=sets) for e, sets in performed),
    )


def stats(workouts, *, zone=UTC_ZONE, goal=3, as_of=None, weeks=12, catalog=CATALOG):
    as_of = as_of or max((x.started_at for x in workouts), default=at(2025, 6, 1))
    return compute_stats(
        workouts, catalog, time_zone=zone, weekly_goal=goal, as_of=as_of, weeks=weeks
    )


def daily(zone: str, *days: date, hh: int = 12, mm: int = 0) -> list[StatWorkout]:
    return [w(f"w{i}", at(d.year, d.month, d.day, hh, mm, zone)) for i, d in enumerate(days)]


def span(start: date, n: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]


# --- e1RM ------------------------------------------------------------------------------------


def test_e1rm_epley_and_single():
    assert estimated_1rm(100, 1) == 100
    assert estimated_1rm(100, 10) == pytest.approx(100 * (1 + 10 / 30))
    assert estimated_1rm(90, 12) == pytest.approx(126)
    assert estimated_1rm(100, 13) == 0
    assert estimated_1rm(0, 5) == 0
    assert estimated_1rm(100, 0) == 0


def test_e1rm_uses_reps_in_reserve_and_rpe():
    # 5 reps with 2 in reserve is a 7-rep max.
    assert estimated_1rm(100, 5, rir=2) == pytest.approx(100 * (1 + 7 / 30))
    assert estimated_1rm(100, 5, rpe=8) == pytest.approx(100 * (1 + 7 / 30))
    assert estimated_1rm(100, 5, rpe=8.5) == pytest.approx(100 * (1 + 6.5 / 30))
    # A single at RPE 10 is the 1RM itself; a single with 1 in reserve is a double.
    assert estimated_1rm(100, 1, rpe=10) == 100
    assert estimated_1rm(120, 1, rir=1) == pytest.approx(128)
    # RIR wins over RPE when both are logged.
    assert estimated_1rm(100, 5, rpe=6, rir=0) == pytest.approx(100 * (1 + 5 / 30))
    # Too far from failure: 10 reps + 3 in reserve = 13 gives no estimate.
    assert estimated_1rm(60, 10, rir=3) == 0
    assert estimated_1rm(60, 10, rpe=7) == 0


# --- activity --------------------------------------------------------------------------------


def test_empty_history():
    result = stats([], as_of=at(2025, 6, 1))
    assert result.activity == ActivityStreaks(0, 0, 0, 0, 3, 0, UTC_ZONE)
    assert result.progress == result.records == result.weekly_volume == ()


def test_late_night_in_new_york_is_that_local_day():
    # 23:30 EDT on Jun 2 and 3 are Jun 3 and 4 in UTC: local days 2,3 plus a 09:00 on the 4th.
    workouts = [
        *daily(NY, date(2025, 6, 2), date(2025, 6, 3), hh=23, mm=30),
        w("morning", at(2025, 6, 4, 9, 0, NY)),
    ]
    assert workouts[0].started_at.date() == date(2025, 6, 3)
    local = stats(workouts, zone=NY, as_of=at(2025, 6, 4, 10, 0, NY)).activity
    assert (local.current_days, local.longest_days) == (3, 3)
    # Counted in UTC the 23:30 of the 3rd and the 09:00 of the 4th share a day.
    in_utc = stats(workouts, zone=UTC_ZONE, as_of=at(2025, 6, 4, 10, 0, NY)).activity
    assert (in_utc.current_days, in_utc.longest_days) == (2, 2)


def test_late_night_workout_counts_for_today_not_tomorrow():
    # 23:30 on Sunday Jun 8 in New York is Monday in UTC, but it is last week locally.
    workouts = daily(NY, date(2025, 6, 6), date(2025, 6, 7), date(2025, 6, 8), hh=23, mm=30)
    activity = stats(workouts, zone=NY, goal=3, as_of=at(2025, 6, 9, 8, 0, NY)).activity
    assert activity.workouts_this_week == 0
    assert (activity.current_weeks, activity.longest_weeks) == (1, 1)
    assert activity.current_days == 3


def test_dst_spring_forward_berlin_keeps_streak():
    # Mar 30 2025 is the spring-forward Sunday: 02:00 -> 03:00.
    workouts = [
        w("sat", at(2025, 3, 29, 1, 30, BERLIN)),
        w("sun", at(2025, 3, 30, 3, 30, BERLIN)),  # 01:30 UTC
        w("mon", at(2025, 3, 31, 1, 30, BERLIN)),  # 23:30 UTC the 30th: the same UTC day as "sun"
    ]
    activity = stats(workouts, zone=BERLIN, goal=2, as_of=at(2025, 3, 31, 20, 0, BERLIN)).activity
    assert (activity.current_days, activity.longest_days) == (3, 3)
    # Sat + Sun are the week of Mar 24 (goal 2 met); Mon starts the next week.
    assert activity.workouts_this_week == 1
    assert (activity.current_weeks, activity.longest_weeks) == (1, 1)


def test_dst_fall_back_berlin_keeps_streak_and_week():
    # Oct 26 2025 is the fall-back Sunday: 03:00 -> 02:00, a 25-hour day.
    workouts = [
        w("sat", at(2025, 10, 25, 3, 30, BERLIN)),
        w("sun-early", at(2025, 10, 26, 1, 30, BERLIN)),  # 23:30 UTC Saturday
        w("sun-late", at(2025, 10, 26, 23, 30, BERLIN)),  # 22:30 UTC, still Sunday locally
        w("mon", at(2025, 10, 27, 1, 30, BERLIN)),  # 00:30 UTC Monday
    ]
    activity = stats(workouts, zone=BERLIN, goal=3, as_of=at(2025, 10, 27, 9, 0, BERLIN)).activity
    assert (activity.current_days, activity.longest_days) == (3, 3)
    # The DST week (Mon Oct 20 - Sun Oct 26) holds exactly the three weekend workouts.
    assert activity.workouts_this_week == 1
    assert (activity.current_weeks, activity.longest_weeks) == (1, 1)


def test_day_streak_broken_by_gap():
    days = [*span(date(2025, 5, 1), 5), *span(date(2025, 5, 8), 3)]  # gap on 6th and 7th
    activity = stats(daily(UTC_ZONE, *days), as_of=at(2025, 5, 10, 20)).activity
    assert (activity.current_days, activity.longest_days) == (3, 5)


def test_yesterday_but_not_today_keeps_current_streak():
    workouts = daily(UTC_ZONE, *span(date(2025, 5, 1), 4))  # May 1-4
    assert stats(workouts, as_of=at(2025, 5, 5, 23, 59)).activity.current_days == 4
    # A full day without training (May 5) breaks it.
    assert stats(workouts, as_of=at(2025, 5, 6, 0, 1)).activity.current_days == 0
    assert stats(workouts, as_of=at(2025, 5, 6, 0, 1)).activity.longest_days == 4


def test_yesterday_is_local_yesterday():
    # Workout 20:00 Jun 1 in New York (00:00 UTC Jun 2); at 23:00 Jun 2 NY it is Jun 3 in UTC.
    workouts = [w("a", at(2025, 6, 1, 20, 0, NY))]
    assert stats(workouts, zone=NY, as_of=at(2025, 6, 2, 23, 0, NY)).activity.current_days == 1
    assert stats(workouts, zone=NY, as_of=at(2025, 6, 3, 0, 30, NY)).activity.current_days == 0


def test_several_workouts_a_day_are_one_day_but_count_for_the_week():
    workouts = [w(f"w{i}", at(2025, 6, 2, 6 + i)) for i in range(3)]
    activity = stats(workouts, goal=3, as_of=at(2025, 6, 2, 20)).activity
    assert (activity.current_days, activity.longest_days) == (1, 1)
    assert (activity.workouts_this_week, activity.current_weeks) == (3, 1)


def test_iso_week_across_year_boundary():
    # ISO week 1 of 2026 runs Mon Dec 29 2025 - Sun Jan 4 2026.
    workouts = daily(
        UTC_ZONE,
        date(2025, 12, 22), date(2025, 12, 24), date(2025, 12, 26),  # week 52
        date(2025, 12, 29), date(2025, 12, 31), date(2026, 1, 2),  # week 1 of 2026
    )  # fmt: skip
    activity = stats(workouts, goal=3, as_of=at(2026, 1, 4, 18)).activity
    assert activity.workouts_this_week == 3
    assert (activity.current_weeks, activity.longest_weeks) == (2, 2)
    volume = stats(
        [w("nye", at(2025, 12, 31), (BENCH, (s(5, 100),))), w("jan", at(2026, 1, 3))],
        as_of=at(2026, 1, 3, 18),
    ).weekly_volume
    assert volume == (WeeklyMuscleVolume(date(2025, 12, 29), "chest", 1, 500.0),)


def test_weekly_goal_met_late_in_the_week():
    last_week = daily(UTC_ZONE, date(2025, 6, 2), date(2025, 6, 4), date(2025, 6, 6))
    this_week = [w("t1", at(2025, 6, 9)), w("t2", at(2025, 6, 12))]
    history = last_week + this_week
    # Thursday, 2 of 3: the running week doesn't count yet but doesn't break the streak.
    thursday = stats(history, goal=3, as_of=at(2025, 6, 12, 20)).activity
    assert (thursday.current_weeks, thursday.workouts_this_week) == (1, 2)
    # Sunday evening, goal met: both weeks count.
    sunday = stats([*history, w("t3", at(2025, 6, 15, 19))], goal=3, as_of=at(2025, 6, 15, 20))
    assert (sunday.activity.current_weeks, sunday.activity.longest_weeks) == (2, 2)
    assert sunday.activity.workouts_this_week == 3
    # A week that ended short breaks it: next Monday with only 2 last week.
    monday = stats(history, goal=3, as_of=at(2025, 6, 16, 8)).activity
    assert (monday.current_weeks, monday.longest_weeks, monday.workouts_this_week) == (0, 1, 0)


def test_week_streak_broken_by_short_week():
    weeks = [date(2025, 5, 5), date(2025, 5, 12), date(2025, 5, 26), date(2025, 6, 2)]
    workouts = daily(UTC_ZONE, *[d + timedelta(days=i) for d in weeks for i in (0, 2)])
    activity = stats(workouts, goal=2, as_of=at(2025, 6, 4)).activity
    assert (activity.current_weeks, activity.longest_weeks) == (2, 2)
    assert stats(workouts, goal=0, as_of=at(2025, 6, 4)).activity.weekly_goal == 1


def test_as_of_in_the_past_ignores_later_workouts():
    workouts = [
        w("a", at(2025, 6, 2), (BENCH, (s(5, 100),))),
        w("b", at(2025, 6, 3), (BENCH, (s(5, 110),))),
        w("c", at(2025, 6, 4), (BENCH, (s(5, 120),))),
    ]
    result = stats(workouts, goal=1, as_of=at(2025, 6, 3, 18))
    assert result.activity == ActivityStreaks(2, 2, 1, 1, 1, 2, UTC_ZONE)
    assert [r.workout_id for r in result.records] == ["b", "b", "b", "b"]
    assert result.progress[0].last_time == at(2025, 6, 3)
    assert result.weekly_volume == (WeeklyMuscleVolume(date(2025, 6, 2), "chest", 2, 1050.0),)
    # Exactly at as_of is included.
    assert stats(workouts, as_of=at(2025, 6, 4)).activity.current_days == 3


# --- progress and records ----------------------------------------------------------------------


def test_progressive_overload_streaks():
    sessions = [
        (s(5, 100),),  # first: no streak
        (s(5, 102.5),),  # e1RM up: 1
        (s(5, 102.5), s(5, 100)),  # same e1RM, more volume: 2
        (s(3, 100),),  # neither: 0
        (s(5, 100),),  # up from the last one (not from the best): 1
    ]
    workouts = [w(f"w{i}", at(2025, 6, 1 + i), (BENCH, sets)) for i, sets in enumerate(sessions)]
    (progress,) = stats(workouts).progress
    assert (progress.current_streak, progress.longest_streak) == (1, 2)
    assert progress.last_best_e1rm == pytest.approx(100 * (1 + 5 / 30))
    assert progress.last_volume == 500
    assert progress.exercise_name == "Bench Press"
    assert progress.last_time == at(2025, 6, 5)
    # Equal is not better: a repeat session resets the current streak.
    (flat,) = stats([*workouts, w("w5", at(2025, 6, 9), (BENCH, (s(5, 100),)))]).progress
    assert (flat.current_streak, flat.longest_streak) == (0, 2)


def test_progress_sorted_by_latest_session_and_unknown_exercise():
    workouts = [
        w("a", at(2025, 6, 1), (SQUAT, (s(5, 100),)), (GONE, (s(5, 20),))),
        w("b", at(2025, 6, 2), (BENCH, (s(5, 80),))),
        w("c", at(2025, 6, 3), (CURL, (s(10, 15),))),
    ]
    result = stats(workouts, goal=1)
    assert [(p.exercise_id, p.exercise_name) for p in result.progress] == [
        (CURL, "Curl"),
        (BENCH, "Bench Press"),
        (GONE, ""),
        (SQUAT, "Back Squat"),
    ]
    assert result.activity.current_days == 3
    # The unknown exercise has records but no muscle volume.
    assert {r.exercise_id for r in result.records} == {BENCH, CURL, GONE, SQUAT}
    assert {v.muscle for v in result.weekly_volume} == {"biceps", "chest", "glutes", "quadriceps"}


def test_same_exercise_twice_in_a_workout_is_one_session():
    workouts = [
        w("a", at(2025, 6, 1), (BENCH, (s(5, 100),))),
        w("b", at(2025, 6, 2), (BENCH, (s(5, 60),)), (CURL, (s(10, 10),)), (BENCH, (s(5, 60),))),
    ]
    result = stats(workouts)
    bench = next(p for p in result.progress if p.exercise_id == BENCH)
    assert (bench.last_volume, bench.current_streak) == (600, 1)
    volume = {r.kind: r for r in result.records if r.exercise_id == BENCH}["most_volume"]
    assert (volume.value, volume.workout_id) == (600, "b")


def test_warmups_are_excluded():
    workouts = [
        w(
            "a",
            at(2025, 6, 2),
            (BENCH, (s(10, 140, "warmup"), s(15, 40, "warmup"), s(5, 100), s(8, 80, "drop"))),
        ),
    ]
    result = stats(workouts)
    (progress,) = result.progress
    assert progress.last_volume == 500 + 640
    assert progress.last_best_e1rm == pytest.approx(100 * (1 + 5 / 30))  # beats 80 × 8
    records = {r.kind: r for r in result.records}
    assert (records["heaviest_weight"].value, records["heaviest_weight"].reps) == (100, 5)
    assert (records["most_reps"].value, records["most_reps"].weight) == (8, 80)
    assert result.weekly_volume == (WeeklyMuscleVolume(date(2025, 6, 2), "chest", 2, 1140.0),)
    # A warm-up-only session is a session with nothing in it.
    only_warmup = stats([*workouts, w("b", at(2025, 6, 3), (BENCH, (s(5, 60, "warmup"),)))])
    assert (only_warmup.progress[0].last_volume, only_warmup.progress[0].current_streak) == (0, 0)
    assert len(only_warmup.weekly_volume) == 1 and only_warmup.weekly_volume[0].sets == 2


def test_personal_records_values_and_order():
    workouts = [
        w(
            "a",
            at(2025, 6, 1),
            (SQUAT, (s(3, 140), s(12, 80), s(1, 150, rpe=9.5))),
            (BENCH, (s(5, 100, rir=1),)),
        ),
        w("b", at(2025, 6, 3), (SQUAT, (s(12, 90), s(20, 60))), (BENCH, (s(8, 80),))),
    ]
    records = stats(workouts).records
    e1rm_bench_a = 100 * (1 + 6 / 30)  # 120 beats 80 × (1 + 8/30)
    assert records == (
        PersonalRecord(BENCH, "heaviest_weight", 100, 100, 5, "a", at(2025, 6, 1)),
        PersonalRecord(
            BENCH, "best_e1rm", pytest.approx(e1rm_bench_a), 100, 5, "a", at(2025, 6, 1)
        ),
        PersonalRecord(BENCH, "most_reps", 8, 80, 8, "b", at(2025, 6, 3)),
        PersonalRecord(BENCH, "most_volume", 640, 0, 0, "b", at(2025, 6, 3)),
        PersonalRecord(SQUAT, "heaviest_weight", 150, 150, 1, "a", at(2025, 6, 1)),
        # 150 at RPE 9.5 is 1.5 reps to failure: 157.5, above 140 × 3 (154) and 90 × 12 (126).
        PersonalRecord(SQUAT, "best_e1rm", pytest.approx(157.5), 150, 1, "a", at(2025, 6, 1)),
        PersonalRecord(SQUAT, "most_reps", 20, 60, 20, "b", at(2025, 6, 3)),
        PersonalRecord(SQUAT, "most_volume", 2280, 0, 0, "b", at(2025, 6, 3)),
    )


def test_record_ties_keep_the_first():
    workouts = [
        w("a", at(2025, 6, 1), (CURL, (s(10, 20), s(12, 10)))),
        w("b", at(2025, 6, 2), (CURL, (s(10, 20), s(12, 10)))),
        # Same reps but heavier: most_reps moves; equal weight / e1RM / volume stay with "a".
        w("c", at(2025, 6, 3), (CURL, (s(12, 12), s(8, 20)))),
    ]
    records = {r.kind: r for r in stats(workouts).records}
    assert records["heaviest_weight"].workout_id == "a"
    assert records["heaviest_weight"].reps == 10
    assert records["best_e1rm"].workout_id == "a"
    assert records["most_volume"].workout_id == "a"
    assert (records["most_reps"].workout_id, records["most_reps"].weight) == ("c", 12)
    # Within one workout the earlier set keeps a tie too.
    (heaviest, *_) = stats([w("d", at(2025, 6, 1), (CURL, (s(5, 20), s(9, 20))))]).records
    assert (heaviest.kind, heaviest.reps) == ("heaviest_weight", 5)


def test_edits_recompute_streaks_and_records():
    workouts = [
        w("a", at(2025, 6, 2), (BENCH, (s(5, 100),))),
        w("b", at(2025, 6, 3), (BENCH, (s(5, 105),))),
        w("c", at(2025, 6, 4), (BENCH, (s(5, 110),))),
    ]
    before = stats(workouts, goal=1)
    assert (before.progress[0].current_streak, before.progress[0].longest_streak) == (2, 2)
    assert {r.kind: r.workout_id for r in before.records}["heaviest_weight"] == "c"
    # Edit "b" down: it no longer beats "a", "c" still beats "b".
    edited = list(workouts)
    edited[1] = replace(workouts[1], exercises=(PerformedData(BENCH, sets=(s(5, 90),)),))
    after = stats(edited, goal=1)
    assert (after.progress[0].current_streak, after.progress[0].longest_streak) == (1, 1)
    # Edit "c" to tie "a": the record goes back to "a", the current streak is 1 (c > b).
    edited[2] = replace(workouts[2], exercises=(PerformedData(BENCH, sets=(s(5, 100),)),))
    recomputed = stats(edited, goal=1)
    assert recomputed.progress[0].current_streak == 1
    again = {r.kind: r.workout_id for r in recomputed.records}
    assert again == {
        "heaviest_weight": "a",
        "best_e1rm": "a",
        "most_reps": "a",
        "most_volume": "a",
    }
    # Deleting a workout (dropping it) breaks the day streak.
    dropped = stats([workouts[0], workouts[2]], goal=1).activity
    assert (dropped.current_days, dropped.longest_days) == (1, 1)


# --- weekly volume ---------------------------------------------------------------------------


def test_weekly_volume_by_primary_muscle():
    workouts = [
        w(
            "a",
            at(2025, 6, 2),
            (SQUAT, (s(5, 100), s(5, 100), s(5, 60, "warmup"))),
            (BENCH, (s(8, 60), s(None, None))),  # a set without numbers still counts as a set
        ),
        w("b", at(2025, 6, 10), (CURL, (s(10, 15, "failure"),)), (BENCH, (s(5, 80),))),
    ]
    assert stats(workouts, as_of=at(2025, 6, 11)).weekly_volume == (
        WeeklyMuscleVolume(date(2025, 6, 2), "chest", 2, 480.0),
        WeeklyMuscleVolume(date(2025, 6, 2), "glutes", 2, 1000.0),
        WeeklyMuscleVolume(date(2025, 6, 2), "quadriceps", 2, 1000.0),
        WeeklyMuscleVolume(date(2025, 6, 9), "biceps", 1, 150.0),
        WeeklyMuscleVolume(date(2025, 6, 9), "chest", 1, 400.0),
    )
    # No secondary credit: triceps and hamstrings never appear.


def test_weekly_volume_window_and_dst_week():
    workouts = [
        w("old", at(2025, 3, 12, 18, 0, BERLIN), (CURL, (s(10, 10),))),
        w("dst-sat", at(2025, 3, 29, 23, 30, BERLIN), (CURL, (s(10, 12),))),
        w("dst-sun", at(2025, 3, 30, 3, 30, BERLIN), (CURL, (s(10, 14),))),
        # 00:30 CEST Monday is 22:30 UTC Sunday: the new week locally, the old one in UTC.
        w("mon", at(2025, 3, 31, 0, 30, BERLIN), (CURL, (s(10, 16),))),
    ]
    as_of = at(2025, 4, 1, 12, 0, BERLIN)
    assert stats(workouts, zone=BERLIN, as_of=as_of, weeks=2).weekly_volume == (
        WeeklyMuscleVolume(date(2025, 3, 24), "biceps", 2, 260.0),
        WeeklyMuscleVolume(date(2025, 3, 31), "biceps", 1, 160.0),
    )
    assert len(stats(workouts, zone=BERLIN, as_of=as_of, weeks=4).weekly_volume) == 3
    assert stats(workouts, zone=BERLIN, as_of=as_of, weeks=1).weekly_volume == (
        WeeklyMuscleVolume(date(2025, 3, 31), "biceps", 1, 160.0),
    )
    assert stats(workouts, zone=BERLIN, as_of=as_of, weeks=0).weekly_volume == ()


def test_five_thousand_workouts_in_any_input_order():
    start = at(2012, 1, 1)
    workouts = [
        w(
            f"w{i:05d}",
            start + timedelta(days=i, hours=i % 5),
            (BENCH, tuple(s(5 + i % 4, 60 + i % 30) for _ in range(4))),
            (SQUAT, (s(5, 100, "warmup"), *(s(5, 100 + i % 50) for _ in range(4)))),
            (CURL, (s(12, 15),)),
        )
        for i in range(5000)
    ]
    # Speed belongs in bench/, not in a timed assertion; here: a long history, reversed.
    result = stats(list(reversed(workouts)), goal=3, as_of=workouts[-1].started_at)
    assert (result.activity.current_days, result.activity.longest_days) == (5000, 5000)
    assert result.activity.current_weeks == result.activity.longest_weeks
    assert len(result.weekly_volume) == 12 * 4  # chest, quadriceps, glutes, biceps
