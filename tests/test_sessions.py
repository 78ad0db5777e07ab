"""Sessions (TESTPLAN 7, 8): refresh rotation, replay detection with a grace window,
parallel refreshes, logout, password change and account deletion ending sessions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from repwise.v1 import auth_pb2
from tests.conftest import PASSWORD, bearer, register, rpc_error, start_server

NEW_PASSWORD = "another horse battery"
GRACE = 30  # Settings.refresh_grace_seconds
REFRESH_DAYS = 30  # Settings.refresh_token_days


def login(server, email: str, password: str = PASSWORD) -> auth_pb2.LoginResponse:
    return server.auth.Login(auth_pb2.LoginRequest(email=email, password=password))


def refresh(server, token: str) -> auth_pb2.RefreshResponse:
    return server.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=token))


def get_me(server, access_token: str) -> auth_pb2.User:
    return server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=bearer(access_token)).user


def assert_access_ended(server, access_token: str) -> None:
    error = rpc_error(server.auth.GetMe, auth_pb2.GetMeRequest(), metadata=bearer(access_token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()


def assert_refresh_refused(server, refresh_token: str) -> grpc.RpcError:
    error = rpc_error(refresh, server, refresh_token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    return error


# --- rotation -------------------------------------------------------------------


def test_refresh_rotates_and_successor_works(server, clock):
    clock.freeze()
    account = register(server)
    first = refresh(server, account.refresh_token)
    assert first.refresh_token and first.refresh_token != account.refresh_token
    assert first.access_token and first.token_type == "Bearer" and first.expires_in == 900
    assert get_me(server, first.access_token).id == account.user.id
    # The original session's access token is still good: rotation does not end the session.
    assert get_me(server, account.access_token).id == account.user.id

    clock.advance(GRACE + 1)
    second = refresh(server, first.refresh_token)
    assert second.refresh_token not in (first.refresh_token, account.refresh_token)
    assert get_me(server, second.access_token).id == account.user.id


@pytest.mark.parametrize("delay", [GRACE + 1, 600])
def test_replay_after_grace_revokes_the_whole_family(server, clock, delay):
    clock.freeze()
    account = register(server)
    other = login(server, account.user.email)  # a second device: another session
    rotated = refresh(server, account.refresh_token)

    clock.advance(delay)
    error = assert_refresh_refused(server, account.refresh_token)
    assert "already used" in error.details()

    # Everything of that session has ended: the successor and every access token.
    assert_refresh_refused(server, rotated.refresh_token)
    assert_access_ended(server, rotated.access_token)
    assert_access_ended(server, account.access_token)
    # Replaying again stays refused.
    assert_refresh_refused(server, account.refresh_token)

    # The user's other session is untouched.
    assert get_me(server, other.access_token).id == account.user.id
    assert refresh(server, other.refresh_token).refresh_token


def test_replay_of_an_older_ancestor_revokes_the_family(server, clock):
    clock.freeze()
    account = register(server)
    one = refresh(server, account.refresh_token)
    clock.advance(GRACE + 1)
    two = refresh(server, one.refresh_token)
    clock.advance(GRACE + 1)
    assert_refresh_refused(server, account.refresh_token)
    assert_refresh_refused(server, two.refresh_token)
    assert_access_ended(server, two.access_token)


@pytest.mark.parametrize("delay", [0, 1, GRACE])
def test_replay_within_grace_returns_the_same_successor(server, clock, delay):
    clock.freeze()
    account = register(server)
    first = refresh(server, account.refresh_token)

    clock.advance(delay)
    retried = refresh(server, account.refresh_token)  # the phone never saw `first`
    assert retried.refresh_token == first.refresh_token
    assert get_me(server, retried.access_token).id == account.user.id
    assert get_me(server, first.access_token).id == account.user.id

    # No revocation: the successor is still good once, and the session lives on.
    nxt = refresh(server, retried.refresh_token)
    assert nxt.refresh_token != retried.refresh_token
    assert get_me(server, nxt.access_token).id == account.user.id
    assert get_me(server, account.access_token).id == account.user.id


def test_replay_within_grace_after_successor_was_used_revokes(server, clock):
    clock.freeze()
    account = register(server)
    first = refresh(server, account.refresh_token)
    second = refresh(server, first.refresh_token)  # the successor has been used

    clock.advance(1)
    assert_refresh_refused(server, account.refresh_token)
    assert_refresh_refused(server, second.refresh_token)
    assert_access_ended(server, second.access_token)


@pytest.mark.parametrize("parallel", [2, 10])
def test_parallel_refreshes_get_one_successor(server, clock, parallel):
    clock.freeze()
    account = register(server)
    other = login(server, account.user.email)

    def attempt(_: int):
        try:
            return refresh(server, account.refresh_token)
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(attempt, range(parallel)))

    failures = [r for r in results if isinstance(r, grpc.RpcError)]
    assert not failures, [(f.code(), f.details()) for f in failures]
    successors = {r.refresh_token for r in results}
    assert len(successors) == 1
    (successor,) = successors
    assert successor != account.refresh_token
    for r in results:
        assert get_me(server, r.access_token).id == account.user.id

    # The one successor works (once); the session was not revoked by the crowd.
    nxt = refresh(server, successor)
    assert get_me(server, nxt.access_token).id == account.user.id
    assert get_me(server, account.access_token).id == account.user.id
    assert get_me(server, other.access_token).id == account.user.id


# --- refresh tokens that are not good -------------------------------------------


def test_expired_refresh_token_is_unauthenticated(server, clock):
    clock.freeze()
    account = register(server)
    clock.advance(REFRESH_DAYS * 24 * 3600 + 1)
    error = assert_refresh_refused(server, account.refresh_token)
    assert "expired" in error.details()


def test_refresh_token_just_before_expiry_works(server, clock):
    clock.freeze()
    account = register(server)
    clock.advance(REFRESH_DAYS * 24 * 3600 - 1)
    assert refresh(server, account.refresh_token).refresh_token


def _tampered(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda r: "garbage", id="junk"),
        pytest.param(lambda r: "abc.def", id="fake-id-and-mac"),
        pytest.param(lambda r: r.refresh_token.partition(".")[0], id="id-without-mac"),
        pytest.param(lambda r: r.refresh_token.partition(".")[0] + ".", id="empty-mac"),
        pytest.param(lambda r: _tampered(r.refresh_token), id="mac-altered"),
        pytest.param(lambda r: "x" + r.refresh_token, id="id-altered"),
        pytest.param(lambda r: r.refresh_token + "=", id="suffix"),
        pytest.param(lambda r: r.refresh_token + "x" * 5000, id="oversized"),
        pytest.param(lambda r: "é" + r.refresh_token, id="non-ascii"),
        pytest.param(lambda r: r.access_token, id="access-token"),
        pytest.param(lambda r: " " + r.refresh_token, id="leading-space"),
    ],
)
def test_malformed_refresh_token_is_unauthenticated(server, make_token):
    account = register(server)
    token = make_token(account)
    assert token != account.refresh_token
    assert_refresh_refused(server, token)
    # Garbage ends nothing: the real token still works.
    assert refresh(server, account.refresh_token).refresh_token


def test_refresh_token_from_another_server_key_is_unauthenticated(server, db, clock):
    other = start_server(db, clock, jwt_secret="a-completely-different-secret-of-32-bytes+")
    try:
        foreign = register(other)
    finally:
        other.channel.close()
        other.server.stop(grace=0)
    assert_refresh_refused(server, foreign.refresh_token)


def test_empty_refresh_token_is_invalid_argument(server):
    error = rpc_error(refresh, server, "")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "refresh_token" in error.details()


def test_refresh_token_is_not_an_access_token(server):
    account = register(server)
    assert_access_ended(server, account.refresh_token)


# --- logout ---------------------------------------------------------------------


def test_logout_ends_only_the_current_session(server):
    account = register(server)
    other = login(server, account.user.email)

    response = server.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(account.access_token))
    assert response.sessions_ended == 1

    assert_access_ended(server, account.access_token)
    assert_refresh_refused(server, account.refresh_token)
    assert get_me(server, other.access_token).id == account.user.id
    assert refresh(server, other.refresh_token).refresh_token

    # A second logout with the ended session's token is refused, not counted again.
    error = rpc_error(
        server.auth.Logout, auth_pb2.LogoutRequest(), metadata=bearer(account.access_token)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_logout_all_sessions_ends_every_session_and_counts_them(server):
    account = register(server)
    sessions = [account, login(server, account.user.email), login(server, account.user.email)]
    bystander = register(server)

    response = server.auth.Logout(
        auth_pb2.LogoutRequest(all_sessions=True), metadata=bearer(sessions[1].access_token)
    )
    assert response.sessions_ended == 3

    for s in sessions:
        assert_access_ended(server, s.access_token)
        assert_refresh_refused(server, s.refresh_token)
    # Another user's session is untouched.
    assert get_me(server, bystander.access_token).id == bystander.user.id
    # Signing in again works.
    fresh = login(server, account.user.email)
    assert get_me(server, fresh.access_token).id == account.user.id


def test_logout_all_counts_only_live_sessions(server):
    account = register(server)
    second = login(server, account.user.email)
    server.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(second.access_token))
    response = server.auth.Logout(
        auth_pb2.LogoutRequest(all_sessions=True), metadata=bearer(account.access_token)
    )
    assert response.sessions_ended == 1


# --- password change ------------------------------------------------------------


def test_change_password_ends_every_other_session(server):
    account = register(server)
    other = login(server, account.user.email)
    bystander = register(server)

    changed = server.auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=NEW_PASSWORD),
        metadata=bearer(account.access_token),
    )
    assert changed.token_type == "Bearer" and changed.expires_in == 900

    # Every earlier session ended at once, including the one that made the change.
    for s in (account, other):
        assert_access_ended(server, s.access_token)
        assert_refresh_refused(server, s.refresh_token)

    # The returned session works, both tokens.
    assert get_me(server, changed.access_token).id == account.user.id
    rotated = refresh(server, changed.refresh_token)
    assert get_me(server, rotated.access_token).id == account.user.id

    # The new password signs in; the old one does not.
    assert login(server, account.user.email, NEW_PASSWORD).user.id == account.user.id
    error = rpc_error(login, server, account.user.email, PASSWORD)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert get_me(server, bystander.access_token).id == bystander.user.id


def test_change_password_with_wrong_current_password_changes_nothing(server):
    account = register(server)
    error = rpc_error(
        server.auth.ChangePassword,
        auth_pb2.ChangePasswordRequest(
            current_password="not my password", new_password=NEW_PASSWORD
        ),
        metadata=bearer(account.access_token),
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert get_me(server, account.access_token).id == account.user.id
    assert login(server, account.user.email).user.id == account.user.id
    assert rpc_error(login, server, account.user.email, NEW_PASSWORD).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )


@pytest.mark.parametrize("new_password", ["short", "x" * 73])
def test_change_password_to_an_invalid_one_is_refused(server, new_password):
    account = register(server)
    error = rpc_error(
        server.auth.ChangePassword,
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=new_password),
        metadata=bearer(account.access_token),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "new_password" in error.details()
    assert get_me(server, account.access_token).id == account.user.id
    assert login(server, account.user.email).user.id == account.user.id


# --- account deletion -----------------------------------------------------------


def test_delete_account_ends_sessions_and_frees_the_email(server):
    account = register(server)
    other = login(server, account.user.email)
    bystander = register(server)

    server.auth.DeleteAccount(
        auth_pb2.DeleteAccountRequest(password=PASSWORD), metadata=bearer(account.access_token)
    )

    for s in (account, other):
        assert_access_ended(server, s.access_token)
        assert_refresh_refused(server, s.refresh_token)

    deleted = rpc_error(login, server, account.user.email, PASSWORD)
    wrong = rpc_error(login, server, bystander.user.email, "not the password")
    assert deleted.code() == wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert deleted.details() == wrong.details()

    again = register(server, email=account.user.email)
    assert again.user.id != account.user.id
    assert get_me(server, again.access_token).email == account.user.email
    assert get_me(server, bystander.access_token).id == bystander.user.id


def test_delete_account_with_wrong_password_deletes_nothing(server):
    account = register(server)
    error = rpc_error(
        server.auth.DeleteAccount,
        auth_pb2.DeleteAccountRequest(password="not the password"),
        metadata=bearer(account.access_token),
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert get_me(server, account.access_token).id == account.user.id
    assert login(server, account.user.email).user.id == account.user.id
