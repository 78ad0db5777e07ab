"""CatalogService through the real server: listing (filters, keyset paging, features),
reading, and creating/updating/deleting shared and private exercises (visibility,
permissions, etags, masks, validation, request_id idempotency)."""

from __future__ import annotations

import base64
import json
import math
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import text

from client_sdk import features
from repwise.v1 import auth_pb2, catalog_pb2, common_pb2
from server.catalog.sources import import_free_exercise_db
from tests.conftest import PASSWORD, bearer, error_info, make_admin, register, rpc_error

EXERCISES_JSON = Path(__file__).resolve().parents[2] / "shared/data/exercise-catalog/exercises.json"

ABS, BICEPS, CALVES, CHEST, FOREARMS, GLUTES, HAMSTRINGS, QUADS, SHOULDERS, TRICEPS = (
    common_pb2.MUSCLE_ABDOMINALS,
    common_pb2.MUSCLE_BICEPS,
    common_pb2.MUSCLE_CALVES,
    common_pb2.MUSCLE_CHEST,
    common_pb2.MUSCLE_FOREARMS,
    common_pb2.MUSCLE_GLUTES,
    common_pb2.MUSCLE_HAMSTRINGS,
    common_pb2.MUSCLE_QUADRICEPS,
    common_pb2.MUSCLE_SHOULDERS,
    common_pb2.MUSCLE_TRICEPS,
)
BARBELL, DUMBBELL, BODY_ONLY, OTHER, MACHINE = (
    common_pb2.EQUIPMENT_BARBELL,
    common_pb2.EQUIPMENT_DUMBBELL,
    common_pb2.EQUIPMENT_BODY_ONLY,
    common_pb2.EQUIPMENT_OTHER,
    common_pb2.EQUIPMENT_MACHINE,
)
STRENGTH, POWERLIFTING, STRETCHING, CARDIO = (
    catalog_pb2.CATEGORY_STRENGTH,
    catalog_pb2.CATEGORY_POWERLIFTING,
    catalog_pb2.CATEGORY_STRETCHING,
    catalog_pb2.CATEGORY_CARDIO,
)
PUBLIC, PRIVATE = catalog_pb2.VISIBILITY_PUBLIC, catalog_pb2.VISIBILITY_PRIVATE


# --- helpers ---------------------------------------------------------------------------------


def exercise(name: str, primary=(CHEST,), **fields) -> catalog_pb2.Exercise:
    return catalog_pb2.Exercise(name=name, primary_muscles=list(primary), **fields)


def create(server, token: str, message: catalog_pb2.Exercise, request_id: str = ""):
    return server.catalog.CreateExercise(
        catalog_pb2.CreateExerciseRequest(exercise=message, request_id=request_id),
        metadata=bearer(token),
    ).exercise


def get(server, token: str, id_or_slug: str) -> catalog_pb2.Exercise:
    return server.catalog.GetExercise(
        catalog_pb2.GetExerciseRequest(id=id_or_slug), metadata=bearer(token)
    ).exercise


def update(server, token: str, message: catalog_pb2.Exercise, paths=()) -> catalog_pb2.Exercise:
    return server.catalog.UpdateExercise(
        catalog_pb2.UpdateExerciseRequest(
            exercise=message, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        ),
        metadata=bearer(token),
    ).exercise


def delete(server, token: str, exercise_id: str, etag: str = "") -> bool:
    return server.catalog.DeleteExercise(
        catalog_pb2.DeleteExerciseRequest(id=exercise_id, etag=etag), metadata=bearer(token)
    ).archived


def list_page(server, token: str, **request) -> catalog_pb2.ListExercisesResponse:
    return server.catalog.ListExercises(
        catalog_pb2.ListExercisesRequest(**request), metadata=bearer(token)
    )


def list_all(server, token: str, page_size: int = 500, **filters) -> list[catalog_pb2.Exercise]:
    """Every page of a listing; checks page sizes and that the walk ends."""
    found: list[catalog_pb2.Exercise] = []
    page_token = ""
    for _ in range(10_000):
        page = list_page(server, token, page_size=page_size, page_token=page_token, **filters)
        assert len(page.exercises) <= (page_size or 50)
        found.extend(page.exercises)
        if not page.next_page_token:
            return found
        assert page.exercises, "a page with a next_page_token must not be empty"
        assert len(page.exercises) == (page_size or 50), "only the last page may be short"
        page_token = page.next_page_token
    raise AssertionError("paging never ended")


def names(exercises) -> list[str]:
    return [e.name for e in exercises]


def rows(db, where: str = "1 = 1", **params) -> int:
    with db.engine.connect() as conn:
        return conn.execute(
            text(f"SELECT count(*) FROM exercises WHERE {where}"), params
        ).scalar_one()


def set_archived(db, exercise_id: str) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            text("UPDATE exercises SET archived = :a WHERE id = :id"),
            {"a": True, "id": exercise_id},
        )


def assert_invalid(error: grpc.RpcError, field: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert field in error.details()
    assert error_info(error).metadata["field"] == field


def _vocab(enum, prefix: str, number: int) -> str | None:
    return None if number == 0 else enum.Name(number).removeprefix(prefix).lower()


def traits_of(e: catalog_pb2.Exercise) -> features.ExerciseTraits:
    return features.ExerciseTraits(
        primary_muscles=tuple(_vocab(common_pb2.Muscle, "MUSCLE_", m) for m in e.primary_muscles),
        secondary_muscles=tuple(
            _vocab(common_pb2.Muscle, "MUSCLE_", m) for m in e.secondary_muscles
        ),
        equipment=_vocab(common_pb2.Equipment, "EQUIPMENT_", e.equipment),
        mechanic=_vocab(catalog_pb2.Mechanic, "MECHANIC_", e.mechanic),
        force=_vocab(catalog_pb2.Force, "FORCE_", e.force),
        level=_vocab(catalog_pb2.Level, "LEVEL_", e.level),
        category=_vocab(catalog_pb2.Category, "CATEGORY_", e.category),
    )


def assert_features(e: catalog_pb2.Exercise) -> None:
    assert e.features.schema_version == features.SCHEMA_VERSION
    values = dict(e.features.values)
    assert math.isclose(math.fsum(v * v for v in values.values()), 1.0, rel_tol=1e-9), e.name
    expected = dict(features.sparse(features.encode(traits_of(e))))
    assert values.keys() == expected.keys(), e.name
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, abs=1e-12), (e.name, key)


