"""Batch training and model bundles (DESIGN.md §3, §4).

A batch claims users in chunks (row locks with SKIP LOCKED on PostgreSQL, and a
lease so a crashed worker's users free up), reads each chunk's logs in one
read transaction, fits them with fitting.fit_timelines, and writes every
user's new version and pointer in one transaction per chunk: a crash leaves
each user's parameters whole, old or new.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from client_sdk import features
from client_sdk.model import (
    DEFAULT_WEIGHTS,
    MODEL_SCHEMA_VERSION,
    STATE_DIMENSIONS,
    SequenceStats,
    Timeline,
    training_pairs,
)
from server import metrics
from server.auth.service import AuthService, session_ended
from server.db import Database
from server.errors import FailedPrecondition, NotFound, ResourceExhausted
from server.training import repository as repo
from server.training.codec import (
    decode_coefficients,
    decode_stats,
    encode_coefficients,
    encode_stats,
)
from server.training.fitting import BatchResult, fit_timelines, weight_grid
from server.training.models import PopulationModel, TrainingState, UserModel
from server.training.ridge import fit_population

log = logging.getLogger(__name__)

CHUNK_USERS = 500
# A claim's lease (REPWISE_TRAINING_LEASE_SECONDS). A run renews its leases each time it
# claims a chunk, so a lease need only outlast one chunk's fit; a dead run's users free up
# when it ends.
LEASE = timedelta(minutes=2)
# Population defaults change only when enough steps back the change.
MIN_POPULATION_STEPS = 200


@dataclass(frozen=True)
class FeatureTable:
    """Every exercise (shared and private) as a row of φ."""

    ids: list[str]
    names: list[str]
    owners: list[str | None]
    archived: np.ndarray
    phi: np.ndarray
    row: dict[str, int]


def load_feature_table(s: Session) -> FeatureTable:
    rows = repo.all_exercises(s)
    phi = np.zeros((len(rows), features.DIMENSIONS))
    for i, r in enumerate(rows):
        phi[i] = features.encode(features.traits_of(r))
    ids = [r.id for r in rows]
    return FeatureTable(
        ids=ids,
        names=[r.name for r in rows],
        owners=[r.owner_id for r in rows],
        archived=np.array([bool(r.archived) for r in rows], dtype=bool),
        phi=phi,
        row={exercise_id: i for i, exercise_id in enumerate(ids)},
    )


@dataclass(frozen=True)
class Population:
    version: int
    coefficients: np.ndarray
    lam: float
    weights: np.ndarray
    user_count: int


def _population(model: PopulationModel | None) -> Population | None:
    if model is None:
        return None
    w = np.frombuffer(model.coefficients, dtype="<f4").astype(np.float64)
    return Population(
        version=model.version,
        coefficients=w.reshape(STATE_DIMENSIONS, features.DIMENSIONS),
        lam=model.lam,
        weights=np.array(model.weights, dtype=np.float64),
        user_count=model.user_count,
    )


@dataclass
class BatchSummary:
    trained: int = 0
    failed: int = 0
    skipped: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    errors: list[str] = field(default_factory=list)


def timeline_of(rows: Any, user_ids: list[str], table: FeatureTable) -> Timeline:
    """Log rows (user, workout, start, position, exercise) → a Timeline whose
    user numbers are positions in user_ids."""
    if not rows:
        return Timeline.of([], [], [], [])
    users, workouts, starts, _, exercises = (np.array(column) for column in zip(*rows, strict=True))
    number = {user_id: i for i, user_id in enumerate(user_ids)}
    user_values, user_inverse = np.unique(users, return_inverse=True)
    user = np.array([number[u] for u in user_values.tolist()])[user_inverse]
    _, workout = np.unique(workouts, return_inverse=True)
    ex_values, ex_inverse = np.unique(exercises, return_inverse=True)
    exercise = np.array([table.row[e] for e in ex_values.tolist()])[ex_inverse]
    return Timeline.of(user, workout, starts.astype(np.float64), exercise)


def _read_logs(s: Session, user_ids: list[str]) -> tuple[Any, dict[str, int]]:
    """The users' log rows and change numbers, from one snapshot."""
    return repo.log_rows(s, user_ids), repo.change_seqs(s, user_ids)


@dataclass(frozen=True)
class _Chunk:
    user_ids: list[str]
    timeline: Timeline | None
    seqs: dict[str, int]
    error: Exception | None
    read_at: datetime


@dataclass(frozen=True)
class _Written:
    fit: BatchResult
    written: int


def _stats_times(tl: Timeline, user_ids: list[str]) -> np.ndarray:
    """Each user's statistics are as of their newest workout's start: a client adds
    the workouts that started after it."""
    times = np.zeros(len(user_ids))
    np.maximum.at(times, tl.user, tl.time)
    return times


