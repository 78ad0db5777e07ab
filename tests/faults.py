"""Fault injection for the scenario tests (tests/test_faults_*.py).

- `CallLog.until_answered`: a client's retry loop (the same request again after a retryable
  status), recording every attempt's status and duration.
- `DroppingProxy`: a TCP proxy in front of the gRPC server that cuts a connection just as the
  server finishes a call (the HTTP/2 frame carrying its status), so the server has done the
  work but the client never learns the outcome and must retry.
- `OwnPostgres`: a PostgreSQL cluster of the test's own, on a free port, that the test may
  stop (as a crash would) and start again.
- `fresh_database`: an empty database (SQLite file, or a new database on the shared
  PostgreSQL server) for a server in a subprocess.
- `kill_when`: SIGKILL a process at a moment a condition holds, looked at while the process
  is stopped, so it cannot move on between the look and the kill.
- Workouts of a known shape, and checks that each stored workout is whole: every exercise
  and set the client sent, or no row at all.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from sqlalchemy import Row, bindparam, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from repwise.v1 import common_pb2, log_pb2
from tests.conftest import postgres_database

T = TypeVar("T")
# Exercises of the default catalog, by slug (the server resolves slugs).
SLUGS = (
    "barbell-bench-press",
    "barbell-back-squat",
    "barbell-deadlift",
    "barbell-overhead-press",
    "dumbbell-lateral-raise",
    "pull-up",
)

# HTTP/2 (RFC 9113 §4.1, §6.2): a frame header is 9 bytes; HEADERS is type 1; END_STREAM is
# flag 0x1. Server to client, a HEADERS frame with END_STREAM carries a call's status.
FRAME_HEADER = 9
HEADERS = 0x1
END_STREAM = 0x1

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


def wait_until(predicate: Callable[[], bool], seconds: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class CallLog:
    """Every attempt of every call the clients made: (status name, start, seconds)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: list[tuple[str, float, float]] = []

    def codes(self) -> Counter[str]:
        with self.lock:
            return Counter(code for code, _, _ in self.attempts)

    def until_answered(
        self, call: Callable[[], T], rng: random.Random, retryable: frozenset[grpc.StatusCode]
    ) -> T:
        """Send the same call again after a retryable status (jittered backoff, up to 0.5 s)
        until it is answered; any other status is raised."""
        for attempt in range(400):
            started = time.monotonic()
            try:
                result = call()
            except grpc.RpcError as error:
                with self.lock:
                    self.attempts.append((error.code().name, started, time.monotonic() - started))
                if error.code() not in retryable:
                    raise
                time.sleep(min(0.5, 0.01 * 2 ** min(attempt, 6)) * rng.random())
                continue
            with self.lock:
                self.attempts.append(("OK", started, time.monotonic() - started))
            return result
        raise AssertionError("a call was never answered")


# --- a proxy that loses answers ---------------------------------------------------------


