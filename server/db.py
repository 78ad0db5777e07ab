"""Database engine, declarative base and the per-request unit of work.

SQLite (embedded default) runs in WAL mode with foreign keys and a busy
timeout; writing transactions start with BEGIN IMMEDIATE so a read-then-write
never fails half way on a lock upgrade. On PostgreSQL, transactions that hit a
serialization failure or deadlock are retried, and so is a transaction whose
connection turns out dead before it commits (a database restart): a pooled
connection is not pinged before every transaction, which cost a round trip per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from server.context import deadline_passed
from server.errors import DeadlineExceeded

log = logging.getLogger(__name__)
T = TypeVar("T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL SQLSTATEs worth retrying: serialization_failure, deadlock_detected.
RETRYABLE_PG_CODES = {"40001", "40P01"}
MAX_ATTEMPTS = 4
SQLITE_UNAVAILABLE = ("locked", "busy", "unable to open", "disk i/o", "readonly", "full")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


def create_db_engine(url: str, *, pool_size: int = 10) -> Engine:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=10,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        connect_args={"connect_timeout": 5} if backend == "postgresql" else {},
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("repwise_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_retryable(error: exc.DBAPIError) -> bool:
    code = getattr(error.orig, "pgcode", None)
    return code in RETRYABLE_PG_CODES


def is_unavailable(error: BaseException) -> bool:
    """Errors that mean the database cannot be reached (or is locked) right now."""
    if isinstance(error, exc.TimeoutError):  # pool exhausted
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if not isinstance(error, exc.OperationalError):
            return False
        if type(error.orig).__module__.startswith("sqlite3"):
            # "no such table" and the like are bugs, not outages.
            text = str(error.orig).lower()
            return any(word in text for word in SQLITE_UNAVAILABLE)
        return True
    return False


class Database:
    """Owns the engine; `run` is the one way request code touches the database."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = create_db_engine(url, pool_size=pool_size)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        # Health pings use their own connections, so a busy pool never reads as "database down".
        self._ping_engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={"connect_timeout": 3} if self.engine.dialect.name == "postgresql" else {},
        )
        # Reads of several statements (a workout, then its sets) see one snapshot.
        reader = (
            self.engine.execution_options(isolation_level="REPEATABLE READ")
            if self.engine.dialect.name == "postgresql"
            else self.engine
        )
        self._read = sessionmaker(reader, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(repwise_write=True), expire_on_commit=False
        )

    def run(
        self, work: Callable[[Session], T], *, write: bool = True, honour_deadline: bool = True
    ) -> T:
        """Run `work` in one transaction: commit on success, roll back on any error.

        Serialization failures and deadlocks are retried with a short backoff, and a
        connection found dead before the commit (the pool does not ping) is replaced and
        the work run again; `work` must therefore not have side effects outside the
        session. A connection lost during the commit is not retried: the commit may have
        happened. Past the call's deadline nothing is committed, unless `honour_deadline`
        is False (bookkeeping that must happen whether or not the client still waits).
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            session = (self._write if write else self._read)()
            committing = False
            try:
                result = work(session)
                if honour_deadline and deadline_passed():
                    # The client has given up: keep nothing of what it can no longer see.
                    raise DeadlineExceeded("the call's deadline passed; nothing was changed")
                committing = True
                session.commit()
                return result
            except exc.DBAPIError as error:
                session.rollback()
                if attempt == MAX_ATTEMPTS:
                    raise
                if error.connection_invalidated and not committing:
                    # SQLAlchemy has dropped the dead connection (and the pool's older
                    # ones); nothing was committed, so run the work on a fresh one.
                    log.info("retrying transaction on a new connection after %s", error.orig)
                    continue
                if not is_retryable(error):
                    raise
                log.info("retrying transaction after %s (attempt %d)", error.orig, attempt)
                time.sleep(0.01 * 2**attempt)
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()
        raise AssertionError("unreachable")

    def ping(self) -> bool:
        try:
            with self._ping_engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        self.engine.dispose()
        self._ping_engine.dispose()
