"""Who is calling: a user (API token or OIDC JWT) or a job runner (scoped job token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tasklift.errors import PermissionDeniedError

__all__ = ["Principal"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes:
        user: the user name (for job tokens: the owner of the workflow).
        is_admin: admins see and act on every workflow.
        kind: ``user`` or ``job``.
        workflow_id: job tokens: the workflow they belong to.
        work_id: job tokens: the work they are scoped to (``None``: a workflow runner, which may
            create works in ``workflow_id``).
        job_id: job tokens: the single job they may report for (``None``: any job of the work).
        holder_job: job tokens: the job whose runner holds the token (it dies with it).
        holder_attempt: job tokens: the attempt of ``holder_job`` it was issued to.
    """

    user: str
    is_admin: bool = False
    kind: Literal["user", "job"] = "user"
    workflow_id: int | None = None
    work_id: int | None = None
    job_id: int | None = None
    holder_job: int | None = None
    holder_attempt: int | None = None

    @property
    def holder(self) -> tuple[int, int]:
        """``(job, attempt)`` holding this job token (for the tokens of child workflows)."""
        if self.holder_job is None or self.holder_attempt is None:
            raise PermissionDeniedError("only a job token has a holding job")
        return self.holder_job, self.holder_attempt

    def can_see(self, owner: str) -> bool:
        """True when this principal may read and act on something owned by ``owner``."""
        return self.is_admin or self.user == owner

    def require_user(self) -> None:
        """Refuse job tokens (they may only use the job endpoints)."""
        if self.kind != "user":
            raise PermissionDeniedError("a job token cannot be used for this request")
