"""Envelope encryption per user: what a service stores about a person is sealed with that person's data key.

Each owner (a user, or a service-wide purpose such as auth's e-mail index) has one data key, AES-256-GCM,
stored only wrapped by a key-encryption key of the KMS (`mesh.kms`), with the service and the owner as the
wrap's context. A service keeps unwrapped keys in memory for `cache_seconds` at most, never logs them, and
drops them when the key is destroyed.

Every value is sealed with associated data naming its owner, table, column and row id, so a ciphertext
copied to another row, column or user does not open (`DataLoss`, logged as an integrity error). The format
of a sealed value: version byte 1, 12-byte random nonce, ciphertext with its 16-byte tag.

Keyword search without plaintext: `Cipher.words` turns a text into blind tokens, the first 16 bytes of an
HMAC-SHA256, under a key derived from the owner's data key (HKDF), of every normalised, stemmed word. Equal
words give equal tokens for one owner only; the database learns which of a user's rows share words and how
often a token recurs (frequency), never the words. Destroying the data key destroys the tokens' meaning too.

Crypto-shredding: `DataKeys.destroy` deletes the wrapped key (first, in a transaction of its own), after
which every copy of the owner's rows (replicas, backups, a dump) is ciphertext nobody can open.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import NoReturn, Protocol

import snowballstemmer
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from prometheus_client import Counter

from mesh.errors import AthenaError, DataLoss, FailedPrecondition, Unavailable
from mesh.kms import DATA_KEY_BYTES, KeyEncryptionKeys, KeyMismatch, KmsError, WrappedKey

log = logging.getLogger(__name__)

VERSION = 1
_NONCE_BYTES = 12
TOKEN_BYTES = 16
_INDEX_INFO = b"athena blind index v1"


ENCRYPTION_FAILURES = Counter(
    "athena_encryption_failures_total",
    "Envelope encryption failures, by operation (open: a sealed value, wrap/unwrap: a data key) and reason "
    "(integrity: it does not open with its key and place; kms_unavailable: the key service did not answer).",
    ["operation", "reason"],
)

_NO_KEY = "this account does not exist (it was never set up, or it was erased)"


class NoDataKey(FailedPrecondition):
    """The owner has no data key: never provisioned, or erased."""


def wrap_context(service: str, owner: str) -> dict[str, str]:
    """What a data key is wrapped for: the KMS opens it only for the same service and owner."""
    return {"service": service, "owner": owner}


def associated_data(owner: str, table: str, column: str, row_id: str) -> bytes:
    return "\x00".join(("athena", str(VERSION), owner, table, column, row_id)).encode()


class Cipher:
    """One owner's data key at work: seals and opens values, makes blind tokens."""

    def __init__(self, owner: str, data_key: bytes) -> None:
        self.owner = owner
        self._aead = AESGCM(data_key)
        self._index_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INDEX_INFO).derive(
            data_key
        )

    def __repr__(self) -> str:  # never the key
        return f"Cipher(owner={self.owner!r})"

    def seal(self, table: str, column: str, row_id: object, value: str | bytes) -> bytes:
        plaintext = value.encode() if isinstance(value, str) else value
        nonce = os.urandom(_NONCE_BYTES)
        aad = associated_data(self.owner, table, column, str(row_id))
        return bytes((VERSION,)) + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, table: str, column: str, row_id: object, sealed: bytes) -> bytes:
        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[0] != VERSION:
            self._integrity_error(table, column, row_id)
        aad = associated_data(self.owner, table, column, str(row_id))
        try:
            return self._aead.decrypt(sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :], aad)
        except InvalidTag:
            self._integrity_error(table, column, row_id)

    def open_text(self, table: str, column: str, row_id: object, sealed: bytes) -> str:
        return self.open(table, column, row_id, sealed).decode()

    def _integrity_error(self, table: str, column: str, row_id: object) -> NoReturn:
        log.error(
            "integrity error: a stored value does not open with its owner's key and place",
            extra={"owner": self.owner, "table": table, "column": column, "row_id": str(row_id)},
        )
        ENCRYPTION_FAILURES.labels("open", "integrity").inc()
        raise DataLoss(f"stored data failed its integrity check ({table}.{column} of {row_id})")

    def token(self, word: str) -> bytes:
        """The blind token of one already normalised word."""
        return hmac.digest(self._index_key, word.encode(), "sha256")[:TOKEN_BYTES]

    def words(self, text: str) -> list[bytes]:
        """The distinct blind tokens of `text`'s words, in order of first appearance."""
        return [self.token(word) for word in index_words(text)]

    def text_token(self, text: str) -> bytes:
        """The blind token of a whole text, exactly (finds the same text again)."""
        return self.token(f"text:{text}")  # a colon: never one of `words`' tokens

    def key_token(self, key: str) -> bytes:
        """The blind token of a caller-chosen key."""
        return self.token(f"key:{key}")


