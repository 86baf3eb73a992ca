"""What AthenaOS asks each provider for: endpoints, and the OAuth scopes of each capability.

Scopes are the narrowest read-only ones that serve the agents' tools (PROVIDERS.md §1-§5): connecting a
capability asks for its scopes alone (incremental consent), plus `openid email` to name the account.
Google's grants come back with every scope granted so far (`include_granted_scopes=true`); Microsoft's
need `offline_access` for a refresh token. Only Google has a revocation endpoint (RFC 7009).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Provider(StrEnum):
    GOOGLE = "google"
    MICROSOFT = "microsoft"

    @property
    def display_name(self) -> str:
        return "Google" if self is Provider.GOOGLE else "Microsoft"


class Capability(StrEnum):
    """In the order the contract lists them."""

    CALENDAR = "calendar"
    FILES = "files"
    HEALTH = "health"

    @property
    def noun(self) -> str:
        """What the person grants, in a sentence: "your calendar"."""
        return {"calendar": "your calendar", "files": "your files", "health": "your health data"}[self.value]


GOOGLE_HEALTH = "https://www.googleapis.com/auth/googlehealth."
GRAPH = "https://graph.microsoft.com/"

GOOGLE_SCOPES: Mapping[Capability, tuple[str, ...]] = {
    Capability.CALENDAR: ("https://www.googleapis.com/auth/calendar.readonly",),
    Capability.FILES: ("https://www.googleapis.com/auth/drive.readonly",),
    Capability.HEALTH: (
        f"{GOOGLE_HEALTH}activity_and_fitness.readonly",
        f"{GOOGLE_HEALTH}health_metrics_and_measurements.readonly",
        f"{GOOGLE_HEALTH}sleep.readonly",
    ),
}
MICROSOFT_SCOPES: Mapping[Capability, tuple[str, ...]] = {
    Capability.CALENDAR: (f"{GRAPH}Calendars.Read",),
    Capability.FILES: (f"{GRAPH}Files.Read",),
}


@dataclass(frozen=True)
class ProviderClient:
    """One provider as this deployment is registered with it."""

    provider: Provider
    client_id: str
    client_secret: str
    redirect_uris: frozenset[str]
    """The only redirect URIs BeginConnection accepts (exact match, as registered with the provider)."""
    authorize_url: str
    token_url: str
    revocation_url: str | None
    capability_scopes: Mapping[Capability, tuple[str, ...]]
    base_scopes: tuple[str, ...]
    """Asked for with every capability (the account's name; Microsoft's refresh token)."""
    authorize_params: Mapping[str, str] = field(default_factory=dict)
    """Further parameters of the authorization request."""

    def offers(self, capability: Capability) -> bool:
        return capability in self.capability_scopes

    def scopes(self, capabilities: frozenset[Capability]) -> list[str]:
        """The scopes to ask for `capabilities`, in a stable order."""
        asked = [*self.base_scopes]
        for capability in Capability:
            if capability in capabilities:
                asked += [s for s in self.capability_scopes[capability] if s not in asked]
        return asked

    def granted(self, scopes: frozenset[str]) -> frozenset[Capability]:
        """The capabilities every scope of which is in `scopes`."""
        return frozenset(
            capability
            for capability, needed in self.capability_scopes.items()
            if all(scope in scopes for scope in needed)
        )


def google(
    client_id: str, client_secret: str, redirect_uris: frozenset[str], *, accounts_url: str, oauth2_url: str
) -> ProviderClient:
    """Google: `accounts_url` "https://accounts.google.com", `oauth2_url` "https://oauth2.googleapis.com"."""
    return ProviderClient(
        provider=Provider.GOOGLE,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uris=redirect_uris,
        authorize_url=f"{accounts_url.rstrip('/')}/o/oauth2/v2/auth",
        token_url=f"{oauth2_url.rstrip('/')}/token",
        revocation_url=f"{oauth2_url.rstrip('/')}/revoke",
        capability_scopes=GOOGLE_SCOPES,
        base_scopes=("openid", "email"),
        # A refresh token (offline), issued again on every consent, for a grant that keeps the scopes
        # granted before (incremental consent).
        authorize_params={"access_type": "offline", "prompt": "consent", "include_granted_scopes": "true"},
    )


def microsoft(
    client_id: str, client_secret: str, redirect_uris: frozenset[str], *, login_url: str, tenant: str
) -> ProviderClient:
    """Microsoft identity platform v2: `login_url` "https://login.microsoftonline.com", `tenant` "common"."""
    base = f"{login_url.rstrip('/')}/{tenant}/oauth2/v2.0"
    return ProviderClient(
        provider=Provider.MICROSOFT,
        client_id=client_id,
        client_secret=client_secret,
        redirect_uris=redirect_uris,
        authorize_url=f"{base}/authorize",
        token_url=f"{base}/token",
        revocation_url=None,
        capability_scopes=MICROSOFT_SCOPES,
        base_scopes=("openid", "email", "offline_access"),
        authorize_params={"response_mode": "query"},
    )
