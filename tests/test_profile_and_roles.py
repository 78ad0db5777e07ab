"""Profile (GetMe, UpdateMe with masks and etags), roles (SetUserRole) and user
isolation (TESTPLAN 15, 16-like)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import text

from repwise.v1 import auth_pb2, common_pb2
from tests.conftest import PASSWORD, bearer, make_admin, register, rpc_error

KG, LB = common_pb2.WEIGHT_UNIT_KG, common_pb2.WEIGHT_UNIT_LB
BARBELL, DUMBBELL, BANDS = (
    common_pb2.EQUIPMENT_BARBELL,
    common_pb2.EQUIPMENT_DUMBBELL,
    common_pb2.EQUIPMENT_BANDS,
)


def get_me(server, access_token: str) -> auth_pb2.User:
    return server.auth.GetMe(auth_pb2.GetMeRequest(), metadata=bearer(access_token)).user


def update_me(server, access_token: str, paths=(), **fields) -> auth_pb2.User:
    request = auth_pb2.UpdateMeRequest(
        user=auth_pb2.User(**fields), update_mask=field_mask_pb2.FieldMask(paths=list(paths))
    )
    return server.auth.UpdateMe(request, metadata=bearer(access_token)).user


def update_error(server, access_token: str, paths=(), **fields) -> grpc.RpcError:
    return rpc_error(update_me, server, access_token, paths, **fields)


def login(server, email: str) -> auth_pb2.LoginResponse:
    return server.auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))


def set_role(server, access_token: str, email: str, role) -> auth_pb2.User:
    return server.auth.SetUserRole(
        auth_pb2.SetUserRoleRequest(email=email, role=role), metadata=bearer(access_token)
    ).user


def profile(user: auth_pb2.User) -> tuple:
    """Everything a profile update could change."""
    return (
        user.display_name,
        user.time_zone,
        user.preferred_unit,
        user.weekly_workout_goal,
        list(user.available_equipment),
        user.role,
        user.email,
        user.etag,
    )


def assert_unauthenticated(server, access_token: str) -> None:
    error = rpc_error(server.auth.GetMe, auth_pb2.GetMeRequest(), metadata=bearer(access_token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --- GetMe ----------------------------------------------------------------------


def test_get_me_defaults(server, clock):
    clock.freeze()
    account = register(server, email="Dana.Smith@Example.com")
    me = get_me(server, account.access_token)
    assert me.id == account.user.id
    assert me.email == "dana.smith@example.com"
    assert me.display_name == "dana.smith"
    assert me.time_zone == "UTC"
    assert me.preferred_unit == KG
    assert me.weekly_workout_goal == 3
    assert list(me.available_equipment) == []
    assert me.role == auth_pb2.ROLE_USER
    assert me.etag
    assert me.create_time.ToDatetime(tzinfo=UTC) == clock()
    assert me.update_time == me.create_time
    assert profile(account.user) == profile(me)


def test_register_display_name_is_kept_and_whitespace_collapsed(server):
    account = register(server, display_name="  Ann   Lee ")
    assert get_me(server, account.access_token).display_name == "Ann Lee"


# --- UpdateMe -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fields", "check"),
    [
        ("display_name", {"display_name": "Zoe"}, lambda u: u.display_name == "Zoe"),
        ("time_zone", {"time_zone": "Europe/Berlin"}, lambda u: u.time_zone == "Europe/Berlin"),
        ("preferred_unit", {"preferred_unit": LB}, lambda u: u.preferred_unit == LB),
        ("weekly_workout_goal", {"weekly_workout_goal": 5}, lambda u: u.weekly_workout_goal == 5),
        ("weekly_workout_goal", {"weekly_workout_goal": 1}, lambda u: u.weekly_workout_goal == 1),
        ("weekly_workout_goal", {"weekly_workout_goal": 14}, lambda u: u.weekly_workout_goal == 14),
        (
            "available_equipment",
            {"available_equipment": [BARBELL, BANDS]},
            lambda u: set(u.available_equipment) == {BARBELL, BANDS},
        ),
    ],
)
def test_update_me_with_a_mask_changes_only_that_field(server, path, fields, check):
    account = register(server)
    before = get_me(server, account.access_token)
    # Other fields are set too, but the mask names only `path`.
    noise = {
        "display_name": "Noise",
        "time_zone": "Asia/Tokyo",
        "preferred_unit": LB,
        "weekly_workout_goal": 9,
        "available_equipment": [DUMBBELL],
    }
    updated = update_me(server, account.access_token, [path], **{**noise, **fields})
    assert check(updated)
    after = get_me(server, account.access_token)
    assert check(after)
    assert profile(after) == profile(updated)
    for name in ("display_name", "time_zone", "preferred_unit", "weekly_workout_goal"):
        if name != path:
            assert getattr(after, name) == getattr(before, name), name
    if path != "available_equipment":
        assert list(after.available_equipment) == []
    assert after.etag != before.etag
    assert after.update_time.ToDatetime() >= before.update_time.ToDatetime()


def test_empty_mask_updates_every_set_field(server):
    account = register(server, display_name="Before")
    updated = update_me(
        server,
        account.access_token,
        display_name="After",
        time_zone="America/New_York",
        weekly_workout_goal=7,
        available_equipment=[DUMBBELL],
    )
    assert updated.display_name == "After"
    assert updated.time_zone == "America/New_York"
    assert updated.weekly_workout_goal == 7
    assert list(updated.available_equipment) == [DUMBBELL]
    # Unset (default) fields were left alone.
    assert updated.preferred_unit == KG
    assert profile(get_me(server, account.access_token)) == profile(updated)


def test_empty_mask_with_nothing_set_changes_nothing(server):
    account = register(server)
    before = get_me(server, account.access_token)
    after = update_me(server, account.access_token)
    assert profile(after) == profile(before)


def test_mask_can_clear_equipment(server):
    account = register(server)
    update_me(server, account.access_token, ["available_equipment"], available_equipment=[BANDS])
    cleared = update_me(server, account.access_token, ["available_equipment"])
    assert list(cleared.available_equipment) == []
    assert list(get_me(server, account.access_token).available_equipment) == []


def test_every_equipment_value_round_trips(server):
    account = register(server)
    every = [v for v in common_pb2.Equipment.values() if v != common_pb2.EQUIPMENT_UNSPECIFIED]
    updated = update_me(
        server, account.access_token, ["available_equipment"], available_equipment=every
    )
    assert sorted(updated.available_equipment) == sorted(every)
    assert sorted(get_me(server, account.access_token).available_equipment) == sorted(every)


def test_equipment_is_deduplicated(server):
    account = register(server)
    updated = update_me(
        server,
        account.access_token,
        ["available_equipment"],
        available_equipment=[BARBELL, BANDS, BARBELL, BANDS, BARBELL],
    )
    assert sorted(updated.available_equipment) == sorted([BARBELL, BANDS])
    assert len(updated.available_equipment) == 2
    assert sorted(get_me(server, account.access_token).available_equipment) == sorted(
        [BARBELL, BANDS]
    )


@pytest.mark.parametrize("zone", ["Mars/Olympus", "utc+2", "Europe/", "../etc/passwd", "/UTC"])
def test_invalid_time_zone_is_refused(server, zone):
    account = register(server)
    before = get_me(server, account.access_token)
    error = update_error(server, account.access_token, ["time_zone"], time_zone=zone)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "time_zone" in error.details()
    assert profile(get_me(server, account.access_token)) == profile(before)


def test_empty_time_zone_with_mask_is_refused(server):
    account = register(server)
    error = update_error(server, account.access_token, ["time_zone"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "time_zone" in error.details()
    assert get_me(server, account.access_token).time_zone == "UTC"


@pytest.mark.parametrize("goal", [0, 15, -1, 1000])
def test_goal_out_of_range_is_refused(server, goal):
    account = register(server)
    error = update_error(
        server, account.access_token, ["weekly_workout_goal"], weekly_workout_goal=goal
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "weekly_workout_goal" in error.details()
    assert get_me(server, account.access_token).weekly_workout_goal == 3


@pytest.mark.parametrize(
    "path", ["email", "role", "id", "etag", "create_time", "nickname", "user.time_zone", ""]
)
def test_unknown_or_output_only_mask_path_is_refused(server, path):
    account = register(server)
    before = get_me(server, account.access_token)
    error = update_error(
        server,
        account.access_token,
        [path, "time_zone"],
        time_zone="Europe/Paris",
        email="evil@example.com",
        role=auth_pb2.ROLE_ADMIN,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "update_mask" in error.details()
    assert profile(get_me(server, account.access_token)) == profile(before)


def test_empty_mask_ignores_output_only_fields(server):
    account = register(server)
    updated = update_me(
        server,
        account.access_token,
        email="evil@example.com",
        role=auth_pb2.ROLE_ADMIN,
        id="someone-else",
        time_zone="Europe/Paris",
    )
    assert updated.email == account.user.email
    assert updated.role == auth_pb2.ROLE_USER
    assert updated.id == account.user.id
    assert updated.time_zone == "Europe/Paris"


def test_unit_unspecified_with_mask_is_refused(server):
    account = register(server)
    error = update_error(server, account.access_token, ["preferred_unit"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "preferred_unit" in error.details()


@pytest.mark.parametrize("name", ["x" * 101, "   ", "\t\n", "bad\x00name", "bad\x1bname"], ids=repr)
def test_bad_display_name_is_refused(server, name):
    account = register(server, display_name="Kept")
    error = update_error(server, account.access_token, ["display_name"], display_name=name)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "display_name" in error.details()
    assert get_me(server, account.access_token).display_name == "Kept"


def test_empty_display_name_with_mask_is_refused(server):
    account = register(server, display_name="Kept")
    error = update_error(server, account.access_token, ["display_name"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "display_name" in error.details()
    assert get_me(server, account.access_token).display_name == "Kept"


def test_display_name_of_100_characters_works(server):
    account = register(server)
    name = "ü" * 100
    assert (
        update_me(server, account.access_token, ["display_name"], display_name=name).display_name
        == name
    )


def test_one_invalid_field_changes_nothing(server):
    account = register(server)
    before = get_me(server, account.access_token)
    error = update_error(
        server,
        account.access_token,
        display_name="Would Change",
        time_zone="Europe/Berlin",
        weekly_workout_goal=99,
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert profile(get_me(server, account.access_token)) == profile(before)


# --- etags ----------------------------------------------------------------------


def test_etag_changes_after_an_update_and_stale_etag_is_aborted(server):
    account = register(server)
    first = get_me(server, account.access_token)
    updated = update_me(
        server, account.access_token, ["time_zone"], time_zone="Europe/Berlin", etag=first.etag
    )
    assert updated.etag and updated.etag != first.etag
    assert get_me(server, account.access_token).etag == updated.etag

    error = update_error(
        server, account.access_token, ["time_zone"], time_zone="Asia/Tokyo", etag=first.etag
    )
    assert error.code() == grpc.StatusCode.ABORTED
    current = get_me(server, account.access_token)
    assert profile(current) == profile(updated)
    assert current.time_zone == "Europe/Berlin"

    # With the fresh etag the same write goes through.
    done = update_me(
        server, account.access_token, ["time_zone"], time_zone="Asia/Tokyo", etag=current.etag
    )
    assert done.time_zone == "Asia/Tokyo"
    assert done.etag not in (first.etag, updated.etag)


@pytest.mark.parametrize("stale", ["garbage", "0", "999999"])
def test_made_up_etag_is_aborted(server, stale):
    account = register(server)
    before = get_me(server, account.access_token)
    error = update_error(
        server, account.access_token, ["weekly_workout_goal"], weekly_workout_goal=6, etag=stale
    )
    assert error.code() == grpc.StatusCode.ABORTED
    assert profile(get_me(server, account.access_token)) == profile(before)


def test_every_update_changes_the_etag(server):
    account = register(server)
    seen = {get_me(server, account.access_token).etag}
    for goal in (4, 5, 6, 7):
        seen.add(
            update_me(
                server, account.access_token, ["weekly_workout_goal"], weekly_workout_goal=goal
            ).etag
        )
    assert len(seen) == 5


def test_role_change_changes_the_etag(server):
    admin = make_admin(server)
    account = register(server)
    before = get_me(server, account.access_token).etag
    promoted = set_role(server, admin.access_token, account.user.email, auth_pb2.ROLE_ADMIN)
    assert promoted.etag != before


def _at_once(calls):
    """Run the calls in threads released together; return each result or RpcError."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait()
        try:
            return call()
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