class DroppingProxy:
    """Forwards 127.0.0.1:`port` to `target`. With probability `drop_rate`, the frame that
    ends a call on its way back to the client is not forwarded and the connection is cut
    instead. Seeded: the decisions come from one random.Random(seed)."""

    def __init__(self, target: tuple[str, int], drop_rate: float, seed: int) -> None:
        self.target = target
        self.drop_rate = drop_rate
        self.cuts = 0
        self.calls_ended = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client), daemon=True).start()

    def _cut(self, *pair: socket.socket) -> None:
        with self._lock:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
                self._sockets.discard(s)

    def _forward(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        self._cut(source, sink)

    def _answers(self, source: socket.socket, sink: socket.socket) -> None:
        """Server to client, frame by frame, cutting at some calls' final frame."""
        pending = b""
        try:
            while data := source.recv(65536):
                pending += data
                out = bytearray()
                while len(pending) >= FRAME_HEADER:
                    size = FRAME_HEADER + int.from_bytes(pending[:3], "big")
                    if len(pending) < size:
                        break
                    frame, pending = pending[:size], pending[size:]
                    if frame[3] == HEADERS and frame[4] & END_STREAM:
                        with self._lock:
                            self.calls_ended += 1
                            drop = self._rng.random() < self.drop_rate
                            self.cuts += drop
                        if drop:
                            sink.sendall(out)  # everything before the status
                            self._cut(source, sink)
                            return
                    out += frame
                sink.sendall(out)
        except OSError:
            pass
        self._cut(source, sink)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        self._listener.close()
        self._cut(*sockets)


# --- a PostgreSQL cluster of the test's own ---------------------------------------------


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    assert initdb, "PostgreSQL server binaries (initdb, pg_ctl) are needed: apt install postgresql"
    return Path(initdb).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnPostgres:
    """A throwaway cluster (trust auth, no fsync) in a temporary folder. initdb refuses to
    run as root, so as root every command runs as the `postgres` OS user, who owns the folder."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="repwise-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{tool} failed: {done.stdout}\n{done.stderr}\n{self._log()}"

    def _log(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """`immediate` is a crash: no checkpoint, every connection cut at once."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    cluster = OwnPostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


# --- a database for a server in a subprocess --------------------------------------------


@contextlib.contextmanager
def fresh_database(backend: str, folder: Path) -> Iterator[str]:
    """An empty database: a SQLite file in `folder`, or a new database on the shared
    PostgreSQL server, dropped afterwards (even with a killed server still connected)."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'repwise.db'}"
        return
    with postgres_database("repwise_fault") as url:
        yield url


def named(url: str, name: str) -> str:
    """`url` with its PostgreSQL sessions named `name` (application_name), so that a test can
    tell one process's sessions apart; a SQLite URL as it is."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.update_query_dict({"application_name": name}).render_as_string(
        hide_password=False
    )


def sessions(url: str, name: str, state: str = "") -> int:
    """How many PostgreSQL sessions named `name` are open (only those in `state`, if given);
    0 on SQLite."""
    if url.startswith("sqlite"):
        return 0
    (count,) = query(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = :name AND (:state = '' OR state = :state)",
        name=name,
        state=state,
    )
    return int(count[0])


def sqlite_write_locked(url: str) -> bool:
    """Whether some other connection holds an open write transaction on the SQLite database."""
    conn = sqlite3.connect(make_url(url).database or "", timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as error:  # "database is locked": another writer
        assert "locked" in str(error), error
        return True
    finally:
        conn.close()


def table_write_in_progress(url: str, name: str, table: str) -> bool:
    """Whether a PostgreSQL session named `name` holds a transaction open that has written
    `table` (it holds the table's write lock). SQLite has one writer at a time and tells only
    that some other connection holds a write transaction open, not what it wrote."""
    if url.startswith("sqlite"):
        return sqlite_write_locked(url)
    (writers,) = query(
        url,
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE a.datname = current_database() AND a.application_name = :name"
        " AND a.backend_xid IS NOT NULL AND l.relation = CAST(:table AS regclass)"
        " AND l.mode = 'RowExclusiveLock'",
        name=name,
        table=table,
    )
    return bool(writers[0])


def _stop(process: subprocess.Popen[Any]) -> bool:
    """Stops `process` (SIGSTOP) and returns once it has stopped; False if it has exited."""
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGSTOP)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return True
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen never sees it
    return False


