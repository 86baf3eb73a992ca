"""OpenID Connect sign-in (authorization-code flow, PKCE S256, state and nonce) with Google and Microsoft.

BeginLogin stores a one-time *login state* server-side (keyed by the SHA-256 of `state`): provider,
redirect URI, nonce, PKCE verifier, expiry. CompleteLogin consumes it atomically before anything else
(a replayed state fails even if the first attempt failed later), exchanges the code at the token
endpoint with the verifier and the client secret, and validates the ID token: RS256 signature with a
key of the provider's JWKS (from its discovery document, cached), `iss` (Microsoft's multi-tenant
`{tenantid}` replaced by the token's `tid`), `aud` = client id (`azp` when there are several), `exp`,
`iat`, `nonce`, `sub`. Then the person is signed in through `SessionManager.sign_in`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.util import json_b64decode

from auth.sessions import (
    Clock,
    Identity,
    Session,
    SessionManager,
    hash_token,
    normalise_display_name,
    normalise_email,
    utc_now,
)
from auth.settings import OidcProviderSettings
from auth.store import AuthStore, LoginState
from mesh.errors import FailedPrecondition, InvalidArgument, Unauthenticated, Unavailable
from mesh.tokens import RemoteJwks

log = logging.getLogger(__name__)

ID_TOKEN_ALGORITHMS = ["RS256"]
LEEWAY_SECONDS = 60
MAX_STATE_LENGTH = 128
_TENANT_PLACEHOLDER = "{tenantid}"


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of an OIDC discovery document we use."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(SHA-256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_endpoint(url: str, name: str) -> str:
    """Provider endpoints must be https; plain http only on loopback (a local test provider)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
    raise Unavailable(f"the identity provider's {name} is not an https URL")


