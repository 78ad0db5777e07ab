"""Workout-history imports (Strong, Hevy, FitNotes) and exports (JSON, Strong CSV).

Parsing and name matching are tested on small CSVs written here; the import command runs
end to end through the real database and is checked through the real server's ListWorkouts."""

# ruff: noqa: E501  (the sample files keep their real, long header lines)

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from repwise.v1 import log_pb2
from server.catalog.sources import DEFAULT_CATALOG, seed_default_catalog
from server.logs import exports
from server.logs.import_command import primary_muscle, run_export, run_import
from server.logs.imports import (
    KG_PER_LB,
    M_PER_MILE,
    CatalogEntry,
    Match,
    equipment_of,
    match_names,
    normalize,
    parse,
    split_equipment,
)
from tests.conftest import bearer, register

# --- sample files ---------------------------------------------------------------------------

STRONG_COMMA = """\
Date,Workout Name,Duration,Exercise Name,Set Order,Weight,Reps,Distance,Seconds,Notes,Workout Notes,RPE
2024-01-15 18:30:00,"Push Day",1h 5m,"Bench Press (Barbell)",W,40,10,0,0,"Paused, felt good","Good session",
2024-01-15 18:30:00,"Push Day",1h 5m,"Bench Press (Barbell)",1,100,5,0,0,"","",8
2024-01-15 18:30:00,"Push Day",1h 5m,"Bench Press (Barbell)",2,100,5,0,0,"","",8.5
2024-01-15 18:30:00,"Push Day",1h 5m,"Zercher Carry Thing",1,60,0,20,30,"","",

2024-01-17 07:05:00,"Legs",45m,"Squat (Barbell)",1,140,3,0,0,"","",
2024-01-17 07:05:00,"Legs",45m,"Squat (Barbell)",D,100,8,0,0,"","",
"""

STRONG_SEMICOLON = (
    "\ufeff"
    + """\
"Date";"Workout Name";"Exercise Name";"Set Order";"Weight";"Weight Unit";"Reps";"RPE";"Distance";"Distance Unit";"Seconds";"Notes";"Workout Notes";"Workout Duration"
"2019-01-11 12:31:54";"Leg";"Deadlift (Barbell)";"1";"225";"lbs";"5";"";"";"";"0";"";"";"50m"

"2019-01-11 12:31:54";"Leg";"Deadlift (Barbell)";"2";"100";"kg";"3";"";"";"";"0";"";"";"50m"
"2019-01-11 12:31:54";"Leg";"Running";"1";"0";"kg";"0";"";"5";"km";"1500";"";"";"50m"
"2019-01-11 12:31:54";"Leg";"Cycling";"1";"";"";"";"";"2";"mi";"600";"";"";"50m"
"""
)

STRONG_NEW = (
    "Date,Workout Name,Duration,Exercise Name,Set Order,Weight,Reps,Distance,Seconds,"
    "Notes,Workout Notes,RPE\n"
    "2024-05-01 7:32:10\u202fPM,Evening,1h,Lat Pulldown (Cable),1,50,10,0,0,,,\n"
    "2024-05-01 7:32:10\u202fPM,Evening,1h,Lat Pulldown (Cable),Rest Timer,0,0,0,90,,,\n"
    "2024-05-01 7:32:10\u202fPM,Evening,1h,Lat Pulldown (Cable),2,50,8,0,0,,,\n"
)

HEVY_KG = """\
"title","start_time","end_time","description","exercise_title","superset_id","exercise_notes","set_index","set_type","weight_kg","reps","distance_km","duration_seconds","rpe"
"Upper","15 Jan 2024, 18:30","15 Jan 2024, 19:42","felt strong","Bench Press (Barbell)","","",1,"normal",80,5,,,8
"Upper","15 Jan 2024, 18:30","15 Jan 2024, 19:42","felt strong","Bench Press (Barbell)","","",0,"warmup",40,10,,,
"Upper","15 Jan 2024, 18:30","15 Jan 2024, 19:42","felt strong","Bench Press (Barbell)","","",2,"dropset",60,8,,,
"Upper","15 Jan 2024, 18:30","15 Jan 2024, 19:42","felt strong","Lat Pulldown (Cable)",0,"wide grip",0,"failure",55,12,,,9.5
"Upper","15 Jan 2024, 18:30","15 Jan 2024, 19:42","felt strong","Sled Drag Medley","","",0,"normal",,,2.5,900,
"Lower","17 Jan 2024, 07:00","17 Jan 2024, 08:00","","Squat (Barbell)","","",0,"normal",120,5,,,
"""

