"""Forged and misused access tokens, shared by the attack suites of the auth service, the router and the
edge (SPEC §11: "JWT attacks are rejected at the edge and in services").

`attack_cases(...)` builds every attack against one victim: alg none, HS256 signed with the victim's public
key (PEM, JWK and DER forms), a tampered payload under the genuine signature, a stripped signature,
unknown and injected `kid`s, `jku`/`x5u`/`jwk`/`x5c`/`crit` headers pointing at an attacker's key or at
the `canary` listener, other RSA algorithms, expired and not-yet-valid tokens, wrong issuer or audience,
missing claims, a missing or wrong `typ`, and ID tokens used as access tokens. Every token must be refused.

`canary_listener()` is a TCP listener that counts connections: a verifier that follows a URL named by a
token (`jku`, `x5u`) connects to it. It runs in a thread, so it counts connections from other processes
(Envoy, the services) whether the test is sync or async.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from doubles.oidc_provider import generate_signing_key
from joserfc import jws, jwt
from joserfc.jwk import RSAKey

ACCESS_TOKEN_HEADER = {"typ": "at+jwt"}
ATTACKER = generate_signing_key("attacker-key")
"""The attacker's own RSA key: validly signs whatever the attacker wants, under any `kid`."""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """Built by hand: joserfc (rightly) refuses to use an RSA public key as an HMAC secret."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def rs(header: dict[str, Any], claims: dict[str, Any], key: RSAKey, alg: str = "RS256") -> str:
    if alg != "RS256":  # the same RSA key, not bound to RS256 (joserfc honours a key's `alg`)
        key = RSAKey.import_key({k: v for k, v in key.as_dict(private=True).items() if k != "alg"})
    return jwt.encode({"alg": alg, **header}, claims, key, algorithms=[alg])


def rs_exact_header(header: dict[str, Any], claims: dict[str, Any], key: RSAKey) -> str:
    """RS256 with exactly `header`: `jwt.encode` adds `typ: JWT` to a header without `typ`."""
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return jws.serialize_compact({"alg": "RS256", **header}, payload, key, algorithms=["RS256"])


def access_claims(issuer: str, audience: str, subject: str, **overrides: Any) -> dict[str, Any]:
    """The claims of a genuine access token (as the auth service issues them), with `overrides`."""
    now = int(time.time())
    base = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    return {**base, **overrides}


def genuine_token(
    signing_key: RSAKey, *, issuer: str, audience: str, subject: str, kid: str | None = None
) -> str:
    """An acceptable access token signed like the auth service does (the control of every suite)."""
    header = {**ACCESS_TOKEN_HEADER, "kid": kid or signing_key.kid}
    return rs(header, access_claims(issuer, audience, subject), signing_key)


def _payload(token: str) -> dict[str, Any]:
    value = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    return value if isinstance(value, dict) else {}


