"""Issue 18: wrong results and API traps (when= and reuse, exact types, skipped inputs,
as_completed, MapResult lookups, signature checks, messages, duplicate kwargs)."""

from __future__ import annotations

import math

import flowfns
import issue18fns
import numpy as np
import pytest

from tasklift import (
    CompletedJob,
    JobFailure,
    JobSkipped,
    MapResult,
    SubmissionError,
    WorkFailed,
    Workflow,
    get_unique_id_for_dict,
)
from tasklift.api.engines import embedded_engine


def run(settings, fn, *args, **kwargs):
    return Workflow(func=fn, settings=settings, **kwargs).run(*args)


def _states(results):
    return [r.state if isinstance(r, JobFailure) else r for r in results]


# ---------------------------------------------------------------- 1. when= is part of reuse
def test_when_condition_switched_by_an_argument_is_not_reused(settings):
    def chain(cut):
        gen = flowfns.generate(group_kwargs=[{"seed": s} for s in range(4)], return_work=True)
        extra = {} if cut is None else {"when": lambda g: g["seed"] % 2 == cut}
        sim = issue18fns.seed_of(events=gen.each(), return_work=True, **extra)
        return _states(sim.results(timeout=60)), sim.n_reused

    assert run(settings, chain, None) == ([0, 1, 2, 3], 0)
    assert run(settings, chain, 0) == ([0, "skipped", 2, "skipped"], 0)
    # the predicate's captured value is part of it too
    assert run(settings, chain, 1) == (["skipped", 1, "skipped", 3], 0)
    # the same condition again reuses the finished jobs
    assert run(settings, chain, 1) == (["skipped", 1, "skipped", 3], 2)  # skips re-applied
    assert run(settings, chain, None) == ([0, 1, 2, 3], 4)


# ---------------------------------------------------------------- 2. exact types
def test_json_kwargs_and_results_keep_their_types(settings):
    def wf():
        return issue18fns.types_of(a=np.arange(3), t=(1, 2), d={1: "x", 2: "y"},
                                   n=np.float64(0.5), f=np.int64(7))

    out = run(settings, wf)
    assert out["got"] == ["ndarray", "tuple", ["int", "int"], "float", "int"]
    assert isinstance(out["doubled"], np.ndarray)
    assert out["doubled"].tolist() == [0, 2, 4]
    assert out["pair"] == (1, 2)
    assert out["by_int"] == {1: "one", 2: "two"}
    assert math.isnan(out["nan"])


# ---------------------------------------------------------------- 9. skipped inputs
def test_result_of_a_skipped_job_raises_job_skipped(settings):
    def chain():
        gen = flowfns.generate(seed=3, return_work=True)  # ok is False for seed 3
        sim = flowfns.simulate(events=gen, when=lambda g: g["ok"], return_work=True)
        rec = flowfns.reconstruct(hits=sim, return_work=True)  # its input was skipped
        with pytest.raises(JobSkipped, match="skipped") as info:
            rec.result(timeout=60)
        with pytest.raises(JobSkipped):
            sim.result(timeout=60)
        listed = rec.results(timeout=60)
        return info.value.failure.state, _states(listed), rec.work_id

    state, listed, rec_id = run(settings, chain)
    assert state == "skipped"
    assert listed == ["skipped"]
    row = embedded_engine(settings).work_row(rec_id)
    assert (row["status"], row["n_skipped"], row["n_finished"], row["n_failed"]) == (
        "finished", 1, 0, 0)


# ---------------------------------------------------------------- 10. as_completed
def test_as_completed_tells_which_kwargs_gave_which_result(settings):
    def wf():
        w = issue18fns.slow(group_kwargs=[{"x": i, "delay": 0.05 * (3 - i)} for i in range(3)],
                            return_work=True)
        done = list(w.as_completed(timeout=60))
        return done, [(kw["x"], value) for kw, value in done]

    done, pairs = run(settings, wf)
    assert all(isinstance(j, CompletedJob) for j in done)
    assert sorted(pairs) == [(0, 0), (1, 1), (2, 2)]
    assert sorted((j.index, j.result()) for j in done) == [(0, 0), (1, 1), (2, 2)]
    assert {j.key for j in done} == {
        get_unique_id_for_dict({"x": i, "delay": 0.05 * (3 - i)}) for i in range(3)}


