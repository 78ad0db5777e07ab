"""TrainingService through the real server: batch training, bundles, TrainNow,
status, admin RunBatch, claims, and crash safety of stored parameters."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from sqlalchemy import func

from client_sdk.model import STATE_DIMENSIONS
from repwise.v1 import auth_pb2, log_pb2, training_pb2
from server.catalog.sources import seed_default_catalog
from server.training import repository as repo
from server.training.models import PopulationModel, TrainingState, UserModel
from server.training.service import BatchTrainer
from tests.conftest import PASSWORD, bearer, error_info, make_admin, register, rpc_error

PUSH = ["barbell-bench-press", "barbell-overhead-press", "cable-crossover", "bench-dip"]
PULL = ["assisted-pull-up", "barbell-bent-over-row", "barbell-curl", "cable-curl"]
LEGS = ["barbell-back-squat", "barbell-romanian-deadlift", "bulgarian-split-squat"]


def log_routine(server, md, start: datetime, workouts: int = 30) -> None:
    """A push/pull/legs routine, every other day, progressing on weight."""
    for w in range(workouts):
        m = log_pb2.Workout(id=str(uuid.uuid4()), title="ppl")
        m.start_time.FromDatetime(start + timedelta(days=2 * w))
        for slug in (PUSH, PULL, LEGS)[w % 3]:
            performed = m.exercises.add(exercise_id=slug)
            performed.sets.add(reps=10, weight=20, kind=log_pb2.SET_KIND_WARMUP)
            performed.sets.add(reps=8, weight=50 + w)
            performed.sets.add(reps=6, weight=55 + w)
        server.logs.CreateWorkout(log_pb2.CreateWorkoutRequest(workout=m), metadata=md)


@pytest.fixture
def trained_user(server, clock):
    now = clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    seed_default_catalog(server.server.db, clock)
    md = bearer(register(server).access_token)
    log_routine(server, md, now - timedelta(days=70))
    return md


def test_untrained_user_gets_the_population_bundle_then_their_own(server, trained_user):
    md = trained_user
    first = server.training.GetModelBundle(training_pb2.GetModelBundleRequest(), metadata=md)
    assert first.bundle.is_population_model and not first.bundle.exercise_stats
    status = server.training.GetTrainingStatus(training_pb2.GetTrainingStatusRequest(), metadata=md)
    assert status.state == training_pb2.TRAINING_STATE_UNTRAINED

    summary = server.server.training.trainer.run_batch(repo.Selection())
    assert summary.trained == 1 and summary.failed == 0

    r = server.training.GetModelBundle(training_pb2.GetModelBundleRequest(), metadata=md)
    b = r.bundle
    assert not b.is_population_model and b.model_version > 0
    assert b.sample_count == 10 * (4 + 4 + 3) - 1  # every entry after the first
    assert len(b.state_names) == STATE_DIMENSIONS == b.coefficients.rows
    assert b.coefficients.cols == len(b.feature_names)
    assert len(b.coefficients.values) == b.coefficients.rows * b.coefficients.cols
    assert len(b.exercise_ids) == b.catalog_features.rows == len(b.exercise_names)
    ids = {s.exercise_id for s in b.exercise_stats}
    assert len(ids) == len(PUSH) + len(PULL) + len(LEGS)
    bench_id = b.exercise_ids[list(b.exercise_names).index("Barbell Bench Press")]
    bench = next(s for s in b.exercise_stats if s.exercise_id == bench_id)
    # The heaviest working set of the last session (workout 27), not the warm-up.
    assert bench.count == 10 and (bench.last_top_weight_kg, bench.last_top_reps) == (55 + 27, 6)
    # What followed bench press: always the overhead press.
    after_bench = [t for t in b.transitions if t.from_exercise_id == bench_id]
    assert len(after_bench) == 1 and after_bench[0].count == 10
    assert b.last_exercise_id and b.HasField("stats_time")
    assert b.sequence_parameters.recovery_hours > 0 and b.weights.routine > 0

    again = server.training.GetModelBundle(
        training_pb2.GetModelBundleRequest(known_version=b.model_version), metadata=md
    )
    assert again.not_modified and not again.HasField("bundle")
    status = server.training.GetTrainingStatus(training_pb2.GetTrainingStatusRequest(), metadata=md)
    assert status.state == training_pb2.TRAINING_STATE_READY
    assert status.model_version == b.model_version and status.sample_count == b.sample_count
    assert "tune_mrr" in status.metrics


def test_only_stale_users_retrain_and_versions_are_pruned(server, trained_user, clock):
    trainer = server.server.training.trainer
    assert trainer.run_batch(repo.Selection()).trained == 1
    assert trainer.run_batch(repo.Selection()).trained == 0  # nothing new
    for _ in range(4):
        clock.advance(60)
        assert trainer.run_batch(repo.Selection(all_users=True)).trained == 1
    rows = server.server.db.run(
        lambda s: s.query(UserModel.version).order_by(UserModel.version).all(), write=False
    )
    assert len(rows) == repo.KEEP_VERSIONS
    current = server.server.db.run(
        lambda s: s.query(TrainingState.current_version).scalar(), write=False
    )
    assert current == rows[-1][0]


def test_train_now_queues_is_rate_limited_and_the_worker_trains(server, trained_user):
    md = trained_user
    r = server.training.TrainNow(training_pb2.TrainNowRequest(), metadata=md)
    assert r.state == training_pb2.TRAINING_STATE_QUEUED and r.HasField("next_allowed_time")
    error = rpc_error(server.training.TrainNow, training_pb2.TrainNowRequest(), metadata=md)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).reason == "TRAIN_NOW_RATE_LIMITED"
    # The server's worker was woken by the request.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = server.training.GetTrainingStatus(
            training_pb2.GetTrainingStatusRequest(), metadata=md
        )
        if status.state == training_pb2.TRAINING_STATE_READY:
            break
        time.sleep(0.05)
    assert status.state == training_pb2.TRAINING_STATE_READY


def test_train_now_without_history_is_a_precondition_failure(server):
    md = bearer(register(server).access_token)
    error = rpc_error(server.training.TrainNow, training_pb2.TrainNowRequest(), metadata=md)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "NO_HISTORY"


def test_run_batch_is_for_admins(server, trained_user):
    error = rpc_error(
        server.training.RunBatch, training_pb2.RunBatchRequest(), metadata=trained_user
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = bearer(make_admin(server).access_token)
    r = server.training.RunBatch(training_pb2.RunBatchRequest(all_users=True), metadata=admin)
    assert r.users_trained == 1 and r.users_failed == 0
    assert r.end_time.ToDatetime() >= r.start_time.ToDatetime()


def test_bad_known_version_names_the_field(server, trained_user):
    error = rpc_error(
        server.training.GetModelBundle,
        training_pb2.GetModelBundleRequest(known_version=-1),
        metadata=trained_user,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "known_version" in error.details()


def test_users_claimed_by_a_live_worker_are_skipped_and_freed_after_a_crash(
    server, trained_user, clock
):
    db = server.server.db
    other = BatchTrainer(db, clock)
    db.run(repo.ensure_states)
    # Another worker claims the user, then dies without writing.
    claimed = db.run(
        lambda s: repo.claim(
            s, other.worker_id, clock(), clock() + timedelta(minutes=30), repo.Selection(), 10
        )
    )
    assert len(claimed) == 1
    mine = server.server.training.trainer
    assert mine.run_batch(repo.Selection()).trained == 0
    clock.advance(31 * 60)  # the dead worker's lease runs out
    assert mine.run_batch(repo.Selection()).trained == 1


def test_a_failure_mid_write_leaves_the_previous_parameters_whole(
    server, trained_user, monkeypatch
):
    trainer = server.server.training.trainer
    trainer.run_batch(repo.Selection())
    md = trained_user
    before = server.training.GetModelBundle(training_pb2.GetModelBundleRequest(), metadata=md)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    # The pointer switch fails after the new version's insert, in one transaction.
    monkeypatch.setattr(repo, "write_models", _insert_then(crash))
    summary = trainer.run_batch(repo.Selection(all_users=True))
    assert summary.failed == 1 and "disk full" in summary.errors[0]
    after = server.training.GetModelBundle(training_pb2.GetModelBundleRequest(), metadata=md)
    assert after.bundle == before.bundle
    versions = server.server.db.run(lambda s: s.query(UserModel).count(), write=False)
    assert versions == 1
    status = server.training.GetTrainingStatus(training_pb2.GetTrainingStatusRequest(), metadata=md)
    assert status.state == training_pb2.TRAINING_STATE_FAILED and "disk full" in status.last_error


def _insert_then(failure):
    real = repo.write_models

    def write(s, models, seqs, read_at):
        from sqlalchemy import insert

        s.execute(insert(UserModel), models)
        failure()
        real(s, models, seqs, read_at)

    return write


def test_coefficients_round_trip_through_storage(server, trained_user):
    trainer = server.server.training.trainer
    trainer.run_batch(repo.Selection())
    b = server.training.GetModelBundle(
        training_pb2.GetModelBundleRequest(), metadata=trained_user
    ).bundle
    w = np.array(b.coefficients.values).reshape(b.coefficients.rows, b.coefficients.cols)
    assert np.isfinite(w).all() and np.abs(w).max() > 0


def test_the_weekly_sweep_takes_only_offline_users_with_new_logs(server, clock):
    from server.training.scheduler import TrainingWorker

    now = clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    seed_default_catalog(server.server.db, clock)
    offline = register(server)
    online = register(server)
    for tokens in (offline, online):
        log_routine(server, bearer(tokens.access_token), now - timedelta(days=70), workouts=6)
    clock.advance(7 * 3600)
    # One user's phone refreshes its session: they are online.
    server.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=online.refresh_token))
    worker = TrainingWorker(
        server.server.training.trainer,
        poll_seconds=60,
        weekly=True,
        retrain_after=timedelta(days=7),
        offline_after=timedelta(hours=6),
    )
    worker.run_once()
    trained = server.server.db.run(
        lambda s: {r.user_id for r in s.query(UserModel.user_id)}, write=False
    )
    assert trained == {offline.user.id}
    # A week on, the other user is offline too; the first has nothing new.
    clock.advance(8 * 86400)
    worker.run_once()
    counts = server.server.db.run(
        lambda s: sorted(
            s.query(UserModel.user_id, func.count()).group_by(UserModel.user_id).all()
        ),
        write=False,
    )
    assert sorted(counts) == sorted([(offline.user.id, 1), (online.user.id, 1)])


def test_repwise_train_command_trains_and_summarizes(server, trained_user, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("REPWISE_")}
    env["REPWISE_DATABASE_URL"] = server.server.db.url
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "train", "--quiet"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "trained 1 users, 0 failed, 0 skipped" in result.stdout
    again = subprocess.run(
        [sys.executable, "-m", "server.cli", "train", "--quiet"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "trained 0 users" in again.stdout


def test_train_now_during_a_fit_stays_queued_for_the_newer_logs(
    server, trained_user, clock, monkeypatch
):
    import server.training.service as service_module

    md = trained_user
    server.server.trainer.stop()  # this test runs the batches itself
    real_fit = service_module.fit_timelines

    def fit_while_the_user_asks_again(*args, **kwargs):
        clock.advance(1)
        server.training.TrainNow(training_pb2.TrainNowRequest(), metadata=md)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(service_module, "fit_timelines", fit_while_the_user_asks_again)
    trainer = server.server.training.trainer
    assert trainer.run_batch(repo.Selection()).trained == 1
    monkeypatch.setattr(service_module, "fit_timelines", real_fit)
    status = server.training.GetTrainingStatus(training_pb2.GetTrainingStatusRequest(), metadata=md)
    assert status.state == training_pb2.TRAINING_STATE_QUEUED
    assert trainer.run_batch(repo.Selection(queued_only=True)).trained == 1


def test_a_user_whose_workouts_are_all_deleted_trains_without_failing(server, clock):
    clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    seed_default_catalog(server.server.db, clock)
    md = bearer(register(server).access_token)
    m = log_pb2.Workout(id=str(uuid.uuid4()))
    m.start_time.FromDatetime(clock() - timedelta(days=1))
    m.exercises.add(exercise_id="barbell-bench-press").sets.add(reps=5, weight=60)
    server.logs.CreateWorkout(log_pb2.CreateWorkoutRequest(workout=m), metadata=md)
    server.logs.DeleteWorkout(log_pb2.DeleteWorkoutRequest(id=m.id), metadata=md)
    trainer = server.server.training.trainer
    summary = trainer.run_batch(repo.Selection())
    assert (summary.trained, summary.failed) == (1, 0), summary.errors
    assert trainer.run_batch(repo.Selection()).trained == 0  # no longer stale
    b = server.training.GetModelBundle(training_pb2.GetModelBundleRequest(), metadata=md).bundle
    assert not b.exercise_stats and not b.is_population_model


def test_the_sdks_live_statistics_equal_a_retrain(server, trained_user, clock, tmp_path):
    """Workouts logged after training, at times with microseconds, count once."""
    from client_sdk import RepwiseClient
    from client_sdk.recommend import LocalModel

    trainer = server.server.training.trainer
    trainer.run_batch(repo.Selection())
    email = server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=trained_user).user.email
    with RepwiseClient(server.target, cache_dir=tmp_path) as sdk:
        sdk.login(email, PASSWORD)
        for hours, slug in ((30, "cable-crossover"), (5, "barbell-bench-press")):
            m = log_pb2.Workout(id=str(uuid.uuid4()))
            m.start_time.FromDatetime(clock() - timedelta(hours=hours, microseconds=-123_457))
            m.exercises.add(exercise_id=slug).sets.add(reps=8, weight=40)
            m.exercises.add(exercise_id="bench-dip").sets.add(reps=8)
            sdk.create_workout(m)
        live = sdk.local_model(clock().timestamp()).stats
        clock.advance(1)
        trainer.run_batch(repo.Selection())
        fresh = LocalModel.from_bundle(sdk.fetch_model_bundle()).stats
    assert fresh.ref_time > live.ref_time - 1e-3  # the retrain saw the new workouts
    np.testing.assert_array_equal(live.exercise, fresh.exercise)
    np.testing.assert_array_equal(live.count, fresh.count)
    np.testing.assert_allclose(
        live.decayed * 2 ** (-(fresh.ref_time - live.ref_time) / (30 * 86400)),
        fresh.decayed,
        rtol=1e-6,
    )
    np.testing.assert_array_equal(live.transition_count, fresh.transition_count)
    np.testing.assert_array_equal(live.transition_last_index, fresh.transition_last_index)


def test_a_population_from_few_users_is_refitted_from_a_larger_run(server, clock):
    clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    seed_default_catalog(server.server.db, clock)
    first = bearer(register(server).access_token)
    log_routine(server, first, clock() - timedelta(days=70))
    trainer = server.server.training.trainer
    trainer.run_batch(repo.Selection())
    for _ in range(2):
        log_routine(server, bearer(register(server).access_token), clock() - timedelta(days=70))
    trainer.run_batch(repo.Selection())
    counts = server.server.db.run(
        lambda s: [
            p.user_count for p in s.query(PopulationModel).order_by(PopulationModel.version)
        ],
        write=False,
    )
    assert counts == [1, 2]


def test_a_trained_user_never_gets_not_modified_for_the_population_bundle(server, trained_user):
    trainer = server.server.training.trainer
    other = bearer(register(server).access_token)
    log_routine(server, other, datetime(2026, 9, 1, tzinfo=UTC), workouts=9)
    trainer.run_batch(repo.Selection(user_ids=None))  # both users; a population exists now
    newcomer = bearer(register(server).access_token)
    population = server.training.GetModelBundle(
        training_pb2.GetModelBundleRequest(), metadata=newcomer
    ).bundle
    assert population.is_population_model
    log_routine(server, newcomer, datetime(2026, 9, 1, tzinfo=UTC), workouts=9)
    trainer.run_batch(repo.Selection())  # same frozen clock as the population's version
    again = server.training.GetModelBundle(
        training_pb2.GetModelBundleRequest(known_version=population.model_version),
        metadata=newcomer,
    )
    assert not again.not_modified and not again.bundle.is_population_model


def test_models_of_another_schema_are_ignored(server, trained_user, clock):
    stale = PopulationModel(
        version=1,
        schema_version=0,
        trained_at=clock(),
        coefficients=b"\0" * 16,
        lam=1.0,
        weights=[1.0, 0, 0, 0, 0],
        sample_count=1,
        user_count=1,
    )
    server.server.db.run(lambda s: s.add(stale))
    assert server.server.training.trainer.run_batch(repo.Selection()).trained == 1
    b = server.training.GetModelBundle(
        training_pb2.GetModelBundleRequest(), metadata=trained_user
    ).bundle
    assert not b.is_population_model and b.coefficients.rows == STATE_DIMENSIONS