HEVY_LB = """\
title,start_time,end_time,description,exercise_title,superset_id,exercise_notes,set_index,set_type,weight_lbs,reps,distance_miles,duration_seconds,rpe
Pull,"Jan 1, 2024, 10:00 AM","Jan 1, 2024, 11:00 AM",,Deadlift (Barbell),,,0,normal,315,5,,,
Pull,"Jan 1, 2024, 10:00 AM","Jan 1, 2024, 11:00 AM",,Running,,,0,normal,,,3,1800,
"""

FITNOTES_KG = """\
Date,Exercise,Category,Weight (kgs),Reps,Distance,Distance Unit,Time,Comment
2024-03-01,Flat Barbell Bench Press,Chest,60.0,10,,,,
2024-03-01,Flat Barbell Bench Press,Chest,62.5,8,,,,last one slow
2024-03-01,Cable Zottman Twist,Biceps,20,12,,,,
2024-03-01,Cycling,Cardio,,,12.0,km,0:30:00,
2024-03-03,Deadlift,Back,140,5,,,,
"""

FITNOTES_LB = """\
Date,Exercise,Category,Weight (lbs),Reps,Distance,Distance Unit,Time,Comment
2024-03-05,Barbell Squat,Legs,225,5,,,,
2024-03-05,Running (Sled Drag Medley),Cardio,,,1.5,mi,12:00,
"""


def by_title(workouts):
    return {w.title: w for w in workouts}


# --- Strong ---------------------------------------------------------------------------------


def test_strong_comma_in_kg():
    workouts = parse("strong", STRONG_COMMA, "kg", "UTC")
    assert [w.title for w in workouts] == ["Push Day", "Legs"]
    push, legs = workouts
    assert push.started_at == datetime(2024, 1, 15, 18, 30, tzinfo=UTC)
    assert push.ended_at == push.started_at + timedelta(hours=1, minutes=5)
    assert legs.ended_at == legs.started_at + timedelta(minutes=45)
    assert push.notes == "Good session"
    bench, carry = push.exercises
    assert bench.name == "Bench Press (Barbell)"
    assert bench.notes == "Paused, felt good"
    assert [(s.kind, s.weight_kg, s.reps, s.rpe) for s in bench.sets] == [
        ("warmup", 40.0, 10, None),
        ("normal", 100.0, 5, 8.0),
        ("normal", 100.0, 5, 8.5),
    ]
    assert bench.sets[0].distance_m is None and bench.sets[0].duration_s is None
    assert carry.sets[0].distance_m == 20_000.0  # km in a kg file
    assert carry.sets[0].duration_s == 30
    assert [s.kind for s in legs.exercises[0].sets] == ["normal", "drop"]


def test_strong_comma_in_lb_converts_to_kg():
    push = parse("strong", STRONG_COMMA, "lb", "UTC")[0]
    assert push.exercises[0].sets[1].weight_kg == pytest.approx(100 * KG_PER_LB)
    assert push.exercises[1].sets[0].distance_m == pytest.approx(20 * M_PER_MILE)


def test_strong_without_units_needs_a_unit():
    with pytest.raises(ValueError, match="unit"):
        parse("strong", STRONG_COMMA, None)


def test_strong_semicolon_with_unit_columns_bom_and_blank_lines():
    (leg,) = parse("strong", STRONG_SEMICOLON, None, "UTC")
    assert leg.started_at == datetime(2019, 1, 11, 12, 31, 54, tzinfo=UTC)
    assert leg.ended_at == leg.started_at + timedelta(minutes=50)
    deadlift, running, cycling = leg.exercises
    assert deadlift.name == "Deadlift (Barbell)"
    assert [s.weight_kg for s in deadlift.sets] == pytest.approx([225 * KG_PER_LB, 100.0])
    (run,) = running.sets
    assert (run.weight_kg, run.reps, run.distance_m, run.duration_s) == (None, None, 5000, 1500)
    assert cycling.sets[0].distance_m == pytest.approx(2 * M_PER_MILE)


