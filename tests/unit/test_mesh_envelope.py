"""Envelope encryption: the local KMS, data keys, sealed values bound to their place, blind tokens."""

from __future__ import annotations

import asyncio
import logging
import stat
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from mesh.envelope import Cipher, DataKeys, NoDataKey, index_words
from mesh.errors import DataLoss
from mesh.kms import KeyMismatch, KmsError, LocalKeyFile, WrappedKey, add_key, read_keys

USER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
OTHER = "0f8fad5b-d9cb-469f-a165-70867728950e"


class MemoryKeyStore:
    """A `DataKeyStore` in a dict (the PostgreSQL one is tested against PostgreSQL with each service)."""

    def __init__(self) -> None:
        self.rows: dict[str, WrappedKey] = {}
        self.reads: list[list[str]] = []

    async def get(self, owner: str) -> WrappedKey | None:
        return self.rows.get(owner)

    async def get_many(self, owners: Sequence[str]) -> dict[str, WrappedKey]:
        self.reads.append(list(owners))
        await asyncio.sleep(0.01)  # a query takes a while: owners asked for meanwhile wait for the next
        return {owner: self.rows[owner] for owner in owners if owner in self.rows}

    async def add(self, owner: str, wrapped: WrappedKey) -> WrappedKey:
        return self.rows.setdefault(owner, wrapped)

    async def delete(self, owner: str) -> bool:
        return self.rows.pop(owner, None) is not None

    async def owners(self) -> AsyncIterator[tuple[str, WrappedKey]]:
        for owner, wrapped in list(self.rows.items()):
            yield owner, wrapped

    async def replace(self, owner: str, old: WrappedKey, new: WrappedKey) -> bool:
        if self.rows.get(owner) != old:
            return False
        self.rows[owner] = new
        return True


@pytest.fixture
def kms(tmp_path: Path) -> LocalKeyFile:
    return LocalKeyFile.load(tmp_path / "kms", create_if_empty=True)


def test_a_first_dev_start_makes_a_private_key_file(tmp_path: Path) -> None:
    directory = tmp_path / "kms"
    kms = LocalKeyFile.load(directory, create_if_empty=True)
    (file,) = directory.glob("*.key")
    assert file.stem == kms.current_kek_id
    assert stat.S_IMODE(file.stat().st_mode) == 0o600


def test_production_refuses_to_start_without_keys(tmp_path: Path) -> None:
    with pytest.raises(KmsError, match="no key-encryption keys"):
        LocalKeyFile.load(tmp_path / "kms")


async def test_a_wrapped_key_opens_only_with_its_context(kms: LocalKeyFile) -> None:
    wrapped = await kms.wrap(b"k" * 32, {"service": "memory", "owner": USER})
    assert b"k" * 32 not in wrapped.blob
    assert await kms.unwrap(wrapped, {"service": "memory", "owner": USER}) == b"k" * 32
    with pytest.raises(KeyMismatch):
        await kms.unwrap(wrapped, {"service": "memory", "owner": OTHER})


async def test_the_newest_key_wraps_and_rewrap_moves_keys_under_it(tmp_path: Path) -> None:
    directory = tmp_path / "kms"
    old = LocalKeyFile.load(directory, create_if_empty=True)
    context = {"service": "auth", "owner": USER}
    wrapped = await old.wrap(b"d" * 32, context)
    add_key(directory, datetime(2100, 1, 1, tzinfo=UTC))
    new = LocalKeyFile.load(directory)
    assert new.current_kek_id > old.current_kek_id == wrapped.kek_id
    moved = await new.rewrap(wrapped, context)
    assert moved.kek_id == new.current_kek_id
    assert await new.unwrap(moved, context) == b"d" * 32
    # A process started before the new key was added still opens keys wrapped by it.
    assert await old.unwrap(moved, context) == b"d" * 32


def test_a_malformed_key_file_is_named(tmp_path: Path) -> None:
    add_key(tmp_path, datetime.now(UTC))
    (file,) = tmp_path.glob("*.key")
    file.write_text("not base64!")
    with pytest.raises(KmsError, match=file.name):
        read_keys(tmp_path)


async def test_data_keys_are_created_once_cached_and_destroyed(kms: LocalKeyFile) -> None:
    store = MemoryKeyStore()
    keys = DataKeys(store, kms, "memory")
    with pytest.raises(NoDataKey):
        await keys.cipher(USER)
    created = await keys.create(USER)
    again = await keys.create(USER)
    assert again is created
    sealed = created.seal("messages", "content", "m1", "I am allergic to peanuts")
    # Another replica (a fresh DataKeys) opens it from the stored key.
    other_replica = DataKeys(store, kms, "memory")
    opened = (await other_replica.cipher(USER)).open_text("messages", "content", "m1", sealed)
    assert opened == "I am allergic to peanuts"
    assert await keys.destroy(USER)
    with pytest.raises(NoDataKey):
        await keys.cipher(USER)


