"""Parity for other languages (issue 4 item 7).

tests/parity/vectors.json holds a bundle and scenarios with the SDK's top k; the SDK must still
compute them (regenerate with `.venv/bin/python -m tests.parity.make_vectors` when a change
of the model is meant). tests/parity/recommend.js, an independent client in JavaScript
(@grpc/grpc-js from npm), must reproduce them, and against the real server it downloads a
bundle over gRPC and must reproduce what the Python SDK recommends from the same bundle:
the same exercise ids in the same order, scores to 1e-9 relative.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from client_sdk import RepwiseClient
from client_sdk.parity import (
    RELATIVE_TOLERANCE,
    Scenario,
    bundle_of,
    mismatches,
    scenarios_of,
    top_k,
)
from repwise.v1 import auth_pb2, training_pb2
from tests.conftest import PASSWORD
from tests.parity import make_vectors as mv

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "parity" / "recommend.js"
NODE_PACKAGES = ("@grpc/grpc-js", "@grpc/proto-loader")


def node() -> str:
    """The node executable; fails (never skips) when Node or the npm packages are missing."""
    found = shutil.which("node")
    if found is None:
        pytest.fail(
            "`node` is not on PATH: tests/test_parity.py runs the JavaScript parity client "
            "(tests/parity/recommend.js); install Node.js 18 or newer"
        )
    for package in NODE_PACKAGES:
        if not (ROOT / "node_modules" / package / "package.json").is_file():
            pytest.fail(
                f"node_modules/{package} is missing: run `npm ci` in {ROOT} "
                "(`make test` does it for you)"
            )
    return found


def run_js(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> dict[str, Any]:
    result = subprocess.run(
        [node(), str(SCRIPT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"recommend.js failed ({result.returncode}):\n{result.stderr}"
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(mv.VECTORS.read_text())
    return data


def assert_same(name: str, expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> None:
    problems = mismatches(expected, actual)
    assert not problems, f"{name}:\n" + "\n".join(problems)


# --- the committed vectors --------------------------------------------------------------------


def test_the_sdk_still_computes_the_committed_vectors():
    data = committed()
    bundle = bundle_of(data)
    assert bundle.model_version == data["bundle"]["model_version"]
    assert data["relative_tolerance"] == RELATIVE_TOLERANCE
    scenarios = scenarios_of(data)
    assert len(scenarios) >= 8
    for scenario, stored in zip(scenarios, data["scenarios"], strict=True):
        assert scenario.to_json() == {k: v for k, v in stored.items() if k != "expected"}
        assert stored["expected"], scenario.name
        assert_same(
            f"{scenario.name} (SDK now vs tests/parity/vectors.json; if the change is meant, "
            "regenerate with `.venv/bin/python -m tests.parity.make_vectors`)",
            stored["expected"],
            top_k(bundle, scenario),
        )


def test_the_committed_vectors_are_unambiguous():
    """Neighbouring scores are equal (ties keep catalog order) or far apart: a port within
    the tolerance cannot rank them differently."""
    for scenario in committed()["scenarios"]:
        scores = [e["score"] for e in scenario["expected"]]
        assert len(scores) == min(scenario["k"], len(scores))
        for a, b in itertools.pairwise(scores):
            assert a >= b
            assert a == b or not math.isclose(a, b, rel_tol=100 * RELATIVE_TOLERANCE)


def test_the_javascript_client_reproduces_the_committed_vectors():
    data = committed()
    out = run_js("--vectors", str(mv.VECTORS))
    assert int(out["model_version"]) == data["bundle"]["model_version"]
    for stored, result in zip(data["scenarios"], out["results"], strict=True):
        assert result["name"] == stored["name"]
        assert_same(
            f"{stored['name']} (JavaScript vs vectors)", stored["expected"], result["top_k"]
        )


def test_the_generator_still_writes_the_committed_scenarios():
    """`python -m tests.parity.make_vectors` still runs and poses the same scenarios. (The
    bundle is not compared: a trainer change may change it, and the committed one stays a
    valid vector all the same.)"""
    fresh = mv.build()
    inputs = [{k: v for k, v in s.items() if k != "expected"} for s in committed()["scenarios"]]
    assert [{k: v for k, v in s.items() if k != "expected"} for s in fresh["scenarios"]] == inputs


# --- against the real server ----------------------------------------------------------------


def _bundle(server: Any, md: Any) -> training_pb2.ModelBundle:
    return server.training.GetModelBundle(training_pb2.GetModelBundleRequest(), metadata=md).bundle


def _stats_time(bundle: training_pb2.ModelBundle) -> float:
    return bundle.stats_time.seconds + bundle.stats_time.nanos / 1e9


def _check_live(server: Any, email: str, bundle: Any, scenarios: list[Scenario]) -> None:
    """The JavaScript client, signed in as `email` on the live server, recommends what the
    SDK recommends from `bundle` in every scenario."""
    out = run_js(
        "--target",
        server.target,
        "--email",
        email,
        stdin=json.dumps({"scenarios": [s.to_json() for s in scenarios]}),
        env={"REPWISE_PASSWORD": PASSWORD},
    )
    assert int(out["model_version"]) == bundle.model_version
    for scenario, result in zip(scenarios, out["results"], strict=True):
        expected = top_k(bundle, scenario)
        assert expected, scenario.name
        assert_same(f"{scenario.name} (JavaScript over gRPC vs SDK)", expected, result["top_k"])


def test_the_javascript_client_matches_the_sdk_on_a_live_server(server, clock, tmp_path):
    md = mv.train_user(server, clock)
    bundle = _bundle(server, md)
    assert not bundle.is_population_model
    now = mv.NOW.timestamp()
    recent = mv.stream_history(server, md, min(_stats_time(bundle), now - 7 * 86_400.0))
    assert recent

    # Workouts logged after the bundle was trained: the clients must add them themselves.
    clock.freeze(mv.LATER)
    md = mv.sign_in(server, mv.EMAIL)
    mv.log_workouts(server, md, mv.AFTER)
    trained = bundle
    bundle = _bundle(server, md)  # the one the JavaScript client will download
    assert bundle.model_version == trained.model_version  # not retrained,
    assert bundle.stats_time == trained.stats_time  # so the new workouts are not in it
    later = mv.LATER.timestamp()
    logged = {w for w, _, _ in mv.AFTER}
    after = [e for e in mv.stream_history(server, md, _stats_time(bundle)) if e[1] in logged]
    assert len(after) == sum(len(slugs) for _, _, slugs in mv.AFTER)
    scenarios = mv.scenarios(recent, after)

    # The SDK's own end-to-end path (RepwiseClient streams the history since the bundle's
    # statistics or the last week) gives what client_sdk.parity gives from that history.
    with RepwiseClient(server.target, cache_dir=tmp_path) as sdk:
        sdk.login(mv.EMAIL, PASSWORD)
        row = mv.exercise_id("barbell-bent-over-row")
        streamed = mv.stream_history(server, md, min(_stats_time(bundle), later - 7 * 86_400.0))
        end_to_end = Scenario("SDK end to end", later, streamed, (row,), ("dumbbell",), 12)
        recs = sdk.recommend(12, current_workout=[row], equipment=["dumbbell"], now=later)
        assert [{"exercise_id": r.exercise_id, "score": r.score} for r in recs] == top_k(
            bundle, end_to_end
        )
        scenarios.append(end_to_end)

    _check_live(server, mv.EMAIL, bundle, scenarios)


def test_the_javascript_client_matches_the_sdk_on_the_population_model(server, clock):
    mv.train_user(server, clock)  # someone for the population model to learn from
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    server.auth.Register(auth_pb2.RegisterRequest(email=email, password=PASSWORD))
    md = mv.sign_in(server, email)
    bundle = _bundle(server, md)
    assert bundle.is_population_model and not bundle.exercise_stats
    # Their first workouts, logged after the population bundle.
    first = [
        (str(uuid.uuid4()), mv.NOW - timedelta(days=2), mv.PUSH),
        (str(uuid.uuid4()), mv.NOW - timedelta(hours=3), mv.PULL[:2]),
    ]
    mv.log_workouts(server, md, first)
    history = mv.stream_history(server, md, datetime(2000, 1, 1, tzinfo=UTC).timestamp())
    assert len(history) == 6
    now = mv.NOW.timestamp()
    squat = mv.exercise_id("barbell-back-squat")
    scenarios = [
        Scenario("population model, nothing logged", now, (), (), None, 10),
        Scenario("population model, first workouts", now, history, (), None, 10),
        Scenario("population model, mid-workout", now, history, (squat,), ("barbell",), 10),
    ]
    _check_live(server, email, bundle, scenarios)
