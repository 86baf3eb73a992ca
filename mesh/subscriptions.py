"""What the webhooks service checks a provider's notification against: the subscriptions the integrations
service made, kept in Redis so that verification is one lookup and never a call to another service.

One hash per subscription, `athena:subscriptions:<provider>:<subscription id>`, written by integrations when
it creates or renews a subscription (Microsoft Graph subscription, Google Calendar/Drive watch channel,
Google Health subscriber) and deleted when it stops one; it expires with the subscription (plus a grace
period, for notifications in flight). The secret the provider echoes back (Graph `clientState`, Google's
`X-Goog-Channel-Token`) is kept only as its SHA-256, and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mesh.redis import Redis

PREFIX = "athena:subscriptions:"
GRACE = timedelta(hours=1)
"""How long past its expiry a subscription still verifies (notifications sent just before it ended)."""


def _key(provider: str, subscription_id: str) -> str:
    return f"{PREFIX}{provider}:{subscription_id}"


def health_subscription_id(health_user_id: str) -> str:
    """The subscription id a Google Health notification is looked up by: the Health API names a person by
    their `healthUserId` (`users/{healthUserId}`), and one subscriber serves every person, so integrations
    registers one subscription per connected person under this id (provider "google", kind "health")."""
    return f"health:{health_user_id}"


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Subscription:
    provider: str
    """"google" or "microsoft"."""
    subscription_id: str
    """Graph's subscription id; Google's channel id (`X-Goog-Channel-ID`)."""
    user_id: str
    kind: str
    """What it watches: "calendar", "files" or "health" (`athena.events.v1.ProviderEvent.Kind` without
    the prefix, lower case)."""
    resource: str
    """The provider's resource: a Graph resource path, Google's resource id (`X-Goog-Resource-ID`)."""
    expires_at: datetime
    secret_sha256: str

    def verifies(self, secret: str) -> bool:
        """Whether `secret` (what the notification carried) is this subscription's, in constant time."""
        return hmac.compare_digest(secret_digest(secret), self.secret_sha256)


class SubscriptionRegistry:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def register(
        self,
        provider: str,
        subscription_id: str,
        *,
        user_id: str,
        kind: str,
        resource: str,
        secret: str,
        expires_at: datetime,
    ) -> Subscription:
        subscription = Subscription(
            provider, subscription_id, user_id, kind, resource, expires_at, secret_digest(secret)
        )
        key = _key(provider, subscription_id)
        ttl = max(int((expires_at + GRACE - datetime.now(UTC)).total_seconds()), 1)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "user_id": user_id,
                    "kind": kind,
                    "resource": resource,
                    "expires_at": expires_at.isoformat(),
                    "secret_sha256": subscription.secret_sha256,
                },
            )
            pipe.expire(key, ttl)
            await pipe.execute()
        return subscription

    async def lookup(self, provider: str, subscription_id: str) -> Subscription | None:
        raw = await self._redis.hgetall(_key(provider, subscription_id))
        found = {str(name): str(value) for name, value in raw.items()}  # the client decodes responses
        if not found:
            return None
        return Subscription(
            provider,
            subscription_id,
            found["user_id"],
            found["kind"],
            found["resource"],
            datetime.fromisoformat(found["expires_at"]),
            found["secret_sha256"],
        )

    async def remove(self, provider: str, subscription_id: str) -> bool:
        return bool(await self._redis.delete(_key(provider, subscription_id)))
