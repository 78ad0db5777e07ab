"""Bare grpcio servers the benchmarks compare repwise against, one per process.

    python bench/baselines.py echo     # unary: answers every request with its own bytes
    python bench/baselines.py stream   # server streaming: one small message per "set"

Both use a generic handler (no protobuf work on the server), a 16-thread pool like repwise's
default REPWISE_MAX_WORKERS, listen on 127.0.0.1 at a free port and print `PORT <n>` once
serving. The streaming server reads the number of messages to send from the request, an ASCII
integer, and sends that many copies of one serialized `repwise.v1.ExerciseSet`.
"""

from __future__ import annotations

import argparse
import signal
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["echo", "stream"])
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    if args.kind == "echo":
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
        futures.ThreadPoolExecutor(max_workers=args.workers),
        handlers=[handler],
        options=[("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=args.workers * 8,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
