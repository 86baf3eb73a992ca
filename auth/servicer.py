"""`athena.auth.v1.AuthService` over gRPC: proto in, domain call, proto out. Nothing else lives here, but
where a browser's refresh token travels: in the messages, or (`refresh_token_in_cookie`) in the cookie
`auth.cookies` describes, set through the response's initial metadata and read from the request's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc
from athena.auth.v1 import auth_pb2, auth_pb2_grpc
from athena.identity.v1 import identity_pb2, identity_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from auth.cookies import clear_refresh_cookie, presented_refresh_token, set_refresh_cookie
from auth.erasure import AccountEraser
from auth.keys import KeyRing
from auth.oidc import OidcLogin
from auth.sessions import Session, SessionManager
from auth.store import UserRecord
from mesh.context import principal
from mesh.errors import Unauthenticated

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
PUBLIC_METHODS = tuple(
    f"/{SERVICE_NAME}/{name}"
    for name in (
        "ListProviders",
        "BeginLogin",
        "CompleteLogin",
        "DevLogin",
        "RefreshSession",
        "Logout",
        "GetJwks",
    )
)
"""Methods callable without an access token (everything but RevokeAllSessions)."""
COOKIE_PATH = f"/{SERVICE_NAME}/"
"""Where browsers send the refresh cookie: this service's calls (the edge routes them here by this prefix)."""

Context = grpc.aio.ServicerContext[Any, Any]


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _user(user: UserRecord) -> auth_pb2.User:
    return auth_pb2.User(
        id=user.id, email=user.email, display_name=user.display_name, created_at=_timestamp(user.created_at)
    )


def _session(session: Session, *, with_refresh_token: bool = True) -> auth_pb2.Session:
    return auth_pb2.Session(
        access_token=session.access_token,
        access_token_expires_at=_timestamp(session.access_token_expires_at),
        refresh_token=session.refresh_token if with_refresh_token else "",
        refresh_token_expires_at=_timestamp(session.refresh_token_expires_at),
        user=_user(session.user),
    )