def test_strong_twelve_hour_dates_and_rest_timer_rows():
    (evening,) = parse("strong", STRONG_NEW, "kg", "UTC")
    assert evening.started_at == datetime(2024, 5, 1, 19, 32, 10, tzinfo=UTC)
    assert evening.ended_at == evening.started_at + timedelta(hours=1)
    assert [s.reps for s in evening.exercises[0].sets] == [10, 8]


def test_times_are_local_wall_time_in_the_given_zone():
    push = parse("strong", STRONG_COMMA, "kg", "Europe/Berlin")[0]
    assert push.started_at.astimezone(UTC) == datetime(2024, 1, 15, 17, 30, tzinfo=UTC)
    assert push.time_zone == "Europe/Berlin"
    with pytest.raises(ValueError, match="time zone"):
        parse("strong", STRONG_COMMA, "kg", "Mars/Olympus")


def test_keys_are_stable_and_distinct():
    first = [w.key for w in parse("strong", STRONG_COMMA, "kg")]
    again = [w.key for w in parse("strong", STRONG_COMMA, "kg")]
    assert first == again and len(set(first)) == 2
    hevy = [w.key for w in parse("hevy", HEVY_KG)]
    assert not set(hevy) & set(first)


def test_bad_rows_name_the_line_and_column():
    bad = STRONG_COMMA.replace("100,5,0,0", "heavy,5,0,0", 1)
    with pytest.raises(ValueError, match=r"line 3, column 'Weight': 'heavy' is not a number"):
        parse("strong", bad, "kg")
    bad = STRONG_COMMA.replace("2024-01-17 07:05:00", "yesterday", 1)
    with pytest.raises(ValueError, match=r"line 7, column 'Date'"):
        parse("strong", bad, "kg")
    bad = HEVY_KG.replace('"dropset"', '"superduper"')
    with pytest.raises(ValueError, match=r"line 4, column 'set_type'"):
        parse("hevy", bad)
    bad = FITNOTES_KG.replace("140,5", "140,5.5")
    with pytest.raises(ValueError, match=r"line 6, column 'Reps'"):
        parse("fitnotes", bad)
    with pytest.raises(ValueError, match="no 'Exercise Name' column"):
        parse("strong", "Date,Weight\n2024-01-01,5\n", "kg")
    with pytest.raises(ValueError, match="unknown import kind"):
        parse("jefit", STRONG_COMMA, "kg")


# --- Hevy -----------------------------------------------------------------------------------


def test_hevy_in_kg_with_set_types_and_order():
    upper, lower = parse("hevy", HEVY_KG, None, "UTC")
    assert upper.title == "Upper" and upper.notes == "felt strong"
    assert upper.started_at == datetime(2024, 1, 15, 18, 30, tzinfo=UTC)
    assert upper.ended_at == datetime(2024, 1, 15, 19, 42, tzinfo=UTC)
    bench, pulldown, sled = upper.exercises
    assert [(s.kind, s.weight_kg, s.reps) for s in bench.sets] == [
        ("warmup", 40.0, 10),
        ("normal", 80.0, 5),
        ("drop", 60.0, 8),
    ]
    assert bench.sets[1].rpe == 8.0
    assert pulldown.notes == "wide grip"
    assert (pulldown.sets[0].kind, pulldown.sets[0].rpe) == ("failure", 9.5)
    assert (sled.sets[0].distance_m, sled.sets[0].duration_s) == (2500.0, 900.0)
    assert lower.exercises[0].sets[0].weight_kg == 120.0


def test_hevy_in_lb():
    (pull,) = parse("hevy", HEVY_LB, None, "America/New_York")
    assert pull.started_at.astimezone(UTC) == datetime(2024, 1, 1, 15, 0, tzinfo=UTC)
    deadlift, running = pull.exercises
    assert deadlift.sets[0].weight_kg == pytest.approx(315 * KG_PER_LB)
    assert running.sets[0].distance_m == pytest.approx(3 * M_PER_MILE)


