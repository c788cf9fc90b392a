"""Web monitor sessions: the server-side logins behind the ``tasklift_session`` cookie, and the
same-origin check that every unsafe request authenticated by that cookie must pass (CSRF).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Any, cast
from urllib.parse import urlsplit

import jwt
from fastapi import Request
from sqlalchemy import Engine, Table, delete, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from tasklift.db.models import ApiToken, WebSession
from tasklift.errors import AuthenticationError, PermissionDeniedError
from tasklift.service.principal import Principal

__all__ = ["COOKIE", "SAFE_METHODS", "SessionStore", "check_same_origin", "session_store"]

logger = logging.getLogger(__name__)

COOKIE = "tasklift_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing: the only ones a session cookie authenticates without an
``Origin`` check."""
MAX_SECRET_CHARS = 200
LAST_SEEN_RESOLUTION = 60.0  # last_seen_at is written at most once a minute per session
PURGE_AFTER = 24 * 3600.0
"""Rows of sessions that expired or ended longer ago than this are deleted at the next login."""
_sessions = cast("Table", WebSession.__table__)
_tokens = cast("Table", ApiToken.__table__)


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp))


class SessionStore:
    """Create, look up and end web sessions in the ``web_sessions`` table.

    The cookie holds a random secret (``secrets.token_urlsafe(32)``); the table holds its sha256
    only. Nothing is cached: every lookup reads the database, so a logout or a revoked API token
    ends the session at once on every server of the database.

    Args:
        db: the service database.
        ttl: seconds a new session lasts (``Settings.web_session_ttl``).
    """

    def __init__(self, db: Engine, *, ttl: float) -> None:
        self._db = db
        self._ttl = ttl

    def create(self, principal: Principal, credential: str) -> str:
        """Start a session for ``principal``, who has just been authenticated by ``credential``.

        The session expires after ``ttl`` seconds, or when ``credential`` (an API token or an
        OIDC JWT) expires if that is sooner. A session made from an API token also ends when
        that token is revoked.

        Returns:
            The session secret: the cookie's value (shown nowhere else, never logged).

        Raises:
            PermissionDeniedError: ``principal`` is a job, not a user.
            AuthenticationError: the API token was revoked or the credential expires now.
        """
        principal.require_user()
        now = time.time()
        expires_at = now + self._ttl
        token_id: int | None = None
        if credential.startswith("tl_"):
            token_id = int(credential.split("_", 2)[1])
        elif credential.count(".") == 2:
            try:  # verified by the Authenticator already: only its expiry is read here
                claims = jwt.decode(credential, options={"verify_signature": False})
            except jwt.PyJWTError as exc:
                raise AuthenticationError("malformed JWT") from exc
            exp = claims.get("exp")
            if isinstance(exp, int | float):
                expires_at = min(expires_at, float(exp))
        secret = secrets.token_urlsafe(32)
        with self._db.begin() as conn:
            if token_id is not None:
                stmt = select(_tokens.c.expires_at, _tokens.c.revoked_at)
                row = conn.execute(stmt.where(_tokens.c.id == token_id)).first()
                if row is None or row.revoked_at is not None:
                    raise AuthenticationError(f"API token {token_id} was revoked")
                if row.expires_at is not None:
                    expires_at = min(expires_at, row.expires_at)
            if expires_at <= now:
                raise AuthenticationError("the token expires now: use a token valid for longer")
            cutoff = now - PURGE_AFTER
            old = or_(_sessions.c.expires_at < cutoff, _sessions.c.ended_at < cutoff)
            conn.execute(delete(_sessions).where(old))
            session_id = conn.execute(
                insert(_sessions)
                .returning(_sessions.c.id)
                .values(
                    user=principal.user,
                    is_admin=principal.is_admin,
                    secret_hash=_sha256(secret),
                    api_token_id=token_id,
                    created_at=now,
                    expires_at=expires_at,
                )
            ).scalar_one()
        logger.info(
            "web session %d of %s started (until %s)", session_id, principal.user, _when(expires_at)
        )
        return secret

    def lookup(self, secret: str) -> Principal:
        """Return the user of the live session whose cookie value is ``secret``.

        Raises:
            AuthenticationError: unknown, ended (logged out), expired session, or its API token
                was revoked or expired.
        """
        if not secret or len(secret) > MAX_SECRET_CHARS:
            raise AuthenticationError("invalid web session: log in again")
        joined = _sessions.outerjoin(_tokens, _sessions.c.api_token_id == _tokens.c.id)
        stmt = select(
            _sessions.c.id,
            _sessions.c.user,
            _sessions.c.is_admin,
            _sessions.c.expires_at,
            _sessions.c.ended_at,
            _sessions.c.last_seen_at,
            _sessions.c.api_token_id,
            _tokens.c.revoked_at.label("token_revoked_at"),
            _tokens.c.expires_at.label("token_expires_at"),
        ).select_from(joined)
        with self._db.connect() as conn:
            row: Any = conn.execute(stmt.where(_sessions.c.secret_hash == _sha256(secret))).first()
        now = time.time()
        if row is None:
            raise AuthenticationError("unknown web session: log in again")
        if row.ended_at is not None:
            raise AuthenticationError("this web session was logged out: log in again")
        if now >= row.expires_at:
            expired = _when(row.expires_at)
            raise AuthenticationError(f"web session expired at {expired}: log in again")
        if row.token_revoked_at is not None:
            raise AuthenticationError(
                f"API token {row.api_token_id} of this web session was revoked: log in again"
            )
        if row.token_expires_at is not None and now >= row.token_expires_at:
            raise AuthenticationError(
                f"API token {row.api_token_id} of this web session expired: log in again"
            )
        if row.last_seen_at is None or now - row.last_seen_at >= LAST_SEEN_RESOLUTION:
            try:
                with self._db.begin() as conn:
                    stmt_seen = update(_sessions).where(_sessions.c.id == row.id)
                    conn.execute(stmt_seen.values(last_seen_at=now))
            except SQLAlchemyError as exc:  # bookkeeping only: never fail the request for it
                logger.warning("could not record the use of web session %d: %s", row.id, exc)
        return Principal(user=row.user, is_admin=bool(row.is_admin))

    def end(self, secret: str) -> bool:
        """End the session whose cookie value is ``secret`` (log out).

        Returns:
            True when a live session ended, False when none was live (unknown, already ended).
        """
        if not secret or len(secret) > MAX_SECRET_CHARS:
            return False
        stmt = update(_sessions).where(
            _sessions.c.secret_hash == _sha256(secret), _sessions.c.ended_at.is_(None)
        )
        with self._db.begin() as conn:
            ended = conn.execute(stmt.values(ended_at=time.time())).rowcount > 0
        if ended:
            logger.info("web session logged out")
        return ended


