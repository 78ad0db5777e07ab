"""Filling the shared catalog: the built-in default catalog (seeded once per version, stable
ids) and free-exercise-db imports (idempotent, refreshing, all-or-nothing on bad input),
in-process and through `repwise catalog import FILE`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from repwise.v1 import catalog_pb2, common_pb2
from server.catalog.service import slugify, stable_id
from server.catalog.sources import DEFAULT_CATALOG, import_free_exercise_db, seed_default_catalog
from server.db import Database
from server.errors import InvalidArgument
from server.migrate import upgrade
from tests.conftest import register, rpc_error
from tests.test_catalog import EXERCISES_JSON, assert_features, get, list_all, rows

REPWISE = Path(sys.executable).parent / "repwise"
FREE_PREFIX = "free-exercise-db:"
MUSCLES = [m for m in common_pb2.Muscle.values() if m != common_pb2.MUSCLE_UNSPECIFIED]
EQUIPMENT = [e for e in common_pb2.Equipment.values() if e != common_pb2.EQUIPMENT_UNSPECIFIED]
CATEGORIES = [c for c in catalog_pb2.Category.values() if c != catalog_pb2.CATEGORY_UNSPECIFIED]


def vocab(enum, number: int) -> str:
    """MUSCLE_LOWER_BACK -> "lower_back", the spelling of the catalog files."""
    return enum.Name(number).split("_", 1)[1].lower()


def free_vocab(value: str | None) -> str | None:
    """free-exercise-db spells "lower back", "e-z curl bar", "body only"."""
    if value is None:
        return None
    return value.lower().replace("e-z", "ez").replace(" ", "_").replace("-", "_")


def free_records() -> list[dict]:
    return json.loads(EXERCISES_JSON.read_text(encoding="utf-8"))


def builtin_records() -> list[dict]:
    return json.loads(DEFAULT_CATALOG.read_text(encoding="utf-8"))["exercises"]


def expected_counts(records: list[dict], spelling=lambda v: v) -> tuple[Counter, Counter, Counter]:
    """How many records work each muscle (primary or secondary), use each equipment, and
    belong to each category; keys in the catalog's spelling."""
    muscles: Counter = Counter()
    equipment: Counter = Counter()
    categories: Counter = Counter()
    for r in records:
        worked = r.get("primary_muscles", r.get("primaryMuscles")) or []
        worked = worked + (r.get("secondary_muscles", r.get("secondaryMuscles")) or [])
        muscles.update({spelling(m) for m in worked})
        if r.get("equipment"):
            equipment[spelling(r["equipment"])] += 1
        if r.get("category"):
            categories[spelling(r["category"])] += 1
    return muscles, equipment, categories


def assert_filters_match(server, token: str, records: list[dict], spelling=lambda v: v) -> None:
    muscles, equipment, categories = expected_counts(records, spelling)
    for m in MUSCLES:
        listed = list_all(server, token, muscle=m)
        assert len(listed) == muscles[vocab(common_pb2.Muscle, m)], common_pb2.Muscle.Name(m)
        assert all(m in (*e.primary_muscles, *e.secondary_muscles) for e in listed)
    for q in EQUIPMENT:
        listed = list_all(server, token, equipment=q)
        assert len(listed) == equipment[vocab(common_pb2.Equipment, q)], q
        assert all(e.equipment == q for e in listed)
    for c in CATEGORIES:
        listed = list_all(server, token, category=c)
        assert len(listed) == categories[vocab(catalog_pb2.Category, c)], c
        assert all(e.category == c for e in listed)


def slug_ids(db) -> dict[str, str]:
    with db.engine.connect() as conn:
        return dict(conn.execute(text("SELECT slug, id FROM exercises")).all())


# --- the built-in default catalog -------------------------------------------------------------


def test_seeding_the_default_catalog(server, clock, db):
    records = builtin_records()
    assert len(records) >= 150
    report = seed_default_catalog(server.server.db, clock)
    assert report is not None
    assert (report.created, report.updated, report.unchanged) == (len(records), 0, 0)
    assert rows(db) == rows(db, "owner_id IS NULL") == len(records)

    token = register(server).access_token
    listed = list_all(server, token)
    assert len(listed) == len(records)
    assert {e.slug for e in listed} == {r["slug"] for r in records}
    assert len({e.slug for e in listed}) == len(listed)
    for e in listed:
        assert e.visibility == catalog_pb2.VISIBILITY_PUBLIC
        assert not e.archived
        assert e.id == stable_id("builtin:" + e.slug)
        assert_features(e)

    # Every muscle and every piece of equipment is covered, and the filters agree with the file.
    for m in MUSCLES:
        assert list_all(server, token, muscle=m), common_pb2.Muscle.Name(m)
    for q in EQUIPMENT:
        assert list_all(server, token, equipment=q), common_pb2.Equipment.Name(q)
    assert_filters_match(server, token, records)

    # Aliases are searchable.
    with_alias = next(r for r in records if r.get("aliases"))
    alias_hits = list_all(server, token, query=with_alias["aliases"][0])
    assert with_alias["slug"] in {e.slug for e in alias_hits}

    # Seeding again (a restart) adds and changes nothing.
    before = {e.id: e.etag for e in listed}
    assert seed_default_catalog(server.server.db, clock) is None
    assert rows(db) == len(records)
    assert {e.id: e.etag for e in list_all(server, token)} == before