# --- FitNotes -------------------------------------------------------------------------------


def test_fitnotes_in_kg_groups_by_day():
    first, second = parse("fitnotes", FITNOTES_KG, None, "UTC")
    assert first.started_at == datetime(2024, 3, 1, tzinfo=UTC)
    assert first.ended_at is None
    bench, zottman, cycling = first.exercises
    assert [s.weight_kg for s in bench.sets] == [60.0, 62.5]
    assert bench.notes == "last one slow"
    assert bench.category == "Chest" and zottman.category == "Biceps"
    assert (cycling.sets[0].distance_m, cycling.sets[0].duration_s) == (12_000.0, 1800.0)
    assert second.exercises[0].name == "Deadlift"


def test_fitnotes_in_lb():
    (day,) = parse("fitnotes", FITNOTES_LB, None, "UTC")
    squat, running = day.exercises
    assert squat.sets[0].weight_kg == pytest.approx(225 * KG_PER_LB)
    assert running.sets[0].distance_m == pytest.approx(1.5 * M_PER_MILE)
    assert running.sets[0].duration_s == 720


# --- matching -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin() -> list[CatalogEntry]:
    data = json.loads(Path(DEFAULT_CATALOG).read_text())
    return [
        CatalogEntry(
            id=e["slug"],
            name=e["name"],
            aliases=tuple(e.get("aliases", ())),
            equipment=e.get("equipment"),
            primary_muscles=tuple(e["primary_muscles"]),
        )
        for e in data["exercises"]
    ]


def test_normalization_and_suffixes():
    assert split_equipment("Bench Press (Barbell)") == ("Bench Press", "barbell")
    assert split_equipment("Pull Up (Assisted)") == ("Pull Up (Assisted)", None)
    assert equipment_of("DB Bench Press") == "dumbbell"
    assert equipment_of("Leg Press (Machine)") == "machine"
    assert normalize("DB Bench-Presses") == normalize("dumbbell bench press")
    assert normalize("Bench Press (Dumbbell)") == normalize("Dumbbell Bench Press")
    assert split_equipment("Incline Bench Press (Dumbell)") == ("Incline Bench Press", "dumbbell")


def test_match_exact_alias_normalized(builtin):
    matches = match_names(
        [
            "Barbell Bench Press",
            "Bench Press (Barbell)",
            "Squat (Barbell)",
            "Lat Pulldown (Cable)",
            "dumbbell bench presses",
            "Bench Press (BB)",
            "Incline Bench Press (Dumbell)",
        ],
        builtin,
    )
    assert matches["Barbell Bench Press"] == Match(
        "barbell-bench-press", "exact", 1.0, "Barbell Bench Press"
    )
    assert matches["Bench Press (Barbell)"].method == "alias"
    assert matches["Bench Press (Barbell)"].exercise_id == "barbell-bench-press"
    assert matches["Squat (Barbell)"].exercise_id == "barbell-back-squat"
    assert matches["Lat Pulldown (Cable)"].exercise_id == "lat-pulldown"
    assert matches["dumbbell bench presses"].method == "normalized"
    assert matches["dumbbell bench presses"].exercise_id == "dumbbell-bench-press"
    assert matches["Bench Press (BB)"].exercise_id == "barbell-bench-press"
    assert matches["Incline Bench Press (Dumbell)"].exercise_id == "incline-dumbbell-bench-press"


def test_fuzzy_matching_is_restricted_by_equipment():
    catalog = [
        CatalogEntry("zd", "Zottman Curl", (), "dumbbell"),
        CatalogEntry("hc", "Hammer Curl", (), "dumbbell"),
        CatalogEntry("pb", "Pendlay Row", (), "barbell"),
    ]
    matches = match_names(
        ["Zotman Curl (Dumbbell)", "Zotman Curl (Barbell)", "Pendley Row (Barbell)"], catalog
    )
    assert matches["Zotman Curl (Dumbbell)"].exercise_id == "zd"
    assert matches["Zotman Curl (Dumbbell)"].method == "fuzzy"
    assert 0.85 <= matches["Zotman Curl (Dumbbell)"].score < 1
    assert matches["Zotman Curl (Barbell)"].method == "new"  # the only close one is a dumbbell
    assert matches["Pendley Row (Barbell)"].exercise_id == "pb"


