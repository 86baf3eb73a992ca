"""The revocation list and the verifier that consults it: which tokens a revocation refuses, for how long,
and that a token the verifier has cached is refused as soon as it is revoked."""

from __future__ import annotations

import time

import pytest
from conftest import AUDIENCE, ISSUER, TokenFactory
from joserfc.jwk import KeySet, RSAKey

from mesh.errors import Unauthenticated
from mesh.revocation import REVOKED, Revocation, RevocationKind, RevocationList
from mesh.tokens import StaticKeySource, TokenVerifier

NOW = 1_800_000_000


def user(subject: str, revoked_at: int = NOW, lasting: int = 1020) -> Revocation:
    return Revocation(RevocationKind.USER, subject, revoked_at, revoked_at + lasting)


def session(subject: str, revoked_at: int = NOW, lasting: int = 1020) -> Revocation:
    return Revocation(RevocationKind.SESSION, subject, revoked_at, revoked_at + lasting)


def test_a_user_revocation_refuses_the_tokens_issued_until_then_and_no_later_one() -> None:
    revocations = RevocationList()
    revocations.add(user("ada"))

    def refused(issued_at: float, user_id: str = "ada") -> bool:
        return (
            revocations.refusal(user_id=user_id, session_id="s", issued_at=issued_at, now=NOW + 1) is not None
        )

    assert refused(NOW - 600)
    assert refused(NOW)  # issued in the second of the revocation
    assert not refused(NOW + 1)  # signed in again afterwards
    assert not refused(NOW - 600, user_id="bob")
    assert revocations.refusal(user_id="ada", session_id="", issued_at=NOW, now=NOW) == REVOKED


def test_a_session_revocation_refuses_every_token_of_the_session_only() -> None:
    revocations = RevocationList()
    revocations.add(session("family-1"))
    assert (
        revocations.refusal(user_id="ada", session_id="family-1", issued_at=NOW + 5, now=NOW + 6) == REVOKED
    )
    assert revocations.refusal(user_id="ada", session_id="family-2", issued_at=NOW - 5, now=NOW) is None
    assert revocations.refusal(user_id="ada", session_id="", issued_at=NOW - 5, now=NOW) is None


def test_entries_stop_applying_when_they_expire_and_pruning_forgets_them() -> None:
    revocations = RevocationList()
    revocations.add(user("ada", lasting=100))
    revocations.add(session("family-1", lasting=100))
    assert revocations.refusal(user_id="ada", session_id="family-1", issued_at=NOW, now=NOW + 99)
    assert revocations.refusal(user_id="ada", session_id="family-1", issued_at=NOW, now=NOW + 100) is None
    assert len(revocations) == 2
    revocations.prune(NOW + 99)
    assert len(revocations) == 2
    revocations.prune(NOW + 100)
    assert len(revocations) == 0


def test_of_two_revocations_of_one_user_the_later_holds_whatever_the_order_they_arrive_in() -> None:
    for order in ([user("ada", NOW), user("ada", NOW + 60)], [user("ada", NOW + 60), user("ada", NOW)]):
        revocations = RevocationList()
        for revocation in order:
            revocations.add(revocation)
        assert revocations.refusal(user_id="ada", session_id="", issued_at=NOW + 30, now=NOW + 61)
        assert len(revocations) == 1


@pytest.fixture
def verifier(signing_key: RSAKey) -> TokenVerifier:
    keys = KeySet([RSAKey.import_key(signing_key.as_dict(private=False))])
    return TokenVerifier(StaticKeySource(keys), issuer=ISSUER, audience=AUDIENCE)


async def test_a_cached_token_is_refused_once_its_user_is_revoked(
    verifier: TokenVerifier, make_token: TokenFactory
) -> None:
    now = int(time.time())
    token = make_token("ada", iat=now - 5)
    later = make_token("ada", iat=now + 1)
    bystander = make_token("bob", iat=now - 5)
    assert (await verifier.verify(token)).user_id == "ada"  # now in the verifier's cache

    verifier.revocations.add(user("ada", revoked_at=now))

    with pytest.raises(Unauthenticated, match="access token revoked"):
        await verifier.verify(token)
    with pytest.raises(Unauthenticated, match="access token revoked"):  # still cached, still refused
        await verifier.verify(token)
    assert (await verifier.verify(later)).user_id == "ada"
    assert (await verifier.verify(bystander)).user_id == "bob"


async def test_a_token_is_refused_once_its_session_is_revoked(
    verifier: TokenVerifier, make_token: TokenFactory
) -> None:
    token = make_token("ada", sid="family-1")
    other_session = make_token("ada", sid="family-2")
    without_session = make_token("ada")
    await verifier.verify(token)
    verifier.revocations.add(session("family-1", revoked_at=int(time.time())))
    with pytest.raises(Unauthenticated, match="access token revoked"):
        await verifier.verify(token)
    await verifier.verify(other_session)
    await verifier.verify(without_session)


@pytest.mark.parametrize("sid", [42, ["family-1"], "x" * 129])
async def test_a_malformed_session_id_is_an_invalid_token(
    verifier: TokenVerifier, make_token: TokenFactory, sid: object
) -> None:
    with pytest.raises(Unauthenticated, match="invalid access token"):
        await verifier.verify(make_token("ada", sid=sid))
