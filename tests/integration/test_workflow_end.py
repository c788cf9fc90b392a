"""A workflow that fails or is interrupted leaves nothing running behind it."""

from __future__ import annotations

import time

import pytest
import workfns
from sqlalchemy import select

from tasklift import Workflow, WorkflowState, WorkState
from tasklift.api.engines import embedded_engine
from tasklift.db.jobs import cancel_open_jobs
from tasklift.db.models import Job, Work
from tasklift.db.models import Workflow as WorkflowRow
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


def test_a_cancelled_workflow_is_marked_before_its_works_are_cancelled(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever sees a work end cancelled finds its workflow cancelled already, and why.

    (A client that did not, reported a plain work failure instead of the cancel reason.)
    """
    engine = embedded_engine(settings)
    seen: list[tuple[str, str | None]] = []
    cancel_work = engine.cancel_work

    def watched_cancel(work_id: int, message: str = "cancelled by the user") -> int:
        with engine.db.connect() as conn:
            row = conn.execute(select(WorkflowRow.status, WorkflowRow.error)).one()
        seen.append((row.status, row.error))
        return cancel_work(work_id, message)

    def wf():
        workfns.sleep_then(
            group_kwargs=[{"x": i, "delay": 60.0} for i in range(2)], return_work=True
        )
        with engine.db.connect() as conn:
            [workflow_id] = conn.execute(select(WorkflowRow.id)).scalars().all()
        monkeypatch.setattr(engine, "cancel_work", watched_cancel)
        engine.finish_workflow(workflow_id, WorkflowState.CANCELLED, None, "cancelled by a test")

    started = time.monotonic()
    Workflow(func=wf, settings=settings).run()
    assert seen == [(WorkflowState.CANCELLED.value, "cancelled by a test")]
    with engine.db.connect() as conn:
        assert conn.execute(select(Work.status)).scalars().all() == [WorkState.CANCELLED.value]
        messages = conn.execute(select(Job.error_message)).scalars().all()
    assert messages == ["its workflow cancelled: cancelled by a test"] * 2
    assert time.monotonic() - started < 30  # the running jobs were stopped, not waited for


def test_a_late_outcome_of_a_job_ended_elsewhere_keeps_the_stored_end(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A job cancelled from another process (``tasklift cancel`` on the same database) while
    this engine runs it: its outcome, when it comes, is dropped (logged), the stored end and
    counters stand, and the rest of the work is recorded as usual."""
    engine = embedded_engine(settings)

    def wf():
        work = workfns.sleep_then(
            group_kwargs=[{"x": 0, "delay": 1.5}, {"x": 1, "delay": 0.0}], return_work=True
        )
        deadline = time.monotonic() + 10
        while work.progress.finished < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with engine.db.begin() as conn:  # what another process's cancel writes
            cancel_open_jobs(conn, work.work_id, "cancelled elsewhere")
        time.sleep(3.0)  # job 0's outcome arrives meanwhile (after 1.5 s)
        return work.work_id

    work_id = Workflow(func=wf, settings=settings).run()
    with engine.db.connect() as conn:
        row = conn.execute(
            select(Work.n_finished, Work.n_cancelled, Work.n_failed).where(Work.id == work_id)
        ).one()
        jobs = conn.execute(select(Job.idx, Job.state).order_by(Job.idx)).all()
    assert jobs == [(0, "cancelled"), (1, "finished")]
    assert tuple(row) == (1, 1, 0)  # nothing counted twice
    assert "late outcomes of 1 jobs that had ended already" in caplog.text