def test_a_newer_default_catalog_version_is_applied_once(server, clock, db, tmp_path, monkeypatch):
    data = json.loads(DEFAULT_CATALOG.read_text(encoding="utf-8"))
    count = len(data["exercises"])
    assert seed_default_catalog(server.server.db, clock) is not None
    token = register(server).access_token
    renamed = data["exercises"][0]
    before = get(server, token, renamed["slug"])

    data["version"] = int(data["version"]) + 1
    data["exercises"][0] = {**renamed, "name": "Renamed In The Next Version"}
    data["exercises"].append(
        {"slug": "brand-new-move", "name": "Brand New Move", "primary_muscles": ["neck"]}
    )
    newer = tmp_path / "default_catalog.json"
    newer.write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setattr("server.catalog.sources.DEFAULT_CATALOG", newer)

    report = seed_default_catalog(server.server.db, clock)
    assert report is not None
    assert (report.created, report.updated, report.unchanged) == (1, 1, count - 1)
    assert rows(db) == count + 1
    after = get(server, token, renamed["slug"])
    assert after.id == before.id and after.name == "Renamed In The Next Version"
    assert after.etag != before.etag
    assert get(server, token, "brand-new-move").id == stable_id("builtin:brand-new-move")
    assert seed_default_catalog(server.server.db, clock) is None
    assert rows(db) == count + 1


def test_builtin_ids_are_the_same_on_every_installation(server, clock, db, tmp_path):
    seed_default_catalog(server.server.db, clock)
    other = Database(f"sqlite:///{tmp_path / 'other.db'}", pool_size=1)
    try:
        upgrade(other.engine)
        seed_default_catalog(other, clock)
        here, there = slug_ids(db), slug_ids(other)
    finally:
        other.dispose()
    assert here == there
    assert len(here) == len(builtin_records())
    assert all(id_ == stable_id("builtin:" + slug) for slug, id_ in here.items())


# --- free-exercise-db imports ---------------------------------------------------------------


def test_import_is_idempotent_and_refreshes_changed_records(server, clock, db, tmp_path):
    records = free_records()
    assert len(records) == 873
    first = import_free_exercise_db(server.server.db, EXERCISES_JSON, clock)
    assert (first.created, first.updated, first.unchanged) == (873, 0, 0)
    assert rows(db) == rows(db, "owner_id IS NULL") == 873
    ids_before = slug_ids(db)

    second = import_free_exercise_db(server.server.db, EXERCISES_JSON, clock)
    assert (second.created, second.updated, second.unchanged) == (0, 0, 873)
    assert rows(db) == 873
    assert slug_ids(db) == ids_before

    token = register(server).access_token
    target = records[100]
    exercise_id = stable_id(FREE_PREFIX + target["id"])
    before = get(server, token, exercise_id)
    assert before.name == target["name"]

    changed = [dict(r) for r in records]
    changed[100]["name"] = "Renamed By The Upstream Project"
    modified = tmp_path / "exercises.json"
    modified.write_text(json.dumps(changed), encoding="utf-8")
    third = import_free_exercise_db(server.server.db, modified, clock)
    assert (third.created, third.updated, third.unchanged) == (0, 1, 872)
    assert rows(db) == 873
    after = get(server, token, exercise_id)
    assert after.name == "Renamed By The Upstream Project"
    assert after.slug == before.slug  # a refresh keeps the slug (and the id)
    assert after.etag != before.etag
    assert [e.id for e in list_all(server, token, query="renamed upstream")] == [exercise_id]
    assert slug_ids(db) == ids_before

    back = import_free_exercise_db(server.server.db, EXERCISES_JSON, clock)
    assert (back.created, back.updated, back.unchanged) == (0, 1, 872)
    assert get(server, token, exercise_id).name == target["name"]


