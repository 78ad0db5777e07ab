"""Reads of one SQL statement, for the hottest calls (GetWorkout, GetModelBundle "not modified").

One statement needs no transaction: it sees one snapshot by itself, so it runs on a pooled
connection in autocommit mode, one round trip (a transaction adds a BEGIN and a COMMIT), without
the ORM session's bookkeeping. On PostgreSQL each statement is prepared once per connection
(PREPARE, then EXECUTE), so the server plans it once rather than on every call: planning a join
of a few tables costs PostgreSQL more than running it. Rows come back as the driver gives them.

Errors are SQLAlchemy's, as from Database.run: a connection found dead is dropped and the read
runs once more on a fresh one; anything else propagates (an unreachable database becomes
UNAVAILABLE in the error interceptor). A connection that lost its prepared statements but lives
on (DEALLOCATE ALL, DISCARD ALL) prepares the statement again and runs it once more.

Not supported behind a transaction-mode pooler (pgbouncer pool_mode=transaction): PREPARE and
EXECUTE may land on different server connections, and these reads then fail. Use session mode
or connect to PostgreSQL directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, exc

from server.db import Database

_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")
_PREPARED = "repwise_prepared"  # key in the pooled connection's info: names prepared on it
_UNDEFINED_PREPARED = "26000"  # SQLSTATE: EXECUTE of a name the server does not know
_DUPLICATE_PREPARED = "42P05"  # SQLSTATE: PREPARE of a name the server already knows


class Statement:
    """A SELECT with :name parameters (SQLite takes it as it is), and its PostgreSQL forms."""

    def __init__(self, name: str, sql: str) -> None:
        self.name = f"repwise_{name}"
        self.sql = sql
        order: list[str] = []
        for found in _PARAMETER.findall(sql):
            if found not in order:
                order.append(found)
        self.prepare = f"PREPARE {self.name} AS " + _PARAMETER.sub(
            lambda m: f"${order.index(m[1]) + 1}", sql
        )
        self.execute = f"EXECUTE {self.name} ({', '.join(f'%({p})s' for p in order)})"


def fetch(db: Database, statement: Statement, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
    """The rows of `statement` run once, outside any transaction."""
    for attempt in (1, 2):
        try:
            with db.engine.connect() as connection:
                if db.is_sqlite:  # no round trips to save
                    return connection.exec_driver_sql(statement.sql, params).all()
                return _fetch_postgresql(connection, statement, params)
        except exc.DBAPIError as error:
            # A pooled connection found dead (a database restart): SQLAlchemy has dropped it
            # and the pool's older ones, so read once more on a fresh one.
            if attempt == 2 or not error.connection_invalidated:
                raise
    raise AssertionError("unreachable")


def _fetch_postgresql(
    connection: Connection, statement: Statement, params: Mapping[str, Any]
) -> Sequence[Sequence[Any]]:
    pooled = connection.connection
    driver: Any = pooled.driver_connection
    prepared = pooled.info.setdefault(_PREPARED, set())
    driver.autocommit = True  # no BEGIN and COMMIT around the statement
    try:
        if statement.name not in prepared:
            _prepare(connection, statement, prepared)
        try:
            return connection.exec_driver_sql(statement.execute, params).all()
        except exc.DBAPIError as error:
            # The server forgot it (DEALLOCATE ALL, DISCARD ALL, a pooler's swapped server
            # connection) while the connection lived on: prepare it again, once.
            if _sqlstate(error) != _UNDEFINED_PREPARED:
                raise
            prepared.discard(statement.name)
            _prepare(connection, statement, prepared)
            return connection.exec_driver_sql(statement.execute, params).all()
    finally:
        if not driver.closed:
            driver.autocommit = False


def _prepare(connection: Connection, statement: Statement, prepared: set[str]) -> None:
    try:
        connection.exec_driver_sql(statement.prepare)
    except exc.DBAPIError as error:
        if _sqlstate(error) != _DUPLICATE_PREPARED:  # prepared already, unrecorded: use it
            raise
    prepared.add(statement.name)


def _sqlstate(error: exc.DBAPIError) -> str | None:
    return getattr(error.orig, "pgcode", None)


def utc(value: datetime | str | None) -> datetime | None:
    """A timestamp column's value as an aware UTC datetime: PostgreSQL gives it aware, SQLite
    as the naive UTC text SQLAlchemy stored."""
    if value is None:
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.astimezone(UTC)
