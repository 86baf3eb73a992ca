"""The refresh-token cookie: how a browser holds its refresh token where no script in the page can read it.

A browser asks for it with `refresh_token_in_cookie` (proto/athena/auth/v1/auth.proto). Its refresh token
then travels only in the `set-cookie` header of sign-in and RefreshSession answers and in the `cookie`
header of RefreshSession and Logout calls, which the edge's gRPC-web filter passes between the browser and
this service as gRPC metadata. The attributes, each for a reason:

- `HttpOnly`: page scripts, and whatever script an attacker gets into the page, cannot read it;
- `Secure`, and the `__Secure-` prefix that makes browsers insist on it: sent only over https (or to
  localhost, which browsers treat as secure), and set only by a secure origin;
- `SameSite=Strict`: never sent with a request another site starts, so no other site can refresh or end
  the session (CSRF); the app's own gRPC-web calls are same-site even after a sign-in redirect;
- `Path=/athena.auth.v1.AuthService/`: sent only with the auth service's calls, never with chat or
  account calls, nor with the files of the app. (`__Host-` would also forbid a `Domain`, but it requires
  `Path=/`: the cookie would go with every request.) Because a sibling site could still plant a cookie of
  the same name with a `Domain` and a longer path, a request carrying two refresh cookies presents none;
- no `Domain`: this host only; `Max-Age`: the refresh token's own remaining lifetime.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import timedelta

REFRESH_COOKIE = "__Secure-athena-refresh"
"""The cookie's name."""

_ATTRIBUTES = "HttpOnly; Secure; SameSite=Strict"
_COOKIE_VALUE = re.compile(r"[\w\-.~]+", re.ASCII)
"""What a refresh token may hold to travel as a cookie value unquoted (ours are base64url)."""


def set_refresh_cookie(token: str, *, path: str, max_age: timedelta) -> str:
    """The `set-cookie` header that gives the browser `token`, for calls under `path`, for `max_age`."""
    if _COOKIE_VALUE.fullmatch(token) is None:
        raise ValueError("a refresh token must be non-empty base64url to travel as a cookie")
    seconds = max(0, math.floor(max_age.total_seconds()))
    return f"{REFRESH_COOKIE}={token}; Path={path}; Max-Age={seconds}; {_ATTRIBUTES}"


def clear_refresh_cookie(*, path: str) -> str:
    """The `set-cookie` header that makes the browser forget the refresh cookie of `path` at once."""
    return f"{REFRESH_COOKIE}=; Path={path}; Max-Age=0; {_ATTRIBUTES}"


def presented_refresh_token(cookie_headers: Iterable[str]) -> str | None:
    """The refresh token the `cookie` headers of a request carry (HTTP/2 may send one header per
    cookie), or None when they carry no refresh cookie with a value, or more than one."""
    found = [
        value.strip()
        for header in cookie_headers
        for name, _, value in (pair.strip().partition("=") for pair in header.split(";"))
        if name == REFRESH_COOKIE
    ]
    if len(found) != 1 or not found[0]:
        return None
    return found[0]
