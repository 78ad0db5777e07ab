"""workout events: outbox, processed events (consumers' inbox), materialized user metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 16:33:22.289664
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import server.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("workout_id", sa.String(length=36), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("occurred_at", server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("published_at", server.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("parked_at", server.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_outbox_events_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_events_unpublished",
            ["id"],
            unique=False,
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        )
        batch_op.create_index(batch_op.f("ix_outbox_events_user_id"), ["user_id"], unique=False)

    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("processed_at", server.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_processed_events_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_processed_events")),
    )
    with op.batch_alter_table("processed_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_processed_events_user_id"), ["user_id"], unique=False)
    op.create_table(
        "user_metrics",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("current_day_streak", sa.Integer(), nullable=False),
        sa.Column("longest_day_streak", sa.Integer(), nullable=False),
        sa.Column("current_week_streak", sa.Integer(), nullable=False),
        sa.Column("longest_week_streak", sa.Integer(), nullable=False),
        sa.Column("workouts_this_week", sa.Integer(), nullable=False),
        sa.Column("weekly_goal", sa.Integer(), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("total_workouts", sa.Integer(), nullable=False),
        sa.Column("total_sets", sa.BigInteger(), nullable=False),
        sa.Column("total_volume_kg", sa.Float(), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("last_workout_at", server.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("computed_at", server.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("applied_change_seq", sa.BigInteger(), nullable=False),
        sa.Column("events_applied", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", server.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_metrics_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_metrics")),
    )


def downgrade() -> None:
    op.drop_table("user_metrics")
    with op.batch_alter_table("processed_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_processed_events_user_id"))
    op.drop_table("processed_events")
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_events_user_id"))
        batch_op.drop_index(
            "ix_outbox_events_unpublished",
            postgresql_where=sa.text("published_at IS NULL"),
            sqlite_where=sa.text("published_at IS NULL"),
        )
    op.drop_table("outbox_events")