def attack_cases(
    signing_key: RSAKey,
    public_key: RSAKey,
    *,
    issuer: str,
    audience: str,
    canary_url: str,
    genuine: str | None = None,
    subject: str | None = None,
    kid: str | None = None,
) -> list[tuple[str, str]]:
    """(name, token) pairs; each token must be refused.

    `signing_key` is the victim's real private key (tampered, stripped and misused-but-validly-signed
    variants need it), `public_key` its public half as published in the JWKS (what an attacker knows and
    turns into an HMAC secret). `genuine` is a real access token of the victim (its header, payload and
    signature are reused); one is signed with `signing_key` when not given. `subject` defaults to the
    genuine token's `sub`, `kid` to `signing_key`'s.
    """
    kid = kid or signing_key.kid
    if genuine is None:
        genuine = genuine_token(
            signing_key, issuer=issuer, audience=audience, subject=subject or str(uuid.uuid4()), kid=kid
        )
    sub = subject or str(_payload(genuine).get("sub", ""))

    def claims(**overrides: Any) -> dict[str, Any]:
        return access_claims(issuer, audience, sub, **overrides)

    good = {**ACCESS_TOKEN_HEADER, "kid": kid}
    header, payload, signature = genuine.split(".")
    cases: list[tuple[str, str]] = []

    def case(name: str, token: str) -> None:
        cases.append((name, token))

    case("garbage", "garbage")
    case("three garbage segments", "a.b.c")
    case("empty segments", "..")
    case("oversized", "a" * 9000 + ".b.c")
    case("alg none", f"{segment({'alg': 'none', **good})}.{segment(claims())}.")
    case("alg None", f"{segment({'alg': 'None', **good})}.{segment(claims())}.")
    jwk_form = json.dumps(public_key.as_dict(private=False)).encode()
    pem_form = bytes(public_key.as_pem(private=False))
    der_form = bytes(public_key.as_der(private=False))
    case("HS256 with the public key (PEM)", hs256({"alg": "HS256", **good}, claims(), pem_form))
    case("HS256 with the public key (JWK)", hs256({"alg": "HS256", **good}, claims(), jwk_form))
    case("HS256 with the public key (DER)", hs256({"alg": "HS256", **good}, claims(), der_form))
    forged_payload = segment({**_payload(genuine), "sub": str(uuid.uuid4())})
    case("tampered payload, old signature", f"{header}.{forged_payload}.{signature}")
    case("stripped signature", f"{header}.{payload}.")
    case("signature of another token", f"{header}.{payload}.{b64(b'x' * 256)}")
    case("unknown kid", rs({**ACCESS_TOKEN_HEADER, "kid": "attacker-key"}, claims(), ATTACKER))
    case("no kid", rs(ACCESS_TOKEN_HEADER, claims(), ATTACKER))
    case("our kid, attacker's key", rs(good, claims(), ATTACKER))
    for injected in ("../../etc/passwd", "' OR 1=1 --", "/dev/null", "x" * 500):
        case(
            f"kid injection {injected[:20]}", rs({**ACCESS_TOKEN_HEADER, "kid": injected}, claims(), ATTACKER)
        )
    attacker_jwk = ATTACKER.as_dict(private=False)
    attacker = {**ACCESS_TOKEN_HEADER, "kid": "attacker-key"}
    case("jku to attacker JWKS", rs({**attacker, "jku": canary_url}, claims(), ATTACKER))
    case("x5u to attacker", rs({**attacker, "x5u": canary_url}, claims(), ATTACKER))
    case("jku with our kid", rs({**good, "jku": canary_url}, claims(), ATTACKER))
    case("embedded jwk", rs({**attacker, "jwk": attacker_jwk}, claims(), ATTACKER))
    case("embedded jwk, our kid", rs({**good, "jwk": attacker_jwk}, claims(), ATTACKER))
    case("x5c header", f"{segment({'alg': 'RS256', **good, 'x5c': ['MIIB']})}.{payload}.{signature}")
    case("jku on a validly signed token", rs({**good, "jku": canary_url}, claims(), signing_key))
    case("crit header", f"{segment({'alg': 'RS256', **good, 'crit': ['exp']})}.{payload}.{signature}")
    case("RS512 with our key", rs(good, claims(), signing_key, alg="RS512"))
    case("PS256 with our key", rs(good, claims(), signing_key, alg="PS256"))
    now = int(time.time())
    case("expired", rs(good, claims(iat=now - 3600, exp=now - 120), signing_key))
    case("future nbf", rs(good, claims(nbf=now + 3600), signing_key))
    case("issued in the future", rs(good, claims(iat=now + 3600, exp=now + 7200), signing_key))
    case("no exp", rs(good, {k: v for k, v in claims().items() if k != "exp"}, signing_key))
    case("no sub", rs(good, {k: v for k, v in claims().items() if k != "sub"}, signing_key))
    case("empty sub", rs(good, claims(sub=""), signing_key))
    case("wrong issuer", rs(good, claims(iss="https://evil.example"), signing_key))
    case("wrong audience", rs(good, claims(aud="another-api"), signing_key))
    case("no typ", rs_exact_header({"kid": kid}, claims(), signing_key))
    id_token_claims = claims(aud="google-client", nonce="n", email="victim@example.com")
    case("ID token (typ JWT, aud client id)", rs({"typ": "JWT", "kid": kid}, id_token_claims, signing_key))
    case("ID token claims with typ at+jwt", rs(good, id_token_claims, signing_key))
    case("typ JWT, otherwise valid", rs({"typ": "JWT", "kid": kid}, claims(), signing_key))
    return cases


def attack_names() -> list[str]:
    """The names of `attack_cases` (for `pytest.mark.parametrize`, before any fixture exists)."""
    return [
        name
        for name, _ in attack_cases(
            ATTACKER,
            ATTACKER,
            issuer="i",
            audience="a",
            canary_url="http://127.0.0.1:9/",
            genuine=f"{segment({})}.{segment({})}.c2ln",
        )
    ]


class Canary:
    """A TCP listener no verifier may ever connect to; `connections` lists the peers that did."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"
        self.connections: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="jwt-canary", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, peer = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(str(peer))
            connection.close()

    def settle(self) -> list[str]:
        """The connections so far, after giving pending ones time to be accepted."""
        time.sleep(0.1)
        return list(self.connections)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._socket.close()


@contextmanager
def canary_listener() -> Iterator[Canary]:
    canary = Canary()
    try:
        yield canary
    finally:
        canary.close()
