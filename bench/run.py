"""repwise server benchmarks on PostgreSQL, each as a ratio to a bare grpcio server measured in
the same run with the same load generator. `make bench` runs this, then bench/training.py, then
bench/report.py, which writes docs/benchmarks.md from the results of both.

repwise runs as `repwise serve --workers N` (N = the CPUs, REPWISE_BENCH_WORKERS overrides).
The unary baseline is the bare echo server run both ways, N processes sharing the port (the
same shape as repwise: the ratio the goals are judged on) and one process; both are reported.

  create  1. CreateWorkout, retry (same id): h2load sends one CreateWorkout body over and over,
             so after the first call every call takes the idempotent-retry path.
          2. CreateWorkout, new rows, one user: h2load sends one body for every request, so
             distinct workouts need a Python load generator (bench/client.py); every call
             carries a fresh UUID. One user's creates run one at a time (the change lock).
          3. CreateWorkout, new rows, 16 users: the same, each call slot its own user.
  stream  4. StreamHistory: a Python client streams a whole history in the columnar form,
             decodes each message and counts sets/s, against the same client reading one small
             message per set from a bare grpcio streaming server. The per-entry form too.
  reads   5. GetWorkout of a stored workout, and 6. GetModelBundle answering "not modified",
             by h2load with the bearer token of a synthetic user trained by `repwise train`;
             7. Health/Check the same way, for reference: grpcio and repwise's interceptors
             with no authentication and no database, the floor under every call.

Unary baselines: the bare echo server, the same load generator, the same request bytes, the
same concurrency. Every measurement has a warm-up, then repetitions alternating baselines and
repwise; the suite runs in rounds. While each repetition runs, the CPU time of the server's
processes and PostgreSQL backends is counted, and the resident memory of every server process
is sampled. h2load is installed with apt-get when missing. Usage:

    python bench/run.py [--only reads] [--rounds 2] [--reps 5] [--results DIR]

The results go to DIR/server.json (default bench/results); bench/report.py makes the page.
"""

from __future__ import annotations

import argparse
import json
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
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2
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
    training_pb2,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = os.environ.get(
    "REPWISE_BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
SUITES = ("create", "stream", "reads")
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
READ_USERS = 20  # synthetic users trained for the reads (the population model needs several)
READ_WEEKS = 14  # about 200 logged exercises each, as in bench/training.py
MEMORY_SAMPLE_SECONDS = 0.1
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"
CREATE_METHOD = "/repwise.v1.LogService/CreateWorkout"
GET_WORKOUT_METHOD = "/repwise.v1.LogService/GetWorkout"
HISTORY_METHOD = "/repwise.v1.LogService/StreamHistory"
BUNDLE_METHOD = "/repwise.v1.TrainingService/GetModelBundle"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Plan:
    """How much to measure: the defaults for `make bench`, less for a quick check."""

    rounds: int = ROUNDS
    reps: int = REPS
    seconds: int = UNARY_SECONDS
    suites: tuple[str, ...] = SUITES


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
        """The process, then its children (the workers of a server with several)."""
        return [self.popen.pid, *sorted(children(self.popen.pid))]

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


def repwise_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "REPWISE_DATABASE_URL": database_url,
        "REPWISE_JWT_SECRET": "bench-secret-" + uuid.uuid4().hex,
        "REPWISE_BCRYPT_ROUNDS": "4",
        "REPWISE_LOG_LEVEL": "WARNING",
        "REPWISE_ACCESS_TOKEN_SECONDS": "3600",
        "REPWISE_METRICS_PORT": "0",  # metrics on, as in production; the parent serves them
    }


def start_repwise(env: dict[str, str], logdir: Path) -> tuple[Proc, int, str]:
    """repwise's process, its port and its /metrics address."""
    port = free_port()
    repwise = Path(sys.executable).parent / "repwise"
    command = [str(repwise), "serve", "--port", str(port), "--workers", str(WORKERS)]
    proc = Proc("repwise", command, env, logdir)
    proc.wait_line("repwise serving on")
    metrics = proc.wait_line("repwise metrics on").rsplit(" ", 1)[1]
    return proc, port, metrics


