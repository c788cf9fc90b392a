"""The core API on the embedded engine with real worker processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import workfns
from sqlalchemy import func, select

from tasklift import (
    JobFailure,
    MapResult,
    SubmissionError,
    WorkFailed,
    Workflow,
    WorkState,
    WorkTimeout,
    get_unique_id_for_dict,
    work,
    workflow,
)
from tasklift.api.engines import embedded_engine
from tasklift.db.models import Job, Work
from tasklift.settings import Settings


def run(settings: Settings, fn, *args, **kwargs):
    return Workflow(func=fn, settings=settings, **kwargs).run(*args)


def test_map_results_by_group_element(settings):
    def wf(n):
        points = [{"x": i, "y": i % 3} for i in range(n)]
        res = workfns.scaled(scale=2.0, group_kwargs=points)
        assert isinstance(res, MapResult)
        return {get_unique_id_for_dict(p): res.get_result(args=p) for p in points}, list(res)

    by_element, keys = run(settings, wf, 30)
    assert len(by_element) == 30
    assert by_element[get_unique_id_for_dict({"x": 7, "y": 1})] == (70 + 1) * 2.0
    merged = [get_unique_id_for_dict({"x": i, "y": i % 3, "scale": 2.0}) for i in range(30)]
    assert keys == merged  # mapping keys are merged-kwargs keys, in submission order


def test_list_results_in_submission_order_not_arrival(settings):
    def wf():
        delays = [0.3, 0.0, 0.2, 0.0, 0.1, 0.0]
        return workfns.sleep_then(group_kwargs=[{"x": i, "delay": d} for i, d in enumerate(delays)])

    assert run(settings, wf) == [0, 1, 2, 3, 4, 5]


def test_single_call_returns_bare_value_and_positional_elements(settings):
    def wf():
        single = workfns.add(x=2, y=3)
        rows = workfns.positional(c=9, group_kwargs=[(1, 2), [3, 4]])
        return single, rows

    single, rows = run(settings, wf)
    assert single == 5
    assert rows == [[1, 2, 9], [3, 4, 9]]


def test_pre_kwargs_lose_to_call_and_element(settings):
    merged = work(pre_kwargs={"x": 100, "y": 100})(workfns.add.func)
    merged.__module__ = "workfns"  # not importable as-is: check the merge in-process instead
    calls = merged.calls((), {"y": 5}, [{"x": 1}, {"x": 2, "y": 7}])
    assert calls == [([], {"x": 1, "y": 5}), ([], {"x": 2, "y": 7})]
    assert merged.calls((), {}, [{}]) == [([], {"x": 100, "y": 100})]


def test_alias_multi_jobs_kwargs_list(settings):
    def wf():
        return workfns.add(y=1, multi_jobs_kwargs_list=[{"x": 1}, {"x": 2}])

    assert run(settings, wf) == [2, 3]


def test_outside_workflow_runs_in_process():
    assert workfns.add(x=1, y=2) == 3
    assert workfns.add(group_kwargs=[{"x": 1}, {"x": 2}]) == [1, 2]
    res = workfns.scaled(group_kwargs=[{"x": 1}])
    assert res.get_result(args={"x": 1}) == 10


def test_return_work_handles_run_concurrently(settings):
    def wf():
        a = workfns.sleep_then(group_kwargs=[{"x": i, "delay": 0.05} for i in range(10)],
                               return_work=True)
        b = workfns.add(group_kwargs=[{"x": i} for i in range(10)], return_work=True)
        assert a.submit() is a
        seen = sorted(value for _kwargs, value in b.as_completed(timeout=30))
        ra = a.results(timeout=30)
        return seen, ra, a.status, a.progress

    seen, ra, status, progress = run(settings, wf)
    assert seen == list(range(10))
    assert ra == list(range(10))
    assert status == WorkState.FINISHED
    assert (progress.total, progress.finished, progress.failed) == (10, 10, 0)


def test_cancel_work(settings, tmp_path):
    def wf():
        w = workfns.sleep_then(group_kwargs=[{"x": i, "delay": 0.5} for i in range(20)],
                               return_work=True)
        time.sleep(0.3)
        n = w.cancel()
        with pytest.raises(WorkFailed) as info:
            w.results(timeout=10)
        return n, info.value, w.status

    n, err, status = run(settings, wf)
    assert n > 0
    assert status == WorkState.CANCELLED
    assert sum(f.state == "cancelled" for f in err.failures) == n


def test_failure_retried_then_reported_with_traceback(settings, tmp_path):
    markers = tmp_path / "m"

    def wf():
        return workfns.flaky(group_kwargs=[{"x": 1, "marker_dir": str(markers), "fail_times": 9}])

    with pytest.raises(WorkFailed) as info:
        run(settings, wf)
    err = info.value
    assert len(list(markers.glob("1-*"))) == 3  # first run + retries=2
    [failure] = err.failures
    assert failure.error_type == "ValueError"
    assert failure.attempts == 3
    assert "bad luck for 1 on attempt 3" in failure.message
    assert "raise ValueError" in failure.traceback and "workfns.py" in failure.traceback
    assert failure.key == get_unique_id_for_dict(
        {"x": 1, "marker_dir": str(markers), "fail_times": 9})


def test_retry_recovers(settings, tmp_path):
    markers = tmp_path / "m"

    def wf():
        return workfns.flaky(group_kwargs=[{"x": i, "marker_dir": str(markers), "fail_times": 1}
                                           for i in range(4)])

    assert run(settings, wf) == [0, 1, 2, 3]
    assert len(list(markers.iterdir())) == 8


def test_min_success_gives_partial_results(settings):
    def wf():
        return workfns.half_fail(group_kwargs=[{"x": i} for i in range(6)])

    res = run(settings, wf)
    assert sorted(res.values()) == [0, 2, 4]
    assert len(res.failures) == 3
    assert all(isinstance(f, JobFailure) and f.error_type == "RuntimeError" and f.attempts == 2
               for f in res.failures)
    with pytest.raises(KeyError, match="did not succeed"):
        res.get_result(args={"x": 1})


def test_falsy_results_are_results(settings):
    kinds = ["zero", "none", "empty_list", "empty_str", "false"]

    def wf():
        return workfns.falsy(group_kwargs=[{"kind": k} for k in kinds])

    assert run(settings, wf) == [0, None, [], "", False]


def test_non_json_kwargs_refused_before_anything_is_stored(settings):
    def wf():
        workfns.add(x=1)
        with pytest.raises(SubmissionError, match="'y'") as info:
            workfns.add(group_kwargs=[{"x": 1, "y": 2}, {"x": 2, "y": object()}])
        assert info.value.key == "y"
        return True

    assert run(settings, wf)
    engine = embedded_engine(settings)
    with engine.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Work)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(Job)).scalar() == 1


def test_duplicate_kwargs_run_as_jobs_of_their_own(settings):
    def wf():
        return workfns.add(group_kwargs=[{"x": 1}, {"x": 1}])

    assert run(settings, wf) == [1, 1]  # issue 18: each repeat is its own job


def test_non_json_result_fails_without_retry_and_pickle_works(settings):
    def wf():
        with pytest.raises(WorkFailed) as info:
            workfns.returns_object(x=3)
        failure = info.value.failures[0]
        assert failure.error_type == "ResultNotSerializable"
        assert failure.attempts == 1
        assert "serializer='pickle'" in failure.message
        return workfns.pickled(s={1, 2})

    assert run(settings, wf) == {1, 2, 99}


def test_timeout_kills_and_worker_is_replaced(settings, tmp_path):
    markers = tmp_path / "m"

    def wf():
        with pytest.raises(WorkFailed) as info:
            workfns.hangs(x=1, marker_dir=str(markers))
        after = workfns.add(group_kwargs=[{"x": i} for i in range(4)])
        return info.value.failures[0], after

    start = time.monotonic()
    failure, after = run(settings, wf)
    assert time.monotonic() - start < 30
    assert failure.error_type == "Timeout"
    assert "timeout of 1 s" in failure.message
    assert failure.attempts == 2
    assert len(list(markers.iterdir())) == 2
    assert after == [0, 1, 2, 3]


def test_wait_timeout_raises_work_timeout(settings):
    def wf():
        w = workfns.sleep_then(x=1, delay=3.0, return_work=True)
        with pytest.raises(WorkTimeout, match=r"timed out after 0\.2 s"):
            w.results(timeout=0.2)
        return w.result(timeout=30)

    assert run(settings, wf) == 1


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_worker_death_costs_one_retry(settings, tmp_path, how):
    markers = tmp_path / "m"

    def wf():
        return workfns.dies_once(group_kwargs=[{"x": i, "marker_dir": str(markers), "how": how}
                                               for i in range(3)])

    assert run(settings, wf) == [0, 2, 4]
    assert len(list(markers.iterdir())) == 6


def test_job_prints_do_not_break_the_protocol_and_are_stored(settings):
    def wf():
        return workfns.noisy(group_kwargs=[{"x": i} for i in range(5)])

    assert run(settings, wf) == [0, 1, 2, 3, 4]
    with embedded_engine(settings).db.connect() as conn:
        outs = conn.execute(select(Job.stdout).order_by(Job.idx)).scalars().all()
    assert outs[3] == "hello from job 3\n"


def test_resume_reuses_finished_jobs_and_fresh_does_not(settings, tmp_path):
    markers = tmp_path / "m"

    def wf():
        return workfns.flaky(group_kwargs=[{"x": i, "marker_dir": str(markers), "fail_times": 0}
                                           for i in range(5)])

    assert run(settings, wf) == list(range(5))
    assert run(settings, wf) == list(range(5))
    assert len(list(markers.iterdir())) == 5  # second run reused every job
    assert Workflow(func=wf, settings=settings, fresh=True).run() == list(range(5))
    assert len(list(markers.iterdir())) == 10


def test_workflow_decorator_and_stored_return_value(settings):
    @workflow(name="decorated")
    def wf(n):
        return sum(workfns.add(group_kwargs=[{"x": i} for i in range(n)]))

    wfobj = Workflow(func=wf, settings=settings)
    assert wfobj.name == "decorated"
    assert wfobj.run(4) == 6
    engine = embedded_engine(settings)
    from tasklift.db.models import Workflow as WorkflowRow

    with engine.db.connect() as conn:
        row = conn.execute(select(WorkflowRow).where(WorkflowRow.id == wfobj.workflow_id)).first()
    assert row.status == "finished" and row.result == b"6"


def test_workflow_error_is_stored_and_raised(settings):
    def wf():
        raise ZeroDivisionError("boom")

    wfobj = Workflow(func=wf, settings=settings)
    with pytest.raises(ZeroDivisionError):
        wfobj.run()
    from tasklift.db.models import Workflow as WorkflowRow

    with embedded_engine(settings).db.connect() as conn:
        row = conn.execute(select(WorkflowRow).where(WorkflowRow.id == wfobj.workflow_id)).first()
    assert row.status == "failed" and "ZeroDivisionError: boom" in row.error


def test_work_function_inside_a_function_is_refused(settings):
    @work
    def local_fn(x):
        return x

    def wf():
        return local_fn(x=1)

    with pytest.raises(SubmissionError, match="module level"):
        run(settings, wf)


def test_large_work_pages_from_the_database(settings, monkeypatch):
    from tasklift.engine import dispatch, works

    monkeypatch.setattr(works, "IN_MEMORY_JOBS", 100)
    monkeypatch.setattr(dispatch, "PAGE", 64)

    def wf():
        return workfns.add(y=1, group_kwargs=[{"x": i} for i in range(500)])

    assert run(settings, wf) == [i + 1 for i in range(500)]


def test_archive_limit_is_reported(settings, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(b"\0" * (2 * 1024 * 1024))
    small = settings.with_overrides(archive_max_mb=1.0)

    def wf():
        return 1

    from tasklift import ArchiveError

    with pytest.raises(ArchiveError, match=r"big\.bin"):
        Workflow(func=wf, settings=small, source_dir=src).run()


def test_keys_are_stable_across_processes(python):
    import subprocess

    d = {"b": [1, 2.5, "é"], "a": {"z": None, "y": True}}
    out = subprocess.run(
        [python, "-c", "import sys,json; from tasklift import get_unique_id_for_dict as g; "
         "print(g(json.loads(sys.argv[1])))", '{"a": {"y": true, "z": null}, "b": [1, 2.5, "é"]}'],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert out == get_unique_id_for_dict(d)
    assert len(out) == 64


def test_marker_path_type():
    assert Path(__file__).exists()


def test_init_env_runs_jobs_through_the_prefix(settings, tmp_path):
    log = tmp_path / "wrapper.log"
    wrapper = tmp_path / "wrap.sh"
    wrapper.write_text(f'#!/bin/sh\necho "wrapped $$: $*" >> {log}\nexec "$@"\n')
    wrapper.chmod(0o755)

    def wf():
        return workfns.environment(group_kwargs=[{"name": "TL_SETUP"}, {"name": "TL_OTHER"}])

    out = Workflow(func=wf, settings=settings, init_env=f"export TL_SETUP=yes; {wrapper}").run()
    assert out == ["yes", None]
    lines = log.read_text().splitlines()
    assert lines and all("tasklift.runner worker" in line for line in lines)
    # without init_env the same function runs outside the wrapper
    assert Workflow(func=wf, settings=settings, fresh=True).run() == [None, None]
    assert len(log.read_text().splitlines()) == len(lines)


def test_failing_init_env_fails_the_job_and_is_not_restarted_in_a_loop(settings, tmp_path):
    starts = tmp_path / "starts"
    broken = f"echo start >> {starts}; exit 3"

    def wf():
        with pytest.raises(WorkFailed) as failed:
            workfns.environment(name="HOME")
        time.sleep(1.0)  # a worker started just before the failure may write its line late
        during = len(starts.read_text().splitlines())
        time.sleep(1.5)  # a respawn loop would start hundreds of workers meanwhile
        return failed.value.failures[0], during, len(starts.read_text().splitlines())

    failure, during, after = Workflow(func=wf, settings=settings, init_env=broken).run()
    assert failure.error_type == "WorkerLost" and failure.attempts >= 1
    assert "before it started" in failure.message and "init_env" in failure.message
    assert repr(broken) in failure.message
    assert after == during, f"{after - during} workers started after the job had failed"
    # each attempt starts at most a pool's worth of workers
    assert during <= failure.attempts * settings.workers, during


def test_explicit_workflow_argument_and_helper_threads(settings):
    from concurrent.futures import ThreadPoolExecutor

    holder = {}

    def wf():
        with ThreadPoolExecutor(2) as pool:
            # a helper thread has no context variable: explicit workflow= or the one running
            explicit = pool.submit(lambda: workfns.add(x=1, y=1, workflow=holder["wf"]))
            implicit = pool.submit(lambda: workfns.add(x=2, y=2))
            return explicit.result(), implicit.result(), len(holder["wf"].current_run.works)

    holder["wf"] = Workflow(func=wf, settings=settings)
    assert holder["wf"].run() == (2, 4, 2)  # both ran as works of this workflow
