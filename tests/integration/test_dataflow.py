"""Data-flow workflows: works as inputs of works, job-level pipelining, failure and skip
propagation, retry releasing downstream jobs, conditions and sub-workflows."""

from __future__ import annotations

import flowfns
import pytest
from sqlalchemy import select

from tasklift import SubmissionError, WorkFailed, Workflow, workflow
from tasklift.api.engines import embedded_engine
from tasklift.db.models import Job, Work
from tasklift.db.models import Workflow as WorkflowRow


def jobs_of(settings, work_id):
    with embedded_engine(settings).db.connect() as conn:
        return conn.execute(
            select(Job.idx, Job.state, Job.started_at, Job.finished_at, Job.error_message)
            .where(Job.work_id == work_id).order_by(Job.idx)
        ).all()


def test_three_stage_chain_pipelines_jobs_and_fans_in(settings):
    def chain(n):
        gen = flowfns.generate(group_kwargs=[{"seed": s, "delay": 0.03} for s in range(n)],
                               return_work=True)
        sim = flowfns.simulate(events=gen.each(), return_work=True)
        rec = flowfns.reconstruct(hits=sim.each(), return_work=True)
        total = flowfns.summarize(parts=rec.all(), return_work=True)
        return total.result(timeout=120), [gen.work_id, sim.work_id, rec.work_id]

    result, (gen_id, sim_id, rec_id) = Workflow(func=chain, settings=settings).run(50)
    expected = [sum(10 * e for e in (s, s + 1)) for s in range(50)]
    assert result == {"n": 50, "total": sum(expected), "first": expected[0]}
    gen_jobs, sim_jobs = jobs_of(settings, gen_id), jobs_of(settings, sim_id)
    # job-level pipelining: stage 2 job 0 started before stage 1 job 49 finished
    assert sim_jobs[0].started_at < gen_jobs[49].finished_at
    assert all(j.state == "finished" for j in jobs_of(settings, rec_id))


def test_failure_in_the_middle_marks_exactly_the_dependents(settings, tmp_path):
    marker = tmp_path / "fixed"

    def chain():
        gen = flowfns.generate(
            group_kwargs=[{"seed": s, "fail": [3, 7], "marker": str(marker)} for s in range(10)],
            return_work=True)
        sim = flowfns.simulate(events=gen.each(), return_work=True)
        rec = flowfns.reconstruct(hits=sim.each(), return_work=True)
        total = flowfns.summarize(parts=rec.all(), return_work=True)
        with pytest.raises(WorkFailed):
            total.result(timeout=60)
        for w in (gen, sim, rec):
            w.wait(timeout=60)
        return [w.work_id for w in (gen, sim, rec, total)]

    wf = Workflow(func=chain, settings=settings)
    gen_id, sim_id, rec_id, total_id = wf.run()
    states = {w: [j.state for j in jobs_of(settings, w)] for w in (gen_id, sim_id, rec_id)}
    for work_id in (gen_id, sim_id, rec_id):
        broken = {i for i, s in enumerate(states[work_id]) if s != "finished"}
        assert broken == {3, 7}
    assert [states[sim_id][i] for i in (3, 7)] == ["upstream_failed"] * 2
    assert [states[gen_id][i] for i in (3, 7)] == ["failed"] * 2
    [total_job] = jobs_of(settings, total_id)
    assert total_job.state == "upstream_failed"
    sim3 = jobs_of(settings, sim_id)[3]
    assert "generator 3 broke" in sim3.error_message  # the upstream error is referenced

    # retrying the failed upstream jobs releases everything downstream of them
    marker.touch()
    engine = embedded_engine(settings)
    assert engine.retry_failed(gen_id) == 2
    import time

    deadline = time.monotonic() + 60
    while engine.work_row(total_id)["status"] != "finished":
        assert time.monotonic() < deadline, engine.work_row(total_id)
        time.sleep(0.05)
    for work_id in (gen_id, sim_id, rec_id, total_id):
        assert all(j.state == "finished" for j in jobs_of(settings, work_id))
        assert engine.work_row(work_id)["status"] == "finished"


