"""OAuth 2.0 with a provider, through authlib: the authorization URL (PKCE S256), the code exchange, the
refresh and the revocation (RFC 6749, 7636, 7009). Provider failures become the domain's errors:

    GrantRejected   the provider turned the code or the refresh token down (`invalid_grant`, a wrong code,
                    a revoked grant): the person must consent again
    Unavailable     the provider could not be reached or failed (network, 5xx, 429): try again later

A client is made per operation (these are rare: a connection, an hourly refresh, a revocation), so that no
token state is shared between people.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc.util import json_b64decode

from integrations.providers import ProviderClient
from mesh.errors import FailedPrecondition, Unavailable

DEFAULT_LIFETIME_SECONDS = 3600
"""An access token's lifetime when the provider does not say (both say `expires_in`)."""


class GrantRejected(FailedPrecondition):
    """The provider does not accept the code or the grant (any more)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Tokens of a grant, as the token endpoint answered them."""

    access_token: str
    refresh_token: str | None
    expires_at: float
    """Unix time the access token expires."""
    scopes: frozenset[str]
    account: str
    """The account's email address, from the ID token; empty when there is none."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "expires_at": self.expires_at,
                "scopes": sorted(self.scopes),
                "account": self.account,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Grant:
        data = json.loads(text)
        return cls(
            access_token=data["access_token"],
            refresh_token=data["refresh_token"],
            expires_at=float(data["expires_at"]),
            scopes=frozenset(data["scopes"]),
            account=data["account"],
        )


def _account(id_token: str | None) -> str:
    """The `email` claim of an ID token received straight from the token endpoint over TLS, which OpenID
    Connect Core §3.1.3.7 lets a client use without checking its signature; empty when absent."""
    if not id_token or id_token.count(".") != 2:
        return ""
    try:
        claims = json_b64decode(id_token.split(".")[1].encode("ascii"))
    except (ValueError, UnicodeError):
        return ""
    email = claims.get("email") if isinstance(claims, dict) else None
    return email if isinstance(email, str) else ""


def _grant(token: dict[str, Any], *, previous: Grant | None, now: float) -> Grant:
    expires_in = token.get("expires_in")
    expires_at = now + float(expires_in) if expires_in is not None else now + DEFAULT_LIFETIME_SECONDS
    scope = token.get("scope")
    if isinstance(scope, str):
        scopes = frozenset(scope.split())
    else:  # not echoed: what was held before
        scopes = previous.scopes if previous else frozenset()
    return Grant(
        access_token=str(token["access_token"]),
        # Google answers a refresh without a new refresh token (the old one stays good); Microsoft with a
        # new one (to be stored).
        refresh_token=token.get("refresh_token") or (previous.refresh_token if previous else None),
        expires_at=expires_at,
        scopes=scopes,
        account=_account(token.get("id_token")) or (previous.account if previous else ""),
    )


class OAuth:
    """OAuth operations with the providers of this deployment."""

    def __init__(self, *, timeout: float = 10.0, clock: Any = time.time) -> None:
        self._timeout = timeout
        self._clock = clock

    def _client(self, provider: ProviderClient, **options: Any) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=provider.client_secret,
            token_endpoint_auth_method="client_secret_post",  # noqa: S106 (a method name, not a secret)
            revocation_endpoint_auth_method="client_secret_post",
            timeout=self._timeout,
            follow_redirects=False,
            **options,
        )

    async def authorization_url(
        self,
        provider: ProviderClient,
        *,
        scopes: Sequence[str],
        state: str,
        code_verifier: str,
        redirect_uri: str,
    ) -> str:
        async with self._client(
            provider, scope=" ".join(scopes), redirect_uri=redirect_uri, code_challenge_method="S256"
        ) as client:
            url, _ = client.create_authorization_url(
                provider.authorize_url, state=state, code_verifier=code_verifier, **provider.authorize_params
            )
        return str(url)

    async def exchange(
        self, provider: ProviderClient, *, code: str, code_verifier: str, redirect_uri: str
    ) -> Grant:
        async with self._client(provider, redirect_uri=redirect_uri) as client:
            token = await self._call(
                provider,
                client.fetch_token(
                    provider.token_url,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=code_verifier,
                    redirect_uri=redirect_uri,
                ),
            )
        return _grant(token, previous=None, now=self._clock())

    async def refresh(self, provider: ProviderClient, grant: Grant, scopes: Sequence[str]) -> Grant:
        if grant.refresh_token is None:
            raise GrantRejected(f"{provider.provider.display_name} gave no refresh token")
        # Microsoft asks for the scopes again (one resource's); Google takes none.
        options = {"scope": " ".join(scopes)} if provider.revocation_url is None else {}
        async with self._client(provider) as client:
            refresh_token = grant.refresh_token
            refreshing = client.refresh_token(provider.token_url, refresh_token=refresh_token, **options)
            token = await self._call(provider, refreshing)
        return _grant(token, previous=grant, now=self._clock())

    async def revoke(self, provider: ProviderClient, grant: Grant) -> bool:
        """Revokes the grant where the provider can (its refresh token, which ends its access tokens too);
        False where it cannot (Microsoft). A token the provider no longer knows counts as revoked."""
        if provider.revocation_url is None:
            return False
        token = grant.refresh_token or grant.access_token
        async with self._client(provider) as client:
            try:
                response = await client.revoke_token(provider.revocation_url, token=token)
            except httpx2.HTTPError as exc:
                raise Unavailable(f"{provider.provider.display_name} could not be reached") from exc
        if response.status_code == 200:
            return True
        if response.status_code == 400 and _error_code(response) == "invalid_token":
            return True  # already dead
        raise Unavailable(
            f"{provider.provider.display_name} did not revoke the grant (HTTP {response.status_code})"
        )

    async def _call(self, provider: ProviderClient, operation: Any) -> dict[str, Any]:
        name = provider.provider.display_name
        try:
            token = await operation
        except OAuthError as exc:
            if exc.error in {"invalid_grant", "invalid_request", "unauthorized_client", "access_denied"}:
                raise GrantRejected(f"{name} did not accept the authorization ({exc.error})") from exc
            if exc.error == "invalid_client":
                raise FailedPrecondition(f"{name} does not know this deployment's OAuth client") from exc
            raise Unavailable(f"{name} failed to answer ({exc.error})") from exc
        except httpx2.HTTPError as exc:
            raise Unavailable(f"{name} could not be reached") from exc
        if not isinstance(token, dict) or "access_token" not in token:
            raise Unavailable(f"{name} answered without an access token")
        return dict(token)


def _error_code(response: httpx2.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("error", "")) if isinstance(body, dict) else ""
