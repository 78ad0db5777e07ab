"""Training and recommendation benchmarks (issue 4), each a ratio to a baseline measured in the
same run. `make bench` runs this after bench/run.py; bench/report.py puts its results
(bench/results/training.json) on docs/benchmarks.md.

  1. Trainer users/s: fitting synthetic users' ridge models (λ by LOO over the same grid) with
     server.training.ridge.fit_users, and the whole per-user fit (ridge, weight tuning,
     statistics: fitting.fit_timelines), against a scikit-learn loop of RidgeCV per user on the
     same matrices.
  2. Batch run: `BatchTrainer.run_batch` over synthetic users (default 10,000 with about 200
     logged exercises each) from the database to stored parameters, on SQLite and PostgreSQL,
     against merely reading the same log rows with the same query (the floor for any trainer).
     The users are loaded once per database; each round measures both again.
  3. SDK recommend p99 with the 873 free-exercise-db exercises as candidates, against the median
     of the bare numpy scoring kernel (ŷ = sW, cosines, weighted sum, top-k) on the same arrays.

Medians of repeated runs (the batch run once per round: it takes minutes); the suite runs
twice. Usage:
    python bench/training.py [--users 10000] [--quick] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client_sdk import features  # noqa: E402
from client_sdk.model import (  # noqa: E402
    SEQUENCE_PARAMETERS,
    STATE_DIMENSIONS,
    STATE_NAMES,
    sequence_stats,
    training_pairs,
)
from client_sdk.recommend import LocalModel  # noqa: E402
from server.catalog.sources import parse_free_exercise_db, seed_default_catalog  # noqa: E402
from server.db import Database  # noqa: E402
from server.migrate import upgrade  # noqa: E402
from server.training import repository as repo  # noqa: E402
from server.training import synthetic  # noqa: E402
from server.training.fitting import fit_timelines  # noqa: E402
from server.training.ridge import LAMBDA_GRID, fit_population, fit_users  # noqa: E402
from server.training.service import BatchTrainer, _read_logs  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = os.environ.get(
    "REPWISE_BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
CATALOG = ROOT.parent / "shared" / "data" / "exercise-catalog" / "exercises.json"
ROUNDS = 2
WEEKS = 14  # about 200 logged exercises per synthetic user
REPS = 3  # repetitions of each fit and loop per round (medians)
RECOMMEND_CALLS = 2000


def median_of(run: Callable[[], float], reps: int) -> list[float]:
    return [run() for _ in range(reps)]


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


# --- 1. trainer against scikit-learn ------------------------------------------------------


def trainer_vs_sklearn(users: int, reps: int) -> dict[str, object]:
    from sklearn.linear_model import RidgeCV

    people = synthetic.generate_users(users, seed=7, weeks=WEEKS)
    table = synthetic.catalog_feature_table()
    tl = synthetic.to_timeline(people, table)
    x, y, rows = training_pairs(tl, table.phi)
    owner = tl.user[rows]
    cut = np.searchsorted(owner, np.arange(1, users))
    xs, ys = np.split(x, cut), np.split(y, cut)
    prior, _ = fit_population(x, y, np.random.default_rng(0))
    refs = np.full(users, tl.time.max())

    def sklearn_loop() -> None:
        for xu, yu in zip(xs, ys, strict=True):
            if len(xu) >= 2:
                RidgeCV(alphas=LAMBDA_GRID, fit_intercept=False).fit(xu, yu - xu @ prior)

    starts = np.r_[0, np.flatnonzero(np.diff(tl.user)) + 1, len(tl)]

    def per_user_loop() -> None:
        """What a trainer without batching does: each user alone, pairs, RidgeCV and
        statistics (and no weight tuning, which only favours the loop)."""
        for u in range(users):
            part = tl.take(np.arange(starts[u], starts[u + 1]))
            xu, yu, _ = training_pairs(part, table.phi)
            if len(xu) >= 2:
                RidgeCV(alphas=LAMBDA_GRID, fit_intercept=False).fit(xu, yu - xu @ prior)
            sequence_stats(part, float(part.time[-1]))

    sk = median_of(lambda: timed(sklearn_loop), reps)
    loop = median_of(lambda: timed(per_user_loop), reps)
    ridge = median_of(lambda: timed(lambda: fit_users(xs, ys, prior)), reps)
    whole = median_of(lambda: timed(lambda: fit_timelines(tl, users, table.phi, prior, refs)), reps)
    return {
        "users": users,
        "pairs_per_user": len(x) / users,
        "sklearn_users_per_s": users / statistics.median(sk),
        "loop_users_per_s": users / statistics.median(loop),
        "ridge_users_per_s": users / statistics.median(ridge),
        "trainer_users_per_s": users / statistics.median(whole),
    }


# --- 2. full batch run against reading the rows -----------------------------------------


def load(db: Database, users: int) -> tuple[list[str], int, float]:
    """Migrates, seeds and bulk-loads synthetic users: (ids, logged exercises, seconds)."""
    upgrade(db.engine)
    seed_default_catalog(db, lambda: datetime.now(UTC))
    start = time.perf_counter()
    ids = []
    step = 1000
    for first in range(0, users, step):
        people = synthetic.generate_users(
            min(step, users - first), seed=11, weeks=WEEKS, first=first
        )
        ids += synthetic.load_users(db, people)
    entries = db.run(
        lambda s: s.execute(text("SELECT count(*) FROM workout_exercises")).scalar(), write=False
    )
    return ids, int(entries or 0), time.perf_counter() - start


def batch_vs_read(db: Database, ids: list[str]) -> dict[str, float]:
    """One batch run over every user, and one read of their log rows in the same chunks."""
    chunks = [sorted(ids)[i : i + 500] for i in range(0, len(ids), 500)]

    def read_all() -> None:
        for chunk in chunks:
            db.run(lambda s, c=chunk: _read_logs(s, c), write=False)

    read = timed(read_all)
    trainer = BatchTrainer(db, lambda: datetime.now(UTC))
    start = time.perf_counter()
    summary = trainer.run_batch(repo.Selection(all_users=True))
    batch = time.perf_counter() - start
    assert summary.trained == len(ids) and not summary.failed, summary
    return {"read_s": read, "batch_s": batch}


def postgres_database() -> tuple[str, Callable[[], None]]:
    name = f"repwise_bench_train_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


# --- 3. SDK recommend against the bare kernel -------------------------------------------


def recommend_vs_kernel(calls: int) -> dict[str, object]:
    from repwise.v1 import training_pb2

    specs = [spec for _, spec in parse_free_exercise_db(json.loads(CATALOG.read_text()))]
    phi = np.array([features.encode(features.traits_of(spec)) for spec in specs])
    n = len(phi)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(STATE_DIMENSIONS, features.DIMENSIONS)) * 0.1
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    bundle = training_pb2.ModelBundle(
        model_version=1,
        schema_version=features.SCHEMA_VERSION,
        feature_names=features.FEATURE_NAMES,
        state_names=STATE_NAMES,
        sequence_parameters=training_pb2.SequenceParameters(**SEQUENCE_PARAMETERS),
        exercise_ids=ids,
        exercise_names=[spec.name for spec in specs],
    )
    bundle.coefficients.rows, bundle.coefficients.cols = w.shape
    bundle.coefficients.values.extend(w.ravel().tolist())
    bundle.catalog_features.rows, bundle.catalog_features.cols = phi.shape
    bundle.catalog_features.values.extend(phi.ravel().tolist())
    bundle.weights.routine, bundle.weights.transition = 1.0, 0.5
    bundle.weights.similarity, bundle.weights.frequency, bundle.weights.recency = 0.3, 0.2, 0.5
    # A user with 40 exercises, a year of workouts of 6.
    now = 1.79e9
    own = rng.choice(n, 40, replace=False)
    last = 0.0
    for i, e in enumerate(own):
        stat = bundle.exercise_stats.add(
            exercise_id=ids[e], count=20, decayed_count=5.0 + i % 7, frequency=0.5
        )
        stat.last_time.seconds = int(now - 86400 * (1 + i % 9))
        last = max(last, stat.last_time.seconds)
        for d in rng.choice(own, 5, replace=False):
            t = bundle.transitions.add(
                from_exercise_id=ids[e], to_exercise_id=ids[d], count=3, last_index=i % 5 + 1
            )
            t.last_time.seconds = int(now - 86400 * (2 + i % 9))
    bundle.stats_time.seconds = int(last)
    bundle.last_exercise_id = ids[own[0]]
    model = LocalModel.from_bundle(bundle)
    current = [ids[own[1]], ids[own[2]]]

    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        model.recommend(10, current, now=now)
        latencies.append(time.perf_counter() - start)

    state = rng.random(STATE_DIMENSIONS)
    terms = rng.random((n, 5))
    weights = np.array([1.0, 0.5, 0.3, 0.2, -0.5])

    def kernel() -> None:
        y = state @ w
        y /= np.linalg.norm(y)
        terms[:, 2] = phi @ y
        scores = terms @ weights
        top = np.argpartition(-scores, 10)[:10]
        top[np.argsort(-scores[top])]

    kernel_times = []
    for _ in range(calls):
        start = time.perf_counter()
        kernel()
        kernel_times.append(time.perf_counter() - start)
    return {
        "candidates": n,
        "recommend_p50_ms": 1e3 * float(np.percentile(latencies, 50)),
        "recommend_p99_ms": 1e3 * float(np.percentile(latencies, 99)),
        "kernel_median_ms": 1e3 * statistics.median(kernel_times),
    }


# --- report ------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import sklearn

    return {
        "Platform": platform.platform(),
        "CPUs": str(os.cpu_count()),
        "Python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "Load average before the training benchmarks": " ".join(
            f"{x:.2f}" for x in os.getloadavg()
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="users in the batch run")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where training.json goes")
    args = parser.parse_args()
    began = time.perf_counter()
    rounds = 1 if args.quick else ROUNDS
    fit_users_n = 100 if args.quick else 500
    batch_users = min(args.users, 500) if args.quick else args.users
    info = machine()
    results: list[dict[str, Any]] = [{"batch": {}} for _ in range(rounds)]
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = postgres_database()
        try:
            for name, db_url in (("sqlite", f"sqlite:///{tmp}/bench.db"), ("postgresql", url)):
                db = Database(db_url, pool_size=4)
                try:
                    print(f"loading {batch_users} users into {name}", flush=True)
                    ids, entries, load_s = load(db, batch_users)
                    print(f"  {entries} logged exercises in {load_s:.0f} s", flush=True)
                    for round_ in range(rounds):
                        print(f"round {round_ + 1}: batch run on {name}", flush=True)
                        figures = batch_vs_read(db, ids)
                        results[round_]["batch"][name] = {
                            "users": batch_users, "entries": entries, **figures
                        }  # fmt: skip
                        print(f"  {figures}", flush=True)
                finally:
                    db.dispose()
        finally:
            drop()
    for round_ in range(rounds):
        print(f"round {round_ + 1}: trainer vs scikit-learn, recommend vs kernel", flush=True)
        results[round_]["trainer"] = trainer_vs_sklearn(fit_users_n, reps=REPS)
        results[round_]["recommend"] = recommend_vs_kernel(RECOMMEND_CALLS)
        print(json.dumps(results[round_], indent=1, default=float), flush=True)
    out = args.results / "training.json"
    args.results.mkdir(parents=True, exist_ok=True)
    document = {
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "plan": {
            "rounds": rounds,
            "batch_users": batch_users,
            "fit_users": fit_users_n,
            "reps": REPS,
            "recommend_calls": RECOMMEND_CALLS,
        },
        "took_s": time.perf_counter() - began,
        "rounds": results,
    }
    out.write_text(json.dumps(document, indent=1, default=float) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
