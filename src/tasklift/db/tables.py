"""The Core table handles of the ORM models, for the statement modules of :mod:`tasklift.db`
and the read-only queries above it (``tables.jobs.c.state`` ...)."""

from __future__ import annotations

from tasklift.db.models import Archive, Job, JobAttempt, JobDep, Work, WorkEdge, Workflow

__all__ = ["archives", "attempts", "deps", "edges", "jobs", "workflows", "works"]

workflows = Workflow.__table__
works = Work.__table__
jobs = Job.__table__
attempts = JobAttempt.__table__
archives = Archive.__table__
deps = JobDep.__table__
"""Job-level data dependencies (a job takes an upstream job's result)."""
edges = WorkEdge.__table__
"""Work-level data dependencies (the DAG the monitor draws)."""
