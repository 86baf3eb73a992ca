"""The installable app in a real headless Chromium, through the real Envoy edge: the manifest Chromium
installs from, the service worker (activated, showing a pushed notification, the app shell offline), the
notification links, and the notifications bell and panel.

One mesh per module (`devstack.stack.Stack` on free ports, the offline model); a fresh browser context per
test. The bell and panel tests leave notifications through memory's NotifierService, as a proactive agent
does.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from browser_fixtures import CHROMIUM, CHROMIUM_ARGS, browser, playwright
from playwright.sync_api import (
    Browser,
    BrowserContext,
    CDPSession,
    Page,
    Playwright,
    expect,
)

from devstack.process import free_port
from devstack.stack import Ports, Stack, StackConfig

__all__ = ["browser", "playwright"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SHELL_FILES = (
    "/index.html",
    "/app.js",
    "/app.css",
    "/manifest.webmanifest",
    "/icon-192.png",
    "/icon-512.png",
    "/icon-maskable-512.png",
)

# The service worker's registration, once its worker is active (the page resolves `ready` then).
ACTIVE_WORKER = """() => navigator.serviceWorker.ready.then((registration) => ({
  state: registration.active && registration.active.state,
  scope: registration.scope,
  script: registration.active && registration.active.scriptURL,
}))"""

SHOWN_NOTIFICATIONS = """() => navigator.serviceWorker.ready
  .then((registration) => registration.getNotifications())
  .then((shown) => shown.map((n) => (
    {title: n.title, body: n.body, tag: n.tag, icon: n.icon, data: n.data})))"""

expect.set_options(timeout=10_000)


@pytest.fixture(scope="module")
def stack(web_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The mesh; after the web app is built (`web_dist`): Envoy serves the files there when it starts."""
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    running = Stack(
        StackConfig(data_dir=tmp_path_factory.mktemp("pwa-mesh"), ports=ports, offline_delay_ms=5)
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


@dataclass
class Tab:
    page: Page
    base_url: str
    errors: list[str] = field(default_factory=list)

    @property
    def context(self) -> BrowserContext:
        return self.page.context

    def sign_in(self) -> str:
        """Signs a new person in; answers their address."""
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        self.page.goto(self.base_url + "/")
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_role("button", name="Sign in (dev)").click()
        expect(self.page.get_by_role("radio", name="Athena", exact=True)).to_be_checked()
        return email

    def active_worker(self) -> dict[str, Any]:
        """The registration once its worker has activated and controls the page (`ready` resolves while
        it is still activating)."""
        for _ in range(200):
            worker: dict[str, Any] = self.page.evaluate(ACTIVE_WORKER)
            if worker["state"] == "activated" and self.page.evaluate(
                "navigator.serviceWorker.controller !== null"
            ):
                return worker
            self.page.wait_for_timeout(50)
        raise AssertionError(f"the service worker did not activate: {worker}")

    def cdp(self) -> CDPSession:
        return self.context.new_cdp_session(self.page)


@pytest.fixture
def tab(stack: Stack, browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 800}, locale="en-GB", timezone_id="Europe/Berlin"
    )
    context.grant_permissions(["notifications"], origin=stack.edge_url)
    page = context.new_page()
    opened = Tab(page, stack.edge_url)
    page.on(
        "console", lambda message: opened.errors.append(message.text) if message.type == "error" else None
    )
    page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
    yield opened
    context.close()


def test_the_edge_serves_the_manifest_icons_and_worker_with_their_types(stack: Stack) -> None:
    expected = {
        "/manifest.webmanifest": "application/manifest+json",
        "/sw.js": "text/javascript; charset=utf-8",
        "/icon-192.png": "image/png",
        "/icon-512.png": "image/png",
        "/icon-maskable-512.png": "image/png",
    }
    for path, content_type in expected.items():
        answer = httpx.get(stack.edge_url + path, timeout=10)
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == content_type, path
        # A new build reaches every browser: the worker, and what it precaches, are revalidated.
        assert answer.headers["cache-control"] == "no-cache", path
    manifest = httpx.get(stack.edge_url + "/manifest.webmanifest", timeout=10).json()
    assert (manifest["start_url"], manifest["scope"], manifest["display"]) == ("/", "/", "standalone")
    assert {icon["purpose"] for icon in manifest["icons"]} == {"any", "maskable"}
    for icon in manifest["icons"]:
        png = httpx.get(stack.edge_url + icon["src"], timeout=10).content
        width = int.from_bytes(png[16:20], "big")
        assert png[:8] == b"\x89PNG\r\n\x1a\n", icon
        assert icon["sizes"] == f"{width}x{width}", icon