ROUNDS = 10  # races are timing-dependent; several rounds make a lost one show reliably


def test_concurrent_updates_with_one_etag_let_exactly_one_through(server):
    """Devices editing from the same read: one wins, the others are ABORTED
    (TESTPLAN 26: a stale etag is refused, nothing overwritten)."""
    account = register(server)
    for round_ in range(ROUNDS):
        before = get_me(server, account.access_token)
        # Every write really changes the profile (a no-op write may keep the etag).
        goals = [g for g in range(1, 15) if g != before.weekly_workout_goal][round_ % 8 :][:6]
        results = _at_once(
            [
                lambda g=g, etag=before.etag: update_me(
                    server,
                    account.access_token,
                    ["weekly_workout_goal"],
                    weekly_workout_goal=g,
                    etag=etag,
                )
                for g in goals
            ]
        )
        ok = [r for r in results if not isinstance(r, grpc.RpcError)]
        errors = [r for r in results if isinstance(r, grpc.RpcError)]
        assert {e.code() for e in errors} <= {grpc.StatusCode.ABORTED}, [
            (e.code(), e.details()) for e in errors
        ]
        assert len(ok) == 1, (round_, [u.weekly_workout_goal for u in ok], [u.etag for u in ok])
        final = get_me(server, account.access_token)
        assert final.weekly_workout_goal == ok[0].weekly_workout_goal
        assert final.etag == ok[0].etag != before.etag


