"""Server configuration, read from REPWISE_* environment variables."""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///repwise.db"


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 50051
    jwt_secret: str = field(default="", repr=False)
    jwt_issuer: str = "repwise"
    jwt_audience: str = "repwise-api"
    access_token_seconds: int = 15 * 60
    refresh_token_days: int = 30
    # A retried refresh (response lost on the way) within this window gets the same successor.
    refresh_grace_seconds: int = 30
    jwt_leeway_seconds: int = 10
    bcrypt_rounds: int = 12
    # Concurrent bcrypt computations, and how many more calls may queue for one.
    password_workers: int = 2
    password_queue: int = 6
    login_max_failures: int = 5
    login_lock_seconds: int = 30
    login_max_lock_seconds: int = 15 * 60
    max_workers: int = 16
    max_message_bytes: int = 4 * 1024 * 1024
    # Responses may be larger than requests: a heavy user's model bundle is several MiB.
    max_response_bytes: int = 64 * 1024 * 1024
    grace_seconds: float = 10.0
    # Training: the worker always serves TrainNow; the weekly sweep is opt-in.
    training_scheduler: bool = False
    training_poll_seconds: float = 30.0
    retrain_after_hours: float = 7 * 24
    offline_after_minutes: float = 6 * 60
    train_now_cooldown_seconds: int = 600
    # A training run's claim on its users; renewed with each chunk, so it need only outlast
    # one chunk's fit. A crashed run's users free up when it ends.
    training_lease_seconds: float = 120.0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # --- Metrics (server/metrics.py): Prometheus /metrics over HTTP. Off unless a port
    # is set; 0 picks a free port (logged at start).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # --- Events (server/events/, docs/events.md): the outbox relay and the metrics consumer.
    # Without an AMQP URL the relay hands events to the consumer in-process.
    amqp_url: str | None = field(default=None, repr=False)  # may carry a password
    amqp_exchange: str = "repwise.events"
    amqp_queue: str = "repwise.metrics"
    outbox_poll_seconds: float = 1.0
    # Published events (and the consumer's record of applied ones) are kept this long.
    outbox_retention_days: float = 7.0

    @classmethod
    def from_env(
        cls,
        env: dict[str, str] | None = None,
        overrides: dict[str, object] | None = None,
        *,
        need_secret: bool = True,
    ) -> Settings:
        """Settings from REPWISE_* variables. With need_secret and no REPWISE_JWT_SECRET,
        the generated secret file is read or created."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for name, f in cls.__dataclass_fields__.items():
            raw = env.get(f"REPWISE_{name.upper()}")
            if raw is None or raw == "":
                continue
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            try:
                if kind.startswith("bool"):
                    values[name] = _boolean(name, raw)
                elif kind.startswith("int"):
                    values[name] = int(raw)
                elif kind.startswith("float"):
                    values[name] = float(raw)
                else:
                    values[name] = raw
            except ValueError as exc:
                raise ConfigError(f"REPWISE_{name.upper()}={raw!r} is not a number") from exc
        values.update(overrides or {})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        if need_secret and not settings.jwt_secret:
            settings = cls(**{**values, "jwt_secret": load_or_create_secret(settings.database_url)})  # type: ignore[arg-type]
        return settings

    def validate(self) -> None:
        if self.bcrypt_rounds < 4 or self.bcrypt_rounds > 31:
            raise ConfigError("REPWISE_BCRYPT_ROUNDS must be between 4 and 31")
        if self.jwt_secret and len(self.jwt_secret.encode()) < 32:
            raise ConfigError("REPWISE_JWT_SECRET must be at least 32 bytes (RFC 7518 §3.2)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("set both REPWISE_TLS_CERT_FILE and REPWISE_TLS_KEY_FILE, or neither")
        for name in (
            "training_poll_seconds",
            "retrain_after_hours",
            "offline_after_minutes",
            "train_now_cooldown_seconds",
        ):
            value = float(getattr(self, name))
            # Event.wait() overflows past about 292 years; a day of polling is plenty.
            low = "above 0" if name == "training_poll_seconds" else "0 or more"
            if not 0 <= value <= 10**7 or (name == "training_poll_seconds" and value == 0):
                raise ConfigError(f"REPWISE_{name.upper()} must be a number {low}, up to 10000000")
        if not 0 < self.training_lease_seconds <= 10**7:
            raise ConfigError(
                "REPWISE_TRAINING_LEASE_SECONDS must be a number above 0, up to 10000000"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError("REPWISE_PORT must be between 0 and 65535")
        if self.metrics_port is not None:
            if not 0 <= self.metrics_port <= 65535:
                raise ConfigError("REPWISE_METRICS_PORT must be between 0 and 65535")
            same_address = (self.metrics_host, self.metrics_port) == (self.host, self.port)
            if self.metrics_port and same_address:
                raise ConfigError("REPWISE_METRICS_PORT must differ from REPWISE_PORT")
            if not self.metrics_host.strip():
                raise ConfigError("REPWISE_METRICS_HOST must not be empty")
        self._validate_events()
        try:
            make_url(self.database_url)
        except Exception as exc:
            raise ConfigError(f"REPWISE_DATABASE_URL is not a database URL: {exc}") from exc

    def _validate_events(self) -> None:
        if self.amqp_url is not None:
            from server.events.amqp import check_url

            try:
                check_url(self.amqp_url)
            except ValueError as exc:
                raise ConfigError(f"REPWISE_AMQP_URL is not an AMQP URL: {exc}") from None
        for name in ("amqp_exchange", "amqp_queue"):
            value = getattr(self, name)
            # AMQP 0-9-1 names; "amq." is reserved to the broker.
            if not _AMQP_NAME.fullmatch(value) or value.startswith("amq."):
                raise ConfigError(
                    f"REPWISE_{name.upper()} must be 1 to 255 letters, digits, '-', '_', '.' or"
                    " ':', not starting with 'amq.'"
                )
        if not 0 < self.outbox_poll_seconds <= 10**7:
            raise ConfigError(
                "REPWISE_OUTBOX_POLL_SECONDS must be a number above 0, up to 10000000"
            )
        if not 0 < self.outbox_retention_days <= 36500:
            raise ConfigError("REPWISE_OUTBOX_RETENTION_DAYS must be a number above 0, up to 36500")


_AMQP_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,255}")


def _boolean(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"REPWISE_{name.upper()}={raw!r} is not true or false")


def secret_path_for(database_url: str) -> Path:
    """Where the generated JWT secret lives: beside the SQLite file, else in ./.repwise/."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db_file = Path(url.database)
        return db_file.with_name(db_file.name + ".jwt.secret")
    return Path(".repwise") / "jwt.secret"


def load_or_create_secret(database_url: str) -> str:
    path = secret_path_for(database_url)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Write aside, then link into place: a second worker starting at once reads
    # the first one's complete secret instead of writing its own.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return path.read_text().strip()
    finally:
        tmp.unlink()
    log.warning(
        "REPWISE_JWT_SECRET is not set; created a random secret in %s (mode 0600). "
        "Set REPWISE_JWT_SECRET when running more than one host.",
        path,
    )
    return secret
