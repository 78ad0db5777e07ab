"""Tables of accounts and sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.db import Base, UTCDateTime

ROLES = ("user", "admin")
UNITS = ("kg", "lb")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'admin')", name="role"),
        CheckConstraint("preferred_unit IN ('kg', 'lb')", name="preferred_unit"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(100))
    display_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16), default="user")
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    preferred_unit: Mapped[str] = mapped_column(String(2), default="kg")
    weekly_workout_goal: Mapped[int] = mapped_column(Integer, default=3)
    available_equipment: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Bumped on every change; the etag clients send back.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime())

    sessions: Mapped[list[AuthSession]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class AuthSession(Base):
    """One signed-in device: a family of rotating refresh tokens."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_refreshed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)

    user: Mapped[User] = relationship(back_populates="sessions")


class RefreshToken(Base):
    """A single-use refresh token. The token itself is never stored: it is
    derived from the id with the server's key (see tokens.py)."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(43), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    successor_id: Mapped[str | None] = mapped_column(String(43), nullable=True)


class LoginThrottle(Base):
    """Failed sign-ins per email, whether or not an account has that email,
    so throttling reveals nothing about which accounts exist."""

    __tablename__ = "login_throttles"

    # SHA-256 of the normalized email: no plain addresses of non-users kept.
    email_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Password checks under way; the lease lets a crash leave no stuck count.
    pending: Mapped[int] = mapped_column(Integer, default=0)
    pending_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
