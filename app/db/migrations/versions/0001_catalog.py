"""The catalog: jobs (the queue), their checkpoints, labels, models, aliases, deletions in progress.

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("layers", sa.JSON, nullable=False),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lost", sa.Integer, nullable=False),
        sa.Column("worker", sa.JSON),
        sa.Column("resumed_from", sa.JSON),
        sa.Column("lease_until", sa.Float),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32)),
        sa.Column("finished_at", sa.String(32)),
    )
    op.create_index("jobs_by_created", "jobs", ["created_at", "version"])
    op.create_index("jobs_by_status", "jobs", ["status", "created_at", "version"])
    op.create_index("jobs_by_dataset", "jobs", ["dataset", "created_at", "version"])
    op.create_index("jobs_by_lease", "jobs", ["status", "lease_until"])

    op.create_table(
        "checkpoints",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("latest", sa.JSON, nullable=False),
        sa.Column("previous", sa.JSON),
    )

    op.create_table(
        "labels",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(63), primary_key=True),
        sa.Column("value", sa.String(128), nullable=False),
    )
    op.create_index("labels_by_pair", "labels", ["key", "value", "version"])

    op.create_table(
        "models",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("test_accuracy", sa.Float),
        sa.Column("epochs", sa.Integer),
        sa.Column("num_parameters", sa.BigInteger),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
    )
    op.create_index("models_by_created", "models", ["created_at", "version"])
    op.create_index("models_by_dataset", "models", ["dataset", "created_at", "version"])
    op.create_index("models_by_accuracy", "models", ["test_accuracy", "version"])
    op.create_index("models_by_dataset_accuracy", "models", ["dataset", "test_accuracy", "version"])

    op.create_table(
        "aliases",
        sa.Column("alias", sa.String(128), primary_key=True),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
    )
    op.create_index("ix_aliases_version", "aliases", ["version"])

    op.create_table(
        "deletions",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("requested_at", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    for table in ("deletions", "aliases", "models", "labels", "checkpoints", "jobs"):
        op.drop_table(table)
