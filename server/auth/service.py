"""Account and session rules. No gRPC here: callers get plain values or a DomainError.

Password hashing runs outside any transaction, so no database lock or pooled
connection is held during the quarter second a bcrypt hash takes.
"""

from __future__ import annotations

import functools
import hashlib
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import available_timezones

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import exc
from sqlalchemy.orm import Session

from client_sdk.features import EQUIPMENT
from server.auth import repository as repo
from server.auth.models import ROLES, UNITS, AuthSession, LoginThrottle, RefreshToken, User
from server.auth.passwords import PasswordHasher, check_new_password
from server.auth.tokens import TokenIssuer
from server.config import Settings
from server.context import Principal, current_principal
from server.db import Database
from server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    shown,
)

PROFILE_FIELDS = (
    "display_name", "time_zone", "preferred_unit", "weekly_workout_goal", "available_equipment",
)  # fmt: skip
WRONG_CREDENTIALS = "email or password is incorrect"
# A password check holds its place this long at most (a crashed server's checks lapse).
PENDING_LEASE_SECONDS = 60
PENDING_RETRY_SECONDS = 2
FAILURE_MEMORY = timedelta(days=1)


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class ProfileChanges:
    """Profile fields to set; None means leave as is."""

    display_name: str | None = None
    time_zone: str | None = None
    preferred_unit: str | None = None
    weekly_workout_goal: int | None = None
    available_equipment: list[str] | None = None


def normalize_email(email: str) -> str:
    email = email.strip()
    if not email:
        raise InvalidArgument("email", "is required")
    if len(email) > 254:
        raise InvalidArgument("email", "must be at most 254 characters")
    try:
        normalized = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise InvalidArgument("email", str(error)) from None
    return normalized.lower()


def check_display_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise InvalidArgument("display_name", "must not be empty")
    if len(name) > 100:
        raise InvalidArgument("display_name", "must be at most 100 characters")
    if not name.isprintable():
        raise InvalidArgument("display_name", "must not contain control characters")
    return name


@functools.cache
def iana_time_zones() -> frozenset[str]:
    # zoneinfo also finds "localtime" and the posix/ and right/ copies: not zone names.
    return frozenset(
        z
        for z in available_timezones()
        if z != "localtime" and not z.startswith(("posix/", "right/"))
    )


def check_time_zone(name: str) -> str:
    if name not in iana_time_zones():
        raise InvalidArgument(
            "time_zone", f"{shown(name)} is not an IANA time zone such as 'Europe/Berlin'"
        )
    return name


def email_key(email: str) -> str:
    return hashlib.sha256(email.encode("utf-8")).hexdigest()


def etag(user: User) -> str:
    return str(user.version)


def session_ended() -> Unauthenticated:
    return Unauthenticated("this session has ended; sign in again", reason="SESSION_ENDED")


