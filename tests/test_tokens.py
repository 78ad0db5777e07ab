"""Access tokens (TESTPLAN 1-5), through the real server.

Forged, foreign, incomplete, expired and misused tokens all get UNAUTHENTICATED,
and the handler never runs. Forgeries carry the victim's real `sub` and `sid`, so
the token check is the only thing between the attacker and the victim's account
(the session check alone would let them through), and the ErrorInfo reason shows
the token check is what refused them.
"""

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass

import grpc
import jwt
import pytest

from repwise.v1 import auth_pb2
from tests.conftest import PASSWORD, TEST_SECRET, bearer, error_info, register, rpc_error

# The documented contract (README, server/config.py defaults).
ISSUER = "repwise"
AUDIENCE = "repwise-api"
ACCESS_SECONDS = 900
LEEWAY_SECONDS = 10
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud", "jti", "sid")

OTHER_KEY = "another-secret-that-is-also-32-bytes-or-more"
# Any RSA public key: the classic HS/RS confusion signs HMAC with a public key as the secret.
PUBLIC_KEY_PEM = b"""-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtUKZJcAldlvkwAKzTRIq
Y0XFgeCbd84oCizbV14MHrzGgKQgWNXW7rHJO4dIATpxt9//PNrnmJ4gkRYegS7A
y5wqcF6xNzX0TuAdNOpXiBiA1CXsGpfU4IzoNGtOnE0wlt/ztaymhU2czIdpqyjT
80c3e04Pxv58yUWKsNyyQTBytgSjSTb1gSbWMP+CUD+7mszfA5HX8o3iZaMZEoKD
KfbxCNUTCWhADOV/EwPGiBeZiPDe8zZ9+RUDV5oW7yrzLwULUFCiTiZp07L1YdDx
HpqMRG9bYPQzvqm2UhnR3M3yuBXXQgGx/va8X9+v82NapsgQyDbrtugD2vN3zPYw
TQIDAQAB
-----END PUBLIC KEY-----
"""


# --- helpers -------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def sign(claims: dict, key: str = TEST_SECRET, **header) -> str:
    """A token signed with PyJWT; typ is at+jwt unless `typ` says otherwise (None drops it)."""
    return jwt.encode(claims, key, algorithm="HS256", headers={"typ": "at+jwt", **header})


