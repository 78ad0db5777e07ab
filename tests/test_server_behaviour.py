"""gRPC behaviour of the whole server (TESTPLAN 18, 19, 22-24): health, reflection, message size,
request ids, error mapping and details, database outages and graceful stop."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from repwise.v1 import auth_pb2, auth_pb2_grpc
from server.app import RepwiseServer
from server.db import Database
from server.errors import DomainError, NotFound
from server.migrate import upgrade
from tests.conftest import (
    PASSWORD,
    bearer,
    error_info,
    make_settings,
    register,
    rpc_error,
    start_server,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
REPWISE_SERVICES = (
    "repwise.v1.AuthService",
    "repwise.v1.CatalogService",
    "repwise.v1.LogService",
    "repwise.v1.TrainingService",
)
LEAKS = ("SELECT", "select ", "psycopg2", "sqlite3", "Traceback", 'File "', "secret detail")


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status


def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def details(error: grpc.RpcError) -> str:
    text = error.details()
    assert isinstance(text, str)
    return text


def assert_no_leak(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} leaked into {text!r}"


# --- health --------------------------------------------------------------------------------


def test_health_is_serving_without_a_token(server):
    assert health_status(server.channel) == SERVING
    for name in REPWISE_SERVICES:
        assert health_status(server.channel, name) == SERVING, name


def test_health_of_an_unknown_service_is_not_found(server):
    stub = health_pb2_grpc.HealthStub(server.channel)
    error = rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="nope.Service"), timeout=2)
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_database_down_is_not_serving_and_unavailable(clock):
    down = Database("postgresql+psycopg2://postgres@127.0.0.1:1/none", pool_size=2)
    repwise = RepwiseServer(make_settings(down.url), db=down, now=clock, health_check_seconds=0.2)
    port = repwise.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        assert wait_for(lambda: health_status(channel) == NOT_SERVING)
        assert health_status(channel, "repwise.v1.AuthService") == NOT_SERVING

        auth = auth_pb2_grpc.AuthServiceStub(channel)
        calls = [
            (auth.Login, auth_pb2.LoginRequest(email="ann@example.com", password=PASSWORD)),
            (auth.Register, auth_pb2.RegisterRequest(email="ann@example.com", password=PASSWORD)),
        ]
        for call, request in calls:
            error = rpc_error(call, request, timeout=10)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert 0 < len(details(error)) < 200
            assert_no_leak(details(error))
            assert_no_leak(str(rpc_status.from_call(error)))  # type: ignore[arg-type]
    finally:
        channel.close()
        repwise.stop(grace=0)
        down.dispose()


class _TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `down()` cuts every connection and refuses
    new ones (accepts and closes them) until `up()`. Lets a test take PostgreSQL away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.is_up = True
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.is_up:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=3)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        with self.lock:
            self.is_up = False
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def up(self) -> None:
        with self.lock:
            self.is_up = True

    def close(self) -> None:
        self.closed = True
        self.down()
        self.listener.close()


@contextlib.contextmanager
def _outage_switch(db: Database, tmp_path: Path) -> Iterator[tuple[Database, Callable, Callable]]:
    """A fresh Database over the test backend plus functions that take it away and bring
    it back: SQLite moves the database's directory away; PostgreSQL goes through a proxy."""
    if db.is_sqlite:
        folder = tmp_path / "data"
        folder.mkdir()
        own = Database(f"sqlite:///{folder / 'repwise.db'}", pool_size=4)
        upgrade(own.engine)

        def down() -> None:
            folder.rename(tmp_path / "data-away")
            own.engine.dispose()  # pooled connections hold the moved file open

        def up() -> None:
            (tmp_path / "data-away").rename(folder)

        try:
            yield own, down, up
        finally:
            own.dispose()
        return
    url = make_url(db.url)
    proxy = _TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    own = Database(
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        pool_size=4,
    )
    try:
        yield own, proxy.down, proxy.up
    finally:
        own.dispose()
        proxy.close()


