"""Tables of trained models: population models, per-user model versions, and
each user's training state (the pointer to the current version, and claims)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from server.db import Base, UTCDateTime


class PopulationModel(Base):
    """W0 and the default score weights, fitted on everyone's history."""

    __tablename__ = "population_models"

    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    schema_version: Mapped[int] = mapped_column(Integer)
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # float32, row-major, STATE_DIMENSIONS × feature dimensions.
    coefficients: Mapped[bytes] = mapped_column(LargeBinary)
    lam: Mapped[float] = mapped_column(Float)
    weights: Mapped[list[float]] = mapped_column(JSON)
    sample_count: Mapped[int] = mapped_column(BigInteger)
    user_count: Mapped[int] = mapped_column(Integer)


class UserModel(Base):
    """One trained version of a user's parameters. Never updated once written."""

    __tablename__ = "user_models"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    schema_version: Mapped[int] = mapped_column(Integer)
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime())
    population_version: Mapped[int] = mapped_column(BigInteger)
    # float32 rows of W that differ from W0: see server/training/codec.py.
    coefficients: Mapped[bytes] = mapped_column(LargeBinary)
    lam: Mapped[float] = mapped_column(Float)
    weights: Mapped[list[float]] = mapped_column(JSON)
    # Sequence statistics as of trained_at: see server/training/codec.py.
    stats: Mapped[bytes] = mapped_column(LargeBinary)
    sample_count: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)


class TrainingState(Base):
    """Per user: the current model version, whether training is queued or
    claimed, and the change number of the logs the current model saw."""

    __tablename__ = "training_states"
    __table_args__ = (Index("ix_training_states_lease_until", "lease_until"),)

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    current_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    trained_change_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A worker's claim: held until lease_until, so a crashed worker's users free up.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    train_now_after: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
