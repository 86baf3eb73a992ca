"""The AWS KMS adapter (`mesh.kms_aws.AwsKms`) against a KMS emulator (moto's server) on a loopback port,
and `mesh.envelope.DataKeys` over it with its PostgreSQL store.

Where moto is looser than AWS KMS (it encrypts under a disabled key, ignores ReEncrypt's SourceKeyId, and
answers a Decrypt naming the wrong key with AccessDeniedException rather than IncorrectKeyException), the
error codes AWS KMS would send come from a loopback endpoint that answers every call with one of them
(`faulty_kms`), so the translation of each is tested as botocore receives it.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
import pytest_asyncio
from aiohttp import web
from aws_fixtures import isolate_aws, running_moto
from botocore.config import Config

from devstack.postgres import EmbeddedPostgres
from devstack.process import free_port
from mesh.envelope import DataKeys, NoDataKey
from mesh.errors import DataLoss
from mesh.keystore import DATA_KEYS_DDL, PostgresDataKeys
from mesh.kms import KeyMismatch, KmsError, WrappedKey, from_settings
from mesh.kms_aws import AwsKms
from mesh.postgres import close_pool, open_pool
from mesh.settings import ServiceSettings

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

REGION = "eu-west-1"
USER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
OTHER = "0f8fad5b-d9cb-469f-a165-70867728950e"
CONTEXT = {"service": "memory", "owner": USER}
DATA_KEY = bytes(range(32))


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One emulator for the module's tests; each test makes its own keys."""
    with running_moto(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_aws(monkeypatch, tmp_path)


@pytest.fixture
def admin(moto_endpoint: str) -> KMSClient:
    """The emulator's KMS as an operator uses it (creating, aliasing, disabling keys)."""
    return boto3.client("kms", region_name=REGION, endpoint_url=moto_endpoint)


@pytest.fixture
def aws_kms(moto_endpoint: str) -> Callable[[str], AwsKms]:
    """An `AwsKms` of the emulator configured with a key id, ARN or alias."""

    def make(key_id: str) -> AwsKms:
        return AwsKms(key_id, region=REGION, endpoint_url=moto_endpoint)

    return make


def new_key(admin: KMSClient, alias: str | None = None) -> str:
    """A new symmetric encryption key's ARN, optionally with an alias."""
    metadata = admin.create_key(Description="athena test key")["KeyMetadata"]
    if alias is not None:
        admin.create_alias(AliasName=alias, TargetKeyId=metadata["KeyId"])
    return metadata["Arn"]


def key_id(arn: str) -> str:
    return arn.rsplit("/", 1)[1]


def unique_alias() -> str:
    return f"alias/athena-{uuid.uuid4().hex[:8]}"


async def test_a_data_key_wraps_under_the_key_arn_and_opens_with_its_context(
    admin: KMSClient, aws_kms: Callable[[str], AwsKms]
) -> None:
    arn = new_key(admin)
    kms = aws_kms(arn)
    wrapped = await kms.wrap(DATA_KEY, CONTEXT)
    assert wrapped.kek_id == arn == kms.current_kek_id
    assert DATA_KEY not in wrapped.blob
    assert await kms.unwrap(wrapped, CONTEXT) == DATA_KEY


@pytest.mark.parametrize("form", ["key id", "key ARN", "alias name", "alias ARN"])
async def test_every_form_of_key_id_resolves_to_the_key_arn(
    admin: KMSClient, aws_kms: Callable[[str], AwsKms], form: str
) -> None:
    alias = unique_alias()
    arn = new_key(admin, alias)
    account_region = arn.split(":key/")[0]
    configured = {
        "key id": key_id(arn),
        "key ARN": arn,
        "alias name": alias,
        "alias ARN": f"{account_region}:{alias}",
    }[form]
    kms = aws_kms(configured)
    assert await kms.resolve() == arn
    assert (await kms.wrap(DATA_KEY, CONTEXT)).kek_id == arn


async def test_the_current_key_can_be_read_before_any_call(
    admin: KMSClient, aws_kms: Callable[[str], AwsKms]
) -> None:
    """`DataKeys.rewrap_all` reads it first thing, synchronously."""
    alias = unique_alias()
    arn = new_key(admin, alias)
    assert aws_kms(alias).current_kek_id == arn


async def test_a_wrapped_key_opens_only_with_its_context(
    admin: KMSClient, aws_kms: Callable[[str], AwsKms]
) -> None:
    kms = aws_kms(new_key(admin))
    wrapped = await kms.wrap(DATA_KEY, CONTEXT)
    with pytest.raises(KeyMismatch):
        await kms.unwrap(wrapped, {"service": "memory", "owner": OTHER})
    with pytest.raises(KeyMismatch):
        await kms.unwrap(wrapped, {"service": "auth", "owner": USER})
    with pytest.raises(KeyMismatch):
        await kms.unwrap(
            WrappedKey(wrapped.kek_id, wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1])), CONTEXT
        )
    with pytest.raises(KeyMismatch):
        await kms.rewrap(wrapped, {"service": "memory", "owner": OTHER})


