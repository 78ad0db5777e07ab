"""Bare grpcio servers the benchmarks compare repwise against, one per process.

    python bench/baselines.py echo     # unary: answers every request with its own bytes
    python bench/baselines.py stream   # server streaming: one small message per "set"

Both use a generic handler (no protobuf work on the server), a 16-thread pool like repwise's
default REPWISE_MAX_WORKERS, listen on 127.0.0.1 at a free port and print `PORT <n>` once
serving. The streaming server reads the number of messages to send from the request, an ASCII
integer, and sends that many copies of one serialized `repwise.v1.ExerciseSet`.

`--processes N` runs N such servers sharing the port (SO_REUSEPORT), as `repwise serve
--workers N` does: the parent reserves the port, forks, and each child builds its own server
(gRPC does not survive a fork). The parent passes SIGTERM on to them.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from concurrent import futures

import grpc

from repwise.v1 import log_pb2

ECHO_METHOD = "/bench.Echo/Echo"
STREAM_METHOD = "/bench.Stream/Sets"
ONE_SET = log_pb2.ExerciseSet(
    reps=8, weight=100.0, rpe=8.0, kind=log_pb2.SET_KIND_NORMAL
).SerializeToString()


def _identity(data: bytes) -> bytes:
    return data


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def sets(request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
    for _ in range(int(request)):
        yield ONE_SET


def serve(kind: str, workers: int, port: int, reuse: bool) -> tuple[grpc.Server, int]:
    if kind == "echo":
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo",
            {"Echo": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity)},
        )
    else:
        handler = grpc.method_handlers_generic_handler(
            "bench.Stream",
            {"Sets": grpc.unary_stream_rpc_method_handler(sets, _identity, _identity)},
        )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        handlers=[handler],
        options=[("grpc.so_reuseport", 1 if reuse else 0)],
        maximum_concurrent_rpcs=workers * 8,
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


def wait_for_signal() -> None:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["echo", "stream"])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    if args.processes == 1:
        server, port = serve(args.kind, args.workers, 0, reuse=False)
        print(f"PORT {port}", flush=True)
        wait_for_signal()
        server.stop(0).wait()
        return 0
    reserved = socket.socket()
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    ready_read, ready_write = os.pipe()
    children = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.close(ready_read)
            server, _bound = serve(args.kind, args.workers, port, reuse=True)
            os.write(ready_write, b"1")
            wait_for_signal()
            server.stop(0).wait()
            os._exit(0)
        children.append(pid)
    os.close(ready_write)
    started = 0
    while started < args.processes:
        chunk = os.read(ready_read, args.processes)
        if not chunk:
            raise SystemExit("a baseline server process did not start")
        started += len(chunk)
    print(f"PORT {port}", flush=True)
    wait_for_signal()
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
