"""data-flow: job_deps, work_edges, jobs.n_waiting, works.n_skipped, works.when_predicate;
jobs.heartbeat_at

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_deps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("upstream_job_id", sa.Integer(), nullable=False),
        sa.Column("arg", sa.String(length=200), nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_deps_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["upstream_job_id"], ["jobs.id"], name=op.f("fk_job_deps_upstream_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_deps")),
    )
    op.create_index(op.f("ix_job_deps_job_id"), "job_deps", ["job_id"], unique=False)
    op.create_index(
        op.f("ix_job_deps_upstream_job_id"), "job_deps", ["upstream_job_id"], unique=False
    )
    op.create_table(
        "work_edges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("work_id", sa.Integer(), nullable=False),
        sa.Column("upstream_work_id", sa.Integer(), nullable=False),
        sa.Column("arg", sa.String(length=200), nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=False),
        sa.ForeignKeyConstraint(
            ["work_id"], ["works.id"], name=op.f("fk_work_edges_work_id_works")
        ),
        sa.ForeignKeyConstraint(
            ["upstream_work_id"], ["works.id"], name=op.f("fk_work_edges_upstream_work_id_works")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_edges")),
    )
    op.create_index(op.f("ix_work_edges_work_id"), "work_edges", ["work_id"], unique=False)
    op.create_index(
        op.f("ix_work_edges_upstream_work_id"), "work_edges", ["upstream_work_id"], unique=False
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("n_waiting", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("heartbeat_at", sa.Float(), nullable=True))
    with op.batch_alter_table("works", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("n_skipped", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("when_predicate", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("works", schema=None) as batch_op:
        batch_op.drop_column("when_predicate")
        batch_op.drop_column("n_skipped")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("n_waiting")
    op.drop_index(op.f("ix_work_edges_upstream_work_id"), table_name="work_edges")
    op.drop_index(op.f("ix_work_edges_work_id"), table_name="work_edges")
    op.drop_table("work_edges")
    op.drop_index(op.f("ix_job_deps_upstream_job_id"), table_name="job_deps")
    op.drop_index(op.f("ix_job_deps_job_id"), table_name="job_deps")
    op.drop_table("job_deps")