def test_unknown_and_ambiguous_names_are_new(builtin):
    catalog = [
        CatalogEntry("a", "Cable Row Alpha", ("Row Thing",), "cable"),
        CatalogEntry("b", "Cable Row Beta", ("Row Thing",), "cable"),
        CatalogEntry("c", "Cable Row Gamma", (), "cable"),
        CatalogEntry("d", "Cable Row Delta", (), "cable"),
    ]
    matches = match_names(["Row Thing", "Cable Row Alpa", "Cable Row"], catalog)
    assert matches["Row Thing"].method == "new"  # alias of two exercises
    assert matches["Cable Row Alpa"].exercise_id == "a"
    assert match_names(["Underwater Basket Weaving"], builtin)["Underwater Basket Weaving"] == (
        Match(None, "new", 0.0, "")
    )


def test_private_exercises_win_ties_and_imported_ones_are_never_fuzzy():
    catalog = [
        CatalogEntry("shared", "Sled Push", (), "other"),
        CatalogEntry("mine", "Sled Push", (), "other", private=True),
        CatalogEntry("made", "Sled Pull Zzz", (), "other", private=True, fuzzy=False),
    ]
    matches = match_names(["Sled Push", "Sled Pull Zz"], catalog)
    assert matches["Sled Push"].exercise_id == "mine"
    assert matches["Sled Pull Zz"].method == "new"


def test_primary_muscle_rule(builtin):
    assert primary_muscle("Cable Zottman Twist", "Biceps", builtin) == "biceps"
    assert primary_muscle("Zercher Squat", "", builtin) == "quadriceps"
    assert primary_muscle("Sled Drag Thing", "", builtin) in {
        m for e in builtin for m in e.primary_muscles
    }


# --- end to end through the database ------------------------------------------------------


@pytest.fixture
def seeded(server, clock):
    seed_default_catalog(server.server.db, clock)
    return server


def write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def do_import(server, kind, path, email, **options):
    out = io.StringIO()
    options.setdefault("dry_run", False)
    options.setdefault("unit", None)
    options.setdefault("time_zone", None)
    summary = run_import(
        server.server.db,
        server.server.catalog,
        server.server.logs,
        kind,
        path,
        email,
        out=out,
        **options,
    )
    return summary, out.getvalue()


def listed(server, token: str) -> list[log_pb2.Workout]:
    return list(
        server.logs.ListWorkouts(
            log_pb2.ListWorkoutsRequest(page_size=200, weight_unit=1), metadata=bearer(token)
        ).workouts
    )


def count(db, table: str) -> int:
    with db.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_strong_import_end_to_end_and_reimport_adds_nothing(seeded, tmp_path):
    user = register(seeded)
    path = write(tmp_path, "strong.csv", STRONG_COMMA)
    exercises_before = count(seeded.server.db, "exercises")

    summary, output = do_import(seeded, "strong", path, user.user.email, unit="kg")
    assert (summary.workouts, summary.created, summary.unchanged) == (2, 2, 0)
    assert summary.new_exercises == 1  # "Zercher Carry Thing"
    assert count(seeded.server.db, "exercises") == exercises_before + 1
    assert "Bench Press (Barbell)" in output and "Barbell Bench Press" in output

    workouts = listed(seeded, user.access_token)
    assert [w.title for w in workouts] == ["Legs", "Push Day"]  # newest first
    push = workouts[1]
    assert push.start_time.ToDatetime(tzinfo=UTC) == datetime(2024, 1, 15, 18, 30, tzinfo=UTC)
    bench, carry = push.exercises
    assert bench.exercise_name == "Barbell Bench Press"
    assert [(s.weight, s.reps, s.kind) for s in bench.sets] == [
        (40.0, 10, log_pb2.SET_KIND_WARMUP),
        (100.0, 5, log_pb2.SET_KIND_NORMAL),
        (100.0, 5, log_pb2.SET_KIND_NORMAL),
    ]
    assert carry.exercise_name == "Zercher Carry Thing"

    again, output = do_import(seeded, "strong", path, user.user.email, unit="kg")
    assert (again.created, again.unchanged, again.new_exercises) == (0, 2, 0)
    assert (
        again.matches["Zercher Carry Thing"].exercise_id
        == summary.matches["Zercher Carry Thing"].exercise_id
    )
    assert len(listed(seeded, user.access_token)) == 2
    assert count(seeded.server.db, "exercises") == exercises_before + 1
    assert count(seeded.server.db, "workouts") == 2

    # Another user importing the same file gets their own copies and exercises.
    other = register(seeded)
    theirs, _ = do_import(seeded, "strong", path, other.user.email, unit="kg")
    assert (theirs.created, theirs.new_exercises) == (2, 1)
    assert len(listed(seeded, user.access_token)) == 2