def handled(metrics_url: str, method: str) -> Counter[str]:
    """How many calls of `method` the server finished, by status code (grpc_server_handled
    from its Prometheus metrics: the sum over its workers)."""
    service, name = method.strip("/").split("/")
    labels = f'grpc_method="{name}",grpc_service="{service}"'
    counts: Counter[str] = Counter()
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("grpc_server_handled_total{") and labels in line:
                code = line.split('grpc_code="', 1)[1].split('"', 1)[0]
                counts[code] += int(float(line.rsplit(" ", 1)[1]))
    return counts


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


def h2load(url: str, body: Path, token: str, seconds: int, answer: bytes) -> dict:
    """Calls/s of h2load against `url`, every call sending `body`.

    h2load counts HTTP 200 as success whatever grpc-status says. An answer other than OK
    carries no message (grpc-status in trailers only), so the bytes of response data tell:
    every finished call must have received exactly the expected `answer` message."""
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
    traffic = re.search(r"traffic: .*?, [\d.]+\w* \((\d+)\) data", out)
    if not (rate and reqs and codes and traffic):
        raise SystemExit(f"cannot read h2load output:\n{out}")
    done, succeeded, failed = int(reqs[2]), int(reqs[3]), int(reqs[4])
    # Calls still in flight when the time is up are counted in "status codes" but not "done".
    answered = int(codes[1])
    if failed or succeeded != done or answered < done or any(int(c) for c in codes.groups()[1:]):
        raise SystemExit(f"h2load saw failed requests or non-2xx statuses:\n{out}")
    frame, data = len(grpc_frame(answer)), int(traffic[1])
    if not done * frame <= data <= answered * frame:
        raise SystemExit(
            f"h2load received {data} bytes of messages for {done} calls of {frame} bytes "
            f"each: some answers were not OK\n{out}"
        )
    return {"rate": float(rate[1]), "ok": succeeded, "failed": 0, "answer_bytes": data}


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


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of a process in kB: resident pages, and the same with each page shared
    by n processes counted 1/n (the memory of forked workers is partly shared)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
                break
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    except OSError:
        pass  # the process ended
    return rss, pss


class MemorySampler:
    """Samples the memory of a server's processes every MEMORY_SAMPLE_SECONDS while a
    measurement runs: the peak of each process, and the peak of their sum at one instant."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak_rss = [0] * len(pids)
        self.peak_total_rss = self.peak_total_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        both = [memory_kb(pid) for pid in self.pids]
        self.peak_rss = [max(a, b[0]) for a, b in zip(self.peak_rss, both, strict=True)]
        self.peak_total_rss = max(self.peak_total_rss, sum(b[0] for b in both))
        self.peak_total_pss = max(self.peak_total_pss, sum(b[1] for b in both))

    def _run(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_SECONDS):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def result(self) -> dict:
        return {
            "rss_kb": self.peak_rss,
            "total_rss_kb": self.peak_total_rss,
            "total_pss_kb": self.peak_total_pss,
        }


def observed(
    measure: Callable[[bool], dict], server: Callable[[], list[int]], db: Callable[[], list[int]]
) -> Callable[[bool], dict]:
    """`measure`, plus the CPU time its server processes, its PostgreSQL backends and the
    whole machine spent meanwhile, per operation counted (call or set), and the server
    processes' peak memory."""

    def run(warm: bool) -> dict:
        server_pids, db_pids = server(), db()
        before = (cpu_seconds(server_pids), cpu_seconds(db_pids), machine_busy())
        with MemorySampler(server_pids) as memory:
            result = measure(warm)
        after = (cpu_seconds(server_pids), cpu_seconds(db_pids), machine_busy())
        ops = max(result["ok"], 1)
        result["cpu_server"] = (after[0] - before[0]) / ops
        result["cpu_db"] = (after[1] - before[1]) / ops
        busy, total = after[2][0] - before[2][0], after[2][1] - before[2][1]
        result["machine_busy"] = busy / total if total else 0.0
        result["memory"] = memory.result()
        return result

    return run