# ---------------------------------------------------------------- 11. MapResult lookups
def test_map_result_is_found_by_the_element_and_its_id(settings):
    def wf():
        points = [{"x": i, "y": i % 3} for i in range(5)]
        res = flowfns_scaled(points)
        assert isinstance(res, MapResult)
        return (
            [res[get_unique_id_for_dict(p)] for p in points],
            [res[p] for p in points],
            [res.get_result(key=get_unique_id_for_dict(p)) for p in points],
            get_unique_id_for_dict(points[0]) in res,
            len(res),
        )

    by_id, by_element, by_key, contained, n = run(settings, wf)
    expected = [(10 * i + i % 3) * 2.0 for i in range(5)]
    assert by_id == by_element == by_key == expected
    assert contained and n == 5


def flowfns_scaled(points):
    import workfns

    return workfns.scaled(scale=2.0, group_kwargs=points)


def test_get_result_of_a_missing_element_names_the_kwargs(settings):
    def wf():
        res = flowfns_scaled([{"x": 1}])
        with pytest.raises(KeyError, match="'x': 99"):
            res.get_result(args={"x": 99})
        return True

    assert run(settings, wf)


# ---------------------------------------------------------------- 12. signature at submission
def test_pre_kwargs_colliding_with_positional_elements_fail_at_submission(settings):
    from tasklift import work

    collide = work(pre_kwargs={"b": 5})(issue18fns.two_args.func)

    def wf():
        with pytest.raises(SubmissionError, match=r"job #0 .*multiple values for argument 'b'"
                                                  r".*pre_kwargs gives b"):
            collide(group_kwargs=[(1, 2), (3, 4)])
        with pytest.raises(SubmissionError, match=r"job #1 .*missing a required argument: 'b'"):
            issue18fns.two_args(group_kwargs=[{"a": 1, "b": 2}, {"a": 1, "c": 2}])
        return True

    assert run(settings, wf)
    with embedded_engine(settings).db.connect() as conn:
        from sqlalchemy import func, select

        from tasklift.db.models import Job

        assert conn.execute(select(func.count()).select_from(Job)).scalar() == 0


# ---------------------------------------------------------------- 13. messages
def test_work_failed_names_kwargs_and_min_success_as_a_share(settings):
    def wf():
        with pytest.raises(WorkFailed) as info:
            issue18fns.fails_on(group_kwargs=[{"x": i, "bad": [1]} for i in range(3)])
        return str(info.value)

    text = run(settings, wf)
    assert "100 %" in text
    assert "{'x': 1, 'bad': [1]}" in text


# ---------------------------------------------------------------- 14. duplicate kwargs
def test_duplicate_kwargs_run_as_jobs_of_their_own_and_are_reused(settings, tmp_path):
    marks = tmp_path / "marks"

    def wf():
        return issue18fns.counted(group_kwargs=[{"x": 1, "marker_dir": str(marks)}] * 3
                                  + [{"x": 2, "marker_dir": str(marks)}])

    assert run(settings, wf) == [1, 1, 1, 2]
    assert len(list(marks.iterdir())) == 4  # each repeat ran
    assert run(settings, wf) == [1, 1, 1, 2]
    assert len(list(marks.iterdir())) == 4  # and each is reused on a re-run

    def single():  # the first occurrence keeps the plain key: reuse of a one-job call
        return issue18fns.counted(x=1, marker_dir=str(marks))

    assert run(settings, single) == 1
    assert len(list(marks.iterdir())) == 4