def test_dry_run_stores_nothing_and_prints_the_table(seeded, tmp_path):
    user = register(seeded)
    path = write(tmp_path, "hevy.csv", HEVY_KG)
    exercises_before = count(seeded.server.db, "exercises")
    summary, output = do_import(seeded, "hevy", path, user.user.email, dry_run=True)
    assert summary.dry_run and summary.created == 0
    assert summary.new_exercises == 1  # "Sled Drag Medley" is not in the catalog
    assert count(seeded.server.db, "workouts") == 0
    assert count(seeded.server.db, "exercises") == exercises_before
    lines = output.splitlines()
    assert lines[1].split()[:3] == ["name", "catalog", "exercise"]
    row = next(line for line in lines if line.startswith("Lat Pulldown (Cable)"))
    assert "Lat Pulldown" in row[len("Lat Pulldown (Cable)") :] and "alias" in row
    assert any("Sled Drag Medley" in line and "new" in line for line in lines)
    assert "nothing was stored" in output


def test_hevy_and_fitnotes_imports(seeded, tmp_path):
    user = register(seeded)
    hevy, _ = do_import(seeded, "hevy", write(tmp_path, "h.csv", HEVY_LB), user.user.email)
    assert hevy.created == 1
    fit, _ = do_import(
        seeded,
        "fitnotes",
        write(tmp_path, "f.csv", FITNOTES_KG),
        user.user.email,
        time_zone="Europe/Berlin",
    )
    assert fit.created == 2
    assert fit.matches["Flat Barbell Bench Press"].exercise_id is not None
    assert fit.matches["Flat Barbell Bench Press"].method in ("alias", "exact")
    assert fit.matches["Cable Zottman Twist"].method == "new"
    workouts = listed(seeded, user.access_token)
    assert len(workouts) == 3
    day = next(w for w in workouts if w.time_zone == "Europe/Berlin" and len(w.exercises) == 3)
    assert day.start_time.ToDatetime(tzinfo=UTC) == datetime(2024, 2, 29, 23, 0, tzinfo=UTC)
    twist = day.exercises[1]
    detail = seeded.server.db.run(
        lambda s: s.execute(
            text("SELECT primary_muscles, equipment, owner_id FROM exercises WHERE id = :i"),
            {"i": twist.exercise_id},
        ).one(),
        write=False,
    )
    assert "biceps" in str(detail[0]) and detail[1] == "cable" and detail[2] == user.user.id
    deadlift = next(w for w in workouts if w.title == "Pull").exercises[0]
    assert deadlift.sets[0].weight == pytest.approx(315 * KG_PER_LB)


def test_reimport_after_an_edit_leaves_the_edit_alone(seeded, tmp_path):
    user = register(seeded)
    path = write(tmp_path, "strong.csv", STRONG_COMMA)
    do_import(seeded, "strong", path, user.user.email, unit="kg")
    workout = listed(seeded, user.access_token)[0]
    workout.title = "Renamed"
    seeded.logs.UpdateWorkout(
        log_pb2.UpdateWorkoutRequest(workout=workout), metadata=bearer(user.access_token)
    )
    again, output = do_import(seeded, "strong", path, user.user.email, unit="kg")
    assert (again.created, again.unchanged, again.conflicts) == (0, 1, 1)
    assert "changed since" in output
    assert {w.title for w in listed(seeded, user.access_token)} == {"Renamed", "Push Day"}


