"""`repwise eval`: chronological replay of histories (DESIGN.md §3, Evaluation).

Method. Each user's history is cut in two at a workout boundary, so a whole
workout is either training or test: the test part is the workouts that start
within the user's last `test_fraction` (default ¼) of entries, or the last
workout alone when it is longer than that (a user with one workout has none).
Users are fitted with fitting.fit_timelines on their training parts only
(ridge coefficients toward a population prior fitted, like
ridge.fit_population, on the training parts of every evaluated user; score
weights tuned on each user's newest training steps). Then every test entry j
is a step: the statistics are those of every entry before j (as the SDK keeps
them live, replay.step_terms), the state is
built from the entries before j, ŷ = sᵀW_user, and the exercise actually done
at j is ranked among the candidates: every exercise the user ever did, except
those already done in j's workout (replay.user_candidates, as the trainer
tunes with). Steps whose exercise was already done earlier in the same workout
cannot be ranked and are left out.

Recommenders: "weighted" is client_sdk.model.combine of the terms with the
user's tuned weights; "routine", "transition", "frequency" and "ridge" (the
similarity term) are one term alone; "popularity" ranks by how often each
exercise was done over everyone's training data (plus, for a database user,
every other user's logs), among every exercise of the catalog not yet done in
the workout. Ties (within TIE_TOLERANCE) count half (ranking.target_ranks).
Reported over all steps pooled: hit@1/5/10 (the target ranks within the top k)
and MRR.

Everything is numpy over all steps at once, in chunks of users to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from client_sdk import features
from client_sdk.model import (
    DEFAULT_WEIGHTS,
    STATE_DIMENSIONS,
    TERM_NAMES,
    Timeline,
    _group_starts,
    combine,
    states,
    training_pairs,
)
from server.auth import repository as auth_repository
from server.auth.service import normalize_email
from server.catalog import repository as catalog_repository
from server.db import Database
from server.errors import InvalidArgument, NotFound
from server.training import bulk
from server.training import repository as training_repository
from server.training.fitting import MIN_TUNE_STEPS, fit_timelines
from server.training.ranking import target_ranks
from server.training.replay import Candidates, step_terms, user_candidates
from server.training.ridge import fit_population
from server.training.service import FeatureTable, load_feature_table, timeline_of

RECOMMENDERS = ("weighted", "routine", "transition", "frequency", "ridge", "popularity")
BASELINES = RECOMMENDERS[1:]
TERM_OF = {"routine": 0, "transition": 1, "ridge": 2, "frequency": 3}
KS = (1, 5, 10)
DEFAULT_TEST_FRACTION = 0.25
CHUNK_USERS = 200
# Candidate rows per block when computing similarities (bounds a block's memory).
BLOCK_ROWS = 200_000
# Padded state values per batch of users when computing ŷ.
BATCH_VALUES = 4_000_000
LAMBDA_SAMPLE = 20_000
# Scores this close tie (ranking.target_ranks): equal counts summed in another
# order, or times read back from a database, differ by rounding only.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Metrics:
    hit_at_1: float
    hit_at_5: float
    hit_at_10: float
    mrr: float

    @staticmethod
    def of(ranks: np.ndarray) -> Metrics:
        if not len(ranks):
            return Metrics(0.0, 0.0, 0.0, 0.0)
        hits = [float(np.mean(ranks <= k)) for k in KS]
        return Metrics(hits[0], hits[1], hits[2], float(np.mean(1.0 / ranks)))


@dataclass(frozen=True)
class EvalReport:
    source: str
    users: int  # users in the source
    evaluated_users: int  # users with at least one ranked step
    train_entries: int
    steps: int  # ranked steps after the cuts
    test_fraction: float
    mean_candidates: float  # per step, for every recommender but popularity
    results: dict[str, Metrics]
    # Mean tuned score weights of the evaluated users, by TERM_NAMES, and how
    # many users had enough training steps to be tuned (others keep the defaults).
    mean_weights: dict[str, float] = field(default_factory=dict)
    tuned_users: int = 0

    def best_baseline(self, metric: str) -> str:
        return max(BASELINES, key=lambda name: getattr(self.results[name], metric))

    def beats_baselines(self) -> bool:
        """The weighted recommender beats every baseline at hit@10 and MRR."""
        weighted = self.results["weighted"]
        return all(
            weighted.hit_at_10 > self.results[b].hit_at_10 and weighted.mrr > self.results[b].mrr
            for b in BASELINES
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "users": self.users,
            "evaluated_users": self.evaluated_users,
            "train_entries": self.train_entries,
            "steps": self.steps,
            "test_fraction": self.test_fraction,
            "mean_candidates": self.mean_candidates,
            "results": {
                name: {
                    "hit_at_1": m.hit_at_1,
                    "hit_at_5": m.hit_at_5,
                    "hit_at_10": m.hit_at_10,
                    "mrr": m.mrr,
                }
                for name, m in self.results.items()
            },
            "beats_baselines": self.beats_baselines(),
            "mean_weights": self.mean_weights,
            "tuned_users": self.tuned_users,
        }


def format_table(report: EvalReport) -> str:
    lines = [
        f"{report.source}: {report.steps} steps of {report.evaluated_users} users after the cut "
        f"(about the last {report.test_fraction:.0%} of each history, whole workouts), "
        f"{report.train_entries} entries before it; "
        f"{report.mean_candidates:.1f} candidates per step",
        "",
        f"{'recommender':<12} {'hit@1':>7} {'hit@5':>7} {'hit@10':>7} {'MRR':>7}",
    ]
    for name in RECOMMENDERS:
        m = report.results[name]
        lines.append(
            f"{name:<12} {m.hit_at_1:>7.3f} {m.hit_at_5:>7.3f} {m.hit_at_10:>7.3f} {m.mrr:>7.3f}"
        )
    if report.steps:
        verdict = "beats" if report.beats_baselines() else "does NOT beat"
        lines += [
            "",
            f"weighted {verdict} every baseline at hit@10 and MRR "
            f"(best baselines: {report.best_baseline('hit_at_10')} at hit@10, "
            f"{report.best_baseline('mrr')} at MRR)",
        ]
    return "\n".join(lines)


# --- the method -------------------------------------------------------------------------


def split(tl: Timeline, user_count: int, test_fraction: float) -> np.ndarray:
    """Whether each entry is in its user's training part (see the module docstring)."""
    if not 0.0 < test_fraction < 1.0:
        raise InvalidArgument("test_fraction", "must be between 0 and 1")
    n = len(tl)
    index = np.arange(n)
    local = index - _group_starts(tl.user)
    sizes = np.bincount(tl.user, minlength=user_count)
    mark = np.ceil(sizes * (1.0 - test_fraction))
    boundary = (_group_starts(tl.user, tl.workout) == index) & (local > 0)
    late = boundary & (local >= mark[tl.user])
    cut = np.full(user_count, np.iinfo(np.int64).max)
    np.minimum.at(cut, tl.user[late], local[late])
    # When the last workout alone is more than the fraction, it is the test part.
    last = np.full(user_count, -1)
    np.maximum.at(last, tl.user[boundary], local[boundary])
    cut = np.where((cut == np.iinfo(np.int64).max) & (last > 0), last, cut)
    return local < cut[tl.user]