def editable(e: catalog_pb2.Exercise) -> tuple:
    """Everything an update could change, plus the etag."""
    return (
        e.slug,
        e.name,
        list(e.aliases),
        list(e.primary_muscles),
        list(e.secondary_muscles),
        e.equipment,
        e.mechanic,
        e.force,
        e.level,
        e.category,
        list(e.instructions),
        e.visibility,
        e.archived,
        e.etag,
        dict(e.features.values),
    )


# A small shared catalog that each listing test builds through the API.
SMALL_CATALOG = [
    exercise(
        "Barbell Bench Press",
        aliases=["Flat Bench"],
        secondary_muscles=[TRICEPS, SHOULDERS],
        equipment=BARBELL,
        category=STRENGTH,
        mechanic=catalog_pb2.MECHANIC_COMPOUND,
        force=catalog_pb2.FORCE_PUSH,
        level=catalog_pb2.LEVEL_BEGINNER,
    ),
    exercise(
        "Dumbbell Curl",
        primary=[BICEPS],
        secondary_muscles=[FOREARMS],
        equipment=DUMBBELL,
        category=STRENGTH,
        mechanic=catalog_pb2.MECHANIC_ISOLATION,
        force=catalog_pb2.FORCE_PULL,
    ),
    exercise(
        "Barbell Curl",
        primary=[BICEPS],
        aliases=["Straight Bar Curl"],
        equipment=BARBELL,
        category=STRENGTH,
    ),
    exercise(
        "Back Squat",
        primary=[QUADS],
        aliases=["High Bar Squat"],
        secondary_muscles=[GLUTES, HAMSTRINGS],
        equipment=BARBELL,
        category=POWERLIFTING,
        level=catalog_pb2.LEVEL_INTERMEDIATE,
    ),
    exercise("Hamstring Stretch", primary=[HAMSTRINGS], equipment=BODY_ONLY, category=STRETCHING),
    exercise("100% Effort Sprint", primary=[QUADS], equipment=OTHER, category=CARDIO),
    exercise("1000 Meter Row", primary=[SHOULDERS], equipment=MACHINE, category=CARDIO),
    exercise("X_Y Raise", primary=[SHOULDERS]),
    exercise("XAY Raise", primary=[SHOULDERS]),
]


def build_small_catalog(server) -> tuple[str, dict[str, catalog_pb2.Exercise]]:
    """The admin's token and the shared exercises by name."""
    admin = make_admin(server)
    made = {}
    for message in SMALL_CATALOG:
        public = catalog_pb2.Exercise()
        public.CopyFrom(message)
        public.visibility = PUBLIC
        made[message.name] = create(server, admin.access_token, public)
    return admin.access_token, made


# --- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("ListExercises", catalog_pb2.ListExercisesRequest()),
        ("GetExercise", catalog_pb2.GetExerciseRequest(id="barbell-curl")),
        ("CreateExercise", catalog_pb2.CreateExerciseRequest(exercise=exercise("Plank"))),
        ("UpdateExercise", catalog_pb2.UpdateExerciseRequest(exercise=exercise("x", id="x"))),
        ("DeleteExercise", catalog_pb2.DeleteExerciseRequest(id="x")),
    ],
)
def test_every_catalog_method_needs_a_token(server, db, method, request_):
    error = rpc_error(getattr(server.catalog, method), request_)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    bad = rpc_error(getattr(server.catalog, method), request_, metadata=bearer("not-a-jwt"))
    assert bad.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rows(db) == 0


def test_a_logged_out_token_cannot_list(server):
    account = register(server)
    assert list_page(server, account.access_token).feature_names
    server.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(account.access_token))
    error = rpc_error(list_page, server, account.access_token)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --- ListExercises: page sizes and tokens ------------------------------------------------------


def test_empty_catalog_lists_nothing_but_names_the_features(server):
    account = register(server)
    page = list_page(server, account.access_token)
    assert list(page.exercises) == []
    assert page.next_page_token == ""
    assert list(page.feature_names) == list(features.FEATURE_NAMES)


def test_negative_page_size_is_refused(server):
    account = register(server)
    for size in (-1, -500):
        assert_invalid(
            rpc_error(list_page, server, account.access_token, page_size=size), "page_size"
        )


def test_page_tokens_must_come_from_the_same_filters(server):
    _, _made = build_small_catalog(server)
    account = register(server)
    first = list_page(server, account.access_token, page_size=1, equipment=BARBELL)
    assert len(first.exercises) == 1 and first.next_page_token
    # The same token with the same filters continues.
    second = list_page(
        server,
        account.access_token,
        page_size=1,
        equipment=BARBELL,
        page_token=first.next_page_token,
    )
    assert second.exercises[0].id != first.exercises[0].id
    for other in (
        {"equipment": DUMBBELL},
        {},
        {"equipment": BARBELL, "query": "curl"},
        {"equipment": BARBELL, "muscle": BICEPS},
        {"equipment": BARBELL, "category": STRENGTH},
        {"equipment": BARBELL, "include_archived": True},
        {"equipment": BARBELL, "only_private": True},
    ):
        error = rpc_error(
            list_page, server, account.access_token, page_token=first.next_page_token, **other
        )
        assert_invalid(error, "page_token")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!not base64!!!",
        "x",
        _b64(b"not json"),
        _b64(b"[1, 2, 3]"),
        _b64(json.dumps({"k": "a"}).encode()),
        _b64(json.dumps({"k": "a", "i": "b", "f": "0000000000000000"}).encode()),
        _b64(b"\xff\xfe\x00binary"),
    ],
    ids=["word", "punctuation", "short", "not-json", "list", "missing-keys", "forged", "binary"],
)
def test_garbage_page_token_is_invalid_argument(server, token):
    account = register(server)
    assert_invalid(
        rpc_error(list_page, server, account.access_token, page_token=token), "page_token"
    )


