"""ORM models: workflows, works, jobs, job attempts and archives (the schema of record).

Times are float seconds since the epoch (UTC), which keeps bulk writes cheap on every dialect.
"""

from __future__ import annotations

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiToken",
    "Archive",
    "Base",
    "Job",
    "JobAttempt",
    "JobDep",
    "WebSession",
    "Work",
    "WorkEdge",
    "Workflow",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention (stable Alembic diffs)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Workflow(Base):
    """One run of a ``@workflow`` function."""

    __tablename__ = "workflows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200), default="local", index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    function: Mapped[str] = mapped_column(String(500))
    source_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    archive_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    archive_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    init_env: Mapped[str | None] = mapped_column(Text, nullable=True)
    backend: Mapped[str] = mapped_column(String(200), default="local")
    fresh: Mapped[bool] = mapped_column(default=False)
    arguments: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    client_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    client_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("workflows.id"), nullable=True, index=True
    )
    created_at: Mapped[float] = mapped_column(Float, index=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Work(Base):
    """One ``@work`` call inside a workflow: N jobs with shared options.

    The ``n_*`` counters are maintained on every write so listings never count rows.
    """

    __tablename__ = "works"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    function: Mapped[str] = mapped_column(String(500))
    script: Mapped[str | None] = mapped_column(Text, nullable=True)
    archive_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    memo_key: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    options: Mapped[str] = mapped_column(Text)
    n_jobs: Mapped[int] = mapped_column(Integer, default=0)
    n_finished: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    n_cancelled: Mapped[int] = mapped_column(Integer, default=0)
    n_reused: Mapped[int] = mapped_column(Integer, default=0)
    n_skipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Jobs not run because their ``when=`` condition (or an upstream's) was false."""
    when_predicate: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """``when=`` predicate (cloudpickle), evaluated by the job runner on the upstream result."""
    last_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """The highest ``done_seq`` given to a job of this work (only ever grows)."""
    storing_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The engine storing the rest of a large work's jobs (``NULL`` once all are stored, or
    stored in one transaction): that engine, restarted, ends the work it could not finish."""
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (UniqueConstraint("workflow_id", "seq"),)


class Job(Base):
    """One execution of a work's function with one kwargs dict."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    work_id: Mapped[int] = mapped_column(ForeignKey("works.id"))
    idx: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(300), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    stdout: Mapped[str | None] = mapped_column(Text, nullable=True)
    stderr: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[str | None] = mapped_column(Text, nullable=True)
    backend_handle: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Last sign of life from a remote job runner (the monitor watches it)."""
    n_waiting: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Upstream jobs this job still waits for (data-flow); dispatched only at 0."""
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The engine that handed the job to its backend (engines never take each other's)."""
    reused_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
    done_seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Order in which the work's jobs became terminal (1, 2, ...): the results cursor."""
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        UniqueConstraint("work_id", "idx"),
        Index("ix_jobs_work_id_state_idx", "work_id", "state", "idx"),  # pages in idx order
        Index("ix_jobs_key", "key"),
        Index("ix_jobs_work_id_done_seq", "work_id", "done_seq"),
    )


class JobAttempt(Base):
    """An attempt of a job that did not succeed (the job row holds the last attempt)."""

    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    error_type: Mapped[str | None] = mapped_column(String(300), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Archive(Base):
    """A content-addressed source archive known to this database."""

    __tablename__ = "archives"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    n_files: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)


class ApiToken(Base):
    """An API token of the service (``tl_<id>_<secret>``); only the secret's sha256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(200), index=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class WebSession(Base):
    """A web monitor login: the cookie holds a random secret, only its sha256 is stored.

    ``expires_at`` is never later than the expiry of the credential the session was made from;
    a session made from an API token also ends when that token is revoked or expires.
    """

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(200), index=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    api_token_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_tokens.id"), nullable=True, index=True
    )
    """The API token logged in with (``None``: an OIDC token)."""
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When the user logged out (the session is refused from then on)."""
    last_seen_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Last use, written at most once a minute."""


class _Dependency:
    """The columns every data dependency has (mixed into :class:`JobDep`, :class:`WorkEdge`)."""

    # sort_order: id first, then the two ends, then these (the order the tables were made in)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True, sort_order=-1)
    arg: Mapped[str] = mapped_column(String(200), sort_order=1)
    """The argument the downstream side takes (``#3`` = 4th positional)."""
    mode: Mapped[str] = mapped_column(String(10), sort_order=1)


class JobDep(_Dependency, Base):
    """Job ``job_id`` takes the result of ``upstream_job_id`` as its argument ``arg``;
    ``mode`` is ``one`` (the upstream result itself) or ``all`` (one element of a list, by
    idx)."""

    __tablename__ = "job_deps"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    upstream_job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)


class WorkEdge(_Dependency, Base):
    """A data dependency between two works of a workflow (the DAG the monitor draws); ``mode``
    is ``each`` (job i <- job i), ``all`` (every job <- all upstream jobs) or ``job`` (one)."""

    __tablename__ = "work_edges"

    work_id: Mapped[int] = mapped_column(ForeignKey("works.id"), index=True)
    upstream_work_id: Mapped[int] = mapped_column(ForeignKey("works.id"), index=True)