@dataclass(frozen=True)
class Replay:
    """Per ranked step: its entry in the timeline and each recommender's rank of
    the exercise done; per user, the parameters fitted on the training part."""

    train: np.ndarray  # bool per entry of the timeline
    steps: np.ndarray  # entry indexes, ascending
    ranks: dict[str, np.ndarray]  # by recommender, per step
    candidates: np.ndarray  # per step: candidates of every recommender but popularity
    coefficients: np.ndarray  # (users, STATE_DIMENSIONS, DIMENSIONS)
    weights: np.ndarray  # (users, len(TERM_NAMES))
    tuned: np.ndarray  # bool per user: weights tuned on their own steps


def replay(
    tl: Timeline,
    user_count: int,
    phi: np.ndarray,
    *,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    pool: np.ndarray | None = None,
    background: np.ndarray | None = None,
    seed: int = 0,
    chunk_users: int = CHUNK_USERS,
) -> Replay:
    """Replays users 0..user_count-1 of tl (see the module docstring).

    phi : ndarray of shape (exercises, DIMENSIONS), the feature rows tl refers to
    pool : rows popularity ranks among (default every row of phi)
    background : ndarray of shape (exercises,), counts added to popularity
    """
    train = split(tl, user_count, test_fraction)
    rng = np.random.default_rng(seed)
    popularity = np.bincount(tl.exercise[train], minlength=len(phi)).astype(np.float64)
    if background is not None:
        popularity += background
    pool_rows = np.arange(len(phi)) if pool is None else np.asarray(pool, dtype=np.int64)
    pool_rows = np.union1d(pool_rows, tl.exercise)
    prior = _population_prior(tl, user_count, phi, train, rng, chunk_users)

    steps, candidates, coefficients, weights, tuned = [], [], [], [], []
    ranks: dict[str, list[np.ndarray]] = {name: [] for name in RECOMMENDERS}
    for first, begin, chunk in _chunks(tl, user_count, chunk_users):
        users = min(chunk_users, user_count - begin)
        chunk_train = train[first : first + len(chunk)]
        part = chunk.take(np.flatnonzero(chunk_train))
        if not len(part):  # no history in this chunk (fit_timelines needs some)
            coefficients.append(np.broadcast_to(prior, (users, *prior.shape)).copy())
            weights.append(np.tile(DEFAULT_WEIGHTS, (users, 1)))
            tuned.append(np.zeros(users, dtype=bool))
            continue
        fitted = fit_timelines(
            part, users, phi, prior, np.full(users, float(part.time.max(initial=0.0)))
        )
        coefficients.append(np.stack([u.coefficients for u in fitted.users]))
        weights.append(np.stack([u.weights for u in fitted.users]))
        tuned.append(np.array([u.metrics["tune_steps"] >= MIN_TUNE_STEPS for u in fitted.users]))
        got = _rank_steps(
            chunk,
            np.flatnonzero(~chunk_train),
            phi,
            coefficients[-1],
            weights[-1],
            popularity,
            pool_rows,
        )
        steps.append(got.queries + first)
        candidates.append(got.candidates)
        for name in RECOMMENDERS:
            ranks[name].append(got.ranks[name])
    return Replay(
        train=train,
        steps=np.concatenate(steps) if steps else np.zeros(0, dtype=np.int64),
        ranks={
            name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in ranks.items()
        },
        candidates=np.concatenate(candidates) if candidates else np.zeros(0, dtype=np.int64),
        coefficients=np.concatenate(coefficients)
        if coefficients
        else np.zeros((0, STATE_DIMENSIONS, features.DIMENSIONS)),
        weights=np.concatenate(weights) if weights else np.zeros((0, len(TERM_NAMES))),
        tuned=np.concatenate(tuned) if tuned else np.zeros(0, dtype=bool),
    )