def hand_signed(header: dict, claims: dict, key: bytes, digest=hashlib.sha256) -> str:
    """An HMAC-signed token built by hand, for keys PyJWT rightly refuses (PEM keys, empty,
    or too short for HS384/HS512)."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    mac = hmac.new(key, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64(mac)}"


def unsigned(claims: dict, alg: str = "none") -> str:
    return f"{b64json({'alg': alg, 'typ': 'at+jwt'})}.{b64json(claims)}."


def with_payload(token: str, claims: dict) -> str:
    """The token with its claims replaced and its original signature kept."""
    header, _, signature = token.split(".")
    return f"{header}.{b64json(claims)}.{signature}"


def get_me(server, token: str) -> auth_pb2.User:
    return server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=bearer(token)).user


def assert_refused(server, token: str, reason: str = "TOKEN_INVALID") -> grpc.RpcError:
    """GetMe with `token` fails UNAUTHENTICATED (so returns nobody's profile) for `reason`."""
    error = rpc_error(server.auth.GetMe, auth_pb2.GetMeRequest(), metadata=bearer(token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert error_info(error).reason == reason, error.details()
    return error


@dataclass
class Account:
    id: str
    access_token: str
    refresh_token: str

    @property
    def claims(self) -> dict:
        return claims_of(self.access_token)


def account(server, display_name: str = "") -> Account:
    registered = register(server, display_name=display_name)
    return Account(registered.user.id, registered.access_token, registered.refresh_token)


@pytest.fixture
def alice(server) -> Account:
    """The attacker: a legitimate user with a token of her own."""
    return account(server, "Alice")


@pytest.fixture
def bob(server) -> Account:
    """The victim."""
    return account(server, "Bob")


def fresh_claims(victim: Account) -> dict:
    """Valid claims for the victim's live session, as the server would issue them."""
    return {**victim.claims, "jti": uuid.uuid4().hex}


# --- 1 and 2: forged signatures, foreign keys and algorithms ---------------------

FORGERIES = {
    "alg-none": lambda alice, bob: unsigned(fresh_claims(bob)),
    "alg-None": lambda alice, bob: unsigned(fresh_claims(bob), alg="None"),
    "alg-NONE": lambda alice, bob: unsigned(fresh_claims(bob), alg="NONE"),
    "signature-stripped": lambda alice, bob: bob.access_token.rsplit(".", 1)[0] + ".",
    "signature-segment-removed": lambda alice, bob: bob.access_token.rsplit(".", 1)[0],
    "sub-altered": lambda alice, bob: with_payload(
        alice.access_token, {**alice.claims, "sub": bob.id}
    ),
    "sub-and-sid-altered": lambda alice, bob: with_payload(alice.access_token, bob.claims),
    "hs256-other-key": lambda alice, bob: sign(fresh_claims(bob), key=OTHER_KEY),
    "hs512-right-key": lambda alice, bob: hand_signed(
        {"alg": "HS512", "typ": "at+jwt"}, fresh_claims(bob), TEST_SECRET.encode(), hashlib.sha512
    ),
    "hs384-right-key": lambda alice, bob: hand_signed(
        {"alg": "HS384", "typ": "at+jwt"}, fresh_claims(bob), TEST_SECRET.encode(), hashlib.sha384
    ),
    "hs256-public-key-pem-as-secret": lambda alice, bob: hand_signed(
        {"alg": "HS256", "typ": "at+jwt"}, fresh_claims(bob), PUBLIC_KEY_PEM
    ),
    "rs256-header-hmac-with-public-key-pem": lambda alice, bob: hand_signed(
        {"alg": "RS256", "typ": "at+jwt"}, fresh_claims(bob), PUBLIC_KEY_PEM
    ),
    "embedded-jwk-with-attacker-key": lambda alice, bob: hand_signed(
        {
            "alg": "HS256",
            "typ": "at+jwt",
            "jwk": {"kty": "oct", "k": b64(OTHER_KEY.encode())},
        },
        fresh_claims(bob),
        OTHER_KEY.encode(),
    ),
    "jwk-json-as-secret": lambda alice, bob: hand_signed(
        {"alg": "HS256", "typ": "at+jwt"},
        fresh_claims(bob),
        json.dumps({"kty": "oct", "k": b64(TEST_SECRET.encode())}).encode(),
    ),
    "kid-path-traversal-empty-key": lambda alice, bob: hand_signed(
        {"alg": "HS256", "typ": "at+jwt", "kid": "../../../../dev/null"},
        fresh_claims(bob),
        b"",
    ),
}


def test_forging_helpers_make_tokens_the_server_accepts(server, alice, bob):
    """Control: the same claims, signed properly, are accepted, so each refusal
    below is due to the one thing that was changed."""
    assert get_me(server, sign(fresh_claims(bob))).id == bob.id
    by_hand = hand_signed({"alg": "HS256", "typ": "at+jwt"}, bob.claims, TEST_SECRET.encode())
    assert get_me(server, by_hand).id == bob.id


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_forged_token_is_refused(server, alice, bob, forge):
    token = forge(alice, bob)
    error = assert_refused(server, token)
    assert bob.id not in error.details()


@pytest.mark.parametrize(
    "forgery", ["alg-none", "signature-stripped", "sub-and-sid-altered", "hs256-other-key"]
)
def test_forged_token_changes_nothing(server, alice, bob, forgery):
    token = FORGERIES[forgery](alice, bob)
    metadata = bearer(token)
    rename = auth_pb2.UpdateMeRequest(user=auth_pb2.User(display_name="Pwned"))
    for call, request in [
        (server.auth.UpdateMe, rename),
        (server.auth.Logout, auth_pb2.LogoutRequest(all_sessions=True)),
        (server.auth.DeleteAccount, auth_pb2.DeleteAccountRequest(password="wrong password")),
    ]:
        error = rpc_error(call, request, metadata=metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(error).reason == "TOKEN_INVALID"
    me = get_me(server, bob.access_token)  # Bob's session is live and his profile unchanged
    assert (me.id, me.display_name) == (bob.id, "Bob")


# --- 3: required claims, issuer, audience, type ---------------------------------


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_token_without_a_required_claim_is_refused(server, alice, claim):
    claims = fresh_claims(alice)
    del claims[claim]
    assert_refused(server, sign(claims))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", 12345),
        ("sub", ""),
        ("sid", None),
        ("sid", ""),
        ("jti", ""),
        ("exp", "9999999999"),
        ("exp", None),
        ("iat", True),
        ("iat", "0"),
    ],
)
def test_token_with_a_malformed_claim_is_refused(server, alice, claim, value):
    assert_refused(server, sign({**fresh_claims(alice), claim: value}))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("iss", "attacker"),
        ("iss", ""),
        ("iss", "Repwise"),
        ("aud", "repwise-admin"),
        ("aud", ""),
        ("aud", ["someone-else"]),
    ],
)
def test_token_with_wrong_issuer_or_audience_is_refused(server, alice, claim, value):
    assert_refused(server, sign({**fresh_claims(alice), claim: value}))


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "refresh"], ids=repr)
def test_token_without_access_token_type_is_refused(server, alice, typ):
    token = sign(fresh_claims(alice), typ=typ)
    assert jwt.get_unverified_header(token).get("typ") == typ
    assert_refused(server, token)