def test_imported_exercises_are_listable_with_filters(server, clock):
    records = free_records()
    import_free_exercise_db(server.server.db, EXERCISES_JSON, clock)
    token = register(server).access_token

    ez = list_all(server, token, equipment=common_pb2.EQUIPMENT_EZ_CURL_BAR)
    assert len(ez) >= 9
    assert_filters_match(server, token, records, free_vocab)

    listed = list_all(server, token)
    assert len(listed) == 873
    assert len({e.slug for e in listed}) == 873
    by_id = {e.id: e for e in listed}
    for r in records:
        e = by_id[stable_id(FREE_PREFIX + r["id"])]
        assert e.name == " ".join(r["name"].split())
        assert e.visibility == catalog_pb2.VISIBILITY_PUBLIC
        assert [vocab(common_pb2.Muscle, m) for m in e.primary_muscles] == [
            free_vocab(m) for m in r["primaryMuscles"]
        ]
        assert_features(e)

    sit_up = get(server, token, "3-4-sit-up")
    assert sit_up.name == "3/4 Sit-Up"
    assert sit_up.equipment == common_pb2.EQUIPMENT_BODY_ONLY
    assert sit_up.level == catalog_pb2.LEVEL_BEGINNER
    assert list(sit_up.instructions) == [i.strip() for i in records[0]["instructions"]]
    assert "3/4 Sit-Up" in [e.name for e in list_all(server, token, query="3/4 SIT")]
    lower_back = list_all(server, token, muscle=common_pb2.MUSCLE_LOWER_BACK)
    assert lower_back


@pytest.mark.parametrize("order", ["seed-then-import", "import-then-seed"])
def test_builtin_and_imported_exercises_coexist_with_unique_slugs(server, clock, db, order):
    builtin = builtin_records()
    free = free_records()
    if order == "seed-then-import":
        seed_default_catalog(server.server.db, clock)
        report = import_free_exercise_db(server.server.db, EXERCISES_JSON, clock)
        assert report.created == 873
    else:
        import_free_exercise_db(server.server.db, EXERCISES_JSON, clock)
        report = seed_default_catalog(server.server.db, clock)
        assert report is not None and report.created == len(builtin)
    total = len(builtin) + 873
    assert rows(db) == total

    token = register(server).access_token
    listed = list_all(server, token)
    assert len(listed) == total
    slugs = [e.slug for e in listed]
    assert len(set(slugs)) == total
    ids = {e.id for e in listed}
    assert ids == {stable_id("builtin:" + r["slug"]) for r in builtin} | {
        stable_id(FREE_PREFIX + r["id"]) for r in free
    }

    # A slug both sources want goes to whichever came first; the other gets a suffix.
    free_slugs = {slugify(r["id"].replace("_", " ")): r["id"] for r in free}
    shared = sorted(set(free_slugs) & {r["slug"] for r in builtin})
    assert shared, "the two sources are expected to overlap"
    for slug in shared:
        owner = get(server, token, slug)
        first = "builtin:" + slug if order == "seed-then-import" else FREE_PREFIX + free_slugs[slug]
        assert owner.id == stable_id(first), slug

    # Refreshing either source again changes nothing, suffixed slugs included.
    before = slug_ids(db)
    again = import_free_exercise_db(server.server.db, EXERCISES_JSON, clock)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 873)
    assert seed_default_catalog(server.server.db, clock) is None
    assert slug_ids(db) == before


def _without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


def _bad_files() -> list[tuple[str, object, str]]:
    base = free_records()[:10]

    def with_record(i: int, record: object) -> list:
        return [*base[:i], record, *base[i + 1 :]]

    return [
        ("not-a-list", {"exercises": base}, "file"),
        ("a-string", "exercises", "file"),
        ("record-without-id", with_record(3, _without(base[3], "id")), "exercises[3].id"),
        ("numeric-id", with_record(3, {**base[3], "id": 42}), "exercises[3].id"),
        ("empty-id", with_record(3, {**base[3], "id": ""}), "exercises[3].id"),
        ("record-not-an-object", with_record(1, "just a string"), "exercises[1].id"),
        ("duplicate-id", with_record(4, {**base[4], "id": base[0]["id"]}), "exercises[4].id"),
        (
            "unknown-primary-muscle",
            with_record(5, {**base[5], "primaryMuscles": ["spleen"]}),
            "exercises[5].primary_muscles",
        ),
        (
            "unknown-secondary-muscle",
            with_record(5, {**base[5], "secondaryMuscles": ["spleen"]}),
            "exercises[5].secondary_muscles",
        ),
        (
            "no-primary-muscle",
            with_record(6, {**base[6], "primaryMuscles": []}),
            "exercises[6].primary_muscles",
        ),
        (
            "unknown-equipment",
            with_record(7, {**base[7], "equipment": "spaceship"}),
            "exercises[7].equipment",
        ),
        (
            "unknown-level",
            with_record(7, {**base[7], "level": "godlike"}),
            "exercises[7].level",
        ),
        ("missing-name", with_record(8, _without(base[8], "name")), "exercises[8].name"),
        ("blank-name", with_record(9, {**base[9], "name": "   "}), "exercises[9].name"),
    ]


