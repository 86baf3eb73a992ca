"""The browsers' refresh-token cookie (`auth.cookies`): the attributes that keep it from page scripts,
other sites and other paths, and which token a request's `cookie` headers present."""

from __future__ import annotations

from datetime import timedelta

import pytest

from auth.cookies import REFRESH_COOKIE, clear_refresh_cookie, presented_refresh_token, set_refresh_cookie

PATH = "/athena.auth.v1.AuthService/"
TOKEN = "q1w2e3r4t5y6u7i8o9p0-_ASDFGHJKLZXCVBNMqwertyu"


def test_the_cookie_is_http_only_secure_strict_and_scoped_to_the_auth_calls() -> None:
    header = set_refresh_cookie(TOKEN, path=PATH, max_age=timedelta(days=30, seconds=0.9))
    assert header == (
        f"__Secure-athena-refresh={TOKEN}; Path={PATH}; Max-Age=2592000; HttpOnly; Secure; SameSite=Strict"
    )


def test_an_expired_session_gets_a_cookie_that_is_gone_at_once() -> None:
    assert "Max-Age=0;" in set_refresh_cookie(TOKEN, path=PATH, max_age=timedelta(seconds=-5))


def test_clearing_overwrites_the_same_cookie_with_nothing() -> None:
    assert clear_refresh_cookie(path=PATH) == (
        f"{REFRESH_COOKIE}=; Path={PATH}; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
    )


@pytest.mark.parametrize("token", ["", "a b", "a;b", 'a"b', "a,b", "é"])
def test_only_cookie_safe_tokens_are_set(token: str) -> None:
    with pytest.raises(ValueError, match="cookie"):
        set_refresh_cookie(token, path=PATH, max_age=timedelta(days=1))


@pytest.mark.parametrize(
    "headers",
    [
        [f"{REFRESH_COOKIE}={TOKEN}"],
        [f"theme=dark; {REFRESH_COOKIE}={TOKEN}; lang=en"],
        ["theme=dark", f"  {REFRESH_COOKIE}={TOKEN}  ", "lang=en"],  # HTTP/2 sends cookies one per header
        [f"theme=dark;{REFRESH_COOKIE}={TOKEN}"],
    ],
)
def test_the_refresh_token_is_found_among_other_cookies(headers: list[str]) -> None:
    assert presented_refresh_token(headers) == TOKEN


@pytest.mark.parametrize(
    "headers",
    [
        [],
        ["theme=dark"],
        [f"{REFRESH_COOKIE}="],
        [f"x{REFRESH_COOKIE}={TOKEN}"],
        [f"{REFRESH_COOKIE.lower()}={TOKEN}"],  # cookie names are case-sensitive
        # Two refresh cookies: one may have been planted by a sibling site (Domain=…); trust neither.
        [f"{REFRESH_COOKIE}={TOKEN}; {REFRESH_COOKIE}=planted"],
        [f"{REFRESH_COOKIE}={TOKEN}", f"{REFRESH_COOKIE}={TOKEN}"],
    ],
)
def test_no_single_refresh_cookie_presents_no_token(headers: list[str]) -> None:
    assert presented_refresh_token(headers) is None
