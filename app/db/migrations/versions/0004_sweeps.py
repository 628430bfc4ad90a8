"""Sweeps: their requests, their trials (configuration, seed, job version) and ASHA's decisions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128)),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("cancelled_at", sa.String(32)),
    )
    op.create_index("sweeps_by_created", "sweeps", ["created_at", "id"])
    op.create_table(
        "sweep_trials",
        sa.Column("sweep", sa.String(64), primary_key=True),
        sa.Column("trial", sa.Integer, primary_key=True),
        sa.Column("version", sa.String(128), nullable=False, unique=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sweep_decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sweep", sa.String(64), nullable=False),
        sa.Column("rung", sa.Integer, nullable=False),
        sa.Column("trial", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("metric", sa.Float),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.UniqueConstraint("sweep", "rung", "trial", name="sweep_decisions_once"),
    )


def downgrade() -> None:
    op.drop_table("sweep_decisions")
    op.drop_table("sweep_trials")
    op.drop_index("sweeps_by_created", table_name="sweeps")
    op.drop_table("sweeps")