def test_chromium_finds_the_app_installable(stack: Stack, playwright: Playwright, tmp_path: Path) -> None:
    # A profile on disk: Chromium installs nothing from an incognito context (Playwright's usual ones).
    context = playwright.chromium.launch_persistent_context(
        tmp_path / "profile", executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
    )
    try:
        tab = Tab(context.pages[0] if context.pages else context.new_page(), stack.edge_url)
        tab.page.on(
            "console", lambda message: tab.errors.append(message.text) if message.type == "error" else None
        )
        check_installable(tab)
    finally:
        context.close()


def check_installable(tab: Tab) -> None:
    tab.page.goto(tab.base_url + "/")
    assert tab.active_worker()["state"] == "activated"
    cdp = tab.cdp()
    manifest = cdp.send("Page.getAppManifest")
    assert manifest["url"] == tab.base_url + "/manifest.webmanifest"
    assert manifest["errors"] == [], manifest["errors"]
    assert json.loads(manifest["data"])["name"] == "AthenaOS"
    errors = cdp.send("Page.getInstallabilityErrors")["installabilityErrors"]
    assert errors == [], errors
    assert tab.errors == []


def test_the_service_worker_is_active_and_controls_the_app(tab: Tab) -> None:
    tab.page.goto(tab.base_url + "/")
    worker = tab.active_worker()
    assert worker == {"state": "activated", "scope": tab.base_url + "/", "script": tab.base_url + "/sw.js"}
    cached = tab.page.evaluate(
        """() => caches.keys().then(async (names) => {
          const shell = names.filter((name) => name.startsWith('athena-shell-'));
          const cache = await caches.open(shell[0]);
          const keys = await cache.keys();
          return {names: shell, files: keys.map((request) => new URL(request.url).pathname)};
        })"""
    )
    assert len(cached["names"]) == 1, cached
    assert sorted(cached["files"]) == sorted(SHELL_FILES)
    assert tab.errors == []


def shown_notifications(tab: Tab, count: int, within: float = 20.0) -> list[dict[str, Any]]:
    """The notifications the service worker shows, once there are `count` of them (or `within` seconds
    passed: a loaded CI machine may take seconds to run the worker's push handler)."""
    deadline = time.monotonic() + within
    shown: list[dict[str, Any]] = tab.page.evaluate(SHOWN_NOTIFICATIONS)
    while len(shown) < count and time.monotonic() < deadline:
        tab.page.wait_for_timeout(50)
        shown = tab.page.evaluate(SHOWN_NOTIFICATIONS)
    return shown


def test_a_pushed_message_is_shown_as_a_notification(tab: Tab) -> None:
    tab.page.goto(tab.base_url + "/")
    tab.active_worker()
    cdp = tab.cdp()
    registrations: list[dict[str, Any]] = []
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated", lambda event: registrations.extend(event["registrations"])
    )
    cdp.send("ServiceWorker.enable")
    for _ in range(100):
        if any(r["scopeURL"] == tab.base_url + "/" and not r["isDeleted"] for r in registrations):
            break
        tab.page.wait_for_timeout(50)
    (registration,) = [r for r in registrations if r["scopeURL"] == tab.base_url + "/" and not r["isDeleted"]]
    notification_id = str(uuid.uuid4())
    payload = {
        "title": "Your 14:00 meeting moved into your focus block",
        "body": "Shall I move the focus block to 16:00?",
        "link": f"/?agent=athena&conversation={uuid.uuid4()}",
        "id": notification_id,
        "agent_id": "athena",
    }
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {
            "origin": tab.base_url,
            "registrationId": registration["registrationId"],
            "data": json.dumps(payload),
        },
    )
    shown = shown_notifications(tab, 1)
    assert shown == [
        {
            "title": payload["title"],
            "body": payload["body"],
            "tag": notification_id,
            "icon": tab.base_url + "/icon-192.png",
            "data": {"link": payload["link"], "id": notification_id, "agentId": "athena"},
        }
    ]

    # A link to another site is never opened: the notification opens the app instead.
    hostile = {**payload, "id": str(uuid.uuid4()), "link": "//evil.example/phish"}
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {
            "origin": tab.base_url,
            "registrationId": registration["registrationId"],
            "data": json.dumps(hostile),
        },
    )
    shown = shown_notifications(tab, 2)
    assert {n["tag"]: n["data"]["link"] for n in shown}[hostile["id"]] == "/"
    assert tab.errors == []


