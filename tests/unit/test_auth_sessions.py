"""Sessions in the domain: sign-in, refresh rotation and reuse detection (revoking the family's access
tokens), logout, revocation, and erasure with its receipt."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from doubles.auth_store import MemoryAuthStore
from doubles.revocations import RecordingRevocations
from joserfc.util import json_b64decode

from auth.access import AccessTokenIssuer
from auth.erasure import AccountEraser
from auth.keys import KeyRing, SigningKey, generate_key
from auth.receipts import ReceiptSigner, verify_receipt
from auth.sessions import (
    Identity,
    RefreshVerdict,
    SessionManager,
    hash_token,
    judge_refresh,
    normalise_email,
)
from auth.store import RefreshTokenRecord
from mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, Unauthenticated, Unavailable
from mesh.revocation import RevocationKind
from mesh.tokens import StaticKeySource, TokenVerifier

GRACE = timedelta(seconds=10)
REFRESH_TTL = timedelta(days=30)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_key(datetime(2025, 1, 1, tzinfo=UTC))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryAuthStore:
    return MemoryAuthStore()


@pytest.fixture
def revocations() -> RecordingRevocations:
    return RecordingRevocations()


def key_ring(key: SigningKey) -> KeyRing:
    return KeyRing([key], activation_delay=timedelta(0), retention=timedelta(minutes=16))


def token_issuer(key: SigningKey) -> AccessTokenIssuer:
    ring = key_ring(key)
    return AccessTokenIssuer(
        lambda: ring, issuer="athenaos", audience="athenaos-api", ttl=timedelta(minutes=15)
    )


def manager(
    store: MemoryAuthStore,
    clock: Clock,
    key: SigningKey,
    revocations: RecordingRevocations | None = None,
    *,
    dev: bool = True,
) -> SessionManager:
    return SessionManager(
        store,
        token_issuer(key),
        revocations or RecordingRevocations(),
        refresh_ttl=REFRESH_TTL,
        reuse_grace=GRACE,
        dev_login_enabled=dev,
        clock=clock,
    )


@pytest.fixture
def sessions(
    store: MemoryAuthStore, clock: Clock, key: SigningKey, revocations: RecordingRevocations
) -> SessionManager:
    return manager(store, clock, key, revocations)


@pytest.fixture
def eraser(
    store: MemoryAuthStore, clock: Clock, key: SigningKey, revocations: RecordingRevocations
) -> AccountEraser:
    ring = key_ring(key)
    receipts = ReceiptSigner(lambda: ring, issuer="athenaos")
    return AccountEraser(store, token_issuer(key), revocations, receipts, clock)


def verifier_of(key: SigningKey, revocations: RecordingRevocations) -> TokenVerifier:
    """The mesh's verifier, trusting `key` and refusing what `revocations` holds."""
    keys = StaticKeySource(key_ring(key).public_key_set(datetime.now(UTC)))
    return TokenVerifier(keys, issuer="athenaos", audience="athenaos-api", revocations=revocations.list)


def claims(token: str) -> dict[str, Any]:
    """A token's claims, read without checking it (the test made it)."""
    payload: dict[str, Any] = json_b64decode(token.split(".")[1].encode())
    return payload


def record(**overrides: object) -> RefreshTokenRecord:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    fields: dict[str, object] = {
        "id": "t",
        "family_id": "f",
        "user_id": "u",
        "token_hash": b"h" * 32,
        "parent_id": None,
        "created_at": now,
        "expires_at": now + REFRESH_TTL,
        **overrides,
    }
    return RefreshTokenRecord(**fields)  # type: ignore[arg-type]


def test_refresh_verdicts() -> None:
    now = datetime(2025, 1, 2, tzinfo=UTC)
    assert judge_refresh(record(), now, GRACE) is RefreshVerdict.ROTATE
    assert judge_refresh(record(used_at=now - GRACE), now, GRACE) is RefreshVerdict.GRACE
    assert (
        judge_refresh(record(used_at=now - GRACE - timedelta(seconds=1)), now, GRACE) is RefreshVerdict.REUSE
    )
    assert judge_refresh(record(expires_at=now), now, GRACE) is RefreshVerdict.EXPIRED
    assert judge_refresh(record(family_revoked_at=now, used_at=now), now, GRACE) is RefreshVerdict.REVOKED