def test_import_errors_are_clear(seeded, tmp_path):
    from server.errors import InvalidArgument, NotFound

    user = register(seeded)
    with pytest.raises(NotFound):
        do_import(seeded, "strong", write(tmp_path, "a.csv", STRONG_COMMA), "nobody@example.com")
    bad = write(tmp_path, "b.csv", STRONG_COMMA.replace("100,5,0,0", "100,5000,0,0", 1))
    with pytest.raises(InvalidArgument, match=r"line 2 .*reps"):
        do_import(seeded, "strong", bad, user.user.email, unit="kg")
    bad = write(tmp_path, "c.csv", STRONG_COMMA.replace("140,3", "1e9,3"))
    with pytest.raises(InvalidArgument, match="weight"):
        do_import(seeded, "strong", bad, user.user.email, unit="kg")
    assert count(seeded.server.db, "workouts") == 0


def test_exports_round_trip(seeded, tmp_path):
    user = register(seeded)
    do_import(seeded, "strong", write(tmp_path, "s.csv", STRONG_COMMA), user.user.email, unit="kg")
    do_import(seeded, "hevy", write(tmp_path, "h.csv", HEVY_KG), user.user.email)
    views = list(exports.iter_views(seeded.server.db, user.user.id, page_size=2))
    assert len(views) == 4
    assert [v.workout.started_at for v in views] == sorted(v.workout.started_at for v in views)

    for unit in ("kg", "lb"):
        csv_text = b"".join(exports.export_strong_csv(views, unit)).decode()
        assert csv_text.splitlines()[0] == ",".join(exports.STRONG_COLUMNS)
        back = parse("strong", csv_text, unit, "UTC")
        assert len(back) == len(views)
        for view, parsed in zip(views, back, strict=True):
            assert parsed.started_at == view.workout.started_at
            assert parsed.title == view.workout.title
            assert parsed.notes == view.workout.notes
            assert [e.name for e in parsed.exercises] == [p.exercise_name for p in view.exercises]
            for performed, imported in zip(view.exercises, parsed.exercises, strict=True):
                assert imported.notes == performed.notes
                assert len(imported.sets) == len(performed.sets)
                for stored, read in zip(performed.sets, imported.sets, strict=True):
                    assert read.kind == stored.kind
                    assert read.reps == stored.reps
                    assert read.rpe == stored.rpe
                    assert read.duration_s == stored.duration_s
                    if stored.weight_kg is None:
                        assert read.weight_kg is None
                    else:
                        assert read.weight_kg == pytest.approx(stored.weight_kg, abs=1e-6)
                    if stored.distance_m is None:
                        assert read.distance_m is None
                    else:
                        assert read.distance_m == pytest.approx(stored.distance_m, abs=1e-3)

    document = json.loads(b"".join(exports.export_json(views, "lb")))
    assert document["format"] == "repwise-export" and document["version"] == 1
    assert document["weight_unit"] == "lb"
    assert [w["id"] for w in document["workouts"]] == [v.workout.id for v in views]
    push = next(w for w in document["workouts"] if w["title"] == "Push Day")
    bench = push["exercises"][0]
    assert bench["exercise_name"] == "Barbell Bench Press"
    assert bench["sets"][1]["weight"] == pytest.approx(100 / KG_PER_LB)

    chunks: list[bytes] = []
    written = run_export(seeded.server.db, user.user.email, "json", unit="kg", write=chunks.append)
    assert written == sum(map(len, chunks))
    assert len(json.loads(b"".join(chunks))["workouts"]) == 4
    chunks.clear()
    run_export(seeded.server.db, user.user.email, "strong-csv", write=chunks.append)
    assert len(parse("strong", b"".join(chunks).decode(), "kg")) == 4


def test_export_streams_in_chunks(seeded, tmp_path, monkeypatch):
    user = register(seeded)
    do_import(seeded, "strong", write(tmp_path, "s.csv", STRONG_COMMA), user.user.email, unit="kg")
    views = list(exports.iter_views(seeded.server.db, user.user.id))
    monkeypatch.setattr(exports, "CHUNK_BYTES", 10)
    assert len(list(exports.export_json(views, "kg"))) == 3
    assert len(list(exports.export_strong_csv(views, "kg"))) == 3
    assert json.loads(b"".join(exports.export_json([], "kg")))["workouts"] == []
