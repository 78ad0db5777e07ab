"""Workout events: what the outbox stores for each change, and the message the relay sends.

An event says which workout of which user changed, how, and its number in the user's change
feed; consumers read the workout's current state themselves, so a small payload is enough
and events may arrive late, twice or out of order (docs/events.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

CREATED = "workout.created"
UPDATED = "workout.updated"
DELETED = "workout.deleted"
KINDS = (CREATED, UPDATED, DELETED)
# The routing keys the metrics queue is bound with (AMQP topic pattern).
WORKOUT_EVENTS = "workout.*"
CONTENT_TYPE = "application/json"
# Ids and change numbers are BIGINT columns: anything past these is no event of ours.
MAX_BIGINT = 2**63 - 1
# users.id and workouts.id are String(36).
MAX_ID_LENGTH = 36


class MalformedEvent(ValueError):
    """A message body that is not an event this server writes."""


@dataclass(frozen=True)
class Event:
    id: int
    kind: str  # one of KINDS
    user_id: str
    workout_id: str
    change_seq: int
    occurred_at: datetime  # UTC
    payload: Mapping[str, Any]


def workout_event(
    kind: str,
    *,
    user_id: str,
    workout_id: str,
    change_seq: int | None,
    started_at: datetime,
    version: int,
    occurred_at: datetime,
) -> dict[str, Any]:
    """The outbox row of a change, with the workout as it is after the change. A change_seq
    of None is taken by the insert that stores the workout (logs repository.add_workout)."""
    return {
        "user_id": user_id,
        "workout_id": workout_id,
        "change_seq": change_seq,
        "kind": kind,
        "occurred_at": occurred_at,
        "payload": {"started_at": started_at.isoformat(), "version": version},
    }


def encode(event: Event) -> bytes:
    """The message body: JSON, UTF-8."""
    return json.dumps(
        {
            "id": event.id,
            "type": event.kind,
            "user_id": event.user_id,
            "workout_id": event.workout_id,
            "change_seq": event.change_seq,
            "occurred_at": event.occurred_at.isoformat(),
            "data": dict(event.payload),
        },
        separators=(",", ":"),
    ).encode()


def decode(body: bytes) -> Event:
    """The event in a message body; MalformedEvent when it is not one."""
    try:
        data = json.loads(body)
        event = Event(
            id=data["id"],
            kind=data["type"],
            user_id=data["user_id"],
            workout_id=data["workout_id"],
            change_seq=data["change_seq"],
            occurred_at=datetime.fromisoformat(data["occurred_at"]),
            payload=data["data"],
        )
    except (ValueError, KeyError, TypeError) as error:
        raise MalformedEvent(f"not a workout event: {error}") from None
    if not (
        type(event.id) is int
        and 0 < event.id <= MAX_BIGINT
        and type(event.change_seq) is int
        and 0 <= event.change_seq <= MAX_BIGINT
        and event.kind in KINDS
        and isinstance(event.user_id, str)
        and isinstance(event.workout_id, str)
        and len(event.user_id) <= MAX_ID_LENGTH
        and len(event.workout_id) <= MAX_ID_LENGTH
        and isinstance(event.payload, dict)
        and event.occurred_at.tzinfo is not None
    ):
        raise MalformedEvent(f"not a workout event: {body[:200]!r}")
    return event
