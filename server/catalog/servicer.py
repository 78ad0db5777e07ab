"""CatalogService. Its methods land with the catalog issue; until then every
call answers UNIMPLEMENTED (the generated base class raises NotImplementedError,
which the error interceptor turns into that status)."""

from repwise.v1 import catalog_pb2_grpc


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    pass
