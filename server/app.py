"""Builds the one gRPC server: services, health, reflection and interceptors."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from repwise.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    log_pb2,
    log_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from server.auth.passwords import PasswordHasher
from server.auth.service import AuthService
from server.auth.servicer import AuthServicer
from server.auth.tokens import TokenIssuer
from server.catalog.service import CatalogService
from server.catalog.servicer import CatalogServicer
from server.config import Settings
from server.db import Database, utcnow
from server.events.amqp import Publisher
from server.events.consumer import AmqpConsumer
from server.events.relay import Relay
from server.events.service import SummaryService
from server.interceptors import AuthInterceptor, ErrorInterceptor, LoggingInterceptor
from server.logs import repository as logs_repository
from server.logs.service import LogService
from server.logs.servicer import LogServicer
from server.metrics import MetricsServer, serve_http
from server.training.scheduler import TrainingWorker
from server.training.service import BatchTrainer, TrainingService
from server.training.servicer import TrainingServicer

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    log_pb2.DESCRIPTOR.services_by_name["LogService"].full_name,
    training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
)
HEALTH_CHECK_SECONDS = 2.0
PURGE_EVERY_SECONDS = 3600


def _events(
    db: Database, settings: Settings, now: Callable[[], datetime]
) -> tuple[Relay, AmqpConsumer | None]:
    """The outbox relay, and with a broker configured the metrics consumer (docs/events.md)."""
    url = settings.amqp_url
    relay = Relay(
        db,
        publisher=Publisher(url, settings.amqp_exchange, settings.amqp_queue) if url else None,
        now=now,
        poll_seconds=settings.outbox_poll_seconds,
        retention=timedelta(days=settings.outbox_retention_days),
    )
    if not url:
        return relay, None
    return relay, AmqpConsumer(db, url, settings.amqp_exchange, settings.amqp_queue, now)


class RepwiseServer:
    """The server and everything it owns. `start()` returns at once, so tests
    run the real server in-process on port 0."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database | None = None,
        now: Callable[[], datetime] = utcnow,
        health_check_seconds: float = HEALTH_CHECK_SECONDS,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self.db = db or Database(settings.database_url, pool_size=settings.max_workers)
        self._owns_db = db is None
        self.tokens = TokenIssuer(
            settings.jwt_secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_seconds=settings.access_token_seconds,
            leeway_seconds=settings.jwt_leeway_seconds,
            now=now,
        )
        self.hasher = PasswordHasher(
            settings.bcrypt_rounds, settings.password_workers, settings.password_queue
        )
        self.auth = AuthService(self.db, settings, self.hasher, self.tokens, now)
        self.catalog = CatalogService(self.db, self.auth, now)
        self.relay, self.consumer = _events(self.db, settings, now)
        self.logs = LogService(self.db, self.auth, now, on_change=self.relay.wake)
        self.summaries = SummaryService(self.db, self.auth, now)
        batch_trainer = BatchTrainer(
            self.db, now, lease=timedelta(seconds=settings.training_lease_seconds)
        )
        self.training = TrainingService(
            self.db,
            self.auth,
            batch_trainer,
            train_now_cooldown=timedelta(seconds=settings.train_now_cooldown_seconds),
        )
        self.trainer = TrainingWorker(
            batch_trainer,
            poll_seconds=settings.training_poll_seconds,
            weekly=settings.training_scheduler,
            retrain_after=timedelta(hours=settings.retrain_after_hours),
            offline_after=timedelta(minutes=settings.offline_after_minutes),
        )
        self.health = health.HealthServicer()
        self._health_check_seconds = health_check_seconds
        # Only `serve --workers N` shares its port (SO_REUSEPORT); otherwise a second server
        # on a taken port fails instead of silently splitting the traffic.
        self._reuse_port = reuse_port
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self.port: int | None = None
        # The bound /metrics port once started (settings.metrics_port 0 picks one).
        self.metrics_port: int | None = None
        self._metrics: MetricsServer | None = None
        self.grpc_server = self._build()

    def _build(self) -> grpc.Server:
        options = [
            ("grpc.max_receive_message_length", self.settings.max_message_bytes),
            ("grpc.max_send_message_length", self.settings.max_response_bytes),
            ("grpc.so_reuseport", 1 if self._reuse_port else 0),
            # Above gRPC's default 8 KiB soft limit, oversized metadata is refused at random
            # with RESOURCE_EXHAUSTED; raised so our own checks answer (UNAUTHENTICATED).
            ("grpc.max_metadata_size", 32 * 1024),
            ("grpc.absolute_max_metadata_size", 64 * 1024),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.settings.max_workers, thread_name_prefix="repwise-rpc"
            ),
            interceptors=[
                LoggingInterceptor(),
                ErrorInterceptor(max_streams=max(1, self.settings.max_workers // 2)),
                AuthInterceptor(self.tokens),
            ],
            options=options,
            maximum_concurrent_rpcs=self.settings.max_workers * 8,
        )
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(self.auth), server)
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogServicer(self.catalog, is_referenced=logs_repository.exercise_is_referenced),
            server,
        )
        log_pb2_grpc.add_LogServiceServicer_to_server(
            LogServicer(self.logs, self.summaries), server
        )
        training_pb2_grpc.add_TrainingServiceServicer_to_server(
            TrainingServicer(self.training), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{self.settings.host}:{self.settings.port}"
        if self.settings.tls_cert_file and self.settings.tls_key_file:
            credentials = grpc.ssl_server_credentials(
                [
                    (
                        Path(self.settings.tls_key_file).read_bytes(),
                        Path(self.settings.tls_cert_file).read_bytes(),
                    )
                ]
            )
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"could not bind {address}")
        return server

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, status)

    def _watch_database(self) -> None:
        """Health follows the database; now and then, stale sign-in throttles are purged."""
        serving = True
        next_purge = time.monotonic()
        while not self._stopping.wait(self._health_check_seconds):
            ok = self.db.ping()
            if ok != serving:
                log.warning("database is %s", "reachable again" if ok else "unreachable")
                serving = ok
                self._set_serving(ok)
            if ok and time.monotonic() >= next_purge:
                next_purge = time.monotonic() + PURGE_EVERY_SECONDS
                try:
                    purged = self.auth.purge_stale_throttles()
                except Exception:  # maintenance must never stop health checks
                    log.exception("purging stale sign-in throttles failed")
                else:
                    if purged:
                        log.info("purged %d stale sign-in throttles", purged)

    def start(self) -> int:
        if self.settings.metrics_port is not None:
            self._metrics = serve_http(self.settings.metrics_host, self.settings.metrics_port)
            self.metrics_port = self._metrics.port
            log.info(
                "metrics on http://%s:%s/metrics", self.settings.metrics_host, self.metrics_port
            )
        self._set_serving(self.db.ping())
        self.grpc_server.start()
        self._monitor = threading.Thread(
            target=self._watch_database, name="repwise-health", daemon=True
        )
        self._monitor.start()
        self.trainer.start()
        self.relay.start()
        if self.consumer is not None:
            self.consumer.start()
        log.info("serving on %s:%s", self.settings.host, self.port)
        assert self.port is not None
        return self.port

    def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight calls get `grace` seconds."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(self.settings.grace_seconds if grace is None else grace).wait()
        self.trainer.stop(timeout=self.settings.grace_seconds)
        self.relay.stop(timeout=self.settings.grace_seconds)
        if self.consumer is not None:
            self.consumer.stop(timeout=self.settings.grace_seconds)
        if self._metrics is not None:
            self._metrics.stop()
        if self._owns_db:
            self.db.dispose()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()

    def stop_on_signals(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            log.info("received %s; draining", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="repwise-stop").start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
