"""`RecordingRevocations`: the revocation list auth writes to, in memory (unit tests of the auth domain)."""

from __future__ import annotations

from mesh.errors import Unavailable
from mesh.revocation import Revocation, RevocationList


class RecordingRevocations:
    """A `RevocationWriter` that keeps what it was given (in order, and as a `RevocationList`); while
    `down`, it fails as the Redis one does when Redis cannot be reached."""

    def __init__(self) -> None:
        self.written: list[Revocation] = []
        self.list = RevocationList()
        self.down = False

    async def revoke(self, revocation: Revocation) -> None:
        if self.down:
            raise Unavailable("the revocation list is unavailable")
        self.written.append(revocation)
        self.list.add(revocation)
