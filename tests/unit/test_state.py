"""Pure engine decisions and the state table, without processes or sockets."""

import pytest

from tasklift.db.works import WorkCounts, state_of
from tasklift.engine.state import decide
from tasklift.records import Outcome
from tasklift.states import (
    ALLOWED,
    JOB_TERMINAL,
    JobState,
    WorkState,
    check_transition,
    needed_successes,
    work_state,
)


def test_success_finishes():
    assert decide(Outcome(1, 1, ok=True, result=b"0"), 1, 2).state == JobState.FINISHED


def test_failure_retries_while_attempts_remain():
    failure = Outcome(1, 1, ok=False, error_type="ValueError")
    assert decide(failure, 1, 2).retry and decide(failure, 2, 2).retry
    final = decide(failure, 3, 2)
    assert final.state == JobState.FAILED and not final.retry


def test_unretryable_failure_fails_at_once():
    outcome = Outcome(1, 1, ok=False, error_type="ResultNotSerializable", retryable=False)
    assert decide(outcome, 1, 5).state == JobState.FAILED


@pytest.mark.parametrize(("n", "fraction", "needed"), [(10, 1.0, 10), (10, 0.5, 5),
                                                        (3, 0.5, 2), (7, 0.0, 0), (3, 0.34, 2)])
def test_needed_successes(n, fraction, needed):
    assert needed_successes(n, fraction) == needed


def test_work_state():
    assert work_state(4, 3, 0, 0, 1.0) == WorkState.RUNNING
    assert work_state(4, 4, 0, 0, 1.0) == WorkState.FINISHED
    assert work_state(4, 3, 1, 0, 1.0) == WorkState.FAILED
    assert work_state(4, 3, 1, 0, 0.75) == WorkState.FINISHED
    assert work_state(4, 1, 0, 3, 1.0) == WorkState.CANCELLED


def test_terminal_states_have_no_way_out_but_retry():
    for state in JOB_TERMINAL:
        assert ALLOWED[state] <= {JobState.PENDING}
    assert JobState.LOST not in JOB_TERMINAL
    with pytest.raises(ValueError, match="finished to running"):
        check_transition(JobState.FINISHED, JobState.RUNNING)
    check_transition(JobState.LOST, JobState.PENDING)


@pytest.mark.parametrize(
    ("counts", "min_success", "state"),
    [
        (WorkCounts(4, 3, 0, 0, 3), 1.0, WorkState.RUNNING),
        (WorkCounts(4, 3, 1, 0, 4), 0.75, WorkState.FINISHED),
        (WorkCounts(4, 3, 1, 0, 4), 1.0, WorkState.FAILED),
        (WorkCounts(4, 1, 0, 3, 4), 1.0, WorkState.CANCELLED),
        (WorkCounts(4, 2, 0, 0, 4, n_skipped=2), 1.0, WorkState.FINISHED),  # skipped leave
    ],
)
def test_state_of_reads_the_stored_counters(counts, min_success, state):
    assert state_of(counts, min_success) is state
