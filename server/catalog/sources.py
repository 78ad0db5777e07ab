"""Exercise sources: the built-in default catalog and free-exercise-db JSON files."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from server.catalog.models import CatalogState
from server.catalog.service import ExerciseSpec, check_spec, slugify, upsert_by_source
from server.db import Database
from server.errors import InvalidArgument

log = logging.getLogger(__name__)
DEFAULT_CATALOG = Path(__file__).parent / "data" / "default_catalog.json"
FREE_EXERCISE_DB_PREFIX = "free-exercise-db:"


@dataclass(frozen=True)
class ImportReport:
    created: int
    updated: int
    unchanged: int


def _spec(record: dict[str, Any], where: str) -> ExerciseSpec:
    try:
        return check_spec(
            ExerciseSpec(
                name=record["name"],
                slug=record.get("slug", ""),
                aliases=tuple(record.get("aliases", ())),
                primary_muscles=tuple(record["primary_muscles"]),
                secondary_muscles=tuple(record.get("secondary_muscles", ())),
                equipment=record.get("equipment"),
                mechanic=record.get("mechanic"),
                force=record.get("force"),
                level=record.get("level"),
                category=record.get("category"),
                instructions=tuple(record.get("instructions", ())),
            ),
            prefix=where,
        )
    except KeyError as missing:
        raise InvalidArgument(f"{where}.{missing.args[0]}", "is required") from None


def default_catalog() -> tuple[int, list[tuple[str, ExerciseSpec]]]:
    data = json.loads(DEFAULT_CATALOG.read_text())
    items = [
        (f"builtin:{e['slug']}", _spec(e, f"default_catalog[{i}]"))
        for i, e in enumerate(data["exercises"])
    ]
    return int(data["version"]), items


def seed_default_catalog(db: Database, now: Callable[[], datetime]) -> ImportReport | None:
    """Give the database the built-in catalog once per catalog version."""
    version, items = default_catalog()

    def work(s: Session) -> ImportReport | None:
        state = s.get(CatalogState, "default_catalog_version", with_for_update=True)
        if state is not None and state.value >= version:
            return None
        report = ImportReport(*upsert_by_source(s, items, now()))
        if state is None:
            s.add(CatalogState(key="default_catalog_version", value=version))
        else:
            state.value = version
        return report

    report = db.run(work)
    if report:
        log.info("default catalog v%d: %s", version, report)
    return report


def _vocab(value: Any) -> Any:
    """free-exercise-db spells "lower back", "e-z curl bar", "body only"; we spell lower_back..."""
    if value is None:
        return None
    return str(value).strip().lower().replace("e-z", "ez").replace(" ", "_").replace("-", "_")


def parse_free_exercise_db(records: Any) -> list[tuple[str, ExerciseSpec]]:
    """free-exercise-db's exercises.json (a list of records) as (source_ref, spec) pairs."""
    if not isinstance(records, list):
        raise InvalidArgument("file", "must hold a JSON array of exercises")
    items: list[tuple[str, ExerciseSpec]] = []
    seen: set[str] = set()
    for i, record in enumerate(records):
        where = f"exercises[{i}]"
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("id"), str)
            or not record["id"]
        ):
            raise InvalidArgument(f"{where}.id", "every exercise needs a string id")
        if record["id"] in seen:
            raise InvalidArgument(f"{where}.id", f"duplicate id {record['id']!r}")
        seen.add(record["id"])
        spec = _spec(
            {
                "name": record.get("name", ""),
                "slug": slugify(record["id"].replace("_", " ")),
                "primary_muscles": [_vocab(m) for m in record.get("primaryMuscles") or []],
                "secondary_muscles": [_vocab(m) for m in record.get("secondaryMuscles") or []],
                "equipment": _vocab(record.get("equipment")),
                "mechanic": _vocab(record.get("mechanic")),
                "force": _vocab(record.get("force")),
                "level": _vocab(record.get("level")),
                "category": _vocab(record.get("category")),
                "instructions": record.get("instructions") or [],
            },
            where,
        )
        items.append((FREE_EXERCISE_DB_PREFIX + record["id"], spec))
    return items


def import_free_exercise_db(db: Database, path: Path, now: Callable[[], datetime]) -> ImportReport:
    """Import (or refresh) a free-exercise-db file into the shared catalog. Idempotent."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgument("file", f"cannot read {path}: {error}") from None
    items = parse_free_exercise_db(records)
    return db.run(lambda s: ImportReport(*upsert_by_source(s, items, now())))
