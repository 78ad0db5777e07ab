"""Prometheus metrics scraped over HTTP from the real server: RPCs counted once each under
their final status code (go-grpc-prometheus names), training runs by trigger and outcome,
the outbox gauges; `serve --workers 2` summing both workers; request ids in the JSON logs.

Metrics are process-wide, so every check compares a scrape after the calls with one before.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from repwise.v1 import auth_pb2, log_pb2, log_pb2_grpc, training_pb2
from server import metrics
from server.catalog.sources import seed_default_catalog
from server.config import ConfigError, Settings
from server.logging_setup import JsonFormatter
from server.training.repository import Selection
from server.training.service import BatchTrainer
from tests.conftest import (
    PASSWORD,
    Running,
    bearer,
    make_admin,
    register,
    rpc_error,
    start_server,
)
from tests.test_cli import cli_env, sqlite_url
from tests.test_serve_workers import children, cpu_ticks, start_serve
from tests.test_training import log_routine

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
AUTH = "repwise.v1.AuthService"
LOGS = "repwise.v1.LogService"
TRAINING = "repwise.v1.TrainingService"
HEALTH = "grpc.health.v1.Health"
COUNTED = ("grpc_server_started_total", "grpc_server_handled_total")


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def rpc(service: str, method: str, kind: str = "unary") -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": service, "grpc_method": method}


def rpc_changes(before: Samples, after: Samples) -> dict[tuple[str, frozenset], float]:
    """Every started/handled counter that moved, with how much."""
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if key[0] in COUNTED and after[key] != before.get(key, 0.0)
    }


def expected_calls(*calls: tuple[dict[str, str], str]) -> dict[tuple[str, frozenset], float]:
    """The counter changes of the given (method labels, code) calls."""
    changes: dict[tuple[str, frozenset], float] = {}
    for labels, code in calls:
        for name, extra in (
            ("grpc_server_started_total", {}),
            ("grpc_server_handled_total", {"grpc_code": code}),
        ):
            key = (name, frozenset({**labels, **extra}.items()))
            changes[key] = changes.get(key, 0.0) + 1
    return changes


def assert_histogram_matches(before: Samples, after: Samples, labels: dict[str, str]) -> None:
    """The method's duration histogram observed each handled call once."""
    handled = sum(
        after[key] - before.get(key, 0.0)
        for key in after
        if key[0] == "grpc_server_handled_total" and set(labels.items()) <= key[1]
    )
    count = delta(before, after, "grpc_server_handling_seconds_count", **labels)
    inf = delta(before, after, "grpc_server_handling_seconds_bucket", **labels, le="+Inf")
    assert handled >= 1 and count == handled == inf
    assert delta(before, after, "grpc_server_handling_seconds_sum", **labels) > 0


def eventually(port: int, ready: Callable[[Samples], bool]) -> Samples:
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(port)
        if ready(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@pytest.fixture
def metered(db, clock) -> Iterator[Running]:
    """The real server with /metrics on a free port."""
    running = start_server(db, clock, metrics_port=0)
    yield running
    running.channel.close()
    running.server.stop(grace=0)


def test_metrics_are_off_unless_a_port_is_set(server):
    assert server.server.metrics_port is None


def test_each_call_is_counted_once_under_its_code(metered):
    port = metered.server.metrics_port
    assert port
    before = scrape(port)
    register(metered)
    invalid = rpc_error(
        metered.auth.Register, auth_pb2.RegisterRequest(email="nope", password=PASSWORD)
    )
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Refused by the auth interceptor before any handler runs.
    unauthenticated = rpc_error(metered.logs.ListWorkouts, log_pb2.ListWorkoutsRequest())
    assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED
    after = scrape(port)

    register_labels, list_labels = rpc(AUTH, "Register"), rpc(LOGS, "ListWorkouts")
    assert rpc_changes(before, after) == expected_calls(
        (register_labels, "OK"),
        (register_labels, "INVALID_ARGUMENT"),
        (list_labels, "UNAUTHENTICATED"),
    )
    assert_histogram_matches(before, after, register_labels)
    assert_histogram_matches(before, after, list_labels)


def test_a_server_stream_is_counted_once_when_it_finishes(metered, clock):
    seed_default_catalog(metered.server.db, clock)
    md = bearer(register(metered).access_token)
    log_routine(metered, md, datetime(2026, 1, 5, tzinfo=UTC), workouts=3)
    port = metered.server.metrics_port
    before = scrape(port)
    responses = list(
        metered.logs.StreamHistory(log_pb2.StreamHistoryRequest(chunk_size=1), metadata=md)
    )
    assert len(responses) >= 3
    after = scrape(port)

    labels = rpc(LOGS, "StreamHistory", "server_stream")
    assert rpc_changes(before, after) == expected_calls((labels, "OK"))
    assert_histogram_matches(before, after, labels)


@pytest.mark.parametrize(
    ("ending", "code"),
    [("cancel", "CANCELLED"), ("deadline", "DEADLINE_EXCEEDED")],
)
def test_a_stream_cut_short_is_counted_when_it_ends(metered, ending, code):
    """Health Watch runs until its client leaves: cancelled, or its deadline passed."""
    port = metered.server.metrics_port
    labels = rpc(HEALTH, "Watch", "server_stream")
    before = scrape(port)
    stub = health_pb2_grpc.HealthStub(metered.channel)
    if ending == "cancel":
        call = stub.Watch(health_pb2.HealthCheckRequest())
        assert next(call).status == health_pb2.HealthCheckResponse.SERVING
        call.cancel()
    else:
        call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=0.5)
        assert next(call).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            next(call)
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    handled = ("grpc_server_handled_total", frozenset({**labels, "grpc_code": code}.items()))
    after = eventually(port, lambda s: s.get(handled, 0) > before.get(handled, 0))
    assert rpc_changes(before, after) == expected_calls((labels, code))
    assert_histogram_matches(before, after, labels)


