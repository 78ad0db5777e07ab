"""`repwise serve --workers N`: N server processes sharing one port (SO_REUSEPORT).

One Python process is bound by the interpreter lock (DESIGN.md §4), so on a machine with
several cores N processes serve more calls. The parent migrates and seeds the catalog once,
reserves the port, and forks; each worker builds its own database engine and gRPC server
after the fork (neither survives a fork), binds the same port with SO_REUSEPORT, and the
kernel spreads new connections over the workers. A connection (and every call on it) stays
with one worker.

The parent only supervises: SIGTERM or SIGINT is passed on to every worker, which drains as
a single server does (health NOT_SERVING, in-flight calls get REPWISE_GRACE_SECONDS); if a
worker dies on its own, the others are stopped too and the parent exits non-zero, so a
process manager restarts the whole set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from typing import Any

from server.config import Settings

log = logging.getLogger(__name__)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to the address with SO_REUSEPORT: it fixes the port
    (port 0 picks one) for every worker and refuses a port another server holds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _worker(settings: Settings, ready: int) -> int:
    """One worker, in a forked child: its own engine and gRPC server on the shared port."""
    from server.app import RepwiseServer
    from server.db import Database

    db = Database(settings.database_url, pool_size=settings.max_workers)
    server = RepwiseServer(settings, db=db, reuse_port=True)
    server.stop_on_signals()
    server.start()
    os.write(ready, b"1")
    os.close(ready)
    server.wait()
    db.dispose()
    return 0


def serve_workers(settings: Settings, workers: int) -> int:
    """Migrate and seed once, then run `workers` server processes until a signal."""
    from server.catalog.sources import seed_default_catalog
    from server.db import Database, utcnow
    from server.migrate import upgrade

    db = Database(settings.database_url, pool_size=1)
    upgrade(db.engine)
    seed_default_catalog(db, utcnow)
    url = db.engine.url.render_as_string()
    db.dispose()  # no connection may cross the fork

    reserved = _reserve_port(settings.host, settings.port)
    settings = dataclasses.replace(settings, port=reserved.getsockname()[1])
    read_ready, write_ready = os.pipe()
    children: list[int] = []
    stopping = False

    def stop_all(signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("received %s; stopping %d workers", signal.Signals(signum).name, workers)
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.close(read_ready)
                reserved.close()
                code = _worker(settings, write_ready)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)
    os.close(write_ready)

    started = 0
    while started < workers:
        chunk = os.read(read_ready, workers - started)
        if not chunk:  # every worker is gone before serving
            break
        started += len(chunk)
    os.close(read_ready)
    if started == workers:
        print(
            f"repwise serving on {settings.host}:{settings.port} ({url}) with {workers} workers",
            flush=True,
        )
    else:
        stop_all(0)

    failed = started < workers
    remaining = set(children)
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
            continue
        remaining.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not stopping:
            failed = True
            if not stopping:
                log.error("worker %d exited (%d); stopping the others", pid, code)
                stop_all(0)
    reserved.close()
    sys.stdout.flush()
    return 1 if failed else 0
