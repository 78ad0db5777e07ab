"""Password rules and bcrypt hashing with bounded concurrency.

bcrypt releases the interpreter lock, but each hash costs ~0.25 s of a core at
cost 12. At most `workers` run at once and at most `queue` more wait; beyond
that a sign-in is refused as UNAVAILABLE at once, so a flood of logins never
holds every server thread.
"""

from __future__ import annotations

import threading
import unicodedata

import bcrypt

from server.errors import InvalidArgument, Unavailable

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72  # bcrypt ignores (bcrypt 5: refuses) anything longer


def normalize_password(password: str) -> bytes:
    # NFKC so the same password typed on different keyboards matches (NIST SP 800-63B).
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def check_new_password(password: str, field: str) -> bytes:
    """Validate a password being set; return the bytes to hash."""
    encoded = normalize_password(password)
    if len(encoded.decode("utf-8")) < MIN_PASSWORD_CHARS:
        raise InvalidArgument(field, f"must be at least {MIN_PASSWORD_CHARS} characters")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise InvalidArgument(
            field,
            f"must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8 (bcrypt's limit); this one is "
            f"{len(encoded)} bytes. Use a shorter passphrase.",
            reason="PASSWORD_TOO_LONG",
        )
    return encoded


class PasswordHasher:
    def __init__(self, rounds: int, workers: int = 2, queue: int = 6) -> None:
        self.rounds = rounds
        self._running = threading.BoundedSemaphore(max(1, workers))
        self._admitted = threading.BoundedSemaphore(max(1, workers) + max(0, queue))
        # Checked when there is no account, so unknown emails take as long as known ones.
        self._dummy_hash = bcrypt.hashpw(b"no account has this password", bcrypt.gensalt(rounds))

    def _admit(self) -> None:
        if not self._admitted.acquire(blocking=False):
            raise Unavailable(
                "too many sign-ins are being processed; retry in a moment",
                reason="PASSWORD_HASHING_BUSY",
                retry_after_seconds=1,
            )

    def hash(self, encoded_password: bytes) -> str:
        self._admit()
        try:
            with self._running:
                return bcrypt.hashpw(encoded_password, bcrypt.gensalt(self.rounds)).decode("ascii")
        finally:
            self._admitted.release()

    def verify(self, password: str, hashed: str | None) -> bool:
        """True if `password` matches `hashed`; with no hash, spend the same time and say no."""
        encoded = normalize_password(password)
        too_long = len(encoded) > MAX_PASSWORD_BYTES
        target = hashed.encode("ascii") if hashed else self._dummy_hash
        self._admit()
        try:
            with self._running:
                ok = bcrypt.checkpw(encoded[:MAX_PASSWORD_BYTES], target)
        finally:
            self._admitted.release()
        return ok and hashed is not None and not too_long