@pytest.mark.parametrize(
    ("content", "field"),
    [case[1:] for case in _bad_files()],
    ids=[case[0] for case in _bad_files()],
)
def test_a_malformed_file_names_the_record_and_imports_nothing(db, clock, tmp_path, content, field):
    records = free_records()
    # Something already imported, which the bad file would change if it were half applied.
    existing = tmp_path / "existing.json"
    existing.write_text(json.dumps(records[:2] + records[20:30]), encoding="utf-8")
    import_free_exercise_db(db, existing, clock)
    assert rows(db) == 12
    before = slug_ids(db)
    with db.engine.connect() as conn:
        names_before = sorted(conn.execute(text("SELECT name FROM exercises")).scalars())

    if isinstance(content, list):  # records[0], already imported, is renamed as well
        content = [{**content[0], "name": "Changed " + content[0]["name"]}, *content[1:]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(InvalidArgument) as info:
        import_free_exercise_db(db, bad, clock)
    assert info.value.field == field
    assert field in info.value.message
    assert rows(db) == 12
    assert slug_ids(db) == before
    with db.engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT name FROM exercises")).scalars()) == names_before


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00\x01", b""])
def test_an_unreadable_file_is_invalid_argument(db, clock, tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    with pytest.raises(InvalidArgument) as info:
        import_free_exercise_db(db, bad, clock)
    assert info.value.field == "file"
    assert str(bad) in info.value.message
    with pytest.raises(InvalidArgument) as missing:
        import_free_exercise_db(db, tmp_path / "missing.json", clock)
    assert missing.value.field == "file"
    assert rows(db) == 0


# --- repwise catalog import FILE ---------------------------------------------------------------


def cli_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPWISE_")}
    env["REPWISE_DATABASE_URL"] = database_url
    return env


def repwise(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert REPWISE.exists(), f"console script missing at {REPWISE}"
    return subprocess.run(
        [str(REPWISE), *args],
        env=cli_env(database_url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def exercise_count(url: str) -> int:
    db = Database(url, pool_size=1)
    try:
        return rows(db)
    finally:
        db.dispose()


def test_cli_import_reports_new_then_unchanged(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = repwise("catalog", "import", str(EXERCISES_JSON), database_url=url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "873 new" in first.stdout
    assert "0 updated" in first.stdout
    assert exercise_count(url) == 873

    second = repwise("catalog", "import", str(EXERCISES_JSON), database_url=url, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "0 new" in second.stdout
    assert "873 unchanged" in second.stdout
    assert exercise_count(url) == 873
    assert "Traceback" not in first.stderr + second.stderr


def test_cli_import_into_the_test_database(db, database_url, tmp_path):
    """On both backends."""
    result = repwise(
        "catalog", "import", str(EXERCISES_JSON), database_url=database_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "873 new" in result.stdout
    assert rows(db) == 873


def test_cli_import_of_a_missing_file_fails_cleanly(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    missing = tmp_path / "no-such-file.json"
    result = repwise("catalog", "import", str(missing), database_url=url, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert str(missing) in result.stderr
    assert "No such file" in result.stderr or "cannot read" in result.stderr
    assert "new" not in result.stdout


def test_cli_import_of_a_malformed_file_names_the_record(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    records = free_records()[:5]
    records[3] = {k: v for k, v in records[3].items() if k != "id"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records), encoding="utf-8")
    result = repwise("catalog", "import", str(bad), database_url=url, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "exercises[3].id" in result.stderr
    assert exercise_count(url) == 0


# --- the imported catalog through the API ---------------------------------------------------


def test_a_user_cannot_change_imported_exercises(server, clock, tmp_path):
    few = tmp_path / "few.json"
    few.write_text(json.dumps(free_records()[:3]), encoding="utf-8")
    import_free_exercise_db(server.server.db, few, clock)
    token = register(server).access_token
    error = rpc_error(
        server.catalog.DeleteExercise,
        catalog_pb2.DeleteExerciseRequest(id="3-4-sit-up"),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert get(server, token, "3-4-sit-up").name == "3/4 Sit-Up"
