"""Recommendations end to end: the server trains, the SDK downloads the bundle,
keeps its statistics live with newer workouts, and recommends offline."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from client_sdk import RepwiseClient
from repwise.v1 import auth_pb2, common_pb2, log_pb2
from server.catalog.sources import seed_default_catalog
from server.training import repository as repo
from tests.conftest import PASSWORD, register, start_server
from tests.test_training import LEGS, PULL, PUSH, log_routine

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


@pytest.fixture
def trained(server, clock, tmp_path):
    """A user with 60 days of push/pull/legs, trained, signed in through the SDK."""
    clock.freeze(NOW)
    seed_default_catalog(server.server.db, clock)
    email = f"rec-{uuid.uuid4().hex[:8]}@example.com"
    register(server, email)
    sdk = RepwiseClient(server.target, cache_dir=tmp_path)
    sdk.login(email, PASSWORD)
    from tests.conftest import bearer

    md = bearer(sdk.tokens.access_token)
    log_routine(server, md, NOW - timedelta(days=61))
    assert server.server.training.trainer.run_batch(repo.Selection()).trained == 1
    ids = {e.slug: e.id for e in sdk.iter_exercises()}
    yield sdk, ids, md
    sdk.close()


def test_ten_recommendations_follow_the_routine_with_reasons_and_next_sets(trained):
    sdk, ids, _ = trained
    recs = sdk.recommend(10, current_workout=[ids["barbell-bench-press"]], now=NOW.timestamp())
    assert len(recs) == 10
    first = recs[0]
    assert first.exercise_id == ids["barbell-overhead-press"]
    assert first.reason == "you usually do this after Barbell Bench Press"
    # Latest overhead press top set: 55 + 27 kg × 6 → one more rep at that weight.
    assert (first.suggested_weight_kg, first.suggested_reps) == (82.0, 7)
    assert ids["barbell-bench-press"] not in {r.exercise_id for r in recs}
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    # Catalog exercises never done come with similarity reasons only.
    fresh = [r for r in recs if r.suggested_weight_kg is None]
    assert all("similar" in r.reason for r in fresh)


def test_the_start_of_a_workout_follows_the_cycle(trained):
    sdk, ids, _ = trained
    # The last workout (day 58) was push, at index 29 → legs next... the routine goes
    # push, pull, legs: after the last exercise of the last workout comes the next day's first.
    recs = sdk.recommend(3, now=NOW.timestamp())
    last_workout = (PUSH, PULL, LEGS)[29 % 3]
    next_workout = (PUSH, PULL, LEGS)[30 % 3]
    assert recs[0].exercise_id == ids[next_workout[0]], (last_workout, recs)


def test_workouts_logged_after_training_count_at_once(trained):
    sdk, ids, _ = trained
    bench, crossover = ids["barbell-bench-press"], ids["cable-crossover"]

    def crossover_after_bench():
        recs = sdk.recommend(40, current_workout=[bench], now=NOW.timestamp())
        return next(r for r in recs if r.exercise_id == crossover), recs

    before, _ = crossover_after_bench()
    assert before.contributions["routine"] == 0  # it never followed bench press
    # A new habit since the bundle: cable crossover right after bench press.
    m = log_pb2.Workout(id=str(uuid.uuid4()))
    m.start_time.FromDatetime(NOW - timedelta(hours=5))
    for slug in ("barbell-bench-press", "cable-crossover"):
        m.exercises.add(exercise_id=slug).sets.add(reps=12, weight=40)
    sdk.create_workout(m)
    after, recs = crossover_after_bench()
    # What followed bench press last time scores the full routine term.
    assert after.contributions["routine"] == pytest.approx(sdk.local_model().weights[0])
    assert after.score > before.score
    assert crossover in [r.exercise_id for r in recs[:2]]
    # 12 reps reached the top of the range: add weight, back to 6 reps.
    assert (after.suggested_weight_kg, after.suggested_reps) == (42.5, 6)


def test_recommendations_honour_the_profiles_equipment(trained):
    sdk, ids, _ = trained
    me = sdk.get_me()
    me.available_equipment[:] = [common_pb2.EQUIPMENT_DUMBBELL]
    sdk.update_me(me, update_mask=["available_equipment"])
    recs = sdk.recommend(40, now=NOW.timestamp())
    own = {ids[s] for s in (*PUSH, *PULL, *LEGS)}
    model = sdk.local_model(NOW.timestamp())
    for r in recs:
        if r.exercise_id in own:
            continue  # exercises they already do need nothing new
        row = model.row[r.exercise_id]
        needs = {
            name.split(":")[1]
            for name, v in zip(model_feature_names(), model.phi[row], strict=True)
            if name.startswith("equipment:") and v > 0
        }
        assert needs <= {"dumbbell", "body_only"}, (r.name, needs)


def model_feature_names():
    from client_sdk.features import FEATURE_NAMES

    return FEATURE_NAMES


def test_recommendations_work_offline_from_the_cache(trained, db, clock, tmp_path):
    sdk, ids, _ = trained
    online = sdk.recommend(5, current_workout=[ids["assisted-pull-up"]], now=NOW.timestamp())
    tokens = sdk.tokens
    target = sdk.target
    # The server goes away; a new client process resumes the saved session.
    for running in list(_servers):
        running.server.stop(grace=0)
    offline_client = RepwiseClient(target, cache_dir=tmp_path, timeout=1.0, retries=1)
    offline_client.resume_session(tokens)
    offline = offline_client.recommend(
        5, current_workout=[ids["assisted-pull-up"]], now=NOW.timestamp()
    )
    assert [r.exercise_id for r in offline] == [r.exercise_id for r in online]
    assert offline[0].exercise_id == ids["barbell-bent-over-row"]


_servers: list = []


@pytest.fixture
def server(db, clock):
    """This module's server, stoppable by the offline test."""
    running = start_server(db, clock)
    _servers.append(running)
    yield running
    _servers.remove(running)
    running.channel.close()
    running.server.stop(grace=0)


def test_population_bundle_recommends_for_a_new_user(server, clock, tmp_path):
    clock.freeze(NOW)
    seed_default_catalog(server.server.db, clock)
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    register(server, email)
    with RepwiseClient(server.target, cache_dir=tmp_path) as sdk:
        sdk.login(email, PASSWORD)
        assert sdk.fetch_model_bundle().is_population_model
        recs = sdk.recommend(5, now=NOW.timestamp())
        assert len(recs) == 5 and all(r.suggested_weight_kg is None for r in recs)
        assert auth_pb2  # the profile call above went through the SDK
