"""Auth holds who people are sealed with their own key (issue 14): no address, name or provider subject in
the database, accounts found again by blind index, a ciphertext moved to another user's row does not
open, erasure shreds the key first, and an existing database is encrypted in place."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import grpc
import pytest
import pytest_asyncio
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.identity.v1 import identity_pb2, identity_pb2_grpc
from conftest import StartService, auth_metadata, service_settings
from doubles.oidc_provider import FakeOidcProvider
from privacy_fixtures import dump_database, files_holding, fresh_database

from auth.app import AUTH, AuthDeps
from auth.migrate import MIGRATIONS_DIR, apply_migrations
from auth.postgres import PostgresAuthStore
from auth.privacy import DATA_KEYS_TABLE
from auth.settings import AuthSettings, GoogleSettings
from devstack.postgres import EmbeddedPostgres
from devstack.valkey import EmbeddedValkey
from mesh import migrations
from mesh.app import RunningService
from mesh.envelope import DataKeys
from mesh.keystore import PostgresDataKeys
from mesh.kms import LocalKeyFile, add_key

ROOT = Path(__file__).resolve().parents[2]
REDIRECT = "http://127.0.0.1:8080/"
Stub = auth_pb2_grpc.AuthServiceStub


def _secret() -> str:
    return f"zq{secrets.token_hex(5)}"


def _address() -> str:
    return f"{_secret()}@example.com"


class Auth:
    """A running auth service and its stubs."""

    def __init__(self, service: RunningService) -> None:
        self.service = service
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        self.stub = Stub(self.channel)
        self.identity = identity_pb2_grpc.IdentityServiceStub(self.channel)

    async def sign_in(self, email: str, name: str = "") -> auth_pb2.Session:
        return (await self.stub.DevLogin(auth_pb2.DevLoginRequest(email=email, display_name=name))).session


async def _start(start_service: StartService, tmp_path: Path, database_url: str, **settings: Any) -> Auth:
    auth = Auth(
        await start_service(
            AUTH,
            AuthSettings(**service_settings(tmp_path, database_url=database_url, **settings)),
            AuthDeps(),
        )
    )
    auth.service.deps.on_close(lambda: auth.channel.close(None))
    return auth


@pytest_asyncio.fixture
async def auth(
    start_service: StartService,
    postgres: EmbeddedPostgres,
    valkey: EmbeddedValkey,
    kms_keys_dir: Path,
    tmp_path: Path,
) -> Auth:
    """Auth on the suite's PostgreSQL and Valkey (erasure revokes the account's tokens there first)."""
    return await _start(
        start_service, tmp_path, postgres.url, env="dev", kms_keys_dir=kms_keys_dir, redis_url=valkey.url
    )


@pytest_asyncio.fixture
async def superuser(postgres: EmbeddedPostgres) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(postgres.superuser_url)
    yield connection
    await connection.close()


async def _expect(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value


async def test_neither_address_nor_name_appears_in_the_database(
    auth: Auth, postgres: EmbeddedPostgres, superuser: asyncpg.Connection
) -> None:
    email, name = _address(), f"Ada {_secret()}"
    session = await auth.sign_in(email.upper(), name)
    # The person sees their address and name, and so do the access token and a refreshed session...
    assert (session.user.email, session.user.display_name) == (email, name)
    assert (await auth.service.verifier.verify(session.access_token)).email == email
    refreshed = await auth.stub.RefreshSession(
        auth_pb2.RefreshSessionRequest(refresh_token=session.refresh_token)
    )
    assert (refreshed.session.user.email, refreshed.session.user.display_name) == (email, name)
    # ...but neither a superuser's dump of every table nor the database's files (tables, indexes,
    # write-ahead log) hold them; the dev identity's subject is the address, sealed as well.
    await superuser.execute("CHECKPOINT")
    dump = (await dump_database(postgres.superuser_url)).lower()
    local_part, surname = email.split("@")[0], name.split()[1]
    for word in (local_part, surname):
        assert word not in dump
    assert await asyncio.to_thread(files_holding, Path(postgres.data_dir), (local_part, surname)) == []
    row = await superuser.fetchrow(
        "SELECT u.email, u.display_name, u.email_index, i.subject, i.subject_index "
        "FROM auth.users u JOIN auth.identities i ON i.user_id = u.id WHERE u.id = $1",
        uuid.UUID(session.user.id),
    )
    assert all(isinstance(value, bytes) for value in row.values())
    assert len(row["email_index"]) == len(row["subject_index"]) == 16


async def test_the_same_address_finds_the_same_account_and_addresses_stay_unique(
    auth: Auth, superuser: asyncpg.Connection
) -> None:
    email = _address()
    first = await auth.sign_in(email, "Ada")
    again = await auth.sign_in(f"  {email.upper()} ")
    assert again.user.id == first.user.id
    assert again.user.display_name == "Ada"
    # Five first sign-ins of one new address at once: one account.
    newcomer = _address()
    sessions = await asyncio.gather(*(auth.sign_in(newcomer) for _ in range(5)))
    assert len({session.user.id for session in sessions}) == 1
    index = await superuser.fetchval(
        "SELECT email_index FROM auth.users WHERE id = $1", uuid.UUID(sessions[0].user.id)
    )
    assert await superuser.fetchval("SELECT count(*) FROM auth.users WHERE email_index = $1", index) == 1
    # Another account's index copied in is refused by the database itself.
    with pytest.raises(asyncpg.UniqueViolationError):
        await superuser.execute(
            "UPDATE auth.users SET email_index = $1 WHERE id = $2", index, uuid.UUID(first.user.id)
        )
    # The index is keyed: not a plain hash of the address.
    plain = {hashlib.sha256(text.encode()).digest()[:16] for text in (newcomer, f"email:{newcomer}")}
    assert index not in plain


async def test_a_sealed_address_copied_to_another_users_row_does_not_open(
    auth: Auth, superuser: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    alice_email, bob_email = _address(), _address()
    alice = await auth.sign_in(alice_email, "Alice")
    bob = await auth.sign_in(bob_email, "Bob")
    # An attacker with write access copies Alice's sealed address into Bob's row.
    await superuser.execute(
        "UPDATE auth.users SET email = (SELECT email FROM auth.users WHERE id = $1) WHERE id = $2",
        uuid.UUID(alice.user.id),
        uuid.UUID(bob.user.id),
    )
    with caplog.at_level(logging.ERROR):
        for call in (
            auth.stub.DevLogin(auth_pb2.DevLoginRequest(email=bob_email)),
            auth.stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=bob.refresh_token)),
        ):
            error = await _expect(call, grpc.StatusCode.DATA_LOSS)
            assert "integrity" in (error.details() or "")
            assert alice_email not in (error.details() or "")
    assert "integrity error" in caplog.text
    assert alice_email not in caplog.text
    # Alice's own account is intact.
    assert (await auth.sign_in(alice_email)).user.email == alice_email


async def _erase(auth: Auth, session: auth_pb2.Session) -> identity_pb2.EraseUserResponse:
    request = identity_pb2.EraseUserRequest()
    response: identity_pb2.EraseUserResponse = await auth.identity.EraseUser(
        request, metadata=auth_metadata(session.access_token)
    )
    return response


async def test_erasure_destroys_the_data_key_and_restored_rows_stay_sealed(
    auth: Auth, superuser: asyncpg.Connection
) -> None:
    email = _address()
    session = await auth.sign_in(email, "Grace")
    user_id = uuid.UUID(session.user.id)
    backup = await superuser.fetchrow("SELECT * FROM auth.users WHERE id = $1", user_id)
    assert await superuser.fetchval("SELECT count(*) FROM auth.data_keys WHERE owner = $1", str(user_id)) == 1

    assert (await _erase(auth, session)).erased
    assert await superuser.fetchval("SELECT count(*) FROM auth.data_keys WHERE owner = $1", str(user_id)) == 0
    assert await superuser.fetchval("SELECT count(*) FROM auth.users WHERE id = $1", user_id) == 0

    # The row restored from a copy taken before: it no longer opens, and signing in with the address
    # starts a new account instead.
    columns = list(backup.keys())
    await superuser.execute(
        f"INSERT INTO auth.users ({', '.join(columns)}) "  # noqa: S608
        f"VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))})",
        *backup.values(),
    )
    again = await auth.sign_in(email)
    assert again.user.id != session.user.id
    assert again.user.display_name == email.split("@")[0]
    assert await superuser.fetchval("SELECT count(*) FROM auth.users WHERE id = $1", user_id) == 0


async def test_the_key_goes_first_even_when_deleting_the_rows_fails(
    auth: Auth, superuser: asyncpg.Connection
) -> None:
    email = _address()
    session = await auth.sign_in(email, "Hedy")
    user_id = uuid.UUID(session.user.id)
    guard = f"auth.refuse_{user_id.hex}"
    await superuser.execute(
        f"CREATE FUNCTION {guard}() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'the disk is full'; END $$"
    )
    await superuser.execute(
        f"CREATE TRIGGER refuse_{user_id.hex} BEFORE DELETE ON auth.users FOR EACH ROW "
        f"WHEN (OLD.id = '{user_id}') EXECUTE FUNCTION {guard}()"
    )
    try:
        await _expect(_erase(auth, session), grpc.StatusCode.INTERNAL)
        # The rows are still there, but nobody can read them any more.
        assert await superuser.fetchval("SELECT count(*) FROM auth.users WHERE id = $1", user_id) == 1
        assert (
            await superuser.fetchval("SELECT count(*) FROM auth.data_keys WHERE owner = $1", str(user_id))
            == 0
        )
    finally:
        await superuser.execute(f"DROP TRIGGER refuse_{user_id.hex} ON auth.users")
        await superuser.execute(f"DROP FUNCTION {guard}()")
    # The session is over, and the next sign-in with the address finishes the erasure.
    await _expect(
        auth.stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=session.refresh_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert (await auth.sign_in(email)).user.id != session.user.id
    assert await superuser.fetchval("SELECT count(*) FROM auth.users WHERE id = $1", user_id) == 0


async def _google_sign_in(
    stub: Stub, idp: FakeOidcProvider, subject: str, email: str, name: str
) -> auth_pb2.Session:
    answer = await stub.BeginLogin(auth_pb2.BeginLoginRequest(provider="google", redirect_uri=REDIRECT))
    query = {key: values[0] for key, values in parse_qs(urlsplit(answer.authorization_url).query).items()}
    code = idp.mint_code(
        redirect_uri=REDIRECT,
        code_challenge=query["code_challenge"],
        nonce=query["nonce"],
        subject=subject,
        email=email,
        claims={"name": name},
    )
    completed = await stub.CompleteLogin(auth_pb2.CompleteLoginRequest(state=answer.state, code=code))
    session: auth_pb2.Session = completed.session
    return session


async def test_an_existing_database_is_encrypted_in_place(
    postgres: EmbeddedPostgres, start_service: StartService, tmp_path: Path
) -> None:
    """A database of the release before encryption (auth_0001) with people signed up through the dev
    provider and Google upgrades when the service starts: the same accounts, sessions that go on, and
    no address, name or subject left readable."""
    url, superuser_url = await fresh_database(postgres)
    old = tmp_path / "old-migrations"
    old.mkdir()
    for name in ("auth_0001_schema.sql", "auth_0001_schema.rollback.sql"):
        shutil.copy(MIGRATIONS_DIR / name, old / name)
    await asyncio.to_thread(migrations.apply_migrations, url, old)
    now = datetime.now(UTC)
    dev_user, google_user = uuid.uuid4(), uuid.uuid4()
    dev_email, google_email, google_subject = _address(), _address(), f"10{secrets.randbelow(10**18)}"
    dev_name, google_name = f"Ada {_secret()}", f"Grace {_secret()}"
    refresh_token = secrets.token_urlsafe(32)
    superuser = await asyncpg.connect(superuser_url)
    try:
        for user_id, email, name, provider, subject in (
            (dev_user, dev_email, dev_name, "dev", dev_email),
            (google_user, google_email, google_name, "google", google_subject),
        ):
            await superuser.execute(
                "INSERT INTO auth.users (id, email, display_name, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $4)",
                user_id,
                email,
                name,
                now,
            )
            await superuser.execute(
                "INSERT INTO auth.identities (provider, subject, user_id, created_at) "
                "VALUES ($1, $2, $3, $4)",
                provider,
                subject,
                user_id,
                now,
            )
        family = uuid.uuid4()
        await superuser.execute(
            "INSERT INTO auth.sessions (id, user_id, created_at) VALUES ($1, $2, $3)", family, dev_user, now
        )
        await superuser.execute(
            "INSERT INTO auth.refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            uuid.uuid4(),
            family,
            dev_user,
            hashlib.sha256(refresh_token.encode()).digest(),
            now,
            now + timedelta(days=30),
        )
    finally:
        await superuser.close()

    google = FakeOidcProvider(client_id="google-client", client_secret="google-secret")
    await google.start()
    try:
        auth = await _start(
            start_service,
            tmp_path,
            url,
            env="dev",
            google=GoogleSettings(
                discovery_url=google.discovery_url,
                client_id=google.client_id,
                client_secret=google.client_secret,
                redirect_uris=(REDIRECT,),
            ),
        )
        # Signed in before the upgrade: the session goes on.
        refreshed = await auth.stub.RefreshSession(
            auth_pb2.RefreshSessionRequest(refresh_token=refresh_token)
        )
        assert (refreshed.session.user.id, refreshed.session.user.email) == (str(dev_user), dev_email)
        assert refreshed.session.user.display_name == dev_name
        # The address finds its account (blind index), the name is kept.
        again = await auth.sign_in(dev_email.upper())
        assert (again.user.id, again.user.display_name) == (str(dev_user), dev_name)
        # The Google account is found by its subject (not its address, which changed at Google meanwhile).
        moved = _address()
        session = await _google_sign_in(auth.stub, google, google_subject, moved, google_name)
        assert (session.user.id, session.user.email) == (str(google_user), moved)
    finally:
        await google.stop()
    dump = await dump_database(superuser_url)
    for word in (dev_email, dev_name, google_email, google_name, google_subject, moved):
        assert word not in dump
    kms = LocalKeyFile.load(tmp_path / "kms-keys")  # the service's own (a dev start made it)
    assert await asyncio.to_thread(apply_migrations, url, kms) == []


async def test_rewrap_keys_moves_every_data_key_under_a_new_kek_online(
    postgres: EmbeddedPostgres, start_service: StartService, tmp_path: Path
) -> None:
    """One deployment (its own database, its KMS keys): a KEK added, `python -m auth rewrap-keys` moves
    every data key under it (the users' and the index key) while the service runs and signs people in."""
    url, superuser_url = await fresh_database(postgres)
    auth = await _start(start_service, tmp_path, url, env="dev")
    email = _address()
    before = await auth.sign_in(email, "Ada")
    new_kek = add_key(tmp_path / "kms-keys", datetime(2100, 1, 1, tzinfo=UTC))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "auth", "rewrap-keys"],
        cwd=ROOT,
        env={
            **os.environ,
            "ATHENA_ENV": "prod",
            "ATHENA_KMS_KEYS_DIR": str(tmp_path / "kms-keys"),
            "AUTH_DATABASE_URL": url,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"rewrapped 2 data key(s) under {new_kek}" in done.stdout
    superuser = await asyncpg.connect(superuser_url)
    try:
        owners = dict(await superuser.fetch("SELECT owner, kek_id FROM auth.data_keys"))
    finally:
        await superuser.close()
    assert owners == {before.user.id: new_kek, "service:lookup-index": new_kek}
    assert (await auth.sign_in(email)).user.id == before.user.id
    await auth.sign_in(_address())  # a new person after the rotation


async def test_maintenance_deletes_data_keys_of_users_never_created(
    auth: Auth, postgres: EmbeddedPostgres, kms_keys_dir: Path, superuser: asyncpg.Connection
) -> None:
    """A user's key is made before their row; when the row's transaction fails (a sign-in racing
    another), the key is nobody's, and the maintenance of a day later deletes it."""
    person = await auth.sign_in(_address())
    stale, recent = str(uuid.uuid4()), str(uuid.uuid4())
    for owner, age in ((stale, timedelta(days=2)), (recent, timedelta(0))):
        await superuser.execute(
            "INSERT INTO auth.data_keys (owner, kek_id, wrapped, created_at) VALUES ($1, 'k', '\\x00', $2)",
            owner,
            datetime.now(UTC) - age,
        )
    await superuser.execute(
        "UPDATE auth.data_keys SET created_at = created_at - interval '2 days' WHERE owner = ANY($1)",
        [person.user.id, "service:lookup-index"],
    )
    pool = await asyncpg.create_pool(postgres.url, min_size=1, max_size=2)
    try:
        keys = DataKeys(PostgresDataKeys(pool, DATA_KEYS_TABLE), LocalKeyFile.load(kms_keys_dir), "auth")
        async with PostgresAuthStore(pool, keys).transaction() as tx:
            await tx.purge_expired(datetime.now(UTC))
    finally:
        await pool.close()
    owners = {
        row["owner"]
        for row in await superuser.fetch(
            "SELECT owner FROM auth.data_keys WHERE owner = ANY($1)",
            [stale, recent, person.user.id, "service:lookup-index"],
        )
    }
    assert owners == {recent, person.user.id, "service:lookup-index"}