# --- 4: expiry and issue time, with the server's clock frozen -------------------


@pytest.mark.parametrize(
    ("seconds_after_issue", "accepted"),
    [
        (ACCESS_SECONDS - 1, True),
        (ACCESS_SECONDS + LEEWAY_SECONDS - 1, True),
        (ACCESS_SECONDS + LEEWAY_SECONDS + 1, False),
        (ACCESS_SECONDS + 60, False),
    ],
)
def test_expiry_allows_seconds_of_leeway_only(server, clock, seconds_after_issue, accepted):
    issued = clock.freeze()
    registered = account(server)
    claims = registered.claims
    assert claims["iat"] == int(issued.timestamp())
    assert claims["exp"] == claims["iat"] + ACCESS_SECONDS

    clock.advance(seconds_after_issue)
    if accepted:
        assert get_me(server, registered.access_token).id == registered.id
    else:
        assert_refused(server, registered.access_token, reason="TOKEN_EXPIRED")


@pytest.mark.parametrize(
    ("issued_in", "accepted"),
    [(LEEWAY_SECONDS - 1, True), (LEEWAY_SECONDS + 1, False), (3600, False), (10**9, False)],
)
def test_token_issued_in_the_future_is_refused(server, clock, alice, issued_in, accepted):
    now = int(clock.freeze().timestamp())
    claims = {**fresh_claims(alice), "iat": now + issued_in, "exp": now + issued_in + 900}
    token = sign(claims)
    if accepted:
        assert get_me(server, token).id == alice.id
    else:
        assert_refused(server, token)


# --- 5: token kinds ---------------------------------------------------------------


def test_refresh_token_is_not_an_access_token(server, alice):
    assert_refused(server, alice.refresh_token)
    logout = auth_pb2.LogoutRequest(all_sessions=True)
    error = rpc_error(server.auth.Logout, logout, metadata=bearer(alice.refresh_token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert get_me(server, alice.access_token).id == alice.id  # not logged out


def test_access_token_is_not_a_refresh_token(server, alice):
    error = rpc_error(
        server.auth.Refresh, auth_pb2.RefreshRequest(refresh_token=alice.access_token)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "REFRESH_INVALID"
    # No effect: the session and its real refresh token still work.
    assert get_me(server, alice.access_token).id == alice.id
    refreshed = server.auth.Refresh(auth_pb2.RefreshRequest(refresh_token=alice.refresh_token))
    assert get_me(server, refreshed.access_token).id == alice.id


# --- signed by us, but for no live session -------------------------------------------


def test_token_of_a_logged_out_session_is_refused(server, alice):
    email = get_me(server, alice.access_token).email
    other = server.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    ended = server.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(alice.access_token))
    assert ended.sessions_ended == 1

    assert_refused(server, alice.access_token, reason="SESSION_ENDED")
    # A freshly signed token for the ended session is refused too: it is the session that ended.
    assert_refused(server, sign(fresh_claims(alice)), reason="SESSION_ENDED")
    assert get_me(server, other.access_token).id == alice.id  # the other session lives on


@pytest.mark.parametrize(
    "make_claims",
    [
        lambda alice, bob: {**fresh_claims(alice), "sid": str(uuid.uuid4())},
        lambda alice, bob: {**fresh_claims(alice), "sub": str(uuid.uuid4())},
        lambda alice, bob: {**fresh_claims(alice), "sid": bob.claims["sid"]},
        lambda alice, bob: {**fresh_claims(alice), "sub": bob.id},
    ],
    ids=["unknown-session", "unknown-user", "another-users-session", "session-of-another-user"],
)
def test_signed_token_without_a_live_session_is_refused(server, alice, bob, make_claims):
    error = assert_refused(server, sign(make_claims(alice, bob)), reason="SESSION_ENDED")
    assert bob.id not in error.details()
    assert get_me(server, bob.access_token).display_name == "Bob"
