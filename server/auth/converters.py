"""Auth messages <-> domain values."""

from __future__ import annotations

from typing import TypedDict

from repwise.v1 import auth_pb2, common_pb2
from server.auth.models import User
from server.auth.service import PROFILE_FIELDS, ProfileChanges, Tokens, etag
from server.converters import enum_names, timestamp
from server.errors import InvalidArgument, shown

ROLE_TO_PB = {"user": auth_pb2.ROLE_USER, "admin": auth_pb2.ROLE_ADMIN}
ROLE_FROM_PB: dict[int, str] = {v: k for k, v in ROLE_TO_PB.items()}
UNIT_TO_PB = {"kg": common_pb2.WEIGHT_UNIT_KG, "lb": common_pb2.WEIGHT_UNIT_LB}
UNIT_FROM_PB = {v: k for k, v in UNIT_TO_PB.items()}
EQUIPMENT_FROM_PB, EQUIPMENT_TO_PB = enum_names(common_pb2.Equipment, "EQUIPMENT_")


def user_to_pb(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        role=ROLE_TO_PB[user.role],
        time_zone=user.time_zone,
        preferred_unit=UNIT_TO_PB[user.preferred_unit],
        weekly_workout_goal=user.weekly_workout_goal,
        available_equipment=[EQUIPMENT_TO_PB[e] for e in user.available_equipment],
        create_time=timestamp(user.created_at),
        update_time=timestamp(user.updated_at),
        etag=etag(user),
    )


class TokenFields(TypedDict):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str


def token_fields(tokens: Tokens) -> TokenFields:
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_in": tokens.expires_in,
        "token_type": "Bearer",
    }


def profile_changes(user: auth_pb2.User, paths: list[str]) -> ProfileChanges:
    """The changes an UpdateMe asks for. An empty mask means every set field."""
    for path in paths:
        if path not in PROFILE_FIELDS:
            raise InvalidArgument(
                "update_mask",
                f"{shown(path)} cannot be updated; settable: {', '.join(PROFILE_FIELDS)}",
            )
    if not paths:
        paths = [
            name
            for name in PROFILE_FIELDS
            if (list(getattr(user, name)) if name == "available_equipment" else getattr(user, name))
        ]
    values: dict[str, object] = {}
    for path in paths:
        if path == "preferred_unit":
            if user.preferred_unit not in UNIT_FROM_PB:
                raise InvalidArgument(
                    "user.preferred_unit", "must be WEIGHT_UNIT_KG or WEIGHT_UNIT_LB"
                )
            values[path] = UNIT_FROM_PB[user.preferred_unit]
        elif path == "available_equipment":
            unknown = [e for e in user.available_equipment if e not in EQUIPMENT_FROM_PB]
            if unknown:
                raise InvalidArgument(
                    "user.available_equipment", f"unknown equipment value {unknown[0]}"
                )
            values[path] = [EQUIPMENT_FROM_PB[e] for e in user.available_equipment]
        else:
            values[path] = getattr(user, path)
    return ProfileChanges(**values)  # type: ignore[arg-type]


def role_from_pb(role: int) -> str:
    if role not in ROLE_FROM_PB:
        raise InvalidArgument("role", "must be ROLE_USER or ROLE_ADMIN")
    return ROLE_FROM_PB[role]
