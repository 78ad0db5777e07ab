"""The client SDK (client_sdk.RepwiseClient) through the real server in-process: sign-in,
workouts and history, automatic token refresh (also with many threads at once), retries that
never duplicate anything, errors with their google.rpc details, the notebook frames and plots,
and the on-disk model bundle cache (against a fake TrainingService: the real one is not built
yet)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from client_sdk import RepwiseClient, RepwiseError, Tokens
from client_sdk.features import FEATURE_NAMES
from client_sdk.frames import COLUMNS
from client_sdk.model import (
    SEQUENCE_PARAMETERS,
    STATE_NAMES,
)
from repwise.v1 import catalog_pb2, common_pb2, log_pb2, training_pb2, training_pb2_grpc
from server.catalog.sources import seed_default_catalog
from tests.conftest import PASSWORD, start_server

BENCH, SQUAT = "barbell-bench-press", "barbell-back-squat"
ROOT = Path(__file__).resolve().parent.parent


# --- helpers ---------------------------------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    """What grpc raises for a failed call, made by hand (optionally with status details)."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: Any) -> None:
        super().__init__(message)
        self._code, self._message, self._details = code, message, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        if not self._details:
            return ()
        status = status_pb2.Status(code=self._code.value[0], message=self._message)
        for detail in self._details:
            status.details.add().Pack(detail)
        return (("grpc-status-details-bin", status.SerializeToString()),)


def unavailable() -> FakeRpcError:
    return FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection reset")


@dataclass
class Attempt:
    method: str  # e.g. "CreateWorkout"
    request: Any
    metadata: dict[str, str]
    at: float = field(default_factory=time.monotonic)
    code: grpc.StatusCode | None = None  # unary calls only


class _BreakAfterFirst:
    """A server stream whose connection drops after its first message."""

    def __init__(self, call: Any) -> None:
        self._call, self._sent = call, False

    def __iter__(self) -> _BreakAfterFirst:
        return self

    def __next__(self) -> Any:
        if self._sent:
            raise unavailable()
        self._sent = True
        return next(self._call)

    def cancel(self) -> bool:
        return self._call.cancel()


class Recorder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Sees every attempt the SDK sends, and fails chosen ones:
    "drop" (never reaches the server), "lose" (the server handles it, the answer is lost),
    "break" (a stream drops after its first message) or a given RpcError."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self._faults: dict[str, deque[str | FakeRpcError]] = {}
        self._lock = threading.Lock()

    def fail(self, method: str, *faults: str | FakeRpcError) -> None:
        self._faults.setdefault(method, deque()).extend(faults)

    def of(self, method: str) -> list[Attempt]:
        return [a for a in self.attempts if a.method == method]

    def _begin(self, details: Any, request: Any) -> tuple[Attempt, str | FakeRpcError | None]:
        attempt = Attempt(details.method.rsplit("/", 1)[1], request, dict(details.metadata or ()))
        with self._lock:
            self.attempts.append(attempt)
            queue = self._faults.get(attempt.method)
            return attempt, queue.popleft() if queue else None

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        attempt, fault = self._begin(details, request)
        if isinstance(fault, FakeRpcError):
            raise fault
        if fault == "drop":
            raise unavailable()
        outcome = continuation(details, request)
        attempt.code = outcome.code()
        if fault == "lose":
            outcome.result()  # it really succeeded on the server
            raise unavailable()
        return outcome

    def intercept_unary_stream(self, continuation: Callable, details: Any, request: Any) -> Any:
        _, fault = self._begin(details, request)
        if fault == "drop":
            raise unavailable()
        call = continuation(details, request)
        return _BreakAfterFirst(call) if fault == "break" else call


@pytest.fixture
def seeded(server, clock):
    seed_default_catalog(server.server.db, clock)
    return server


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(seeded, recorder, tmp_path) -> Iterator[RepwiseClient]:
    with RepwiseClient(seeded.target, cache_dir=tmp_path, interceptors=[recorder]) as sdk:
        yield sdk


def email() -> str:
    return f"sdk-{uuid.uuid4().hex[:8]}@example.com"