@pytest.mark.parametrize(
    "email", ["", "plain", "a@b", "a b@example.com", "a@exa mple.com", "x" * 65 + "@a.io"]
)
def test_invalid_emails_name_the_field(email: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalise_email(email)
    assert caught.value.field == "email"


async def test_dev_login_creates_the_account_once_and_signs_tokens_the_mesh_accepts(
    sessions: SessionManager, store: MemoryAuthStore, key: SigningKey
) -> None:
    first = await sessions.dev_login("  Alice@Example.COM ", "")
    assert first.user.email == "alice@example.com"
    assert first.user.display_name == "alice"
    second = await sessions.dev_login("alice@example.com", "Alice Liddell")
    assert second.user.id == first.user.id
    assert second.user.display_name == "Alice Liddell"
    ring = KeyRing([key], activation_delay=timedelta(0), retention=timedelta(minutes=16))
    verifier = TokenVerifier(
        StaticKeySource(ring.public_key_set(datetime.now(UTC))), issuer="athenaos", audience="athenaos-api"
    )
    principal = await verifier.verify(second.access_token)
    assert principal.user_id == first.user.id
    # Only the hash is stored.
    stored = list(store.data.tokens.values())
    assert {token.token_hash for token in stored} == {
        hash_token(first.refresh_token),
        hash_token(second.refresh_token),
    }
    assert all(first.refresh_token.encode() not in repr(token).encode() for token in stored)
    assert len(first.refresh_token) == 43  # 256 bits, base64url


async def test_dev_login_outside_dev_is_a_failed_precondition(
    store: MemoryAuthStore, clock: Clock, key: SigningKey
) -> None:
    with pytest.raises(FailedPrecondition):
        await manager(store, clock, key, dev=False).dev_login("alice@example.com", "")
    assert not store.data.users


async def test_refresh_rotates_and_spends_the_presented_token(sessions: SessionManager, clock: Clock) -> None:
    first = await sessions.dev_login("bob@example.com", "Bob")
    clock.advance(minutes=14)
    second = await sessions.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert second.user.id == first.user.id
    assert second.access_token_expires_at == clock.now + timedelta(minutes=15)
    assert second.refresh_token_expires_at == clock.now + REFRESH_TTL
    third = await sessions.refresh(second.refresh_token)
    assert third.user.id == first.user.id


async def test_reuse_after_the_grace_window_revokes_the_whole_family(
    sessions: SessionManager, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    login = await sessions.dev_login("carol@example.com", "")
    rotated = await sessions.refresh(login.refresh_token)
    clock.advance(seconds=11)
    with caplog.at_level(logging.WARNING), pytest.raises(Unauthenticated, match="already used"):
        await sessions.refresh(login.refresh_token)  # the thief, or the owner replaying: either way
    events = [record for record in caplog.records if getattr(record, "event", None) == "refresh_token_reuse"]
    assert len(events) == 1
    assert events[0].levelno == logging.WARNING
    with pytest.raises(Unauthenticated, match="revoked"):
        await sessions.refresh(rotated.refresh_token)  # the legitimate descendant is dead too


async def test_access_tokens_name_their_session_and_keep_it_across_refreshes(
    sessions: SessionManager,
) -> None:
    login = await sessions.dev_login("cleo@example.com", "")
    refreshed = await sessions.refresh(login.refresh_token)
    elsewhere = await sessions.dev_login("cleo@example.com", "")
    sid = claims(login.access_token)["sid"]
    assert isinstance(sid, str)
    assert sid
    assert claims(refreshed.access_token)["sid"] == sid
    assert claims(elsewhere.access_token)["sid"] != sid


async def test_reuse_revokes_the_familys_access_tokens_and_no_other_session(
    sessions: SessionManager, clock: Clock, key: SigningKey, revocations: RecordingRevocations
) -> None:
    login = await sessions.dev_login("carla@example.com", "")
    rotated = await sessions.refresh(login.refresh_token)
    other_device = await sessions.dev_login("carla@example.com", "")
    clock.advance(seconds=11)
    with pytest.raises(Unauthenticated):
        await sessions.refresh(login.refresh_token)
    [revocation] = revocations.written
    assert revocation.kind is RevocationKind.SESSION
    assert revocation.subject == claims(login.access_token)["sid"]
    assert revocation.expires_at - revocation.revoked_at == 15 * 60 + 120  # the lifetime, and leeway twice
    verifier = verifier_of(key, revocations)
    for token in (login.access_token, rotated.access_token):
        with pytest.raises(Unauthenticated, match="access token revoked"):
            await verifier.verify(token)
    assert (await verifier.verify(other_device.access_token)).user_id == login.user.id


async def test_reuse_while_the_revocation_list_is_down_still_revokes_the_refresh_tokens(
    sessions: SessionManager,
    clock: Clock,
    revocations: RecordingRevocations,
    caplog: pytest.LogCaptureFixture,
) -> None:
    login = await sessions.dev_login("cyril@example.com", "")
    rotated = await sessions.refresh(login.refresh_token)
    clock.advance(seconds=11)
    revocations.down = True
    with caplog.at_level(logging.ERROR), pytest.raises(Unauthenticated, match="already used"):
        await sessions.refresh(login.refresh_token)
    failed = [r for r in caplog.records if getattr(r, "event", None) == "session_revocation_failed"]
    assert len(failed) == 1
    assert failed[0].levelno == logging.ERROR
    revocations.down = False
    with pytest.raises(Unauthenticated, match="revoked"):
        await sessions.refresh(rotated.refresh_token)
    assert revocations.written == []


async def test_reuse_within_the_grace_window_gets_a_sibling_and_revokes_nothing(
    sessions: SessionManager, clock: Clock
) -> None:
    login = await sessions.dev_login("dave@example.com", "")
    first = await sessions.refresh(login.refresh_token)
    clock.advance(seconds=5)
    sibling = await sessions.refresh(login.refresh_token)
    assert sibling.refresh_token != first.refresh_token
    await sessions.refresh(first.refresh_token)
    await sessions.refresh(sibling.refresh_token)


async def test_expired_unknown_and_malformed_refresh_tokens(sessions: SessionManager, clock: Clock) -> None:
    login = await sessions.dev_login("erin@example.com", "")
    clock.advance(days=30)
    with pytest.raises(Unauthenticated, match="expired"):
        await sessions.refresh(login.refresh_token)
    with pytest.raises(Unauthenticated):
        await sessions.refresh("never-issued")
    with pytest.raises(Unauthenticated):
        await sessions.refresh("x" * 10_000)
    with pytest.raises(Unauthenticated):  # the contract refuses it before the domain sees it
        await sessions.refresh("")


async def test_logout_ends_the_family_and_is_idempotent(sessions: SessionManager) -> None:
    login = await sessions.dev_login("frank@example.com", "")
    other_device = await sessions.dev_login("frank@example.com", "")
    await sessions.logout(login.refresh_token)
    await sessions.logout(login.refresh_token)
    await sessions.logout("never-issued")
    with pytest.raises(Unauthenticated, match="revoked"):
        await sessions.refresh(login.refresh_token)
    await sessions.refresh(other_device.refresh_token)


async def test_revoke_all_counts_live_sessions(sessions: SessionManager) -> None:
    one = await sessions.dev_login("grace@example.com", "")
    two = await sessions.dev_login("grace@example.com", "")
    ended = await sessions.dev_login("grace@example.com", "")
    await sessions.logout(ended.refresh_token)
    bystander = await sessions.dev_login("heidi@example.com", "")
    assert await sessions.revoke_all(one.user.id) == 2
    assert await sessions.revoke_all(one.user.id) == 0
    for session in (one, two):
        with pytest.raises(Unauthenticated):
            await sessions.refresh(session.refresh_token)
    await sessions.refresh(bystander.refresh_token)


async def test_erasure_removes_the_account_revokes_its_tokens_and_signs_a_receipt(
    sessions: SessionManager,
    eraser: AccountEraser,
    store: MemoryAuthStore,
    key: SigningKey,
    revocations: RecordingRevocations,
) -> None:
    login = await sessions.dev_login("ivan@example.com", "")
    await sessions.refresh(login.refresh_token)
    laptop = await sessions.dev_login("ivan@example.com", "")
    bystander = await sessions.dev_login("olga@example.com", "")

    erasure = await eraser.erase(login.user.id, {"memory_rows": 12, "memory_cache_keys": 3})

    assert erasure.existed
    expected = {
        "memory_rows": 12,
        "memory_cache_keys": 3,
        "account": 1,
        "identities": 1,
        "sessions": 2,
        "refresh_tokens": 3,
        "data_keys": 1,
    }
    assert erasure.receipt.erased == expected
    assert list(store.data.users) == [bystander.user.id]
    assert {token.user_id for token in store.data.tokens.values()} == {bystander.user.id}
    with pytest.raises(Unauthenticated):
        await sessions.refresh(laptop.refresh_token)
    # Every access token issued until now is refused; another person's is not.
    verifier = verifier_of(key, revocations)
    for token in (login.access_token, laptop.access_token):
        with pytest.raises(Unauthenticated, match="access token revoked"):
            await verifier.verify(token)
    await verifier.verify(bystander.access_token)
    receipt = verify_receipt(erasure.receipt.token, key_ring(key).jwks(datetime.now(UTC)), issuer="athenaos")
    assert (receipt.user_id, receipt.erased) == (login.user.id, expected)
    assert receipt.erased_at == erasure.receipt.erased_at

    again = await eraser.erase(login.user.id, {})
    assert not again.existed
    assert again.receipt.erased == {
        "account": 0,
        "identities": 0,
        "sessions": 0,
        "refresh_tokens": 0,
        "data_keys": 0,
    }
    renewed = await sessions.dev_login("ivan@example.com", "")
    assert renewed.user.id != login.user.id


async def test_erasure_needs_the_revocation_list_and_erases_nothing_without_it(
    sessions: SessionManager, eraser: AccountEraser, store: MemoryAuthStore, revocations: RecordingRevocations
) -> None:
    login = await sessions.dev_login("ines@example.com", "")
    revocations.down = True
    with pytest.raises(Unavailable, match="cannot be deleted right now"):
        await eraser.erase(login.user.id, {"memory_rows": 4})
    assert login.user.id in store.data.users
    revocations.down = False
    assert (await eraser.erase(login.user.id, {})).existed


async def test_erasure_refuses_another_service_reporting_auths_own_categories(
    sessions: SessionManager, eraser: AccountEraser, store: MemoryAuthStore
) -> None:
    login = await sessions.dev_login("ilse@example.com", "")
    with pytest.raises(InvalidArgument) as caught:
        await eraser.erase(login.user.id, {"memory_rows": 1, "sessions": 0})
    assert caught.value.field == "purged"
    assert login.user.id in store.data.users


async def test_identities_join_an_account_by_email_only_when_the_provider_verified_it(
    sessions: SessionManager,
) -> None:
    google = await sessions.sign_in(
        Identity("google", "g-1", "judy@example.com", "Judy", email_verified=True)
    )
    dev = await sessions.dev_login("judy@example.com", "")
    assert dev.user.id == google.user.id
    with pytest.raises(AlreadyExists):
        await sessions.sign_in(Identity("microsoft", "m-1", "judy@example.com", "", email_verified=False))
    renamed = await sessions.sign_in(
        Identity("google", "g-1", "judy@example.com", "Judy B", email_verified=True)
    )
    assert renamed.user.display_name == "Judy B"
    assert renamed.user.id == google.user.id
