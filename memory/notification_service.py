"""The servicers of notifications.proto: proto in → `memory.notifications.Notifier` → proto out.

NotificationsService acts on the verified caller only (`caller_id`); NotifierService.Notify is called for
no user, with the deployment's service key, and names the user in the request. Field rules are the
contract's (`mesh.validation`); what remains here depends on meaning (quiet hours' time zone, an
endpoint's scheme, the keys' encoding) and is checked in the domain module.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from athena.notifications.v1 import notifications_pb2 as pb
from athena.notifications.v1 import notifications_pb2_grpc as pb_grpc

from memory.convert import timestamp
from memory.notifications import (
    Heartbeat,
    NewNotification,
    Notification,
    NotificationSettings,
    Notifier,
    UnreadCount,
    push_subscription,
    quiet_hours,
)
from memory.pagination import decode_page_token, encode_page_token
from memory.service import Context, caller_id
from mesh.errors import FailedPrecondition

_PAGE = "notifications"
DEFAULT_PAGE_SIZE = 20


def notification_to_proto(notification: Notification) -> pb.Notification:
    message = pb.Notification(
        id=notification.id,
        agent_id=notification.agent_id,
        title=notification.title,
        body=notification.body,
        kind=notification.kind,
        conversation_id=notification.conversation_id,
        link=notification.link,
        created_at=timestamp(notification.created_at),
    )
    if notification.read_at is not None:
        message.read_at.CopyFrom(timestamp(notification.read_at))
    return message


def settings_to_proto(settings: NotificationSettings) -> pb.NotificationSettings:
    message = pb.NotificationSettings(muted_agent_ids=settings.muted_agent_ids)
    hours = settings.quiet_hours
    if hours is not None:
        message.quiet_hours.CopyFrom(
            pb.QuietHours(
                start=hours.start.strftime("%H:%M"),
                end=hours.end.strftime("%H:%M"),
                time_zone=hours.time_zone,
            )
        )
    return message


def settings_from_proto(message: pb.NotificationSettings) -> NotificationSettings:
    hours = None
    if message.HasField("quiet_hours"):
        q = message.quiet_hours
        hours = quiet_hours(q.start, q.end, q.time_zone, "settings.quiet_hours")
    return NotificationSettings(muted_agent_ids=tuple(message.muted_agent_ids), quiet_hours=hours)


class NotificationsServicer(pb_grpc.NotificationsServiceServicer):
    def __init__(self, notifier: Notifier, *, allow_http_endpoints: bool = False) -> None:
        self._notifier = notifier
        self._allow_http = allow_http_endpoints

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Context
    ) -> pb.ListNotificationsResponse:
        user_id = caller_id()
        size = request.page_size or DEFAULT_PAGE_SIZE
        after = decode_page_token(request.page_token, _PAGE)
        found, unread = await self._notifier.store.page(
            user_id, size + 1, after, unread_only=request.unread_only
        )
        next_token = encode_page_token(_PAGE, found[size - 1].cursor) if len(found) > size else ""
        return pb.ListNotificationsResponse(
            notifications=[notification_to_proto(n) for n in found[:size]],
            next_page_token=next_token,
            unread_count=unread,
        )

    async def MarkRead(self, request: pb.MarkReadRequest, context: Context) -> pb.MarkReadResponse:
        ids = None if request.all else list(request.notification_ids)
        marked, unread = await self._notifier.mark_read(caller_id(), ids)
        return pb.MarkReadResponse(marked=marked, unread_count=unread)

    async def WatchNotifications(
        self, request: pb.WatchNotificationsRequest, context: Context
    ) -> AsyncIterator[pb.WatchNotificationsResponse]:
        user_id = caller_id()
        async with contextlib.aclosing(self._notifier.watch(user_id)) as events:
            async for event in events:
                if isinstance(event, UnreadCount):
                    yield pb.WatchNotificationsResponse(unread_count=event.count)
                elif isinstance(event, Heartbeat):
                    yield pb.WatchNotificationsResponse(heartbeat=timestamp(event.at))
                else:
                    yield pb.WatchNotificationsResponse(notification=notification_to_proto(event))

    async def GetNotificationSettings(
        self, request: pb.GetNotificationSettingsRequest, context: Context
    ) -> pb.GetNotificationSettingsResponse:
        settings = await self._notifier.store.settings(caller_id())
        return pb.GetNotificationSettingsResponse(settings=settings_to_proto(settings))

    async def UpdateNotificationSettings(
        self, request: pb.UpdateNotificationSettingsRequest, context: Context
    ) -> pb.UpdateNotificationSettingsResponse:
        user_id = caller_id()
        settings = settings_from_proto(request.settings)
        await self._notifier.store.put_settings(user_id, settings)
        return pb.UpdateNotificationSettingsResponse(settings=settings_to_proto(settings))

    async def GetPushConfig(
        self, request: pb.GetPushConfigRequest, context: Context
    ) -> pb.GetPushConfigResponse:
        caller_id()
        sender = self._notifier.sender
        if sender is None:
            raise FailedPrecondition("Web Push is not set up on this deployment (it has no VAPID key)")
        return pb.GetPushConfigResponse(vapid_public_key=sender.public_key)

    async def AddPushSubscription(
        self, request: pb.AddPushSubscriptionRequest, context: Context
    ) -> pb.AddPushSubscriptionResponse:
        user_id = caller_id()
        subscription = push_subscription(
            request.endpoint, request.p256dh, request.auth, allow_http=self._allow_http
        )
        if self._notifier.sender is None:
            raise FailedPrecondition("Web Push is not set up on this deployment (it has no VAPID key)")
        await self._notifier.store.add_subscription(user_id, subscription)
        return pb.AddPushSubscriptionResponse()

    async def RemovePushSubscription(
        self, request: pb.RemovePushSubscriptionRequest, context: Context
    ) -> pb.RemovePushSubscriptionResponse:
        await self._notifier.store.remove_subscription(caller_id(), request.endpoint)
        return pb.RemovePushSubscriptionResponse()


class NotifierServicer(pb_grpc.NotifierServiceServicer):
    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    async def Notify(self, request: pb.NotifyRequest, context: Context) -> pb.NotifyResponse:
        # For no caller: admitted by the deployment's service key; the user is the request's.
        outcome = await self._notifier.notify(
            str(uuid.UUID(request.user_id)),  # one spelling: the data key's owner is this string
            NewNotification(
                agent_id=request.agent_id,
                title=request.title,
                body=request.body,
                kind=request.kind,
                dedupe_key=request.dedupe_key,
                conversation_id=request.conversation_id,
            ),
        )
        response = pb.NotifyResponse(created=outcome.created, pushed=outcome.pushed)
        if outcome.notification is not None:
            response.notification.CopyFrom(notification_to_proto(outcome.notification))
        return response