async def test_a_blob_wrapped_by_another_key_than_it_names_is_refused(
    admin: KMSClient, aws_kms: Callable[[str], AwsKms]
) -> None:
    """Decrypt names the key: without KeyId KMS would open the blob with whichever key it names itself.
    (AWS KMS says IncorrectKeyException, a KeyMismatch; moto says AccessDeniedException, a KmsError.)"""
    named, actual = new_key(admin), new_key(admin)
    wrapped = await aws_kms(actual).wrap(DATA_KEY, CONTEXT)
    with pytest.raises(KmsError):
        await aws_kms(named).unwrap(WrappedKey(named, wrapped.blob), CONTEXT)


async def test_rewrap_moves_a_data_key_to_the_current_key(
    admin: KMSClient, aws_kms: Callable[[str], AwsKms]
) -> None:
    old_arn, new_alias = new_key(admin), unique_alias()
    new_arn = new_key(admin, new_alias)
    old, new = aws_kms(old_arn), aws_kms(new_alias)
    wrapped = await old.wrap(DATA_KEY, CONTEXT)
    moved = await new.rewrap(wrapped, CONTEXT)
    assert moved.kek_id == new_arn != wrapped.kek_id
    assert await new.unwrap(moved, CONTEXT) == DATA_KEY
    # A process still configured with the old key opens keys already moved: a rollout can be gradual.
    assert await old.unwrap(moved, CONTEXT) == DATA_KEY
    # And the old wrapping still opens while the old key is enabled: rewrap-keys may run after the rollout.
    assert await new.unwrap(wrapped, CONTEXT) == DATA_KEY


def disable(admin: KMSClient, arn: str) -> None:
    admin.disable_key(KeyId=key_id(arn))  # moto takes only a bare key id here


def schedule_deletion(admin: KMSClient, arn: str) -> None:
    admin.schedule_key_deletion(KeyId=key_id(arn), PendingWindowInDays=7)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [(disable, "is Disabled, not Enabled"), (schedule_deletion, "is PendingDeletion, not Enabled")],
)
async def test_a_key_that_is_not_enabled_does_not_wrap(
    admin: KMSClient,
    aws_kms: Callable[[str], AwsKms],
    spoil: Callable[[KMSClient, str], None],
    message: str,
) -> None:
    alias = unique_alias()
    arn = new_key(admin, alias)
    spoil(admin, arn)
    kms = aws_kms(alias)
    with pytest.raises(KmsError, match=message) as raised:
        await kms.wrap(DATA_KEY, CONTEXT)
    assert alias in str(raised.value)
    assert arn in str(raised.value)
    assert "ATHENA_KMS_AWS_KEY_ID" in str(raised.value)
    with pytest.raises(KmsError, match=message):
        _ = kms.current_kek_id


