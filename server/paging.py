"""Page sizes and opaque page tokens, the same for every list and stream."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from server.errors import InvalidArgument

NOT_OURS = "is not a token from a previous response"


def limit(field: str, requested: int, default: int, maximum: int) -> int:
    """A requested page (or chunk) size: 0 means the default; above the maximum, the maximum."""
    if requested < 0:
        raise InvalidArgument(field, "must not be negative")
    return min(requested or default, maximum)


def encode_token(fields: dict[str, Any]) -> str:
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any]:
    """The fields of a token made by encode_token; INVALID_ARGUMENT for anything else."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidArgument("page_token", NOT_OURS) from None
    if not isinstance(data, dict):
        raise InvalidArgument("page_token", NOT_OURS)
    return data
