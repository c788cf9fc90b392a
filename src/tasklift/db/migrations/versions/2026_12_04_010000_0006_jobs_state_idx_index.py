"""jobs: the (work_id, state) index gains idx, so a work's next pending jobs are an index range

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 01:00:00

A large work's pending jobs are paged in ``idx`` order (``queries.pending_jobs``). With the
index on ``(work_id, state)`` alone, each page read every pending job of the work and sorted
them: O(queue depth) per page (issue 17, ``bench/queue_depth.py``). On
``(work_id, state, idx)`` a page is one range scan of the index, in order. The new index serves
every query the old one did (its leading columns are the same).
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_work_id_state_idx", ["work_id", "state", "idx"], unique=False
        )
        batch_op.drop_index("ix_jobs_work_id_state")


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_work_id_state", ["work_id", "state"], unique=False)
        batch_op.drop_index("ix_jobs_work_id_state_idx")
