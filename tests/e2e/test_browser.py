"""The web app in a real headless Chromium, through the real Envoy edge, against the whole mesh.

One mesh per module (`devstack.stack.Stack` on free ports, offline model streaming a word every 20 ms,
access tokens living 15 s so that silent refresh happens during the run, the Google and Microsoft
emulators as `ATHENA_PROVIDER_EMULATORS=1 make run` starts them, approving every consent at once); a fresh
browser context (British English, UTC) and a new dev user per test. Every page must log no console error
(a Content-Security-Policy violation is one). The last test stops the mesh.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from athena.auth.v1 import auth_pb2
from athena.uploads.v1 import uploads_pb2
from browser_fixtures import browser, playwright
from grpcweb import frame
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Route,
    expect,
)

from auth.receipts import verify_receipt
from devstack.process import free_port
from devstack.stack import Ports, Stack, StackConfig

__all__ = ["browser", "playwright"]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "screenshot-chat.png"
"""Refreshed by `ATHENA_UPDATE_SCREENSHOT=1 make test`; other runs leave the working tree untouched."""
ACCESS_TOKEN_TTL_SECONDS = 15
REFRESH_PATH = "/athena.auth.v1.AuthService/RefreshSession"
LOGOUT_PATH = "/athena.auth.v1.AuthService/Logout"
DEV_LOGIN_PATH = "/athena.auth.v1.AuthService/DevLogin"
REFRESH_COOKIE = "__Secure-athena-refresh"
REFRESH_COOKIE_PATH = "/athena.auth.v1.AuthService/"
CHAT_PATH = "/athena.chat.v1.ChatService/Chat"
LIST_AGENTS_PATH = "/athena.chat.v1.ChatService/ListAgents"
LIST_CONVERSATIONS_PATH = "/athena.chat.v1.ChatService/ListConversations"
TRACEPARENT = re.compile(r"^00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-01$")
COMPLETE_CONNECTION_PATH = "/athena.connections.v1.ConnectionsService/CompleteConnection"
CREATE_UPLOAD_PATH = "/athena.uploads.v1.UploadsService/CreateUpload"
APPEND_CHUNK_PATH = "/athena.uploads.v1.UploadsService/AppendChunk"
UNREACHABLE = "Can't reach AthenaOS — check your connection"
# app.css: --accent-green and --accent-violet (light scheme, Chromium's default).
NUTRITION_GREEN = "rgb(21, 128, 61)"
ATHENA_VIOLET = "rgb(124, 58, 237)"

# Records each length the last answer's text takes, with the time: proof that deltas reach the DOM as
# they arrive rather than all at once.
RECORD_ANSWER_STEPS = """() => {
  window.answerSteps = [];
  const record = () => {
    const answer = [...document.querySelectorAll('.message.assistant')].pop();
    const parts = answer ? [...answer.querySelectorAll('.content')] : [];
    const length = parts.map((part) => part.textContent).join('').length;
    const last = window.answerSteps.at(-1);
    if (length && (!last || last.length !== length)) {
      window.answerSteps.push({length, at: performance.now()});
    }
  };
  const options = {subtree: true, childList: true, characterData: true};
  new MutationObserver(record).observe(document.getElementById('messages'), options);
}"""

# Everything a script in the page can read without asking a server.
READ_PAGE_STORAGE = """() => JSON.stringify({
  local: Object.fromEntries(Object.entries(localStorage)),
  session: Object.fromEntries(Object.entries(sessionStorage)),
  cookie: document.cookie,
})"""

# Installed before any script of the page: keeps each Content-Security-Policy violation.
RECORD_CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener('securitypolicyviolation', (event) => {
  window.cspViolations.push({directive: event.effectiveDirective, blocked: event.blockedURI});
});
"""

# Markup an attacker got into the page (a stored or reflected injection): an inline script, an inline
# event handler and an inline style. The page's policy must stop all three.
INJECTED_MARKUP = """
<script>window.injectedScriptRan = true;</script>
<img id="injected-image" src="data:," onerror="window.injectedHandlerRan = true">
<style>#signin-view { outline: 7px solid red; }</style>
"""

expect.set_options(timeout=10_000)


