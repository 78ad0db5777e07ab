"""RepwiseClient: the Python SDK for the repwise.v1 gRPC API.

One client talks to one server for one signed-in user. It keeps the session's tokens and
refreshes them before they expire (and once more when the server answers UNAUTHENTICATED),
retries only calls that cannot do anything twice, raises RepwiseError with the server's
google.rpc details, and caches the model bundle on disk so recommendations work offline.

Methods take plain values (or protobuf messages for resources) and return the generated
protobuf messages: the resource itself when a response only wraps one (get_workout returns a
Workout), the response message otherwise, and None when the response is empty.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from client_sdk import frames
from client_sdk.model import DAY, RECENT_DAYS
from client_sdk.recommend import LocalModel, Recommendation, compatible
from repwise.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    log_pb2,
    log_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


class _Paged(Protocol):
    next_page_token: str


Page = TypeVar("Page", bound=_Paged)

# Codes that say the request may not have been handled, or its answer got lost on the way.
EQUIPMENT_NAMES = {
    number: name.removeprefix("EQUIPMENT_").lower()
    for name, number in common_pb2.Equipment.items()
    if number
}
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0
# A server asking for a longer wait (e.g. a locked sign-in) gets its error to the caller instead
# of blocking the call that long.
MAX_RETRY_WAIT_SECONDS = 30.0
# Refresh this long before the access token expires (at most a quarter of its lifetime).
REFRESH_MARGIN_SECONDS = 60.0
KEEP_BUNDLES = 2
REQUEST_ID_HEADER = "x-request-id"

UNSPECIFIED_UNIT = common_pb2.WEIGHT_UNIT_UNSPECIFIED


class RepwiseError(Exception):
    """A failed call: its gRPC status code and message, and from the google.rpc details the
    stable `reason`, the `field` at fault, the server's `request_id` and how long the server
    asks to wait before retrying (`retry_after`, seconds)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        field: str = "",
        request_id: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field
        self.request_id = request_id
        self.retry_after = retry_after

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, request_id: str = "") -> RepwiseError:
        reason = field = ""
        retry_after: float | None = None
        for detail in _status_details(error):
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                field = field or info.metadata.get("field", "")
                request_id = info.metadata.get("request_id", request_id)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                if bad.field_violations and not field:
                    field = bad.field_violations[0].field
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        return cls(
            error.code(),
            error.details() or "",
            reason=reason,
            field=field,
            request_id=request_id,
            retry_after=retry_after,
        )


def _status_details(error: grpc.RpcError) -> list[Any]:
    try:
        status = rpc_status.from_call(cast(grpc.Call, error))
    except (AttributeError, ValueError):
        # Not a complete grpc.Call, or details contradicting the status: none to trust.
        return []
    return list(status.details) if status is not None else []


@dataclass(frozen=True)
class Tokens:
    """A session's tokens. Store them to resume the session later with resume_session()."""

    access_token: str
    refresh_token: str


@dataclass(frozen=True)
class _Session:
    tokens: Tokens
    user_id: str
    # On this client's clock (time.time()); None when the token does not say when it expires.
    refresh_at: float | None


def _jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified: the client only reads sub, iat and exp from its own
    token; the server is the one that checks signatures."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp; a naive datetime is taken as UTC."""
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


def _time_range(start: datetime | None, end: datetime | None) -> common_pb2.TimeRange | None:
    if start is None and end is None:
        return None
    span = common_pb2.TimeRange()
    if start is not None:
        span.start_time.CopyFrom(_timestamp(start))
    if end is not None:
        span.end_time.CopyFrom(_timestamp(end))
    return span


def _copy(message: Req) -> Req:
    out = type(message)()
    out.CopyFrom(message)
    return out


def _bundle_files(directory: Path) -> list[tuple[int, Path]]:
    """Cached bundles as (model_version, path), newest first."""
    found = []
    for path in directory.glob("bundle-*.pb"):
        try:
            found.append((int(path.stem.removeprefix("bundle-")), path))
        except ValueError:
            continue
    return sorted(found, reverse=True)