def evaluate(
    tl: Timeline, user_count: int, phi: np.ndarray, *, source: str = "", **options: Any
) -> EvalReport:
    """The report of replay(tl, user_count, phi, **options)."""
    result = replay(tl, user_count, phi, **options)
    evaluated = np.unique(tl.user[result.steps])
    steps = len(result.steps)
    return EvalReport(
        source=source,
        users=user_count,
        evaluated_users=len(evaluated),
        train_entries=int(result.train.sum()),
        steps=steps,
        test_fraction=options.get("test_fraction", DEFAULT_TEST_FRACTION),
        mean_candidates=float(result.candidates.mean()) if steps else 0.0,
        results={name: Metrics.of(r) for name, r in result.ranks.items()},
        mean_weights=dict(
            zip(
                TERM_NAMES,
                (result.weights[evaluated].mean(axis=0) if steps else DEFAULT_WEIGHTS).tolist(),
                strict=True,
            )
        ),
        tuned_users=int(result.tuned[evaluated].sum()),
    )


def _chunks(tl: Timeline, user_count: int, size: int) -> list[tuple[int, int, Timeline]]:
    """(first entry, first user, timeline with users renumbered from 0) per chunk of users."""
    out = []
    for begin in range(0, user_count, size):
        lo, hi = np.searchsorted(tl.user, [begin, begin + size], side="left")
        part = tl.take(np.arange(lo, hi))
        renumbered = Timeline(part.user - begin, part.workout, part.time, part.exercise)
        out.append((int(lo), begin, renumbered))
    return out