@pytest.mark.parametrize("field", ["muscle", "equipment", "category"])
def test_unknown_enum_numbers_in_filters_are_refused(server, field):
    account = register(server)
    assert_invalid(rpc_error(list_page, server, account.access_token, **{field: 999}), field)


def test_overlong_query_is_refused(server):
    account = register(server)
    assert_invalid(rpc_error(list_page, server, account.access_token, query="a" * 201), "query")


def test_keyset_paging_walks_every_visible_exercise_once_in_name_order(server, clock, db):
    admin = make_admin(server)
    me, other = register(server), register(server)
    # Duplicate names (same sort key), mixed case and names that share prefixes.
    shared = [
        "Row",
        "row",
        "Row",
        "ROW",
        "Rowing",
        "Apple Press",
        "apple press",
        "Zebra Crawl",
        "Ab Wheel",
        "ab wheel rollout",
        "Ab_Wheel",
        "Été Squat",
        "Étagère Lift",
    ]
    for i, name in enumerate(shared):
        create(server, admin.access_token, exercise(name, slug=f"shared-{i}", visibility=PUBLIC))
    mine = [create(server, me.access_token, exercise(n)) for n in ("Row", "My Own Lift", "aaa")]
    create(server, other.access_token, exercise("Row"))
    create(server, other.access_token, exercise("Secret Lift"))
    hidden = create(server, admin.access_token, exercise("Archived Row", visibility=PUBLIC))
    set_archived(db, hidden.id)

    expected_count = len(shared) + len(mine)
    assert expected_count == rows(
        db, "(owner_id IS NULL OR owner_id = :me) AND archived = :f", me=me.user.id, f=False
    )
    reference = None
    for page_size in (1, 2, 4, expected_count - 1, expected_count, expected_count + 1, 0):
        walked = list_all(server, me.access_token, page_size=page_size)
        assert len(walked) == expected_count, page_size
        assert len({e.id for e in walked}) == expected_count, page_size
        keys = [(e.name.lower(), e.id) for e in walked]
        assert keys == sorted(keys), page_size
        assert "Secret Lift" not in names(walked)
        assert hidden.id not in {e.id for e in walked}
        ids = [e.id for e in walked]
        if reference is None:
            reference = ids
        assert ids == reference, page_size
    assert {e.id for e in mine} <= set(reference or [])

    with_archived = list_all(server, me.access_token, page_size=3, include_archived=True)
    assert len(with_archived) == expected_count + 1
    assert hidden.id in {e.id for e in with_archived}

    # Paging with a filter walks exactly the filtered set.
    rows_ = list_all(server, me.access_token, page_size=2, query="row")
    assert sorted(names(rows_)) == sorted(["Row", "row", "Row", "ROW", "Rowing", "Row"])
    keys = [(e.name.lower(), e.id) for e in rows_]
    assert keys == sorted(keys)


def test_an_exercise_added_mid_walk_after_the_cursor_is_listed_once(server):
    admin = make_admin(server)
    account = register(server)
    for name in ("Alpha", "Bravo", "Charlie", "Delta"):
        create(server, admin.access_token, exercise(name, visibility=PUBLIC))
    first = list_page(server, account.access_token, page_size=2)
    assert names(first.exercises) == ["Alpha", "Bravo"]
    create(server, admin.access_token, exercise("Aardvark", visibility=PUBLIC))
    create(server, admin.access_token, exercise("Echo", visibility=PUBLIC))
    rest = []
    token = first.next_page_token
    while token:
        page = list_page(server, account.access_token, page_size=2, page_token=token)
        rest.extend(page.exercises)
        token = page.next_page_token
    assert names(rest) == ["Charlie", "Delta", "Echo"]


def test_page_sizes_default_50_and_max_500_over_the_imported_catalog(server, clock, db):
    report = import_free_exercise_db(server.server.db, EXERCISES_JSON, clock)
    assert report.created == 873
    account = register(server)
    create(server, account.access_token, exercise("My Private Lift"))
    total = 874

    default = list_page(server, account.access_token)
    assert len(default.exercises) == 50
    assert default.next_page_token
    assert list(default.feature_names) == list(features.FEATURE_NAMES)
    for size in (501, 1000, 2**31 - 1):
        capped = list_page(server, account.access_token, page_size=size)
        assert len(capped.exercises) == 500, size
        assert capped.next_page_token
    exact = list_page(server, account.access_token, page_size=7)
    assert len(exact.exercises) == 7

    for page_size in (0, 500):
        walked = list_all(server, account.access_token, page_size=page_size)
        assert len(walked) == total == rows(db)
        assert len({e.id for e in walked}) == total
        keys = [(e.name.lower(), e.id) for e in walked]
        assert keys == sorted(keys)
    for e in walked:
        assert_features(e)


# --- ListExercises: filters ------------------------------------------------------------------


def test_filters_by_muscle_primary_or_secondary(server):
    _, made = build_small_catalog(server)
    token = register(server).access_token

    def muscle(m):
        return sorted(names(list_all(server, token, muscle=m)))

    assert muscle(TRICEPS) == ["Barbell Bench Press"]
    assert muscle(HAMSTRINGS) == ["Back Squat", "Hamstring Stretch"]
    assert muscle(BICEPS) == ["Barbell Curl", "Dumbbell Curl"]
    assert muscle(FOREARMS) == ["Dumbbell Curl"]
    assert muscle(SHOULDERS) == sorted(
        ["1000 Meter Row", "Barbell Bench Press", "X_Y Raise", "XAY Raise"]
    )
    assert muscle(CALVES) == []
    every = list_all(server, token, muscle=common_pb2.MUSCLE_UNSPECIFIED)
    assert len(every) == len(made)


