"""`repwise serve --workers N`: N server processes sharing one port (SO_REUSEPORT).

One Python process is bound by the interpreter lock (DESIGN.md §4), so on a machine with
several cores N processes serve more calls. The parent migrates and seeds the catalog once
(in a short-lived child, so the supervising parent stays small), reserves the port, and
forks; each worker builds its own database engine and gRPC server after the fork (neither
survives a fork), binds the same port with SO_REUSEPORT, and the kernel spreads new
connections over the workers. A connection (and every call on it) stays with one worker.

The parent only supervises: SIGTERM or SIGINT is passed on to every worker, which drains as
a single server does (health NOT_SERVING, in-flight calls get REPWISE_GRACE_SECONDS); if a
worker dies on its own, the others are stopped too and the parent exits non-zero, so a
process manager restarts the whole set.

With a metrics port, the workers write their metrics to files in a fresh directory
(prometheus_client's multiprocess mode) and the parent serves their sum at /metrics.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc
from sqlalchemy.engine import make_url

from server.config import Settings

if TYPE_CHECKING:
    from server.metrics import MetricsServer

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


def _share_metrics() -> str:
    """A fresh directory where every worker writes its metrics, removed when this process
    exits. Set before prometheus_client is imported: it picks multiprocess mode on import."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported too early to share workers' metrics")
    path = tempfile.mkdtemp(prefix="repwise-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _serve_metrics(settings: Settings, metrics_dir: str) -> MetricsServer | None:
    """Serves the sum of the workers' metrics; None when the port cannot be bound. Started
    after the fork, so that no worker inherits its socket or its thread's locks."""
    from server.metrics import serve_http

    assert settings.metrics_port is not None
    try:
        server = serve_http(settings.metrics_host, settings.metrics_port, metrics_dir)
    except OSError as error:
        log.error("cannot serve metrics on port %s: %s", settings.metrics_port, error)
        return None
    print(f"repwise metrics on http://{server.host}:{server.port}/metrics", flush=True)
    return server


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


def _migrate_and_seed(database_url: str) -> bool:
    """Migrate and seed in a short-lived child: the parent only supervises, and this way it
    never holds the engine, the migrations and the catalog in memory (about 50 MB)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from server.catalog.sources import seed_default_catalog
            from server.db import Database, utcnow
            from server.migrate import upgrade

            db = Database(database_url, pool_size=1)
            upgrade(db.engine)
            seed_default_catalog(db, utcnow)
            db.dispose()
            code = 0
        except exc.OperationalError as error:  # as `repwise serve` reports it, no traceback
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            print(f"repwise: cannot use the database: {reason}", file=sys.stderr)
        except BaseException:
            log.exception("migrating and seeding the database failed")
        finally:
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def serve_workers(settings: Settings, workers: int) -> int:
    """Migrate and seed once, then run `workers` server processes until a signal."""
    metrics_dir = _share_metrics() if settings.metrics_port is not None else None
    if not _migrate_and_seed(settings.database_url):
        return 1
    url = make_url(settings.database_url).render_as_string()

    reserved = _reserve_port(settings.host, settings.port)
    settings = dataclasses.replace(settings, port=reserved.getsockname()[1])
    metrics_server: MetricsServer | None = None
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
                code = _worker(dataclasses.replace(settings, metrics_port=None), write_ready)
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
    ready = started == workers
    if ready and metrics_dir is not None:
        metrics_server = _serve_metrics(settings, metrics_dir)
        ready = metrics_server is not None
    if not ready:
        stop_all(0)

    failed = not ready
    remaining = set(children)
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
            continue
        remaining.discard(pid)
        if metrics_dir is not None:
            from server.metrics import process_exited

            process_exited(pid, metrics_dir)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not stopping:
            failed = True
            if not stopping:
                log.error("worker %d exited (%d); stopping the others", pid, code)
                stop_all(0)
    reserved.close()
    if metrics_server is not None:
        metrics_server.stop()
    sys.stdout.flush()
    return 1 if failed else 0