def _population_prior(
    tl: Timeline,
    user_count: int,
    phi: np.ndarray,
    train: np.ndarray,
    rng: np.random.Generator,
    chunk_users: int,
) -> np.ndarray:
    """W0 on every training pair, λ by leave-one-out on a sample of them, as
    ridge.fit_population does, accumulated chunk by chunk."""
    gram = np.zeros((STATE_DIMENSIONS, STATE_DIMENSIONS))
    cross = np.zeros((STATE_DIMENSIONS, features.DIMENSIONS))
    pairs = int(np.maximum(np.bincount(tl.user[train], minlength=user_count) - 1, 0).sum())
    share = min(1.0, LAMBDA_SAMPLE / max(pairs, 1))
    xs, ys = [], []
    for first, _, chunk in _chunks(tl, user_count, chunk_users):
        part = chunk.take(np.flatnonzero(train[first : first + len(chunk)]))
        x, y, _ = training_pairs(part, phi)
        gram += x.T @ x
        cross += x.T @ y
        pick = rng.random(len(x)) < share
        xs.append(x[pick])
        ys.append(y[pick])
    sample_x = np.concatenate(xs) if xs else np.zeros((0, STATE_DIMENSIONS))
    sample_y = np.concatenate(ys) if ys else np.zeros((0, features.DIMENSIONS))
    _, lam = fit_population(sample_x, sample_y, rng, sample=LAMBDA_SAMPLE)
    return np.linalg.solve(gram + lam * np.eye(STATE_DIMENSIONS), cross)


@dataclass(frozen=True)
class _Ranked:
    queries: np.ndarray  # the ranked steps (entries of the chunk)
    ranks: dict[str, np.ndarray]
    candidates: np.ndarray  # per step


def _rank_steps(
    tl: Timeline,
    queries: np.ndarray,
    phi: np.ndarray,
    coefficients: np.ndarray,
    weights: np.ndarray,
    popularity: np.ndarray,
    pool_rows: np.ndarray,
) -> _Ranked:
    cands = user_candidates(tl, queries)
    rankable = np.bincount(cands.query, weights=cands.target, minlength=len(queries)) > 0
    keep = rankable[cands.query]
    renumber = np.cumsum(rankable) - 1
    queries = queries[rankable]
    query = renumber[cands.query[keep]]
    exercise = cands.exercise[keep]
    target = cands.target[keep]
    cands = Candidates(query, exercise, target)
    terms = step_terms(tl, queries, cands)
    predicted = _predicted(states(tl, phi, queries), tl.user[queries], coefficients)
    for lo in range(0, len(query), BLOCK_ROWS):
        rows = slice(lo, lo + BLOCK_ROWS)
        terms[rows, 2] = np.einsum("ij,ij->i", predicted[query[rows]], phi[exercise[rows]])

    signs = combine(np.eye(len(TERM_NAMES)), np.ones(len(TERM_NAMES)))
    row_weights = weights[tl.user[queries]][query] * signs
    scores = {"weighted": np.einsum("ij,ij->i", terms, row_weights)}
    for name, term in TERM_OF.items():
        scores[name] = terms[:, term]
    ranks = {
        name: target_ranks(query, target, s, len(queries), TIE_TOLERANCE)
        for name, s in scores.items()
    }
    ranks["popularity"] = _popularity_ranks(tl, queries, popularity, pool_rows)
    return _Ranked(queries, ranks, np.bincount(query, minlength=len(queries)))