_WORD = re.compile(r"\w+")
_STOPWORDS = """a an and are as at be but by for from has have i in is it its me my of on or so that the their
    them they this to was we were what when where which who will with you your"""
STOPWORDS = frozenset(_STOPWORDS.split())


@cache
def _stemmer() -> snowballstemmer.stemmer:
    return snowballstemmer.stemmer("english")


@lru_cache(maxsize=65_536)
def _stem(word: str) -> str:
    """A word's stem, remembered (the pure-Python stemmer takes tens of microseconds a word)."""
    return str(_stemmer().stemWord(word))


def index_words(text: str) -> list[str]:
    """The words a blind index keeps of `text`, distinct, in order: Unicode-normalised, case-folded, stop
    words and lone characters dropped, stemmed (Snowball English), so "Running" and "runs" meet "run" as
    they did under PostgreSQL's english dictionary."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    kept = [word for word in words if len(word) > 1 and word not in STOPWORDS]
    return list(dict.fromkeys(_stem(word) for word in kept))


class DataKeyStore(Protocol):
    """Where a service keeps its wrapped data keys."""

    async def get(self, owner: str) -> WrappedKey | None: ...

    async def get_many(self, owners: Sequence[str]) -> dict[str, WrappedKey]:
        """The keys of those of `owners` who have one."""
        ...

    async def add(self, owner: str, wrapped: WrappedKey) -> WrappedKey:
        """Stores `wrapped` unless the owner has a key already; returns the owner's key either way."""
        ...

    async def delete(self, owner: str) -> bool: ...

    def owners(self) -> AsyncIterable[tuple[str, WrappedKey]]:
        """Every owner and key (rotation)."""
        ...

    async def replace(self, owner: str, old: WrappedKey, new: WrappedKey) -> bool:
        """Replaces the owner's key if it is still `old`."""
        ...


@dataclass
class _Cached:
    cipher: Cipher
    until: float


