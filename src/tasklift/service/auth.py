"""Bearer-token authentication of the service: API tokens, job tokens and OIDC JWTs.

Also owns the server key (``<home>/server.key``) that signs job tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

import jwt
from sqlalchemy import Engine, Table, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from tasklift.db.models import ApiToken, Job
from tasklift.errors import AuthenticationError, ConfigError, NotFoundError
from tasklift.service.principal import Principal
from tasklift.settings import Settings
from tasklift.states import JobState

__all__ = ["Authenticator", "TokenInfo", "server_key"]

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "tl_"
DEFAULT_TOKEN_LIFETIME = 90 * 24 * 3600.0  # API tokens, unless create_token says otherwise
LAST_USED_RESOLUTION = 60.0  # last_used_at is written at most once a minute per token
TOKEN_CACHE_TTL = 2.0
"""Seconds a verified API token is trusted without a database read. Revoking through this
server's Authenticator takes effect at once; a revocation made elsewhere (``tasklift token
revoke`` on the database) within this many seconds."""
TOKEN_CACHE_MAX = 10_000
OIDC_ALGORITHMS = [f"{fam}{bits}" for fam in ("RS", "PS", "ES") for bits in (256, 384, 512)]
OIDC_ALGORITHMS.append("EdDSA")  # asymmetric only: HS256 JWTs are job tokens
OIDC_LEEWAY = 30.0  # seconds of clock skew tolerated between the issuer and this server
JWKS_MAX_AGE = 3600.0  # reload the JWKS after this many seconds
JWKS_URL_MIN_REFRESH = 30.0  # an unknown kid refetches a JWKS URL at most this often
_JOB_KEY_CONTEXT = b"tasklift job token v1"
_API_TOKEN = re.compile(r"tl_([0-9]{1,9})_([A-Za-z0-9_-]{16,200})")
_tokens = cast("Table", ApiToken.__table__)
_jobs = cast("Table", Job.__table__)
_LIVE_JOB_STATES = frozenset({JobState.QUEUED.value, JobState.RUNNING.value})


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def server_key(settings: Settings) -> bytes:
    """Return the raw server key: ``settings.secret_key``, else ``<home>/server.key``.

    The key file is created once (32 random bytes, mode 0600) and read afterwards; a temporary
    file created with ``O_EXCL`` is hard-linked into place, so a concurrent reader never sees a
    partial key and two racing servers end up with the same one.

    Raises:
        ConfigError: the key file exists but is too short to be a key.
    """
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.home / "server.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                logger.info("created server key file %s", path)
            except FileExistsError:
                pass  # another process created it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        logger.warning("server key file %s is readable by other users: chmod 600 it", path)
    key = path.read_bytes()
    if len(key) < 32:
        raise ConfigError(f"server key file {path} is truncated: delete it to create a new key")
    return key


@dataclass(frozen=True)
class TokenInfo:
    """What can be shown about an API token (never its secret nor its hash)."""

    id: int
    user: str
    is_admin: bool
    name: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def status(self, now: float | None = None) -> str:
        """``revoked``, ``expired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and (now or time.time()) >= self.expires_at:
            return "expired"
        return "active"


