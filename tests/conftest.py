"""Shared fixtures: a real database (SQLite file and PostgreSQL) and the real
gRPC server in-process on port 0.

Every test that takes `server` (or anything built on it) runs once per
backend. PostgreSQL is at REPWISE_TEST_POSTGRES_URL (default: the local
server, user postgres); each run creates its own database and drops it after.
Without PostgreSQL those runs are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from repwise.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    catalog_pb2_grpc,
    log_pb2_grpc,
    training_pb2_grpc,
)
from server.app import RepwiseServer
from server.config import Settings
from server.db import Base, Database
from server.migrate import upgrade

PG_ADMIN_URL = os.environ.get(
    "REPWISE_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_SECRET = "test-secret-that-is-at-least-32-bytes-long!!"
PASSWORD = "correct horse battery"


class FakeClock:
    """The server's clock. Follows real time until frozen; tests move it."""

    def __init__(self) -> None:
        self.frozen: datetime | None = None

    def __call__(self) -> datetime:
        return self.frozen if self.frozen is not None else datetime.now(UTC)

    def freeze(self, at: datetime | None = None) -> datetime:
        self.frozen = at or datetime.now(UTC).replace(microsecond=0)
        return self.frozen

    def advance(self, seconds: float) -> datetime:
        if self.frozen is None:
            self.freeze()
        assert self.frozen is not None
        self.frozen += timedelta(seconds=seconds)
        return self.frozen


def _postgres_available() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as error:
        return f"{type(error).__name__}: {error}"


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'repwise.db'}"
        return
    with postgres_database("repwise_test") as url:
        yield url


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty database on the test PostgreSQL server, dropped afterwards (even with
    clients still connected)."""
    problem = _postgres_available()
    if problem:
        if IN_CI:
            pytest.fail(
                f"PostgreSQL is required under CI but unreachable at {PG_ADMIN_URL}: {problem}"
            )
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url, pool_size=16)
    upgrade(db.engine)
    yield db
    db.dispose()


def _empty_tables(db: Database) -> None:
    with db.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            if table.name != "alembic_version":
                conn.execute(table.delete())


@pytest.fixture
def db(database: Database) -> Iterator[Database]:
    """The session's database, emptied after each test."""
    yield database
    _empty_tables(database)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "port": 0,
        "jwt_secret": TEST_SECRET,
        "bcrypt_rounds": 4,  # tests only; production default is 12
        "grace_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Running:
    server: RepwiseServer
    target: str
    channel: grpc.Channel
    auth: auth_pb2_grpc.AuthServiceStub
    catalog: catalog_pb2_grpc.CatalogServiceStub
    logs: log_pb2_grpc.LogServiceStub
    training: training_pb2_grpc.TrainingServiceStub


def start_server(db: Database, clock: FakeClock, **overrides: object) -> Running:
    server = RepwiseServer(
        make_settings(db.url, **overrides), db=db, now=clock, health_check_seconds=0.2
    )
    port = server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target)
    return Running(
        server=server,
        target=target,
        channel=channel,
        auth=auth_pb2_grpc.AuthServiceStub(channel),
        catalog=catalog_pb2_grpc.CatalogServiceStub(channel),
        logs=log_pb2_grpc.LogServiceStub(channel),
        training=training_pb2_grpc.TrainingServiceStub(channel),
    )


@pytest.fixture
def server(db: Database, clock: FakeClock) -> Iterator[Running]:
    """The real server on port 0 over the test database, with stubs for every service."""
    running = start_server(db, clock)
    yield running
    running.channel.close()
    running.server.stop(grace=0)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def register(
    server: Running, email: str | None = None, password: str = PASSWORD, display_name: str = ""
) -> auth_pb2.RegisterResponse:
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    return server.auth.Register(
        auth_pb2.RegisterRequest(email=email, password=password, display_name=display_name)
    )


def make_admin(server: Running, email: str | None = None) -> auth_pb2.LoginResponse:
    """A signed-in admin (created the way `repwise admin create` does)."""
    email = email or f"admin-{uuid.uuid4().hex[:8]}@example.com"
    server.server.auth.create_admin(email, PASSWORD)
    return server.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    """Call and return the RpcError it must raise."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value  # type: ignore[return-value]


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo in a failed call's status details."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the status carries no details"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"the status details carry no google.rpc.ErrorInfo: {status}")
