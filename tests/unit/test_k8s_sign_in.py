"""Sign-in with Google and Microsoft as each overlay ships it.

The auth service runs with the environment its pod gets from the rendered overlay (its ConfigMaps), the
Secrets stood in for (client credentials, signing keys) and local OpenID providers in place of Google and
Microsoft. From a page at the overlay's public origin the web app asks to be sent back to `<origin>/`
(edge/web/src/signin.ts, `redirectUri()`): BeginLogin must accept that, and the provider's answer must come
back there and complete the login.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import grpc
import httpx
import pytest
import pytest_asyncio
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from conftest import StartService
from doubles.auth_store import MemoryAuthStore
from doubles.oidc_provider import FakeOidcProvider

from auth.app import AUTH, AuthDeps
from auth.keys import KeyDirectory, generate_key
from auth.settings import AuthSettings

# k8s/ is deployment tooling, not an installed package: import it from the checkout.
from k8s.manifests import Manifest, overlay

PUBLIC_ORIGINS = {
    "dev": "http://localhost:8080",  # `kubectl -n athena port-forward svc/edge 8080:8080`
    "prod": "https://athena.example.com",  # ADAPT in k8s/overlays/prod
}
"""Where people open the app of each overlay."""
TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"


def web_app_redirect_uri(origin: str) -> str:
    """What the web app sends as redirect URI from a page at `origin`: `${location.origin}/`."""
    return f"{origin}/"


def auth_environment(manifests: list[Manifest]) -> dict[str, str]:
    """The auth container's environment from its ConfigMaps and literal values (Secrets are not here)."""
    (deployment,) = [m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == "auth"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config_maps = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({variable["name"]: variable["value"] for variable in container["env"] if "value" in variable})
    return env


@pytest_asyncio.fixture(scope="module")
async def identity_providers() -> AsyncIterator[dict[str, FakeOidcProvider]]:
    """Google-like and Microsoft-like (multi-tenant) providers on loopback."""
    providers = {
        "google": FakeOidcProvider(client_id="google-client", client_secret="google-secret"),
        "microsoft": FakeOidcProvider(
            client_id="microsoft-client", client_secret="microsoft-secret", tenant=TENANT
        ),
    }
    for provider in providers.values():
        await provider.start()
    yield providers
    for provider in providers.values():
        await provider.stop()


def pod_environment(
    manifests: list[Manifest], providers: Mapping[str, FakeOidcProvider], tmp_path: Path
) -> dict[str, str]:
    """The auth pod's environment, with what it gets elsewhere stood in for: the Secret auth-oidc (client
    credentials; the local providers' discovery URLs in place of Google's and Microsoft's), the database
    URL (login states are kept in memory here), the mounted signing keys, and free ports."""
    keys = tmp_path / "auth-keys"
    KeyDirectory(keys).save(generate_key(datetime.now(UTC)))
    env = auth_environment(manifests)
    for name, provider in providers.items():
        prefix = f"AUTH_{name.upper()}__"
        env[prefix + "CLIENT_ID"] = provider.client_id
        env[prefix + "CLIENT_SECRET"] = provider.client_secret
        env[prefix + "DISCOVERY_URL"] = provider.discovery_url
    env.update(
        AUTH_DATABASE_URL="postgresql://athena@127.0.0.1:1/unused",
        AUTH_KEYS_DIR=str(keys),
        ATHENA_DATA_DIR=str(tmp_path),
        AUTH_PORT="0",
        AUTH_HTTP_PORT="0",
    )
    return env


@pytest.mark.parametrize("name", sorted(PUBLIC_ORIGINS))
async def test_sign_in_accepts_the_redirect_uri_the_web_app_sends(
    name: str,
    identity_providers: dict[str, FakeOidcProvider],
    start_service: StartService,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for key in list(os.environ):
        if key.startswith(("ATHENA_", "AUTH_")):
            monkeypatch.delenv(key)
    for key, value in pod_environment(overlay(name), identity_providers, tmp_path).items():
        monkeypatch.setenv(key, value)
    settings = AuthSettings()
    redirect_uri = web_app_redirect_uri(PUBLIC_ORIGINS[name])

    # Built as the pod builds it, but with login states kept in memory instead of PostgreSQL.
    server = await start_service(AUTH, settings, AuthDeps(store=MemoryAuthStore()))
    async with (
        httpx.AsyncClient() as browser,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        listed = await stub.ListProviders(auth_pb2.ListProvidersRequest())
        assert {"google", "microsoft"} <= {provider.id for provider in listed.providers}
        for provider in ("google", "microsoft"):
            try:
                begun = await stub.BeginLogin(
                    auth_pb2.BeginLoginRequest(provider=provider, redirect_uri=redirect_uri)
                )
            except grpc.aio.AioRpcError as error:
                pytest.fail(
                    f"{name}: {provider} BeginLogin({redirect_uri}): {error.code()} {error.details()}"
                )
            # The provider signs the person in and sends the browser back to the app.
            email = f"{provider}-{uuid.uuid4().hex[:8]}@example.com"
            answer = await browser.get(f"{begun.authorization_url}&{urlencode({'login_hint': email})}")
            assert answer.status_code == 302
            back = urlsplit(answer.headers["location"])
            assert f"{back.scheme}://{back.netloc}{back.path}" == redirect_uri
            query = parse_qs(back.query)
            assert query["state"] == [begun.state]
            completed = await stub.CompleteLogin(
                auth_pb2.CompleteLoginRequest(state=query["state"][0], code=query["code"][0])
            )
            assert completed.session.user.email == email