def ts(moment: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


def days_ago(days: float) -> datetime:
    return (datetime.now(UTC) - timedelta(days=days)).replace(microsecond=0)


def a_workout(start: datetime, *exercises: log_pb2.PerformedExercise, **fields) -> log_pb2.Workout:
    exercises = exercises or (
        log_pb2.PerformedExercise(
            exercise_id=BENCH, sets=[log_pb2.ExerciseSet(reps=5, weight=100.0)]
        ),
    )
    return log_pb2.Workout(
        title="Push",
        time_zone="UTC",
        weight_unit=common_pb2.WEIGHT_UNIT_KG,
        start_time=ts(start),
        end_time=ts(start + timedelta(hours=1)),
        exercises=exercises,
        **fields,
    )


def a_token(user_id: str, lifetime: int = 900) -> str:
    """An unsigned JWT-shaped access token: the SDK only reads its claims."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"sub": user_id, "iat": now, "exp": now + lifetime}
    return f"{part({'alg': 'HS256'})}.{part(claims)}.signature"


def is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


# --- the SDK on its own ----------------------------------------------------------------------


def test_sdk_imports_without_the_server_and_without_pandas():
    code = (
        "import sys, client_sdk\n"
        "from client_sdk import RepwiseClient\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('server', 'pandas', "
        "'matplotlib'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_notebook_extras_say_how_to_install_them(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with (
        RepwiseClient("127.0.0.1:1", cache_dir=tmp_path) as sdk,
        pytest.raises(ImportError, match=r"pip install 'repwise\[notebook\]'"),
    ):
        sdk.history_frame()


# --- accounts --------------------------------------------------------------------------------


def test_register_login_logout(client, seeded, tmp_path):
    address = email()
    registered = client.register(address, PASSWORD, display_name="Ann")
    assert client.user_id == registered.user.id
    assert client.tokens == Tokens(registered.access_token, registered.refresh_token)
    me = client.get_me()
    assert (me.email, me.display_name) == (address, "Ann")

    with RepwiseClient(seeded.target, cache_dir=tmp_path) as other:
        other.login(address, PASSWORD)
        assert other.get_me().id == registered.user.id
        assert other.logout().sessions_ended == 1
        assert other.tokens is None
        with pytest.raises(RepwiseError) as signed_out:
            other.get_me()
        assert signed_out.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert signed_out.value.reason == "TOKEN_MISSING"

        with pytest.raises(RepwiseError) as wrong:
            other.login(address, "not the password")
        assert (wrong.value.code, wrong.value.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )

    # The first client's session is untouched by the other's logout.
    assert client.get_me().id == registered.user.id


def test_change_password_continues_in_the_new_session(client):
    client.register(email(), PASSWORD)
    before = client.tokens
    client.change_password(PASSWORD, "a brand new passphrase")
    assert client.tokens != before
    assert client.get_me().id == client.user_id
    with pytest.raises(RepwiseError) as wrong:
        client.change_password("not it", "another passphrase")
    assert (wrong.value.code, wrong.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "WRONG_PASSWORD",
    )


def test_delete_account_forgets_the_session_and_its_cached_bundles(client, seeded, tmp_path):
    client.register(email(), PASSWORD)
    # The documented cache layout: <cache_dir>/<sha256 of target and user id>/bundle-<v>.pb
    key = hashlib.sha256(f"{seeded.target}\0{client.user_id}".encode()).hexdigest()[:32]
    (tmp_path / key).mkdir()
    (tmp_path / key / "bundle-4.pb").write_bytes(
        training_pb2.ModelBundle(model_version=4).SerializeToString()
    )
    assert client.cached_model_bundle().model_version == 4

    with pytest.raises(RepwiseError) as wrong:
        client.delete_account("not the password")
    assert wrong.value.reason == "WRONG_PASSWORD"
    assert (tmp_path / key).exists()

    address = client.get_me().email
    client.delete_account(PASSWORD)
    assert client.tokens is None
    assert not (tmp_path / key).exists()
    with pytest.raises(RepwiseError) as gone:
        client.login(address, PASSWORD)
    assert gone.value.reason == "INVALID_CREDENTIALS"


# --- workouts, history, stats, export, catalog -----------------------------------------------


def test_create_get_list_and_stream_history(client):
    client.register(email(), PASSWORD)
    given = a_workout(days_ago(3))
    created = [client.create_workout(a_workout(days_ago(d))) for d in (3, 2, 1)]
    assert given.id == "", "the caller's message is left as it was"
    assert all(is_uuid(w.id) for w in created)
    assert len({w.id for w in created}) == 3
    assert created[0].exercises[0].exercise_name == "Barbell Bench Press"

    fetched = client.get_workout(created[1].id, weight_unit=common_pb2.WEIGHT_UNIT_LB)
    assert fetched.weight_unit == common_pb2.WEIGHT_UNIT_LB
    assert math.isclose(fetched.exercises[0].sets[0].weight, 100 / 0.45359237, rel_tol=1e-6)

    page = client.list_workouts(page_size=2)
    assert len(page.workouts) == 2 and page.next_page_token
    newest_first = [w.id for w in client.iter_workouts(page_size=2)]
    assert newest_first == [w.id for w in reversed(created)]
    recent = [w.id for w in client.iter_workouts(start=days_ago(2.5))]
    assert recent == [created[2].id, created[1].id]

    entries = list(client.stream_history(chunk_size=1))
    assert [e.workout_id for e in entries] == [w.id for w in created]
    newest = list(client.stream_history(order=common_pb2.SORT_ORDER_DESCENDING, end=days_ago(1.5)))
    assert [e.workout_id for e in newest] == [created[1].id, created[0].id]
    assert list(client.stream_history(exercise_ids=[SQUAT])) == []


def test_sync_stats_export_and_catalog(client):
    client.register(email(), PASSWORD)
    synced = client.sync_workouts([a_workout(days_ago(2)), a_workout(days_ago(1))])
    assert [r.outcome for r in synced.results] == [log_pb2.SYNC_OUTCOME_CREATED] * 2
    ids = [r.workout_id for r in synced.results]
    assert all(is_uuid(i) for i in ids)
    assert {c.workout.id for c in synced.changes} == set(ids)

    again = client.sync_workouts(cursor=synced.next_cursor, deletes=[ids[0]])
    assert [r.outcome for r in again.results] == [log_pb2.SYNC_OUTCOME_DELETED]
    assert [w.id for w in client.iter_workouts()] == [ids[1]]

    stats = client.get_stats(weeks=2)
    assert [p.exercise_id for p in stats.progress] == [client.get_exercise(BENCH).id]
    assert stats.progress[0].last_best_e1rm == pytest.approx(100 * (1 + 5 / 30), abs=1e-6)

    exported = json.loads(b"".join(client.export_data()))
    assert ids[1] in json.dumps(exported)
    csv = b"".join(client.export_data(format=log_pb2.EXPORT_FORMAT_STRONG_CSV)).decode()
    assert "Barbell Bench Press" in csv

    assert client.get_exercise(BENCH).slug == BENCH
    benches = list(client.iter_exercises(query="bench press", page_size=2))
    assert len(benches) > 2, "more than one page"
    assert all("bench" in " ".join([e.name, *e.aliases]).lower() for e in benches)
    assert len({e.id for e in benches}) == len(benches)


# --- automatic token refresh -----------------------------------------------------------------


def test_access_token_is_refreshed_shortly_before_it_expires(db, clock, recorder, tmp_path):
    # One-second tokens: the SDK refreshes once 3/4 of the lifetime has passed. The server's
    # 10 s leeway would still accept the old token, so only a proactive refresh changes it.
    running = start_server(db, clock, access_token_seconds=1)
    try:
        with RepwiseClient(running.target, cache_dir=tmp_path, interceptors=[recorder]) as sdk:
            sdk.register(email(), PASSWORD)
            first = sdk.tokens
            time.sleep(1.1)
            sdk.get_me()
            assert [a.method for a in recorder.attempts] == ["Register", "Refresh", "GetMe"]
            assert all(a.code == grpc.StatusCode.OK for a in recorder.attempts)
            assert sdk.tokens is not None and first is not None
            assert sdk.tokens.access_token != first.access_token
            assert recorder.of("GetMe")[0].metadata["authorization"] == (
                f"Bearer {sdk.tokens.access_token}"
            )
    finally:
        running.channel.close()
        running.server.stop(grace=0)


def test_expired_token_is_refreshed_once_on_unauthenticated(client, clock, recorder):
    clock.freeze()
    client.register(email(), PASSWORD)
    clock.advance(3600)  # the server now sees the token as expired; the client cannot know
    assert client.get_me().id == client.user_id
    assert [(a.method, a.code) for a in recorder.attempts[1:]] == [
        ("GetMe", grpc.StatusCode.UNAUTHENTICATED),
        ("Refresh", grpc.StatusCode.OK),
        ("GetMe", grpc.StatusCode.OK),
    ]


def test_ended_session_surfaces_after_one_refresh(client, seeded, recorder, tmp_path):
    address = email()
    client.register(address, PASSWORD)
    with RepwiseClient(seeded.target, cache_dir=tmp_path) as other:
        other.login(address, PASSWORD)
        other.logout(all_sessions=True)
    with pytest.raises(RepwiseError) as ended:
        client.get_me()
    assert ended.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert ended.value.reason == "SESSION_ENDED"
    assert [a.method for a in recorder.attempts[1:]] == ["GetMe", "Refresh"]
    assert client.tokens is None


def test_threads_sharing_a_client_refresh_once(client, clock, recorder):
    clock.freeze()
    client.register(email(), PASSWORD)
    first_refresh_token = client.tokens.refresh_token
    clock.advance(3600)
    start = threading.Barrier(8)

    def work(_: int) -> str:
        start.wait()
        client.list_workouts()
        return client.get_me().id

    with futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(work, range(8))) == {client.user_id}
    refreshes = recorder.of("Refresh")
    assert len(refreshes) == 1
    assert refreshes[0].request.refresh_token == first_refresh_token
    # No reuse detection fired: the session lives on and its refresh token still works.
    client.refresh()
    assert client.get_me().id == client.user_id


def test_threads_keep_working_across_proactive_refreshes(db, clock, recorder, tmp_path):
    running = start_server(db, clock, access_token_seconds=1, jwt_leeway_seconds=0)
    try:
        with RepwiseClient(running.target, cache_dir=tmp_path, interceptors=[recorder]) as sdk:
            sdk.register(email(), PASSWORD)
            deadline = time.monotonic() + 30

            def work(_: int) -> int:
                calls = 0
                # Until the tokens have rotated three times (each after ~3/4 of a second).
                while len(recorder.of("Refresh")) < 3 and time.monotonic() < deadline:
                    sdk.get_me()
                    calls += 1
                return calls

            with futures.ThreadPoolExecutor(6) as pool:
                assert all(n > 0 for n in pool.map(work, range(6)))
            sent = [a.request.refresh_token for a in recorder.of("Refresh")]
            assert len(sent) >= 3
            assert len(set(sent)) == len(sent), "a refresh token was sent twice"
            assert sdk.get_me().id == sdk.user_id
    finally:
        running.channel.close()
        running.server.stop(grace=0)


# --- retries ---------------------------------------------------------------------------------


def test_create_retried_after_a_lost_response_stores_one_workout(client, recorder):
    client.register(email(), PASSWORD)
    recorder.fail("CreateWorkout", "lose", "drop")
    stored = client.create_workout(a_workout(days_ago(1)))

    attempts = recorder.of("CreateWorkout")
    assert len(attempts) == 3
    assert attempts[0].code == grpc.StatusCode.OK, "the first attempt did reach the server"
    assert len({a.request.request_id for a in attempts}) == 1
    assert is_uuid(attempts[0].request.request_id)
    assert {a.request.workout.id for a in attempts} == {stored.id}
    assert len({a.metadata["x-request-id"] for a in attempts}) == 1
    assert [w.id for w in client.iter_workouts()] == [stored.id]

    recorder.fail("SyncWorkouts", "lose")
    synced = client.sync_workouts([a_workout(days_ago(2))])
    assert len(recorder.of("SyncWorkouts")) == 2
    assert [r.outcome for r in synced.results] == [log_pb2.SYNC_OUTCOME_UNCHANGED]
    assert len(list(client.iter_workouts())) == 2


def test_create_exercise_retried_after_a_lost_response_stores_one(client, recorder):
    client.register(email(), PASSWORD)
    recorder.fail("CreateExercise", "lose")
    created = client.create_exercise(
        catalog_pb2.Exercise(
            name="Sled push",
            primary_muscles=[common_pb2.MUSCLE_QUADRICEPS],
            equipment=common_pb2.EQUIPMENT_OTHER,
        )
    )
    assert len(recorder.of("CreateExercise")) == 2
    mine = list(client.iter_exercises(only_private=True))
    assert [e.id for e in mine] == [created.id]


def test_non_idempotent_calls_are_never_retried(client, recorder):
    address = email()
    client.register(address, PASSWORD)
    recorder.fail("ChangePassword", "lose")
    with pytest.raises(RepwiseError) as lost:
        client.change_password(PASSWORD, "a brand new passphrase")
    assert lost.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(recorder.of("ChangePassword")) == 1

    # It went through once: every session ended, and the new password works.
    recorder.fail("Login", "drop")
    with pytest.raises(RepwiseError):
        client.login(address, "a brand new passphrase")
    assert len(recorder.of("Login")) == 1
    client.login(address, "a brand new passphrase")

    created = client.create_workout(a_workout(days_ago(1)))
    recorder.fail("UpdateWorkout", "drop")
    created.title = "Pull"
    with pytest.raises(RepwiseError):
        client.update_workout(created)
    assert len(recorder.of("UpdateWorkout")) == 1


def test_reads_give_up_after_the_configured_retries(seeded, recorder, tmp_path):
    with RepwiseClient(
        seeded.target, cache_dir=tmp_path, retries=2, interceptors=[recorder]
    ) as sdk:
        sdk.register(email(), PASSWORD)
        recorder.fail("GetMe", "drop", "drop", "drop")
        with pytest.raises(RepwiseError) as gave_up:
            sdk.get_me()
        assert gave_up.value.code == grpc.StatusCode.UNAVAILABLE
        assert len(recorder.of("GetMe")) == 3
        assert sdk.get_me().id == sdk.user_id


def test_streams_are_retried_only_before_their_first_message(client, recorder):
    client.register(email(), PASSWORD)
    created = [client.create_workout(a_workout(days_ago(d))) for d in (2, 1)]

    recorder.fail("StreamHistory", "drop")
    assert [e.workout_id for e in client.stream_history(chunk_size=1)] == [w.id for w in created]
    assert len(recorder.of("StreamHistory")) == 2

    recorder.fail("StreamHistory", "break")
    seen = []
    with pytest.raises(RepwiseError) as broken:
        for entry in client.stream_history(chunk_size=1):
            seen.append(entry.workout_id)
    assert broken.value.code == grpc.StatusCode.UNAVAILABLE
    assert seen == [created[0].id], "nothing repeated, nothing made up"
    assert len(recorder.of("StreamHistory")) == 3


def test_retry_info_from_the_server_sets_the_wait(client, recorder):
    client.register(email(), PASSWORD)
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(300)
    busy = FakeRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too many streams",
        error_details_pb2.ErrorInfo(reason="TOO_MANY_STREAMS", domain="repwise.v1"),
        error_details_pb2.RetryInfo(retry_delay=delay),
    )
    recorder.fail("GetMe", busy)
    assert client.get_me().id == client.user_id
    first, second = recorder.of("GetMe")
    assert second.at - first.at >= 0.3

    client.retries = 0
    recorder.fail("GetMe", busy)
    with pytest.raises(RepwiseError) as refused:
        client.get_me()
    assert refused.value.retry_after == pytest.approx(0.3)
    assert refused.value.reason == "TOO_MANY_STREAMS"


# --- errors ----------------------------------------------------------------------------------


def test_errors_carry_code_reason_field_and_request_id(client, recorder):
    client.register(email(), PASSWORD)
    bad = a_workout(
        days_ago(1),
        log_pb2.PerformedExercise(exercise_id=BENCH, sets=[log_pb2.ExerciseSet(reps=-1)]),
    )
    with pytest.raises(RepwiseError) as invalid:
        client.create_workout(bad)
    error = invalid.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == "workout.exercises[0].sets[0].reps"
    assert error.reason == "INVALID_ARGUMENT"
    assert error.field in error.message
    assert error.request_id == recorder.of("CreateWorkout")[-1].metadata["x-request-id"]
    assert str(error).startswith("INVALID_ARGUMENT: ")
    assert list(client.iter_workouts()) == []

    with pytest.raises(RepwiseError) as missing:
        client.get_workout(str(uuid.uuid4()))
    assert (missing.value.code, missing.value.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "WORKOUT_NOT_FOUND",
    )
    assert missing.value.field == ""


# --- notebooks -------------------------------------------------------------------------------


def log_bench_sessions(client: RepwiseClient) -> list[log_pb2.Workout]:
    first = a_workout(
        days_ago(3),
        log_pb2.PerformedExercise(
            exercise_id=BENCH,
            sets=[
                log_pb2.ExerciseSet(reps=10, weight=60.0, kind=log_pb2.SET_KIND_WARMUP),
                log_pb2.ExerciseSet(reps=5, weight=100.0, rir=1.0),  # 6 to failure: 120
                log_pb2.ExerciseSet(reps=8, weight=90.0, rpe=8.0),  # 10 to failure: 120
            ],
        ),
        log_pb2.PerformedExercise(
            exercise_id="plank",
            sets=[log_pb2.ExerciseSet(duration=duration_pb2.Duration(seconds=60))],
        ),
    )
    second = a_workout(
        days_ago(1),
        log_pb2.PerformedExercise(
            exercise_id=BENCH,
            sets=[
                log_pb2.ExerciseSet(reps=1, weight=130.0, kind=log_pb2.SET_KIND_FAILURE),
                log_pb2.ExerciseSet(reps=20, weight=50.0, distance_m=0.0),  # no estimate
            ],
        ),
    )
    return [client.create_workout(first), client.create_workout(second)]


def test_history_frame_has_one_row_per_set(client):
    client.register(email(), PASSWORD)
    first, second = log_bench_sessions(client)
    frame = client.history_frame(chunk_size=1)

    assert tuple(frame.columns) == COLUMNS
    assert len(frame) == 6
    assert frame.attrs["weight_unit"] == "kg"
    assert str(frame["workout_start_time"].dt.tz) == "UTC"
    assert list(frame["workout_id"]) == [first.id] * 4 + [second.id] * 2
    assert list(frame["position"]) == [0, 0, 0, 1, 0, 0]
    assert list(frame["set_index"]) == [0, 1, 2, 0, 0, 1]
    assert list(frame["kind"]) == ["warmup", "normal", "normal", "normal", "failure", "normal"]

    warmup = frame.iloc[0].to_dict()
    assert warmup["workout_start_time"].to_pydatetime() == first.start_time.ToDatetime(tzinfo=UTC)
    assert warmup["exercise_name"] == "Barbell Bench Press"
    assert (warmup["reps"], warmup["weight"]) == (10, 60.0)
    assert math.isnan(warmup["rpe"]) and math.isnan(warmup["rir"])
    assert (frame.iloc[1]["rir"], frame.iloc[2]["rpe"]) == (1.0, 8.0)

    plank = frame.iloc[3]
    assert plank["exercise_id"] == client.get_exercise("plank").id
    assert plank["duration_s"] == 60.0
    assert frame["reps"].isna().iloc[3] and math.isnan(plank["weight"])
    assert frame.iloc[5]["distance_m"] == 0.0 and math.isnan(frame.iloc[4]["distance_m"])

    only_recent = client.history_frame(start=days_ago(2))
    assert set(only_recent["workout_id"]) == {second.id}
    assert tuple(client.history_frame(exercise_ids=[SQUAT]).columns) == COLUMNS


def test_plot_progress_draws_e1rm_and_volume_per_session(client):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client.register(email(), PASSWORD)
    log_bench_sessions(client)
    ax = client.plot_progress(BENCH)
    try:
        assert ax.get_title() == "Barbell Bench Press"
        (e1rm_line,) = ax.lines
        assert list(e1rm_line.get_ydata()) == pytest.approx([120.0, 130.0])
        (volume_ax,) = (other for other in ax.figure.axes if other is not ax)
        (volume_line,) = volume_ax.lines
        assert list(volume_line.get_ydata()) == pytest.approx([100 * 5 + 90 * 8, 130 * 1 + 50 * 20])
        # The same Epley rules as the server's statistics.
        bench = client.get_exercise(BENCH).id
        (progress,) = (p for p in client.get_stats().progress if p.exercise_id == bench)
        assert progress.last_best_e1rm == pytest.approx(e1rm_line.get_ydata()[-1])
        assert progress.last_volume == pytest.approx(volume_line.get_ydata()[-1])

        _, given = plt.subplots()
        assert client.plot_progress("plank", ax=given) is given  # durations only
    finally:
        plt.close("all")
    with pytest.raises(ValueError, match="no sets"):
        client.plot_progress(SQUAT)


# --- model bundle cache ----------------------------------------------------------------------


class FakeTraining(training_pb2_grpc.TrainingServiceServicer):
    """A TrainingService that serves whatever bundle the test publishes."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.bundle = training_pb2.ModelBundle()
        self.known_versions: list[int] = []

    def publish(self, version: int) -> None:
        self.bundle = training_pb2.ModelBundle(
            model_version=version,
            schema_version=1,
            # This SDK's schema, so it keeps and uses the bundle.
            feature_names=FEATURE_NAMES,
            state_names=STATE_NAMES,
            sequence_parameters=training_pb2.SequenceParameters(**SEQUENCE_PARAMETERS),
            coefficients=training_pb2.Matrix(rows=1, cols=2, values=[0.5, float(version)]),
            weights=training_pb2.ScoreWeights(routine=1.0, frequency=0.25),
            exercise_ids=["e1", "e2"],
        )

    def GetModelBundle(self, request, context):
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong token")
        self.known_versions.append(request.known_version)
        if request.known_version == self.bundle.model_version:
            return training_pb2.GetModelBundleResponse(not_modified=True)
        return training_pb2.GetModelBundleResponse(bundle=self.bundle)


@dataclass
class FakeServer:
    target: str
    servicer: FakeTraining
    server: grpc.Server
    tokens: Tokens


@pytest.fixture
def fake_training() -> Iterator[FakeServer]:
    tokens = Tokens(a_token("user-1"), "refresh")
    servicer = FakeTraining(tokens.access_token)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    training_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield FakeServer(f"127.0.0.1:{port}", servicer, server, tokens)
    server.stop(grace=0)


def bundle_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


def test_bundle_is_downloaded_once_and_then_served_from_cache(fake_training, tmp_path):
    fake_training.servicer.publish(1)
    with RepwiseClient(fake_training.target, cache_dir=tmp_path) as sdk:
        sdk.resume_session(fake_training.tokens)
        assert sdk.cached_model_bundle() is None
        first = sdk.fetch_model_bundle()
        assert first == fake_training.servicer.bundle
        assert bundle_files(tmp_path) == ["bundle-1.pb"]
        (stored,) = tmp_path.rglob("bundle-1.pb")
        assert stored.stat().st_mode & 0o077 == 0, "personal data, readable by its owner only"

        again = sdk.fetch_model_bundle()
        assert again == first
        assert fake_training.servicer.known_versions == [0, 1], "the second call was not_modified"

        for version in (2, 3):
            fake_training.servicer.publish(version)
            assert sdk.fetch_model_bundle().model_version == version
        assert fake_training.servicer.known_versions == [0, 1, 1, 2]
        assert bundle_files(tmp_path) == ["bundle-2.pb", "bundle-3.pb"], "the newest two"
        assert sdk.cached_model_bundle() == fake_training.servicer.bundle


def test_bundle_cache_is_per_server_and_user(fake_training, tmp_path):
    fake_training.servicer.publish(1)
    with RepwiseClient(fake_training.target, cache_dir=tmp_path) as sdk:
        sdk.resume_session(fake_training.tokens)
        sdk.fetch_model_bundle()
        sdk.resume_session(Tokens(a_token("user-2"), "refresh"))
        assert sdk.cached_model_bundle() is None
    with RepwiseClient("127.0.0.1:1", cache_dir=tmp_path) as elsewhere:
        elsewhere.resume_session(fake_training.tokens)
        assert elsewhere.cached_model_bundle() is None
    with RepwiseClient(fake_training.target, cache_dir=tmp_path) as signed_out:
        with pytest.raises(RepwiseError) as unknown:
            signed_out.cached_model_bundle()
        assert unknown.value.reason == "NOT_SIGNED_IN"


def test_cached_bundle_serves_offline(fake_training, tmp_path):
    fake_training.servicer.publish(7)
    with RepwiseClient(fake_training.target, cache_dir=tmp_path, retries=1) as sdk:
        sdk.resume_session(fake_training.tokens)
        online = sdk.fetch_model_bundle()
        fake_training.server.stop(grace=0).wait()

        assert sdk.fetch_model_bundle() == online
        with pytest.raises(RepwiseError) as down:
            sdk.get_model_bundle(known_version=7)
        assert down.value.code == grpc.StatusCode.UNAVAILABLE

    # A later process, with the stored session and no network at all.
    with RepwiseClient(fake_training.target, cache_dir=tmp_path, retries=0) as later:
        later.resume_session(fake_training.tokens)
        assert later.cached_model_bundle() == online
        assert later.fetch_model_bundle() == online
        later.resume_session(Tokens(a_token("user-2"), "refresh"))
        with pytest.raises(RepwiseError) as nothing_cached:
            later.fetch_model_bundle()
        assert nothing_cached.value.code == grpc.StatusCode.UNAVAILABLE