def session_store(request: Request) -> SessionStore:
    """The session store of the app serving ``request`` (its database, its settings)."""
    state = request.app.state
    return SessionStore(state.engine.db, ttl=state.settings.web_session_ttl)


def _origin(url: str) -> str | None:
    """``scheme://host:port`` of ``url`` (default port made explicit), None if not http(s)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or (443 if scheme == 'https' else 80)}"


def check_same_origin(request: Request, public_url: str | None, *, required: bool = True) -> None:
    """Refuse a cross-site request: its ``Origin`` (else ``Referer``) must be this server.

    This server is the origin the request was addressed to (its ``Host`` header and scheme)
    and, when set, the origin of ``public_url``.

    Args:
        request: the request to check.
        public_url: ``Settings.public_url`` (a proxy in front of the server).
        required: refuse a request that carries neither header (else let it through).

    Raises:
        PermissionDeniedError: foreign or unreadable origin, or none when ``required``.
    """
    value, header = request.headers.get("origin"), "Origin"
    if value is None:
        value, header = request.headers.get("referer"), "Referer"
    if value is None:
        if not required:
            return
        raise PermissionDeniedError(
            "cross-site request check failed: a request authenticated by the web session cookie "
            "must carry an Origin or Referer header naming this server (API clients: send "
            "'Authorization: Bearer <token>' instead of the cookie)"
        )
    own = {_origin(str(request.base_url))}
    if public_url:
        own.add(_origin(public_url))
    seen = _origin(value)
    if seen is None or seen not in own:
        shown = seen or "an unreadable origin"
        expected = " or ".join(sorted(o for o in own if o))
        raise PermissionDeniedError(
            f"cross-site request refused: its {header} is {shown}, not this server ({expected})"
        )
