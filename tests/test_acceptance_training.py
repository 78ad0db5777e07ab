"""Issue 4's "done when", as a new user would do it, against a real `repwise serve` process:
import a history, run `repwise train`, fetch the bundle with the SDK, get ten recommendations
with reasons offline (server stopped), and read `repwise eval` beating the baselines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from client_sdk import RepwiseClient
from repwise.v1 import auth_pb2
from tests.conftest import PASSWORD
from tests.test_cli import cli_env, repwise, serving

HEADER = "Date,Workout Name,Duration,Exercise Name,Set Order,Weight,Reps,Distance,Seconds,Notes,Workout Notes,RPE"  # noqa: E501
DAYS = {
    "Push": ["Bench Press (Barbell)", "Overhead Press (Barbell)", "Lateral Raise (Dumbbell)"],
    "Pull": ["Bent Over Row (Barbell)", "Lat Pulldown (Cable)", "Bicep Curl (Barbell)"],
    "Legs": ["Squat (Barbell)", "Romanian Deadlift (Barbell)", "Leg Press"],
}


def strong_export(first: datetime, workouts: int) -> str:
    """A push/pull/legs history every other day, in Strong's CSV."""
    lines = [HEADER]
    for w in range(workouts):
        day = list(DAYS)[w % 3]
        when = (first + timedelta(days=2 * w)).strftime("%Y-%m-%d %H:%M:%S")
        for exercise in DAYS[day]:
            for order, (weight, reps) in enumerate([(40 + w, 8), (45 + w, 6)], start=1):
                lines.append(f'{when},"{day}",1h,"{exercise}",{order},{weight},{reps},0,0,"","",')
    return "\n".join(lines) + "\n"


def test_import_train_and_recommend_offline_then_evaluate(tmp_path: Path):
    env = cli_env(f"sqlite:///{tmp_path / 'repwise.db'}", REPWISE_JWT_SECRET="x" * 40)
    export = tmp_path / "strong.csv"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=90)
    export.write_text(strong_export(start, 42))
    cache = tmp_path / "cache"
    email = "ann@example.com"
    with serving(env, tmp_path) as served:
        served.auth.Register(auth_pb2.RegisterRequest(email=email, password=PASSWORD))
        imported = repwise(
            "import", "strong", str(export), "--user", email, "--unit", "kg", env=env, cwd=tmp_path
        )
        assert imported.returncode == 0, imported.stderr
        assert "42 new workouts" in imported.stdout

        trained = repwise("train", env=env, cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr
        assert "trained 1 users, 0 failed" in trained.stdout

        client = RepwiseClient(f"127.0.0.1:{served.port}", cache_dir=cache)
        client.login(email, PASSWORD)
        bundle = client.fetch_model_bundle()
        assert not bundle.is_population_model and bundle.sample_count == 42 * 3 - 1
        ids = {e.name: e.id for e in client.iter_exercises()}
        online = client.recommend(10, current_workout=[ids["Barbell Bench Press"]])
        tokens = client.tokens
        client.close()

    # The server is gone: a new client process recommends from its cache.
    assert tokens is not None
    with RepwiseClient(f"127.0.0.1:{served.port}", cache_dir=cache, timeout=1, retries=1) as phone:
        phone.resume_session(tokens)
        offline = phone.recommend(10, current_workout=[ids["Barbell Bench Press"]])
    assert [r.exercise_id for r in offline] == [r.exercise_id for r in online]
    assert len(offline) == 10 and all(r.reason for r in offline)
    first = offline[0]
    assert first.name == "Barbell Overhead Press"
    assert first.reason == "you usually do this after Barbell Bench Press"
    # The last overhead press top set was 45 + 39 kg × 6: one more rep next time.
    assert (first.suggested_weight_kg, first.suggested_reps) == (84.0, 7)

    evaluated = repwise("eval", "--synthetic", "60", "--json", env=env, cwd=tmp_path, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["beats_baselines"] is True, report