async def test_a_burst_of_first_calls_reads_the_keys_in_a_few_batches(kms: LocalKeyFile) -> None:
    store = MemoryKeyStore()
    writer = DataKeys(store, kms, "memory")
    owners = [str(uuid.uuid4()) for _ in range(50)]
    sealed = {owner: (await writer.create(owner)).seal("t", "c", "r", owner) for owner in owners}
    keys = DataKeys(store, kms, "memory")  # a replica that just started: nothing cached
    first = asyncio.gather(*(keys.cipher(owner) for owner in owners[:30]))
    await asyncio.sleep(0.001)  # the first read is under way when the others ask
    ciphers = [
        *await first,
        *await asyncio.gather(*(keys.cipher(owner) for owner in [*owners[30:], *owners])),
    ]
    assert [c.open_text("t", "c", "r", sealed[c.owner]) for c in ciphers] == [*owners, *owners]
    assert store.reads == [owners[:30], owners[30:]]
    unknown = str(uuid.uuid4())
    results = await asyncio.gather(keys.cipher(unknown), keys.cipher(owners[0]), return_exceptions=True)
    assert isinstance(results[0], NoDataKey)
    assert isinstance(results[1], Cipher)


async def test_cached_keys_expire(kms: LocalKeyFile) -> None:
    now = [0.0]
    store = MemoryKeyStore()
    keys = DataKeys(store, kms, "memory", cache_seconds=10, clock=lambda: now[0])
    await keys.create(USER)
    await store.delete(USER)  # destroyed by another replica
    assert await keys.cipher(USER) is not None  # still cached
    now[0] = 11
    with pytest.raises(NoDataKey):
        await keys.cipher(USER)


def encryption_failures(operation: str, reason: str) -> float:
    labels = {"operation": operation, "reason": reason}
    return REGISTRY.get_sample_value("athena_encryption_failures_total", labels) or 0.0


async def test_a_key_of_another_service_or_owner_does_not_open(kms: LocalKeyFile) -> None:
    before = encryption_failures("unwrap", "integrity")
    store = MemoryKeyStore()
    await DataKeys(store, kms, "auth").create(USER)
    store.rows[OTHER] = store.rows[USER]  # a wrapped key copied to another owner
    with pytest.raises(DataLoss):
        await DataKeys(store, kms, "auth").cipher(OTHER)
    with pytest.raises(DataLoss):  # and to another service's table
        await DataKeys(store, kms, "memory").cipher(USER)
    assert encryption_failures("unwrap", "integrity") - before == 2  # what the integrity alert counts


async def test_rewrap_all_moves_every_key_under_the_current_kek(tmp_path: Path) -> None:
    directory = tmp_path / "kms"
    store = MemoryKeyStore()
    old = DataKeys(store, LocalKeyFile.load(directory, create_if_empty=True), "memory")
    sealed = (await old.create(USER)).seal("t", "c", "r", "text")
    await old.create(OTHER)
    add_key(directory, datetime(2100, 1, 1, tzinfo=UTC))
    kms = LocalKeyFile.load(directory)
    keys = DataKeys(store, kms, "memory")
    assert await keys.rewrap_all() == (2, 0)
    assert {wrapped.kek_id for wrapped in store.rows.values()} == {kms.current_kek_id}
    assert (await keys.cipher(USER)).open_text("t", "c", "r", sealed) == "text"  # data untouched
    assert await keys.rewrap_all() == (0, 2)


def test_a_sealed_value_opens_only_in_its_place(caplog: pytest.LogCaptureFixture) -> None:
    before = encryption_failures("open", "integrity")
    cipher = Cipher(USER, b"\x01" * 32)
    sealed = cipher.seal("messages", "content", "m1", "secret words")
    assert b"secret" not in sealed
    assert cipher.open_text("messages", "content", "m1", sealed) == "secret words"
    places = [("messages", "content", "m2"), ("messages", "error", "m1"), ("memories", "content", "m1")]
    for table, column, row in places:
        with caplog.at_level(logging.ERROR), pytest.raises(DataLoss, match="integrity"):
            cipher.open(table, column, row, sealed)
    assert "integrity error" in caplog.text
    assert "secret" not in caplog.text
    with pytest.raises(DataLoss):
        Cipher(OTHER, b"\x01" * 32).open("messages", "content", "m1", sealed)
    with pytest.raises(DataLoss):
        Cipher(USER, b"\x02" * 32).open("messages", "content", "m1", sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(DataLoss):
        cipher.open("messages", "content", "m1", bytes(tampered))
    with pytest.raises(DataLoss):
        cipher.open("messages", "content", "m1", b"short")
    assert encryption_failures("open", "integrity") - before == len(places) + 4


def test_sealing_twice_gives_different_ciphertexts() -> None:
    cipher = Cipher(USER, b"\x01" * 32)
    assert cipher.seal("t", "c", "r", "same") != cipher.seal("t", "c", "r", "same")


def test_index_words_normalise_like_a_text_search_dictionary() -> None:
    assert index_words("I love Running, and she RUNS daily; the runner ran.") == [
        "love",
        "run",
        "she",
        "daili",
        "runner",
        "ran",
    ]
    assert index_words("Ｃａｆé café CAFÉ") == ["café"]
    assert index_words("a I of the") == []


def test_blind_tokens_are_per_owner_and_hide_the_word() -> None:
    mine, theirs = Cipher(USER, b"\x01" * 32), Cipher(OTHER, b"\x02" * 32)
    assert mine.words("Peanuts peanut") == [mine.token("peanut")]
    assert mine.words("peanuts") != theirs.words("peanuts")
    assert all(len(token) == 16 and b"peanut" not in token for token in mine.words("peanuts"))
    assert "\\x01" not in repr(mine)
    assert "Cipher" in repr(mine)
