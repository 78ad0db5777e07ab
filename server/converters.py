"""Conversions shared by every service: enums by name, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp


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


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)
