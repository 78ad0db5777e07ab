"""Tables of the exercise catalog."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime


class Exercise(Base):
    """A shared (owner_id NULL) or private exercise."""

    __tablename__ = "exercises"
    __table_args__ = (
        Index("ix_exercises_owner_id_name_key", "owner_id", "name_key"),
        # Slugs are unique within the shared catalog and within each user's own exercises,
        # so one user's slugs reveal nothing about another's.
        Index(
            "uq_exercises_public_slug",
            "slug",
            unique=True,
            sqlite_where=text("owner_id IS NULL"),
            postgresql_where=text("owner_id IS NULL"),
        ),
        Index(
            "uq_exercises_owner_id_slug",
            "owner_id",
            "slug",
            unique=True,
            sqlite_where=text("owner_id IS NOT NULL"),
            postgresql_where=text("owner_id IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    slug: Mapped[str] = mapped_column(String(120))
    name: Mapped[str] = mapped_column(String(200))
    # Lower-cased name: the sort key of lists.
    name_key: Mapped[str] = mapped_column(String(200))
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Lower-cased name and aliases joined by "|", for text search.
    search_text: Mapped[str] = mapped_column(String(4000))
    primary_muscles: Mapped[list[str]] = mapped_column(JSON, default=list)
    secondary_muscles: Mapped[list[str]] = mapped_column(JSON, default=list)
    equipment: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    mechanic: Mapped[str | None] = mapped_column(String(16), nullable=True)
    force: Mapped[str | None] = mapped_column(String(16), nullable=True)
    level: Mapped[str | None] = mapped_column(String(16), nullable=True)
    category: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    instructions: Mapped[list[str]] = mapped_column(JSON, default=list)
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True
    )
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    # Where it came from: "builtin", "free-exercise-db:<id>", or NULL for created through the API.
    source_ref: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ExerciseMuscle(Base):
    """One row per muscle an exercise works, so lists can filter by muscle with an index."""

    __tablename__ = "exercise_muscles"

    exercise_id: Mapped[str] = mapped_column(
        ForeignKey("exercises.id", ondelete="CASCADE"), primary_key=True
    )
    muscle: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)
    is_primary: Mapped[bool] = mapped_column(Boolean)


class CatalogState(Base):
    """Which version of the built-in catalog this database has been given."""

    __tablename__ = "catalog_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)
