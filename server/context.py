"""Per-call context: the request id and the authenticated caller."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Principal:
    """The caller, as the access token says. Whether the session is still live
    is checked against the database by the handler (server.auth.service)."""

    user_id: str
    session_id: str
    token_id: str


@dataclass
class CallInfo:
    request_id: str
    method: str
    user_id: str | None = field(default=None)
    # time.monotonic() by which the client stops waiting, if it set a deadline.
    deadline: float | None = field(default=None)


def deadline_passed() -> bool:
    call = current_call.get()
    return call is not None and call.deadline is not None and time.monotonic() > call.deadline


current_call: ContextVar[CallInfo | None] = ContextVar("current_call", default=None)
current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)
