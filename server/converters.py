"""Conversions shared by every service: enums by name, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from server.errors import InvalidArgument


def enum_names(enum: Any, prefix: str) -> tuple[dict[int, str], dict[str, Any]]:
    """(number -> name, name -> number) for a proto enum, names without the prefix, lower case:
    MUSCLE_LOWER_BACK <-> "lower_back". The *_UNSPECIFIED value is left out."""
    from_pb = {
        number: name.removeprefix(prefix).lower()
        for name, number in enum.items()
        if not name.endswith("_UNSPECIFIED")
    }
    return from_pb, {v: k for k, v in from_pb.items()}


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def from_timestamp(ts: Timestamp, field: str) -> datetime:
    """An instant from a Timestamp, refusing values outside years 1-9999 or bad nanos."""
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "is not a valid timestamp") from None


def optional_timestamp(message: Any, name: str, field: str) -> datetime | None:
    """The named Timestamp field of `message`, or None when it is unset."""
    return from_timestamp(getattr(message, name), field) if message.HasField(name) else None