def _predicted(state: np.ndarray, user: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Unit ŷ = sᵀW_user for each row (rows grouped by user), in padded batches."""
    counts = np.bincount(user, minlength=len(coefficients))
    starts = np.concatenate([[0], np.cumsum(counts)])
    slot = np.arange(len(user)) - starts[user]
    width = max(int(counts.max(initial=0)), 1)
    per_batch = max(1, BATCH_VALUES // (width * state.shape[1]))
    out = np.zeros((len(user), coefficients.shape[2]))
    for first in range(0, len(coefficients), per_batch):
        last = min(first + per_batch, len(coefficients))
        rows = slice(int(starts[first]), int(starts[last]))
        padded = np.zeros((last - first, width, state.shape[1]))
        padded[user[rows] - first, slot[rows]] = state[rows]
        out[rows] = np.matmul(padded, coefficients[first:last])[user[rows] - first, slot[rows]]
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)


def _popularity_ranks(
    tl: Timeline, queries: np.ndarray, popularity: np.ndarray, pool_rows: np.ndarray
) -> np.ndarray:
    """Rank of each query's exercise by popularity among pool_rows, less the
    exercises done earlier in its workout (the query's own is not among them)."""
    ordered = np.sort(popularity[pool_rows])
    mine = popularity[tl.exercise[queries]]
    above = len(ordered) - np.searchsorted(ordered, mine, side="right")
    tied = np.searchsorted(ordered, mine, side="right") - np.searchsorted(ordered, mine, "left")
    rank = 1.0 + above + 0.5 * (tied - 1)
    # Exercises done earlier in the workout are no candidates: take them back out.
    start = _group_starts(tl.user, tl.workout)[queries]
    before = queries - start
    step = np.repeat(np.arange(len(queries)), before)
    offset = np.arange(len(step)) - np.repeat(np.cumsum(before) - before, before)
    entry = np.repeat(start, before) + offset
    pairs = np.unique(np.stack([step, tl.exercise[entry]]), axis=1)
    step, done = pairs[0], pairs[1]
    against = mine[step]
    ahead = (popularity[done] > against) + 0.5 * (popularity[done] == against)
    return rank - np.bincount(step, weights=ahead, minlength=len(queries))


# --- sources ----------------------------------------------------------------------------


def evaluate_synthetic(
    count: int,
    seed: int = 0,
    *,
    weeks: int = 26,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> EvalReport:
    """`count` synthetic users of `seed` (server.training.synthetic), no database."""
    from server.training.synthetic import catalog_feature_table, generate_users, to_timeline

    if count < 1:
        raise InvalidArgument("synthetic", "must be at least 1 user")
    users = generate_users(count, seed, weeks=weeks)
    table = catalog_feature_table()
    return evaluate(
        to_timeline(users, table),
        count,
        table.phi,
        source=f"{count} synthetic users (seed {seed})",
        test_fraction=test_fraction,
        seed=seed,
    )


def evaluate_user(
    db: Database, email: str, *, test_fraction: float = DEFAULT_TEST_FRACTION
) -> EvalReport:
    """A user in the database; popularity also counts every other user's logs."""

    def read(s: Session) -> tuple[str, Timeline, FeatureTable, np.ndarray, np.ndarray]:
        user = auth_repository.get_user_by_email(s, normalize_email(email))
        if user is None:
            raise NotFound(f"no user with email {email}", reason="USER_NOT_FOUND")
        table = load_feature_table(s)
        tl = timeline_of(training_repository.log_rows(s, [user.id]), [user.id], table)
        background = _counts_by_row(bulk.exercise_counts(s, except_user=user.id), table)
        pool = np.array(
            [
                i
                for i, owner in enumerate(table.owners)
                if not table.archived[i] and owner in (None, user.id)
            ],
            dtype=np.int64,
        )
        return user.email, tl, table, background, pool

    found, tl, table, background, pool = db.run(read, write=False)
    return evaluate(
        tl,
        1,
        table.phi,
        source=f"user {found}",
        test_fraction=test_fraction,
        pool=pool,
        background=background,
    )


def evaluate_import(
    db: Database,
    kind: str,
    path: str | Path,
    *,
    unit: str | None = None,
    time_zone: str | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> EvalReport:
    """A Strong, Hevy or FitNotes export, parsed and matched to the shared catalog
    as `repwise import` does (names matching nothing become exercises of their
    own, with the features an import would give them); nothing is stored."""
    from server.logs.import_command import _spec, custom_exercise_id
    from server.logs.imports import KINDS, CatalogEntry, ImportedExercise, match_names, parse

    if kind not in KINDS:
        raise InvalidArgument("import", f"unknown kind {kind!r}; expected one of {KINDS}")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgument(str(path), f"cannot read the file: {error}") from None
    try:
        workouts = parse(kind, text, unit or "kg", time_zone or "UTC")
    except (ValueError, OverflowError) as error:
        raise InvalidArgument(str(path), str(error)) from None

    def read(s: Session) -> tuple[FeatureTable, list[CatalogEntry], np.ndarray]:
        shared = catalog_repository.list_page(
            s, catalog_repository.ExerciseFilter(viewer_id=""), None, 10**7
        )
        entries = [
            CatalogEntry(
                id=e.id,
                name=e.name,
                aliases=tuple(e.aliases),
                equipment=e.equipment,
                primary_muscles=tuple(e.primary_muscles),
            )
            for e in shared
        ]
        table = load_feature_table(s)
        return table, entries, _counts_by_row(bulk.exercise_counts(s), table)

    table, catalog, background = db.run(read, write=False)
    names = list(dict.fromkeys(e.name for w in workouts for e in w.exercises))
    matches = match_names(names, catalog)
    performed: dict[str, list[ImportedExercise]] = {}
    for w in workouts:
        for e in w.exercises:
            performed.setdefault(e.name, []).append(e)
    row = dict(table.row)
    new_phi: list[np.ndarray] = []
    for name in names:
        match = matches[name]
        if match.exercise_id is not None:
            continue
        new_id = custom_exercise_id("eval", name)
        if new_id not in row:
            spec = _spec(new_id, name, performed[name], catalog)
            row[new_id] = len(table.ids) + len(new_phi)
            new_phi.append(
                features.encode(
                    features.ExerciseTraits(
                        primary_muscles=spec.primary_muscles,
                        equipment=spec.equipment,
                        category=spec.category,
                    )
                )
            )
        matches[name] = type(match)(new_id, "new", 0.0, "")
    phi = np.vstack([table.phi, *new_phi]) if new_phi else table.phi
    background = np.concatenate([background, np.zeros(len(new_phi))])
    shared_rows = [i for i, owner in enumerate(table.owners) if owner is None]
    pool = np.array(
        [i for i in shared_rows if not table.archived[i]] + list(range(len(table.ids), len(phi))),
        dtype=np.int64,
    )
    workout, time, exercise = [], [], []
    for number, w in enumerate(workouts):
        for e in w.exercises:
            workout.append(number)
            time.append(w.started_at.astimezone(UTC).timestamp())
            exercise.append(row[str(matches[e.name].exercise_id)])
    tl = Timeline.of(np.zeros(len(exercise)), workout, time, exercise)
    return evaluate(
        tl,
        1,
        phi,
        source=f"{kind} export {Path(path).name}",
        test_fraction=test_fraction,
        pool=pool,
        background=background,
    )


def _counts_by_row(counts: dict[str, int], table: FeatureTable) -> np.ndarray:
    out = np.zeros(len(table.ids))
    for exercise_id, count in counts.items():
        if exercise_id in table.row:
            out[table.row[exercise_id]] = count
    return out
