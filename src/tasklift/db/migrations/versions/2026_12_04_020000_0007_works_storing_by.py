"""works: storing_by, the engine still storing a large work's jobs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 02:00:00

A large work's jobs are stored in chunks while it runs (on PostgreSQL until near its end). An
engine that dies meanwhile leaves the work with fewer job rows than ``n_jobs``: it never ends.
``storing_by`` names the engine storing the rest (``NULL`` once every job is stored), so that
engine, restarted, ends the work instead of resuming it, and no other engine touches it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("works", schema=None) as batch_op:
        batch_op.add_column(sa.Column("storing_by", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("works", schema=None) as batch_op:
        batch_op.drop_column("storing_by")
