"""The verifier's cache of verified tokens: a token seen again skips the signature check, never for longer
than `CACHE_SECONDS` and never past the token's own expiry."""

from __future__ import annotations

import time

import pytest
from conftest import AUDIENCE, ISSUER, TokenFactory
from joserfc.jwk import KeySet, RSAKey

from mesh import tokens
from mesh.errors import Unauthenticated
from mesh.tokens import StaticKeySource, TokenVerifier


class CountingKeys(StaticKeySource):
    """Counts how often a signature check needed the keys."""

    def __init__(self, keys: KeySet) -> None:
        super().__init__(keys)
        self.asked = 0

    async def key_set(self, kid: str) -> KeySet:
        self.asked += 1
        return await super().key_set(kid)


@pytest.fixture
def keys(signing_key: RSAKey) -> CountingKeys:
    return CountingKeys(KeySet([RSAKey.import_key(signing_key.as_dict(private=False))]))


def verifier(keys: CountingKeys) -> TokenVerifier:
    return TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE)


async def test_a_token_seen_again_is_not_checked_again(keys: CountingKeys, make_token: TokenFactory) -> None:
    checking = verifier(keys)
    token = make_token("ada")
    first, again = await checking.verify(token), await checking.verify(token)
    assert first == again
    assert first.user_id == "ada"
    assert keys.asked == 1
    with pytest.raises(Unauthenticated):  # a changed signature is another string: checked, refused
        await checking.verify(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))


async def test_trust_ends_after_a_minute_and_at_the_tokens_expiry(
    keys: CountingKeys, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    clock = [now]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    checking = verifier(keys)
    lasting = make_token("ada", iat=int(now), exp=int(now) + 900)
    await checking.verify(lasting)
    clock[0] = now + tokens.CACHE_SECONDS + 1
    await checking.verify(lasting)
    assert keys.asked == 2  # checked again after a minute of trust

    short = make_token("bob", iat=int(now), exp=int(now) + 30)
    clock[0] = now
    await checking.verify(short)
    clock[0] = now + 30 + tokens.LEEWAY_SECONDS + 1
    with pytest.raises(Unauthenticated, match="expired"):
        await checking.verify(short)


async def test_the_cache_is_bounded(
    keys: CountingKeys, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "CACHE_SIZE", 2)
    checking = verifier(keys)
    ada, bob, eve = make_token("ada"), make_token("bob"), make_token("eve")
    for token in (ada, bob, ada, eve):  # eve pushes out the least recently used: bob
        await checking.verify(token)
    assert keys.asked == 3
    await checking.verify(ada)
    assert keys.asked == 3
    await checking.verify(bob)
    assert keys.asked == 4