class AuthService:
    def __init__(
        self, db: Database, settings: Settings, hasher: PasswordHasher, tokens: TokenIssuer,
        now: Callable[[], datetime],
    ) -> None:  # fmt: skip
        self.db = db
        self.settings = settings
        self.hasher = hasher
        self.tokens = tokens
        self.now = now

    # --- sessions ---------------------------------------------------------------

    def _start_session(self, s: Session, user: User) -> Tokens:
        now = self.now()
        auth_session = AuthSession(
            id=str(uuid.uuid4()), user_id=user.id, created_at=now, last_refreshed_at=now
        )
        repo.add(s, auth_session)
        return self._tokens(auth_session, self._new_refresh(s, auth_session.id))

    def _new_refresh(self, s: Session, session_id: str) -> RefreshToken:
        now = self.now()
        token = RefreshToken(
            id=self.tokens.new_refresh_id(),
            session_id=session_id,
            created_at=now,
            expires_at=now + timedelta(days=self.settings.refresh_token_days),
        )
        repo.add(s, token)
        return token

    def _tokens(self, auth_session: AuthSession, refresh: RefreshToken) -> Tokens:
        return Tokens(
            access_token=self.tokens.issue_access(auth_session.user_id, auth_session.id),
            refresh_token=self.tokens.refresh_token_for(refresh.id),
            expires_in=self.settings.access_token_seconds,
        )

    def current_user(self, s: Session) -> User:
        """The caller of this request, if their session is still live."""
        principal = self.principal()
        found = repo.get_live_session(s, principal.session_id, principal.user_id)
        if found is None:
            raise session_ended()
        return found[1]

    @staticmethod
    def principal() -> Principal:
        """The caller as their access token says; whether the session is still live is for
        the caller's query to check (current_user, or repo.LIVE_SESSION_WHERE)."""
        principal = current_principal.get()
        if principal is None:
            raise Unauthenticated("sign in first", reason="TOKEN_MISSING")
        return principal

    def require_admin(self, s: Session) -> User:
        user = self.current_user(s)
        if user.role != "admin":
            raise PermissionDenied("only admins may do this", reason="ADMIN_REQUIRED")
        return user

    # --- register and login -----------------------------------------------------

    def register(self, email: str, password: str, display_name: str) -> tuple[User, Tokens]:
        email = normalize_email(email)
        name = check_display_name(display_name or email.split("@", 1)[0])
        hashed = self.hasher.hash(check_new_password(password, "password"))

        def work(s: Session) -> tuple[User, Tokens]:
            if repo.email_taken(s, email):
                raise AlreadyExists(
                    "an account with this email already exists; sign in instead",
                    reason="EMAIL_TAKEN",
                )
            return self._create_user(s, email, hashed, name, "user")

        try:
            return self.db.run(work)
        except exc.IntegrityError:  # lost a race with a concurrent registration
            raise AlreadyExists(
                "an account with this email already exists; sign in instead", reason="EMAIL_TAKEN"
            ) from None

    def _create_user(
        self, s: Session, email: str, hashed: str, name: str, role: str
    ) -> tuple[User, Tokens]:
        now = self.now()
        user = User(
            id=str(uuid.uuid4()), email=email, password_hash=hashed, display_name=name, role=role,
            time_zone="UTC", preferred_unit="kg", weekly_workout_goal=3, available_equipment=[],
            version=1, created_at=now, updated_at=now, password_changed_at=now,
        )  # fmt: skip
        repo.add(s, user)
        return user, self._start_session(s, user)

    def _begin_attempt(self, s: Session, email: str) -> str | None:
        """Admit a password check for `email` (whether or not an account has it) and
        return the stored hash, or refuse it unchecked with RESOURCE_EXHAUSTED.

        Checks under way never exceed the failures still allowed (one at a time once
        the limit is reached), so parallel guesses get no more checks than sequential
        ones. From the limit on, each failure locks the email for a period that
        doubles up to `login_max_lock_seconds`; refused attempts neither count nor
        lengthen it.
        """
        now = self.now()
        key = email_key(email)
        throttle = repo.get_throttle_for_update(s, key)
        if throttle is None:
            throttle = LoginThrottle(email_key=key, failures=0, pending=0, last_attempt_at=now)
            repo.add(s, throttle)
        if throttle.locked_until is not None and throttle.locked_until > now:
            wait = (throttle.locked_until - now).total_seconds()
            raise ResourceExhausted(
                "too many failed sign-in attempts for this email; "
                f"try again in {math.ceil(wait)} s",
                reason="LOGIN_THROTTLED",
                retry_after_seconds=wait,
            )
        if throttle.last_attempt_at < now - FAILURE_MEMORY:
            throttle.failures = 0  # a day without attempts forgets old failures
        live = throttle.pending_until is not None and throttle.pending_until > now
        pending = throttle.pending if live else 0
        # Up to the failures still allowed may be checked at once; one at a time past a lock.
        if pending >= max(1, self.settings.login_max_failures - throttle.failures):
            raise ResourceExhausted(
                "too many sign-in attempts at once for this email; try again in a few seconds",
                reason="LOGIN_THROTTLED",
                retry_after_seconds=PENDING_RETRY_SECONDS,
            )
        throttle.pending = pending + 1
        throttle.pending_until = now + timedelta(seconds=PENDING_LEASE_SECONDS)
        throttle.last_attempt_at = now
        user = repo.get_user_by_email(s, email)
        return user.password_hash if user else None

    def _end_attempt(self, s: Session, email: str, outcome: str) -> None:
        """Settle an admitted check: "ok", "failed", or "unchecked" (e.g. server busy)."""
        throttle = repo.get_throttle_for_update(s, email_key(email))
        if throttle is None:
            return
        throttle.pending = max(0, throttle.pending - 1)
        if outcome == "ok":
            throttle.failures = 0
            throttle.locked_until = None
        elif outcome == "failed":
            throttle.failures += 1
            over = throttle.failures - self.settings.login_max_failures
            if over >= 0:
                seconds = min(
                    self.settings.login_lock_seconds * 2**over,
                    self.settings.login_max_lock_seconds,
                )
                throttle.locked_until = self.now() + timedelta(seconds=seconds)
        if throttle.failures == 0 and throttle.pending == 0:
            repo.delete_throttle(s, throttle.email_key)

    def _check_password(self, email: str, password: str) -> str:
        """Throttled password check; returns the hash it matched, or raises Unauthenticated.

        The attempt is settled even past the call's deadline: an abandoned call
        must not keep its place (or a client could lock an email out for free).
        """
        try:
            hashed = self.db.run(lambda s: self._begin_attempt(s, email))
        except exc.IntegrityError:  # two first attempts for one email at once
            hashed = self.db.run(lambda s: self._begin_attempt(s, email))
        outcome = "unchecked"
        try:
            outcome = "ok" if self.hasher.verify(password, hashed) else "failed"
        finally:
            self.db.run(lambda s: self._end_attempt(s, email, outcome), honour_deadline=False)
        if outcome != "ok" or hashed is None:
            raise Unauthenticated(WRONG_CREDENTIALS, reason="INVALID_CREDENTIALS")
        return hashed

    def login(self, email: str, password: str) -> tuple[User, Tokens]:
        email = normalize_email(email)
        checked_hash = self._check_password(email, password)

        def work(s: Session) -> tuple[User, Tokens]:
            user = repo.get_user_by_email(s, email)
            if user is None or user.password_hash != checked_hash:  # deleted or changed since
                raise Unauthenticated(WRONG_CREDENTIALS, reason="INVALID_CREDENTIALS")
            return user, self._start_session(s, user)

        return self.db.run(work)

    # --- refresh rotation -------------------------------------------------------

    def refresh(self, raw_token: str) -> Tokens:
        if not raw_token:
            raise InvalidArgument("refresh_token", "is required")
        token_id = self.tokens.parse_refresh(raw_token)
        outcome = self.db.run(lambda s: self._rotate(s, token_id))
        if isinstance(outcome, Tokens):
            return outcome
        # The revocation is committed; only now refuse.
        raise Unauthenticated(outcome, reason="REFRESH_REUSED")

    def _rotate(self, s: Session, token_id: str) -> Tokens | str:
        """New tokens, or (after revoking the family) the reason for refusing a replay."""
        token = repo.get_refresh_token_for_update(s, token_id)
        if token is None:
            raise Unauthenticated("refresh token is not valid", reason="REFRESH_INVALID")
        auth_session = repo.get_session_for_update(s, token.session_id)
        if auth_session is None or auth_session.revoked_at is not None:
            raise Unauthenticated("this session has ended; sign in again", reason="SESSION_ENDED")
        now = self.now()
        if token.used_at is None:
            if token.expires_at <= now:
                raise Unauthenticated(
                    "refresh token has expired; sign in again", reason="REFRESH_EXPIRED"
                )
            successor = self._new_refresh(s, auth_session.id)
            token.used_at = now
            token.successor_id = successor.id
            auth_session.last_refreshed_at = now
            return self._tokens(auth_session, successor)
        previous = repo.get_refresh_token(s, token.successor_id) if token.successor_id else None
        in_grace = now - token.used_at <= timedelta(seconds=self.settings.refresh_grace_seconds)
        if in_grace and previous is not None and previous.used_at is None:
            # A retry of a refresh whose answer was lost: the same successor again.
            return self._tokens(auth_session, previous)
        repo.revoke_sessions(s, auth_session.user_id, now, "refresh_reuse", only=auth_session.id)
        return "refresh token was already used; the session has been ended for safety"

    # --- the signed-in user -----------------------------------------------------

    def logout(self, all_sessions: bool) -> int:
        def work(s: Session) -> int:
            user = self.current_user(s)
            principal = current_principal.get()
            assert principal is not None
            only = None if all_sessions else principal.session_id
            return repo.revoke_sessions(s, user.id, self.now(), "logout", only=only)

        return self.db.run(work)

    def get_me(self) -> User:
        return self.db.run(self.current_user, write=False)

    def update_me(self, changes: ProfileChanges, expected_etag: str) -> User:
        values = {k: v for k, v in vars(changes).items() if v is not None}
        if "display_name" in values:
            values["display_name"] = check_display_name(values["display_name"])
        if "time_zone" in values:
            values["time_zone"] = check_time_zone(values["time_zone"])
        if "preferred_unit" in values and values["preferred_unit"] not in UNITS:
            raise InvalidArgument("preferred_unit", "must be WEIGHT_UNIT_KG or WEIGHT_UNIT_LB")
        goal = values.get("weekly_workout_goal")
        if goal is not None and not 1 <= goal <= 14:
            raise InvalidArgument("weekly_workout_goal", "must be between 1 and 14")
        equipment = values.get("available_equipment")
        if equipment is not None:
            unknown = [e for e in equipment if e not in EQUIPMENT]
            if unknown:
                raise InvalidArgument("available_equipment", f"unknown equipment {unknown[0]!r}")
            values["available_equipment"] = sorted(set(equipment))

        def work(s: Session) -> User:
            user = repo.lock_user(s, self.current_user(s))
            if expected_etag and expected_etag != etag(user):
                raise Aborted(
                    "the profile changed since it was read; read it again and retry",
                    reason="ETAG_MISMATCH",
                )
            changed = {k: v for k, v in values.items() if getattr(user, k) != v}
            if changed:
                for name, value in changed.items():
                    setattr(user, name, value)
                user.version += 1
                user.updated_at = self.now()
                s.flush()
            return user

        return self.db.run(work)

    def change_password(self, current_password: str, new_password: str) -> Tokens:
        encoded = check_new_password(new_password, "new_password")
        email = self.db.run(lambda s: self.current_user(s).email, write=False)
        try:
            self._check_password(email, current_password)
        except Unauthenticated:
            raise PermissionDenied(
                "current_password is incorrect", reason="WRONG_PASSWORD"
            ) from None
        hashed = self.hasher.hash(encoded)

        def work(s: Session) -> Tokens:
            user = self.current_user(s)
            now = self.now()
            user.password_hash = hashed
            user.password_changed_at = now
            user.updated_at = now
            repo.revoke_sessions(s, user.id, now, "password_changed")
            return self._start_session(s, user)

        return self.db.run(work)

    def delete_account(self, password: str) -> None:
        email = self.db.run(lambda s: self.current_user(s).email, write=False)
        try:
            self._check_password(email, password)
        except Unauthenticated:
            raise PermissionDenied("password is incorrect", reason="WRONG_PASSWORD") from None

        def work(s: Session) -> None:
            repo.delete_user(s, self.current_user(s))
            repo.delete_throttle(s, email_key(email))

        self.db.run(work)

    def set_role(self, email: str, role: str) -> User:
        if role not in ROLES:
            raise InvalidArgument("role", "must be ROLE_USER or ROLE_ADMIN")
        email = normalize_email(email)

        def work(s: Session) -> User:
            self.require_admin(s)
            target = repo.get_user_by_email(s, email)
            if target is None:
                raise NotFound(f"no user has the email {email}", reason="USER_NOT_FOUND")
            if target.role == role:
                return target
            if target.role == "admin" and repo.lock_admins(s) <= 1:
                raise FailedPrecondition("cannot demote the last admin", reason="LAST_ADMIN")
            now = self.now()
            target.role = role
            target.version += 1
            target.updated_at = now
            # Sessions signed in under the old role end; the user signs in again.
            repo.revoke_sessions(s, target.id, now, "role_changed")
            return target

        return self.db.run(work)

    def purge_stale_throttles(self) -> int:
        """Forget sign-in failures nobody has touched for FAILURE_MEMORY (they would be reset
        on the next attempt anyway), so guesses at random emails do not pile up rows."""
        now = self.now()
        return self.db.run(lambda s: repo.purge_throttles(s, now - FAILURE_MEMORY, now))

    # --- operator commands (CLI) ------------------------------------------------

    def create_admin(self, email: str, password: str) -> User:
        email = normalize_email(email)
        hashed = self.hasher.hash(check_new_password(password, "password"))

        def work(s: Session) -> User:
            if repo.email_taken(s, email):
                raise AlreadyExists(
                    f"{email} already has an account; use `repwise admin promote`",
                    reason="EMAIL_TAKEN",
                )
            return self._create_user(s, email, hashed, email.split("@", 1)[0], "admin")[0]

        return self.db.run(work)

    def promote(self, email: str) -> User:
        email = normalize_email(email)

        def work(s: Session) -> User:
            user = repo.get_user_by_email(s, email)
            if user is None:
                raise NotFound(f"no user has the email {email}", reason="USER_NOT_FOUND")
            if user.role != "admin":
                user.role = "admin"
                user.version += 1
                user.updated_at = self.now()
            return user

        return self.db.run(work)
