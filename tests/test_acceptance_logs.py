"""Issue 3's "done when", as a new user would do it, against a real `repwise serve` process:
import a Strong export (match report first), list and stream the history, edit a workout and see
streaks and records follow, catch up a second device through the change feed, export it back."""

# ruff: noqa: E501  (the sample export keeps its real, long header line)

from pathlib import Path

from repwise.v1 import auth_pb2, common_pb2, log_pb2, log_pb2_grpc
from server.logs import imports
from tests.conftest import PASSWORD, bearer
from tests.test_cli import cli_env, repwise, serving

STRONG_EXPORT = """\
Date,Workout Name,Duration,Exercise Name,Set Order,Weight,Reps,Distance,Seconds,Notes,Workout Notes,RPE
2026-11-20 18:00:00,"Push",1h,"Bench Press (Barbell)",W,40,10,0,0,"","",
2026-11-20 18:00:00,"Push",1h,"Bench Press (Barbell)",1,100,5,0,0,"","",8
2026-11-20 18:00:00,"Push",1h,"Overhead Press (Barbell)",1,60,5,0,0,"","",
2026-11-22 18:00:00,"Push",1h,"Bench Press (Barbell)",1,102.5,5,0,0,"","",8
2026-11-22 18:00:00,"Push",1h,"Grandma's Special Press",1,20,12,0,0,"","",
"""


def test_a_new_users_logging_journey(tmp_path: Path):
    env = cli_env(f"sqlite:///{tmp_path / 'repwise.db'}", REPWISE_JWT_SECRET="x" * 40)
    export_file = tmp_path / "strong.csv"
    export_file.write_text(STRONG_EXPORT)
    with serving(env, tmp_path) as served:
        email = "ann@example.com"
        served.auth.Register(auth_pb2.RegisterRequest(email=email, password=PASSWORD))
        phone = served.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
        logs = log_pb2_grpc.LogServiceStub(served.channel)
        md = bearer(phone.access_token)

        # The dry run shows how names matched and stores nothing.
        args = ("import", "strong", str(export_file), "--user", email, "--unit", "kg")
        dry = repwise(*args, "--dry-run", env=env, cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert "Barbell Bench Press" in dry.stdout and "Grandma's Special Press" in dry.stdout
        assert not logs.ListWorkouts(log_pb2.ListWorkoutsRequest(), metadata=md).workouts

        done = repwise(*args, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "2 new workouts" in done.stdout
        again = repwise(*args, env=env, cwd=tmp_path)
        assert "0 new workouts" in again.stdout

        listed = logs.ListWorkouts(log_pb2.ListWorkoutsRequest(), metadata=md).workouts
        assert len(listed) == 2 and listed[0].start_time.seconds > listed[1].start_time.seconds
        streamed = [
            entry
            for chunk in logs.StreamHistory(log_pb2.StreamHistoryRequest(), metadata=md)
            for entry in chunk.entries
        ]
        assert [e.exercise.exercise_name for e in streamed][:2] == [
            "Barbell Bench Press",
            "Barbell Overhead Press",
        ]

        def best_bench_weight() -> float:
            stats = logs.GetStats(log_pb2.GetStatsRequest(), metadata=md)
            return next(
                r.value
                for r in stats.records
                if r.kind == log_pb2.RECORD_KIND_HEAVIEST_WEIGHT
                and r.exercise_id == streamed[0].exercise.exercise_id
            )

        assert best_bench_weight() == 102.5
        # Edit the latest workout: a heavier top set moves the record.
        latest = listed[0]
        latest.exercises[0].sets[0].weight = 107.5
        logs.UpdateWorkout(log_pb2.UpdateWorkoutRequest(workout=latest), metadata=md)
        assert best_bench_weight() == 107.5

        # A second device catches up from nothing, then sees a delete as a tombstone.
        tablet = served.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
        tablet_md = bearer(tablet.access_token)
        first = logs.SyncWorkouts(log_pb2.SyncWorkoutsRequest(), metadata=tablet_md)
        assert {c.workout.id for c in first.changes} == {w.id for w in listed}
        logs.DeleteWorkout(log_pb2.DeleteWorkoutRequest(id=listed[1].id), metadata=md)
        later = logs.SyncWorkouts(
            log_pb2.SyncWorkoutsRequest(cursor=first.next_cursor), metadata=tablet_md
        )
        assert [(c.workout.id, c.workout.HasField("delete_time")) for c in later.changes] == [
            (listed[1].id, True)
        ]

        # Export back as Strong CSV: it reads back to the workouts the server holds.
        csv_text = b"".join(
            chunk.data
            for chunk in logs.ExportData(
                log_pb2.ExportDataRequest(
                    format=log_pb2.EXPORT_FORMAT_STRONG_CSV, weight_unit=common_pb2.WEIGHT_UNIT_KG
                ),
                metadata=md,
            )
        ).decode()
        (reread,) = imports.parse("strong", csv_text, "kg", "UTC")
        assert [s.weight_kg for s in reread.exercises[0].sets] == [107.5]