class BatchTrainer:
    """Runs batches; shared by `repwise train`, RunBatch and the server's worker."""

    def __init__(
        self,
        db: Database,
        now: Callable[[], datetime],
        *,
        chunk_users: int = CHUNK_USERS,
        lease: timedelta = LEASE,
    ) -> None:
        self.db = db
        self.now = now
        self.chunk_users = chunk_users
        self.lease = lease
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Set when this process queues work, so its worker starts at once.
        self.wake = threading.Event()

    def run_batch(
        self,
        selection: repo.Selection,
        progress: Callable[[int, int], None] | None = None,
        *,
        trigger: str = "cli",
    ) -> BatchSummary:
        """Trains the selected users; progress(done, total) after each chunk. The run's
        metrics are labelled with its trigger: cli, scheduler, train_now or run_batch."""
        started = time.perf_counter()
        try:
            summary = self._run_batch(selection, progress)
        except Exception:
            metrics.training_error(trigger, time.perf_counter() - started)
            raise
        metrics.training_run(
            trigger,
            trained=summary.trained,
            failed=summary.failed,
            skipped=summary.skipped,
            seconds=time.perf_counter() - started,
        )
        return summary

    def _run_batch(
        self, selection: repo.Selection, progress: Callable[[int, int], None] | None
    ) -> BatchSummary:
        summary = BatchSummary(start_time=self.now())
        self.db.run(repo.ensure_states, honour_deadline=False)
        total = self.db.run(lambda s: repo.count_eligible(s, selection), write=False)
        table = self.db.run(load_feature_table, write=False)
        population = self.db.run(lambda s: _population(repo.latest_population(s)), write=False)
        gram = np.zeros((STATE_DIMENSIONS, STATE_DIMENSIONS))
        cross = np.zeros((STATE_DIMENSIONS, features.DIMENSIONS))
        grid_rr = np.zeros(len(weight_grid()))
        steps = 0
        done = 0
        # The next chunk is claimed and read in a thread while this one is fitted:
        # LAPACK releases the GIL, so reading and fitting overlap on two cores.
        with ThreadPoolExecutor(1, thread_name_prefix="repwise-train-read") as reader:
            pending = reader.submit(self._next_chunk, selection, "", table)
            while True:
                chunk = pending.result()
                if chunk is None:
                    break
                pending = reader.submit(self._next_chunk, selection, chunk.user_ids[-1], table)
                try:
                    if chunk.error is not None:
                        raise chunk.error
                    assert chunk.timeline is not None
                    if population is None:
                        population = self._bootstrap_population(chunk.timeline, table)
                    result = self._fit_and_write(chunk, population, table)
                    summary.trained += result.written
                    summary.skipped += len(chunk.user_ids) - result.written
                    gram += result.fit.gram
                    cross += result.fit.cross
                    grid_rr += result.fit.grid_reciprocal_rank
                    steps += result.fit.tuned_steps
                except Exception as error:  # one chunk's failure must not stop the rest
                    log.exception("training failed for %d users", len(chunk.user_ids))
                    summary.failed += len(chunk.user_ids)
                    message = repr(error)
                    summary.errors.append(message)
                    self.db.run(
                        partial(
                            repo.release,
                            worker=self.worker_id,
                            user_ids=chunk.user_ids,
                            error=message,
                            now=self.now(),
                        ),
                        honour_deadline=False,
                    )
                done += len(chunk.user_ids)
                if progress is not None:
                    progress(done, max(total, done))
        # W0 is refitted from every run that saw more users than the current one
        # (the first is bootstrapped from one chunk), and from every all-users run.
        if (
            population is not None
            and summary.trained
            and (selection.all_users or summary.trained > population.user_count)
        ):
            self._refresh_population(population, gram, cross, grid_rr, steps, summary.trained)
        summary.end_time = self.now()
        return summary

    def _next_chunk(
        self, selection: repo.Selection, after: str, table: FeatureTable
    ) -> _Chunk | None:
        """Claims the next users after `after` and reads their logs (None: no more)."""
        user_ids = self.db.run(
            partial(self._claim, selection=selection, after=after), honour_deadline=False
        )
        if not user_ids:
            return None
        read_at = self.now()
        try:
            rows, seqs = self.db.run(
                partial(_read_logs, user_ids=user_ids), write=False, honour_deadline=False
            )
            return _Chunk(user_ids, timeline_of(rows, user_ids, table), seqs, None, read_at)
        except Exception as error:  # reported with the chunk, so its claims are released
            return _Chunk(user_ids, None, {}, error, read_at)

    def _fit_and_write(
        self, chunk: _Chunk, population: Population, table: FeatureTable
    ) -> _Written:
        assert chunk.timeline is not None
        tl = chunk.timeline
        fit = fit_timelines(
            tl,
            len(chunk.user_ids),
            table.phi,
            population.coefficients,
            _stats_times(tl, chunk.user_ids),
            population.weights,
        )
        models = self._model_rows(chunk.user_ids, fit.users, population, table)
        written = self.db.run(
            partial(self._write, models=models, seqs=chunk.seqs, read_at=chunk.read_at),
            honour_deadline=False,
        )
        return _Written(fit, written)

    def _claim(self, s: Session, selection: repo.Selection, after: str) -> list[str]:
        now = self.now()
        return repo.claim(
            s, self.worker_id, now, now + self.lease, selection, self.chunk_users, after
        )

    def _bootstrap_population(self, tl: Timeline, table: FeatureTable) -> Population:
        """The first population model, from the first chunk's pairs."""
        x, y, _ = training_pairs(tl, table.phi)
        w0, lam = fit_population(x, y, np.random.default_rng(0))
        users = len(np.unique(tl.user))
        population = Population(self._version(), w0, lam, DEFAULT_WEIGHTS.copy(), users)
        version = self.db.run(
            lambda s: repo.add_population(s, self._population_row(population, len(x), users)),
            honour_deadline=False,
        )
        return replace(population, version=version)

    def _refresh_population(
        self,
        old: Population,
        gram: np.ndarray,
        cross: np.ndarray,
        grid_rr: np.ndarray,
        steps: int,
        users: int,
    ) -> None:
        """W0 from every pair of an all-users run; defaults from its tuned steps."""
        w0 = np.linalg.solve(gram + old.lam * np.eye(len(gram)), cross)
        weights = (
            weight_grid(old.weights)[int(np.argmax(grid_rr))]
            if steps >= MIN_POPULATION_STEPS
            else old.weights
        )
        population = Population(self._version(), w0, old.lam, weights, users)
        self.db.run(
            lambda s: repo.add_population(
                s, self._population_row(population, round(gram[-1, -1]), users)
            ),
            honour_deadline=False,
        )

    def _population_row(self, p: Population, samples: int, users: int) -> PopulationModel:
        return PopulationModel(
            version=p.version,
            schema_version=MODEL_SCHEMA_VERSION,
            trained_at=self.now(),
            coefficients=p.coefficients.astype("<f4").tobytes(),
            lam=p.lam,
            weights=[float(w) for w in p.weights],
            sample_count=samples,
            user_count=users,
        )

    def _version(self) -> int:
        """Versions are microsecond timestamps: increasing, and unlikely to repeat
        across users, so a client's cached version never matches another model."""
        return int(self.now().timestamp() * 1_000_000)

    def _model_rows(
        self, user_ids: list[str], users: list[Any], population: Population, table: FeatureTable
    ) -> list[dict[str, Any]]:
        version = self._version()
        trained_at = self.now()
        return [
            {
                "user_id": user_id,
                "version": version,
                "schema_version": MODEL_SCHEMA_VERSION,
                "trained_at": trained_at,
                "population_version": population.version,
                "coefficients": encode_coefficients(p.coefficients, population.coefficients),
                "lam": p.lam,
                "weights": [float(w) for w in p.weights],
                "stats": encode_stats(p.stats, table.ids),
                "sample_count": p.sample_count,
                "metrics": {**p.metrics, "own_coefficients": float(p.own_coefficients)},
            }
            for user_id, p in zip(user_ids, users, strict=True)
        ]

    def _write(
        self, s: Session, models: list[dict[str, Any]], seqs: dict[str, int], read_at: datetime
    ) -> int:
        held = repo.held_claims(s, self.worker_id, [m["user_id"] for m in models])
        # Above every population version too: a client caching the population
        # bundle must never get "not modified" for its first own model.
        floor = repo.newest_population_version(s) + 1
        kept = []
        for m in models:
            if m["user_id"] not in held:
                continue  # our lease ran out and someone else took the user
            current = held[m["user_id"]] or 0
            kept.append({**m, "version": max(m["version"], current + 1, floor)})
        repo.write_models(s, kept, seqs, read_at)
        return len(kept)