def test_filters_by_equipment_and_category_and_combine_with_and(server):
    build_small_catalog(server)
    token = register(server).access_token
    assert sorted(names(list_all(server, token, equipment=BARBELL))) == [
        "Back Squat",
        "Barbell Bench Press",
        "Barbell Curl",
    ]
    assert names(list_all(server, token, equipment=BODY_ONLY)) == ["Hamstring Stretch"]
    assert names(list_all(server, token, equipment=common_pb2.EQUIPMENT_KETTLEBELLS)) == []
    assert sorted(names(list_all(server, token, category=CARDIO))) == sorted(
        ["1000 Meter Row", "100% Effort Sprint"]
    )
    assert names(list_all(server, token, category=POWERLIFTING)) == ["Back Squat"]
    assert names(list_all(server, token, muscle=BICEPS, equipment=DUMBBELL)) == ["Dumbbell Curl"]
    assert names(list_all(server, token, equipment=BARBELL, category=STRENGTH, query="press")) == [
        "Barbell Bench Press"
    ]
    assert names(list_all(server, token, muscle=HAMSTRINGS, category=STRENGTH)) == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("BENCH", ["Barbell Bench Press"]),
        ("bEnCh PrEsS", ["Barbell Bench Press"]),
        ("flat", ["Barbell Bench Press"]),  # an alias
        ("straight", ["Barbell Curl"]),  # an alias
        ("high bar", ["Back Squat"]),  # alias words
        ("barbell curl", ["Barbell Curl"]),  # AND, not OR
        ("curl barbell", ["Barbell Curl"]),  # order does not matter
        ("  barbell    curl  ", ["Barbell Curl"]),
        ("curl", ["Barbell Curl", "Dumbbell Curl"]),
        ("curl squat", []),
        ("100%", ["100% Effort Sprint"]),  # '%' is literal
        ("0%", ["100% Effort Sprint"]),
        ("%", ["100% Effort Sprint"]),
        ("x_y", ["X_Y Raise"]),  # '_' is literal
        ("_", ["X_Y Raise"]),
        ("raise", ["X_Y Raise", "XAY Raise"]),
        ("nothing-like-this", []),
    ],
)
def test_text_query(server, query, expected):
    build_small_catalog(server)
    token = register(server).access_token
    assert sorted(names(list_all(server, token, query=query))) == sorted(expected)


def test_archived_exercises_are_listed_only_when_asked_and_stay_readable(server, db):
    _, made = build_small_catalog(server)
    token = register(server).access_token
    archived = made["Barbell Curl"]
    set_archived(db, archived.id)
    assert "Barbell Curl" not in names(list_all(server, token))
    assert "Barbell Curl" not in names(list_all(server, token, query="curl"))
    listed = list_all(server, token, query="curl", include_archived=True)
    assert sorted(names(listed)) == ["Barbell Curl", "Dumbbell Curl"]
    assert {e.name: e.archived for e in listed} == {"Barbell Curl": True, "Dumbbell Curl": False}
    assert len(list_all(server, token, include_archived=True)) == len(made)
    got = get(server, token, archived.id)
    assert got.archived
    assert get(server, token, archived.slug).id == archived.id


def test_only_private_lists_the_callers_own_exercises(server):
    _, made = build_small_catalog(server)
    me, other = register(server), register(server)
    mine = create(server, me.access_token, exercise("My Curl", primary=[BICEPS]))
    theirs = create(server, other.access_token, exercise("Their Curl", primary=[BICEPS]))
    assert [e.id for e in list_all(server, me.access_token, only_private=True)] == [mine.id]
    assert [e.id for e in list_all(server, other.access_token, only_private=True)] == [theirs.id]
    assert list_all(server, register(server).access_token, only_private=True) == []
    everything = names(list_all(server, me.access_token))
    assert "My Curl" in everything and "Their Curl" not in everything
    assert len(everything) == len(made) + 1
    assert sorted(names(list_all(server, me.access_token, muscle=BICEPS))) == [
        "Barbell Curl",
        "Dumbbell Curl",
        "My Curl",
    ]
    assert names(list_all(server, me.access_token, only_private=True, query="curl")) == ["My Curl"]
    assert list_all(server, me.access_token, only_private=True, muscle=CHEST) == []


def test_features_are_unit_vectors_matching_the_sdk_encoding(server):
    _, made = build_small_catalog(server)
    account = register(server)
    # Secondary-only trait mix and a muscle listed as both primary and secondary.
    create(
        server,
        account.access_token,
        exercise("Odd One", primary=[ABS, CHEST], secondary_muscles=[CHEST, CALVES]),
    )
    page = list_page(server, account.access_token)
    assert list(page.feature_names) == list(features.FEATURE_NAMES)
    assert len(page.exercises) == len(made) + 1
    for e in page.exercises:
        assert_features(e)
    bench = next(e for e in page.exercises if e.name == "Barbell Bench Press")
    values = dict(bench.features.values)
    # Primary muscles weigh twice as much as secondary ones.
    assert values["muscle:chest"] == pytest.approx(2 * values["muscle:triceps"])
    assert values["equipment:barbell"] == pytest.approx(values["muscle:chest"])
    assert set(values) == {
        "muscle:chest",
        "muscle:triceps",
        "muscle:shoulders",
        "equipment:barbell",
        "mechanic:compound",
        "force:push",
        "level:beginner",
        "category:strength",
    }
    odd = next(e for e in page.exercises if e.name == "Odd One")
    assert odd.features.values["muscle:chest"] == pytest.approx(
        odd.features.values["muscle:abdominals"]
    )


# --- GetExercise -----------------------------------------------------------------------------


def test_get_by_id_and_by_slug(server):
    _, made = build_small_catalog(server)
    token = register(server).access_token
    bench = made["Barbell Bench Press"]
    assert bench.slug == "barbell-bench-press"
    by_id = get(server, token, bench.id)
    by_slug = get(server, token, "barbell-bench-press")
    assert by_id == by_slug == bench
    assert by_id.visibility == PUBLIC
    assert list(by_id.aliases) == ["Flat Bench"]
    assert list(by_id.secondary_muscles) == [TRICEPS, SHOULDERS]
    assert_features(by_id)


