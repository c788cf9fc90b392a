"""Prometheus metrics of ``tasklift server``: one registry per app, DB gauges read per scrape.

The engine observes :attr:`ServiceMetrics.result_latency`; job and workflow counts are read
from the database when ``/metrics`` is scraped, so several servers on one DB agree.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select

from tasklift.db.models import Job, Work, Workflow
from tasklift.states import JobState, WorkflowState

__all__ = ["LATENCY_BUCKETS", "ServiceMetrics", "observe_result_latency"]

logger = logging.getLogger(__name__)

LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0, float("inf"),
)  # fmt: skip
"""Histogram buckets (seconds): from a no-op job on a warm server to hour-long jobs."""

_ACTIVE_STATES: tuple[JobState, ...] = (
    JobState.PENDING,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.LOST,
)

_works = Work.__table__
_jobs = Job.__table__
_workflows = Workflow.__table__


class ServiceMetrics:
    """The metrics of one app, in their own registry (several apps can share a process).

    Attributes:
        registry: the app's registry; add further app-wide metrics to it.
        result_latency: seconds from a job's submission to its result being stored.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.result_latency = Histogram(
            "tasklift_result_latency_seconds",
            "Seconds from a job's submission to its result being stored.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_result_latency(self, seconds: float) -> None:
        """Record one job's result latency (negative clock skew is clamped to 0)."""
        self.result_latency.observe(max(0.0, seconds))

    def render(self, conn: Connection) -> bytes:
        """Read the DB gauges on ``conn`` and return every metric in Prometheus text format.

        Args:
            conn: an open connection; only read (the caller owns it).

        Returns:
            The exposition, ``prometheus_client.CONTENT_TYPE_LATEST``.
        """
        families = db_metric_families(conn)
        return generate_latest(_Snapshot(self.registry, families))


def observe_result_latency(metrics: ServiceMetrics | None, seconds: float) -> None:
    """Record a result latency when metrics are enabled (``metrics`` may be ``None``)."""
    if metrics is not None:
        metrics.observe_result_latency(seconds)


def db_metric_families(conn: Connection) -> list[Metric]:
    """Build the gauges read from the database: jobs by state, queue depth, workflows.

    Terminal job counts come from the per-work counters (no scan of ``jobs``); the active
    states are counted with one ``GROUP BY`` over the jobs of unfinished works only.

    Args:
        conn: an open connection.

    Returns:
        ``tasklift_jobs``, ``tasklift_queue_depth`` and ``tasklift_workflows``.
    """
    totals = conn.execute(
        select(
            func.coalesce(func.sum(_works.c.n_jobs), 0),
            func.coalesce(func.sum(_works.c.n_finished), 0),
            func.coalesce(func.sum(_works.c.n_failed), 0),
            func.coalesce(func.sum(_works.c.n_cancelled), 0),
        )
    ).one()
    n_jobs, n_finished, n_failed, n_cancelled = (int(v) for v in totals)
    terminal = n_finished + n_failed + n_cancelled

    open_works = _works.c.n_finished + _works.c.n_failed + _works.c.n_cancelled < _works.c.n_jobs
    active = {state.value: 0 for state in _ACTIVE_STATES}
    rows = conn.execute(
        select(_jobs.c.state, func.count())
        .select_from(_jobs.join(_works, _works.c.id == _jobs.c.work_id))
        .where(open_works, _jobs.c.state.in_([s.value for s in _ACTIVE_STATES]))
        .group_by(_jobs.c.state)
    )
    for state, count in rows:
        active[str(state)] = int(count)
    if sum(active.values()) != n_jobs - terminal:
        logger.debug(
            "metrics: %d active jobs by state, %d by the work counters (a scrape raced a write)",
            sum(active.values()),
            n_jobs - terminal,
        )

    jobs = GaugeMetricFamily(
        "tasklift_jobs",
        "Jobs by state (finished, failed, cancelled: all time; the others: now).",
        labels=["state"],
    )
    for state, count in active.items():
        jobs.add_metric([state], count)
    jobs.add_metric([JobState.FINISHED.value], n_finished)
    jobs.add_metric([JobState.FAILED.value], n_failed)
    jobs.add_metric([JobState.CANCELLED.value], n_cancelled)

    depth = GaugeMetricFamily(
        "tasklift_queue_depth", "Jobs stored but not yet handed to a backend (pending)."
    )
    depth.add_metric([], active[JobState.PENDING.value])

    by_status = {status.value: 0 for status in WorkflowState}
    for status, count in conn.execute(
        select(_workflows.c.status, func.count()).group_by(_workflows.c.status)
    ):
        by_status[str(status)] = int(count)
    workflows = GaugeMetricFamily("tasklift_workflows", "Workflows by status.", labels=["status"])
    for status, count in by_status.items():
        workflows.add_metric([status], count)
    return [jobs, depth, workflows]


class _Snapshot(Collector):
    """A registry's metrics plus families computed for one scrape."""

    def __init__(self, registry: CollectorRegistry, extra: Sequence[Metric]) -> None:
        self._registry = registry
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        return itertools.chain(self._registry.collect(), self._extra)