async def test_an_asymmetric_key_does_not_wrap(admin: KMSClient, aws_kms: Callable[[str], AwsKms]) -> None:
    arn = admin.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
    with pytest.raises(KmsError, match="needs a symmetric encryption key"):
        await aws_kms(arn).wrap(DATA_KEY, CONTEXT)


async def test_a_missing_key_is_named(admin: KMSClient, aws_kms: Callable[[str], AwsKms]) -> None:
    with pytest.raises(KmsError, match="alias/athena-missing does not exist"):
        await aws_kms("alias/athena-missing").wrap(DATA_KEY, CONTEXT)


async def test_an_unreachable_endpoint_is_a_clear_kms_error() -> None:
    port = free_port()  # nobody listens there
    kms = AwsKms("alias/athena", region=REGION, endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(KmsError, match=f"cannot reach AWS KMS for DescribeKey.*127.0.0.1:{port}") as raised:
        await kms.wrap(DATA_KEY, CONTEXT)
    assert type(raised.value) is KmsError
    with pytest.raises(KmsError, match="cannot reach AWS KMS for Decrypt"):
        await kms.unwrap(WrappedKey("arn:aws:kms:eu-west-1:123456789012:key/x", b"blob"), CONTEXT)


async def test_no_credentials_is_a_clear_kms_error(
    monkeypatch: pytest.MonkeyPatch, aws_kms: Callable[[str], AwsKms]
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(KmsError, match=r"no usable AWS credentials.*web identity token"):
        await aws_kms("alias/athena").wrap(DATA_KEY, CONTEXT)


async def test_data_keys_never_reach_the_logs_even_at_debug(
    admin: KMSClient, aws_kms: Callable[[str], AwsKms], caplog: pytest.LogCaptureFixture
) -> None:
    """botocore logs request and response bodies at DEBUG; Encrypt's and Decrypt's carry the data key."""
    logging.getLogger("botocore").setLevel(logging.NOTSET)  # as in a fresh process
    caplog.set_level(logging.DEBUG)
    kms = aws_kms(new_key(admin))
    wrapped = await kms.wrap(DATA_KEY, CONTEXT)
    assert await kms.unwrap(wrapped, CONTEXT) == DATA_KEY
    logged = caplog.text
    assert base64.b64encode(DATA_KEY).decode() not in logged
    assert DATA_KEY.hex() not in logged


async def test_from_settings_builds_the_aws_kms(admin: KMSClient, moto_endpoint: str) -> None:
    alias = unique_alias()
    arn = new_key(admin, alias)
    settings = ServiceSettings(
        kms="aws-kms", kms_aws_key_id=alias, kms_aws_region=REGION, kms_aws_endpoint_url=moto_endpoint
    )
    kms = from_settings(settings)
    assert isinstance(kms, AwsKms)
    wrapped = await kms.wrap(DATA_KEY, CONTEXT)
    assert wrapped.kek_id == arn
    assert await kms.unwrap(wrapped, CONTEXT) == DATA_KEY


async def test_data_keys_over_aws_kms_and_postgresql(
    admin: KMSClient, aws_kms: Callable[[str], AwsKms], postgres: EmbeddedPostgres
) -> None:
    """Create, open on another replica, rotate to a new key with `rewrap_all`, refuse a key moved to
    another owner, destroy: the whole life of data keys, with the KMS and the store both real."""
    pool = await open_pool(postgres.url, max_size=2)
    schema = f"kms_aws_{uuid.uuid4().hex[:8]}"
    table = f"{schema}.data_keys"
    await pool.execute(f"CREATE SCHEMA {schema}")
    try:
        await pool.execute(DATA_KEYS_DDL.format(table=table))
        store = PostgresDataKeys(pool, table)
        old_alias, new_alias = unique_alias(), unique_alias()
        old_arn, new_arn = new_key(admin, old_alias), new_key(admin, new_alias)

        before = DataKeys(store, aws_kms(old_alias), "memory")
        sealed = (await before.create(USER)).seal("messages", "content", "m1", "I am allergic to peanuts")
        await before.create(OTHER)
        replica = DataKeys(store, aws_kms(old_alias), "memory")
        assert (await replica.cipher(USER)).open_text("messages", "content", "m1", sealed) == (
            "I am allergic to peanuts"
        )
        assert {wrapped.kek_id async for _, wrapped in store.owners()} == {old_arn}

        # ATHENA_KMS_AWS_KEY_ID now names the new key; the rollout is done; rewrap-keys runs.
        after = DataKeys(store, aws_kms(new_alias), "memory")
        assert await after.rewrap_all() == (2, 0)
        assert {wrapped.kek_id async for _, wrapped in store.owners()} == {new_arn}
        assert (await after.cipher(USER)).open_text("messages", "content", "m1", sealed) == (
            "I am allergic to peanuts"
        )
        assert await after.rewrap_all() == (0, 2)

        await pool.execute(  # a wrapped key copied to another owner's row
            f"UPDATE {table} SET wrapped = (SELECT wrapped FROM {table} WHERE owner = $1) WHERE owner = $2",  # noqa: S608
            USER,
            OTHER,
        )
        with pytest.raises(DataLoss):
            await DataKeys(store, aws_kms(new_alias), "memory").cipher(OTHER)

        assert await after.destroy(USER)
        with pytest.raises(NoDataKey):
            await DataKeys(store, aws_kms(new_alias), "memory").cipher(USER)
    finally:
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await close_pool(pool)


@dataclass
class FaultyKms:
    """A loopback endpoint speaking AWS KMS's JSON protocol that answers every call with `error`."""

    endpoint: str
    error: tuple[int, str] = (400, "")
    calls: int = 0


@pytest_asyncio.fixture
async def faulty_kms() -> AsyncIterator[FaultyKms]:
    faulty = FaultyKms(endpoint="")

    async def answer(request: web.Request) -> web.Response:
        faulty.calls += 1
        status, code = faulty.error
        body = {"__type": code, "message": f"the test's {code}"}
        return web.json_response(body, status=status, content_type="application/x-amz-json-1.1")

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        faulty.endpoint = f"http://127.0.0.1:{port}"
        yield faulty
    finally:
        await runner.cleanup()


KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize(
    ("status", "code", "kind", "message"),
    [
        (400, "InvalidCiphertextException", KeyMismatch, "does not open with its context"),
        (400, "IncorrectKeyException", KeyMismatch, f"not wrapped by {KEY_ARN}"),
        (400, "DisabledException", KmsError, f"key {KEY_ARN} is disabled"),
        (400, "KMSInvalidStateException", KmsError, "pending deletion"),
        (400, "NotFoundException", KmsError, "does not exist in this account and region"),
        (400, "AccessDeniedException", KmsError, r"must allow kms:Encrypt, kms:Decrypt, kms:ReEncrypt\*"),
        (400, "ThrottlingException", KmsError, "throttled Decrypt"),
        (500, "KMSInternalException", KmsError, "unavailable for Decrypt"),
        (400, "ExpiredTokenException", KmsError, "does not accept this service's AWS credentials"),
        (400, "SomeFutureException", KmsError, f"refused Decrypt with key {KEY_ARN}"),
    ],
)
async def test_each_aws_kms_error_becomes_a_kms_error_saying_what_is_wrong(
    faulty_kms: FaultyKms, status: int, code: str, kind: type[KmsError], message: str
) -> None:
    """Only a wrapped key that does not open is a `KeyMismatch` (an integrity error, `DataLoss`); everything
    operational is a plain `KmsError` (the key service unavailable)."""
    faulty_kms.error = (status, code)
    once = Config(retries={"mode": "standard", "total_max_attempts": 1})
    kms = AwsKms(KEY_ARN, region=REGION, endpoint_url=faulty_kms.endpoint, config=once)
    with pytest.raises(KmsError, match=message) as raised:
        await kms.unwrap(WrappedKey(KEY_ARN, b"blob"), CONTEXT)
    assert type(raised.value) is kind
    assert code in str(raised.value)
    assert faulty_kms.calls == 1
