"""Prometheus metrics: RPCs, training runs and the event outbox, and their HTTP exposition.

RPC series follow go-grpc-prometheus, so its dashboards work unchanged. Under
`repwise serve --workers N` prometheus_client runs in multiprocess mode: each worker
writes its values to files in PROMETHEUS_MULTIPROC_DIR, and the parent serves the sum.
That mode is chosen when prometheus_client is first imported, so the directory must be
in the environment before anything imports this module.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import REGISTRY

# No *_created series: they double the exposition and the dashboards do not read them.
disable_created_metrics()

_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
RPC_STARTED = Counter("grpc_server_started", "RPCs started on the server.", _RPC_LABELS)
RPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, whatever their status.",
    (*_RPC_LABELS, "grpc_code"),
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC until the server finished it.",
    _RPC_LABELS,
)

TRAINING_RUNS = Counter(
    "repwise_training_runs",
    "Training runs that found users to train, by what started them and how they ended "
    "(ok; partial: some users failed; error: the run stopped).",
    ("trigger", "outcome"),
)
TRAINING_USERS = Counter(
    "repwise_training_users_trained", "Users whose model a training run wrote.", ("trigger",)
)
TRAINING_FAILURES = Counter(
    "repwise_training_user_failures", "Users whose training failed in a run.", ("trigger",)
)
TRAINING_SECONDS = Histogram(
    "repwise_training_run_seconds",
    "Duration of training runs that found users to train.",
    ("trigger",),
    buckets=(0.1, 0.5, 1, 2.5, 5, 15, 30, 60, 120, 300, 900, 1800, 3600),
)

# Gauges keep the last value reported by any live process (the relay may run in any worker).
OUTBOX_PENDING = Gauge(
    "repwise_outbox_pending_events",
    "Events written to the outbox and not yet published.",
    multiprocess_mode="livemostrecent",
)
OUTBOX_LAG = Gauge(
    "repwise_outbox_lag_seconds",
    "Age of the oldest unpublished outbox event in seconds (0 when none).",
    multiprocess_mode="livemostrecent",
)
OUTBOX_PUBLISHED = Counter(
    "repwise_outbox_published_events",
    "Outbox events delivered: confirmed by the broker, or applied in-process.",
)
OUTBOX_PARKED = Counter(
    "repwise_outbox_parked_events",
    "Outbox events set aside after failing in-process delivery repeatedly.",
)
EVENTS_REJECTED = Counter(
    "repwise_events_rejected",
    "Messages the metrics consumer dropped: not events, or events whose application failed.",
)

# grpc's handler kinds (request_streaming, response_streaming) → go-grpc-prometheus grpc_type.
_GRPC_TYPES = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


class RpcMetrics:
    """One method's series, resolved once so that a call only increments them."""

    __slots__ = ("_handled", "_labels", "_seconds", "started")

    def __init__(self, method: str, request_streaming: bool, response_streaming: bool) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self._labels = (_GRPC_TYPES[request_streaming, response_streaming], service, name)
        self.started = RPC_STARTED.labels(*self._labels).inc
        self._seconds = RPC_SECONDS.labels(*self._labels).observe
        self._handled: dict[str, Counter] = {}

    def handled(self, code: str, seconds: float) -> None:
        counter = self._handled.get(code)
        if counter is None:  # a race here is harmless: labels() returns the same child
            counter = self._handled[code] = RPC_HANDLED.labels(*self._labels, code)
        counter.inc()
        self._seconds(seconds)


def training_run(trigger: str, *, trained: int, failed: int, skipped: int, seconds: float) -> None:
    """A run that ended: counted when it found users (the worker polls often for none)."""
    if not (trained or failed or skipped):
        return
    outcome = "partial" if failed else "ok"
    TRAINING_RUNS.labels(trigger, outcome).inc()
    TRAINING_USERS.labels(trigger).inc(trained)
    TRAINING_FAILURES.labels(trigger).inc(failed)
    TRAINING_SECONDS.labels(trigger).observe(seconds)


def training_error(trigger: str, seconds: float) -> None:
    """A run that stopped with an exception (e.g. the database went away)."""
    TRAINING_RUNS.labels(trigger, "error").inc()
    TRAINING_SECONDS.labels(trigger).observe(seconds)


def outbox_state(pending: int, lag_seconds: float) -> None:
    """Records how far the outbox relay is behind."""
    OUTBOX_PENDING.set(pending)
    OUTBOX_LAG.set(lag_seconds if pending else 0.0)


def outbox_published(count: int) -> None:
    OUTBOX_PUBLISHED.inc(count)


def outbox_parked(count: int) -> None:
    OUTBOX_PARKED.inc(count)


def events_rejected(count: int) -> None:
    EVENTS_REJECTED.inc(count)


@dataclass
class MetricsServer:
    """The /metrics HTTP endpoint, on its own daemon thread."""

    host: str
    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def serve_http(host: str, port: int, multiprocess_dir: str | None = None) -> MetricsServer:
    """Serves this process's metrics, or with multiprocess_dir the sum over every
    process writing there. Port 0 picks a free port (see .port)."""
    registry: CollectorRegistry = REGISTRY
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host, httpd.server_port, httpd, thread)


def process_exited(pid: int, multiprocess_dir: str) -> None:
    """Drops a dead worker's live gauges (its counters and histograms still count)."""
    mark_process_dead(pid, multiprocess_dir)
