"""Access tokens (JWT, HS256 pinned) and refresh tokens (opaque, single use).

An access token is a JWT with header typ "at+jwt" (RFC 9068) and the claims
iss, aud, sub, iat, exp, jti and sid (the session). A refresh token is
"<id>.<mac>", where mac = HMAC-SHA256(refresh key, id): it is never a JWT, so
neither kind of token can pass for the other, and the database holds only ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jwt

from server.context import Principal
from server.errors import Unauthenticated

ALGORITHM = "HS256"
ACCESS_TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud", "jti", "sid")
MAX_TOKEN_LENGTH = 4096
MAX_CHECKED_TOKENS = 4096  # per process, about 1 kB each


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class TokenIssuer:
    def __init__(
        self,
        secret: str,
        *,
        issuer: str,
        audience: str,
        access_seconds: int,
        leeway_seconds: int,
        now: Callable[[], datetime],
    ) -> None:
        self._key = secret.encode("utf-8")
        # A separate key for refresh MACs, so the two token kinds share no signature.
        self._refresh_key = hmac.new(
            self._key, b"repwise refresh token key", hashlib.sha256
        ).digest()
        self.issuer = issuer
        self.audience = audience
        self.access_seconds = access_seconds
        self.leeway_seconds = leeway_seconds
        self._now = now
        # Tokens whose signature and claims passed, by token: checking them again would give
        # the same answer. Only the time claims are checked on each call.
        self._checked: dict[str, tuple[Principal, float, float]] = {}

    def issue_access(self, user_id: str, session_id: str) -> str:
        issued = int(self._now().timestamp())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "sid": session_id,
            "iat": issued,
            "exp": issued + self.access_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims, self._key, algorithm=ALGORITHM, headers={"typ": ACCESS_TOKEN_TYPE}
        )

    def verify_access(self, token: str) -> Principal:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("access token is malformed", reason="TOKEN_INVALID")
        checked = self._checked.get(token)
        if checked is None:
            checked = self._check_signature_and_claims(token)
            if len(self._checked) >= MAX_CHECKED_TOKENS:
                self._checked.clear()  # tokens live minutes: whoever is still calling re-enters
            self._checked[token] = checked
        principal, exp, iat = checked
        # Time claims are checked on every call against our own clock, with a leeway in seconds.
        now = self._now().timestamp()
        if now > exp + self.leeway_seconds:
            raise Unauthenticated("access token has expired; refresh it", reason="TOKEN_EXPIRED")
        if iat > now + self.leeway_seconds:
            raise Unauthenticated("access token is not valid yet", reason="TOKEN_INVALID")
        return principal

    def _check_signature_and_claims(self, token: str) -> tuple[Principal, float, float]:
        """Everything about a token that does not depend on the time: (principal, exp, iat)."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != ACCESS_TOKEN_TYPE:
                raise Unauthenticated("not an access token", reason="TOKEN_INVALID")
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(
                f"access token is invalid: {error}", reason="TOKEN_INVALID"
            ) from None
        exp, iat = claims["exp"], claims["iat"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat)):
            raise Unauthenticated("access token has malformed time claims", reason="TOKEN_INVALID")
        for name in ("sub", "sid", "jti"):
            if not isinstance(claims[name], str) or not claims[name]:
                raise Unauthenticated(
                    f"access token claim {name} is malformed", reason="TOKEN_INVALID"
                )
        principal = Principal(
            user_id=claims["sub"], session_id=claims["sid"], token_id=claims["jti"]
        )
        return principal, exp, iat

    @staticmethod
    def new_refresh_id() -> str:
        return secrets.token_urlsafe(32)

    def refresh_token_for(self, token_id: str) -> str:
        mac = hmac.new(self._refresh_key, token_id.encode("ascii"), hashlib.sha256).digest()
        return f"{token_id}.{_b64(mac)}"

    def parse_refresh(self, token: str) -> str:
        """Return the token's id if its MAC is ours."""
        token_id, dot, _ = token.partition(".")
        if not dot or len(token) > 200 or not token.isascii():
            raise Unauthenticated("refresh token is not valid", reason="REFRESH_INVALID")
        if not hmac.compare_digest(self.refresh_token_for(token_id), token):
            raise Unauthenticated("refresh token is not valid", reason="REFRESH_INVALID")
        return token_id