def test_get_unknown_is_not_found_and_empty_is_invalid(server):
    build_small_catalog(server)
    token = register(server).access_token
    for missing in ("no-such-exercise", str(uuid.uuid4()), "barbell-bench"):
        error = rpc_error(get, server, token, missing)
        assert error.code() == grpc.StatusCode.NOT_FOUND, missing
    for empty in ("", "   "):
        assert_invalid(rpc_error(get, server, token, empty), "id")


# --- CreateExercise --------------------------------------------------------------------------


def test_a_user_creates_a_private_exercise_only_they_can_see(server, clock, db):
    clock.freeze()
    owner, other = register(server), register(server)
    made = create(
        server,
        owner.access_token,
        exercise(
            "  Landmine   Press ",
            primary=[SHOULDERS],
            secondary_muscles=[TRICEPS, SHOULDERS, TRICEPS],
            aliases=["Angled Press", "Angled Press", "Landmine Press"],
            equipment=BARBELL,
            mechanic=catalog_pb2.MECHANIC_COMPOUND,
            force=catalog_pb2.FORCE_PUSH,
            level=catalog_pb2.LEVEL_INTERMEDIATE,
            category=STRENGTH,
            instructions=["Hold the bar end.", "  ", "Press up."],
        ),
    )
    assert made.id and made.etag
    assert made.visibility == PRIVATE
    assert made.name == "Landmine Press"
    assert made.slug == "landmine-press"
    assert list(made.aliases) == ["Angled Press"]
    assert list(made.primary_muscles) == [SHOULDERS]
    assert list(made.secondary_muscles) == [TRICEPS]
    assert list(made.instructions) == ["Hold the bar end.", "Press up."]
    assert made.equipment == BARBELL and made.category == STRENGTH
    assert made.level == catalog_pb2.LEVEL_INTERMEDIATE
    assert not made.archived
    assert made.create_time.ToSeconds() == int(clock().timestamp())
    assert made.update_time == made.create_time
    assert_features(made)
    assert rows(db, "owner_id = :o", o=owner.user.id) == 1

    assert get(server, owner.access_token, made.id) == made
    assert get(server, owner.access_token, made.slug) == made
    assert [e.id for e in list_all(server, owner.access_token, only_private=True)] == [made.id]
    for needle in (made.id, made.slug):
        error = rpc_error(get, server, other.access_token, needle)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert list_all(server, other.access_token) == []
    assert list_all(server, other.access_token, query="landmine") == []
    assert list_all(server, other.access_token, muscle=SHOULDERS) == []
    # Admins do not see users' private exercises either.
    admin = make_admin(server)
    assert rpc_error(get, server, admin.access_token, made.id).code() == grpc.StatusCode.NOT_FOUND
    assert list_all(server, admin.access_token) == []


def test_explicit_private_visibility_works_too(server):
    account = register(server)
    made = create(server, account.access_token, exercise("Plank", visibility=PRIVATE))
    assert made.visibility == PRIVATE