def _cookie_headers(context: Context) -> list[str]:
    return [
        value.decode() if isinstance(value, bytes) else value
        for key, value in context.invocation_metadata() or ()
        if key == "cookie"
    ]


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        sessions: SessionManager,
        login: OidcLogin,
        keys: Callable[[], KeyRing],
        clock: Callable[[], datetime],
    ) -> None:
        self._sessions = sessions
        self._login = login
        self._keys = keys
        self._clock = clock

    async def ListProviders(
        self, request: auth_pb2.ListProvidersRequest, context: Context
    ) -> auth_pb2.ListProvidersResponse:
        providers = [
            auth_pb2.Provider(id=provider.id, display_name=provider.settings.display_name)
            for provider in self._login.providers.values()
        ]
        if self._sessions.dev_login_enabled:
            providers.append(auth_pb2.Provider(id="dev", display_name="Developer sign-in"))
        return auth_pb2.ListProvidersResponse(providers=providers)

    async def BeginLogin(
        self, request: auth_pb2.BeginLoginRequest, context: Context
    ) -> auth_pb2.BeginLoginResponse:
        start = await self._login.begin(request.provider, request.redirect_uri)
        return auth_pb2.BeginLoginResponse(authorization_url=start.authorization_url, state=start.state)

    async def CompleteLogin(
        self, request: auth_pb2.CompleteLoginRequest, context: Context
    ) -> auth_pb2.CompleteLoginResponse:
        session = await self._login.complete(request.state, request.code)
        return auth_pb2.CompleteLoginResponse(
            session=await self._deliver(session, request.refresh_token_in_cookie, context)
        )

    async def DevLogin(
        self, request: auth_pb2.DevLoginRequest, context: Context
    ) -> auth_pb2.DevLoginResponse:
        session = await self._sessions.dev_login(request.email, request.display_name)
        return auth_pb2.DevLoginResponse(
            session=await self._deliver(session, request.refresh_token_in_cookie, context)
        )

    async def RefreshSession(
        self, request: auth_pb2.RefreshSessionRequest, context: Context
    ) -> auth_pb2.RefreshSessionResponse:
        if request.refresh_token_in_cookie:
            refresh_token = presented_refresh_token(_cookie_headers(context))
            if refresh_token is None:
                raise Unauthenticated("no refresh token cookie: sign in")
        else:
            refresh_token = request.refresh_token
        session = await self._sessions.refresh(refresh_token)
        return auth_pb2.RefreshSessionResponse(
            session=await self._deliver(session, request.refresh_token_in_cookie, context)
        )

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Context) -> auth_pb2.LogoutResponse:
        if not request.refresh_token_in_cookie:
            await self._sessions.logout(request.refresh_token)
            return auth_pb2.LogoutResponse()
        refresh_token = presented_refresh_token(_cookie_headers(context))
        if refresh_token is not None:
            await self._sessions.logout(refresh_token)
        await context.send_initial_metadata((("set-cookie", clear_refresh_cookie(path=COOKIE_PATH)),))
        return auth_pb2.LogoutResponse()

    async def _deliver(self, session: Session, in_cookie: bool, context: Context) -> auth_pb2.Session:
        """The session for the answer; with `in_cookie`, its refresh token goes in a cookie instead."""
        if not in_cookie:
            return _session(session)
        cookie = set_refresh_cookie(
            session.refresh_token, path=COOKIE_PATH, max_age=session.refresh_token_expires_at - self._clock()
        )
        await context.send_initial_metadata((("set-cookie", cookie),))
        return _session(session, with_refresh_token=False)

    async def RevokeAllSessions(
        self, request: auth_pb2.RevokeAllSessionsRequest, context: Context
    ) -> auth_pb2.RevokeAllSessionsResponse:
        revoked = await self._sessions.revoke_all(principal().user_id)
        return auth_pb2.RevokeAllSessionsResponse(revoked_sessions=revoked)

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Context) -> auth_pb2.GetJwksResponse:
        jwks = self._keys().jwks(self._clock())
        return auth_pb2.GetJwksResponse(
            keys=[
                auth_pb2.Jwk(
                    kty=key["kty"], kid=key["kid"], use=key["use"], alg=key["alg"], n=key["n"], e=key["e"]
                )
                for key in jwks["keys"]
            ]
        )


IDENTITY_SERVICE_NAME = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    """Internal: the router's half of account export and erasure."""

    def __init__(self, eraser: AccountEraser, sessions: SessionManager) -> None:
        self._eraser = eraser
        self._sessions = sessions

    async def ExportIdentity(
        self, request: identity_pb2.ExportIdentityRequest, context: Context
    ) -> identity_pb2.ExportIdentityResponse:
        exported = await self._sessions.export(principal().user_id)
        user = exported.user
        return identity_pb2.ExportIdentityResponse(
            account=identity_pb2.ExportedAccount(
                user_id=user.id,
                email=user.email,
                display_name=user.display_name,
                created_at=_timestamp(user.created_at),
                updated_at=_timestamp(exported.updated_at),
            ),
            identities=[
                identity_pb2.ExportedIdentity(
                    provider=identity.provider,
                    subject=identity.subject,
                    created_at=_timestamp(identity.created_at),
                )
                for identity in exported.identities
            ],
            sessions=[
                identity_pb2.ExportedSession(
                    id=session.id,
                    created_at=_timestamp(session.created_at),
                    revoked_at=_timestamp(session.revoked_at) if session.revoked_at else None,
                    revoked_reason=session.revoked_reason or "",
                    refresh_tokens=session.refresh_tokens,
                )
                for session in exported.sessions
            ],
        )

    async def EraseUser(
        self, request: identity_pb2.EraseUserRequest, context: Context
    ) -> identity_pb2.EraseUserResponse:
        erasure = await self._eraser.erase(principal().user_id, dict(request.purged))
        receipt = erasure.receipt
        return identity_pb2.EraseUserResponse(
            erased=erasure.existed,
            receipt=receipt.token,
            erased_counts=receipt.erased,
            erased_at=_timestamp(receipt.erased_at),
        )