class RepwiseClient:
    """A client of one repwise server.

    `credentials` (grpc.ssl_channel_credentials(...)) makes the channel TLS, otherwise it is
    plaintext. `timeout` is each attempt's deadline in seconds, streams included. `retries` is
    how many times an idempotent call is sent again after UNAVAILABLE or DEADLINE_EXCEEDED (or
    when the server's RetryInfo asks for it). Model bundles are cached under `cache_dir`
    (default ~/.cache/repwise), in one folder per server and user. `interceptors` are added to
    the channel, e.g. for tracing.

    Thread-safe: threads may share one client; a token refresh runs once for all of them.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
        cache_dir: str | os.PathLike[str] | None = None,
        retries: int = 3,
        interceptors: Sequence[
            grpc.UnaryUnaryClientInterceptor[Any, Any] | grpc.UnaryStreamClientInterceptor[Any, Any]
        ] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        # Model bundles of users with long, varied histories exceed gRPC's 4 MiB default.
        options = [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
        channel = (
            grpc.secure_channel(target, credentials, options)
            if credentials is not None
            else grpc.insecure_channel(target, options)
        )
        self._channel = channel
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self._auth = auth_pb2_grpc.AuthServiceStub(channel)
        self._catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._logs = log_pb2_grpc.LogServiceStub(channel)
        self._training = training_pb2_grpc.TrainingServiceStub(channel)
        self._session: _Session | None = None
        self._refresh_lock = threading.Lock()
        # The server's clock minus ours, learnt from each new token's iat, so that a phone whose
        # clock is off neither refreshes on every call nor only after the token has expired.
        self._clock_skew = 0.0

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RepwiseClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- session ---------------------------------------------------------------------------

    @property
    def tokens(self) -> Tokens | None:
        """The current session's tokens (they change with every refresh), or None."""
        session = self._session
        return session.tokens if session else None

    @property
    def user_id(self) -> str | None:
        session = self._session
        return session.user_id if session else None

    def resume_session(self, tokens: Tokens) -> None:
        """Continue a session whose tokens were stored earlier; needs no network."""
        self._start_session(tokens.access_token, tokens.refresh_token, fresh=False)

    def _start_session(self, access_token: str, refresh_token: str, *, fresh: bool) -> None:
        claims = _jwt_claims(access_token)
        exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
        refresh_at = None
        if exp is not None and iat is not None and exp > iat:
            if fresh:  # iat is the server's "now" for a token issued just now
                self._clock_skew = iat - time.time()
            margin = min(REFRESH_MARGIN_SECONDS, (exp - iat) / 4)
            refresh_at = exp - margin - self._clock_skew
        self._session = _Session(
            Tokens(access_token, refresh_token), str(claims.get("sub", "")), refresh_at
        )

    def _access_token(self) -> str | None:
        session = self._session
        if session is None:
            return None
        if session.refresh_at is not None and time.time() >= session.refresh_at:
            self._refresh(stale=session.tokens.access_token)
            session = self._session
        return session.tokens.access_token if session else None

    def _refresh(self, stale: str | None) -> None:
        """Rotate the tokens, unless another thread already replaced `stale` (the server ends
        a session whose refresh token is used twice, so only one refresh may run)."""
        with self._refresh_lock:
            session = self._session
            if session is None:
                raise RepwiseError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "not signed in; call login() or register() first",
                    reason="NOT_SIGNED_IN",
                )
            if stale is not None and session.tokens.access_token != stale:
                return
            try:
                # Safe to retry: within its grace window the server answers a repeated refresh
                # with the same new tokens.
                response = self._unary(
                    self._auth.Refresh,
                    auth_pb2.RefreshRequest(refresh_token=session.tokens.refresh_token),
                    idempotent=True,
                    signed_in=False,
                )
            except RepwiseError as error:
                if error.code == grpc.StatusCode.UNAUTHENTICATED:
                    self._session = None  # ended on the server; only a new sign-in helps
                raise
            self._start_session(response.access_token, response.refresh_token, fresh=True)

    # --- calls -----------------------------------------------------------------------------

    @staticmethod
    def _metadata(token: str | None, request_id: str) -> tuple[tuple[str, str], ...]:
        # One request id for every attempt of a call, so the server's log ties retries together.
        if token is None:
            return ((REQUEST_ID_HEADER, request_id),)
        return ((REQUEST_ID_HEADER, request_id), ("authorization", f"Bearer {token}"))

    def _refreshed_after(self, error: RepwiseError, token: str | None, refreshed: bool) -> bool:
        """On the first UNAUTHENTICATED of a call made with a token, refresh and say so."""
        if error.code != grpc.StatusCode.UNAUTHENTICATED or token is None or refreshed:
            return False
        self._refresh(stale=token)
        return True

    def _retry_delay(self, error: RepwiseError, attempt: int) -> float | None:
        """Seconds to wait before sending an idempotent call again, or None to give up."""
        if attempt >= self.retries:
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= MAX_RETRY_WAIT_SECONDS else None
        if error.code not in TRANSIENT_CODES:
            return None
        # Exponential backoff with full jitter, so clients cut off together don't return together.
        return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        idempotent: bool,
        signed_in: bool = True,
    ) -> Resp:
        request_id = uuid.uuid4().hex
        attempt, refreshed = 0, False
        while True:
            token = self._access_token() if signed_in else None
            try:
                return method(
                    request, timeout=self.timeout, metadata=self._metadata(token, request_id)
                )
            except grpc.RpcError as rpc_error:
                error = RepwiseError.from_rpc_error(rpc_error, request_id)
                if self._refreshed_after(error, token, refreshed):
                    refreshed = True
                    continue
                delay = self._retry_delay(error, attempt) if idempotent else None
                if delay is None:
                    raise error from rpc_error
            time.sleep(delay)
            attempt += 1

    def _stream(
        self, method: grpc.UnaryStreamMultiCallable[Req, Resp], request: Req
    ) -> Iterator[Resp]:
        """A server stream of a read. It is retried only until its first message arrives:
        after that a retry would hand the caller the same messages twice."""
        request_id = uuid.uuid4().hex
        attempt, refreshed = 0, False
        while True:
            token = self._access_token()
            call = method(request, timeout=self.timeout, metadata=self._metadata(token, request_id))
            received = False
            try:
                for response in call:
                    received = True
                    yield response
                return
            except grpc.RpcError as rpc_error:
                error = RepwiseError.from_rpc_error(rpc_error, request_id)
                if received:
                    raise error from rpc_error
                if self._refreshed_after(error, token, refreshed):
                    refreshed = True
                    continue
                delay = self._retry_delay(error, attempt)
                if delay is None:
                    raise error from rpc_error
            finally:
                call.cancel()  # a stream the caller stopped reading must not hold a server thread
            time.sleep(delay)
            attempt += 1

    # --- AuthService -----------------------------------------------------------------------

    def register(
        self, email: str, password: str, display_name: str = ""
    ) -> auth_pb2.RegisterResponse:
        """Create an account and sign in to it (never retried: it is not idempotent)."""
        response = self._unary(
            self._auth.Register,
            auth_pb2.RegisterRequest(email=email, password=password, display_name=display_name),
            idempotent=False,
            signed_in=False,
        )
        self._start_session(response.access_token, response.refresh_token, fresh=True)
        return response

    def login(self, email: str, password: str) -> auth_pb2.LoginResponse:
        # Never retried: a retry could count as another failed attempt against the sign-in lock.
        response = self._unary(
            self._auth.Login,
            auth_pb2.LoginRequest(email=email, password=password),
            idempotent=False,
            signed_in=False,
        )
        self._start_session(response.access_token, response.refresh_token, fresh=True)
        return response

    def refresh(self) -> None:
        """Rotate the session's tokens now; calls also do it when the access token nears expiry."""
        self._refresh(stale=None)

    def logout(self, all_sessions: bool = False) -> auth_pb2.LogoutResponse:
        """End this session (or all of the user's). The client forgets its tokens either way."""
        try:
            return self._unary(
                self._auth.Logout,
                auth_pb2.LogoutRequest(all_sessions=all_sessions),
                idempotent=False,
            )
        finally:
            self._session = None

    def get_me(self) -> auth_pb2.User:
        return self._unary(self._auth.GetMe, auth_pb2.GetMeRequest(), idempotent=True).user

    def update_me(self, user: auth_pb2.User, update_mask: Sequence[str] = ()) -> auth_pb2.User:
        """Change the profile fields named in `update_mask` (default: those set in `user`)."""
        request = auth_pb2.UpdateMeRequest(
            user=user, update_mask=field_mask_pb2.FieldMask(paths=list(update_mask))
        )
        return self._unary(self._auth.UpdateMe, request, idempotent=False).user

    def change_password(self, current_password: str, new_password: str) -> None:
        """Change the password; every session ends and this client continues in a new one."""
        response = self._unary(
            self._auth.ChangePassword,
            auth_pb2.ChangePasswordRequest(
                current_password=current_password, new_password=new_password
            ),
            idempotent=False,
        )
        self._start_session(response.access_token, response.refresh_token, fresh=True)

    def delete_account(self, password: str) -> None:
        """Delete the account and its data on the server, and its cached bundles here."""
        directory = self._bundle_dir() if self.user_id else None
        self._unary(
            self._auth.DeleteAccount,
            auth_pb2.DeleteAccountRequest(password=password),
            idempotent=False,
        )
        self._session = None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def set_user_role(self, email: str, role: auth_pb2.Role.ValueType) -> auth_pb2.User:
        """Admins only."""
        request = auth_pb2.SetUserRoleRequest(email=email, role=role)
        return self._unary(self._auth.SetUserRole, request, idempotent=False).user

    # --- CatalogService --------------------------------------------------------------------

    def list_exercises(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        muscle: common_pb2.Muscle.ValueType = common_pb2.MUSCLE_UNSPECIFIED,
        equipment: common_pb2.Equipment.ValueType = common_pb2.EQUIPMENT_UNSPECIFIED,
        category: catalog_pb2.Category.ValueType = catalog_pb2.CATEGORY_UNSPECIFIED,
        query: str = "",
        include_archived: bool = False,
        only_private: bool = False,
    ) -> catalog_pb2.ListExercisesResponse:
        request = catalog_pb2.ListExercisesRequest(
            page_size=page_size,
            page_token=page_token,
            muscle=muscle,
            equipment=equipment,
            category=category,
            query=query,
            include_archived=include_archived,
            only_private=only_private,
        )
        return self._unary(self._catalog.ListExercises, request, idempotent=True)

    def iter_exercises(self, **filters: Any) -> Iterator[catalog_pb2.Exercise]:
        """Every exercise list_exercises(**filters) finds, following the page tokens."""
        for page in _pages(self.list_exercises, filters):
            yield from page.exercises

    def get_exercise(self, id: str) -> catalog_pb2.Exercise:
        """By id or slug."""
        request = catalog_pb2.GetExerciseRequest(id=id)
        return self._unary(self._catalog.GetExercise, request, idempotent=True).exercise

    def create_exercise(
        self, exercise: catalog_pb2.Exercise, *, request_id: str | None = None
    ) -> catalog_pb2.Exercise:
        """Create an exercise (PRIVATE unless an admin asks for PUBLIC). A request_id is made
        up when none is given, so a retry returns the first result instead of a second one."""
        request = catalog_pb2.CreateExerciseRequest(
            exercise=exercise, request_id=request_id or str(uuid.uuid4())
        )
        return self._unary(self._catalog.CreateExercise, request, idempotent=True).exercise

    def update_exercise(
        self, exercise: catalog_pb2.Exercise, update_mask: Sequence[str] = ()
    ) -> catalog_pb2.Exercise:
        """Change the exercise named by exercise.id; exercise.etag must be current."""
        request = catalog_pb2.UpdateExerciseRequest(
            exercise=exercise, update_mask=field_mask_pb2.FieldMask(paths=list(update_mask))
        )
        return self._unary(self._catalog.UpdateExercise, request, idempotent=False).exercise

    def delete_exercise(self, id: str, etag: str = "") -> catalog_pb2.DeleteExerciseResponse:
        """Delete an exercise, or archive it when workouts use it (response.archived)."""
        request = catalog_pb2.DeleteExerciseRequest(id=id, etag=etag)
        return self._unary(self._catalog.DeleteExercise, request, idempotent=False)

    # --- LogService ------------------------------------------------------------------------

    def create_workout(
        self, workout: log_pb2.Workout, *, request_id: str | None = None
    ) -> log_pb2.Workout:
        """Store a workout. Without workout.id and request_id the client makes UUIDs up (the
        caller's message is left as it is), so a retried create never stores a second one."""
        workout = _copy(workout)
        workout.id = workout.id or str(uuid.uuid4())
        request = log_pb2.CreateWorkoutRequest(
            workout=workout, request_id=request_id or str(uuid.uuid4())
        )
        return self._unary(self._logs.CreateWorkout, request, idempotent=True).workout

    def get_workout(
        self, id: str, weight_unit: common_pb2.WeightUnit.ValueType = UNSPECIFIED_UNIT
    ) -> log_pb2.Workout:
        request = log_pb2.GetWorkoutRequest(id=id, weight_unit=weight_unit)
        return self._unary(self._logs.GetWorkout, request, idempotent=True).workout

    def list_workouts(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        start: datetime | None = None,
        end: datetime | None = None,
        weight_unit: common_pb2.WeightUnit.ValueType = UNSPECIFIED_UNIT,
    ) -> log_pb2.ListWorkoutsResponse:
        """One page of workouts starting in [start, end), newest first."""
        request = log_pb2.ListWorkoutsRequest(
            page_size=page_size,
            page_token=page_token,
            time_range=_time_range(start, end),
            weight_unit=weight_unit,
        )
        return self._unary(self._logs.ListWorkouts, request, idempotent=True)

    def iter_workouts(self, **filters: Any) -> Iterator[log_pb2.Workout]:
        """Every workout list_workouts(**filters) finds, following the page tokens."""
        for page in _pages(self.list_workouts, filters):
            yield from page.workouts

    def update_workout(self, workout: log_pb2.Workout) -> log_pb2.Workout:
        """Replace the workout named by workout.id; workout.etag must be current."""
        request = log_pb2.UpdateWorkoutRequest(workout=workout)
        return self._unary(self._logs.UpdateWorkout, request, idempotent=False).workout

    def delete_workout(self, id: str, etag: str = "") -> None:
        request = log_pb2.DeleteWorkoutRequest(id=id, etag=etag)
        self._unary(self._logs.DeleteWorkout, request, idempotent=False)

    def sync_workouts(
        self,
        upserts: Iterable[log_pb2.Workout] = (),
        deletes: Iterable[str] = (),
        *,
        cursor: str = "",
        page_size: int = 0,
    ) -> log_pb2.SyncWorkoutsResponse:
        """Send a device's changes and get the server's since `cursor`. Upserts without an id
        get a UUID (the results name it). Retried like a read: a repeated upsert of the same
        content is UNCHANGED and a repeated delete DELETED, so nothing happens twice."""
        request = log_pb2.SyncWorkoutsRequest(
            deletes=list(deletes), cursor=cursor, page_size=page_size
        )
        for workout in upserts:
            item = request.upserts.add()
            item.CopyFrom(workout)
            item.id = item.id or str(uuid.uuid4())
        return self._unary(self._logs.SyncWorkouts, request, idempotent=True)

    @staticmethod
    def _history_request(
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        exercise_ids: Iterable[str] = (),
        order: common_pb2.SortOrder.ValueType = common_pb2.SORT_ORDER_UNSPECIFIED,
        weight_unit: common_pb2.WeightUnit.ValueType = UNSPECIFIED_UNIT,
        chunk_size: int = 0,
    ) -> log_pb2.StreamHistoryRequest:
        return log_pb2.StreamHistoryRequest(
            time_range=_time_range(start, end),
            exercise_ids=list(exercise_ids),
            order=order,
            weight_unit=weight_unit,
            chunk_size=chunk_size,
        )

    def stream_history(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        exercise_ids: Iterable[str] = (),
        order: common_pb2.SortOrder.ValueType = common_pb2.SORT_ORDER_UNSPECIFIED,
        weight_unit: common_pb2.WeightUnit.ValueType = UNSPECIFIED_UNIT,
        chunk_size: int = 0,
    ) -> Iterator[log_pb2.HistoryEntry]:
        """Performed exercises of workouts starting in [start, end), only `exercise_ids` (ids
        or slugs) if given, oldest first unless `order` says otherwise."""
        request = self._history_request(
            start=start,
            end=end,
            exercise_ids=exercise_ids,
            order=order,
            weight_unit=weight_unit,
            chunk_size=chunk_size,
        )
        for chunk in self._stream(self._logs.StreamHistory, request):
            yield from chunk.entries

    def get_stats(
        self,
        *,
        as_of: datetime | None = None,
        weeks: int = 0,
        weight_unit: common_pb2.WeightUnit.ValueType = UNSPECIFIED_UNIT,
    ) -> log_pb2.GetStatsResponse:
        request = log_pb2.GetStatsRequest(
            as_of=_timestamp(as_of) if as_of is not None else None,
            weeks=weeks,
            weight_unit=weight_unit,
        )
        return self._unary(self._logs.GetStats, request, idempotent=True)

    def get_summary(
        self, weight_unit: common_pb2.WeightUnit.ValueType = UNSPECIFIED_UNIT
    ) -> log_pb2.GetSummaryResponse:
        """Streaks, totals and record count as the server keeps them materialized: it may
        trail the latest change by a moment (applied_change_seq < latest_change_seq)."""
        request = log_pb2.GetSummaryRequest(weight_unit=weight_unit)
        return self._unary(self._logs.GetSummary, request, idempotent=True)

    def export_data(
        self,
        format: log_pb2.ExportFormat.ValueType = log_pb2.EXPORT_FORMAT_JSON,
        weight_unit: common_pb2.WeightUnit.ValueType = UNSPECIFIED_UNIT,
    ) -> Iterator[bytes]:
        """The user's data as JSON or Strong CSV, in chunks to write out in order."""
        request = log_pb2.ExportDataRequest(format=format, weight_unit=weight_unit)
        for chunk in self._stream(self._logs.ExportData, request):
            yield chunk.data

    # --- TrainingService -------------------------------------------------------------------

    def get_model_bundle(self, known_version: int = 0) -> training_pb2.GetModelBundleResponse:
        """The bundle, or not_modified when known_version is current. fetch_model_bundle()
        adds the on-disk cache."""
        request = training_pb2.GetModelBundleRequest(known_version=known_version)
        return self._unary(self._training.GetModelBundle, request, idempotent=True)

    def train_now(self) -> training_pb2.TrainNowResponse:
        request = training_pb2.TrainNowRequest()
        return self._unary(self._training.TrainNow, request, idempotent=False)

    def get_training_status(self) -> training_pb2.GetTrainingStatusResponse:
        request = training_pb2.GetTrainingStatusRequest()
        return self._unary(self._training.GetTrainingStatus, request, idempotent=True)

    def run_batch(self, all_users: bool = False) -> training_pb2.RunBatchResponse:
        """Admins only."""
        request = training_pb2.RunBatchRequest(all_users=all_users)
        return self._unary(self._training.RunBatch, request, idempotent=False)

    # --- model bundle cache ----------------------------------------------------------------

    def _bundle_dir(self) -> Path:
        user_id = self.user_id
        if not user_id:
            raise RepwiseError(
                grpc.StatusCode.UNAUTHENTICATED,
                "sign in or resume a session first: model bundles are cached per user",
                reason="NOT_SIGNED_IN",
            )
        key = hashlib.sha256(f"{self.target}\0{user_id}".encode()).hexdigest()[:32]
        return self.cache_dir / key

    def cached_model_bundle(self) -> training_pb2.ModelBundle | None:
        """The newest cached bundle of the signed-in user, without any network call."""
        for version, path in _bundle_files(self._bundle_dir()):
            bundle = training_pb2.ModelBundle()
            try:
                bundle.ParseFromString(path.read_bytes())
            except (OSError, DecodeError):
                continue  # pruned meanwhile by another process, or damaged: try the older one
            if bundle.model_version == version:
                return bundle
        return None

    def fetch_model_bundle(self) -> training_pb2.ModelBundle:
        """The user's current bundle: downloaded only when the cached one is out of date, and
        the cached one when the server cannot be reached, so recommendations work offline."""
        cached = self.cached_model_bundle()
        if cached is not None and not compatible(cached):
            cached = None  # from an older SDK's schema: ask for a fresh bundle
        try:
            response = self.get_model_bundle(known_version=cached.model_version if cached else 0)
        except RepwiseError as error:
            if cached is not None and error.code in TRANSIENT_CODES:
                return cached
            raise
        if response.not_modified and cached is not None:
            return cached
        if not response.HasField("bundle"):
            raise RepwiseError(
                grpc.StatusCode.INTERNAL,
                "the server sent no model bundle, yet the client has none cached",
                reason="NO_BUNDLE",
            )
        try:
            self._store_bundle(response.bundle)
        except OSError as error:
            # The bundle is good; only offline use suffers from an unwritable cache.
            log.warning("could not cache the model bundle in %s: %s", self.cache_dir, error)
        return response.bundle

    def _store_bundle(self, bundle: training_pb2.ModelBundle) -> None:
        directory = self._bundle_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # bundles hold personal data
        path = directory / f"bundle-{bundle.model_version}.pb"
        _write_atomically(path, bundle.SerializeToString())
        for version, old in _bundle_files(directory)[KEEP_BUNDLES:]:
            old.unlink(missing_ok=True)
            for sidecar in (f"equipment-{version}.json", f"history-{version}.pb"):
                (directory / sidecar).unlink(missing_ok=True)

    # --- local recommendations ------------------------------------------------------------

    def local_model(self, now: float | None = None) -> LocalModel:
        """The model bundle (downloaded, or cached when offline) brought up to date with
        the workouts logged since it was trained, and the user's equipment."""
        bundle = self.fetch_model_bundle()
        model = LocalModel.from_bundle(bundle)
        now = time.time() if now is None else now
        since = min(model.stats_time, now - RECENT_DAYS * DAY) if model.stats_time else 0.0
        history = log_pb2.StreamHistoryResponse()
        equipment: list[str] | None = None
        try:
            me = self.get_me()
            equipment = [EQUIPMENT_NAMES[e] for e in me.available_equipment]
            start = datetime.fromtimestamp(since, UTC) if since > 0 else None
            history.entries.extend(
                self.stream_history(start=start, weight_unit=common_pb2.WEIGHT_UNIT_KG)
            )
            self._store_context(bundle.model_version, equipment, history)
        except RepwiseError as error:
            if error.code not in TRANSIENT_CODES:
                raise
            cached = self._cached_context(bundle.model_version)
            if cached is not None:
                equipment, history = cached
        model.observe(history.entries)
        model.equipment = equipment
        return model

    def recommend(
        self,
        k: int = 10,
        current_workout: Sequence[str] = (),
        *,
        equipment: Sequence[str] | None = None,
        now: float | None = None,
    ) -> list[Recommendation]:
        """The k best next exercises, computed on this machine (works offline once a
        bundle is cached). current_workout: exercise ids done so far in the workout under
        way; equipment: defaults to the profile's available equipment (all if unset)."""
        now = time.time() if now is None else now
        model = self.local_model(now)
        allowed = equipment if equipment is not None else (model.equipment or None)
        return model.recommend(k, current_workout, now=now, equipment=allowed)

    def _store_context(
        self, version: int, equipment: list[str], history: log_pb2.StreamHistoryResponse
    ) -> None:
        """Caches what offline recommendations need beside the bundle: the profile's
        equipment and the history since the bundle's statistics."""
        directory = self._bundle_dir()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_atomically(
                directory / f"equipment-{version}.json", json.dumps(equipment).encode()
            )
            _write_atomically(directory / f"history-{version}.pb", history.SerializeToString())
        except OSError as error:
            log.warning("could not cache recent history in %s: %s", self.cache_dir, error)

    def _cached_context(
        self, version: int
    ) -> tuple[list[str], log_pb2.StreamHistoryResponse] | None:
        directory = self._bundle_dir()
        history = log_pb2.StreamHistoryResponse()
        try:
            equipment = json.loads((directory / f"equipment-{version}.json").read_bytes())
            history.ParseFromString((directory / f"history-{version}.pb").read_bytes())
        except (OSError, ValueError, DecodeError):
            return None
        return list(equipment), history

    # --- notebooks (pip install 'repwise[notebook]') ---------------------------------------

    def history_frame(self, **filters: Any) -> pd.DataFrame:
        """The history as a pandas DataFrame, one row per set; `filters` are stream_history's.
        See client_sdk.frames.history_frame for the columns."""
        request = self._history_request(**filters)
        return frames.history_frame(self._stream(self._logs.StreamHistory, request))

    def plot_progress(self, exercise: str, ax: Axes | None = None) -> Axes:
        """Plot an exercise's (id or slug) best estimated 1RM and volume per session."""
        return frames.plot_progress(self.history_frame(exercise_ids=[exercise]), ax=ax)


def _pages(fetch: Callable[..., Page], filters: dict[str, Any]) -> Iterator[Page]:
    """Every page fetch(**filters) returns, following next_page_token."""
    page_token = ""
    while True:
        page = fetch(page_token=page_token, **filters)
        yield page
        page_token = page.next_page_token
        if not page_token:
            return


def _write_atomically(path: Path, data: bytes) -> None:
    """Write aside, then rename: a reader (or a crash) never sees half a file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "repwise"