class DataKeys:
    """The data keys of one service: created wrapped, unwrapped on demand and cached briefly."""

    def __init__(
        self,
        store: DataKeyStore,
        kms: KeyEncryptionKeys,
        service: str,
        *,
        cache_seconds: float = 300.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._kms = kms
        self._service = service
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Cipher]] = {}
        self._waiting: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    def _context(self, owner: str) -> dict[str, str]:
        return wrap_context(self._service, owner)

    async def create(self, owner: str) -> Cipher:
        """The owner's cipher, creating their data key if they have none."""
        cached = self._cached(owner)
        if cached is not None:
            return cached
        existing = await self._store.get(owner)
        if existing is None:
            data_key = os.urandom(DATA_KEY_BYTES)
            wrapped = await self._wrap(data_key, owner)
            existing = await self._store.add(owner, wrapped)
            if existing == wrapped:
                return self._remember(owner, data_key)
        return self._remember(owner, await self._unwrap(existing, owner))

    async def cipher(self, owner: str) -> Cipher:
        """The owner's cipher; `NoDataKey` when they have no key (never provisioned, or erased).

        Keys not cached are read in batches: the owners asked for while one read is under way are read
        together by the next (a burst of people starting a turn costs a few queries, not one each), and
        concurrent calls for one owner share its read and unwrap."""
        cached = self._cached(owner)
        if cached is not None:
            return cached
        loading = self._loading.get(owner)
        if loading is None:
            loading = self._loading[owner] = asyncio.get_running_loop().create_future()
            self._waiting.append(owner)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read_waiting(), name="data-key-reads")
        return await asyncio.shield(loading)

    async def existing(self, owner: str) -> Cipher | None:
        """The owner's cipher, or None when they have no key (nothing of theirs can be read)."""
        try:
            return await self.cipher(owner)
        except NoDataKey:
            return None

    async def _read_waiting(self) -> None:
        """Reads the keys asked for, a batch at a time, until nobody waits."""
        await asyncio.sleep(0)  # the owners asked for in this turn of the loop join the first batch
        while self._waiting:
            owners, self._waiting = self._waiting, []
            try:
                found = await self._store.get_many(owners)
            except BaseException as exc:
                for owner in owners:
                    self._settle(owner, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for owner in owners:
                wrapped = found.get(owner)
                if wrapped is None:
                    self._settle(owner, NoDataKey(_NO_KEY))
                    continue
                try:
                    self._settle(owner, self._remember(owner, await self._unwrap(wrapped, owner)))
                except AthenaError as exc:
                    self._settle(owner, exc)

    def _settle(self, owner: str, outcome: Cipher | BaseException) -> None:
        future = self._loading.pop(owner, None)
        if future is None or future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
        else:
            future.set_result(outcome)

    async def destroy(self, owner: str) -> bool:
        """Deletes the owner's data key (crypto-shredding); whether there was one."""
        self._cache.pop(owner, None)
        deleted = await self._store.delete(owner)
        self._cache.pop(owner, None)
        return deleted

    def forget(self, owner: str) -> None:
        """Drops a cached key (another replica destroyed it)."""
        self._cache.pop(owner, None)

    async def rewrap_all(self) -> tuple[int, int]:
        """Rewraps every key not wrapped by the KMS's current KEK; (rewrapped, already current)."""
        current = self._kms.current_kek_id
        rewrapped = unchanged = 0
        async for owner, wrapped in self._store.owners():
            if wrapped.kek_id == current:
                unchanged += 1
                continue
            try:
                new = await self._kms.rewrap(wrapped, self._context(owner))
            except KmsError as exc:
                raise Unavailable(f"the KMS could not rewrap a data key: {exc}") from exc
            if await self._store.replace(owner, wrapped, new):
                rewrapped += 1
        return rewrapped, unchanged

    def _cached(self, owner: str) -> Cipher | None:
        entry = self._cache.get(owner)
        if entry is None:
            return None
        if entry.until <= self._clock():
            del self._cache[owner]
            return None
        self._cache.move_to_end(owner)
        return entry.cipher

    def _remember(self, owner: str, data_key: bytes) -> Cipher:
        cipher = Cipher(owner, data_key)
        self._cache[owner] = _Cached(cipher, self._clock() + self._cache_seconds)
        self._cache.move_to_end(owner)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return cipher

    async def _wrap(self, data_key: bytes, owner: str) -> WrappedKey:
        try:
            return await self._kms.wrap(data_key, self._context(owner))
        except KmsError as exc:
            ENCRYPTION_FAILURES.labels("wrap", "kms_unavailable").inc()
            log.error("the KMS could not wrap a data key", extra={"error": str(exc)})
            raise Unavailable("the key service is unavailable") from exc

    async def _unwrap(self, wrapped: WrappedKey, owner: str) -> bytes:
        try:
            return await self._kms.unwrap(wrapped, self._context(owner))
        except KeyMismatch as exc:
            ENCRYPTION_FAILURES.labels("unwrap", "integrity").inc()
            log.error("integrity error: a wrapped data key does not open", extra={"owner": owner})
            raise DataLoss("a stored data key failed its integrity check") from exc
        except KmsError as exc:
            ENCRYPTION_FAILURES.labels("unwrap", "kms_unavailable").inc()
            log.error("the KMS could not unwrap a data key", extra={"owner": owner, "error": str(exc)})
            raise Unavailable("the key service is unavailable") from exc