class _JwksCache:
    """The OIDC issuer's signing keys, from a file or an http(s) URL.

    Reloaded after ``JWKS_MAX_AGE`` and on an unknown ``kid`` (files: every time, they are
    cheap; URLs: at most once per ``JWKS_URL_MIN_REFRESH``). A failed reload keeps the old keys.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        is_url = source.startswith(("http://", "https://"))
        self._client = jwt.PyJWKClient(source, cache_jwk_set=False, timeout=10) if is_url else None
        self._min_refresh = JWKS_URL_MIN_REFRESH if is_url else 0.0
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        self._loaded_at = time.monotonic()
        try:
            if self._client is not None:
                jwks = self._client.get_jwk_set()
            else:
                jwks = jwt.PyJWKSet.from_json(Path(self.source).read_text())
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            logger.warning("cannot load the OIDC JWKS from %s: %s", self.source, exc)
            return
        self._keys = {key.key_id: key for key in jwks}
        logger.debug("loaded %d OIDC signing keys from %s", len(self._keys), self.source)

    def get(self, kid: str | None) -> jwt.PyJWK:
        """Return the key named ``kid`` (or the only key, for a token without ``kid``)."""
        with self._lock:
            loaded_at = self._loaded_at
            age = math.inf if loaded_at is None else time.monotonic() - loaded_at
            if age > JWKS_MAX_AGE or (kid not in self._keys and age >= self._min_refresh):
                self._load()
            key = self._keys.get(kid)
            if key is None and kid is None and len(self._keys) == 1:
                key = next(iter(self._keys.values()))
            if key is None:
                if not self._keys:
                    raise AuthenticationError("the OIDC signing keys are unavailable")
                raise AuthenticationError("OIDC token signed with an unknown key (kid)")
            return key


_JWT_ERRORS: list[tuple[type[jwt.PyJWTError], str]] = [
    (jwt.ExpiredSignatureError, "{} expired"),
    (jwt.InvalidSignatureError, "{} has an invalid signature"),
    (jwt.InvalidAudienceError, "{} has the wrong audience (aud)"),
    (jwt.InvalidIssuerError, "{} has the wrong issuer (iss)"),
    (jwt.DecodeError, "malformed {}"),
]


def _jwt_error(kind: str, exc: jwt.PyJWTError) -> AuthenticationError:
    """Turn a PyJWT failure into a 401 message that never contains the token."""
    for cls, message in _JWT_ERRORS:
        if isinstance(exc, cls):
            return AuthenticationError(message.format(kind))
    return AuthenticationError(f"invalid {kind}: {exc}")


class Authenticator:
    """Turn an ``Authorization`` header into a :class:`Principal`; manage API and job tokens.

    Token forms: ``tl_<id>_<secret>`` (API token), a HS256 JWT with ``typ="job"`` (job token,
    signed with the server key) and any asymmetric JWT (OIDC, only when ``oidc_issuer`` is set).

    Args:
        db: the service database (holds ``api_tokens``).
        settings: server key, job token lifetime, OIDC issuer/audience/JWKS and admins.

    Raises:
        ConfigError: ``oidc_issuer`` is set without ``oidc_audience`` or ``oidc_jwks``.
    """

    def __init__(
        self, *, db: Engine, settings: Settings, cache_ttl: float = TOKEN_CACHE_TTL
    ) -> None:
        self._db = db
        self._cache_ttl = cache_ttl
        # sha256 of the whole token -> (monotonic deadline, token id, principal)
        self._cache: dict[str, tuple[float, int, Principal]] = {}
        self._settings = settings
        self._admins = frozenset(settings.admins)
        self._job_key: bytes | None = None
        self._lock = threading.Lock()
        self._jwks: _JwksCache | None = None
        if settings.oidc_issuer:
            if not settings.oidc_audience or not settings.oidc_jwks:
                raise ConfigError("oidc_issuer needs oidc_audience and oidc_jwks as well")
            self._jwks = _JwksCache(settings.oidc_jwks)

    def authenticate(self, authorization: str | None) -> Principal:
        """Verify ``Bearer <token>`` and return who is calling.

        Raises:
            AuthenticationError: missing, malformed, unknown, expired or revoked credential.
        """
        if not authorization or not authorization.strip():
            raise AuthenticationError("missing credentials: send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise AuthenticationError("malformed Authorization header: expected 'Bearer <token>'")
        if token.startswith(TOKEN_PREFIX):
            return self.cached(authorization) or self._check_api_token(token)
        if token.count(".") == 2:
            try:
                header = jwt.get_unverified_header(token)
            except jwt.PyJWTError as exc:
                raise AuthenticationError("malformed JWT") from exc
            alg, kid = header.get("alg"), header.get("kid")
            if alg == "HS256":
                return self._check_job_token(token)
            if isinstance(alg, str) and alg in OIDC_ALGORITHMS and isinstance(kid, str | None):
                return self._check_oidc(token, kid)
            raise AuthenticationError("unsupported JWT (signing algorithm or key id)")
        raise AuthenticationError("unrecognized token: not a tasklift API token, job token or JWT")

    def cached(self, authorization: str | None) -> Principal | None:
        """The caller of an API token verified less than ``cache_ttl`` seconds ago, else None.

        No I/O: the service calls it on its event loop and verifies misses in a thread.
        """
        if not authorization or not authorization.startswith("Bearer " + TOKEN_PREFIX):
            return None
        hit = self._cache.get(_sha256(authorization[7:].strip()))
        if hit is None or time.monotonic() >= hit[0]:
            return None
        return hit[2]

    def _remember(self, token: str, token_id: int, info: TokenInfo, principal: Principal) -> None:
        if self._cache_ttl <= 0:
            return
        ttl = self._cache_ttl
        if info.expires_at is not None:
            ttl = min(ttl, info.expires_at - time.time())
        if len(self._cache) >= TOKEN_CACHE_MAX:
            self._cache.clear()
        self._cache[_sha256(token)] = (time.monotonic() + ttl, token_id, principal)

    def forget(self, token_id: int | None = None) -> None:
        """Drop cached verifications (of one token, or all): the next use reads the database."""
        if token_id is None:
            self._cache.clear()
            return
        for key, (_, cached_id, _) in list(self._cache.items()):
            if cached_id == token_id:
                self._cache.pop(key, None)

    def _check_api_token(self, token: str) -> Principal:
        match = _API_TOKEN.fullmatch(token)
        if match is None:
            raise AuthenticationError("malformed API token")
        token_id, digest = int(match[1]), _sha256(match[2])
        with self._db.connect() as conn:
            row = conn.execute(select(_tokens).where(_tokens.c.id == token_id)).mappings().first()
        stored = row["token_hash"] if row is not None else "0" * 64
        if not hmac.compare_digest(stored, digest) or row is None:
            raise AuthenticationError("invalid API token")
        info = _token_info(row)
        now = time.time()
        if info.revoked_at is not None:
            raise AuthenticationError(f"API token {token_id} was revoked")
        if info.expires_at is not None and now >= info.expires_at:
            when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(info.expires_at))
            raise AuthenticationError(f"API token {token_id} expired at {when}")
        if info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION:
            try:
                with self._db.begin() as conn:
                    stmt = update(_tokens).where(_tokens.c.id == token_id)
                    conn.execute(stmt.values(last_used_at=now))
            except SQLAlchemyError as exc:  # bookkeeping only: never fail the request for it
                logger.warning("could not record the use of API token %d: %s", token_id, exc)
        principal = Principal(user=info.user, is_admin=info.is_admin or info.user in self._admins)
        self._remember(token, token_id, info, principal)
        return principal

    def _check_job_token(self, token: str) -> Principal:
        options: Any = {"require": ["exp", "sub", "typ", "wf", "hj", "ha"]}
        try:
            claims = jwt.decode(token, self._signing_key(), algorithms=["HS256"], options=options)
        except jwt.PyJWTError as exc:
            raise _jwt_error("job token", exc) from exc
        wf, work, job = claims.get("wf"), claims.get("work"), claims.get("job")
        holder, attempt = claims.get("hj"), claims.get("ha")
        ids_ok = isinstance(wf, int) and all(v is None or isinstance(v, int) for v in (work, job))
        ids_ok = ids_ok and isinstance(holder, int) and isinstance(attempt, int)
        if claims.get("typ") != "job" or not isinstance(claims.get("sub"), str) or not ids_ok:
            raise AuthenticationError("invalid job token: unexpected claims")
        self._check_holder_alive(holder, attempt)
        return Principal(
            user=claims["sub"],
            kind="job",
            workflow_id=wf,
            work_id=work,
            job_id=job,
            holder_job=holder,
            holder_attempt=attempt,
        )

    def _check_holder_alive(self, job_id: int, attempt: int) -> None:
        """Refuse the token of a job attempt that is no longer queued or running.

        Raises:
            AuthenticationError: the job ended, was retried (another attempt) or does not exist.
        """
        with self._db.connect() as conn:
            row = conn.execute(
                select(_jobs.c.state, _jobs.c.attempts).where(_jobs.c.id == job_id)
            ).first()
        if row is None or row[0] not in _LIVE_JOB_STATES or row[1] != attempt:
            raise AuthenticationError(
                f"job token of job {job_id} attempt {attempt}: that attempt has ended"
            )

    def _check_oidc(self, token: str, kid: str | None) -> Principal:
        settings = self._settings
        if self._jwks is None:
            raise AuthenticationError("OIDC is not enabled on this server: use a tasklift token")
        try:
            key = self._jwks.get(kid)
            claims = jwt.decode(
                token,
                key,
                algorithms=OIDC_ALGORITHMS,
                audience=settings.oidc_audience,
                issuer=settings.oidc_issuer,
                leeway=OIDC_LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise _jwt_error("OIDC token", exc) from exc
        user = claims.get(settings.oidc_user_claim)
        if not isinstance(user, str) or not user:
            raise AuthenticationError(f"OIDC token has no {settings.oidc_user_claim!r} claim")
        return Principal(user=user, is_admin=user in self._admins)

    def _signing_key(self) -> bytes:
        """The job token key, derived from the server key (loaded or created on first use)."""
        with self._lock:
            if self._job_key is None:
                raw = server_key(self._settings)
                self._job_key = hmac.new(raw, _JOB_KEY_CONTEXT, hashlib.sha256).digest()
            return self._job_key

    def issue_job_token(
        self,
        *,
        user: str,
        workflow_id: int,
        holder: tuple[int, int],
        work_id: int | None = None,
        job_id: int | None = None,
        ttl: float | None = None,
    ) -> str:
        """Sign a job token for the owner ``user``, scoped to a workflow, work and job.

        The token dies with the job attempt that holds it: once that attempt is no longer
        queued or running (ended, retried, cancelled) the server refuses it.

        Args:
            user: the workflow's owner (the job acts on their behalf).
            workflow_id: the workflow the token belongs to.
            holder: ``(job id, attempt)`` of the job attempt whose runner holds the token
                (a child workflow's token keeps its parent runner's).
            work_id: the work it is scoped to (``None``: a workflow runner).
            job_id: the one job it may report for (``None``: any job of the work).
            ttl: seconds it stays valid (default: ``settings.job_token_ttl``).

        Returns:
            The token (a JWT); pass it through the environment or a 0600 file only.
        """
        now = int(time.time())
        lifetime = self._settings.job_token_ttl if ttl is None else ttl
        claims: dict[str, Any] = {
            "typ": "job",
            "sub": user,
            "wf": workflow_id,
            "work": work_id,
            "job": job_id,
            "hj": holder[0],
            "ha": holder[1],
        }
        claims |= {"iat": now, "exp": int(now + lifetime)}
        return jwt.encode(claims, self._signing_key(), algorithm="HS256")

    def create_token(
        self,
        *,
        user: str,
        admin: bool = False,
        expires_in: float | None = DEFAULT_TOKEN_LIFETIME,
        name: str | None = None,
    ) -> tuple[int, str]:
        """Create an API token; only the sha256 of its secret is stored.

        Args:
            user: the user the token authenticates as.
            admin: whether the token grants admin rights.
            expires_in: seconds until it expires (``None``: never).
            name: a free-text label.

        Returns:
            ``(id, token)``: the clear token is shown once and cannot be recovered.

        Raises:
            ConfigError: empty user or a non-positive ``expires_in``.
        """
        if not user.strip():
            raise ConfigError("an API token needs a user name")
        if expires_in is not None and expires_in <= 0:
            raise ConfigError("expires_in must be positive (or None for no expiry)")
        secret, now = secrets.token_urlsafe(32), time.time()
        expires_at = None if expires_in is None else now + expires_in
        stmt = insert(_tokens).returning(_tokens.c.id)
        stmt = stmt.values(user=user, is_admin=admin, name=name, token_hash=_sha256(secret))
        stmt = stmt.values(created_at=now, expires_at=expires_at)
        with self._db.begin() as conn:
            token_id = int(conn.execute(stmt).scalar_one())
        logger.info("created API token %d for %s (admin=%s)", token_id, user, admin)
        return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def list_tokens(self, user: str | None = None) -> list[TokenInfo]:
        """Return the API tokens (of ``user``, or all), oldest first."""
        stmt = select(_tokens).order_by(_tokens.c.id)
        if user is not None:
            stmt = stmt.where(_tokens.c.user == user)
        with self._db.connect() as conn:
            return [_token_info(row) for row in conn.execute(stmt).mappings()]

    def revoke_token(self, token_id: int) -> None:
        """Revoke an API token (revoking twice keeps the first time).

        Raises:
            NotFoundError: no token has this id.
        """
        with self._db.begin() as conn:
            found = (
                0 < token_id < 2**31
                and conn.execute(select(_tokens.c.id).where(_tokens.c.id == token_id)).first()
            )
            if not found:
                raise NotFoundError(f"API token {token_id} does not exist")
            stmt = update(_tokens).where(_tokens.c.id == token_id, _tokens.c.revoked_at.is_(None))
            conn.execute(stmt.values(revoked_at=time.time()))
        self.forget(token_id)
        logger.info("revoked API token %d", token_id)


def _token_info(row: Any) -> TokenInfo:
    return TokenInfo(**{f.name: row[f.name] for f in fields(TokenInfo)})
