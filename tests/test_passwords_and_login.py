"""Passwords and sign-in (TESTPLAN 10-14): bcrypt storage, the 72-byte limit, email
normalization, indistinguishable failures, throttling and overload behaviour."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import bcrypt
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import text

from repwise.v1 import auth_pb2
from server.auth import passwords
from server.config import ConfigError, Settings
from tests.conftest import PASSWORD, TEST_SECRET, bearer, register, rpc_error, start_server

WRONG = "not the right password"
MAX_FAILURES = 5  # Settings.login_max_failures
LOCK = 30  # Settings.login_lock_seconds
MAX_LOCK = 900  # Settings.login_max_lock_seconds


def login(server, email: str, password: str = PASSWORD, **kwargs) -> auth_pb2.LoginResponse:
    return server.auth.Login(auth_pb2.LoginRequest(email=email, password=password), **kwargs)


def stored_hash(db, email: str) -> str:
    with db.engine.connect() as conn:
        return conn.execute(
            text("SELECT password_hash FROM users WHERE email = :email"), {"email": email}
        ).scalar_one()


def details_of(error: grpc.RpcError, kind):
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status details"
    found = []
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            detail = kind()
            packed.Unpack(detail)
            found.append(detail)
    return found


def retry_delay(error: grpc.RpcError) -> float:
    (info,) = details_of(error, error_details_pb2.RetryInfo)
    return info.retry_delay.ToMilliseconds() / 1000


def field_of(error: grpc.RpcError) -> str:
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    return info.metadata["field"]


def fail_login(server, email: str, password: str = WRONG) -> grpc.RpcError:
    error = rpc_error(login, server, email, password)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (error.code(), error.details())
    return error


def throttled(server, email: str, password: str = PASSWORD) -> grpc.RpcError:
    error = rpc_error(login, server, email, password)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
    return error


# --- storage (TESTPLAN 10) ------------------------------------------------------


def test_stored_hash_is_bcrypt_with_configured_cost(server, db):
    account = register(server)
    hashed = stored_hash(db, account.user.email)
    assert hashed.startswith("$2b$04$")
    assert PASSWORD not in hashed
    assert bcrypt.checkpw(PASSWORD.encode(), hashed.encode())


@pytest.mark.parametrize("rounds", [5, 6])
def test_cost_follows_the_setting(db, clock, rounds):
    running = start_server(db, clock, bcrypt_rounds=rounds)
    try:
        account = register(running)
        assert stored_hash(db, account.user.email).startswith(f"$2b$0{rounds}$")
        assert login(running, account.user.email).user.id == account.user.id
    finally:
        running.channel.close()
        running.server.stop(grace=0)


def test_production_default_cost_is_12():
    assert Settings().bcrypt_rounds == 12
    assert Settings.from_env({"REPWISE_JWT_SECRET": TEST_SECRET}).bcrypt_rounds == 12
    assert (
        Settings.from_env(
            {"REPWISE_JWT_SECRET": TEST_SECRET, "REPWISE_BCRYPT_ROUNDS": "13"}
        ).bcrypt_rounds
        == 13
    )


@pytest.mark.parametrize("rounds", ["3", "32"])
def test_out_of_range_cost_is_a_config_error(rounds):
    with pytest.raises(ConfigError):
        Settings.from_env({"REPWISE_JWT_SECRET": TEST_SECRET, "REPWISE_BCRYPT_ROUNDS": rounds})


# --- password rules (TESTPLAN 11) -----------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("a" * 73, id="73-ascii"),
        pytest.param("€" * 25, id="25-euro-75-bytes"),
        pytest.param("a" * 70 + "€", id="70-ascii-plus-euro-73-bytes"),
        pytest.param("😀" * 19, id="19-emoji-76-bytes"),
        pytest.param("a" * 1000, id="1000-ascii"),
    ],
)
def test_register_with_a_password_over_72_bytes_is_refused(server, db, password):
    assert len(password.encode()) > 72
    error = rpc_error(register, server, "long@example.com", password)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "password" in error.details()
    assert "72 bytes" in error.details()
    assert field_of(error) == "password"
    (bad_request,) = details_of(error, error_details_pb2.BadRequest)
    assert bad_request.field_violations[0].field == "password"
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 0


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("a" * 72, id="72-ascii"),
        pytest.param("€" * 24, id="24-euro"),
        pytest.param("😀" * 18, id="18-emoji"),
        pytest.param("a" * 69 + "€", id="69-ascii-plus-euro"),
    ],
)
def test_password_of_exactly_72_bytes_works(server, password):
    assert len(password.encode()) == 72
    account = register(server, password=password)
    assert login(server, account.user.email, password).user.id == account.user.id


@pytest.mark.parametrize(
    ("password", "extra"),
    [("a" * 72, "b"), ("€" * 24, "€"), ("a" * 72, "a"), ("x" * 72, "y" * 100)],
)
def test_login_with_registered_72_bytes_plus_more_is_a_wrong_password(server, password, extra):
    account = register(server, password=password)
    other = register(server)
    too_long = fail_login(server, account.user.email, password + extra)
    wrong = fail_login(server, other.user.email, WRONG)
    assert too_long.details() == wrong.details()
    # The exact password still works (and nothing was truncated on the way in).
    assert login(server, account.user.email, password).user.id == account.user.id


@pytest.mark.parametrize("password", ["", "short", "1234567", "€€€€€€€"])
def test_short_password_is_refused(server, password):
    error = rpc_error(register, server, "short@example.com", password)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "password" in error.details()
    assert "8" in error.details()


def test_minimum_length_counts_characters_after_normalization(server):
    """'e' + combining acute, four times, is 8 code points but NFKC makes it 4 characters."""
    password = "e\u0301" * 4
    assert len(password) == 8
    error = rpc_error(register, server, "combining@example.com", password)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "password" in error.details()


def test_eight_character_password_works(server):
    account = register(server, password="12345678")
    assert login(server, account.user.email, "12345678").user.id == account.user.id


def test_password_is_nfkc_normalized(server):
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "password12")  # FULLWIDTH forms
    assert fullwidth != "password12"
    account = register(server, password=fullwidth)
    assert login(server, account.user.email, "password12").user.id == account.user.id
    assert login(server, account.user.email, fullwidth).user.id == account.user.id


def test_password_is_case_sensitive(server):
    account = register(server)
    fail_login(server, account.user.email, PASSWORD.upper())


# --- emails ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "",
        "   ",
        "no-at-sign",
        "ann@",
        "@example.com",
        "ann lee@example.com",
        "ann@@example.com",
        "ann@example",
        "ann@exa mple.com",
        "ann@-example.com",
        "ann@example..com",
        "a" * 250 + "@example.com",
        "ann@exa\nmple.com",
        "ann\x00@example.com",
    ],
)
def test_invalid_email_is_refused(server, db, email):
    error = rpc_error(
        server.auth.Register, auth_pb2.RegisterRequest(email=email, password=PASSWORD)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (email, error.code())
    assert "email" in error.details()
    assert field_of(error) == "email"
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 0
    # Login with it is refused the same way, before any password check.
    error = rpc_error(login, server, email)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "email" in error.details()


@pytest.mark.parametrize(
    ("registered", "stored", "login_as"),
    [
        ("  Bob@Example.COM  ", "bob@example.com", "BOB@EXAMPLE.COM"),
        ("bob@example.com", "bob@example.com", "  Bob@example.com\t"),
        (
            "\tMiXeD.Case+tag@Sub.Example.Org ",
            "mixed.case+tag@sub.example.org",
            "mixed.case+TAG@sub.example.org",
        ),
    ],
)
def test_email_is_normalized(server, db, registered, stored, login_as):
    account = register(server, email=registered)
    assert account.user.email == stored
    with db.engine.connect() as conn:
        emails = conn.execute(text("SELECT email FROM users")).scalars().all()
    assert emails == [stored]
    assert login(server, login_as).user.id == account.user.id


@pytest.mark.parametrize("again", ["taken@example.com", "TAKEN@example.com", " Taken@Example.Com "])
def test_registering_a_taken_email_is_already_exists(server, db, again):
    register(server, email="taken@example.com")
    error = rpc_error(register, server, again, "some other password")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 1
    # The original password still works; the failed registration changed nothing.
    login(server, "taken@example.com")


def test_concurrent_registrations_of_one_email_make_one_account(server, db):
    def attempt(i: int):
        try:
            return register(server, email="race@example.com", password=f"password {i}")
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, range(8)))
    ok = [r for r in results if not isinstance(r, grpc.RpcError)]
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(ok) == 1
    assert {e.code() for e in errors} <= {grpc.StatusCode.ALREADY_EXISTS}, [
        (e.code(), e.details()) for e in errors
    ]
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 1


# --- indistinguishable failures (TESTPLAN 12) -----------------------------------


def test_unknown_email_and_wrong_password_get_the_same_answer(server):
    account = register(server)
    wrong = fail_login(server, account.user.email, WRONG)
    unknown = fail_login(server, "nobody@example.com", WRONG)
    unknown_right = fail_login(server, "nobody@example.com", PASSWORD)
    assert wrong.details() == unknown.details() == unknown_right.details()
    reasons = {
        details_of(e, error_details_pb2.ErrorInfo)[0].reason
        for e in (wrong, unknown, unknown_right)
    }
    assert len(reasons) == 1
    assert "email or password" in wrong.details()


def test_unknown_email_takes_a_bcrypt_check(server, monkeypatch):
    """An unknown email costs a full bcrypt check too (against a dummy hash of the same
    cost), so timing does not tell accounts apart. Checked by counting, not by timing,
    which this shared machine would make flaky."""
    account = register(server)
    checked: list[bytes] = []
    real_checkpw = passwords.bcrypt.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(passwords.bcrypt, "checkpw", counting_checkpw)
    rpc_error(login, server, "nobody@example.com", WRONG)
    rpc_error(login, server, account.user.email, WRONG)
    assert len(checked) == 2
    unknown, known = checked
    assert unknown != known
    # Same algorithm and cost: "$2b$04$..." in tests, "$2b$12$..." in production.
    assert unknown[:7] == known[:7]


# --- throttling (TESTPLAN 13) ---------------------------------------------------


def test_sixth_attempt_is_throttled_even_with_the_right_password(server, clock):
    clock.freeze()
    account = register(server)
    for _ in range(MAX_FAILURES):
        fail_login(server, account.user.email)
    error = throttled(server, account.user.email, PASSWORD)
    assert retry_delay(error) == pytest.approx(LOCK, abs=1)
    (info,) = details_of(error, error_details_pb2.ErrorInfo)
    assert info.reason == "LOGIN_THROTTLED"
    # The session of the signed-in user is not affected by the lock.
    assert server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=bearer(account.access_token))


def test_four_failures_do_not_throttle(server, clock):
    clock.freeze()
    account = register(server)
    for _ in range(MAX_FAILURES - 1):
        fail_login(server, account.user.email)
    assert login(server, account.user.email).user.id == account.user.id


def test_unknown_email_is_throttled_identically(server, clock):
    clock.freeze()
    account = register(server)
    for _ in range(MAX_FAILURES):
        fail_login(server, account.user.email)
        fail_login(server, "nobody@example.com")
    known = throttled(server, account.user.email, PASSWORD)
    unknown = throttled(server, "nobody@example.com", PASSWORD)
    assert known.details() == unknown.details()
    assert retry_delay(known) == retry_delay(unknown)
    known_info = details_of(known, error_details_pb2.ErrorInfo)[0]
    unknown_info = details_of(unknown, error_details_pb2.ErrorInfo)[0]
    assert known_info.reason == unknown_info.reason
    assert set(known_info.metadata) == set(unknown_info.metadata)


def test_lock_expires_and_success_resets_the_counter(server, clock):
    clock.freeze()
    account = register(server)
    for _ in range(MAX_FAILURES):
        fail_login(server, account.user.email)
    clock.advance(LOCK - 1)
    throttled(server, account.user.email)
    clock.advance(2)
    assert login(server, account.user.email).user.id == account.user.id
    # The counter starts again from zero: four more failures do not lock.
    for _ in range(MAX_FAILURES - 1):
        fail_login(server, account.user.email)
    assert login(server, account.user.email).user.id == account.user.id


def test_lock_doubles_is_capped_and_is_not_lengthened_while_locked(server, clock):
    clock.freeze()
    account = register(server)
    email = account.user.email
    for _ in range(MAX_FAILURES):
        fail_login(server, email)

    expected = LOCK
    delays = []
    for _ in range(8):
        first = retry_delay(throttled(server, email))
        assert first == pytest.approx(expected, abs=1)
        delays.append(first)
        # Attempts while locked (right or wrong password) do not lengthen the lock.
        clock.advance(expected / 2)
        throttled(server, email, WRONG)
        throttled(server, email, PASSWORD)
        assert retry_delay(throttled(server, email)) == pytest.approx(expected / 2, abs=1)
        clock.advance(expected / 2 + 1)
        # The lock is over: one more wrong password locks again, twice as long.
        fail_login(server, email)
        expected = min(expected * 2, MAX_LOCK)
    assert delays == pytest.approx([30, 60, 120, 240, 480, 900, 900, 900], abs=1)

    # Even after many failures, the real user gets in once the (capped) lock ends.
    clock.advance(MAX_LOCK + 1)
    assert login(server, email).user.id == account.user.id


@pytest.mark.parametrize("burst", [10, 30])
def test_a_burst_of_parallel_guesses_gets_no_more_than_the_limit_checked(server, clock, burst):
    """Throttling counts per account even when guesses arrive at once: of a burst of
    wrong passwords, at most login_max_failures are actually checked (UNAUTHENTICATED);
    the rest are refused as throttled (or busy), never checked."""
    clock.freeze()
    account = register(server)
    barrier = threading.Barrier(burst)

    def guess(i: int) -> grpc.StatusCode:
        barrier.wait()
        try:
            login(server, account.user.email, f"guess number {i}", timeout=30)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    with ThreadPoolExecutor(max_workers=burst) as pool:
        outcomes = list(pool.map(guess, range(burst)))
    checked = outcomes.count(grpc.StatusCode.UNAUTHENTICATED)
    assert set(outcomes) <= {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    }, outcomes
    assert 1 <= checked <= MAX_FAILURES, f"{checked} guesses checked in one burst"
    throttled(server, account.user.email)


def test_custom_lock_settings_are_honoured(db, clock):
    running = start_server(
        db, clock, login_max_failures=2, login_lock_seconds=10, login_max_lock_seconds=25
    )
    try:
        clock.freeze()
        account = register(running)
        fail_login(running, account.user.email)
        fail_login(running, account.user.email)
        assert retry_delay(throttled(running, account.user.email)) == pytest.approx(10, abs=1)
        clock.advance(11)
        fail_login(running, account.user.email)
        assert retry_delay(throttled(running, account.user.email)) == pytest.approx(20, abs=1)
        clock.advance(21)
        fail_login(running, account.user.email)
        assert retry_delay(throttled(running, account.user.email)) == pytest.approx(25, abs=1)
    finally:
        running.channel.close()
        running.server.stop(grace=0)


def test_throttling_is_per_email(server, clock):
    clock.freeze()
    victim = register(server)
    bystander = register(server)
    for _ in range(MAX_FAILURES):
        fail_login(server, victim.user.email)
    throttled(server, victim.user.email)
    assert login(server, bystander.user.email).user.id == bystander.user.id
    # A wrong password for the bystander is an ordinary failure, not a lock.
    fail_login(server, bystander.user.email)


def test_throttle_counts_normalized_email(server, clock):
    clock.freeze()
    register(server, email="case@example.com")
    for variant in [
        "CASE@example.com",
        " case@example.com",
        "Case@Example.com",
        "case@EXAMPLE.COM",
        "case@example.com",
    ]:
        fail_login(server, variant)
    throttled(server, "case@example.com")


def test_over_long_password_at_login_counts_as_a_failure(server, clock):
    clock.freeze()
    account = register(server, password="a" * 72)
    for _ in range(MAX_FAILURES):
        fail_login(server, account.user.email, "a" * 72 + "b")
    throttled(server, account.user.email, "a" * 72)


# --- overload (TESTPLAN 14) -----------------------------------------------------

OVERLOAD = {"password_workers": 1, "password_queue": 1, "bcrypt_rounds": 10}


@pytest.fixture
def busy_server(db, clock):
    running = start_server(db, clock, **OVERLOAD, max_workers=4)
    yield running
    running.channel.close()
    running.server.stop(grace=0)


def _storm(running, logins, cheap_token: str):
    """Run `logins` in threads while cheap calls go on; return (login outcomes, cheap failures)."""
    health = health_pb2_grpc.HealthStub(running.channel)
    stop = threading.Event()
    cheap_failures: list[str] = []
    cheap_done = [0]

    def cheap() -> None:
        while not stop.is_set():
            try:
                me = running.auth.GetMe(
                    auth_pb2.GetMeRequest(), metadata=bearer(cheap_token), timeout=5
                )
                assert me.user.id
                check = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                cheap_done[0] += 1
            except Exception as error:  # any failure of a cheap call is a finding
                cheap_failures.append(repr(error))

    def attempt(fn):
        try:
            fn()
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            return error.code(), error.details()

    watcher = threading.Thread(target=cheap)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=len(logins)) as pool:
            outcomes = list(pool.map(attempt, logins))
        # And a few more rounds of cheap calls once the storm has passed.
        time.sleep(0.05)
    finally:
        stop.set()
        watcher.join()
    assert cheap_done[0] > 0
    unexpected = [
        o for o in outcomes if o[0] not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    ]
    return [code for code, _ in outcomes], unexpected, cheap_failures


@pytest.mark.parametrize(
    ("logins", "max_workers"),
    [
        pytest.param(12, 4, id="12-logins-4-threads"),
        pytest.param(12, 16, id="12-logins-16-threads"),
        # Under gRPC's own limit of max_workers * 8 calls in flight.
        pytest.param(60, 16, id="60-logins-16-threads"),
    ],
)
def test_login_storm_does_not_starve_cheap_calls(db, clock, logins, max_workers):
    running = start_server(db, clock, **OVERLOAD, max_workers=max_workers)
    try:
        _login_storm(running, logins)
    finally:
        running.channel.close()
        running.server.stop(grace=0)


def _login_storm(running, logins: int) -> None:
    accounts = [register(running, password=f"password number {i}") for i in range(logins)]
    watcher_account = register(running)

    calls = [
        (lambda a=a, i=i: login(running, a.user.email, f"password number {i}", timeout=30))
        for i, a in enumerate(accounts)
    ]
    outcomes, unexpected, cheap_failures = _storm(running, calls, watcher_account.access_token)
    assert not cheap_failures, cheap_failures
    assert not unexpected, unexpected
    assert grpc.StatusCode.OK in outcomes


def test_overload_answer_is_unavailable_with_retry_info(busy_server):
    running = busy_server
    accounts = [register(running, password=f"password number {i}") for i in range(12)]
    errors: list[grpc.RpcError] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        try:
            login(running, accounts[i].user.email, f"password number {i}", timeout=30)
        except grpc.RpcError as error:
            with lock:
                errors.append(error)

    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(attempt, range(12)))
    assert errors, "12 logins at once with room for 2 were all admitted"
    for error in errors:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
        assert retry_delay(error) > 0


def test_overloaded_logins_of_one_user_never_lock_them_out(busy_server):
    """A phone retrying through an overload must not be throttled for attempts the
    server never checked: each login ends OK or UNAVAILABLE, and afterwards the
    right password signs in."""
    running = busy_server
    account = register(running)
    calls = [(lambda: login(running, account.user.email, PASSWORD, timeout=30)) for _ in range(12)]
    outcomes, unexpected, cheap_failures = _storm(running, calls, account.access_token)
    assert not cheap_failures, cheap_failures
    assert grpc.StatusCode.OK in outcomes
    assert not unexpected, unexpected
    assert login(running, account.user.email, timeout=30).user.id == account.user.id
