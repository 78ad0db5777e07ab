"""Abuse cases from review: abandoned sign-ins, open streams, stale failures, password races."""

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from repwise.v1 import auth_pb2
from tests.conftest import PASSWORD, error_info, register, rpc_error, start_server


@pytest.fixture
def slow_hash_server(db, clock):
    running = start_server(db, clock, bcrypt_rounds=12)
    yield running
    running.channel.close()
    running.server.stop(grace=0)


def login(server, email, password=PASSWORD, **kwargs):
    return server.auth.Login(auth_pb2.LoginRequest(email=email, password=password), **kwargs)


def test_sign_ins_abandoned_at_their_deadline_do_not_lock_the_email(slow_hash_server, db):
    account = register(slow_hash_server)
    for _ in range(5):
        error = rpc_error(login, slow_hash_server, account.user.email, timeout=0.02)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server finishes the abandoned checks and must give their places back.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            pending = conn.execute(text("SELECT coalesce(sum(pending), 0) FROM login_throttles"))
            if pending.scalar() == 0:
                break
        time.sleep(0.1)
    assert login(slow_hash_server, account.user.email, timeout=10).user.id == account.user.id


def test_streams_beyond_the_cap_are_refused_and_do_not_starve_calls(db, clock):
    running = start_server(db, clock, max_workers=4)  # room for 2 streams
    health = health_pb2_grpc.HealthStub(running.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
    try:
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        refused = health.Watch(health_pb2.HealthCheckRequest())
        error = rpc_error(next, refused)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(error).reason == "TOO_MANY_STREAMS"
        account = register(running)
        assert login(running, account.user.email, timeout=5).user.id == account.user.id
    finally:
        for watch in watches:
            watch.cancel()
    deadline = time.monotonic() + 5
    while True:  # cancelled streams give their places back
        try:
            assert next(health.Watch(health_pb2.HealthCheckRequest(), timeout=2)).status
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    running.channel.close()
    running.server.stop(grace=0)


def test_failures_long_ago_stop_counting(server, clock):
    clock.freeze()
    account = register(server)
    for _ in range(4):
        assert rpc_error(login, server, account.user.email, "wrong password").code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    clock.advance(24 * 3600 + 1)
    # A typo a day later is the first failure again, not the fifth.
    for _ in range(4):
        assert rpc_error(login, server, account.user.email, "wrong password").code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    assert login(server, account.user.email).user.id == account.user.id


def test_a_sign_in_checked_before_a_password_change_starts_no_session(server, db, monkeypatch):
    account = register(server)
    hasher = server.server.hasher
    real_verify = hasher.verify

    def verify_then_change_password(password, hashed):
        ok = real_verify(password, hashed)
        with db.engine.begin() as conn:  # the owner changes the password meanwhile
            conn.execute(
                text("UPDATE users SET password_hash = :h WHERE id = :i"),
                {"h": hasher.hash(b"a brand new password"), "i": account.user.id},
            )
        return ok

    monkeypatch.setattr(hasher, "verify", verify_then_change_password)
    error = rpc_error(login, server, account.user.email)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    with db.engine.connect() as conn:
        sessions = conn.execute(
            text("SELECT count(*) FROM auth_sessions WHERE user_id = :i"), {"i": account.user.id}
        ).scalar()
    assert sessions == 1  # only the one Register started


def test_stale_throttles_are_purged_and_live_ones_kept(server, clock, db):
    clock.freeze()
    stale, recent = "stale@example.com", "recent@example.com"
    rpc_error(login, server, stale, "wrong password")
    clock.advance(24 * 3600 + 1)
    rpc_error(login, server, recent, "wrong password")
    assert server.server.auth.purge_stale_throttles() == 1
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM login_throttles")).scalar() == 1