def test_a_user_cannot_create_a_public_exercise(server, db):
    account = register(server)
    error = rpc_error(
        create, server, account.access_token, exercise("Sneaky Press", visibility=PUBLIC)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert rows(db) == 0
    assert list_all(server, account.access_token) == []


def test_an_admin_creates_a_public_exercise_everyone_sees(server, db):
    admin = make_admin(server)
    made = create(
        server, admin.access_token, exercise("Pull-Up", primary=[BICEPS], visibility=PUBLIC)
    )
    assert made.visibility == PUBLIC
    assert made.slug == "pull-up"
    assert rows(db, "owner_id IS NULL") == 1
    for token in (register(server).access_token, admin.access_token):
        assert get(server, token, "pull-up").id == made.id
        assert [e.id for e in list_all(server, token)] == [made.id]
        assert list_all(server, token, only_private=True) == []


def test_a_public_slug_collision_is_already_exists(server, db):
    admin = make_admin(server)
    first = create(server, admin.access_token, exercise("Deadlift", visibility=PUBLIC))
    for clash in (
        exercise("Deadlift", visibility=PUBLIC),
        exercise("Another Name", slug="deadlift", visibility=PUBLIC),
        exercise("DEADLIFT!", visibility=PUBLIC),
    ):
        error = rpc_error(create, server, admin.access_token, clash)
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, clash.name
        assert "deadlift" in error.details()
    assert rows(db) == 1
    assert get(server, admin.access_token, "deadlift").id == first.id


def test_a_private_slug_collision_gets_a_suffixed_slug(server, db):
    admin = make_admin(server)
    shared = create(server, admin.access_token, exercise("Goblet Squat", visibility=PUBLIC))
    me, other = register(server), register(server)
    mine = create(server, me.access_token, exercise("Goblet Squat"))
    mine_again = create(server, me.access_token, exercise("Goblet Squat"))
    theirs = create(server, other.access_token, exercise("Goblet Squat", slug="goblet-squat"))
    slugs = [shared.slug, mine.slug, mine_again.slug, theirs.slug]
    assert shared.slug == "goblet-squat"
    assert len(set(slugs)) == 4
    for slug in slugs[1:]:
        assert slug.startswith("goblet-squat-")
        assert len(slug) <= 100
        assert all(part and part.isalnum() and part == part.lower() for part in slug.split("-"))
    assert rows(db) == 4
    # The shared slug still names the shared exercise; the suffixed one names mine.
    assert get(server, me.access_token, "goblet-squat").id == shared.id
    assert get(server, me.access_token, mine.slug).id == mine.id
    assert rpc_error(get, server, other.access_token, mine.slug).code() == (
        grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (exercise(""), "exercise.name"),
        (exercise("   "), "exercise.name"),
        (exercise("x" * 201), "exercise.name"),
        (exercise("Bell\x07Name"), "exercise.name"),
        (exercise("Fine", slug="Bad Slug"), "exercise.slug"),
        (exercise("Fine", slug="bad--slug"), "exercise.slug"),
        (exercise("Fine", slug="-bad"), "exercise.slug"),
        (exercise("Fine", slug="bad_slug"), "exercise.slug"),
        (exercise("Fine", slug="a" * 101), "exercise.slug"),
        (exercise("!!!"), "exercise.slug"),  # no letters or digits to derive a slug from
        (exercise("Fine", primary=()), "exercise.primary_muscles"),
        (exercise("Fine", secondary_muscles=[CHEST], primary=()), "exercise.primary_muscles"),
        (exercise("Fine", primary=[999]), "exercise.primary_muscles"),
        (exercise("Fine", secondary_muscles=[999]), "exercise.secondary_muscles"),
        (exercise("Fine", equipment=999), "exercise.equipment"),
        (exercise("Fine", mechanic=999), "exercise.mechanic"),
        (exercise("Fine", force=999), "exercise.force"),
        (exercise("Fine", level=999), "exercise.level"),
        (exercise("Fine", category=999), "exercise.category"),
        (exercise("Fine", visibility=999), "exercise.visibility"),
        (exercise("Fine", aliases=[f"alias {i}" for i in range(31)]), "exercise.aliases"),
        (exercise("Fine", instructions=["step"] * 51), "exercise.instructions"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_create_validation_names_the_field(server, db, message, field):
    account = register(server)
    assert_invalid(rpc_error(create, server, account.access_token, message), field)
    assert rows(db) == 0


def test_create_refuses_an_overlong_request_id(server, db):
    account = register(server)
    error = rpc_error(create, server, account.access_token, exercise("Plank"), "r" * 129)
    assert_invalid(error, "request_id")
    assert rows(db) == 0


# --- CreateExercise: request_id idempotency (TESTPLAN 25) ------------------------------------


def test_the_same_request_id_twice_creates_one_exercise(server, db):
    account = register(server)
    request_id = str(uuid.uuid4())
    message = exercise("Hip Thrust", primary=[GLUTES], equipment=BARBELL)
    first = create(server, account.access_token, message, request_id)
    second = create(server, account.access_token, message, request_id)
    assert second.id == first.id
    assert second.slug == first.slug
    assert rows(db) == 1
    # Without a request_id, the same payload is a new exercise (with its own slug).
    third = create(server, account.access_token, message)
    assert third.id != first.id and third.slug != first.slug
    assert rows(db) == 2


def test_the_same_request_id_with_another_payload_is_already_exists(server, db):
    account = register(server)
    request_id = str(uuid.uuid4())
    first = create(server, account.access_token, exercise("Hip Thrust"), request_id)
    for changed in (
        exercise("Glute Bridge"),
        exercise("Hip Thrust", primary=[GLUTES]),
        exercise("Hip Thrust", aliases=["Bridge"]),
    ):
        error = rpc_error(create, server, account.access_token, changed, request_id)
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "request_id" in error.details()
    assert rows(db) == 1
    assert [e.id for e in list_all(server, account.access_token)] == [first.id]


def test_request_ids_belong_to_their_user(server, db):
    me, other = register(server), register(server)
    request_id = str(uuid.uuid4())
    mine = create(server, me.access_token, exercise("Hip Thrust"), request_id)
    theirs = create(server, other.access_token, exercise("Hip Thrust"), request_id)
    assert mine.id != theirs.id
    assert rows(db) == 2
    assert [e.id for e in list_all(server, other.access_token)] == [theirs.id]


def _race(calls: int, call) -> list:
    """Run `call(i)` from `calls` threads released at once; RpcErrors become (code, details)."""
    barrier = threading.Barrier(calls)

    def attempt(i: int):
        barrier.wait()
        try:
            return call(i)
        except grpc.RpcError as error:
            return (error.code(), error.details())

    with ThreadPoolExecutor(calls) as pool:
        return list(pool.map(attempt, range(calls)))


def test_concurrent_identical_creates_with_one_request_id_make_one_row(server, db):
    account = register(server)
    # Several rounds, so that a race window is hit reliably rather than by luck.
    for round_ in range(4):
        request_id = str(uuid.uuid4())
        message = exercise(f"Nordic Curl {round_}", primary=[HAMSTRINGS])
        results = _race(
            8, lambda _, m=message, r=request_id: create(server, account.access_token, m, r).id
        )
        assert all(isinstance(r, str) for r in results), results
        assert len(set(results)) == 1
        assert rows(db) == round_ + 1
        assert create(server, account.access_token, message, request_id).id == results[0]
        assert rows(db) == round_ + 1


def test_concurrent_private_creates_of_one_name_by_different_users_all_succeed(server, db):
    accounts = [register(server) for _ in range(6)]
    for round_ in range(3):
        message = exercise(f"Zercher Squat {round_}", primary=[QUADS])
        results = _race(
            len(accounts), lambda i, m=message: create(server, accounts[i].access_token, m).slug
        )
        assert all(isinstance(r, str) for r in results), results
        # Each user has a slug namespace of their own, so everyone keeps the natural slug.
        assert set(results) == {f"zercher-squat-{round_}"}
    assert rows(db) == 3 * len(accounts)


def test_a_private_slug_reveals_nothing_to_other_users(server):
    """Taking, or renaming to, a slug another user uses privately succeeds exactly as
    for an unused slug (TESTPLAN 15)."""
    alice, bob = register(server), register(server)
    secret = create(server, alice.access_token, exercise("Secret Plan", primary=[QUADS]))
    assert secret.slug == "secret-plan"
    mine = create(server, bob.access_token, exercise("Secret Plan", primary=[QUADS]))
    assert mine.slug == "secret-plan"
    assert get(server, bob.access_token, "secret-plan").id == mine.id
    assert get(server, alice.access_token, "secret-plan").id == secret.id


def test_a_retry_after_the_exercise_was_deleted_does_not_fail_internally(server, db):
    account = register(server)
    request_id = str(uuid.uuid4())
    message = exercise("Nordic Curl", primary=[HAMSTRINGS])
    first = create(server, account.access_token, message, request_id)
    delete(server, account.access_token, first.id)
    try:
        again = create(server, account.access_token, message, request_id)
    except grpc.RpcError as error:
        assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
            error.details()
        )
        assert rows(db) == 0
    else:
        assert rows(db) == 1
        assert get(server, account.access_token, again.id) == again


# --- UpdateExercise --------------------------------------------------------------------------


def test_owner_updates_a_private_exercise_with_a_mask(server, clock, db):
    clock.freeze()
    account = register(server)
    made = create(
        server,
        account.access_token,
        exercise("Curl", primary=[BICEPS], equipment=DUMBBELL, aliases=["Arm Curl"]),
    )
    clock.advance(60)
    noise = exercise(
        "Hammer Curl",
        primary=[FOREARMS],
        id=made.id,
        etag=made.etag,
        equipment=BARBELL,
        aliases=["Neutral Curl"],
        slug="hammer-time",
    )
    updated = update(server, account.access_token, noise, ["name"])
    assert updated.name == "Hammer Curl"
    assert updated.id == made.id
    assert updated.slug == made.slug  # the mask named only the name
    assert list(updated.primary_muscles) == [BICEPS]
    assert updated.equipment == DUMBBELL
    assert list(updated.aliases) == ["Arm Curl"]
    assert updated.visibility == PRIVATE
    assert updated.etag != made.etag
    assert updated.create_time == made.create_time
    assert updated.update_time.ToSeconds() == made.update_time.ToSeconds() + 60
    assert get(server, account.access_token, made.id) == updated
    assert names(list_all(server, account.access_token, query="hammer")) == ["Hammer Curl"]
    assert list_all(server, account.access_token, query="curl arm") == [updated]

    # The old etag is stale now; an empty etag skips the check.
    stale = exercise("Other", id=made.id, etag=made.etag)
    error = rpc_error(update, server, account.access_token, stale, ["name"])
    assert error.code() == grpc.StatusCode.ABORTED
    assert get(server, account.access_token, made.id) == updated
    again = update(server, account.access_token, exercise("Curl Two", id=made.id), ["name"])
    assert again.name == "Curl Two"
    assert again.etag not in (made.etag, updated.etag)
    assert rows(db) == 1


def test_an_empty_mask_updates_every_set_field(server):
    account = register(server)
    made = create(server, account.access_token, exercise("Curl", primary=[BICEPS]))
    updated = update(
        server,
        account.access_token,
        catalog_pb2.Exercise(
            id=made.id,
            etag=made.etag,
            equipment=common_pb2.EQUIPMENT_CABLE,
            level=catalog_pb2.LEVEL_EXPERT,
            instructions=["Pull."],
        ),
    )
    assert updated.name == "Curl"  # unset fields are left alone
    assert list(updated.primary_muscles) == [BICEPS]
    assert updated.equipment == common_pb2.EQUIPMENT_CABLE
    assert updated.level == catalog_pb2.LEVEL_EXPERT
    assert list(updated.instructions) == ["Pull."]
    assert_features(updated)


def test_a_mask_can_clear_optional_fields(server):
    account = register(server)
    made = create(
        server,
        account.access_token,
        exercise("Curl", primary=[BICEPS], equipment=DUMBBELL, aliases=["A"], instructions=["x"]),
    )
    cleared = update(
        server,
        account.access_token,
        catalog_pb2.Exercise(id=made.id, etag=made.etag),
        ["equipment", "aliases", "instructions"],
    )
    assert cleared.equipment == common_pb2.EQUIPMENT_UNSPECIFIED
    assert list(cleared.aliases) == [] and list(cleared.instructions) == []
    assert "equipment:dumbbell" not in cleared.features.values
    assert list_all(server, account.access_token, equipment=DUMBBELL) == []
    assert list_all(server, account.access_token, query="curl") == [cleared]
    assert list_all(server, account.access_token, query="a") == []
    # Clearing the primary muscles would leave the exercise invalid.
    error = rpc_error(
        update,
        server,
        account.access_token,
        catalog_pb2.Exercise(id=made.id),
        ["primary_muscles"],
    )
    assert_invalid(error, "exercise.primary_muscles")
    assert get(server, account.access_token, made.id) == cleared


def test_updating_muscles_changes_filters_and_features(server):
    account = register(server)
    made = create(
        server, account.access_token, exercise("Mystery Move", primary=[CHEST], equipment=BARBELL)
    )
    assert names(list_all(server, account.access_token, muscle=CHEST)) == ["Mystery Move"]
    before = dict(made.features.values)
    updated = update(
        server,
        account.access_token,
        exercise("ignored", primary=[BICEPS], secondary_muscles=[FOREARMS], id=made.id),
        ["primary_muscles", "secondary_muscles"],
    )
    assert updated.name == "Mystery Move"
    assert list_all(server, account.access_token, muscle=CHEST) == []
    assert names(list_all(server, account.access_token, muscle=BICEPS)) == ["Mystery Move"]
    assert names(list_all(server, account.access_token, muscle=FOREARMS)) == ["Mystery Move"]
    after = dict(updated.features.values)
    assert after != before
    assert "muscle:chest" not in after
    assert after["muscle:biceps"] == pytest.approx(2 * after["muscle:forearms"])
    assert_features(updated)
    listed = list_all(server, account.access_token, muscle=BICEPS)[0]
    assert dict(listed.features.values) == after


def test_an_admin_updates_a_public_exercise_but_a_user_cannot(server):
    admin = make_admin(server)
    user = register(server)
    made = create(server, admin.access_token, exercise("Dip", primary=[TRICEPS], visibility=PUBLIC))
    error = rpc_error(
        update, server, user.access_token, exercise("Hacked", id=made.id, etag=made.etag), ["name"]
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert get(server, user.access_token, made.id) == made
    # Even by slug, and even with an empty mask.
    error = rpc_error(update, server, user.access_token, exercise("Hacked", id=made.slug))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert get(server, user.access_token, made.id) == made

    changed = update(
        server, admin.access_token, exercise("Bench Dip", id=made.id, etag=made.etag), ["name"]
    )
    assert changed.name == "Bench Dip"
    assert changed.visibility == PUBLIC
    assert get(server, user.access_token, made.id).name == "Bench Dip"


def test_another_users_private_exercise_is_not_found_on_update(server):
    owner, other = register(server), register(server)
    made = create(server, owner.access_token, exercise("Secret"))
    for id_ in (made.id, made.slug):
        error = rpc_error(
            update, server, other.access_token, exercise("Mine now", id=id_), ["name"]
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert get(server, owner.access_token, made.id) == made


@pytest.mark.parametrize(
    "path", ["id", "visibility", "archived", "etag", "features", "create_time", "nonsense", ""]
)
def test_a_bad_mask_path_is_invalid_argument(server, path):
    account = register(server)
    made = create(server, account.access_token, exercise("Curl"))
    error = rpc_error(
        update,
        server,
        account.access_token,
        exercise("Curl", id=made.id, visibility=PUBLIC, archived=True),
        [path],
    )
    assert_invalid(error, "update_mask")
    assert get(server, account.access_token, made.id) == made


@pytest.mark.parametrize(
    ("paths", "message", "field"),
    [
        (["name"], exercise(""), "exercise.name"),
        (["slug"], exercise("x", slug="Not A Slug"), "exercise.slug"),
        (["primary_muscles"], exercise("x", primary=[999]), "exercise.primary_muscles"),
        (["equipment"], exercise("x", equipment=999), "exercise.equipment"),
        (["category"], exercise("x", category=999), "exercise.category"),
        ([], exercise("x", level=999), "exercise.level"),
    ],
)
def test_update_validation_names_the_field(server, paths, message, field):
    account = register(server)
    made = create(server, account.access_token, exercise("Curl"))
    message.id = made.id
    assert_invalid(rpc_error(update, server, account.access_token, message, paths), field)
    assert get(server, account.access_token, made.id) == made


def test_update_needs_an_existing_id(server):
    account = register(server)
    assert_invalid(
        rpc_error(update, server, account.access_token, exercise("x"), ["name"]), "exercise.id"
    )
    error = rpc_error(
        update, server, account.access_token, exercise("x", id=str(uuid.uuid4())), ["name"]
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


# --- DeleteExercise --------------------------------------------------------------------------


def test_owner_deletes_a_private_exercise(server, db):
    account = register(server)
    made = create(server, account.access_token, exercise("Curl", secondary_muscles=[BICEPS]))
    keep = create(server, account.access_token, exercise("Keep"))
    assert delete(server, account.access_token, made.id, made.etag) is False
    assert rpc_error(get, server, account.access_token, made.id).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    assert [e.id for e in list_all(server, account.access_token, include_archived=True)] == [
        keep.id
    ]
    assert list_all(server, account.access_token, muscle=BICEPS) == []
    assert rows(db) == 1
    with db.engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM exercise_muscles WHERE exercise_id = :id"), {"id": made.id}
        ).scalar_one()
    assert left == 0
    again = rpc_error(delete, server, account.access_token, made.id)
    assert again.code() == grpc.StatusCode.NOT_FOUND
    # By slug, without an etag.
    assert delete(server, account.access_token, keep.slug) is False
    assert rows(db) == 0


def test_a_user_cannot_delete_a_public_exercise_but_an_admin_can(server, db):
    admin = make_admin(server)
    user = register(server)
    made = create(server, admin.access_token, exercise("Dip", visibility=PUBLIC))
    for id_ in (made.id, made.slug):
        error = rpc_error(delete, server, user.access_token, id_, made.etag)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert get(server, user.access_token, made.id) == made
    assert delete(server, admin.access_token, made.id, made.etag) is False
    assert rows(db) == 0
    assert list_all(server, user.access_token) == []


def test_a_stale_etag_aborts_the_delete(server, db):
    account = register(server)
    made = create(server, account.access_token, exercise("Curl"))
    changed = update(server, account.access_token, exercise("Curl 2", id=made.id), ["name"])
    error = rpc_error(delete, server, account.access_token, made.id, made.etag)
    assert error.code() == grpc.StatusCode.ABORTED
    assert get(server, account.access_token, made.id) == changed
    assert rows(db) == 1
    assert delete(server, account.access_token, made.id, changed.etag) is False
    assert rows(db) == 0


def test_another_users_exercise_is_not_found_on_delete(server, db):
    owner, other = register(server), register(server)
    made = create(server, owner.access_token, exercise("Secret"))
    for id_ in (made.id, made.slug, str(uuid.uuid4())):
        error = rpc_error(delete, server, other.access_token, id_)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert get(server, owner.access_token, made.id) == made
    assert rows(db) == 1


def test_delete_needs_an_id(server):
    account = register(server)
    assert_invalid(rpc_error(delete, server, account.access_token, ""), "id")


def test_private_exercises_disappear_with_their_account(server, db):
    admin = make_admin(server)
    shared = create(server, admin.access_token, exercise("Shared", visibility=PUBLIC))
    doomed, other = register(server), register(server)
    request_id = str(uuid.uuid4())
    gone = create(server, doomed.access_token, exercise("Doomed Lift"), request_id)
    create(server, doomed.access_token, exercise("Doomed Lift Two", primary=[BICEPS]))
    kept = create(server, other.access_token, exercise("Doomed Lift"))
    assert rows(db) == 4
    server.auth.DeleteAccount(
        auth_pb2.DeleteAccountRequest(password=PASSWORD), metadata=bearer(doomed.access_token)
    )
    assert rows(db, "owner_id = :o", o=doomed.user.id) == 0
    assert rows(db) == 2
    with db.engine.connect() as conn:
        orphans = conn.execute(
            text(
                "SELECT count(*) FROM exercise_muscles m "
                "LEFT JOIN exercises e ON e.id = m.exercise_id WHERE e.id IS NULL"
            )
        ).scalar_one()
        keys = conn.execute(
            text("SELECT count(*) FROM idempotency_keys WHERE user_id = :u"),
            {"u": doomed.user.id},
        ).scalar_one()
    assert orphans == 0
    assert keys == 0
    for token in (admin.access_token, other.access_token):
        error = rpc_error(get, server, token, gone.id)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert {e.id for e in list_all(server, other.access_token)} == {shared.id, kept.id}
