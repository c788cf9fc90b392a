"""Authentication: API tokens, job tokens, OIDC JWTs, the server key and ``tasklift token``."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from sqlalchemy import Engine, select, update

from job_holders import end_job, running_job
from tasklift.cli import cli
from tasklift.db.models import ApiToken
from tasklift.db.session import create_db_engine, upgrade
from tasklift.errors import AuthenticationError, ConfigError, NotFoundError
from tasklift.service.auth import Authenticator, TokenInfo, server_key
from tasklift.service.principal import Principal
from tasklift.settings import Settings

ISSUER = "https://idp.example.org/realms/hep"
AUDIENCE = "tasklift"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'auth.db'}"


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def make_settings(home: Path, db_url: str, **values: Any) -> Settings:
    return Settings(home=home, db_url=db_url, quiet=True, **values)


@pytest.fixture
def auth(db: Engine, home: Path, db_url: str) -> Authenticator:
    # what the database says, read on every call; the cache has its own tests (test_waiting.py)
    return Authenticator(db=db, settings=make_settings(home, db_url), cache_ttl=0)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def refused(auth: Authenticator, header: str | None) -> str:
    """Authenticate, expect a 401, and return its message (checked not to echo the token)."""
    with pytest.raises(AuthenticationError) as info:
        auth.authenticate(header)
    message = str(info.value)
    if header and len(header) > 16:
        assert header.split()[-1] not in message
    return message


# -- API tokens ------------------------------------------------------------------------------


def test_api_token_authenticates_as_its_user(auth: Authenticator) -> None:
    token_id, token = auth.create_token(user="alice", name="laptop")
    assert token.startswith(f"tl_{token_id}_")
    assert auth.authenticate(bearer(token)) == Principal(user="alice")
    assert auth.authenticate(f"bearer   {token}  ").user == "alice"  # scheme is case-insensitive


def test_admin_token_and_admins_setting(db: Engine, home: Path, db_url: str) -> None:
    auth = Authenticator(db=db, settings=make_settings(home, db_url, admins=["root"]))
    _, admin_token = auth.create_token(user="carol", admin=True)
    _, user_token = auth.create_token(user="bob")
    _, root_token = auth.create_token(user="root")
    assert auth.authenticate(bearer(admin_token)).is_admin
    assert not auth.authenticate(bearer(user_token)).is_admin
    assert auth.authenticate(bearer(root_token)).is_admin


def test_wrong_secret_and_unknown_id_are_refused(auth: Authenticator) -> None:
    token_id, token = auth.create_token(user="alice")
    secret = token.split("_", 2)[2]
    wrong = f"tl_{token_id}_{'A' * len(secret)}"
    assert refused(auth, bearer(wrong)) == "invalid API token"
    assert refused(auth, bearer(f"tl_{token_id + 99}_{secret}")) == "invalid API token"
    assert "malformed API token" in refused(auth, bearer(f"tl_x_{secret}"))
    assert "malformed API token" in refused(auth, bearer(f"tl_{token_id}_short"))


def test_expired_token_says_expired(auth: Authenticator) -> None:
    token_id, token = auth.create_token(user="alice", expires_in=0.001)
    time.sleep(0.01)
    assert f"API token {token_id} expired" in refused(auth, bearer(token))
    assert auth.list_tokens("alice")[0].status() == "expired"


def test_revoked_token_says_revoked(auth: Authenticator) -> None:
    token_id, token = auth.create_token(user="alice")
    auth.authenticate(bearer(token))
    auth.revoke_token(token_id)
    assert f"API token {token_id} was revoked" in refused(auth, bearer(token))
    first = auth.list_tokens()[0].revoked_at
    auth.revoke_token(token_id)  # idempotent: keeps the first revocation time
    assert auth.list_tokens()[0].revoked_at == first
    with pytest.raises(NotFoundError):
        auth.revoke_token(token_id + 1)


def test_token_without_expiry_and_bad_arguments(auth: Authenticator) -> None:
    _, token = auth.create_token(user="alice", expires_in=None)
    assert auth.list_tokens()[0].expires_at is None
    assert auth.authenticate(bearer(token)).user == "alice"
    with pytest.raises(ConfigError):
        auth.create_token(user=" ")
    with pytest.raises(ConfigError):
        auth.create_token(user="alice", expires_in=0)


def test_default_expiry_is_90_days(auth: Authenticator) -> None:
    auth.create_token(user="alice")
    info = auth.list_tokens()[0]
    assert info.expires_at is not None
    assert info.expires_at - info.created_at == pytest.approx(90 * 86400)


def test_token_is_stored_hashed(auth: Authenticator, db: Engine, tmp_path: Path) -> None:
    _, token = auth.create_token(user="alice")
    secret = token.split("_", 2)[2]
    with db.connect() as conn:
        stored = conn.execute(select(ApiToken.token_hash)).scalar_one()
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    db.dispose()  # checkpoint the WAL into the main file
    files = list(tmp_path.glob("auth.db*"))
    assert files
    for path in files:
        assert secret.encode() not in path.read_bytes()


def test_list_tokens_filters_and_hides_the_hash(auth: Authenticator) -> None:
    a, _ = auth.create_token(user="alice", name="ci")
    b, _ = auth.create_token(user="bob")
    assert [t.id for t in auth.list_tokens()] == [a, b]
    (info,) = auth.list_tokens("alice")
    assert isinstance(info, TokenInfo)
    assert (info.user, info.name, info.is_admin, info.status()) == ("alice", "ci", False, "active")
    assert not hasattr(info, "token_hash")


def test_last_used_is_written_at_most_once_a_minute(auth: Authenticator, db: Engine) -> None:
    token_id, token = auth.create_token(user="alice")
    assert auth.list_tokens()[0].last_used_at is None
    auth.authenticate(bearer(token))
    first = auth.list_tokens()[0].last_used_at
    assert first is not None
    auth.authenticate(bearer(token))
    assert auth.list_tokens()[0].last_used_at == first
    with db.begin() as conn:
        stmt = update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=first - 61)
        conn.execute(stmt)
    auth.authenticate(bearer(token))
    last = auth.list_tokens()[0].last_used_at
    assert last is not None and last >= first


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "missing credentials"),
        ("", "missing credentials"),
        ("Bearer", "malformed Authorization header"),
        ("Basic YWxpY2U6c2VjcmV0", "malformed Authorization header"),
        ("Bearer a b", "malformed Authorization header"),
        ("Bearer not-a-token", "unrecognized token"),
        ("Bearer a.b.c", "malformed JWT"),
    ],
)
def test_missing_or_malformed_header(
    auth: Authenticator, header: str | None, expected: str
) -> None:
    assert expected in refused(auth, header)


# -- job tokens ------------------------------------------------------------------------------


def test_job_token_roundtrip(auth: Authenticator, db: Engine) -> None:
    wf, work, job, attempt = running_job(db)
    token = auth.issue_job_token(
        user="alice", workflow_id=wf, work_id=work, job_id=job, holder=(job, attempt)
    )
    assert auth.authenticate(bearer(token)) == Principal(
        user="alice", kind="job", workflow_id=wf, work_id=work, job_id=job,
        holder_job=job, holder_attempt=attempt,
    )
    runner = auth.issue_job_token(user="alice", workflow_id=wf, holder=(job, attempt))
    assert auth.authenticate(bearer(runner)) == Principal(
        user="alice", kind="job", workflow_id=wf, work_id=None, job_id=None,
        holder_job=job, holder_attempt=attempt,
    )
    claims = jwt.decode(runner, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 24 * 3600  # settings.job_token_ttl


def test_job_token_dies_with_its_job_attempt(auth: Authenticator, db: Engine) -> None:
    wf, _, job, attempt = running_job(db)
    token = auth.issue_job_token(user="alice", workflow_id=wf, holder=(job, attempt))
    stale = auth.issue_job_token(user="alice", workflow_id=wf, holder=(job, attempt - 1))
    assert "has ended" in refused(auth, bearer(stale))  # an earlier attempt's token
    assert auth.authenticate(bearer(token)).workflow_id == wf
    end_job(db, job)
    assert refused(auth, bearer(token)) == (
        f"job token of job {job} attempt {attempt}: that attempt has ended"
    )
    ghost = auth.issue_job_token(user="alice", workflow_id=wf, holder=(10**9, 1))
    assert "has ended" in refused(auth, bearer(ghost))


def test_tampered_job_token_is_refused(auth: Authenticator) -> None:
    token = auth.issue_job_token(user="alice", workflow_id=7, work_id=3, holder=(1, 1))
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["wf"] = 8
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert "invalid signature" in refused(auth, bearer(f"{header}.{forged}.{signature}"))


def test_expired_job_token_is_refused(auth: Authenticator) -> None:
    token = auth.issue_job_token(user="alice", workflow_id=7, ttl=-5, holder=(1, 1))
    assert refused(auth, bearer(token)) == "job token expired"


def test_job_token_of_another_server_is_refused(
    auth: Authenticator, db: Engine, tmp_path: Path, db_url: str
) -> None:
    other = Authenticator(db=db, settings=make_settings(tmp_path / "other", db_url))
    token = other.issue_job_token(user="alice", workflow_id=7, holder=(1, 1))
    assert "invalid signature" in refused(auth, bearer(token))


def test_hs256_jwt_without_job_claims_is_refused(auth: Authenticator) -> None:
    key = auth._signing_key()
    now = int(time.time())
    not_job = jwt.encode(
        {"sub": "alice", "wf": 1, "typ": "user", "hj": 1, "ha": 1, "exp": now + 60}, key, "HS256"
    )
    assert "unexpected claims" in refused(auth, bearer(not_job))
    no_wf = jwt.encode({"sub": "alice", "typ": "job", "exp": now + 60}, key, "HS256")
    assert "invalid job token" in refused(auth, bearer(no_wf))


def test_secret_key_setting_is_shared_and_writes_no_file(
    db: Engine, tmp_path: Path, db_url: str
) -> None:
    one = Authenticator(
        db=db, settings=make_settings(tmp_path / "a", db_url, secret_key="correct horse")
    )
    two = Authenticator(
        db=db, settings=make_settings(tmp_path / "b", db_url, secret_key="correct horse")
    )
    wf, _, job, attempt = running_job(db)
    token = one.issue_job_token(user="alice", workflow_id=wf, holder=(job, attempt))
    assert two.authenticate(bearer(token)).workflow_id == wf
    assert not (tmp_path / "a" / "server.key").exists()


# -- server key ------------------------------------------------------------------------------


def test_server_key_file_is_created_0600_and_reused(
    auth: Authenticator, db: Engine, home: Path, db_url: str
) -> None:
    path = home / "server.key"
    assert not path.exists()  # created lazily, on first use
    wf, _, job, attempt = running_job(db)
    token = auth.issue_job_token(user="alice", workflow_id=wf, holder=(job, attempt))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_bytes()
    assert len(key) == 32
    assert sorted(p.name for p in home.iterdir()) == ["server.key"]  # no temp file left over
    again = Authenticator(db=db, settings=make_settings(home, db_url))
    assert again.authenticate(bearer(token)).user == "alice"
    assert path.read_bytes() == key
    assert server_key(make_settings(home, db_url)) == key


def test_truncated_server_key_file_is_an_error(home: Path, db_url: str) -> None:
    home.mkdir()
    fd = os.open(home / "server.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(ConfigError, match="truncated"):
        server_key(make_settings(home, db_url))


# -- OIDC ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "RS256"
    else:
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "ES256"
    return data | {"kid": kid, "alg": alg, "use": "sig"}


def write_jwks(path: Path, *keys: dict[str, Any]) -> None:
    path.write_text(json.dumps({"keys": list(keys)}))


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk(rsa_key, "k1"))
    return path


def oidc_settings(home: Path, db_url: str, jwks: str, **values: Any) -> Settings:
    values = {"oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, "oidc_jwks": jwks} | values
    return make_settings(home, db_url, **values)


@pytest.fixture
def oidc(db: Engine, home: Path, db_url: str, jwks_file: Path) -> Authenticator:
    return Authenticator(db=db, settings=oidc_settings(home, db_url, str(jwks_file)))


def id_token(key: Any, kid: str | None = "k1", alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    body |= claims
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def test_oidc_token_authenticates(oidc: Authenticator, rsa_key: rsa.RSAPrivateKey) -> None:
    assert oidc.authenticate(bearer(id_token(rsa_key))) == Principal(user="alice")
    two_audiences = id_token(rsa_key, aud=["other", AUDIENCE])
    assert oidc.authenticate(bearer(two_audiences)).user == "alice"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"aud": "someone-else"}, "OIDC token has the wrong audience (aud)"),
        ({"iss": "https://evil.example.org"}, "OIDC token has the wrong issuer (iss)"),
        ({"exp": int(time.time()) - 120}, "OIDC token expired"),
        ({"sub": ""}, "OIDC token has no 'sub' claim"),
    ],
    ids=["audience", "issuer", "expired", "no-user"],
)
def test_oidc_claims_are_checked(
    oidc: Authenticator, rsa_key: rsa.RSAPrivateKey, claims: dict[str, Any], expected: str
) -> None:
    assert refused(oidc, bearer(id_token(rsa_key, **claims))) == expected


def test_oidc_wrong_key_or_unknown_kid(
    oidc: Authenticator, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    assert "invalid signature" in refused(oidc, bearer(id_token(other_rsa_key)))
    assert "unknown key" in refused(oidc, bearer(id_token(rsa_key, kid="nope")))
    assert oidc.authenticate(bearer(id_token(rsa_key, kid=None))).user == "alice"  # only key


def test_oidc_unknown_kid_reloads_the_jwks_file(
    oidc: Authenticator,
    jwks_file: Path,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
) -> None:
    oidc.authenticate(bearer(id_token(rsa_key)))
    rotated = id_token(other_rsa_key, kid="k2")
    assert "unknown key" in refused(oidc, bearer(rotated))
    write_jwks(jwks_file, jwk(rsa_key, "k1"), jwk(other_rsa_key, "k2"))
    assert oidc.authenticate(bearer(rotated)).user == "alice"


def test_oidc_user_claim_admins_and_ec_keys(
    db: Engine, home: Path, db_url: str, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "jwks2.json"
    write_jwks(path, jwk(rsa_key, "k1"), jwk(ec_key, "e1"))
    settings = oidc_settings(
        home, db_url, str(path), oidc_user_claim="preferred_username", admins=["boss"]
    )
    auth = Authenticator(db=db, settings=settings)
    token = id_token(rsa_key, preferred_username="boss")
    assert auth.authenticate(bearer(token)) == Principal(user="boss", is_admin=True)
    token = id_token(ec_key, kid="e1", alg="ES256", preferred_username="dave")
    assert auth.authenticate(bearer(token)) == Principal(user="dave")
    # the RSA key cannot verify an ES256 token, whatever the header claims
    assert "invalid OIDC token" in refused(
        auth, bearer(id_token(ec_key, kid="k1", alg="ES256", preferred_username="x"))
    )


def test_oidc_disabled_refuses_foreign_jwts(
    auth: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert "OIDC is not enabled" in refused(auth, bearer(id_token(rsa_key)))
    unsigned = jwt.encode({"sub": "alice"}, None, algorithm="none")
    assert "unsupported JWT" in refused(auth, bearer(unsigned))


def test_oidc_needs_audience_and_jwks(db: Engine, home: Path, db_url: str) -> None:
    with pytest.raises(ConfigError, match="oidc_audience"):
        Authenticator(db=db, settings=make_settings(home, db_url, oidc_issuer=ISSUER))


def test_oidc_missing_jwks_file_is_a_401(
    db: Engine, home: Path, db_url: str, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = oidc_settings(home, db_url, str(tmp_path / "missing.json"))
    auth = Authenticator(db=db, settings=settings)
    assert "signing keys are unavailable" in refused(auth, bearer(id_token(rsa_key)))


@pytest.fixture
def jwks_url(jwks_file: Path) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = jwks_file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_oidc_jwks_from_url(
    db: Engine, home: Path, db_url: str, jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = Authenticator(db=db, settings=oidc_settings(home, db_url, jwks_url))
    assert auth.authenticate(bearer(id_token(rsa_key))).user == "alice"
    assert "unknown key" in refused(auth, bearer(id_token(rsa_key, kid="k9")))


# -- tasklift token (CLI) --------------------------------------------------------------------


@pytest.fixture
def run_cli(db: Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKLIFT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TASKLIFT_DB_URL", raising=False)

    def run(*args: str, url: str = db_url) -> Any:
        return CliRunner().invoke(cli, ["--db", url, *args], catch_exceptions=False)

    return run


def test_cli_create_list_revoke(run_cli: Any, auth: Authenticator) -> None:
    result = run_cli("token", "create", "--user", "alice", "--name", "laptop")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "shown only now" in result.stderr
    assert auth.authenticate(bearer(token)) == Principal(user="alice")
    token_id = int(token.split("_")[1])
    digest = hashlib.sha256(token.split("_", 2)[2].encode()).hexdigest()

    listing = run_cli("token", "list")
    assert listing.exit_code == 0, listing.output
    assert "alice" in listing.output and "laptop" in listing.output
    assert digest not in listing.output and token not in listing.output
    rows = json.loads(run_cli("token", "list", "--user", "alice", "--json").stdout)
    assert [(r["id"], r["user"], r["status"]) for r in rows] == [(token_id, "alice", "active")]
    assert "token_hash" not in rows[0] and digest not in json.dumps(rows)

    result = run_cli("token", "revoke", str(token_id))
    assert result.exit_code == 0, result.output
    assert "revoked" in refused(auth, bearer(token))
    rows = json.loads(run_cli("token", "list", "--json").stdout)
    assert rows[0]["status"] == "revoked"


def test_cli_create_json_admin_and_no_expiry(run_cli: Any, auth: Authenticator) -> None:
    result = run_cli(
        "token", "create", "--user", "root", "--admin", "--expires-days", "0", "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["expires_at"] is None and out["is_admin"] is True
    assert auth.authenticate(bearer(out["token"])) == Principal(user="root", is_admin=True)


def test_cli_errors(run_cli: Any, tmp_path: Path) -> None:
    result = run_cli("token", "revoke", "12345")
    assert result.exit_code == 1
    assert "API token 12345 does not exist" in result.output
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = run_cli("token", "list", url=fresh)
    assert result.exit_code == 1
    assert "tasklift db upgrade" in result.output


@pytest.mark.postgres
def test_tokens_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    engine = create_db_engine(pg_url)
    try:
        upgrade(engine)
        auth = Authenticator(db=engine, settings=make_settings(tmp_path / "home", pg_url))
        token_id, token = auth.create_token(user="alice", name="pg")
        assert auth.authenticate(bearer(token)) == Principal(user="alice")
        assert [t.user for t in auth.list_tokens("alice")] == ["alice"]
        assert refused(auth, bearer(f"tl_999999999_{'A' * 43}")) == "invalid API token"
        with pytest.raises(NotFoundError):
            auth.revoke_token(2**40)
        auth.revoke_token(token_id)
        assert "revoked" in refused(auth, bearer(token))
        wf, work, job_id, attempt = running_job(engine)
        job = auth.issue_job_token(
            user="alice", workflow_id=wf, work_id=work, holder=(job_id, attempt)
        )
        assert auth.authenticate(bearer(job)).work_id == work
    finally:
        engine.dispose()
