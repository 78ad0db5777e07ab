"""LogService. Its methods land with the logging issue; until then every call
answers UNIMPLEMENTED."""

from repwise.v1 import log_pb2_grpc


class LogServicer(log_pb2_grpc.LogServiceServicer):
    pass