class TrainingService:
    """The caller's model: bundle, status, TrainNow; RunBatch for admins."""

    def __init__(
        self,
        db: Database,
        auth: AuthService,
        trainer: BatchTrainer,
        *,
        train_now_cooldown: timedelta = timedelta(minutes=10),
    ) -> None:
        self.db = db
        self.auth = auth
        self.trainer = trainer
        self.now = trainer.now
        self.train_now_cooldown = train_now_cooldown

    def run_batch(self, all_users: bool) -> BatchSummary:
        self.db.run(self.auth.require_admin, write=False)
        return self.trainer.run_batch(repo.Selection(all_users=all_users), trigger="run_batch")

    def train_now(self) -> datetime:
        """Queues the caller's training; returns when the next request is allowed."""
        now = self.now()

        def work(s: Session) -> datetime:
            user_id = self.auth.current_user(s).id
            if not repo.has_logs(s, user_id):
                raise FailedPrecondition(
                    "log a workout first: there is nothing to train on", reason="NO_HISTORY"
                )
            st = repo.ensure_state(s, user_id)
            if st.train_now_after is not None and st.train_now_after > now:
                wait = (st.train_now_after - now).total_seconds()
                raise ResourceExhausted(
                    f"training was requested recently; try again in {int(wait) + 1} s",
                    reason="TRAIN_NOW_RATE_LIMITED",
                    retry_after_seconds=wait,
                )
            st.queued_at = now
            st.train_now_after = now + self.train_now_cooldown
            return st.train_now_after

        next_allowed = self.db.run(work)
        self.trainer.wake.set()
        return next_allowed

    def status(self) -> tuple[str, TrainingState | None, UserModel | None]:
        """(untrained | queued | running | ready | failed, state row, current model)."""

        def work(s: Session) -> tuple[str, TrainingState | None, UserModel | None]:
            user_id = self.auth.current_user(s).id
            st, model = repo.state_and_model(s, user_id)
            if st is None:
                return "untrained", None, None
            now = self.now()
            if st.claimed_by and st.lease_until and st.lease_until > now:
                label = "running"
            elif st.queued_at is not None:
                label = "queued"
            elif st.failed_at is not None and (model is None or st.failed_at >= model.trained_at):
                label = "failed"
            elif model is not None:
                label = "ready"
            else:
                label = "untrained"
            if model is not None:
                s.expunge(model)
            s.expunge(st)
            return label, st, model

        return self.db.run(work, write=False)

    def _current_version(self) -> int:
        """The version of the bundle the caller would be sent now (0: none), as bundle()
        chooses it: their model, or without one of this schema the newest population model."""
        principal = self.auth.principal()
        found = repo.bundle_versions(self.db, principal.session_id, principal.user_id)
        if found is None:
            raise session_ended()
        if found.model_version is not None and found.model_schema_version == MODEL_SCHEMA_VERSION:
            return found.model_version
        return found.population_version or 0

    def bundle(self, known_version: int) -> Bundle | None:
        """The caller's bundle, or None when known_version is current: that is answered from
        one small statement (the session and the versions) before anything is loaded."""
        if known_version and known_version == self._current_version():
            return None

        def work(s: Session) -> Bundle:
            user_id = self.auth.current_user(s).id
            _, model = repo.state_and_model(s, user_id)
            if model is not None and model.schema_version != MODEL_SCHEMA_VERSION:
                model = None  # trained for another schema: the population serves until retrained
            if model is not None:
                pop_row = repo.population(s, model.population_version)
            else:
                pop_row = repo.latest_population(s)
            population = _population(pop_row) or Population(
                0, np.zeros((STATE_DIMENSIONS, features.DIMENSIONS)), 0.0, DEFAULT_WEIGHTS.copy(), 0
            )
            table = load_feature_table(s)
            visible = [
                i
                for i, owner in enumerate(table.owners)
                if not table.archived[i] and (owner is None or owner == user_id)
            ]
            make = partial(
                Bundle, table=table, visible=visible, top_sets=repo.latest_top_sets(s, user_id)
            )
            if model is None:
                return make(
                    version=population.version,
                    trained_at=None,
                    coefficients=population.coefficients,
                    lam=population.lam,
                    weights=population.weights,
                    stats_ids=[],
                    stats=None,
                    sample_count=0,
                    metrics={},
                    population=True,
                )
            if population.version != model.population_version:
                raise NotFound("the population model this model was trained on is gone; retrain")
            ids, stats = decode_stats(model.stats)
            return make(
                version=model.version,
                trained_at=model.trained_at,
                coefficients=decode_coefficients(model.coefficients, population.coefficients),
                lam=model.lam,
                weights=np.array(model.weights),
                stats_ids=ids,
                stats=stats,
                sample_count=model.sample_count,
                metrics={k: float(v) for k, v in model.metrics.items()},
                population=False,
            )

        return self.db.run(work, write=False)


@dataclass(frozen=True)
class Bundle:
    version: int
    trained_at: datetime | None
    coefficients: np.ndarray
    lam: float
    weights: np.ndarray
    stats_ids: list[str]
    stats: SequenceStats | None
    sample_count: int
    metrics: dict[str, float]
    population: bool
    table: FeatureTable
    visible: list[int]
    top_sets: dict[str, tuple[float | None, int | None]]


def utc_from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)
