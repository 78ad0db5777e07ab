"""The Python load generator for unary calls: a few processes, each keeping a fixed number of
calls in flight on a few grpc.aio channels (each its own connection, so a server of several
processes sharing a port gets connections spread over them), every call with a body that
differs from all others.

The body is a serialized request with a placeholder UUID, replaced by a fresh uuid4 per call,
so CreateWorkout stores a new workout each time; the echo baseline gets exactly the same bytes
and work from this client. Bodies go out as raw bytes (no protobuf work in the client), answers
are counted, not decoded, and any status but OK is counted as a failure. Call slot i sends
the metadata metadata[i % len(metadata)] (one user, or one user per slot).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection

import grpc

Metadata = tuple[tuple[str, str], ...]
CHANNELS = 4  # connections per process


@dataclass
class Job:
    target: str
    method: str
    template: bytes
    placeholder: bytes
    metadata: tuple[Metadata, ...]  # slot i uses metadata[i % len(metadata)]
    concurrency: int


async def _run(job: Job, seconds: float, calls: list[grpc.aio.UnaryUnaryMultiCallable]) -> dict:
    ok = failed = 0
    first_error = ""
    stop = time.perf_counter() + seconds

    async def loop(slot: int) -> None:
        nonlocal ok, failed, first_error
        call = calls[slot % len(calls)]
        metadata = job.metadata[slot % len(job.metadata)]
        while time.perf_counter() < stop:
            body = job.template.replace(job.placeholder, str(uuid.uuid4()).encode())
            try:
                await call(body, metadata=metadata, timeout=30)
                ok += 1
            except grpc.aio.AioRpcError as error:
                failed += 1
                first_error = first_error or f"{error.code().name}: {error.details()}"

    started = time.perf_counter()
    await asyncio.gather(*(loop(slot) for slot in range(job.concurrency)))
    return {
        "ok": ok,
        "failed": failed,
        "error": first_error,
        "seconds": time.perf_counter() - started,
    }


async def _serve(job: Job, conn: Connection) -> None:
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel
    channels = [grpc.aio.insecure_channel(job.target, options=options) for _ in range(CHANNELS)]
    try:
        calls = [
            channel.unary_unary(job.method, request_serializer=None, response_deserializer=None)
            for channel in channels
        ]
        for channel in channels:
            await channel.channel_ready()
        conn.send("ready")
        while True:
            seconds = conn.recv()
            if seconds is None:
                return
            conn.send(await _run(job, seconds, calls))
    finally:
        for channel in channels:
            await channel.close()


def _worker(job: Job, conn: Connection) -> None:
    asyncio.run(_serve(job, conn))


class LoadGenerator:
    """`processes` worker processes (one job each, or the same job for all); `run(seconds)`
    starts them together and returns the totals: calls/s (OK answers only), OK and failed
    counts and the first error."""

    def __init__(self, job: Job | list[Job], processes: int) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that has used gRPC
        jobs = job if isinstance(job, list) else [job] * processes
        assert len(jobs) == processes
        self.conns = []
        self.procs = []
        for job in jobs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(job, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if not conn.poll(60):
                raise RuntimeError("load generator process did not start")
            conn.recv()

    def run(self, seconds: float) -> dict:
        for conn in self.conns:
            conn.send(seconds)
        parts = [conn.recv() for conn in self.conns]
        ok = sum(p["ok"] for p in parts)
        failed = sum(p["failed"] for p in parts)
        elapsed = max(p["seconds"] for p in parts)
        error = next((p["error"] for p in parts if p["error"]), "")
        return {"rate": ok / elapsed, "ok": ok, "failed": failed, "error": error}

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
