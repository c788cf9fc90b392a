"""results cursor (jobs.done_seq, works.last_seq) and job claims (jobs.claimed_by)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 01:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("works", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_seq", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("done_seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_jobs_work_id_done_seq", ["work_id", "done_seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_work_id_done_seq")
        batch_op.drop_column("done_seq")
        batch_op.drop_column("claimed_by")
    with op.batch_alter_table("works", schema=None) as batch_op:
        batch_op.drop_column("last_seq")