@pytest.fixture(scope="module")
def stack(web_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The mesh; after the web app is built (`web_dist`), since Envoy serves the files that exist when its
    configuration is rendered."""
    ports = Ports(**{f.name: free_port() for f in fields(Ports)})
    config = StackConfig(
        data_dir=tmp_path_factory.mktemp("browser-mesh"),
        ports=ports,
        offline_delay_ms=20,
        extra_env={"AUTH_ACCESS_TOKEN_TTL": str(ACCESS_TOKEN_TTL_SECONDS)},
        provider_emulators=True,
    )
    running = Stack(config)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@dataclass
class Tab:
    """A page of a fresh browser context, with everything it logged and requested."""

    page: Page
    base_url: str
    errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def grpc_calls(self, path: str) -> list[Request]:
        return [request for request in self.requests if request.url.endswith(path)]

    def sign_in(self, email: str | None = None) -> str:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        self.page.goto(self.base_url + "/")
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_role("button", name="Sign in (dev)").click()
        expect(self.page.get_by_role("radio", name="Athena", exact=True)).to_be_checked()
        return email

    def send(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        box.fill(text)
        box.press("Enter")

    def last_answer(self) -> str:
        answer = self.page.locator(".message.assistant").last
        expect(answer).to_have_class(re.compile(r"\bcomplete\b"))
        return answer.locator(".content").all_inner_texts()[-1]


@pytest.fixture
def tab(stack: Stack, browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(
        accept_downloads=True,
        # The app's service worker (tests/e2e/test_pwa.py tests it) would serve the page past page.route.
        service_workers="block",
        viewport={"width": 1280, "height": 800},
        # Times on the page (busy blocks) read the same on every machine.
        locale="en-GB",
        timezone_id="UTC",
    )
    page = context.new_page()
    opened = Tab(page, stack.edge_url)
    page.on("console", lambda message: _record_console_error(opened, message))
    page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
    page.on("request", lambda request: opened.requests.append(request))
    yield opened
    context.close()


def _record_console_error(tab: Tab, message: ConsoleMessage) -> None:
    if message.type == "error":
        tab.errors.append(message.text)


def open_tab(tab: Tab) -> Tab:
    """Another page of the same browser context (the same cookies, another tab's memory)."""
    page = tab.page.context.new_page()
    opened = Tab(page, tab.base_url)
    page.on("console", lambda message: _record_console_error(opened, message))
    page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
    page.on("request", lambda request: opened.requests.append(request))
    return opened


def refresh_cookie(page: Page) -> dict[str, Any] | None:
    """The browser's refresh-token cookie, as the browser holds it (page scripts cannot see it)."""
    found = [dict(cookie) for cookie in page.context.cookies() if cookie["name"] == REFRESH_COOKIE]
    assert len(found) <= 1, found
    return found[0] if found else None


def bearer_token(request: Request) -> str:
    header = request.header_value("authorization")
    assert header is not None
    assert header.startswith("Bearer "), header
    return header.removeprefix("Bearer ")


def token_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def grpc_web_message(body: bytes) -> bytes:
    """The first message of a gRPC-web response body."""
    assert body[:1] == b"\x00", body[:16]
    (length,) = struct.unpack(">I", body[1:5])
    return body[5 : 5 + length]


def route_next_call(page: Page, path: str, handler: Callable[[Route], None]) -> None:
    """Hands the next call to `path` to `handler`; later calls go on as they are.

    Not `page.route(..., times=1)`: once such a route is spent, Playwright switches Chromium's request
    interception off (`Fetch.disable`), and a request the app starts in that instant (the refresh right
    after a refused call) is paused by the interception but never let go: Chromium's net log shows it stop
    after its CORS check, unsent, and the app waits on it for good. This route stays for the page's life,
    so interception is never switched off under the app."""
    handled = False

    def once(route: Route) -> None:
        nonlocal handled
        if handled:
            route.fallback()
            return
        handled = True
        handler(route)

    page.route(f"**{path}", once)


def refuse_next_call(page: Page, path: str) -> None:
    """The next call to `path` reaches the edge with an access token it refuses (UNAUTHENTICATED), as
    when a token is revoked or signed with a retired key."""

    def swap(route: Route) -> None:
        route.continue_(headers={**route.request.headers, "authorization": "Bearer not-a-token"})

    route_next_call(page, path, swap)


@contextmanager
def serve_page(html: str) -> Iterator[str]:
    """Serves `html` at `/` of a server of its own on loopback; yields its URL, on `localhost`."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def end_session_elsewhere(base_url: str, refresh_token: str) -> None:
    """Logout with the refresh token in the message, as a service client would: the session the browser's
    cookie belongs to ends while the browser still holds the cookie."""
    request = auth_pb2.LogoutRequest(refresh_token=refresh_token)
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    answer = httpx.post(base_url + LOGOUT_PATH, content=frame(request), headers=headers, timeout=10)
    assert answer.status_code == 200
    assert b"grpc-status:0" in answer.content.replace(b" ", b""), answer.content


def test_sign_in_pick_agent_and_watch_the_answer_stream(tab: Tab) -> None:
    page = tab.page
    tab.sign_in()
    accent = page.locator("#agent-accent")
    expect(accent).to_have_css("background-color", ATHENA_VIOLET)

    page.get_by_role("radio", name="Nutrition coach").check()
    expect(accent).to_have_css("background-color", NUTRITION_GREEN)
    page.evaluate(RECORD_ANSWER_STEPS)
    tab.send("What do you know about me?")

    assert tab.last_answer() == "I don't know that yet."
    expect(page.locator(".message.assistant").last.locator(".author")).to_have_text("Nutrition coach")
    expect(page.get_by_text("offline model", exact=True)).to_be_visible()
    steps: list[dict[str, float]] = page.evaluate("window.answerSteps")
    lengths = [step["length"] for step in steps]
    # The first word comes alone, the rest as the model writes it (merged a few words at a time).
    assert len(lengths) >= 2, f"the answer appeared in {len(lengths)} steps: {lengths}"
    assert lengths == sorted(lengths), lengths
    assert steps[-1]["at"] - steps[0]["at"] >= 40, f"the answer arrived all at once: {steps}"
    assert tab.errors == []


def test_each_chat_turn_starts_a_trace_of_its_own(tab: Tab) -> None:
    """Each turn's Chat call carries a W3C traceparent (sampled) naming a new trace; the conversation list
    refreshed after the turn is in the same trace, under a parent id of its own."""
    tab.sign_in()
    turns = []
    for text in ("What do you know about me?", "And now?"):
        with (
            tab.page.expect_request(f"**{CHAT_PATH}") as chatting,
            # The refresh after the turn (not the one that opening the page may still be making).
            tab.page.expect_request(
                lambda request: (
                    request.url.endswith(LIST_CONVERSATIONS_PATH) and "traceparent" in request.headers
                )
            ) as listing,
        ):
            tab.send(text)
            tab.last_answer()
        chat = TRACEPARENT.match(chatting.value.all_headers().get("traceparent", ""))
        listed = TRACEPARENT.match(listing.value.all_headers().get("traceparent", ""))
        assert chat is not None
        assert listed is not None
        assert listed.group(1) == chat.group(1)
        assert listed.group(2) != chat.group(2)
        turns.append(chat.group(1))
    assert turns[0] != turns[1]
    assert tab.errors == []


def test_a_message_sent_while_the_agents_load_is_answered(tab: Tab) -> None:
    """Someone types and presses Enter the moment the message box appears after sign-in, before the app
    knows the agents: the message must still go out and be answered, not vanish."""
    page = tab.page
    held: list[Route] = []
    holding = True

    def hold(route: Route) -> None:
        if holding:
            held.append(route)
        else:
            route.fallback()

    # ListAgents is held until the message has been sent, so the race is the same on every run.
    page.route(f"**{LIST_AGENTS_PATH}", hold)
    page.goto(tab.base_url + "/")
    page.get_by_label("Email").fill(f"user-{uuid.uuid4().hex[:10]}@example.com")
    page.get_by_role("button", name="Sign in (dev)").click()
    box = page.get_by_label("Message", exact=True)
    expect(box).to_be_visible()
    box.fill("What do you know about me?")
    box.press("Enter")
    for _ in range(500):
        if held:
            break
        page.wait_for_timeout(10)  # lets Playwright deliver the intercepted request
    assert held, "the app never asked for the agents"
    loading_shown = page.get_by_role("status").filter(has_text="Loading agents…").is_visible()
    busy = page.locator("#agent-options").get_attribute("aria-busy")
    # Released, not unrouted: turning interception off could strand the chat the app sends right after
    # (see route_next_call).
    holding = False
    for route in held:
        route.continue_()

    expect(page.locator(".message.user .content")).to_have_text(["What do you know about me?"])
    assert tab.last_answer() == "I don't know that yet."
    expect(page.locator(".message.assistant").last.locator(".author")).to_have_text("Athena")
    expect(box).to_have_value("")
    assert loading_shown, "nothing said that the agents were loading"
    assert busy == "true"
    expect(page.get_by_role("status").filter(has_text="Loading agents…")).to_have_count(0)
    expect(page.locator("#agent-options")).to_have_attribute("aria-busy", "false")
    assert tab.errors == []


def test_remembering_shows_the_tool_call_and_reload_restores_the_conversation(
    tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    tab.sign_in("ada@example.com")  # the name the README's screenshot shows
    page.get_by_role("radio", name="Nutrition coach").check()
    # The box takes what the contract allows (ChatRequest.text), read from the generated descriptors.
    expect(page.get_by_label("Message", exact=True)).to_have_attribute("maxlength", "32000")
    tab.send("remember my caloric goal is 2000 kcal")
    # The title is the one memory gave the conversation.
    expect(page.locator("#conversation-title")).to_have_text("remember my caloric goal is 2000 kcal")
    tool = page.locator(".tool-call[data-tool=remember_memory]")
    expect(tool).to_have_text(re.compile("remember_memory"))
    assert tab.last_answer() == "Got it — I'll remember that my caloric goal is 2000 kcal."
    expect(tool).to_contain_text("Used remember_memory")

    tab.send("What is my caloric goal?")
    assert tab.last_answer() == "Here is what I know: my caloric goal is 2000 kcal"
    screenshot = SCREENSHOT if os.environ.get("ATHENA_UPDATE_SCREENSHOT") else tmp_path / SCREENSHOT.name
    page.screenshot(path=screenshot)
    assert screenshot.stat().st_size > 10_000

    conversation = re.search(r"#c=([\w-]+)$", page.url)
    assert conversation, page.url
    page.reload()
    messages = page.locator("#messages .message")
    expect(messages).to_have_count(4)
    expect(messages.nth(0)).to_contain_text("remember my caloric goal is 2000 kcal")
    expect(messages.nth(3)).to_contain_text("Here is what I know: my caloric goal is 2000 kcal")
    expect(page.locator(".tool-call[data-tool=remember_memory]")).to_contain_text("Used remember_memory")
    current = page.locator(f'#conversation-list button[data-id="{conversation[1]}"]')
    expect(current).to_have_attribute("aria-current", "page")
    expect(page.get_by_role("radio", name="Nutrition coach")).to_be_checked()

    page.get_by_role("button", name="New conversation").click()
    expect(messages).to_have_count(0)
    current.click()
    expect(messages).to_have_count(4)
    assert tab.errors == []


def test_phone_layout_and_keyboard(tab: Tab) -> None:
    page = tab.page
    page.set_viewport_size({"width": 390, "height": 844})
    tab.sign_in()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "scrolls sideways"
    box = page.get_by_label("Message", exact=True)
    expect(box).to_be_in_viewport()
    expect(page.get_by_role("button", name="Send")).to_be_in_viewport()

    box.press_sequentially("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("first line\nsecond line")
    box.press("Enter")
    expect(page.locator(".message.user .content").last).to_have_text("first line\nsecond line")
    tab.last_answer()

    history = page.get_by_role("button", name="Conversations")
    expect(page.locator("#conversation-list")).to_be_hidden()
    history.click()
    expect(history).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#conversation-list button").first).to_be_visible()
    menu = page.get_by_role("button", name="Menu")
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    menu.click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert tab.errors == []


def test_handoff_then_memory_panel_lists_and_forgets_what_agents_remember(tab: Tab) -> None:
    page = tab.page
    tab.sign_in()
    tab.send("remember I prefer 90 minute focus blocks")
    tab.last_answer()
    tab.send("ask focus how long are my focus blocks?")
    assert tab.last_answer() == "Here is what I know: I prefer 90 minute focus blocks"
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".handoff")).to_have_text(
        "→ Athena handed off to Focus coach: how long are my focus blocks?"
    )
    expect(answer.locator(".author")).to_have_text("Focus coach")
    expect(page.get_by_role("radio", name="Focus coach")).to_be_checked()
    # Stored typed (ToolCallRecord.handoff): after a reload the handoff still shows, not a tool named
    # handoff_to_focus.
    page.reload()
    stored = page.locator(".message.assistant").last
    expect(stored.locator(".handoff")).to_have_text("→ Handed off to Focus coach")
    expect(stored.locator(".tool-call")).to_have_count(0)

    page.get_by_role("button", name="What my agents remember").click()
    dialog = page.get_by_role("dialog", name="What my agents remember")
    memory = dialog.locator(".memory", has_text="I prefer 90 minute focus blocks")
    expect(memory).to_have_count(1)
    dialog.get_by_role("button", name="Forget “I prefer 90 minute focus blocks”").click()
    expect(memory).to_have_count(0)
    expect(dialog.get_by_role("status")).to_have_text("Forgotten: “I prefer 90 minute focus blocks”")
    dialog.get_by_role("button", name="Close").click()

    page.get_by_role("button", name="What my agents remember").click()
    expect(dialog.get_by_role("status")).to_have_text("Your agents don't remember anything about you yet.")
    expect(dialog.locator(".memory")).to_have_count(0)
    assert tab.errors == []


def test_an_inferred_fact_shows_its_origin_and_a_correction_supersedes_it_in_its_history(tab: Tab) -> None:
    """Issue 17: what an agent learnt in passing is listed with where it came from; the person corrects it
    and sees the history (the learnt version closed, theirs current)."""
    page = tab.page
    tab.sign_in()
    tab.send("Any dinner ideas for tonight? I'm vegetarian, by the way.")
    tab.last_answer()
    open_panel = page.get_by_role("button", name="What my agents remember")
    dialog = page.get_by_role("dialog", name="What my agents remember")
    learnt = dialog.locator(".memory[data-source=inferred]", has_text="The user is vegetarian.")
    # Learnt in the background after the turn: the panel is opened again until it is there (deadline).
    deadline = time.monotonic() + 30
    while True:
        open_panel.click()
        expect(dialog.get_by_role("status")).not_to_have_text("Loading…")
        if learnt.count() == 1:
            break
        assert time.monotonic() < deadline, "the fact was not learnt within 30 s"
        dialog.get_by_role("button", name="Close").click()
        page.wait_for_timeout(200)
    expect(learnt.locator(".origin")).to_contain_text("Learnt from what you told Athena")
    expect(learnt.get_by_role("link", name="open the conversation")).to_have_attribute(
        "href", re.compile(r"^/\?agent=athena&conversation=[0-9a-f-]{36}$")
    )

    learnt.get_by_role("button", name="Correct “The user is vegetarian.”").click()
    learnt.get_by_role("textbox", name="Corrected memory").fill("The user is vegan.")
    learnt.get_by_role("button", name="Save correction").click()
    expect(dialog.get_by_role("status")).to_have_text("Corrected: “The user is vegan.”")
    corrected = dialog.locator(".memory[data-source=explicit]", has_text="The user is vegan.")
    expect(corrected.locator(".origin")).to_have_text("Saved by Athena")
    expect(dialog.locator(".memory", has_text="The user is vegetarian.")).to_have_count(0)

    corrected.get_by_role("button", name="History of “The user is vegan.”").click()
    history = corrected.get_by_role("list", name="History of “The user is vegan.”")
    versions = history.locator("li")
    expect(versions).to_have_count(2)
    expect(versions.nth(0)).to_contain_text("The user is vegan.")
    expect(versions.nth(0)).to_contain_text("current, since")
    expect(versions.nth(1)).to_contain_text("The user is vegetarian.")
    expect(versions.nth(1)).to_contain_text(re.compile(r"from .+ until .+ \(learnt\)"))

    # Learning from conversations can be turned off, and stays off.
    learn = dialog.get_by_role("checkbox", name="Learn from what I mention in passing")
    expect(learn).to_be_checked()
    learn.uncheck()
    expect(dialog.get_by_role("status")).to_have_text(
        "Your agents no longer learn from what you mention in passing."
    )
    dialog.get_by_role("button", name="Close").click()
    open_panel.click()
    expect(learn).to_be_enabled()
    expect(learn).not_to_be_checked()
    assert tab.errors == []


def test_export_downloads_everything_as_json(tab: Tab, tmp_path: Path) -> None:
    page = tab.page
    email = tab.sign_in()
    tab.send("remember my cat is called Ada")
    tab.last_answer()

    with page.expect_download(timeout=10_000) as download_info:
        page.get_by_role("button", name="Export my data").click()
    download = download_info.value
    assert download.suggested_filename == "athena-export.json"
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    exported = json.loads(path.read_text(encoding="utf-8"))
    text = json.dumps(exported, ensure_ascii=False)
    assert email in text
    assert "remember my cat is called Ada" in text
    assert "Got it — I'll remember that my cat is called Ada." in text
    assert tab.errors == []


def test_account_deletion_asks_for_confirmation_shows_the_receipt_then_returns_to_sign_in(
    tab: Tab, stack: Stack, tmp_path: Path
) -> None:
    page = tab.page
    email = tab.sign_in()
    user_id = token_claims(bearer_token(tab.grpc_calls(LIST_AGENTS_PATH)[0]))["sub"]
    tab.send("remember my dentist is on Friday")
    tab.last_answer()

    page.get_by_role("button", name="Delete account").click()
    dialog = page.get_by_role("dialog", name="Delete your account?")
    confirm = dialog.get_by_role("button", name="Delete my account")
    expect(confirm).to_be_disabled()
    dialog.get_by_label("Type “delete” to confirm").fill("delete")
    # The browser keeps nothing of the deleted account: Logout clears the refresh-token cookie.
    with page.expect_response(lambda response: response.url.endswith(LOGOUT_PATH), timeout=10_000):
        confirm.click()

    # What was erased, and the signed receipt of it to keep.
    receipt = page.get_by_role("dialog", name="Your account was deleted")
    expect(receipt).to_be_visible()
    expect(receipt.locator('dd[data-category="account"]')).to_have_text("1")
    expect(receipt.locator('dd[data-category="sessions"]')).to_have_text("1")
    expect(receipt.locator('dd[data-category="memory_rows"]')).not_to_have_text("0")
    expect(receipt.get_by_text("Conversations, messages and memories (database rows)")).to_be_visible()
    with page.expect_download(timeout=10_000) as download_info:
        receipt.get_by_role("link", name="Download the receipt").click()
    download = download_info.value
    assert download.suggested_filename == "athena-erasure-receipt.jwt"
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    jwks = httpx.get(f"http://127.0.0.1:{stack.config.ports.auth_http}/.well-known/jwks.json", timeout=10)
    verified = verify_receipt(path.read_text(encoding="ascii"), jwks.json(), issuer="athenaos")
    assert verified.user_id == user_id
    assert verified.erased["account"] == 1
    receipt.get_by_role("button", name="Close").click()

    expect(page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Your account was deleted.")).to_be_visible()
    assert refresh_cookie(page) is None

    tab.sign_in(email)  # the same address makes a new, empty account
    expect(page.locator("#no-conversations")).to_be_visible()
    assert tab.errors == []


def test_silent_refresh_keeps_the_chat_working_past_token_expiry(tab: Tab) -> None:
    page = tab.page
    page.clock.install()  # the page's clock, moved by the test instead of waited for
    tab.sign_in()
    first = bearer_token(tab.grpc_calls(LIST_AGENTS_PATH)[0])
    claims = token_claims(first)
    assert claims["exp"] - claims["iat"] == ACCESS_TOKEN_TTL_SECONDS
    cookie = refresh_cookie(page)
    assert cookie is not None
    # Before sign-in, the app asked whether the browser was signed in (it was not).
    before = len(tab.grpc_calls(REFRESH_PATH))
    assert before == 1

    page.clock.run_for(ACCESS_TOKEN_TTL_SECONDS * 1000 + 1000)  # the page lives past the token's expiry
    for _ in range(200):
        if (
            tab.grpc_calls(REFRESH_PATH)[before:]
            and tab.grpc_calls(REFRESH_PATH)[before].response() is not None
        ):
            break
        page.wait_for_timeout(20)
    refreshes = tab.grpc_calls(REFRESH_PATH)[before:]
    assert refreshes, "no RefreshSession before the access token expired"
    refresh_answer = refreshes[0].response()
    assert refresh_answer is not None
    assert refresh_answer.header_value("grpc-status") in (None, "0")

    tab.send("What do you know about me?")
    assert tab.last_answer() == "I don't know that yet."
    assert bearer_token(tab.grpc_calls(CHAT_PATH)[-1]) != first, "the chat went out with the expired token"
    rotated = refresh_cookie(page)
    assert rotated is not None
    assert rotated["value"] != cookie["value"], "the refresh did not rotate the refresh token"
    expect(page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_hidden()
    assert tab.errors == []


def test_a_refused_token_is_refreshed_once_and_a_dead_session_signs_out(tab: Tab) -> None:
    page = tab.page
    tab.sign_in()
    # The edge refuses the token the chat goes out with (UNAUTHENTICATED): the app refreshes and retries
    # the call once.
    refuse_next_call(page, CHAT_PATH)
    tab.send("What do you know about me?")
    assert tab.last_answer() == "I don't know that yet."
    assert len(tab.grpc_calls(REFRESH_PATH)) == 2  # whether signed in (on load), then the recovery
    assert len(tab.grpc_calls(CHAT_PATH)) == 2
    expect(page.get_by_role("alert")).to_be_hidden()

    # The session ends elsewhere (the browser's cookie names a revoked session): the next refusal's
    # refresh is refused too, and the session is over.
    cookie = refresh_cookie(page)
    assert cookie is not None
    end_session_elsewhere(tab.base_url, cookie["value"])
    refuse_next_call(page, CHAT_PATH)
    tab.send("Are you still there?")
    expect(page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="You were signed out")).to_be_visible()
    assert len(tab.grpc_calls(REFRESH_PATH)) == 3
    # Envoy's jwt_authn answers a refused token with HTTP 401 (grpc-status 16 in the headers), which
    # Chromium logs by itself; the app logs nothing.
    refused = "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    assert [error for error in tab.errors if error != refused] == []


def test_the_page_is_served_with_a_strict_content_security_policy(tab: Tab) -> None:
    page = tab.page
    page.add_init_script(RECORD_CSP_VIOLATIONS)
    answer = page.goto(tab.base_url + "/")
    assert answer is not None
    headers = answer.all_headers()
    policy = {
        name: sources
        for name, *sources in (
            part.split() for part in headers.get("content-security-policy", "").split(";") if part.strip()
        )
    }
    assert policy.get("default-src") == ["'none'"], policy
    assert policy.get("script-src") == ["'self'"], policy  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy.get("style-src") == ["'self'"], policy
    assert policy.get("connect-src") == ["'self'"], policy  # gRPC-web goes to the page's own origin
    assert policy.get("frame-ancestors") == ["'none'"], policy
    for directive in ("base-uri", "form-action", "object-src"):
        assert policy.get(directive) == ["'none'"], (directive, policy)
    assert headers.get("referrer-policy") == "no-referrer"
    assert headers.get("x-frame-options") == "DENY"
    assert headers.get("cross-origin-opener-policy") == "same-origin"
    denied = {
        name.strip(): allowed.strip()
        for name, allowed in (item.split("=", 1) for item in headers.get("permissions-policy", "").split(","))
    }
    for feature in ("camera", "microphone", "geolocation", "payment", "usb"):
        assert denied.get(feature) == "()", (feature, denied)
        assert page.evaluate(f"document.featurePolicy.allowsFeature('{feature}')") is False

    # The app itself runs under the policy (it breaks none of it: no violation, no console error)...
    tab.sign_in()
    tab.send("What do you know about me?")
    assert tab.last_answer() == "I don't know that yet."
    assert page.evaluate("window.cspViolations") == []
    assert tab.errors == []

    # ...and markup injected into the page runs nothing.
    def inject(route: Route) -> None:
        served = route.fetch()
        route.fulfill(response=served, body=served.text().replace("</head>", INJECTED_MARKUP + "</head>"))

    page.route(tab.base_url + "/", inject)
    page.reload()
    expect(page.get_by_role("radio", name="Athena", exact=True)).to_be_checked()  # still signed in, working
    assert page.locator("#injected-image").count() == 1, "the injection did not reach the page"
    assert page.evaluate("window.injectedScriptRan") is None
    assert page.evaluate("window.injectedHandlerRan") is None
    assert page.locator("#signin-view").evaluate("view => getComputedStyle(view).outlineWidth") != "7px"
    blocked = {violation["directive"] for violation in page.evaluate("window.cspViolations")}
    assert blocked == {"script-src-elem", "script-src-attr", "style-src-elem"}, blocked
    refusals = [error for error in tab.errors if "Content Security Policy" in error]
    assert refusals, "the browser reported no refusal"
    assert refusals == tab.errors


def test_no_other_site_can_frame_the_app(tab: Tab) -> None:
    """Clickjacking: another site that puts the app in a frame gets an empty frame. The framing page is a
    real server on loopback (`localhost`, another site than the app's `127.0.0.1`), so that Chromium's
    Local Network Access, which keeps pages of other address spaces from loopback, is not what stops it."""
    page = tab.page
    framing = f'<!doctype html><iframe src="{tab.base_url}/" width="800" height="600"></iframe>'
    with serve_page(framing) as framing_url:
        page.goto(framing_url)
        (framed,) = page.main_frame.child_frames
        # Chromium shows its own error page in a frame the app refused to be in (committed a moment
        # after the framing page's load on a busy machine).
        for _ in range(200):
            if framed.url.startswith("chrome-error://") and tab.errors:
                break
            page.wait_for_timeout(50)
        assert framed.url.startswith("chrome-error://"), framed.url
        expect(page.frame_locator("iframe").locator("#signin-view")).to_have_count(0)
    assert tab.errors, "the browser reported no refusal"
    assert all("frame-ancestors 'none'" in error for error in tab.errors), tab.errors


def test_tokens_stay_out_of_page_storage_and_tabs_share_sign_in_and_sign_out(tab: Tab) -> None:
    page = tab.page
    email = tab.sign_in()
    (login,) = tab.grpc_calls(DEV_LOGIN_PATH)
    login_answer = login.response()
    assert login_answer is not None
    session = auth_pb2.DevLoginResponse.FromString(grpc_web_message(login_answer.body())).session
    tab.send("What do you know about me?")
    tab.last_answer()
    access_token = bearer_token(tab.grpc_calls(CHAT_PATH)[-1])

    # Nothing a script in the page can read holds a token: not the storage, not document.cookie, not the
    # sign-in answer (its session carries no refresh token).
    storage = page.evaluate(READ_PAGE_STORAGE)
    for token in (session.access_token, access_token):
        assert token not in storage, storage
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.", storage), f"a JWT in page storage: {storage}"
    assert session.refresh_token == ""
    cookie = refresh_cookie(page)
    assert cookie is not None, "no refresh-token cookie"
    assert cookie["value"] not in storage
    assert cookie["value"].encode() not in login_answer.body()
    assert cookie["httpOnly"] is True
    assert cookie["secure"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == REFRESH_COOKIE_PATH
    assert page.evaluate("document.cookie") == ""

    # A second tab is signed in (a reload is the same), with an access token of its own.
    second = open_tab(tab)
    second.page.goto(tab.base_url + "/")
    expect(second.page.get_by_role("radio", name="Athena", exact=True)).to_be_checked()
    expect(second.page.locator("#user-name")).to_have_text(email.split("@")[0])
    assert bearer_token(second.grpc_calls(LIST_AGENTS_PATH)[0]) != access_token
    assert len(second.grpc_calls(REFRESH_PATH)) == 1
    assert access_token not in second.page.evaluate(READ_PAGE_STORAGE)

    # Signing out in one tab signs every tab out and ends the session (the cookie is cleared).
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_visible()
    expect(second.page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_visible()
    expect(
        second.page.get_by_role("status").filter(has_text="You signed out in another tab.")
    ).to_be_visible()
    expect(second.page.locator("#app-view")).to_be_hidden()
    assert refresh_cookie(page) is None
    assert len(tab.grpc_calls(LOGOUT_PATH)) == 1
    page.reload()
    expect(page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_visible()

    # Signing in in one tab signs the others in.
    other = f"other-{uuid.uuid4().hex[:10]}@example.com"
    second.page.get_by_label("Email").fill(other)
    second.page.get_by_role("button", name="Sign in (dev)").click()
    expect(second.page.locator("#user-name")).to_have_text(other.split("@")[0])
    expect(page.locator("#user-name")).to_have_text(other.split("@")[0])
    expect(page.get_by_role("radio", name="Athena", exact=True)).to_be_checked()
    storage = page.evaluate(READ_PAGE_STORAGE) + second.page.evaluate(READ_PAGE_STORAGE)
    assert not re.search(r"eyJ[\w-]+\.[\w-]+\.", storage), storage
    assert tab.errors == []
    assert second.errors == []


def test_a_sign_out_the_server_did_not_hear_is_finished_on_the_next_visit(tab: Tab) -> None:
    """Page scripts cannot delete the HttpOnly cookie: only Logout can. When it cannot get through, the
    browser stays signed out and ends the session at the next opportunity."""
    page = tab.page
    tab.sign_in()
    route_next_call(page, LOGOUT_PATH, lambda route: route.abort())
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_visible()
    assert refresh_cookie(page) is not None  # the server never heard of the sign-out

    page.reload()
    expect(page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_visible()
    expect(page.locator("#app-view")).to_be_hidden()
    assert len(tab.grpc_calls(LOGOUT_PATH)) == 2
    assert refresh_cookie(page) is None
    page.reload()
    expect(page.get_by_role("heading", name="Sign in to AthenaOS")).to_be_visible()
    assert [error for error in tab.errors if "net::ERR_FAILED" not in error] == []


def test_an_answer_cut_off_mid_stream_says_the_message_is_kept(tab: Tab) -> None:
    """Issue 12: when the router dies mid-answer, Envoy can only cut the stream (no status follows what
    was sent). The page says what happened in words: the message is kept, and its text is back in the
    box for sending again."""
    page = tab.page
    tab.sign_in()

    def cut_after_the_first_event(route: Route) -> None:
        response = route.fetch()
        body = response.body()
        length = struct.unpack(">I", body[1:5])[0]
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        route.fulfill(status=200, headers=headers, body=body[: 5 + length])  # no trailer frame follows

    route_next_call(page, CHAT_PATH, cut_after_the_first_event)
    tab.send("What do you know about me?")
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_class(re.compile(r"\bfailed\b"))
    expect(answer.locator(".message-error")).to_have_text(
        "The answer stopped: the connection was lost. Your message is kept — send it again for an answer."
    )
    expect(page.get_by_label("Message", exact=True)).to_have_value("What do you know about me?")
    expect(page.get_by_role("alert")).to_be_hidden()
    assert tab.errors == []


def test_connections_panel_connects_google_through_its_consent_page_and_disconnects_it(tab: Tab) -> None:
    """Issue 15: with no calendar connected, the answer's warning chip leads to Connections; Google is
    connected through its consent page (the emulator approves at once and sends the browser back to
    `/connections`), the next answer shows the busy blocks it read (the emulator's calendar has a
    dentist's appointment tomorrow, 13:00 to 14:00 UTC: tests/emulators/__main__.py), and disconnecting
    removes it."""
    page = tab.page
    tab.sign_in()
    page.get_by_role("radio", name="Focus coach").check()
    tab.send("when am I free tomorrow?")
    tab.last_answer()
    answer = page.locator(".message.assistant").last
    warning = answer.get_by_role("link", name=re.compile("No calendar is connected"))
    expect(warning).to_have_attribute("href", "/connections")
    warning.click()

    panel = page.get_by_role("dialog", name="Connections")
    expect(panel).to_be_visible()
    assert urlsplit(page.url).path == "/connections"
    expect(panel.get_by_text("No account is connected yet.")).to_be_visible()
    google = panel.get_by_role("group", name="Google")
    expect(google.get_by_label("Calendar")).to_be_checked()
    expect(google.get_by_label("Health data")).not_to_be_checked()
    google.get_by_role("button", name="Connect Google").click()

    # Google's consent page sent the browser back to /connections with `code` and `state`.
    expect(panel.get_by_role("status").first).to_have_text("Google is connected: Calendar.")
    assert urlsplit(page.url).path == "/connections"
    assert urlsplit(page.url).query == "", "the provider's answer stays in the address"
    connection = panel.locator(".connection[data-provider=google]")
    expect(connection.locator("h4")).to_have_text("Google")
    expect(connection.locator(".capabilities")).to_have_text("Calendar")
    expect(connection.locator(".connection-status")).to_have_text("Connected")
    expect(connection.locator(".meta")).to_have_text("Not used yet")
    add = panel.get_by_role("group", name="Google").get_by_role("button", name="Add to Google")
    expect(add).to_be_disabled()
    # A reload does not send the provider's answer again.
    page.reload()
    expect(panel.locator(".connection[data-provider=google]")).to_have_count(1)
    assert len(tab.grpc_calls(COMPLETE_CONNECTION_PATH)) == 1
    panel.get_by_role("button", name="Close").click()
    expect(panel).to_be_hidden()
    expect(page).to_have_url(re.compile(rf"^{re.escape(tab.base_url)}/(#.*)?$"))

    page.get_by_role("radio", name="Focus coach").check()
    tab.send("when am I free tomorrow?")
    tab.last_answer()
    busy = page.locator(".message.assistant").last.locator(".tool-results .chip[data-tool=calendar_freebusy]")
    expect(busy).to_have_text(re.compile(r"^Busy .*tomorrow [^;]*13:00–14:00"))
    expect(page.locator(".message.assistant").last.locator(".chip.warning")).to_have_count(0)
    # Stored with the message: the chip is back after a reload.
    page.reload()
    expect(
        page.locator(".message.assistant").last.locator(".chip[data-tool=calendar_freebusy]")
    ).to_have_text(re.compile(r"^Busy .*13:00–14:00"))

    page.get_by_role("button", name="Connections").click()
    connection = panel.locator(".connection[data-provider=google]")
    expect(connection.locator(".meta")).to_have_text(re.compile(r"^Last used "))
    connection.get_by_role("button", name="Disconnect Google").click()
    expect(connection.get_by_role("alert")).to_contain_text("Disconnect Google?")
    connection.get_by_role("button", name="Disconnect Google").click()
    expect(panel.get_by_role("status").first).to_have_text("Google was disconnected.")
    expect(panel.locator(".connection")).to_have_count(0)
    expect(panel.get_by_text("No account is connected yet.")).to_be_visible()
    assert tab.errors == []


def test_an_apple_health_export_is_declared_with_its_sha256_read_in_slices(tab: Tab, tmp_path: Path) -> None:
    """The file's SHA-256 is computed a slice at a time (sha256.ts; a 1 GB export is never held whole):
    what CreateUpload declares is the file's true digest and size, over several slices."""
    page = tab.page
    export = tmp_path / "export.zip"
    export.write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    tab.sign_in()
    page.get_by_role("button", name="Connections").click()
    panel = page.get_by_role("dialog", name="Connections")
    panel.get_by_label(re.compile("Export from the Health app")).set_input_files(export)
    with page.expect_request(lambda request: request.url.endswith(CREATE_UPLOAD_PATH)) as sent:
        panel.get_by_role("button", name="Import").click()
    body = sent.value.post_data_buffer
    assert body is not None
    declared = uploads_pb2.CreateUploadRequest.FromString(grpc_web_message(body))
    assert declared.sha256 == hashlib.sha256(export.read_bytes()).hexdigest()
    assert declared.size_bytes == export.stat().st_size
    assert declared.file_name == "export.zip"
    assert declared.kind == uploads_pb2.UPLOAD_KIND_APPLE_HEALTH_EXPORT
    assert tab.errors == []


APPLE_HEALTH_RECORD = (
    '<Record type="HKQuantityTypeIdentifierStepCount" sourceName="iPhone" unit="count" '
    'creationDate="{day} 09:00:00 +0000" startDate="{day} 08:{minute:02d}:00 +0000" '
    'endDate="{day} 08:{minute:02d}:59 +0000" value="{steps}"/>\n'
)


def test_an_apple_health_export_uploads_in_chunks_resumes_after_a_failed_chunk_and_imports(
    tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    records = [
        APPLE_HEALTH_RECORD.format(day=f"2025-05-{day:02d}", minute=minute, steps=100 + minute)
        for day in range(1, 11)
        for minute in range(60)
    ]
    padding = "<!-- " + "x" * (3 * 1024 * 1024) + " -->\n"  # more than one chunk
    export = tmp_path / "export.xml"
    export.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<HealthData locale="en_GB">\n'
        '<ExportDate value="2025-05-11 09:00:00 +0000"/>\n' + padding + "".join(records) + "</HealthData>\n",
        encoding="utf-8",
    )
    tab.sign_in()
    page.get_by_role("button", name="Connections").click()
    panel = page.get_by_role("dialog", name="Connections")
    # The second chunk is lost on the way: it is sent again, from where GetUpload says the upload stands.
    calls = 0

    def lose_the_second(route: Route) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            route.abort()
        else:
            route.fallback()

    page.route(f"**{APPEND_CHUNK_PATH}", lose_the_second)
    panel.get_by_label(re.compile("Export from the Health app")).set_input_files(export)
    panel.get_by_role("button", name="Import").click()
    expect(panel.locator("#upload-progress")).to_be_visible()
    expect(panel.get_by_role("status").last).to_have_text(
        re.compile(r"^Imported export\.xml: 600 records over 10 days\.$"), timeout=60_000
    )
    expect(panel.locator(".upload[data-state=imported]")).to_contain_text("export.xml")
    assert calls >= 3
    # Chromium logs the aborted chunk by itself; the app logs nothing.
    assert [error for error in tab.errors if "net::ERR_FAILED" not in error] == []


def test_a_stopped_mesh_shows_a_clear_error(tab: Tab, stack: Stack) -> None:
    """Last: it stops the module's mesh."""
    page = tab.page
    tab.sign_in()
    stack.stop()

    tab.send("Are you there?")
    expect(page.get_by_role("alert")).to_have_text(re.compile(re.escape(UNREACHABLE)))
    expect(page.locator(".message.assistant").last).to_contain_text(f"The answer stopped: {UNREACHABLE}")
    # The message was not stored, so it is given back for sending again.
    expect(page.get_by_label("Message", exact=True)).to_have_value("Are you there?")
    # The browser itself logs each failed connection (refused, or reset as Envoy exits); nothing else may.
    unexpected = [error for error in tab.errors if not error.startswith("Failed to load resource: net::ERR_")]
    assert unexpected == []
