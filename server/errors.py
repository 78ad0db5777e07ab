"""Domain errors. Each knows its gRPC status code (by name) and a stable reason.

Domain code raises these; one interceptor turns them into statuses, so
servicers never abort by hand and domain code never imports grpc.
"""

from __future__ import annotations


def shown(value: str, limit: int = 60) -> str:
    """A client's value quoted for an error message, cut short: messages stay short however
    long the value (status messages travel in a size-limited trailer)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"


class DomainError(Exception):
    status = "INTERNAL"
    reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.field = field
        self.retry_after_seconds = retry_after_seconds


class InvalidArgument(DomainError):
    status = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(f"{field}: {message}", reason=reason, field=field)


class Unauthenticated(DomainError):
    status = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    status = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    status = "NOT_FOUND"
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    status = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class Aborted(DomainError):
    """A stale etag or a lost race: re-read and try again."""

    status = "ABORTED"
    reason = "ABORTED"


class FailedPrecondition(DomainError):
    status = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    status = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(DomainError):
    status = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class Unavailable(DomainError):
    status = "UNAVAILABLE"
    reason = "UNAVAILABLE"