def test_train_now_counts_resource_exhausted_and_the_workers_run(metered, clock):
    now = clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    seed_default_catalog(metered.server.db, clock)
    md = bearer(register(metered).access_token)
    log_routine(metered, md, now - timedelta(days=20), workouts=6)
    port = metered.server.metrics_port
    before = scrape(port)
    metered.training.TrainNow(training_pb2.TrainNowRequest(), metadata=md)
    limited = rpc_error(metered.training.TrainNow, training_pb2.TrainNowRequest(), metadata=md)
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # The server's training worker, woken by the request, trains the user.
    after = eventually(port, lambda s: training_deltas(before, s, "train_now")["ok"] > 0)
    labels = rpc(TRAINING, "TrainNow")
    assert rpc_changes(before, after) == expected_calls(
        (labels, "OK"), (labels, "RESOURCE_EXHAUSTED")
    )
    assert training_deltas(before, after, "train_now") == {
        "ok": 1, "partial": 0, "error": 0, "trained": 1, "failed": 0, "timed": 1
    }  # fmt: skip


def training_deltas(before: Samples, after: Samples, trigger: str) -> dict[str, float]:
    """How the training series of one trigger moved."""
    names = {
        "ok": ("repwise_training_runs_total", {"outcome": "ok"}),
        "partial": ("repwise_training_runs_total", {"outcome": "partial"}),
        "error": ("repwise_training_runs_total", {"outcome": "error"}),
        "trained": ("repwise_training_users_trained_total", {}),
        "failed": ("repwise_training_user_failures_total", {}),
        "timed": ("repwise_training_run_seconds_count", {}),
    }
    return {
        short: delta(before, after, name, trigger=trigger, **extra)
        for short, (name, extra) in names.items()
    }


@pytest.mark.parametrize("breakage", [None, "a chunk fails", "the run stops"])
def test_run_batch_is_counted_with_its_outcome(metered, clock, monkeypatch, breakage):
    now = clock.freeze(datetime(2026, 11, 25, 12, tzinfo=UTC))
    seed_default_catalog(metered.server.db, clock)
    log_routine(metered, bearer(register(metered).access_token), now - timedelta(days=20), 6)
    admin = bearer(make_admin(metered).access_token)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("broken on purpose")

    if breakage == "a chunk fails":
        monkeypatch.setattr(BatchTrainer, "_fit_and_write", broken)
    elif breakage == "the run stops":
        monkeypatch.setattr(BatchTrainer, "_run_batch", broken)
    port = metered.server.metrics_port
    before = scrape(port)
    request = training_pb2.RunBatchRequest(all_users=True)
    if breakage == "the run stops":
        assert rpc_error(metered.training.RunBatch, request, metadata=admin).code() == (
            grpc.StatusCode.INTERNAL
        )
    else:
        metered.training.RunBatch(request, metadata=admin)
    after = scrape(port)

    expected = {
        None: {"ok": 1, "partial": 0, "error": 0, "trained": 1, "failed": 0, "timed": 1},
        "a chunk fails": {"ok": 0, "partial": 1, "error": 0, "trained": 0, "failed": 1, "timed": 1},
        "the run stops": {"ok": 0, "partial": 0, "error": 1, "trained": 0, "failed": 0, "timed": 1},
    }[breakage]
    assert training_deltas(before, after, "run_batch") == expected


def test_a_run_with_nobody_to_train_is_not_counted(metered):
    port = metered.server.metrics_port
    before = scrape(port)
    metered.server.training.trainer.run_batch(Selection(), trigger="scheduler")
    after = scrape(port)
    assert set(training_deltas(before, after, "scheduler").values()) == {0}


@pytest.fixture
def exposed() -> Iterator[int]:
    """/metrics alone, without a server whose outbox relay would report its own backlog."""
    served = metrics.serve_http("127.0.0.1", 0)
    yield served.port
    served.stop()


def test_outbox_state_and_published_events_are_exposed(exposed):
    port = exposed
    before = scrape(port)
    metrics.outbox_state(pending=3, lag_seconds=12.5)
    metrics.outbox_published(2)
    after = scrape(port)
    assert value(after, "repwise_outbox_pending_events") == 3
    assert value(after, "repwise_outbox_lag_seconds") == 12.5
    published = "repwise_outbox_published_events_total"
    assert delta(before, after, published) == 2

    metrics.outbox_state(pending=0, lag_seconds=7.0)  # nothing left: no lag, whatever is passed
    drained = scrape(port)
    assert value(drained, "repwise_outbox_pending_events") == 0
    assert value(drained, "repwise_outbox_lag_seconds") == 0


