"""What auth keeps about a person, and how (issue 14): sealed with the person's own data key, and found
again through a keyed blind index, so the database holds no address, name or provider subject in clear.

- `auth.users.email`, `auth.users.display_name`: AES-256-GCM ciphertext (`mesh.envelope`) under the user's
  data key (owner: the user id), bound to the table, the column and the user id.
- `auth.users.email_index`: the blind token of the normalised address under the service-wide index key.
  Sign-in looks an account up by address before anyone knows whose it is, so this key cannot be the
  user's; it also keeps addresses unique (a UNIQUE column).
- `auth.identities.subject`: sealed as well (the user's key, bound to the identity's provider and index);
  sign-in finds the identity by `subject_index`, the blind token of provider and subject under the index
  key. A subject is personal data: Google's `sub` is the Google account's own id, the same for every app
  (it links the person across services), Microsoft's is that person's stable id for this app, and the dev
  provider's subject is the address itself. It is kept sealed, not only indexed, so that an export can
  still show it. `provider` ("google", "microsoft", "dev") stays readable: it is part of the key.
- The index key is the data key of the service-wide owner `INDEX_OWNER` in `auth.data_keys`, made on first
  use and wrapped by the KMS like any user's (`rewrap-keys` moves it too). A token is the first 16 bytes
  of HMAC-SHA256 under a key derived from it (`Cipher.token`); each kind has its own prefix ("email:",
  "identity:"), so an address never meets a subject.

What the index tells someone holding the database: which rows have the same address (none, it is
unique) and nothing readable. Holding the KMS as well, they can confirm a guessed address — inherent in
finding accounts by address. Erasure deletes the user's row and its tokens with it; a backup taken before
still holds them, and confirms a guessed address was a user's then for as long as the index key lives.
"""

from __future__ import annotations

from mesh.envelope import Cipher

DATA_KEYS_TABLE = "auth.data_keys"
INDEX_OWNER = "service:lookup-index"
"""Owner of the index key: not a user id (`purge_expired` keeps the keys of owners `service:...`)."""
USERS = "auth.users"
IDENTITIES = "auth.identities"


def email_token(index: Cipher, email: str) -> bytes:
    """The blind index of a normalised address (`auth.sessions.normalise_email`)."""
    if email != email.strip().lower():
        raise ValueError("an e-mail address reaches the store normalised")
    return index.token(f"email:{email}")


def identity_token(index: Cipher, provider: str, subject: str) -> bytes:
    """The blind index of an identity: its provider (never holding ':') and subject."""
    return index.token(f"identity:{provider}:{subject}")


def identity_row(provider: str, subject_index: bytes) -> str:
    """What a sealed subject is bound to: its row's key."""
    return f"{provider}:{subject_index.hex()}"
