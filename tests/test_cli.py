"""The `repwise` console script as an operator runs it: migrate, admin, serve (with SIGTERM),
and configuration errors. Every test runs the installed script in a subprocess."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import grpc
import jwt
import pytest
from alembic.script import ScriptDirectory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, inspect, text

from repwise.v1 import auth_pb2, auth_pb2_grpc
from server.migrate import alembic_config
from tests.conftest import PASSWORD, register

REPWISE = Path(sys.executable).parent / "repwise"
TABLES = {"users", "auth_sessions", "refresh_tokens", "login_throttles", "alembic_version"}
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPWISE_")}
    env.update(REPWISE_DATABASE_URL=database_url, REPWISE_BCRYPT_ROUNDS="4")
    env.update(extra)
    return env


def repwise(
    *args: str, env: dict[str, str], cwd: Path, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    assert REPWISE.exists(), f"console script missing at {REPWISE}"
    return subprocess.run(
        [str(REPWISE), *args],
        input=stdin,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def revision(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()


def user_row(url: str, email: str) -> tuple[str, str] | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT role, password_hash FROM users WHERE email = :e"), {"e": email}
            ).one_or_none()
            return None if row is None else (row[0], row[1])
    finally:
        engine.dispose()


# --- migrate -------------------------------------------------------------------------------


def test_migrate_creates_the_schema_and_is_idempotent(tmp_path):
    url = sqlite_url(tmp_path / "fresh.db")
    env = cli_env(url)
    first = repwise("migrate", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "database is at revision head" in first.stdout
    assert table_names(url) >= TABLES
    assert revision(url) == HEAD

    second = repwise("migrate", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert table_names(url) >= TABLES
    assert revision(url) == HEAD
    assert "Traceback" not in first.stderr + second.stderr


def test_migrate_tolerates_an_already_migrated_database_and_keeps_data(
    server, database_url, tmp_path
):
    """On both backends: the session's database already has every migration applied."""
    email = "kept@example.com"
    register(server, email=email)
    result = repwise("migrate", env=cli_env(database_url), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert revision(database_url) == HEAD
    assert table_names(database_url) >= TABLES
    login = server.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    assert login.user.email == email


def test_migrate_with_an_unreachable_database_fails_cleanly(tmp_path):
    result = repwise(
        "migrate",
        env=cli_env("postgresql+psycopg2://postgres@127.0.0.1:1/none"),
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "database" in result.stderr.lower()


# --- admin ---------------------------------------------------------------------------------


def test_admin_create_and_its_errors(tmp_path):
    url = sqlite_url(tmp_path / "admin.db")
    env = cli_env(url)

    created = repwise(
        "admin",
        "create",
        "--email",
        "Boss@Example.com",
        env=env,
        cwd=tmp_path,
        stdin=f"{PASSWORD}\n",
    )
    assert created.returncode == 0, created.stderr
    assert "created admin boss@example.com" in created.stdout
    row = user_row(url, "boss@example.com")
    assert row is not None
    role, password_hash = row
    assert role == "admin"
    assert bcrypt.checkpw(PASSWORD.encode(), password_hash.encode())
    assert PASSWORD not in created.stdout + created.stderr

    again = repwise(
        "admin",
        "create",
        "--email",
        "boss@example.com",
        env=env,
        cwd=tmp_path,
        stdin=f"{PASSWORD}\n",
    )
    assert again.returncode != 0
    assert "promote" in again.stderr
    assert "Traceback" not in again.stderr

    unknown = repwise("admin", "promote", "--email", "someone@example.com", env=env, cwd=tmp_path)
    assert unknown.returncode != 0
    assert "no user has the email someone@example.com" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    invalid = repwise("admin", "promote", "--email", "someone", env=env, cwd=tmp_path)
    assert invalid.returncode != 0
    assert "email" in invalid.stderr
    assert "Traceback" not in invalid.stderr


@pytest.mark.parametrize(
    ("password", "message"),
    [("é" * 40, "72 bytes"), ("short", "at least 8 characters"), ("", "at least 8 characters")],
    ids=["80-bytes", "short", "empty"],
)
def test_admin_create_refuses_bad_passwords(tmp_path, password, message):
    url = sqlite_url(tmp_path / "admin.db")
    result = repwise(
        "admin",
        "create",
        "--email",
        "boss@example.com",
        env=cli_env(url),
        cwd=tmp_path,
        stdin=f"{password}\n",
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert user_row(url, "boss@example.com") is None


# --- serve ---------------------------------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    channel: grpc.Channel
    auth: auth_pb2_grpc.AuthServiceStub
    stdout: Path
    stderr: Path

    def logs(self) -> str:
        return self.stderr.read_text()


@contextmanager
def serving(env: dict[str, str], cwd: Path, startup_seconds: float = 30) -> Iterator[Served]:
    stdout, stderr = cwd / "serve.out", cwd / "serve.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [str(REPWISE), "serve", "--port", "0"],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            text=True,
        )
    channel: grpc.Channel | None = None
    try:
        deadline = time.monotonic() + startup_seconds
        match = None
        while match is None:
            match = re.search(r"repwise serving on 127\.0\.0\.1:(\d+) ", stdout.read_text())
            if match:
                break
            assert process.poll() is None, f"serve exited early:\n{stderr.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no port printed:\n{stderr.read_text()[-3000:]}"
            time.sleep(0.05)
        port = int(match.group(1))
        assert port > 0
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=10)
        yield Served(process, port, channel, auth_pb2_grpc.AuthServiceStub(channel), stdout, stderr)
    finally:
        if channel is not None:
            channel.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)