def test_when_condition_skips_and_skips_propagate(settings):
    def branch():
        gen = flowfns.generate(group_kwargs=[{"seed": s} for s in range(6)], return_work=True)
        sim = flowfns.simulate(events=gen.each(), when=lambda g: g["ok"], return_work=True)
        rec = flowfns.reconstruct(hits=sim.each(), return_work=True)
        rec.wait(timeout=60)
        return [w.work_id for w in (sim, rec)], rec.results(timeout=60)

    (sim_id, rec_id), results = Workflow(func=branch, settings=settings).run()
    skipped = {0, 3}  # seed % 3 == 0 -> ok False
    assert [j.state for j in jobs_of(settings, sim_id)] == [
        "skipped" if i in skipped else "finished" for i in range(6)]
    assert [j.state for j in jobs_of(settings, rec_id)] == [
        "skipped" if i in skipped else "finished" for i in range(6)]
    engine = embedded_engine(settings)
    assert engine.work_row(sim_id)["status"] == "finished"  # skipped is not failed
    assert engine.work_row(sim_id)["n_skipped"] == 2
    assert [r for r in results if not hasattr(r, "error_type")] == [
        sum(10 * e for e in (s, s + 1)) for s in range(6) if s not in skipped]


def test_single_job_handle_and_bare_work_as_inputs(settings):
    def wf():
        one = flowfns.double(x=21, return_work=True)
        many = flowfns.double(group_kwargs=[{"x": i} for i in range(4)], return_work=True)
        a = flowfns.double(x=one, return_work=True)          # bare one-job work: its result
        b = flowfns.summarize(parts=many, return_work=True)  # bare multi-job work: all()
        c = flowfns.double(x=many[2], return_work=True)      # one job of a work
        return a.result(timeout=60), b.result(timeout=60), c.result(timeout=60)

    assert Workflow(func=wf, settings=settings).run() == (84, {"n": 4, "total": 12, "first": 0},
                                                          8)


def test_bad_inputs_are_refused(settings):
    holder = {}

    def first():
        holder["w"] = flowfns.double(group_kwargs=[{"x": 1}, {"x": 2}], return_work=True)
        holder["w"].wait(timeout=60)

    def second():
        with pytest.raises(SubmissionError, match="another workflow"):
            flowfns.double(x=holder["w"].each())
        three = flowfns.double(group_kwargs=[{"x": i} for i in range(3)], return_work=True)
        two = flowfns.double(group_kwargs=[{"x": i} for i in range(2)], return_work=True)
        with pytest.raises(SubmissionError, match="different lengths"):
            flowfns.summarize(parts=three.each(), x=two.each())
        with pytest.raises(SubmissionError, match="pair one to one"):
            flowfns.double(x=three.each(), group_kwargs=[{}, {}])
        with pytest.raises(SubmissionError, match="when= tests an input"):
            flowfns.double(x=1, when=lambda r: True)
        return True

    Workflow(func=first, settings=settings).run()
    assert Workflow(func=second, settings=settings).run()


def test_sub_workflow_runs_as_a_child(settings):
    @workflow(name="inner")
    def inner(n):
        return sum(flowfns.double(group_kwargs=[{"x": i} for i in range(n)]))

    def outer():
        return inner(3) + inner(4)

    wf = Workflow(func=outer, settings=settings)
    assert wf.run() == 2 * (3 + 6)
    with embedded_engine(settings).db.connect() as conn:
        children = conn.execute(
            select(WorkflowRow.name, WorkflowRow.status, WorkflowRow.result)
            .where(WorkflowRow.parent_id == wf.workflow_id)
        ).all()
        n_works_parent = conn.execute(
            select(Work.id).where(Work.workflow_id == wf.workflow_id)).all()
    assert [(c.name, c.status, c.result) for c in children] == [
        ("inner", "finished", b"6"), ("inner", "finished", b"12")]
    assert n_works_parent == []  # the works belong to the children
