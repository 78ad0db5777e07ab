"""Server interceptors, outermost first: request id + logging, error mapping, authentication.

Each wraps the method's behavior, so the same code covers unary and streaming
calls, and the caller is known (in a ContextVar) while the handler runs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.auth.tokens import TokenIssuer
from server.context import CallInfo, current_call, current_principal
from server.db import is_unavailable
from server.errors import DomainError, InvalidArgument, ResourceExhausted, Unauthenticated
from server.metrics import RpcMetrics

log = logging.getLogger("repwise.rpc")
ERROR_DOMAIN = "repwise.v1"
REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# Methods anyone may call. Everything else needs a valid access token.
OPEN_METHODS = frozenset(
    {
        "/repwise.v1.AuthService/Register",
        "/repwise.v1.AuthService/Login",
        "/repwise.v1.AuthService/Refresh",
    }
)
OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class _BehaviorInterceptor(grpc.ServerInterceptor):
    """Wraps whichever behavior a method handler has."""

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        kind = (
            ("stream" if handler.request_streaming else "unary")
            + "_"
            + ("stream" if handler.response_streaming else "unary")
        )
        behavior = getattr(handler, kind)
        if handler.response_streaming:
            wrapped = self.wrap_stream(behavior, details.method, details.invocation_metadata)
        else:
            wrapped = self.wrap_unary(behavior, details.method, details.invocation_metadata)
        return handler._replace(**{kind: wrapped})

    def wrap_unary(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        raise NotImplementedError

    def wrap_stream(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        raise NotImplementedError


def _reset(var: Any, token: Any) -> None:
    # A stream abandoned by its client may be finalized from another context.
    with contextlib.suppress(ValueError):
        var.reset(token)


def _metadata_values(metadata: Any, key: str) -> list[str]:
    return [v for k, v in (metadata or ()) if k == key]


def _unfinished_code(info: CallInfo, context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status of a call that ended with neither a result nor a chosen status:
    a stream closed because its client went away or its deadline passed."""
    if info.deadline is not None and time.monotonic() >= info.deadline:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if not context.is_active():
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class LoggingInterceptor(_BehaviorInterceptor):
    """Gives every call a request id (the client's x-request-id if well formed),
    returns it in the initial metadata, logs one line per call and counts it
    (server/metrics.py: started, handled by status code, duration)."""

    def __init__(self) -> None:
        self._rpcs: dict[str, RpcMetrics] = {}

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = super().intercept_service(continuation, details)
        # A method's series are resolved on its first call, before its behavior runs.
        if handler is not None and details.method not in self._rpcs:
            self._rpcs[details.method] = RpcMetrics(
                details.method, handler.request_streaming, handler.response_streaming
            )
        return handler

    def _begin(self, method: str, metadata: Any, context: grpc.ServicerContext) -> CallInfo:
        given = _metadata_values(metadata, REQUEST_ID_KEY)
        request_id = (
            given[0]
            if len(given) == 1 and isinstance(given[0], str) and _REQUEST_ID_RE.match(given[0])
            else uuid.uuid4().hex
        )
        remaining = context.time_remaining()
        # grpcio reports ~9e18 s remaining when the client set no deadline.
        has_deadline = remaining is not None and remaining < 1e9
        deadline = time.monotonic() + remaining if has_deadline else None
        info = CallInfo(request_id=request_id, method=method, deadline=deadline)
        self._rpcs[method].started()
        with contextlib.suppress(ValueError):  # already sent
            context.send_initial_metadata(((REQUEST_ID_KEY, request_id),))
        return info

    def _end(
        self, info: CallInfo, context: grpc.ServicerContext, started: float, failed: bool
    ) -> None:
        seconds = time.perf_counter() - started
        code = context.code() if hasattr(context, "code") else None
        if code is None:
            code = _unfinished_code(info, context) if failed else grpc.StatusCode.OK
        code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        self._rpcs[info.method].handled(code_name, seconds)
        log.info(
            "rpc",
            extra={
                "request_id": info.request_id,
                "method": info.method,
                "code": code_name,
                "duration_ms": round(seconds * 1000, 2),
                "user_id": info.user_id,
                "peer": context.peer(),
            },
        )

    def wrap_unary(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            info = self._begin(method, metadata, context)
            token = current_call.set(info)
            failed = True
            try:
                result = behavior(request, context)
                failed = False
                return result
            finally:
                current_call.reset(token)
                self._end(info, context, started, failed)

        return call

    def wrap_stream(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            info = self._begin(method, metadata, context)
            token = current_call.set(info)
            failed = True
            try:
                yield from behavior(request, context)
                # A stream may end quietly when its client leaves (health Watch does).
                failed = not context.is_active()
            finally:
                _reset(current_call, token)
                self._end(info, context, started, failed)

        return call


def _status_for(error: DomainError, request_id: str | None) -> status_pb2.Status:
    code = grpc.StatusCode[error.status]
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    if error.field:
        info.metadata["field"] = error.field
    if request_id:
        info.metadata["request_id"] = request_id
    details = [info]
    if error.field and error.status == "INVALID_ARGUMENT":
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=error.field, description=error.message
                    )
                ]
            )
        )
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_seconds * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=packed
    )