def test_stop_closes_the_metrics_port(db, clock):
    running = start_server(db, clock, metrics_port=0)
    port = running.server.metrics_port
    assert port and scrape(port)
    running.channel.close()
    running.server.stop(grace=0)
    with pytest.raises(OSError):
        scrape(port)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REPWISE_METRICS_PORT": "lots"}, "REPWISE_METRICS_PORT"),
        ({"REPWISE_METRICS_PORT": "70000"}, "REPWISE_METRICS_PORT"),
        ({"REPWISE_METRICS_PORT": "-1"}, "REPWISE_METRICS_PORT"),
        ({"REPWISE_METRICS_PORT": "50051", "REPWISE_PORT": "50051"}, "REPWISE_METRICS_PORT"),
        ({"REPWISE_METRICS_PORT": "9100", "REPWISE_METRICS_HOST": "  "}, "REPWISE_METRICS_HOST"),
    ],
)
def test_bad_metrics_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env, need_secret=False)


def test_metrics_settings_from_the_environment():
    settings = Settings.from_env(
        {"REPWISE_METRICS_PORT": "0", "REPWISE_METRICS_HOST": "0.0.0.0"}, need_secret=False
    )
    assert (settings.metrics_port, settings.metrics_host) == (0, "0.0.0.0")
    assert Settings.from_env({}, need_secret=False).metrics_port is None


# --- structured logs -----------------------------------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[Callable[[], list[dict[str, object]]]]:
    """The JSON log lines written while the test runs, formatted as they are emitted."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_log_lines_carry_the_request_id(server, monkeypatch, json_lines):
    user = register(server)

    def boom() -> None:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(server.server.auth, "get_me", boom)
    rpc_error(
        server.auth.GetMe,
        auth_pb2.GetMeRequest(),
        metadata=(*bearer(user.access_token), ("x-request-id", "log-check-1")),
    )
    lines = [line for line in json_lines() if line.get("request_id") == "log-check-1"]
    # The handler's own error line (request id from the call's context) and the call's line.
    assert [line["level"] for line in lines] == ["error", "info"]
    assert "RuntimeError" in str(lines[0]["traceback"])
    call = lines[1]
    assert call["message"] == "rpc" and call["method"] == f"/{AUTH}/GetMe"
    assert call["code"] == "INTERNAL" and call["user_id"] == user.user.id
    assert isinstance(call["duration_ms"], float) and call["duration_ms"] >= 0


# --- serve --workers -----------------------------------------------------------------------


def wait_for(pattern: str, out: Path, err: Path, process: subprocess.Popen[bytes]) -> re.Match:
    deadline = time.monotonic() + 60
    while not (match := re.search(pattern, out.read_text())):
        assert process.poll() is None, err.read_text()[-3000:]
        assert time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.05)
    return match


def test_workers_metrics_are_summed_by_the_parent(tmp_path):
    # TMPDIR: the parent's metrics directory is made here, so the test sees it go.
    env = cli_env(sqlite_url(tmp_path / "repwise.db"), TMPDIR=str(tmp_path))
    process, out, err = start_serve(tmp_path, env, "--workers", "2", "--metrics-port", "0")
    try:
        port = int(wait_for(r"serving on 127\.0\.0\.1:(\d+) ", out, err, process).group(1))
        metrics_port = int(
            wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", out, err, process).group(1)
        )
        workers = children(process.pid)
        assert len(workers) == 2
        [shared] = tmp_path.glob("repwise-metrics-*")

        before_ticks = {pid: cpu_ticks(pid) for pid in workers}
        calls = 40
        for _ in range(calls):  # a new connection each time: the kernel picks a worker
            channel = grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                rpc_error(
                    log_pb2_grpc.LogServiceStub(channel).ListWorkouts,
                    log_pb2.ListWorkoutsRequest(),
                    timeout=10,
                )
            finally:
                channel.close()
        assert all(cpu_ticks(pid) > before_ticks[pid] for pid in workers), "one worker served all"
        # Each worker writes its own files; the parent's scrape is their sum.
        assert {path.name.rsplit("_", 1)[1] for path in shared.glob("counter_*.db")} >= {
            f"{pid}.db" for pid in workers
        }
        samples = scrape(metrics_port)
        check = rpc(HEALTH, "Check")
        assert value(samples, "grpc_server_handled_total", **check, grpc_code="OK") == calls
        assert value(samples, "grpc_server_started_total", **check) == calls
        assert value(samples, "grpc_server_handling_seconds_count", **check) == calls
        refused = rpc(LOGS, "ListWorkouts")
        assert (
            value(samples, "grpc_server_handled_total", **refused, grpc_code="UNAUTHENTICATED")
            == calls
        )

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, err.read_text()[-3000:]
        assert "Traceback" not in err.read_text()
        assert not shared.exists()
    finally:
        if process.poll() is None:
            for pid in children(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait(10)
