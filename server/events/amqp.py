"""RabbitMQ plumbing shared by the relay and the consumer (pika's BlockingConnection).

Each thread owns its own connection: pika connections are not thread-safe. Both sides
declare the same topology (a durable topic exchange and the metrics queue bound to it), so an
event published before the consumer ever ran still waits in the queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from urllib.parse import urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from server.events import outbox

# Seconds to wait for the broker to answer a connect or a publish before giving up on it.
SOCKET_TIMEOUT_SECONDS = 5.0
# A broker short of memory or disk blocks publishers; past this, the relay reconnects later.
BLOCKED_TIMEOUT_SECONDS = 30.0


def check_url(url: str) -> None:
    """ValueError unless `url` is an amqp:// or amqps:// URL pika accepts."""
    if urlsplit(url).scheme not in ("amqp", "amqps"):
        raise ValueError("must start with amqp:// or amqps://")
    try:
        pika.URLParameters(url)
    except Exception as error:  # pika raises IndexError, ValueError, KeyError...
        raise ValueError(str(error) or type(error).__name__) from None


def failure(error: BaseException) -> str:
    """What went wrong, for logs: pika's errors say it only in their repr; database errors
    in their driver's first line (never the SQL or its parameters)."""
    if isinstance(error, pika.exceptions.AMQPError):
        return repr(error)
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def describe(url: str) -> str:
    """The broker's address for logs: never the credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path or '/'}"


def connect(url: str) -> pika.BlockingConnection:
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1  # the caller retries, with backoff
    parameters.socket_timeout = SOCKET_TIMEOUT_SECONDS
    parameters.stack_timeout = SOCKET_TIMEOUT_SECONDS * 2
    parameters.blocked_connection_timeout = BLOCKED_TIMEOUT_SECONDS
    return pika.BlockingConnection(parameters)


def declare(channel: BlockingChannel, exchange: str, queue: str) -> None:
    """The durable topic exchange, and the durable metrics queue bound to its workout events."""
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange, routing_key=outbox.WORKOUT_EVENTS)


def properties(event: outbox.Event) -> pika.BasicProperties:
    return pika.BasicProperties(
        message_id=str(event.id),
        type=event.kind,
        content_type=outbox.CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent,
        timestamp=int(event.occurred_at.timestamp()),
        app_id="repwise",
    )


class Publisher:
    """Publishes events as persistent messages with publisher confirms: `publish` returns
    only once the broker has taken every one (written to disk for durable queues), and
    raises otherwise. Connects on first use and again after `close`."""

    def __init__(self, url: str, exchange: str, queue: str) -> None:
        self.url = url
        self.exchange = exchange
        self.queue = queue
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def _open(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = connect(self.url)
            channel = self._connection.channel()
            declare(channel, self.exchange, self.queue)
            channel.confirm_delivery()
            self._channel = channel
        return self._channel

    def publish(self, events: Sequence[outbox.Event]) -> None:
        """Raises pika's UnroutableError for a message no queue took (the queue was deleted
        or unbound): the broker confirms those too, and they would be lost."""
        channel = self._open()
        for event in events:
            # Routed by kind: consumers bind the kinds they want ("workout.*").
            channel.basic_publish(
                self.exchange, event.kind, outbox.encode(event), properties(event), mandatory=True
            )

    def keep_alive(self) -> None:
        """Answer the broker's heartbeats while idle (a blocking connection only does when
        called)."""
        if self._connection is not None and self._connection.is_open:
            self._connection.process_data_events(time_limit=0)

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            close(connection)


def close(connection: pika.BlockingConnection) -> None:
    """Close a connection that may be broken already (then there is nothing to release)."""
    if connection.is_open:
        with contextlib.suppress(Exception):
            connection.close()
