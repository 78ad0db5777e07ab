"""A call past its deadline changes nothing (TESTPLAN 20); the server speaks TLS when configured."""

import subprocess
import time
from pathlib import Path

import grpc
import pytest

from repwise.v1 import auth_pb2, auth_pb2_grpc
from server.auth import repository
from tests.conftest import bearer, register, rpc_error, start_server


def test_call_past_its_deadline_rolls_back(server, monkeypatch):
    user = register(server, display_name="Before")
    real = repository.get_live_session

    def slow_lookup(*args, **kwargs):
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(repository, "get_live_session", slow_lookup)
    request = auth_pb2.UpdateMeRequest(
        user=auth_pb2.User(display_name="After"),
        update_mask={"paths": ["display_name"]},
    )
    error = rpc_error(
        server.auth.UpdateMe, request, metadata=bearer(user.access_token), timeout=0.3
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    time.sleep(0.6)  # let the server finish the abandoned call
    monkeypatch.setattr(repository, "get_live_session", real)
    me = server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=bearer(user.access_token)).user
    assert me.display_name == "Before"
    assert me.etag == user.user.etag


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls(db, clock, certificate):
    cert, key = certificate
    running = start_server(db, clock, tls_cert_file=str(cert), tls_key_file=str(key))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(
            running.target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        ) as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            answer = auth.Register(
                auth_pb2.RegisterRequest(email="tls@example.com", password="correct horse battery")
            )
            assert answer.user.email == "tls@example.com"
        # A plaintext client cannot talk to the TLS port.
        plain = auth_pb2_grpc.AuthServiceStub(running.channel)
        error = rpc_error(plain.GetMe, auth_pb2.GetMeRequest(), timeout=2)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.channel.close()
        running.server.stop(grace=0)