# --- roles ----------------------------------------------------------------------


def test_non_admin_cannot_set_roles(server):
    actor = register(server)
    target = register(server)
    for role in (auth_pb2.ROLE_ADMIN, auth_pb2.ROLE_USER):
        for email in (target.user.email, actor.user.email):
            error = rpc_error(set_role, server, actor.access_token, email, role)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # Nothing changed, and nobody's sessions ended.
    assert get_me(server, target.access_token).role == auth_pb2.ROLE_USER
    assert get_me(server, actor.access_token).role == auth_pb2.ROLE_USER
    assert login(server, actor.user.email).user.role == auth_pb2.ROLE_USER


def test_non_admin_gets_permission_denied_even_for_unknown_email(server):
    actor = register(server)
    error = rpc_error(
        set_role, server, actor.access_token, "nobody@example.com", auth_pb2.ROLE_ADMIN
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_promotes_a_user_whose_sessions_end(server):
    admin = make_admin(server)
    target = register(server)
    second = login(server, target.user.email)
    bystander = register(server)

    changed = set_role(
        server, admin.access_token, f"  {target.user.email.upper()} ", auth_pb2.ROLE_ADMIN
    )
    assert changed.id == target.user.id
    assert changed.role == auth_pb2.ROLE_ADMIN

    for s in (target, second):
        assert_unauthenticated(server, s.access_token)
        error = rpc_error(
            server.auth.Refresh, auth_pb2.RefreshRequest(refresh_token=s.refresh_token)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    fresh = login(server, target.user.email)
    assert fresh.user.role == auth_pb2.ROLE_ADMIN
    assert get_me(server, fresh.access_token).role == auth_pb2.ROLE_ADMIN
    # The admin's own and other users' sessions live on.
    assert get_me(server, admin.access_token).role == auth_pb2.ROLE_ADMIN
    assert get_me(server, bystander.access_token).role == auth_pb2.ROLE_USER

    # The new admin can now manage roles.
    promoted = set_role(server, fresh.access_token, bystander.user.email, auth_pb2.ROLE_ADMIN)
    assert promoted.role == auth_pb2.ROLE_ADMIN


def test_admin_demotes_another_admin(server):
    first = make_admin(server)
    second = make_admin(server)
    changed = set_role(server, first.access_token, second.user.email, auth_pb2.ROLE_USER)
    assert changed.role == auth_pb2.ROLE_USER
    assert_unauthenticated(server, second.access_token)
    again = login(server, second.user.email)
    assert again.user.role == auth_pb2.ROLE_USER
    error = rpc_error(set_role, server, again.access_token, first.user.email, auth_pb2.ROLE_USER)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_set_role_for_unknown_email_is_not_found(server):
    admin = make_admin(server)
    error = rpc_error(
        set_role, server, admin.access_token, "nobody@example.com", auth_pb2.ROLE_ADMIN
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("role", [auth_pb2.ROLE_UNSPECIFIED, 3, 99])
def test_set_role_with_invalid_role_is_invalid_argument(server, role):
    admin = make_admin(server)
    target = register(server)
    error = rpc_error(set_role, server, admin.access_token, target.user.email, role)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "role" in error.details()
    assert get_me(server, target.access_token).role == auth_pb2.ROLE_USER


def test_set_role_with_invalid_email_is_invalid_argument(server):
    admin = make_admin(server)
    error = rpc_error(set_role, server, admin.access_token, "not-an-email", auth_pb2.ROLE_ADMIN)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "email" in error.details()


def test_last_admin_cannot_demote_themselves(server):
    admin = make_admin(server)
    error = rpc_error(set_role, server, admin.access_token, admin.user.email, auth_pb2.ROLE_USER)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Still an admin, still signed in.
    me = get_me(server, admin.access_token)
    assert me.role == auth_pb2.ROLE_ADMIN
    assert login(server, admin.user.email).user.role == auth_pb2.ROLE_ADMIN


def test_an_admin_with_a_peer_may_demote_themselves(server):
    admin = make_admin(server)
    peer = make_admin(server)
    changed = set_role(server, admin.access_token, admin.user.email, auth_pb2.ROLE_USER)
    assert changed.role == auth_pb2.ROLE_USER
    assert_unauthenticated(server, admin.access_token)
    # Now the peer is the last admin.
    error = rpc_error(set_role, server, peer.access_token, peer.user.email, auth_pb2.ROLE_USER)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def _admins(db) -> int:
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM users WHERE role = 'admin'")).scalar_one()


def _reset_roles(db) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE users SET role = 'user'"))


def test_concurrent_self_demotions_keep_one_admin(server, db):
    for round_ in range(ROUNDS):
        _reset_roles(db)
        admins = [make_admin(server) for _ in range(2)]
        results = _at_once(
            [
                lambda a=a: set_role(server, a.access_token, a.user.email, auth_pb2.ROLE_USER)
                for a in admins
            ]
        )
        assert _admins(db) == 1, (round_, results)
        errors = [r for r in results if isinstance(r, grpc.RpcError)]
        assert [e.code() for e in errors] == [grpc.StatusCode.FAILED_PRECONDITION]


def test_admins_demoting_each_other_at_once_keep_one_admin(server, db):
    for round_ in range(ROUNDS):
        _reset_roles(db)
        a, b = make_admin(server), make_admin(server)
        results = _at_once(
            [
                lambda a=a, b=b: set_role(server, a.access_token, b.user.email, auth_pb2.ROLE_USER),
                lambda a=a, b=b: set_role(server, b.access_token, a.user.email, auth_pb2.ROLE_USER),
            ]
        )
        assert _admins(db) == 1, (round_, results)
        errors = [r for r in results if isinstance(r, grpc.RpcError)]
        assert len(errors) == 1
        # The loser was demoted first: no longer allowed, no longer signed in, or the last admin.
        assert errors[0].code() in (
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.FAILED_PRECONDITION,
        ), errors[0].details()


# --- isolation (TESTPLAN 15) ----------------------------------------------------


def test_a_token_only_ever_reaches_its_own_user(server):
    a = register(server, display_name="Alice")
    b = register(server, display_name="Bob")
    b_before = get_me(server, b.access_token)

    assert get_me(server, a.access_token).id == a.user.id
    updated = update_me(
        server,
        a.access_token,
        display_name="Alice 2",
        time_zone="Europe/Berlin",
        weekly_workout_goal=6,
        preferred_unit=LB,
        available_equipment=[BARBELL],
    )
    assert updated.id == a.user.id
    # The request body cannot redirect the update.
    redirected = update_me(
        server,
        a.access_token,
        ["weekly_workout_goal"],
        id=b.user.id,
        email=b.user.email,
        weekly_workout_goal=2,
    )
    assert redirected.id == a.user.id and redirected.email == a.user.email

    assert profile(get_me(server, b.access_token)) == profile(b_before)
    assert get_me(server, a.access_token).weekly_workout_goal == 2


def test_one_users_logout_and_password_change_leave_others_alone(server):
    a = register(server)
    b = register(server)
    server.auth.Logout(auth_pb2.LogoutRequest(all_sessions=True), metadata=bearer(a.access_token))
    a2 = login(server, a.user.email)
    server.auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            current_password=PASSWORD, new_password="brand new password"
        ),
        metadata=bearer(a2.access_token),
    )
    assert get_me(server, b.access_token).id == b.user.id
    assert login(server, b.user.email).user.id == b.user.id


def test_deleting_one_account_leaves_others_alone(server):
    a = register(server)
    b = register(server)
    b_before = get_me(server, b.access_token)
    server.auth.DeleteAccount(
        auth_pb2.DeleteAccountRequest(password=PASSWORD), metadata=bearer(a.access_token)
    )
    assert profile(get_me(server, b.access_token)) == profile(b_before)
    assert login(server, b.user.email).user.id == b.user.id