def test_health_follows_a_database_outage_and_recovery(db, clock, tmp_path):
    with _outage_switch(db, tmp_path) as (own, down, up):
        running = start_server(own, clock)
        try:
            email = "outage@example.com"
            register(running, email=email)
            assert health_status(running.channel) == SERVING

            down()
            assert wait_for(lambda: health_status(running.channel) == NOT_SERVING), (
                "health stayed SERVING with the database gone"
            )
            assert health_status(running.channel, "repwise.v1.AuthService") == NOT_SERVING
            error = rpc_error(
                running.auth.Login,
                auth_pb2.LoginRequest(email=email, password=PASSWORD),
                timeout=15,
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert_no_leak(details(error))

            up()
            assert wait_for(lambda: health_status(running.channel) == SERVING), (
                "health did not come back once the database was reachable again"
            )
            for name in REPWISE_SERVICES:
                assert health_status(running.channel, name) == SERVING
            login = running.auth.Login(
                auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=15
            )
            assert login.user.email == email
        finally:
            running.channel.close()
            running.server.stop(grace=0)


# --- reflection ----------------------------------------------------------------------------


def test_reflection_lists_and_describes_services_without_a_token(server):
    reflection_db = ProtoReflectionDescriptorDatabase(server.channel)
    services = set(reflection_db.get_services())
    assert {
        *REPWISE_SERVICES,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services

    # Symbols resolve to their file (what grpcurl asks before calling a method). Method
    # names themselves are not symbols the upb descriptor pool resolves, so go via the service.
    fresh = ProtoReflectionDescriptorDatabase(server.channel)
    assert fresh.FindFileContainingSymbol("repwise.v1.AuthService").name == "repwise/v1/auth.proto"
    with pytest.raises(KeyError):
        fresh.FindFileContainingSymbol("repwise.v1.NoSuchService")

    pool = descriptor_pool.DescriptorPool(reflection_db)
    service = pool.FindServiceByName("repwise.v1.AuthService")  # loads auth.proto and its deps
    login = pool.FindMethodByName("repwise.v1.AuthService.Login")
    assert service.methods_by_name["Login"].full_name == login.full_name
    assert login.input_type.full_name == "repwise.v1.LoginRequest"
    assert login.output_type.full_name == "repwise.v1.LoginResponse"
    assert "password" in login.input_type.fields_by_name
    assert {"Register", "Login", "GetMe"} <= set(service.methods_by_name)


# --- message size (TESTPLAN 18) ------------------------------------------------------------


def test_oversized_request_is_resource_exhausted(db, clock):
    running = start_server(db, clock, max_message_bytes=64 * 1024)
    try:
        big = auth_pb2.RegisterRequest(
            email="big@example.com", password=PASSWORD, display_name="x" * 200_000
        )
        error = rpc_error(running.auth.Register, big, timeout=10)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # Still serving, and nothing was created by the refused call.
        registered = register(running, email="big@example.com")
        assert registered.user.email == "big@example.com"
        assert health_status(running.channel) == SERVING
    finally:
        running.channel.close()
        running.server.stop(grace=0)


# --- request ids ---------------------------------------------------------------------------


def _request_id(call: Any) -> str:
    """The x-request-id the server sent back (a grpc.Call or the RpcError of a failed one)."""
    values = [v for k, v in call.initial_metadata() if k == "x-request-id"]
    assert len(values) == 1, call.initial_metadata()
    return values[0]


def test_every_call_gets_a_request_id(server):
    _, first = server.auth.Register.with_call(
        auth_pb2.RegisterRequest(email="rid1@example.com", password=PASSWORD)
    )
    _, second = server.auth.Register.with_call(
        auth_pb2.RegisterRequest(email="rid2@example.com", password=PASSWORD)
    )
    ids = {_request_id(first), _request_id(second)}
    assert len(ids) == 2
    for request_id in ids:
        assert 8 <= len(request_id) <= 64


def test_well_formed_client_request_id_is_echoed(server):
    given = "client-42:abc.DEF_9"
    _, call = server.auth.Register.with_call(
        auth_pb2.RegisterRequest(email="echo@example.com", password=PASSWORD),
        metadata=(("x-request-id", given),),
    )
    assert _request_id(call) == given

    # Also on a failing call, and in the error's ErrorInfo.
    error = rpc_error(
        server.auth.Register,
        auth_pb2.RegisterRequest(email="nope", password=PASSWORD),
        metadata=(("x-request-id", given),),
    )
    assert _request_id(error) == given
    assert error_info(error).metadata["request_id"] == given


@pytest.mark.parametrize("given", ["has spaces in it", "a" * 200, "semi;colon", ""])
def test_malformed_client_request_id_is_replaced(server, given):
    _, call = server.auth.Register.with_call(
        auth_pb2.RegisterRequest(email="bad-rid@example.com", password=PASSWORD),
        metadata=(("x-request-id", given),),
    )
    request_id = _request_id(call)
    assert request_id != given
    assert request_id and " " not in request_id and len(request_id) <= 64


# --- error mapping (TESTPLAN 19, 24) -------------------------------------------------------


def test_unexpected_error_is_internal_with_request_id_only(server, monkeypatch):
    user = register(server)

    def boom() -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(server.server.auth, "get_me", boom)
    error = rpc_error(
        server.auth.GetMe,
        auth_pb2.GetMeRequest(),
        metadata=(*bearer(user.access_token), ("x-request-id", "trace-internal-1")),
    )
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "trace-internal-1" in details(error)
    assert_no_leak(details(error))
    assert "RuntimeError" not in details(error)

    # Without a client id the generated one (from the initial metadata) is in the message.
    error = rpc_error(
        server.auth.GetMe, auth_pb2.GetMeRequest(), metadata=bearer(user.access_token)
    )
    assert error.code() == grpc.StatusCode.INTERNAL
    assert _request_id(error) in details(error)
    assert_no_leak(details(error))


class _Teapot(DomainError):
    status = "FAILED_PRECONDITION"
    reason = "TEAPOT"


@pytest.mark.parametrize(
    ("raised", "code", "reason"),
    [
        (_Teapot("short and stout"), grpc.StatusCode.FAILED_PRECONDITION, "TEAPOT"),
        (NotFound("nothing here", reason="GONE"), grpc.StatusCode.NOT_FOUND, "GONE"),
    ],
)
def test_domain_error_keeps_its_own_code(server, monkeypatch, raised, code, reason):
    user = register(server)

    def fail() -> None:
        raise raised

    monkeypatch.setattr(server.server.auth, "get_me", fail)
    error = rpc_error(
        server.auth.GetMe, auth_pb2.GetMeRequest(), metadata=bearer(user.access_token)
    )
    assert error.code() == code
    assert details(error) == raised.message
    info = error_info(error)
    assert (info.domain, info.reason) == ("repwise.v1", reason)
    assert info.metadata["request_id"] == _request_id(error)


@pytest.mark.parametrize(
    "raised",
    [
        sa_exc.OperationalError(
            "SELECT password_hash FROM users", {}, Exception("psycopg2 could not connect")
        ),
        sa_exc.TimeoutError("QueuePool limit of size 16 overflow 16 reached"),
    ],
    ids=["operational", "pool-timeout"],
)
def test_database_errors_are_unavailable(server, monkeypatch, raised):
    user = register(server)

    def fail() -> None:
        raise raised

    monkeypatch.setattr(server.server.auth, "get_me", fail)
    error = rpc_error(
        server.auth.GetMe, auth_pb2.GetMeRequest(), metadata=bearer(user.access_token)
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert_no_leak(details(error))
    assert "QueuePool" not in details(error)


def test_invalid_argument_carries_error_info_and_bad_request(server):
    error = rpc_error(
        server.auth.Register, auth_pb2.RegisterRequest(email="nope", password=PASSWORD)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "email" in details(error)

    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == details(error)
    info = error_info(error)
    assert info.domain == "repwise.v1"
    assert info.reason
    assert info.metadata["field"] == "email"
    assert info.metadata["request_id"] == _request_id(error)

    bad_requests = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            bad_requests.append(bad_request)
    assert len(bad_requests) == 1
    violations = bad_requests[0].field_violations
    assert [v.field for v in violations] == ["email"]
    assert violations[0].description


# --- graceful stop (TESTPLAN 23) -----------------------------------------------------------


def test_stop_lets_in_flight_calls_finish_and_refuses_new_ones(db, clock, monkeypatch):
    running = start_server(db, clock)
    try:
        user = register(running)
        auth_service = running.server.auth
        real_get_me = auth_service.get_me
        started = threading.Event()

        def slow_get_me():  # type: ignore[no-untyped-def,unused-ignore]
            started.set()
            time.sleep(2.0)
            return real_get_me()

        monkeypatch.setattr(auth_service, "get_me", slow_get_me)
        outcome: dict[str, object] = {}

        def in_flight() -> None:
            try:
                outcome["response"] = running.auth.GetMe(
                    auth_pb2.GetMeRequest(), metadata=bearer(user.access_token), timeout=10
                )
            except grpc.RpcError as error:
                outcome["error"] = error
            outcome["finished_at"] = time.monotonic()

        caller = threading.Thread(target=in_flight)
        caller.start()
        assert started.wait(5), "the slow call never reached the server"

        stopper = threading.Thread(target=running.server.stop, kwargs={"grace": 5})
        stopper.start()

        # While draining: health is NOT_SERVING or the server refuses the call outright.
        def health_is_down() -> bool:
            try:
                return health_status(running.channel) == NOT_SERVING
            except grpc.RpcError as error:
                return error.code() == grpc.StatusCode.UNAVAILABLE

        assert wait_for(health_is_down, 1.0)
        fresh = grpc.insecure_channel(running.target)
        try:
            error = rpc_error(
                auth_pb2_grpc.AuthServiceStub(fresh).Login,
                auth_pb2.LoginRequest(email=user.user.email, password=PASSWORD),
                timeout=2,
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            fresh.close()
        observed_during_drain = time.monotonic()
        assert "finished_at" not in outcome, "the in-flight call ended before the checks above"

        caller.join(10)
        stopper.join(10)
        assert not caller.is_alive() and not stopper.is_alive()
        assert "error" not in outcome, outcome.get("error")
        response = outcome["response"]
        assert response.user.id == user.user.id  # type: ignore[attr-defined]
        assert outcome["finished_at"] > observed_during_drain  # type: ignore[operator]

        # After the stop every call is refused.
        error = rpc_error(
            running.auth.Login,
            auth_pb2.LoginRequest(email=user.user.email, password=PASSWORD),
            timeout=2,
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.channel.close()
        running.server.stop(grace=0)


def test_stop_cuts_calls_that_outlast_the_grace_period(db, clock, monkeypatch):
    running = start_server(db, clock)
    try:
        user = register(running)
        real_get_me = running.server.auth.get_me
        started, done = threading.Event(), threading.Event()

        def slow_get_me():  # type: ignore[no-untyped-def,unused-ignore]
            started.set()
            try:
                time.sleep(1.0)
                return real_get_me()
            finally:
                done.set()

        monkeypatch.setattr(running.server.auth, "get_me", slow_get_me)
        outcome: dict[str, grpc.RpcError] = {}

        def in_flight() -> None:
            try:
                running.auth.GetMe(
                    auth_pb2.GetMeRequest(), metadata=bearer(user.access_token), timeout=10
                )
            except grpc.RpcError as error:
                outcome["error"] = error

        caller = threading.Thread(target=in_flight)
        caller.start()
        assert started.wait(5)
        began = time.monotonic()
        running.server.stop(grace=0.2)
        assert time.monotonic() - began < 1.2, "stop waited past its grace period"
        caller.join(5)
        assert not caller.is_alive()
        assert "error" in outcome, "a call longer than the grace period was not cut"
        assert outcome["error"].code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
        )
        assert done.wait(5)  # the abandoned handler ends before the tables are emptied
    finally:
        running.channel.close()
        running.server.stop(grace=0)


def test_stop_is_idempotent(db, clock):
    running = start_server(db, clock)
    running.server.stop(grace=0)
    running.server.stop(grace=0)  # second call returns at once
    error = rpc_error(
        health_pb2_grpc.HealthStub(running.channel).Check,
        health_pb2.HealthCheckRequest(),
        timeout=2,
    )
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    running.channel.close()
