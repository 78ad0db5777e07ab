"""Request ids on creates (AIP-155): a retried create returns the first result,
and the same request_id with other content is refused."""

from __future__ import annotations

import hashlib
from datetime import datetime

from google.protobuf.message import Message
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, Session, mapped_column

from server.db import Base, UTCDateTime
from server.errors import AlreadyExists, InvalidArgument


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    # SHA-256 of (user, method, request_id).
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # SHA-256 of the request, to tell a retry from a different request.
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


def check_request_id(request_id: str) -> str:
    request_id = request_id.strip()
    if len(request_id) > 128 or not request_id.isprintable():
        raise InvalidArgument("request_id", "must be at most 128 printable characters (a UUID)")
    return request_id


def request_hash(message: Message) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def _key(user_id: str, method: str, request_id: str) -> str:
    return hashlib.sha256(f"{user_id}\0{method}\0{request_id}".encode()).hexdigest()


def find(s: Session, user_id: str, method: str, request_id: str, digest: str) -> str | None:
    """The resource id a previous identical request created, if any."""
    row = s.get(IdempotencyKey, _key(user_id, method, request_id))
    if row is None:
        return None
    if row.request_hash != digest:
        raise AlreadyExists(
            "request_id was already used for a different request", reason="REQUEST_ID_REUSED"
        )
    return row.resource_id


def remember(
    s: Session,
    user_id: str,
    method: str,
    request_id: str,
    digest: str,
    resource_id: str,
    now: datetime,
) -> None:
    s.add(
        IdempotencyKey(
            key=_key(user_id, method, request_id),
            user_id=user_id,
            request_hash=digest,
            resource_id=resource_id,
            created_at=now,
        )
    )
    s.flush()