class _Malformed:
    """Stands for a request body that is not a valid encoding of the method's request."""


_MALFORMED = _Malformed()


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError, or a RuntimeError from upb's recursion limit
            return _MALFORMED

    return tolerant


def _refuse_malformed(request: Any, method: str) -> None:
    if request is _MALFORMED:
        raise InvalidArgument(
            "request", f"is not a valid protobuf message for {method}", reason="MALFORMED_REQUEST"
        )


class ErrorInterceptor(_BehaviorInterceptor):
    """Turns exceptions into statuses: domain errors carry their own code; an
    unreachable database is UNAVAILABLE; anything else is INTERNAL with a
    generic message and the traceback in the log. Never UNKNOWN.

    It also caps streaming calls (history, health Watch, reflection): each holds
    a server thread while open, so past `max_streams` a new stream is refused
    with RESOURCE_EXHAUSTED rather than let streams take every thread.
    """

    def __init__(self, max_streams: int) -> None:
        self._streams = threading.BoundedSemaphore(max_streams)

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = super().intercept_service(continuation, details)
        # grpcio answers a body its deserializer refuses with INTERNAL ("Exception
        # deserializing request!"); the handler gets a marker instead and refuses it as
        # INVALID_ARGUMENT. Request streams keep grpcio's answer: they are read mid-handler.
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        return handler._replace(request_deserializer=_tolerant(handler.request_deserializer))

    def _handle(self, error: BaseException, context: grpc.ServicerContext, method: str) -> None:
        info = current_call.get()
        request_id = info.request_id if info else None
        if isinstance(error, DomainError):
            context.abort_with_status(rpc_status.to_status(_status_for(error, request_id)))
        code = context.code() if hasattr(context, "code") else None
        if code not in (None, grpc.StatusCode.OK) and not isinstance(error, NotImplementedError):
            raise error  # the handler already chose a status (context.abort)
        if isinstance(error, NotImplementedError):
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"{method.lstrip('/')} is not implemented yet"
            )
        if is_unavailable(error):
            log.warning("database unavailable in %s: %s", method, type(error).__name__)
            context.abort(
                grpc.StatusCode.UNAVAILABLE, "the database is unavailable right now; retry shortly"
            )
        log.error("unexpected error in %s (request %s)", method, request_id, exc_info=error)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")

    def wrap_unary(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except Exception as error:
                self._handle(error, context, method)
                raise

        return call

    def wrap_stream(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            admitted = False
            try:
                admitted = self._streams.acquire(blocking=False)
                if not admitted:
                    raise ResourceExhausted(
                        "too many streams are open on this server; retry shortly",
                        reason="TOO_MANY_STREAMS",
                        retry_after_seconds=1,
                    )
                yield from behavior(request, context)
            except Exception as error:
                self._handle(error, context, method)
                raise
            finally:
                if admitted:
                    self._streams.release()

        return call


def is_open(method: str) -> bool:
    return method in OPEN_METHODS or method.startswith(OPEN_SERVICE_PREFIXES)


class AuthInterceptor(_BehaviorInterceptor):
    """Checks the bearer token of every non-open method before its handler runs, then
    refuses a body that did not decode (ErrorInterceptor's tolerant deserializer): after
    the token, so a caller without one gets UNAUTHENTICATED whatever it sends.

    Only the token's signature and claims are checked here; handlers then check,
    in their own transaction, that the session is still live (so logout and
    password changes take effect at once).
    """

    def __init__(self, tokens: TokenIssuer) -> None:
        self.tokens = tokens

    def _authenticate(self, metadata: Any) -> Any:
        values = _metadata_values(metadata, "authorization")
        if not values:
            raise Unauthenticated(
                "missing authorization metadata; send 'authorization: Bearer <access token>'",
                reason="TOKEN_MISSING",
            )
        if len(values) > 1:
            raise Unauthenticated("send exactly one authorization header", reason="TOKEN_INVALID")
        value = values[0]
        if not isinstance(value, str):
            raise Unauthenticated("authorization metadata must be text", reason="TOKEN_INVALID")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "authorization must be 'Bearer <access token>'", reason="TOKEN_INVALID"
            )
        principal = self.tokens.verify_access(token.strip())
        info = current_call.get()
        if info is not None:
            info.user_id = principal.user_id
        return current_principal.set(principal)

    def wrap_unary(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        if is_open(method):

            def open_call(request: Any, context: grpc.ServicerContext) -> Any:
                _refuse_malformed(request, method)
                return behavior(request, context)

            return open_call

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            token = self._authenticate(metadata)
            try:
                _refuse_malformed(request, method)
                return behavior(request, context)
            finally:
                current_principal.reset(token)

        return call

    def wrap_stream(self, behavior: Behavior, method: str, metadata: Any) -> Behavior:
        if is_open(method):

            def open_call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                _refuse_malformed(request, method)
                yield from behavior(request, context)

            return open_call

        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token = self._authenticate(metadata)
            try:
                _refuse_malformed(request, method)
                yield from behavior(request, context)
            finally:
                _reset(current_principal, token)

        return call
