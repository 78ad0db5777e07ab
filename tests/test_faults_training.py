"""TESTPLAN scenario "SIGKILL during a training run", and the claim leases that let a rerun
take over a killed run's users.

1,100 synthetic users (server/training/synthetic.py) are loaded into a database of the test's
own, and every twelfth one gets a model first. `repwise train --all` (chunks of 500
users) is killed with SIGKILL after its first chunk is stored, while a write transaction is
open (on PostgreSQL one that has written user models; SQLite tells only that one is open)
and some of its users are still claimed (tests/faults.py `kill_when`: looked at with the run
stopped; the database is read once the run's sessions are gone). Every user's
pointer then refers to a version that exists and decodes (its population model too): the
old one or a new one, never a version newer than the pointer (an orphaned half write). Once
the killed run's leases (REPWISE_TRAINING_LEASE_SECONDS) run out, a rerun trains every user.
SQLite's integrity check passes. On SQLite and PostgreSQL.

A live run renews its leases chunk by chunk, so a short lease never lets another worker take
users that a slow run still holds.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from client_sdk import features
from client_sdk.model import MODEL_SCHEMA_VERSION, STATE_DIMENSIONS
from client_sdk.recommend import LocalModel
from repwise.v1 import auth_pb2, training_pb2
from server.catalog.sources import seed_default_catalog
from server.db import Database
from server.migrate import upgrade
from server.training import repository as repo
from server.training import synthetic
from server.training.codec import decode_coefficients, decode_stats
from server.training.models import TrainingState, UserModel
from server.training.service import BatchTrainer, _population
from tests.conftest import bearer, start_server
from tests.faults import (
    fresh_database,
    kill_when,
    named,
    sqlite_integrity,
    table_write_in_progress,
    wait_until,
)
from tests.test_cli import REPWISE, cli_env, repwise

USERS = 1100
LEASE_SECONDS = 2
RUN = "repwise-train-killed"  # the killed run's PostgreSQL sessions


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as database_url:
        yield database_url


def pointers(db: Database) -> dict[str, int | None]:
    rows = db.run(
        lambda s: s.execute(select(TrainingState.user_id, TrainingState.current_version)).all(),
        write=False,
    )
    return {u: v for u, v in rows}


def claimed(db: Database) -> int:
    """How many users a run has claimed and not yet written."""
    return db.run(
        lambda s: (
            s.scalar(
                select(func.count())
                .select_from(TrainingState)
                .where(TrainingState.claimed_by.is_not(None))
            )
            or 0
        ),
        write=False,
    )


def assert_models_whole(db: Database) -> dict[str, int | None]:
    """Every pointer names a stored version that decodes, trained on a stored population
    model, and no user has a version newer than the one the pointer names."""

    def check(s) -> dict[str, int | None]:  # type: ignore[no-untyped-def]
        current = {
            u: v for u, v in s.execute(select(TrainingState.user_id, TrainingState.current_version))
        }
        newest = {
            u: v
            for u, v in s.execute(
                select(UserModel.user_id, func.max(UserModel.version)).group_by(UserModel.user_id)
            )
        }
        orphans = {u: v for u, v in newest.items() if current.get(u) != v}
        assert not orphans, f"versions above the pointer (half-written): {list(orphans)[:5]}"
        populations: dict[int, np.ndarray] = {}
        for user_id, version in current.items():
            if version is None:
                continue
            model = repo.user_model(s, user_id, version)
            assert model is not None, f"{user_id} points at a missing version {version}"
            assert model.schema_version == MODEL_SCHEMA_VERSION
            if model.population_version not in populations:
                population = _population(repo.population(s, model.population_version))
                assert population is not None, "a model's population model is gone"
                populations[model.population_version] = population.coefficients
            prior = populations[model.population_version]
            rows = int(np.frombuffer(model.coefficients, "<u2", count=1)[0])
            assert len(model.coefficients) == 2 + 2 * rows + 4 * rows * features.DIMENSIONS
            w = decode_coefficients(model.coefficients, prior)
            assert w.shape == (STATE_DIMENSIONS, features.DIMENSIONS) and np.isfinite(w).all()
            ids, stats = decode_stats(model.stats)
            assert len(ids) == len(stats.count) > 0 and np.isfinite(stats.decayed).all()
            assert len(model.weights) == len(np.asarray(model.weights)) > 0
        return current

    return db.run(check, write=False)


@pytest.mark.slow
def test_a_killed_training_run_leaves_whole_models_and_a_rerun_trains_everyone(url, tmp_path):
    rng = random.Random(55)
    db = Database(url, pool_size=2)
    try:
        upgrade(db.engine)
        seed_default_catalog(db, lambda: datetime.now(UTC))
        people = synthetic.generate_users(USERS, seed=9, weeks=2)
        user_ids = synthetic.load_users(db, people, chunk_users=400)
        with_logs = [u for u, p in zip(user_ids, people, strict=True) if p.workouts]
        trained_first = tuple(with_logs[::12])
        BatchTrainer(db, lambda: datetime.now(UTC)).run_batch(
            repo.Selection(user_ids=trained_first)
        )
        old = pointers(db)
        assert sum(v is not None for v in old.values()) == len(trained_first)
        stored_before = db.run(lambda s: s.scalar(select(func.count()).select_from(UserModel)))

        env = cli_env(named(url, RUN), REPWISE_TRAINING_LEASE_SECONDS=str(LEASE_SECONDS))
        run = subprocess.Popen(
            [str(REPWISE), "train", "--all", "--quiet"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def first_chunk_stored() -> bool:
                count = db.run(
                    lambda s: s.scalar(select(func.count()).select_from(UserModel)), write=False
                )
                return bool(count and count > stored_before) or run.poll() is not None

            assert wait_until(first_chunk_stored, 120), "no chunk was stored"
            time.sleep(rng.uniform(0, 0.2))  # a seeded moment within the run
            # Claims still held: users the run has not written yet, so it is not done.
            killed = kill_when(
                run,
                lambda: table_write_in_progress(url, RUN, "user_models") and claimed(db) > 0,
                60,
                url=url,
                name=RUN,
            )
            assert killed, f"the run ended before the kill:\n{run.communicate()}"
            assert run.wait(timeout=10) == -signal.SIGKILL
        finally:
            if run.poll() is None:
                run.kill()
            run.communicate(timeout=10)

        after_kill = assert_models_whole(db)
        renewed = {u for u, v in after_kill.items() if v is not None and v != old.get(u)}
        assert renewed, "the kill came before any user was trained"
        assert len(renewed) < len(with_logs), "the kill came after every user was trained"
        for user_id in trained_first:  # wholly old, or wholly new
            assert user_id in renewed or after_kill[user_id] == old[user_id]
        if url.startswith("sqlite"):
            assert sqlite_integrity(url) == "ok"

        # The bundle of a user with an old model and one with a new model load in the SDK.
        running = start_server(db, lambda: datetime.now(UTC))
        try:
            sample = [next(u for u in trained_first if u not in renewed), sorted(renewed)[0]]
            emails = {synthetic.user_id(p): p.email for p in people}
            for user_id in sample:
                signed_in = running.auth.Login(
                    auth_pb2.LoginRequest(
                        email=emails[user_id], password=synthetic.SYNTHETIC_PASSWORD
                    )
                )
                bundle = running.training.GetModelBundle(
                    training_pb2.GetModelBundleRequest(),
                    metadata=bearer(signed_in.access_token),
                ).bundle
                assert bundle.model_version == after_kill[user_id]
                assert not bundle.is_population_model
                LocalModel.from_bundle(bundle)
        finally:
            running.channel.close()
            running.server.stop(grace=0)

        def leases_over() -> bool:
            live = db.run(
                lambda s: s.scalar(
                    select(func.count())
                    .select_from(TrainingState)
                    .where(TrainingState.lease_until >= datetime.now(UTC))
                ),
                write=False,
            )
            return live == 0

        assert claimed(db), "the killed run held no claims; nothing tests taking them over"
        assert wait_until(leases_over, LEASE_SECONDS + 30), "the killed run's leases never ended"
        rerun = repwise("train", "--all", "--quiet", env=env, cwd=tmp_path, timeout=240)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"trained {len(with_logs)} users, 0 failed" in rerun.stdout, rerun.stdout
        final = assert_models_whole(db)
        assert all(final[u] is not None and final[u] != after_kill.get(u) for u in with_logs), (
            "a user was not retrained"
        )
        if url.startswith("sqlite"):
            assert sqlite_integrity(url) == "ok"
    finally:
        db.dispose()


def test_a_worker_claiming_more_renews_the_leases_it_holds(server, clock):
    """The chunk being fitted stays claimed while the run goes on (it asks for the next chunk
    before fitting), so a short lease never lets another worker take users a live run holds."""
    clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    db = server.server.db
    seed_default_catalog(db, clock)
    synthetic.load_users(db, synthetic.generate_users(4, seed=3, weeks=4, end=clock()))
    db.run(repo.ensure_states)
    lease = timedelta(seconds=60)
    mine, other = BatchTrainer(db, clock), BatchTrainer(db, clock)

    def claim(worker: BatchTrainer, limit: int, after: str = "") -> list[str]:
        return db.run(
            lambda s: repo.claim(
                s, worker.worker_id, clock(), clock() + lease, repo.Selection(), limit, after
            )
        )

    first = claim(mine, 2)
    clock.advance(50)
    assert len(first) == 2 and len(claim(mine, 2, after=first[-1])) == 2
    clock.advance(50)  # past the first chunk's original lease, within the renewed one
    assert claim(other, 10) == []
    clock.advance(61)  # a worker that stops asking loses its users
    assert len(claim(other, 10)) == 4
