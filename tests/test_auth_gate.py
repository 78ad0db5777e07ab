"""The authentication gate (TESTPLAN 6 and 9), through the real server.

Every method of every repwise service, unary or streaming, needs a valid bearer token;
only Register, Login, Refresh, health and reflection are open. Junk, oversized or
duplicated `authorization` metadata is UNAUTHENTICATED, never UNKNOWN.
"""

import random
import socket
from collections import Counter

import grpc
import jwt
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from repwise.v1 import auth_pb2, catalog_pb2, log_pb2, training_pb2
from tests.conftest import TEST_SECRET, bearer, error_info, register, rpc_error

METHODS = [
    method
    for module in (auth_pb2, catalog_pb2, log_pb2, training_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
OPEN_METHODS = {
    "/repwise.v1.AuthService/Register",
    "/repwise.v1.AuthService/Login",
    "/repwise.v1.AuthService/Refresh",
}
REPWISE_SERVICES = {
    "repwise.v1.AuthService",
    "repwise.v1.CatalogService",
    "repwise.v1.LogService",
    "repwise.v1.TrainingService",
}


def path(method) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


CLOSED = [m for m in METHODS if path(m) not in OPEN_METHODS]
OPEN = [m for m in METHODS if path(m) in OPEN_METHODS]
METHOD = {path(m): m for m in METHODS}


def invoke(channel: grpc.Channel, method, metadata=()):
    """Call `method` with an empty request; streamed responses are read to the end."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    kind = "stream" if method.client_streaming else "unary"
    kind += "_stream" if method.server_streaming else "_unary"
    multicallable = getattr(channel, kind)(
        path(method),
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    request = iter([request_type()]) if method.client_streaming else request_type()
    response = multicallable(request, metadata=metadata, timeout=10)
    return list(response) if method.server_streaming else response


@pytest.fixture
def token(server) -> str:
    return register(server).access_token


def test_the_gate_covers_every_service_and_streaming_method():
    assert {m.containing_service.full_name for m in METHODS} == REPWISE_SERVICES
    assert {path(m) for m in OPEN} == OPEN_METHODS
    streaming = {path(m) for m in CLOSED if m.server_streaming}
    assert streaming >= {
        "/repwise.v1.LogService/StreamHistory",
        "/repwise.v1.LogService/ExportData",
    }


# --- 9: every method needs a token, except the open ones ---------------------------


@pytest.mark.parametrize("method", CLOSED, ids=path)
def test_closed_method_without_token_is_unauthenticated(server, method):
    error = rpc_error(invoke, server.channel, method)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert error_info(error).reason == "TOKEN_MISSING"
    assert "authorization" in error.details()


@pytest.mark.parametrize("method", CLOSED, ids=path)
def test_closed_method_with_invalid_token_is_unauthenticated(server, method):
    error = rpc_error(invoke, server.channel, method, metadata=bearer("a.b.c"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert error_info(error).reason == "TOKEN_INVALID"


@pytest.mark.parametrize("metadata", [(), bearer("a.b.c")], ids=["no-token", "junk-token"])
@pytest.mark.parametrize("method", OPEN, ids=path)
def test_open_method_needs_no_token(server, method, metadata):
    # An empty request is invalid, so the handler ran and judged the request itself.
    error = rpc_error(invoke, server.channel, method, metadata=metadata)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()


@pytest.mark.parametrize(
    "method", ["/repwise.v1.AuthService/GetMe", "/repwise.v1.LogService/ExportData"]
)
def test_unauthenticated_status_carries_error_info(server, method):
    metadata = (("x-request-id", "gate-check-42"),)
    error = rpc_error(invoke, server.channel, METHOD[method], metadata=metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(error)
    assert (info.reason, info.domain) == ("TOKEN_MISSING", "repwise.v1")
    assert info.metadata["request_id"] == "gate-check-42"


# --- 6: junk authorization metadata -------------------------------------------------


def auth(*values: str) -> tuple[tuple[str, str], ...]:
    return tuple(("authorization", value) for value in values)


JUNK_METADATA = {
    "bare-scheme": lambda t: auth("Bearer"),
    "scheme-and-space": lambda t: auth("Bearer "),
    "scheme-and-spaces": lambda t: auth("Bearer    "),
    "basic-scheme": lambda t: auth("Basic abc"),
    "basic-scheme-valid-token": lambda t: auth(f"Basic {t}"),
    "token-scheme-valid-token": lambda t: auth(f"Token {t}"),
    "no-scheme-valid-token": lambda t: auth(t),
    "three-empty-segments": lambda t: auth("Bearer a.b.c"),
    "dots-only": lambda t: auth("Bearer ...."),
    "valid-token-plus-word": lambda t: auth(f"Bearer {t} extra"),
    "valid-token-plus-char": lambda t: auth(f"Bearer {t}x"),
    "printable-junk": lambda t: auth("Bearer !@#$%^&*()_+{}|:<>?~`-=[]\\;',./\"'"),
    "empty-value": lambda t: auth(""),
    "two-valid-entries": lambda t: auth(f"Bearer {t}", f"Bearer {t}"),
    "valid-then-junk": lambda t: auth(f"Bearer {t}", "Bearer a.b.c"),
    "junk-then-valid": lambda t: auth("Bearer a.b.c", f"Bearer {t}"),
    "binary-key-only": lambda t: (("authorization-bin", random.Random(6).randbytes(64)),),
}


@pytest.mark.parametrize("make_metadata", JUNK_METADATA.values(), ids=JUNK_METADATA.keys())
def test_junk_authorization_is_unauthenticated(server, token, make_metadata):
    error = rpc_error(server.auth.GetMe, auth_pb2.GetMeRequest(), metadata=make_metadata(token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert error_info(error).reason in ("TOKEN_MISSING", "TOKEN_INVALID")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(server, scheme):
    registered = register(server)
    me = server.auth.GetMe(
        auth_pb2.GetMeRequest(), metadata=auth(f"{scheme} {registered.access_token}")
    )
    assert me.user.id == registered.user.id


@pytest.mark.parametrize("kind", ["junk", "validly-signed"])
def test_10kb_token_is_unauthenticated(server, token, kind):
    if kind == "junk":
        big = "A" * 10 * 1024
    else:  # a real session's claims, padded: refused for its size alone
        claims = jwt.decode(token, options={"verify_signature": False})
        claims["pad"] = "x" * 10 * 1024
        big = jwt.encode(claims, TEST_SECRET, algorithm="HS256", headers={"typ": "at+jwt"})
    # gRPC's transport refuses metadata over its soft limit only some of the time: repeat.
    codes = Counter(
        rpc_error(server.auth.GetMe, auth_pb2.GetMeRequest(), metadata=bearer(big)).code()
        for _ in range(30)
    )
    assert codes == {grpc.StatusCode.UNAUTHENTICATED: 30}


# gRPC clients refuse to send metadata outside printable ASCII, but a hostile client can send
# any bytes. So these speak HTTP/2 directly: one call per connection, headers as plain literals.

DATA, HEADERS, RST_STREAM, GOAWAY = 0x0, 0x1, 0x3, 0x7
END_STREAM, END_HEADERS = 0x1, 0x4


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    header = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
    return header + payload


def _frames(received: bytes) -> list[tuple[int, bytes]]:
    """The complete frames in `received`, as (type, payload)."""
    frames, at = [], 0
    while at + 9 <= len(received):
        end = at + 9 + int.from_bytes(received[at : at + 3], "big")
        if end > len(received):
            break
        frames.append((received[at + 3], received[at + 9 : end]))
        at = end
    return frames


def _hpack_string(raw: bytes) -> bytes:
    """An HPACK string literal without Huffman coding (RFC 7541 §5.1, §5.2)."""
    if len(raw) < 127:
        return bytes([len(raw)]) + raw
    prefix, length = [127], len(raw) - 127
    while length >= 128:
        prefix.append(length % 128 + 128)
        length //= 128
    return bytes([*prefix, length]) + raw


def _grpc_status(frames: list[tuple[int, bytes]]) -> str | None:
    for kind, payload in frames:
        if kind in (RST_STREAM, GOAWAY):
            return "RST_STREAM" if kind == RST_STREAM else "GOAWAY"
        at = payload.find(b"\x0bgrpc-status") if kind == HEADERS else -1
        if at >= 0:
            start = at + len(b"\x0bgrpc-status")
            length = payload[start]
            assert length < 0x80, "grpc-status arrived Huffman coded; decode it"
            return payload[start + 1 : start + 1 + length].decode("ascii")
    return None


def raw_call_status(target: str, method: str, authorization: bytes) -> str:
    """The grpc-status of one call to `method` with an empty request and these header bytes."""
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", method.encode()),
        (b":authority", target.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"authorization", authorization),
    ]
    block = b"".join(b"\x00" + _hpack_string(n) + _hpack_string(v) for n, v in fields)
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(0x4, 0, 0, b"")  # SETTINGS
            + _frame(HEADERS, END_HEADERS, 1, block)
            + _frame(DATA, END_STREAM, 1, b"\x00\x00\x00\x00\x00")  # one empty message
        )
        received = b""
        while (status := _grpc_status(_frames(received))) is None:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection without a grpc-status"
            received += chunk
    return status


def test_raw_http2_client_works(server, token):
    """Control: the hand-made client gets OK with a valid token, 16 without one."""
    method = "/repwise.v1.AuthService/GetMe"
    assert raw_call_status(server.target, method, f"Bearer {token}".encode()) == "0"
    assert raw_call_status(server.target, method, b"Bearer a.b.c") == "16"


JUNK_BYTES = {
    "random-bytes": lambda t: random.Random(1).randbytes(64).replace(b"\x00", b"\x01"),
    "bearer-random-bytes": lambda t: b"Bearer " + bytes(range(0x80, 0x100)),
    "bearer-utf8": lambda t: "Bearer naïve-tökén-中文-🏋️".encode(),
    "bearer-latin1": lambda t: b"Bearer \xff\xfe\xfd\xe9",
    "valid-token-plus-utf8": lambda t: f"Bearer {t}é".encode(),
    "valid-token-utf8-inside": lambda t: f"Bearer {t[:20]}é{t[21:]}".encode(),
    "utf8-scheme-valid-token": lambda t: f"Bëarer {t}".encode(),
}


@pytest.mark.parametrize("make_value", JUNK_BYTES.values(), ids=JUNK_BYTES.keys())
def test_non_ascii_authorization_is_unauthenticated(server, token, make_value):
    for method in ("/repwise.v1.AuthService/GetMe", "/repwise.v1.LogService/ExportData"):
        status = raw_call_status(server.target, method, make_value(token))
        assert status == str(grpc.StatusCode.UNAUTHENTICATED.value[0]), method


# --- open services ---------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [(), bearer("a.b.c")], ids=["no-token", "junk-token"])
@pytest.mark.parametrize("service", ["", *sorted(REPWISE_SERVICES)])
def test_health_needs_no_token(server, service, metadata):
    health = health_pb2_grpc.HealthStub(server.channel)
    response = health.Check(
        health_pb2.HealthCheckRequest(service=service), metadata=metadata, timeout=10
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("metadata", [(), bearer("a.b.c")], ids=["no-token", "junk-token"])
def test_reflection_needs_no_token(server, metadata):
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="repwise.v1.LogService"),
    ]
    listed, found = stub.ServerReflectionInfo(iter(requests), metadata=metadata, timeout=10)
    names = {s.name for s in listed.list_services_response.service}
    # Nothing served is missing from the gate's method list above.
    assert names == REPWISE_SERVICES | {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert found.file_descriptor_response.file_descriptor_proto