def pair(name: str, sides: dict[str, Callable[[bool], dict]], reps: int) -> dict[str, list[dict]]:
    """Warm-up of each side, then `reps` repetitions of every side in turn (baselines first,
    repwise last). Each side takes (warm) and returns at least `rate` and `ok`. The side
    "baseline" is the one the goal is judged against."""
    for measure in sides.values():
        measure(True)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(reps):
        for side, measure in sides.items():
            runs[side].append(measure(False))
    rates = {side: statistics.median(r["rate"] for r in runs[side]) for side in sides}
    shown = ", ".join(f"{side} {rate:,.0f}/s" for side, rate in rates.items())
    cpu = statistics.median(r["cpu_server"] for r in runs["repwise"]) * 1e3
    say(f"{name}: {shown}, ratio {rates['repwise'] / rates['baseline']:.3f}, {cpu:.3f} ms CPU")
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
    def __init__(self, database_url: str, logdir: Path, plan: Plan) -> None:
        self.database_url = database_url
        self.logdir = logdir
        self.plan = plan
        self.engine = create_engine(database_url)
        self.procs: list[Proc] = []
        self.echo, self.echo_port = start_baseline("echo", logdir, WORKERS)
        self.echo_1, self.echo_1_port = start_baseline("echo", logdir, 1)
        self.stream, self.stream_port = start_baseline("stream", logdir)
        self.env = repwise_env(database_url)
        self.repwise, self.port, self.metrics_url = start_repwise(self.env, logdir)
        self.procs += [self.echo, self.echo_1, self.stream, self.repwise]
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stream_channel = grpc.insecure_channel(f"127.0.0.1:{self.stream_port}")
        self.logs = log_pb2_grpc.LogServiceStub(self.channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        password = "bench password " + uuid.uuid4().hex[:8]

        def register(email: str) -> auth_pb2.RegisterResponse:
            return self.auth.Register(auth_pb2.RegisterRequest(email=email, password=password))

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
        self.history_sets = 0
        self.trained: tuple[str, log_pb2.Workout, int] | None = None

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
            side: observed(measure, proc.pids, list) for side, (measure, proc) in baselines.items()
        }
        sides["repwise"] = observed(repwise, self.repwise.pids, self.db_pids)
        return pair(name, sides, self.plan.reps)

    @staticmethod
    def bearer(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    def close(self) -> None:
        for channel in (self.channel, self.stream_channel):
            channel.close()
        for proc in self.procs:
            proc.stop()
        self.engine.dispose()

    def unary_h2load(
        self, name: str, method: str, request: bytes, token: str
    ) -> tuple[dict[str, list[dict]], bytes]:
        """h2load sending `request` to repwise's `method` and to both echo servers; each
        side's every answer is checked against the one a Python client gets first, and
        repwise must count every call it finished as OK. Returns the runs and its answer."""
        metadata = self.bearer(token)
        answer = self.channel.unary_unary(method)(request, metadata=metadata)
        for port in (self.echo_port, self.echo_1_port):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert channel.unary_unary(ECHO_METHOD)(request) == request
        body = self.logdir / f"{method.rsplit('/', 1)[1]}.grpc"
        body.write_bytes(grpc_frame(request))
        seconds = self.plan.seconds

        def run(url: str, expected: bytes) -> Callable[[bool], dict]:
            return lambda warm: h2load(
                url, body, token, WARMUP_SECONDS if warm else seconds, expected
            )

        def counted(warm: bool) -> dict:
            before = handled(self.metrics_url, method)
            result = run(f"http://{self.target}{method}", answer)(warm)
            after = handled(self.metrics_url, method)
            after.subtract(before)
            # Calls in flight when h2load stopped finish after it counted them.
            in_flight = H2LOAD_CLIENTS * H2LOAD_STREAMS
            if +after != Counter(OK=after["OK"]) or not (
                result["ok"] <= after["OK"] <= result["ok"] + in_flight
            ):
                raise SystemExit(f"{method}: {result['ok']} calls done, server counted {after}")
            return result

        runs = self.pair(
            name,
            {
                "baseline": (
                    run(f"http://127.0.0.1:{self.echo_port}{ECHO_METHOD}", request),
                    self.echo,
                ),
                "baseline_1": (
                    run(f"http://127.0.0.1:{self.echo_1_port}{ECHO_METHOD}", request),
                    self.echo_1,
                ),
            },
            counted,
        )
        again = self.channel.unary_unary(method)(request, metadata=metadata)
        assert again == answer, f"{method} answers differently after the run"
        return runs, answer

    # CreateWorkout, same id, h2load.
    def create_retry(self) -> dict:
        metadata = self.bearer(self.creator.access_token)
        raw = self.channel.unary_unary(CREATE_METHOD)
        first = log_pb2.CreateWorkoutResponse.FromString(raw(self.retry_request, metadata=metadata))
        assert len(first.workout.exercises) == EXERCISES
        assert all(len(p.sets) == SETS for p in first.workout.exercises)
        before = count_rows(self.engine, self.creator.user.id)
        runs, answer = self.unary_h2load(
            "CreateWorkout retry (h2load)",
            CREATE_METHOD,
            self.retry_request,
            self.creator.access_token,
        )
        after = count_rows(self.engine, self.creator.user.id)
        assert answer == first.SerializeToString(), "the retried workout changed"
        assert after == before, f"retries stored rows: {before} -> {after}"
        return {
            "runs": runs,
            "check": "no row added; every answer was the stored workout, "
            f"{len(answer):,} bytes, as before the run",
        }

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
                result = load.run(WARMUP_SECONDS if warm else self.plan.seconds)
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
            rss = [memory_kb(pid)[0] // 1024 for pid in self.repwise.pids()]
            say(
                f"seeded {HISTORY_WORKOUTS:,} workouts ({self.history_sets:,} sets) "
                f"with SyncWorkouts in {time.perf_counter() - started:.1f}s; "
                f"repwise's processes now hold {rss} MB"
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

    def train_reader(self) -> tuple[str, log_pb2.Workout, int]:
        """Loads READ_USERS synthetic users, trains them all with `repwise train --all`, and
        signs in as the first: (access token, their latest workout as the server sends it,
        their model version)."""
        from server.db import Database
        from server.training import synthetic

        started = time.perf_counter()
        people = synthetic.generate_users(READ_USERS, seed=5, weeks=READ_WEEKS)
        db = Database(self.database_url, pool_size=1)
        try:
            synthetic.load_users(db, people)
        finally:
            db.dispose()
        train = [str(Path(sys.executable).parent / "repwise"), "train", "--all", "--quiet"]
        trained = subprocess.run(train, env=self.env, capture_output=True, text=True)
        if trained.returncode != 0:
            raise SystemExit(f"repwise train failed:\n{trained.stdout}\n{trained.stderr}")
        person = people[0]
        login = self.auth.Login(
            auth_pb2.LoginRequest(email=person.email, password=synthetic.SYNTHETIC_PASSWORD)
        )
        metadata = self.bearer(login.access_token)
        latest = person.workouts[-1]
        got = self.logs.GetWorkout(log_pb2.GetWorkoutRequest(id=latest.id), metadata=metadata)
        assert got.workout.id == latest.id
        assert [len(p.sets) for p in got.workout.exercises] == [
            len(p.sets) for p in latest.exercises
        ], "GetWorkout answered another workout"
        bundle_call = self.channel.unary_unary(
            BUNDLE_METHOD,
            request_serializer=training_pb2.GetModelBundleRequest.SerializeToString,
            response_deserializer=training_pb2.GetModelBundleResponse.FromString,
        )
        full = bundle_call(training_pb2.GetModelBundleRequest(), metadata=metadata).bundle
        assert not full.is_population_model and full.model_version > 0, "not trained"
        assert len(full.exercise_stats) > 0
        say(
            f"loaded {READ_USERS} synthetic users and ran `repwise train --all` in "
            f"{time.perf_counter() - started:.1f}s ({trained.stdout.strip()}); "
            f"the reader's model version {full.model_version}, bundle {full.ByteSize():,} bytes"
        )
        return login.access_token, got.workout, full.model_version

    def reads(self) -> dict:
        if self.trained is None:
            self.trained = self.train_reader()
        token, stored, version = self.trained
        request = log_pb2.GetWorkoutRequest(id=stored.id).SerializeToString()
        runs, answer = self.unary_h2load("GetWorkout (h2load)", GET_WORKOUT_METHOD, request, token)
        got = log_pb2.GetWorkoutResponse.FromString(answer).workout
        assert got == stored, "GetWorkout answered something else than the stored workout"
        sets = sum(len(p.sets) for p in got.exercises)
        workout_result = {
            "runs": runs,
            "check": f"every answer was the stored workout ({len(got.exercises)} exercises, "
            f"{sets} sets, {len(answer):,} bytes)",
        }
        request = training_pb2.GetModelBundleRequest(known_version=version).SerializeToString()
        runs, answer = self.unary_h2load(
            "GetModelBundle not modified (h2load)", BUNDLE_METHOD, request, token
        )
        assert training_pb2.GetModelBundleResponse.FromString(answer).not_modified
        bundle_result = {
            "runs": runs,
            "check": f"every answer was not_modified=true ({len(answer)} bytes) for the "
            f"user's current model version {version}",
        }
        runs, answer = self.unary_h2load("Health/Check (h2load)", HEALTH_METHOD, b"", token)
        assert health_pb2.HealthCheckResponse.FromString(answer).status == SERVING
        health_result = {"runs": runs, "check": "every answer was SERVING"}
        return {
            "get_workout": workout_result,
            "bundle_not_modified": bundle_result,
            "health_check": health_result,
        }

    def round(self) -> dict:
        result: dict[str, dict] = {}
        if "create" in self.plan.suites:
            result["create_retry"] = self.create_retry()
            result["create_new"] = self.create_new([self.creator])
            result["create_new_users"] = self.create_new(self.crowd)
        if "stream" in self.plan.suites:
            result["stream_history"] = self.stream_history(columnar=True)
            result["stream_history_entries"] = self.stream_history(columnar=False)
        if "reads" in self.plan.suites:
            result.update(self.reads())
        return result


def machine(engine) -> dict[str, str]:  # type: ignore[no-untyped-def]
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    with engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar_one()
    h2 = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "CPUs (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU": cpu,
        "Memory": f"{int(memory) / 2**20:.1f} GiB",
        "Kernel": platform.release(),
        "Python": platform.python_version(),
        "grpcio": grpc.__version__,
        "PostgreSQL": str(pg),
        "h2load": h2,
        "Load average before the server benchmarks": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SUITES, action="append", help="run only these suites")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--reps", type=int, default=REPS, help="repetitions per round")
    parser.add_argument("--seconds", type=int, default=UNARY_SECONDS, help="per unary repetition")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where server.json goes")
    args = parser.parse_args()
    plan = Plan(args.rounds, args.reps, args.seconds, tuple(args.only or SUITES))
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
            suite = Suite(database_url, Path(tmp), plan)
            for n in range(1, plan.rounds + 1):
                say(f"round {n} of {plan.rounds} ({WORKERS} repwise workers)")
                rounds.append(suite.round())
        finally:
            if suite is not None:
                suite.close()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    took = time.perf_counter() - began
    results = {
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "plan": {
            "rounds": plan.rounds,
            "reps": plan.reps,
            "seconds": plan.seconds,
            "suites": list(plan.suites),
            "workers": WORKERS,
        },
        "took_s": took,
        "rounds": rounds,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / "server.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    say(f"wrote {out} in {took:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
