"""A workflow that fails or is interrupted leaves nothing running behind it."""

from __future__ import annotations

import time

import pytest
import workfns
from sqlalchemy import select

from tasklift import Workflow, WorkState
from tasklift.api.run import embedded_engine
from tasklift.db.models import Job, Work
from tasklift.settings import Settings


@pytest.mark.parametrize("raised", [KeyboardInterrupt, RuntimeError])
def test_a_workflow_that_raises_cancels_its_running_works(
    settings: Settings, raised: type[BaseException]
) -> None:
    def wf():
        workfns.sleep_then(
            group_kwargs=[{"x": i, "delay": 60.0} for i in range(4)], return_work=True
        )
        time.sleep(0.3)  # the jobs are running
        raise raised("stopped by hand")

    started = time.monotonic()
    with pytest.raises(raised):
        Workflow(func=wf, settings=settings).run()
    with embedded_engine(settings).db.connect() as conn:
        works = conn.execute(select(Work.status, Work.n_cancelled)).all()
        states = sorted(conn.execute(select(Job.state, Job.error_message)).all())
    assert works == [(WorkState.CANCELLED.value, 4)]  # was: running, with its jobs queued
    assert [s for s, _ in states] == ["cancelled"] * 4
    assert all("its workflow failed: " in m and "stopped by hand" in m for _, m in states)
    assert time.monotonic() - started < 30  # the running jobs were stopped, not waited for
