"""`repwise serve --workers N` as an operator runs it: the parent migrates once and forks N
workers that share one port; calls on many connections reach several workers and all of
them work (one database, one signing key); SIGTERM stops every worker and the parent."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from repwise.v1 import auth_pb2, auth_pb2_grpc, log_pb2, log_pb2_grpc
from tests.conftest import PASSWORD
from tests.test_cli import REPWISE, cli_env, sqlite_url


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def start_serve(
    tmp_path: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`repwise serve --port 0 ARGS` in tmp_path; its stdout and stderr go to files there."""
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [str(REPWISE), "serve", "--port", "0", *args],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
        )
    return process, out, err


def test_workers_share_the_port_and_stop_together(tmp_path):
    env = cli_env(sqlite_url(tmp_path / "repwise.db"), REPWISE_GRACE_SECONDS="3")
    process, out, err = start_serve(tmp_path, env, "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while not (
            match := re.search(r"serving on 127\.0\.0\.1:(\d+) .* 2 workers", out.read_text())
        ):
            assert process.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.05)
        port = int(match.group(1))
        workers = children(process.pid)
        assert len(workers) == 2
        # Migrated once, by the parent: alembic ran once (it logs its context each run).
        logs = err.read_text()
        assert logs.count("Context impl") == 1 and logs.count("Running upgrade  -> 0001") == 1

        first = grpc.insecure_channel(f"127.0.0.1:{port}")
        auth = auth_pb2_grpc.AuthServiceStub(first)
        auth.Register(auth_pb2.RegisterRequest(email="w@example.com", password=PASSWORD))
        token = auth.Login(auth_pb2.LoginRequest(email="w@example.com", password=PASSWORD))
        md = (("authorization", f"Bearer {token.access_token}"),)
        first.close()

        before = {pid: cpu_ticks(pid) for pid in workers}
        for _ in range(40):  # a new connection each time: the kernel picks a worker
            channel = grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            try:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                # Every worker knows the user and checks the token with the same key.
                listed = log_pb2_grpc.LogServiceStub(channel).ListWorkouts(
                    log_pb2.ListWorkoutsRequest(), metadata=md, timeout=10
                )
                assert list(listed.workouts) == []
            finally:
                channel.close()
        busy = [pid for pid in workers if cpu_ticks(pid) > before[pid]]
        assert len(busy) == 2, "the connections all went to one worker"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, err.read_text()[-3000:]
        assert "Traceback" not in err.read_text()
        for pid in workers:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            )
    finally:
        if process.poll() is None:
            for pid in children(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait(10)


def test_workers_must_be_positive(tmp_path):
    env = cli_env(sqlite_url(tmp_path / "repwise.db"))
    done = subprocess.run(
        [str(REPWISE), "serve", "--port", "0", "--workers", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers" in done.stderr


def test_workers_refuse_to_start_on_an_unusable_database(tmp_path):
    # The parent migrates in a short-lived child: its failure must still end the command
    # with the same one-line message a single-process server gives, and fork no workers.
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    result = subprocess.run(
        [str(REPWISE), "serve", "--port", "0", "--workers", "2"],
        env=cli_env(sqlite_url(not_a_dir / "repwise.db"), REPWISE_JWT_SECRET="s" * 40),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "repwise: cannot use the database:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving on" not in result.stdout
