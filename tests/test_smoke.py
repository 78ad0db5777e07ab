"""The README's promise, end to end: register, log in, GetMe; no token -> UNAUTHENTICATED."""

import grpc

from repwise.v1 import auth_pb2
from tests.conftest import PASSWORD, bearer, register, rpc_error


def test_register_login_get_me(server):
    registered = register(server, email="  Ann.Lee@Example.COM ", display_name="Ann")
    assert registered.user.email == "ann.lee@example.com"
    assert registered.token_type == "Bearer"
    assert registered.expires_in == 900

    login = server.auth.Login(auth_pb2.LoginRequest(email="ann.lee@example.com", password=PASSWORD))
    me = server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=bearer(login.access_token)).user
    assert (me.email, me.display_name, me.role) == (
        "ann.lee@example.com",
        "Ann",
        auth_pb2.ROLE_USER,
    )
    assert me.id == registered.user.id


def test_get_me_without_token_is_unauthenticated(server):
    error = rpc_error(server.auth.GetMe, auth_pb2.GetMeRequest())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in error.details()
