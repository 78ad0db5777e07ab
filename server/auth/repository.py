"""Every query of the auth tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from server.auth.models import AuthSession, LoginThrottle, RefreshToken, User


def get_user(session: Session, user_id: str) -> User | None:
    return session.get(User, user_id)


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.scalars(select(User).where(User.email == email)).one_or_none()


def email_taken(session: Session, email: str) -> bool:
    return session.scalar(select(func.count()).where(User.email == email)) != 0


def lock_admins(session: Session) -> int:
    """Lock every admin row and count them, so concurrent demotions cannot remove the last."""
    return len(session.scalars(select(User.id).where(User.role == "admin").with_for_update()).all())


def lock_user(session: Session, user: User) -> User:
    """Re-read `user` under a row lock (PostgreSQL; SQLite writers are serialized anyway)."""
    session.execute(select(User.id).where(User.id == user.id).with_for_update())
    session.refresh(user)
    return user


def add(session: Session, row: object) -> None:
    session.add(row)
    session.flush()


def delete_user(session: Session, user: User) -> None:
    session.delete(user)
    session.flush()


def get_live_session(
    session: Session, session_id: str, user_id: str
) -> tuple[AuthSession, User] | None:
    row = session.execute(
        select(AuthSession, User)
        .join(User, User.id == AuthSession.user_id)
        .where(
            AuthSession.id == session_id,
            AuthSession.user_id == user_id,
            AuthSession.revoked_at.is_(None),
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


# get_live_session as SQL text, for other services' one-statement reads
# (server/single_statement.py): `SELECT ... FROM {LIVE_SESSION_FROM} ... WHERE
# {LIVE_SESSION_WHERE}` finds the caller's row (users as u) only while the session is live.
LIVE_SESSION_FROM = "auth_sessions s JOIN users u ON u.id = s.user_id"
LIVE_SESSION_WHERE = "s.id = :session_id AND s.user_id = :user_id AND s.revoked_at IS NULL"


def get_session_for_update(session: Session, session_id: str) -> AuthSession | None:
    return session.scalars(
        select(AuthSession).where(AuthSession.id == session_id).with_for_update()
    ).one_or_none()


def get_refresh_token_for_update(session: Session, token_id: str) -> RefreshToken | None:
    return session.scalars(
        select(RefreshToken).where(RefreshToken.id == token_id).with_for_update()
    ).one_or_none()


def get_refresh_token(session: Session, token_id: str) -> RefreshToken | None:
    return session.get(RefreshToken, token_id)


def revoke_sessions(
    session: Session, user_id: str, now: datetime, reason: str, *, only: str | None = None
) -> int:
    stmt = (
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoke_reason=reason)
    )
    if only is not None:
        stmt = stmt.where(AuthSession.id == only)
    result = session.execute(stmt, execution_options={"synchronize_session": False})
    return int(result.rowcount)  # type: ignore[attr-defined]


def get_throttle_for_update(session: Session, email_key: str) -> LoginThrottle | None:
    return session.scalars(
        select(LoginThrottle).where(LoginThrottle.email_key == email_key).with_for_update()
    ).one_or_none()


def delete_throttle(session: Session, email_key: str) -> None:
    session.execute(delete(LoginThrottle).where(LoginThrottle.email_key == email_key))


def purge_throttles(session: Session, idle_since: datetime, now: datetime) -> int:
    """Delete throttle rows with no attempt since `idle_since` and no lock or check running."""
    result = session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.last_attempt_at < idle_since,
            (LoginThrottle.locked_until.is_(None)) | (LoginThrottle.locked_until < now),
            (LoginThrottle.pending_until.is_(None)) | (LoginThrottle.pending_until < now),
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
