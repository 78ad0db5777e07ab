"""repwise benchmarks on PostgreSQL, each as a ratio to a bare grpcio server measured in the
same run with the same load generator. `make bench` runs this; it writes docs/benchmarks.md.

repwise runs as `repwise serve --workers N` (N = the CPUs, REPWISE_BENCH_WORKERS overrides).
The unary baseline is the bare echo server run both ways, N processes sharing the port (the
same shape as repwise: the ratio the goal is judged on) and one process; both are reported.

  1. CreateWorkout, retry (same id): h2load sends one CreateWorkout body over and over, so
     after the first call every call takes the idempotent-retry path. Baseline: h2load against
     the bare echo server with the same body.
  2. CreateWorkout, new rows, one user: h2load sends one body for every request, so distinct
     workouts need a Python load generator (bench/client.py); every call carries a fresh UUID.
     Baseline: the same Python client against the bare echo server, same bytes, same
     concurrency. One user's creates run one at a time (the per-user change lock).
  3. CreateWorkout, new rows, 16 users: the same, each call slot signed in as its own user.
  4. StreamHistory: a Python client streams a whole history in the columnar form
     (StreamHistoryRequest.columnar, chunk_size default), decodes each message and counts
     sets/s. Baseline: the same client reading one small message per set from a bare grpcio
     streaming server (the one-message-per-set ceiling). The per-entry form is measured too,
     for reference.

Every measurement has a warm-up, then 5 repetitions alternating baselines and repwise; the
suite runs twice (two rounds). Reported: medians (min-max) and the ratio of the medians.
PostgreSQL: 127.0.0.1:5432, user postgres (REPWISE_BENCH_POSTGRES_URL overrides); the script
creates a database of its own and drops it at the end. h2load (Debian's nghttp2-client) is
installed with apt-get when missing.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import ECHO_METHOD, STREAM_METHOD
from client import Job, LoadGenerator

from repwise.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    log_pb2,
    log_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
PG_ADMIN_URL = os.environ.get(
    "REPWISE_BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
ROUNDS = 2
REPS = 5
UNARY_SECONDS = 2  # per repetition (h2load -D takes whole seconds)
WARMUP_SECONDS = 1
H2LOAD_CLIENTS = 8  # h2load -c (connections, spread over the server processes)
H2LOAD_STREAMS = 2  # h2load -m; × H2LOAD_CLIENTS = calls in flight
PY_PROCESSES = 2  # Python load generator; × PY_CONCURRENCY = calls in flight
PY_CONCURRENCY = 8
USERS = PY_PROCESSES * PY_CONCURRENCY  # the many-users create: one user per call slot
WORKERS = int(os.environ.get("REPWISE_BENCH_WORKERS", len(os.sched_getaffinity(0))))
EXERCISES = 5
SETS = 4
HISTORY_WORKOUTS = 2000
SYNC_BATCH = 500
GOAL_CREATE = 0.35
GOAL_STREAM = 20.0
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"
CREATE_METHOD = "/repwise.v1.LogService/CreateWorkout"
HISTORY_METHOD = "/repwise.v1.LogService/StreamHistory"


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- tools and processes ------------------------------------------------------------------


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    say("h2load missing: apt-get install -y nghttp2-client")
    install = ["apt-get", "install", "-y", "-q", "nghttp2-client"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    found = shutil.which("h2load")
    if not found:
        raise SystemExit("h2load is still missing after installing nghttp2-client")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A server subprocess; stderr goes to a log file shown if it fails."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        self.popen = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log.open("wb"),
            text=True,
        )

    def wait_line(self, prefix: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        assert self.popen.stdout is not None
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if line.startswith(prefix):
                return line.strip()
            if not line and self.popen.poll() is not None:
                break
        raise SystemExit(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """The process and its children (the workers of a server with several)."""
        return [self.popen.pid, *children(self.popen.pid)]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


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


def start_baseline(kind: str, logdir: Path, processes: int = 1) -> tuple[Proc, int]:
    proc = Proc(
        f"bare-{kind}-{processes}",
        [
            sys.executable,
            str(ROOT / "bench" / "baselines.py"),
            kind,
            "--processes",
            str(processes),
        ],
        dict(os.environ),
        logdir,
    )
    return proc, int(proc.wait_line("PORT ").split()[1])


def start_repwise(database_url: str, logdir: Path) -> tuple[Proc, int]:
    port = free_port()
    env = {
        **os.environ,
        "REPWISE_DATABASE_URL": database_url,
        "REPWISE_JWT_SECRET": "bench-secret-" + uuid.uuid4().hex,
        "REPWISE_BCRYPT_ROUNDS": "4",
        "REPWISE_LOG_LEVEL": "WARNING",
        "REPWISE_ACCESS_TOKEN_SECONDS": "3600",
    }
    repwise = Path(sys.executable).parent / "repwise"
    command = [str(repwise), "serve", "--port", str(port), "--workers", str(WORKERS)]
    proc = Proc("repwise", command, env, logdir)
    proc.wait_line("repwise serving on")
    return proc, port


# --- requests -------------------------------------------------------------------------------


def ts(at: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(at)
    return out


def workout(workout_id: str, exercise_ids: list[str], start: datetime) -> log_pb2.Workout:
    return log_pb2.Workout(
        id=workout_id,
        title="Bench day",
        start_time=ts(start),
        end_time=ts(start + timedelta(minutes=70)),
        time_zone="UTC",
        weight_unit=common_pb2.WEIGHT_UNIT_KG,
        exercises=[
            log_pb2.PerformedExercise(
                exercise_id=exercise_id,
                sets=[
                    log_pb2.ExerciseSet(
                        reps=8 + s, weight=60.0 + 2.5 * s, rpe=8.0, kind=log_pb2.SET_KIND_NORMAL
                    )
                    for s in range(SETS)
                ],
            )
            for exercise_id in exercise_ids
        ],
    )


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


# --- measurements -----------------------------------------------------------------------------


def h2load(url: str, body: Path, token: str, seconds: int) -> dict:
    cmd = [
        "h2load",
        f"-c{H2LOAD_CLIENTS}",
        f"-m{H2LOAD_STREAMS}",
        "-t1",
        "-D",
        str(seconds),
        "-d",
        str(body),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        f"authorization: Bearer {token}",
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    reqs = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+)", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (rate and reqs and codes):
        raise SystemExit(f"cannot read h2load output:\n{out}")
    done, succeeded, failed = int(reqs[2]), int(reqs[3]), int(reqs[4])
    # Calls still in flight when the time is up are counted in "status codes" but not "done".
    if (
        failed
        or succeeded != done
        or int(codes[1]) < done
        or any(int(c) for c in codes.groups()[1:])
    ):
        raise SystemExit(f"h2load saw failed requests or non-2xx statuses:\n{out}")
    return {"rate": float(rate[1]), "ok": succeeded, "failed": 0}


def stream_rate(
    channel: grpc.Channel,
    method: str,
    request: bytes,
    count: Callable[[bytes], int],
    metadata: tuple[tuple[str, str], ...] = (),
) -> dict:
    call = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
    started = time.perf_counter()
    total = messages = 0
    for message in call(request, metadata=metadata, timeout=120):
        total += count(message)
        messages += 1
    seconds = time.perf_counter() - started
    return {"rate": total / seconds, "ok": total, "messages": messages, "seconds": seconds}


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a backend that ended
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICKS, sum(values[:8]) / TICKS


def with_cpu(
    measure: Callable[[bool], dict], server: Callable[[], list[int]], db: Callable[[], list[int]]
) -> Callable[[bool], dict]:
    """`measure`, plus the CPU time its server process, its PostgreSQL backends and the
    whole machine spent meanwhile, per operation counted (call or set)."""

    def run(warm: bool) -> dict:
        server_pids, db_pids = server(), db()
        before = (cpu_seconds(server_pids), cpu_seconds(db_pids), machine_busy())
        result = measure(warm)
        after = (cpu_seconds(server_pids), cpu_seconds(db_pids), machine_busy())
        ops = max(result["ok"], 1)
        result["cpu_server"] = (after[0] - before[0]) / ops
        result["cpu_db"] = (after[1] - before[1]) / ops
        busy, total = after[2][0] - before[2][0], after[2][1] - before[2][1]
        result["machine_busy"] = busy / total if total else 0.0
        return result

    return run


def pair(name: str, sides: dict[str, Callable[[bool], dict]]) -> dict[str, list[dict]]:
    """Warm-up of each side, then REPS repetitions of every side in turn (baselines first,
    repwise last). Each side takes (warm) and returns at least `rate` and `ok`. The side
    "baseline" is the one the goal is judged against."""
    for measure in sides.values():
        measure(True)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(REPS):
        for side, measure in sides.items():
            runs[side].append(measure(False))
    rates = {side: statistics.median(r["rate"] for r in runs[side]) for side in sides}
    shown = ", ".join(f"{side} {rate:,.0f}/s" for side, rate in rates.items())
    say(f"{name}: {shown}, ratio {rates['repwise'] / rates['baseline']:.3f}")
    return runs


def count_rows(engine, user_id: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        workouts = conn.execute(
            text("SELECT count(*) FROM workouts WHERE user_id = :u"), {"u": user_id}
        ).scalar_one()
        sets = conn.execute(
            text("SELECT count(*) FROM workout_sets WHERE user_id = :u"), {"u": user_id}
        ).scalar_one()
    return int(workouts), int(sets)


# --- the suite --------------------------------------------------------------------------------


class Suite:
    def __init__(self, database_url: str, logdir: Path) -> None:
        self.database_url = database_url
        self.logdir = logdir
        self.engine = create_engine(database_url)
        self.procs: list[Proc] = []
        self.echo, self.echo_port = start_baseline("echo", logdir, WORKERS)
        self.echo_1, self.echo_1_port = start_baseline("echo", logdir, 1)
        self.stream, self.stream_port = start_baseline("stream", logdir)
        self.repwise, self.port = start_repwise(database_url, logdir)
        self.procs += [self.echo, self.echo_1, self.stream, self.repwise]
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.echo_channel = grpc.insecure_channel(f"127.0.0.1:{self.echo_port}")
        self.stream_channel = grpc.insecure_channel(f"127.0.0.1:{self.stream_port}")
        self.logs = log_pb2_grpc.LogServiceStub(self.channel)
        auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        password = "bench password " + uuid.uuid4().hex[:8]

        def register(email: str) -> auth_pb2.RegisterResponse:
            return auth.Register(auth_pb2.RegisterRequest(email=email, password=password))

        self.creator = register("creator@bench.example")
        self.reader = register("reader@bench.example")
        self.crowd = [register(f"user{i}@bench.example") for i in range(USERS)]
        catalog = catalog_pb2_grpc.CatalogServiceStub(self.channel)
        listed = catalog.ListExercises(
            catalog_pb2.ListExercisesRequest(page_size=EXERCISES),
            metadata=self.bearer(self.creator.access_token),
        )
        self.exercise_ids = [e.id for e in listed.exercises]
        assert len(self.exercise_ids) == EXERCISES, "the catalog was not seeded"
        start = datetime(2025, 3, 3, 7, 0, tzinfo=UTC)
        self.retry_request = log_pb2.CreateWorkoutRequest(
            workout=workout(str(uuid.uuid4()), self.exercise_ids, start)
        ).SerializeToString()
        self.new_template = log_pb2.CreateWorkoutRequest(
            workout=workout(PLACEHOLDER, self.exercise_ids, start)
        ).SerializeToString()
        assert len(self.new_template) == len(self.retry_request)
        self.body = logdir / "create.grpc"
        self.body.write_bytes(grpc_frame(self.retry_request))
        self.history_sets = 0

    def db_pids(self) -> list[int]:
        """PostgreSQL backends serving repwise (the script's own connection excluded)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalars()
            return [int(pid) for pid in rows]

    def pair(
        self,
        name: str,
        baselines: dict[str, tuple[Callable[[bool], dict], Proc]],
        repwise: Callable[[bool], dict],
    ) -> dict[str, list[dict]]:
        sides = {
            side: with_cpu(measure, proc.pids, list) for side, (measure, proc) in baselines.items()
        }
        sides["repwise"] = with_cpu(repwise, self.repwise.pids, self.db_pids)
        return pair(name, sides)

    @staticmethod
    def bearer(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    def close(self) -> None:
        for channel in (self.channel, self.echo_channel, self.stream_channel):
            channel.close()
        for proc in self.procs:
            proc.stop()
        self.engine.dispose()

    # CreateWorkout, same id, h2load.
    def create_retry(self) -> dict:
        metadata = self.bearer(self.creator.access_token)
        raw = self.channel.unary_unary(CREATE_METHOD)
        # h2load counts HTTP 200 as success whatever grpc-status says: check the exact body.
        answer = log_pb2.CreateWorkoutResponse.FromString(
            raw(self.retry_request, metadata=metadata)
        )
        stored = answer.workout
        assert len(stored.exercises) == EXERCISES
        assert all(len(p.sets) == SETS for p in stored.exercises)
        for port in (self.echo_port, self.echo_1_port):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                echoed = channel.unary_unary(ECHO_METHOD)(self.retry_request)
                assert echoed == self.retry_request
        before = count_rows(self.engine, self.creator.user.id)
        token = self.creator.access_token

        def run(url: str) -> Callable[[bool], dict]:
            return lambda warm: h2load(
                url, self.body, token, WARMUP_SECONDS if warm else UNARY_SECONDS
            )

        runs = self.pair(
            "CreateWorkout retry (h2load)",
            {
                "baseline": (run(f"http://127.0.0.1:{self.echo_port}{ECHO_METHOD}"), self.echo),
                "baseline_1": (
                    run(f"http://127.0.0.1:{self.echo_1_port}{ECHO_METHOD}"),
                    self.echo_1,
                ),
            },
            run(f"http://{self.target}{CREATE_METHOD}"),
        )
        after = count_rows(self.engine, self.creator.user.id)
        again = log_pb2.CreateWorkoutResponse.FromString(raw(self.retry_request, metadata=metadata))
        assert again.workout.etag == stored.etag, "the retried workout changed"
        assert after == before, f"retries stored rows: {before} -> {after}"
        return {"runs": runs, "check": "no row added; the retry still answers OK, same etag"}

    # CreateWorkout, a new workout per call, Python client.
    def create_new(self, users: list[auth_pb2.RegisterResponse]) -> dict:
        """Every call slot signed in as users[slot % len(users)]."""
        tokens = [self.bearer(user.access_token) for user in users]
        before = [count_rows(self.engine, user.user.id) for user in users]

        def jobs(target: str, method: str) -> list[Job]:
            # Process p's slots are users p*PY_CONCURRENCY...: with USERS users, one each.
            return [
                Job(
                    target,
                    method,
                    self.new_template,
                    PLACEHOLDER.encode(),
                    tuple(
                        tokens[(p * PY_CONCURRENCY + slot) % len(tokens)]
                        for slot in range(PY_CONCURRENCY)
                    ),
                    PY_CONCURRENCY,
                )
                for p in range(PY_PROCESSES)
            ]

        created = 0

        def measure(load: LoadGenerator, counts: bool) -> Callable[[bool], dict]:
            def run(warm: bool) -> dict:
                nonlocal created
                result = load.run(WARMUP_SECONDS if warm else UNARY_SECONDS)
                if result["failed"]:
                    raise SystemExit(f"{result['failed']} calls failed: {result['error']}")
                if counts:
                    created += result["ok"]
                return result

            return run

        name = "one user" if len(users) == 1 else f"{len(users)} users"
        with (
            LoadGenerator(jobs(f"127.0.0.1:{self.echo_port}", ECHO_METHOD), PY_PROCESSES) as echo,
            LoadGenerator(
                jobs(f"127.0.0.1:{self.echo_1_port}", ECHO_METHOD), PY_PROCESSES
            ) as echo_1,
            LoadGenerator(jobs(self.target, CREATE_METHOD), PY_PROCESSES) as load,
        ):
            runs = self.pair(
                f"CreateWorkout new rows, {name} (Python client)",
                {
                    "baseline": (measure(echo, False), self.echo),
                    "baseline_1": (measure(echo_1, False), self.echo_1),
                },
                measure(load, True),
            )
        after = [count_rows(self.engine, user.user.id) for user in users]
        new = (
            sum(a[0] - b[0] for a, b in zip(after, before, strict=True)),
            sum(a[1] - b[1] for a, b in zip(after, before, strict=True)),
        )
        assert new == (created, created * EXERCISES * SETS), f"{created} OK calls, rows {new}"
        return {
            "runs": runs,
            "check": f"{new[0]:,} workouts and {new[1]:,} sets inserted = OK answers × 1 and × 20",
        }

    def seed_history(self) -> None:
        metadata = self.bearer(self.reader.access_token)
        start = datetime(2019, 1, 1, 7, 0, tzinfo=UTC)
        ids = self.exercise_ids
        made = 0
        for first in range(0, HISTORY_WORKOUTS, SYNC_BATCH):
            batch = [
                workout(
                    str(uuid.uuid4()),
                    ids[i % EXERCISES :] + ids[: i % EXERCISES],
                    start + timedelta(hours=20 * i),
                )
                for i in range(first, min(first + SYNC_BATCH, HISTORY_WORKOUTS))
            ]
            answer = self.logs.SyncWorkouts(
                log_pb2.SyncWorkoutsRequest(upserts=batch, page_size=1), metadata=metadata
            )
            bad = [r for r in answer.results if r.outcome != log_pb2.SYNC_OUTCOME_CREATED]
            assert not bad, f"seeding failed: {bad[:3]}"
            made += len(batch)
        workouts, sets = count_rows(self.engine, self.reader.user.id)
        assert (workouts, sets) == (made, made * EXERCISES * SETS), (workouts, sets)
        self.history_sets = sets

    def stream_history(self, columnar: bool) -> dict:
        if not self.history_sets:
            started = time.perf_counter()
            self.seed_history()
            say(
                f"seeded {HISTORY_WORKOUTS:,} workouts ({self.history_sets:,} sets) "
                f"with SyncWorkouts in {time.perf_counter() - started:.1f}s"
            )
        metadata = self.bearer(self.reader.access_token)
        request = log_pb2.StreamHistoryRequest(columnar=columnar).SerializeToString()
        want = self.history_sets

        def sets_in(message: bytes) -> int:
            """Decode the whole message (every column) and count its sets."""
            chunk = log_pb2.StreamHistoryResponse.FromString(message)
            if columnar:
                return len(chunk.columns.set_entries)
            return sum(len(entry.exercise.sets) for entry in chunk.entries)

        def one_set(message: bytes) -> int:
            log_pb2.ExerciseSet.FromString(message)
            return 1

        def repwise(warm: bool) -> dict:
            result = stream_rate(self.channel, HISTORY_METHOD, request, sets_in, metadata)
            assert result["ok"] == want, f"streamed {result['ok']} sets of {want}"
            return result

        def baseline(warm: bool) -> dict:
            result = stream_rate(self.stream_channel, STREAM_METHOD, str(want).encode(), one_set)
            assert result["ok"] == want
            return result

        form = "columnar" if columnar else "per-entry"
        runs = self.pair(
            f"StreamHistory {form} (Python client)", {"baseline": (baseline, self.stream)}, repwise
        )
        chunks = runs["repwise"][0]["messages"]
        return {
            "runs": runs,
            "check": f"every run received all {want:,} sets ({chunks} messages from repwise)",
        }


# --- report -----------------------------------------------------------------------------------


def machine(engine) -> dict[str, str]:  # type: ignore[no-untyped-def]
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    with engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar_one()
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "CPUs (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU": cpu,
        "Kernel": platform.release(),
        "Python": platform.python_version(),
        "grpcio": grpc.__version__,
        "PostgreSQL": str(pg),
        "h2load": h2,
        "Load average before the run": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def summary(runs: list[dict]) -> tuple[float, float, float]:
    rates = [r["rate"] for r in runs]
    return statistics.median(rates), min(rates), max(rates)


def fmt(runs: list[dict]) -> str:
    median, low, high = summary(runs)
    return f"{median:,.0f} ({low:,.0f}-{high:,.0f})"


# key, title, unit, baseline name, goal (None: for reference), goal text
BENCHMARKS: list[tuple[str, str, str, str, float | None, str]] = [
    (
        "create_retry",
        "CreateWorkout, retry of the same id (h2load)",
        "calls/s",
        "bare grpcio echo, h2load",
        GOAL_CREATE,
        "≥ 0.35 × bare echo",
    ),
    (
        "create_new",
        "CreateWorkout, a new workout per call, one user (Python client)",
        "calls/s",
        "bare grpcio echo, same Python client",
        GOAL_CREATE,
        "≥ 0.35 × bare echo",
    ),
    (
        "create_new_users",
        f"CreateWorkout, a new workout per call, {USERS} users (Python client)",
        "calls/s",
        "bare grpcio echo, same Python client",
        GOAL_CREATE,
        "≥ 0.35 × bare echo",
    ),
    (
        "stream_history",
        "StreamHistory, columnar form (Python client)",
        "sets/s",
        "bare grpcio stream, one message per set, same client",
        GOAL_STREAM,
        "≥ 20 × bare",
    ),
    (
        "stream_history_entries",
        "StreamHistory, per-entry form, for reference (Python client)",
        "sets/s",
        "bare grpcio stream, one message per set, same client",
        None,
        "none (reference)",
    ),
]


def limits(rounds: list[dict]) -> list[str]:
    """What bounds each result, from this run's CPU measurements (medians over rounds)."""

    def cpu(key: str, side: str, field: str) -> float:
        return statistics.median(
            statistics.median(r[field] for r in result[key]["runs"][side]) for result in rounds
        )

    def rate(key: str, side: str) -> float:
        return statistics.median(summary(result[key]["runs"][side])[0] for result in rounds)

    create = {
        key: (cpu(key, "repwise", "cpu_server") * 1e3, cpu(key, "repwise", "cpu_db") * 1e3)
        for key in ("create_retry", "create_new", "create_new_users")
    }
    echo = cpu("create_new_users", "baseline", "cpu_server") * 1e3
    target = GOAL_CREATE * rate("create_new_users", "baseline")
    cores = len(os.sched_getaffinity(0))
    stream_server = cpu("stream_history", "repwise", "cpu_server") * 1e6
    stream_db = cpu("stream_history", "repwise", "cpu_db") * 1e6
    bare_set = cpu("stream_history", "baseline", "cpu_server") * 1e6
    one_user, many = rate("create_new", "repwise"), rate("create_new_users", "repwise")
    retry_server, retry_db = create["create_retry"]
    new_server, new_db = create["create_new_users"]
    return [
        "## What bounds these numbers",
        "",
        "From the CPU tables above (medians over the rounds); the machine has "
        f"{cores} cores, shared",
        "by the servers, PostgreSQL and the load generators.",
        "",
        f"- **CreateWorkout** costs repwise {retry_server:.1f} ms of server CPU and "
        f"{retry_db:.1f} ms of PostgreSQL",
        f"  CPU per retried call, {new_server:.1f} ms and {new_db:.1f} ms per stored workout "
        "(many users), against",
        f"  {echo:.2f} ms per call for the bare echo server. 0.35 × the echo rate is "
        f"{target:,.0f} calls/s,",
        f"  which leaves at most {cores * 1000 / target:.2f} ms of CPU per call for the server "
        "and PostgreSQL together",
        "  even with the load generator taking nothing. Each create checks the caller's",
        "  session, looks up its exercises and the workout id (a statement each, through",
        "  SQLAlchemy), and a new workout then takes the user's change number and is inserted",
        "  with its exercises and sets in one statement on PostgreSQL, then committed. Trimming",
        "  statements does not close that gap; it would take the create path out of",
        "  SQLAlchemy (and much of it out of Python).",
        f"- One user's creates are serialized by the user's change lock ({one_user:,.0f}/s "
        f"for one user,",
        f"  {many:,.0f}/s over {USERS} users): each holds the lock from its insert to its commit.",
        f"- **StreamHistory** in the columnar form costs repwise {stream_server:.1f} µs of "
        f"server CPU and {stream_db:.1f} µs",
        f"  of PostgreSQL CPU per set, against {bare_set:.1f} µs per message for the bare",
        "  one-message-per-set server. PostgreSQL reads one row per set (workout_sets), the",
        "  largest single cost now; the ratio also moves with the baseline, which varies by a",
        "  quarter or more between runs on this shared machine.",
        "",
    ]


def write_doc(info: dict[str, str], rounds: list[dict], took: float) -> None:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`bench/run.py`); do not edit by hand. Speed is only ever",
        "quoted as a ratio to a bare grpcio server measured in the same run with the same load",
        "generator, because the machine is small and shared: absolute numbers move between",
        "runs, ratios much less.",
        "",
        "## How to run",
        "",
        "```sh",
        "make bench                  # this page, then the training benchmarks",
        ".venv/bin/python bench/run.py   # this page only: about 5 minutes; rewrites it",
        "```",
        "",
        "Needs PostgreSQL at `127.0.0.1:5432` (user `postgres`, trust auth;",
        "`REPWISE_BENCH_POSTGRES_URL` overrides): the script creates a database of its own and",
        "drops it at the end. It installs h2load (`apt-get install -y nghttp2-client`) when",
        "missing. The servers, each its own process (or processes):",
        "",
        f"- **repwise**: `repwise serve --workers {WORKERS}` on a free port, PostgreSQL: "
        f"{WORKERS} server",
        "  processes sharing the port (SO_REUSEPORT), each with the defaults (16 worker threads",
        "  and 16 pooled connections), `REPWISE_BCRYPT_ROUNDS=4`, `REPWISE_LOG_LEVEL=WARNING`.",
        "  `REPWISE_BENCH_WORKERS` sets the number of workers (default: the CPUs).",
        f"- **bare echo**, run two ways: {WORKERS} processes sharing the port like repwise's "
        "workers (the",
        "  baseline the goal is judged against) and a single process (its ratio is shown too).",
        "  grpcio unary server, generic handler, 16 threads per process, answers each request",
        "  with its own bytes (the CreateWorkout request: "
        f"{EXERCISES} exercises × {SETS} sets, the same bytes repwise gets).",
        "- **bare stream**: grpcio server-streaming server, one process (a stream is one call,",
        "  served by one repwise worker too), generic handler, 16 threads, one serialized",
        "  `ExerciseSet` per message: the one-message-per-set ceiling.",
        "",
        f"Every measurement: a warm-up, then {REPS} repetitions, each running the baselines and",
        f"then repwise ({UNARY_SECONDS} s each for unary calls; one whole stream each for",
        f"StreamHistory). The suite runs {ROUNDS} times (rounds). Tables give the median",
        "(min-max) of the repetitions; the ratio is repwise's median over the baseline's median.",
        "",
        "Load generators:",
        "",
        f"- **h2load** (`-c{H2LOAD_CLIENTS} -m{H2LOAD_STREAMS} -t1`, "
        f"{H2LOAD_CLIENTS * H2LOAD_STREAMS} calls in flight on {H2LOAD_CLIENTS} connections,",
        "  about 0.15 core) sends gRPC frames as a POST body with `content-type:",
        "  application/grpc`, `te: trailers` and the bearer token. h2load sends the *same body*",
        "  for every request (`-d` takes one file; no per-request bodies), so against",
        "  CreateWorkout it measures the idempotent-retry path: after the first call every call",
        "  finds the stored workout and returns it. h2load counts HTTP 200 as success whatever",
        "  `grpc-status` says, so the script first sends the exact body with a Python client",
        "  (must be OK with the full workout), and after the run checks that no row was added",
        "  and the retry still answers OK with the same etag.",
        f"- **Python client** (`bench/client.py`: {PY_PROCESSES} processes × "
        f"{PY_CONCURRENCY} calls in flight, each",
        "  process on 4 grpc.aio channels of their own connection, raw bytes, about 0.8 of the",
        "  2 cores) for real inserts: each call replaces a placeholder UUID in the serialized",
        "  request with a fresh one, so every call stores a new workout. The echo baselines get",
        "  the same client, the same bytes, the same concurrency. Measured twice: every call as",
        f"  one user, and each of the {USERS} call slots as its own user. One user's creates run",
        "  one at a time (each takes the user's change lock to number the change feed), so",
        "  the first shows how fast one account can store workouts and the second how fast",
        "  the server does for many. After each run the script checks that the new rows equal",
        "  the OK answers (1 workout and 20 sets each). The client shares the 2 cores with the",
        "  server, for baselines and repwise alike.",
        f"- **StreamHistory**: {HISTORY_WORKOUTS:,} workouts × {EXERCISES} exercises × "
        f"{SETS} sets = {HISTORY_WORKOUTS * EXERCISES * SETS:,} sets,",
        f"  stored with SyncWorkouts in batches of {SYNC_BATCH}, streamed whole "
        "(default chunk_size)",
        "  by one synchronous Python client that decodes each message (`FromString`: every",
        "  column or entry parsed) and counts sets. The goal row uses the columnar form",
        "  (`StreamHistoryRequest.columnar`); the per-entry form is measured the same way for",
        "  reference. The baseline streams the same number of one-set messages to the same",
        "  client.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in info.items()],
        f"| repwise workers | {WORKERS} |",
        f"| Whole run | {took:.0f} s |",
        "",
        "## Results",
        "",
    ]
    verdicts: dict[str, list[bool]] = {}
    for key, title, unit, base_name, goal, goal_text in BENCHMARKS:
        two = "baseline_1" in rounds[0][key]["runs"]
        if two:
            header = (
                f"| Round | Baseline: {base_name}, {WORKERS} processes ({unit}) | "
                f"1 process ({unit}) | repwise, {WORKERS} workers ({unit}) | "
                f"Ratio | Ratio to 1 process | Goal | Met |"
            )
            rule = "| --- | --- | --- | --- | --- | --- | --- | --- |"
        else:
            header = (
                f"| Round | Baseline: {base_name} ({unit}) | repwise ({unit}) "
                "| Ratio | Goal | Met |"
            )
            rule = "| --- | --- | --- | --- | --- | --- |"
        lines += [f"### {title}", "", header, rule]
        checks = []
        for n, result in enumerate(rounds, 1):
            runs = result[key]["runs"]
            ratio = summary(runs["repwise"])[0] / summary(runs["baseline"])[0]
            if goal is None:
                met_text = "—"
            else:
                met = ratio >= goal
                verdicts.setdefault(key, []).append(met)
                met_text = "yes" if met else "**no**"
            if two:
                ratio_1 = summary(runs["repwise"])[0] / summary(runs["baseline_1"])[0]
                lines.append(
                    f"| {n} | {fmt(runs['baseline'])} | {fmt(runs['baseline_1'])} | "
                    f"{fmt(runs['repwise'])} | **{ratio:.3f}** | {ratio_1:.3f} | "
                    f"{goal_text} | {met_text} |"
                )
            else:
                lines.append(
                    f"| {n} | {fmt(runs['baseline'])} | {fmt(runs['repwise'])} | "
                    f"**{ratio:.3f}** | {goal_text} | {met_text} |"
                )
            checks.append(f"round {n}: {result[key]['check']}")
        per, scale = ("set", 1e6) if unit == "sets/s" else ("call", 1e3)
        tick = "µs" if per == "set" else "ms"
        lines += [
            "",
            f"CPU time per {per} ({tick}, median of the repetitions; a server of several "
            "processes counts them all) and how busy the whole machine was (both cores, load "
            "generator included):",
            "",
            "| Round | bare server | repwise server | PostgreSQL backends | machine busy, "
            "bare / repwise |",
            "| --- | --- | --- | --- | --- |",
        ]
        for n, result in enumerate(rounds, 1):
            runs = result[key]["runs"]

            def med(side: str, field: str, runs: dict = runs) -> float:
                return statistics.median(r[field] for r in runs[side])

            lines.append(
                f"| {n} | {med('baseline', 'cpu_server') * scale:.3f} | "
                f"{med('repwise', 'cpu_server') * scale:.3f} | "
                f"{med('repwise', 'cpu_db') * scale:.3f} | "
                f"{med('baseline', 'machine_busy'):.0%} / {med('repwise', 'machine_busy'):.0%} |"
            )
        lines += ["", "Checks: " + "; ".join(checks) + ".", ""]
    lines += ["## Verdict", ""]
    for key, title, _unit, _base, goal, goal_text in BENCHMARKS:
        if goal is None:
            continue
        outcomes = verdicts[key]
        state = (
            "met" if all(outcomes) else ("not met" if not any(outcomes) else "met in some rounds")
        )
        lines.append(f"- {title}: goal {goal_text} — **{state}** in {ROUNDS} rounds.")
    lines += [
        "",
        "The issue's CreateWorkout goal is about storing workouts; the rows to read for it are",
        "*a new workout per call*. The retry row is CreateWorkout without inserts: the server",
        "finds the stored workout (same id, same content) and answers with it, without taking",
        "the user's change lock.",
        "",
        *limits(rounds),
    ]
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text("\n".join(lines))


def main() -> int:
    began = time.perf_counter()
    ensure_h2load()
    name = f"repwise_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    database_url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    info = machine(admin)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="repwise-bench-") as tmp:
        suite = None
        try:
            suite = Suite(database_url, Path(tmp))
            for n in range(1, ROUNDS + 1):
                say(f"round {n} of {ROUNDS} ({WORKERS} repwise workers)")
                rounds.append(
                    {
                        "create_retry": suite.create_retry(),
                        "create_new": suite.create_new([suite.creator]),
                        "create_new_users": suite.create_new(suite.crowd),
                        "stream_history": suite.stream_history(columnar=True),
                        "stream_history_entries": suite.stream_history(columnar=False),
                    }
                )
        finally:
            if suite is not None:
                suite.close()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    took = time.perf_counter() - began
    write_doc(info, rounds, took)
    say(f"wrote {DOC.relative_to(ROOT)} in {took:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