def kill_when(
    process: subprocess.Popen[Any],
    ready: Callable[[], bool],
    seconds: float,
    *,
    url: str,
    name: str,
    interval: float = 0.002,
) -> bool:
    """SIGKILL `process` at the first moment `ready()` holds, polled every `interval` while it
    runs and, once it holds, looked at again with the process stopped (SIGSTOP), so that the
    process cannot commit or finish between the look and the kill. A PostgreSQL server runs
    on with the statements a stopped client already sent (a COMMIT among them lands after the
    kill), so that second look first waits for the sessions named `name` (see `named`) to
    finish theirs, and after the kill this returns only once those sessions are gone: the
    database then holds still. False if the process ended, or `seconds` passed, first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if ready() and _stop(process):
            try:
                settled = wait_until(lambda: sessions(url, name, "active") == 0, 1, interval)
                if settled and ready():
                    process.kill()
                    process.wait(timeout=10)
                    assert wait_until(lambda: sessions(url, name) == 0, 30), (
                        "the killed process's database sessions stayed open"
                    )
                    return True
            finally:
                if process.returncode is None:
                    os.kill(process.pid, signal.SIGCONT)
        time.sleep(interval)
    return False


def workout_write_in_progress(url: str, user_ids: Sequence[str]) -> bool:
    """Whether a workout write of one of these users holds its transaction open. On PostgreSQL
    every workout write locks the user's change counter until it commits. SQLite has one
    writer at a time: a write transaction still open 0.2 s later is taken to be a workout
    write (the event relay's and training's writes are brief)."""
    if url.startswith("sqlite"):
        for _ in range(4):
            if not sqlite_write_locked(url):
                return False
            time.sleep(0.05)
        return sqlite_write_locked(url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT 1 FROM change_counters WHERE user_id IN :ids FOR UPDATE NOWAIT"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": list(user_ids)},
            )
        return False
    except OperationalError as error:  # lock_not_available: a writer holds it
        assert getattr(error.orig, "pgcode", None) == "55P03", error
        return True
    finally:
        engine.dispose()


def query(url: str, sql: str, **params: Any) -> Sequence[Row[Any]]:
    """The rows of one statement, on a connection of its own."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).all()
    finally:
        engine.dispose()


def sqlite_integrity(url: str) -> str:
    return str(query(url, "PRAGMA integrity_check")[0][0])


# --- workouts of a known shape ----------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What a whole workout has: exercises, sets and the sum of their reps."""

    exercises: int
    sets: int
    reps: int


def make_workout(
    rng: random.Random, start: datetime, *, exercises: int = 0, sets: int = 0
) -> tuple[log_pb2.Workout, Shape]:
    """A workout with a random id (from `rng`), in kg; random sizes unless given."""
    message = log_pb2.Workout(
        id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        title="Session",
        weight_unit=common_pb2.WEIGHT_UNIT_KG,
    )
    message.start_time.FromDatetime(start)
    message.end_time.FromDatetime(start + timedelta(hours=1))
    reps = count = 0
    for slug in rng.sample(SLUGS, exercises or rng.randint(1, 3)):
        performed = message.exercises.add(exercise_id=slug)
        for _ in range(sets or rng.randint(1, 4)):
            done = rng.randint(1, 12)
            performed.sets.add(reps=done, weight=float(rng.randint(20, 140)))
            reps += done
            count += 1
    return message, Shape(len(message.exercises), count, reps)


def stored_shapes(url: str) -> dict[str, Shape]:
    """Every live workout in the database (all users) by id, as stored."""
    rows = query(
        url,
        "SELECT w.id,"
        " (SELECT count(*) FROM workout_exercises e"
        "   WHERE e.user_id = w.user_id AND e.workout_id = w.id),"
        " (SELECT count(*) FROM workout_sets s"
        "   WHERE s.user_id = w.user_id AND s.workout_id = w.id),"
        " (SELECT coalesce(sum(s.reps), 0) FROM workout_sets s"
        "   WHERE s.user_id = w.user_id AND s.workout_id = w.id)"
        " FROM workouts w WHERE w.deleted_at IS NULL",
    )
    ids = [row[0] for row in rows]
    assert len(ids) == len(set(ids)), "a workout id is stored twice"
    return {row[0]: Shape(int(row[1]), int(row[2]), int(row[3])) for row in rows}


def assert_whole(stored: dict[str, Shape], sent: dict[str, Shape]) -> None:
    """Every stored workout is one that was sent, with all of its exercises and sets."""
    unknown = set(stored) - set(sent)
    assert not unknown, f"stored workouts nobody sent: {sorted(unknown)[:5]}"
    broken = {i: (stored[i], sent[i]) for i in stored if stored[i] != sent[i]}
    assert not broken, f"half-written workouts (stored, sent): {list(broken.items())[:5]}"


def batches_all_or_nothing(stored: dict[str, Shape], batches: Sequence[Sequence[str]]) -> None:
    """A SyncWorkouts call is one transaction: each batch is stored wholly or not at all."""
    for batch in batches:
        present = sum(i in stored for i in batch)
        assert present in (0, len(batch)), f"{present} of a batch of {len(batch)} stored"