class OidcProvider:
    """One configured identity provider: discovery and JWKS (both cached), token endpoint, ID tokens."""

    def __init__(
        self,
        provider_id: str,
        settings: OidcProviderSettings,
        http: httpx.AsyncClient,
        *,
        jwks_min_refresh_seconds: float = 60.0,
    ) -> None:
        self.id = provider_id
        self.settings = settings
        self._http = http
        self._jwks_min_refresh = jwks_min_refresh_seconds
        self._metadata: ProviderMetadata | None = None
        self._jwks: RemoteJwks | None = None

    async def metadata(self) -> ProviderMetadata:
        if self._metadata is None:
            document = await self._get_json(self.settings.discovery_url, "discovery document")
            try:
                metadata = ProviderMetadata(
                    issuer=str(document["issuer"]),
                    authorization_endpoint=_check_endpoint(
                        str(document["authorization_endpoint"]), "authorization endpoint"
                    ),
                    token_endpoint=_check_endpoint(str(document["token_endpoint"]), "token endpoint"),
                    jwks_uri=_check_endpoint(str(document["jwks_uri"]), "JWKS URI"),
                )
            except KeyError as exc:
                raise Unavailable(f"the {self.id} discovery document lacks {exc}") from exc
            self._metadata = metadata
            self._jwks = RemoteJwks(
                metadata.jwks_uri, min_refresh_seconds=self._jwks_min_refresh, client=self._http
            )
        return self._metadata

    async def _get_json(self, url: str, what: str) -> Mapping[str, Any]:
        try:
            response = await self._http.get(url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("fetching %s of %s failed: %s", what, self.id, exc)
            raise Unavailable(f"the {self.id} sign-in service is not reachable") from exc
        if not isinstance(document, dict):
            raise Unavailable(f"the {self.id} {what} is not a JSON object")
        return document

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        metadata = await self.metadata()
        parts = urlsplit(metadata.authorization_endpoint)
        query = [
            *parse_qsl(parts.query),
            ("response_type", "code"),
            ("client_id", self.settings.client_id),
            ("redirect_uri", redirect_uri),
            ("scope", " ".join(self.settings.scopes)),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", code_challenge),
            ("code_challenge_method", "S256"),
        ]
        return urlunsplit(parts._replace(query=urlencode(query)))

    async def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str) -> str:
        """The ID token the token endpoint returns for `code`."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.settings.client_id,
            "client_secret": self.settings.client_secret.get_secret_value(),
            "code_verifier": code_verifier,
        }
        try:
            response = await self._http.post(
                metadata.token_endpoint, data=form, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            log.warning("token endpoint of %s failed: %s", self.id, exc)
            raise Unavailable(f"the {self.id} sign-in service is not reachable") from exc
        if response.status_code >= 500:
            raise Unavailable(f"the {self.id} sign-in service failed; try again")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            log.info("token endpoint refused the code", extra={"provider": self.id, "error": str(error)})
            raise Unauthenticated("the identity provider did not accept the login; start again")
        id_token = body.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise Unauthenticated("the identity provider returned no ID token")
        return id_token

    async def validate_id_token(self, id_token: str, *, nonce: str, now: datetime) -> dict[str, Any]:
        """The verified claims of `id_token`, or Unauthenticated."""
        metadata = await self.metadata()
        assert self._jwks is not None
        header = _header(id_token)
        kid = header.get("kid")
        if header.get("alg") not in ID_TOKEN_ALGORITHMS or not isinstance(kid, str) or not kid:
            raise Unauthenticated("the ID token is not signed as expected")
        keys: KeySet = await self._jwks.key_set(kid)
        try:
            claims = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS).claims
        except (JoseError, ValueError, TypeError) as exc:
            raise Unauthenticated("the ID token signature is not valid") from exc
        expected_issuer = metadata.issuer
        if _TENANT_PLACEHOLDER in expected_issuer:
            tenant = claims.get("tid")
            if not isinstance(tenant, str) or not tenant or "/" in tenant:
                raise Unauthenticated("the ID token names no tenant")
            expected_issuer = expected_issuer.replace(_TENANT_PLACEHOLDER, tenant)
        registry = jwt.JWTClaimsRegistry(
            now=int(now.timestamp()),
            leeway=LEEWAY_SECONDS,
            iss={"essential": True, "values": [expected_issuer, *self.settings.issuer_aliases]},
            aud={"essential": True, "value": self.settings.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise Unauthenticated(f"the ID token is not valid ({getattr(exc, 'claim', exc.error)})") from exc
        audience = claims["aud"]
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.settings.client_id:
            raise Unauthenticated("the ID token is not valid (azp)")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
            raise Unauthenticated("the ID token is not valid (nonce)")
        return claims

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        email_claim = claims.get("email")
        verified = claims.get("email_verified") is True or claims.get("email_verified") == "true"
        if not isinstance(email_claim, str) or not email_claim:
            # Microsoft may leave out `email`; `preferred_username` is often the address, never verified.
            email_claim = claims.get("preferred_username")
            verified = False
        if not isinstance(email_claim, str):
            raise FailedPrecondition(f"{self.settings.display_name} did not share an email address")
        try:
            email = normalise_email(email_claim)
        except InvalidArgument as exc:
            raise FailedPrecondition(f"{self.settings.display_name} shared no valid email address") from exc
        name = claims.get("name")
        try:
            display_name = normalise_display_name(name[:200]) if isinstance(name, str) else ""
        except InvalidArgument:
            display_name = ""
        return Identity(
            provider=self.id,
            subject=str(claims["sub"]),
            email=email,
            display_name=display_name,
            email_verified=verified or self.settings.trust_email,
        )


def _header(token: str) -> dict[str, Any]:
    if token.count(".") != 2 or len(token) > 16384 or not token.isascii():
        raise Unauthenticated("the ID token is malformed")
    try:
        header = json_b64decode(token.split(".", 1)[0].encode("ascii"))
    except (ValueError, TypeError) as exc:
        raise Unauthenticated("the ID token is malformed") from exc
    if not isinstance(header, dict):
        raise Unauthenticated("the ID token is malformed")
    return header


@dataclass(frozen=True)
class LoginStart:
    authorization_url: str
    state: str


class OidcLogin:
    """BeginLogin and CompleteLogin over the configured providers."""

    def __init__(
        self,
        providers: Mapping[str, OidcProvider],
        store: AuthStore,
        sessions: SessionManager,
        *,
        state_ttl: timedelta,
        clock: Clock = utc_now,
    ) -> None:
        self.providers = dict(providers)
        self._store = store
        self._sessions = sessions
        self._state_ttl = state_ttl
        self._clock = clock

    def _provider(self, provider_id: str) -> OidcProvider:
        provider = self.providers.get(provider_id)
        if provider is None:
            raise InvalidArgument("provider", f"unknown provider {provider_id[:40]!r}; see ListProviders")
        return provider

    async def begin(self, provider_id: str, redirect_uri: str) -> LoginStart:
        provider = self._provider(provider_id)
        if redirect_uri not in provider.settings.redirect_uris:
            raise InvalidArgument("redirect_uri", "not a redirect URI configured for this provider")
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        code_verifier = secrets.token_urlsafe(48)  # 64 characters of the unreserved set (RFC 7636: 43-128)
        url = await provider.authorization_url(
            redirect_uri=redirect_uri, state=state, nonce=nonce, code_challenge=pkce_challenge(code_verifier)
        )
        now = self._clock()
        async with self._store.transaction() as tx:
            await tx.purge_expired(now)
            await tx.save_login_state(
                LoginState(
                    state_hash=hash_token(state),
                    provider=provider.id,
                    redirect_uri=redirect_uri,
                    nonce=nonce,
                    code_verifier=code_verifier,
                    created_at=now,
                    expires_at=now + self._state_ttl,
                )
            )
        return LoginStart(authorization_url=url, state=state)

    async def complete(self, state: str, code: str) -> Session:
        """Field rules (both present, the code's length) are the contract's; a state we could never have
        issued is as unknown as a spent one."""
        if len(state) > MAX_STATE_LENGTH:
            raise Unauthenticated("unknown or already used login state; start again")
        async with self._store.transaction() as tx:  # consumed and committed before anything can fail
            pending = await tx.take_login_state(hash_token(state))
        now = self._clock()
        if pending is None:
            raise Unauthenticated("unknown or already used login state; start again")
        if pending.expires_at <= now:
            raise Unauthenticated("the login took too long; start again")
        provider = self.providers.get(pending.provider)
        if provider is None:
            raise FailedPrecondition("the provider of this login is no longer configured")
        id_token = await provider.exchange_code(
            code=code, redirect_uri=pending.redirect_uri, code_verifier=pending.code_verifier
        )
        claims = await provider.validate_id_token(id_token, nonce=pending.nonce, now=self._clock())
        return await self._sessions.sign_in(provider.identity(claims))
