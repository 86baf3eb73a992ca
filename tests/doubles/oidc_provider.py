"""A local OpenID Connect provider, for tests and offline development: discovery, authorize, token, JWKS.

It behaves like Google (or, with `tenant`, like Microsoft's multi-tenant endpoint, whose discovery issuer
is `.../{tenantid}/v2.0`) as far as the code flow goes: authorization codes are one-time and bound to the
client, the redirect URI, the PKCE challenge, the scope and the nonce; the token endpoint authenticates
the client (`client_secret_post`), then checks the code and the PKCE verifier, and answers an RS256 ID
token when `openid` was asked for. Its discovery document, ID tokens and token-endpoint errors (RFC 6749
§5.2) have the fields and forms of the real providers' (tests/fixtures/oidc), held there by
tests/service/test_oidc_provider_contract.py: a Microsoft-like ID token carries `tid`, `ver` and
`preferred_username` but no `email_verified`, and its JWKS keys name no `alg`, as Microsoft's don't.

Tests mint codes directly with `mint_code` (no browser needed) and can bend the ID token (`claims`,
`header`, `signing_key`) to play an attacker.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

DELETE = object()
"""As a value in `claims`: leave that claim out of the ID token."""


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
"""Headers of every token-endpoint answer (RFC 6749 §5.1, §5.2)."""


def generate_signing_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str
    scope: str
    claims: dict[str, Any]
    header: dict[str, Any]
    signing_key: RSAKey | None


@dataclass
class FakeOidcProvider:
    """Serve with `await start()`; `issuer` is its base URL once started."""

    client_id: str = "athena-test-client"
    client_secret: str = "athena-test-secret"
    tenant: str | None = None
    """Microsoft-style multi-tenant: the discovery issuer holds `{tenantid}`; tokens carry `tid`."""
    key: RSAKey = field(default_factory=lambda: generate_signing_key("idp-key-1"))
    grants: dict[str, _Grant] = field(default_factory=dict)
    token_requests: int = 0
    base_url: str = ""
    _runner: web.AppRunner | None = None

    @property
    def discovery_url(self) -> str:
        return f"{self.base_url}/.well-known/openid-configuration"

    @property
    def discovery_issuer(self) -> str:
        return f"{self.base_url}/{{tenantid}}/v2.0" if self.tenant is not None else self.base_url

    @property
    def token_issuer(self) -> str:
        return self.discovery_issuer.replace("{tenantid}", self.tenant or "")

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.base_url = f"http://{host}:{bound}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def mint_code(
        self,
        *,
        redirect_uri: str,
        code_challenge: str,
        nonce: str,
        subject: str = "subject-1",
        email: str = "person@example.com",
        client_id: str | None = None,
        scope: str = "openid email profile",
        claims: dict[str, Any] | None = None,
        header: dict[str, Any] | None = None,
        signing_key: RSAKey | None = None,
    ) -> str:
        """A code as if the person had signed in and consented; `claims` override the ID token's."""
        code = secrets.token_urlsafe(24)
        person: dict[str, Any] = {"sub": subject, "email": email, "name": "Test Person"}
        if self.tenant is None:
            person["email_verified"] = True  # Google vouches for the address
        else:
            # Microsoft names the sign-in name and never says whether the address is verified.
            person.update(preferred_username=email, ver="2.0")
        self.grants[code] = _Grant(
            client_id=client_id or self.client_id,
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
            nonce=nonce,
            scope=scope,
            claims={**person, **(claims or {})},
            header=header or {},
            signing_key=signing_key,
        )
        return code

    def discovery_document(self) -> dict[str, Any]:
        """What the provider publishes: the fields of Google's (or Microsoft's) document that the code flow
        uses, with the same names and forms, offering only what this provider does."""
        document: dict[str, Any] = {
            "issuer": self.discovery_issuer,
            "authorization_endpoint": f"{self.base_url}/authorize",
            "token_endpoint": f"{self.base_url}/token",
            "jwks_uri": f"{self.base_url}/jwks",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
        }
        if self.tenant is None:
            return document | {
                "subject_types_supported": ["public"],
                "scopes_supported": ["openid", "email", "profile"],
                "claims_supported": ["aud", "email", "email_verified", "exp", "iat", "iss", "name", "sub"],
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code"],
            }
        # Microsoft supports PKCE S256 but does not say so in its document.
        return document | {
            "subject_types_supported": ["pairwise"],
            "scopes_supported": ["openid", "profile", "email"],
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "email",
            ],
        }

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response(self.discovery_document())

    async def _jwks(self, _: web.Request) -> web.Response:
        public = {**self.key.as_dict(private=False), "use": "sig"}
        if self.tenant is None:
            public["alg"] = "RS256"  # Google names the algorithm of each key; Microsoft does not
        else:
            public.pop("alg", None)
        return web.json_response({"keys": [public]})

    async def _authorize(self, request: web.Request) -> web.Response:
        """Signs in `login_hint` (or person@example.com) at once and redirects back with the code."""
        query = request.query
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            return web.json_response({"error": "invalid_request"}, status=400)
        email = query.get("login_hint") or "person@example.com"
        code = self.mint_code(
            redirect_uri=query.get("redirect_uri", ""),
            code_challenge=query.get("code_challenge", ""),
            nonce=query.get("nonce", ""),
            subject=hashlib.sha256(email.encode()).hexdigest()[:24],
            email=email,
            client_id=query.get("client_id", ""),
            scope=query.get("scope", ""),
        )
        back = urlencode({"code": code, "state": query.get("state", "")})
        raise web.HTTPFound(f"{query.get('redirect_uri', '')}?{back}")

    async def _token(self, request: web.Request) -> web.Response:
        """RFC 6749 §4.1.3 in its order: authenticate the client, then check the grant; errors as §5.2."""
        self.token_requests += 1
        form = await request.post()
        client_id, secret = str(form.get("client_id", "")), str(form.get("client_secret", ""))
        if client_id != self.client_id or not secrets.compare_digest(secret, self.client_secret):
            return _token_error(401, "invalid_client", "client authentication failed")
        if form.get("grant_type") != "authorization_code":
            return _token_error(400, "unsupported_grant_type", "only authorization_code is supported")
        grant = self.grants.pop(str(form.get("code", "")), None)  # one-time: a replayed code is unknown
        if grant is None:
            return _token_error(400, "invalid_grant", "the code is invalid, expired or already used")
        if grant.client_id != client_id or form.get("redirect_uri") != grant.redirect_uri:
            return _token_error(400, "invalid_grant", "the code was issued to another client or redirect")
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not secrets.compare_digest(challenge, grant.code_challenge):
            return _token_error(400, "invalid_grant", "the code_verifier does not match the code_challenge")
        answer: dict[str, Any] = {
            "access_token": secrets.token_urlsafe(16),
            "token_type": "Bearer",
            "expires_in": 3599,
            "scope": grant.scope,
        }
        if "openid" in grant.scope.split():  # without it this is plain OAuth: no ID token
            answer["id_token"] = self.id_token(grant)
        return web.json_response(answer, headers=_NO_STORE)

    def id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.token_issuer,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
        }
        if self.tenant is not None:
            claims["tid"] = self.tenant
        claims.update(grant.claims)
        claims = {name: value for name, value in claims.items() if value is not DELETE}
        key = grant.signing_key or self.key
        header = {"alg": "RS256", "kid": key.kid, "typ": "JWT", **grant.header}
        return jwt.encode(header, claims, key, algorithms=["RS256"])


def _token_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=_NO_STORE
    )
