"""Erasing an account in auth (GDPR Art. 17), revoking its access tokens everywhere, and signing the receipt.

The order keeps every promise the answer makes:

1. every access token issued to the user so far is revoked (`mesh.revocation`). When the revocation
   cannot be recorded (Redis down), the call fails UNAVAILABLE with nothing erased here: the caller's token
   still works, so calling again finishes the erasure. An erasure that answered is one whose tokens every
   service refuses;
2. then, in one transaction, the user's data key is destroyed (crypto-shredding, committed at once), then the
   account, its identities, sessions and refresh-token hashes are deleted, each counted. Should this
   fail (the database, after the revocation), the person's refresh token still gets them a token issued
   after the revocation to delete again with; once the data key is gone, what is left of the account is
   deleted when next touched (`auth.postgres`);
3. the receipt states what the caller reported other services erased (memory's counts, through the router)
   and auth's own counts, and is signed with the access tokens' key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from auth.access import AccessTokenIssuer
from auth.receipts import ErasureReceipt, ReceiptSigner
from auth.store import AuthStore, ErasedAccount
from mesh.errors import InvalidArgument, Unavailable
from mesh.revocation import RevocationKind, RevocationWriter

log = logging.getLogger(__name__)

AUTH_CATEGORIES = frozenset(ErasedAccount().counts())
"""The categories auth counts itself; another service cannot report them."""
UNREVOKABLE = "the account cannot be deleted right now; try again in a moment"
"""What the caller hears when the sign-ins cannot be revoked now (UNAVAILABLE)."""


@dataclass(frozen=True)
class Erasure:
    """What erasing a user did."""

    existed: bool
    """False when there was no account left to erase (erased before)."""
    receipt: ErasureReceipt


class AccountEraser:
    """The domain behind IdentityService/EraseUser."""

    def __init__(
        self,
        store: AuthStore,
        tokens: AccessTokenIssuer,
        revocations: RevocationWriter,
        receipts: ReceiptSigner,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._revocations = revocations
        self._receipts = receipts
        self._clock = clock

    async def erase(self, user_id: str, purged: Mapping[str, int]) -> Erasure:
        """Erases `user_id` (see the module's docstring); `purged` is what other services erased of the
        user, by category. Idempotent: a second erasure finds nothing to delete and says so."""
        clash = sorted(AUTH_CATEGORIES.intersection(purged))
        if clash:
            raise InvalidArgument("purged", f"{clash[0]!r} is counted by auth itself")
        now = self._clock()
        try:
            await self._revocations.revoke(self._tokens.revocation(RevocationKind.USER, user_id, now))
        except Unavailable as exc:  # before anything is erased, the data key included
            raise Unavailable(UNREVOKABLE) from exc
        async with self._store.transaction() as tx:
            deleted = await tx.delete_user(user_id)
        receipt = self._receipts.sign(user_id=user_id, erased={**purged, **deleted.counts()}, now=now)
        log.info(
            "user erased",
            extra={"user_id": user_id, "receipt_id": receipt.receipt_id, "erased": dict(receipt.erased)},
        )
        return Erasure(existed=deleted.accounts > 0, receipt=receipt)