def throttle_rows(db_file: Path, email: str) -> int:
    key = hashlib.sha256(email.encode()).hexdigest()
    conn = sqlite3.connect(db_file, timeout=5)
    try:
        return conn.execute(
            "SELECT count(*) FROM login_throttles WHERE email_key = ?", (key,)
        ).fetchone()[0]
    finally:
        conn.close()


def test_serve_generates_a_secret_serves_and_drains_on_sigterm(tmp_path):
    db_file = tmp_path / "repwise.db"
    secret_file = tmp_path / "repwise.db.jwt.secret"
    env = cli_env(sqlite_url(db_file), REPWISE_BCRYPT_ROUNDS="13", REPWISE_GRACE_SECONDS="5")
    assert not secret_file.exists()
    with serving(env, tmp_path) as served:
        # No REPWISE_JWT_SECRET: one was generated beside the database, readable only by us.
        assert secret_file.exists()
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret.encode()) >= 32
        assert "REPWISE_JWT_SECRET is not set" in served.logs()

        email = "slow@example.com"
        registered = served.auth.Register(
            auth_pb2.RegisterRequest(email=email, password=PASSWORD), timeout=20
        )
        login = served.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=20)
        claims = jwt.decode(
            login.access_token, secret, algorithms=["HS256"], audience="repwise-api"
        )
        assert claims["sub"] == registered.user.id
        me = served.auth.GetMe(
            auth_pb2.GetMeRequest(),
            metadata=(("authorization", f"Bearer {login.access_token}"),),
            timeout=10,
        ).user
        assert (me.email, me.role) == (email, auth_pb2.ROLE_USER)

        # A sign-in is in flight (its attempt is recorded before the bcrypt check at
        # cost 13) when SIGTERM arrives: it still completes.
        assert throttle_rows(db_file, email) == 0
        outcome: dict[str, object] = {}

        def sign_in() -> None:
            try:
                outcome["response"] = served.auth.Login(
                    auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=20
                )
            except grpc.RpcError as error:
                outcome["error"] = error

        caller = threading.Thread(target=sign_in)
        caller.start()
        deadline = time.monotonic() + 10
        while throttle_rows(db_file, email) == 0 and "error" not in outcome:
            assert time.monotonic() < deadline, "the sign-in never reached the server"
            time.sleep(0.005)
        assert "response" not in outcome, "sign-in finished before SIGTERM could be sent"
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)

        caller.join(20)
        assert not caller.is_alive()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["response"].user.email == email  # type: ignore[attr-defined]

        returncode = served.process.wait(timeout=10)
        assert returncode == 0, served.logs()[-3000:]
        assert time.monotonic() - signalled < 5 + 1, "did not exit within the grace period"

        logs = served.logs()
        assert "received SIGTERM" in logs
        assert "Traceback" not in logs

        # Nothing listens any more.
        after = grpc.insecure_channel(f"127.0.0.1:{served.port}")
        try:
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(after).Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            after.close()


def test_admin_created_before_serving_signs_in_as_admin(tmp_path):
    db_file = tmp_path / "repwise.db"
    secret_file = tmp_path / "repwise.db.jwt.secret"
    env = cli_env(sqlite_url(db_file))
    created = repwise(
        "admin",
        "create",
        "--email",
        "Boss@Example.com",
        env=env,
        cwd=tmp_path,
        stdin=f"{PASSWORD}\n",
    )
    assert created.returncode == 0, created.stderr
    secret = secret_file.read_text()

    with serving(env, tmp_path) as served:
        assert secret_file.read_text() == secret, "serve replaced the existing secret"
        boss = served.auth.Login(
            auth_pb2.LoginRequest(email="boss@example.com", password=PASSWORD), timeout=10
        )
        assert boss.user.role == auth_pb2.ROLE_ADMIN
        jwt.decode(boss.access_token, secret.strip(), algorithms=["HS256"], audience="repwise-api")

        # `admin promote` works against a running server's database.
        served.auth.Register(
            auth_pb2.RegisterRequest(email="ann@example.com", password=PASSWORD), timeout=10
        )
        promoted = repwise("admin", "promote", "--email", "Ann@Example.com", env=env, cwd=tmp_path)
        assert promoted.returncode == 0, promoted.stderr
        assert "ann@example.com is now an admin" in promoted.stdout
        ann = served.auth.Login(
            auth_pb2.LoginRequest(email="ann@example.com", password=PASSWORD), timeout=10
        )
        assert ann.user.role == auth_pb2.ROLE_ADMIN
        me = served.auth.GetMe(
            auth_pb2.GetMeRequest(),
            metadata=(("authorization", f"Bearer {ann.access_token}"),),
            timeout=10,
        ).user
        assert me.role == auth_pb2.ROLE_ADMIN


# --- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "command"),
    [
        ("REPWISE_JWT_SECRET", "too-short", "serve"),
        ("REPWISE_PORT", "abc", "serve"),
        ("REPWISE_PORT", "70000", "serve"),
        ("REPWISE_BCRYPT_ROUNDS", "99", "serve"),
        ("REPWISE_GRACE_SECONDS", "soon", "serve"),
        ("REPWISE_DATABASE_URL", "not a database url", "migrate"),
        ("REPWISE_TLS_CERT_FILE", "/nonexistent/cert.pem", "serve"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(tmp_path, variable, value, command):
    env = cli_env(sqlite_url(tmp_path / "repwise.db"), **{variable: value})
    if command != "serve":
        args: tuple[str, ...] = (command,)
    elif variable == "REPWISE_PORT":
        args = ("serve",)  # --port would override the variable
    else:
        args = ("serve", "--port", "0")
    result = repwise(*args, env=env, cwd=tmp_path, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    assert variable in result.stderr
    assert "configuration error" in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving" not in result.stdout