def test_a_notification_link_opens_its_conversation(tab: Tab) -> None:
    """What a clicked notification opens in a new window: "/?agent=<id>&conversation=<id>"."""
    page = tab.page
    tab.sign_in()
    page.get_by_role("radio", name="Nutrition coach").check()
    box = page.get_by_label("Message", exact=True)
    box.fill("Remember that I like oranges")
    box.press("Enter")
    expect(page.locator(".message.assistant").last).to_have_class(re.compile(r"\bcomplete\b"))
    expect(page).to_have_url(re.compile(r"#c=[\w-]+$"))
    conversation = page.url.rsplit("#c=", 1)[1]

    page.goto(tab.base_url + "/")  # a new conversation, with Athena
    expect(page.get_by_role("radio", name="Athena", exact=True)).to_be_checked()
    page.goto(f"{tab.base_url}/?agent=nutrition&conversation={conversation}")
    expect(page.locator(".message.user").first).to_contain_text("I like oranges")
    expect(page.get_by_role("radio", name="Nutrition coach")).to_be_checked()
    assert page.url == f"{tab.base_url}/#c={conversation}"  # the query is gone, the fragment holds it
    assert tab.errors == []


def test_the_app_shell_loads_offline(tab: Tab) -> None:
    page = tab.page
    page.goto(tab.base_url + "/")
    tab.active_worker()
    tab.context.set_offline(True)
    try:
        # The worker itself cannot reach the edge either...
        (worker,) = tab.context.service_workers
        reached = worker.evaluate(
            "fetch('/index.html', {cache: 'no-store'}).then((r) => r.status, (e) => String(e))"
        )
        assert reached == "TypeError: Failed to fetch", reached
        page.reload()
        # ...so the shell came from its cache: the page, its script (sign-in renders) and its stylesheet.
        expect(page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_visible()
        expect(page.locator("#signin-view")).to_have_css("display", "flex")
    finally:
        tab.context.set_offline(False)


def notify(stack: Stack, email: str) -> None:
    """What a proactive agent does: NotifierService.Notify (memory, the service key) for `email`'s account."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.config.ports.edge}") as edge:
        token = auth_pb2_grpc.AuthServiceStub(edge).DevLogin(auth_pb2.DevLoginRequest(email=email)).session
    user_id = jwt_claims(token.access_token)["sub"]
    service_key = (stack.data_dir / "service.key").read_text().strip()
    with grpc.insecure_channel(f"127.0.0.1:{stack.config.ports.memory}") as memory:
        notifications_pb2_grpc.NotifierServiceStub(memory).Notify(
            notifications_pb2.NotifyRequest(
                user_id=user_id,
                agent_id="focus",
                title="“1:1” overlaps your focus time",
                body="Shall we move it?",
                kind="meeting_overlaps_focus",
                dedupe_key=f"test:{uuid.uuid4()}",
            ),
            metadata=(("x-athena-service-key", service_key),),
            timeout=10,
        )


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_the_bell_counts_unread_notifications_and_the_panel_opens_one(tab: Tab, stack: Stack) -> None:
    page = tab.page
    email = tab.sign_in()
    bell = page.get_by_role("button", name=re.compile(r"^Notifications"))
    expect(bell).to_be_visible()
    expect(bell).to_have_accessible_name("Notifications")
    notify(stack, email)  # the open tab's stream brings it
    expect(bell).to_have_accessible_name("Notifications, 1 unread")
    bell.click()
    panel = page.get_by_role("dialog", name="Notifications")
    item = panel.locator(".notification[data-unread=true]")
    expect(item).to_have_count(1)
    item.get_by_role("button").click()
    expect(panel).to_be_hidden()
    expect(bell).to_have_accessible_name("Notifications")


def test_mark_all_read_and_settings_are_kept(tab: Tab, stack: Stack) -> None:
    page = tab.page
    email = tab.sign_in()
    notify(stack, email)
    expect(page.get_by_role("button", name=re.compile(r"^Notifications"))).to_have_accessible_name(
        "Notifications, 1 unread"
    )
    page.get_by_role("button", name=re.compile(r"^Notifications")).click()
    panel = page.get_by_role("dialog", name="Notifications")
    panel.get_by_role("checkbox", name="Nutrition coach").check()
    panel.get_by_role("checkbox", name=re.compile("No push between")).check()
    panel.get_by_label("From", exact=True).fill("22:30")
    panel.get_by_label("to", exact=True).fill("06:45")
    expect(panel.get_by_label("Time zone")).to_have_value("Europe/Berlin")
    panel.get_by_role("button", name="Save settings").click()
    expect(panel.get_by_text("Saved.")).to_be_visible()
    page.reload()
    page.get_by_role("button", name=re.compile(r"^Notifications")).click()
    expect(panel.get_by_role("checkbox", name="Nutrition coach")).to_be_checked()
    expect(panel.get_by_label("From", exact=True)).to_have_value("22:30")
    panel.get_by_role("button", name="Mark all read").click()
    expect(page.get_by_role("button", name=re.compile(r"^Notifications"))).to_have_accessible_name(
        "Notifications"
    )
