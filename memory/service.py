"""The servicers of memory.proto: proto in → domain → proto out.

The user is always the verified caller (`mesh.context.principal()`), never a field of the request.
Field rules (lengths, ids, ranges) are the contract's and were checked before a handler runs
(`mesh.validation`); what remains here are rules that depend on this deployment or on meaning (the
embedding dimension, JSON values, the role of a stored answer). Everything is checked before anything is
written; errors are `mesh.errors` exceptions, turned into statuses by the shared ErrorInterceptor.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from athena.account.v1 import account_pb2
from athena.chat.v1 import chat_pb2
from athena.memory.v1 import memory_pb2, memory_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from memory import convert
from memory.conversation_recall import ConversationQuery, ConversationRecaller
from memory.domain import (
    ConversationRecord,
    MemoryRecord,
    MessageRecord,
    MessageStatus,
    NewAssistantMessage,
    NewMemory,
    NewTurn,
    RecallHit,
    TurnStart,
    TurnState,
    UserAgent,
    optional_embedding,
    require_json,
    validate_tool_calls,
)
from memory.embedding_models import EmbeddingModel
from memory.embeddings import Embedder
from memory.extraction import FactJobs
from memory.pagination import Cursor, decode_page_token, encode_page_token
from memory.recall import Recaller, RecallQuery
from memory.reembed import Reembedder
from memory.stores import AgentStore, ConversationStore, EphemeralStore, MemoryStore, UserDataStore, Vector
from mesh.context import principal
from mesh.errors import AthenaError, FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from mesh.quiet import Quiet

Context = grpc.aio.ServicerContext[Any, Any]

_MEMORY_PAGE = "memories"
_CONVERSATION_PAGE = "conversations"


def caller_id() -> str:
    """The verified caller's user id (the token's subject, a UUID)."""
    subject = principal().user_id
    try:
        return str(uuid.UUID(subject))
    except ValueError:
        raise Unauthenticated("the token's subject is not a user id") from None


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MemoryDefaults:
    """Configured values the memory servicer fills in for zeros."""

    dimension: int
    embedding_model: str = ""
    """The current embedding model's name: a caller's precomputed embedding must be of it."""
    recall_k: int = 8
    ephemeral_ttl_seconds: float = 300.0


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(
        self,
        store: MemoryStore,
        recaller: Recaller,
        embedder: Embedder,
        ephemeral: EphemeralStore,
        defaults: MemoryDefaults,
        *,
        reembedder: Reembedder | None = None,
    ) -> None:
        self._store = store
        self._recaller = recaller
        self._embedder = embedder
        self._ephemeral = ephemeral
        self._defaults = defaults
        self._reembedder = reembedder

    async def Remember(
        self, request: memory_pb2.RememberRequest, context: Context
    ) -> memory_pb2.RememberResponse:
        user_id = caller_id()
        scope = convert.scope_from_proto(request.scope)
        if scope is None:  # the contract allows only defined scopes; this build may not know a new one
            raise InvalidArgument("scope", "is not a scope this service knows")
        memory = NewMemory(
            text=request.text,
            scope=scope,
            agent_id=request.agent_id,
            key=request.key,
            embedding=self._caller_embedding(request.embedding, request.embedding_model),
        )
        embedding = memory.embedding
        if embedding is None:
            (embedding,) = await self._embedder.embed([memory.text])
        record, created = await self._store.upsert(user_id, memory, embedding)
        return memory_pb2.RememberResponse(memory=convert.memory_to_proto(record), created=created)

    def _caller_embedding(self, values: Any, model: str) -> tuple[float, ...] | None:
        """A precomputed embedding, accepted only as the current model's (the contract requires its
        model's name with it): another model's vector would be compared as if it were one."""
        embedding = optional_embedding(values, self._defaults.dimension)
        if embedding is not None and model != self._defaults.embedding_model:
            raise FailedPrecondition(
                f"embedding_model {model!r} is not the current embedding model "
                f"{self._defaults.embedding_model!r}; send the text alone"
            )
        return embedding

    def _recall_query(
        self, text: str, agent_id: str, k: int, embedding: Any = (), embedding_model: str = ""
    ) -> RecallQuery:
        return RecallQuery(
            text=text,
            agent_id=agent_id,
            k=k,
            embedding=self._caller_embedding(embedding, embedding_model),
        )

    async def Recall(self, request: memory_pb2.RecallRequest, context: Context) -> memory_pb2.RecallResponse:
        user_id = caller_id()
        k = request.k or self._defaults.recall_k
        query = self._recall_query(
            request.query, request.agent_id, k, request.embedding, request.embedding_model
        )
        hits = await self._recaller.recall(user_id, query)
        return memory_pb2.RecallResponse(results=[convert.hit_to_proto(hit) for hit in hits])

    async def Forget(self, request: memory_pb2.ForgetRequest, context: Context) -> memory_pb2.ForgetResponse:
        user_id = caller_id()
        if request.WhichOneof("target") == "memory_id":
            forgotten = await self._store.delete(user_id, [request.memory_id])
            if not forgotten:
                raise NotFound("memory not found")
        else:  # the contract requires one of the two
            query = self._recall_query(request.query, request.agent_id, request.limit or 1)
            hits = await self._recaller.recall(user_id, query)
            forgotten = await self._store.delete(user_id, [hit.memory.id for hit in hits])
        return memory_pb2.ForgetResponse(forgotten_ids=forgotten)

    async def ListMemories(
        self, request: memory_pb2.ListMemoriesRequest, context: Context
    ) -> memory_pb2.ListMemoriesResponse:
        user_id = caller_id()
        size = request.page_size or 50
        after = decode_page_token(request.page_token, _MEMORY_PAGE)
        memories = await self._store.list(user_id, size + 1, after, include_history=request.include_history)
        next_token = _next_token(_MEMORY_PAGE, memories, size, lambda m: Cursor(m.created_at, m.id))
        return memory_pb2.ListMemoriesResponse(
            memories=[convert.memory_to_proto(m) for m in memories[:size]], next_page_token=next_token
        )

    async def CorrectMemory(
        self, request: memory_pb2.CorrectMemoryRequest, context: Context
    ) -> memory_pb2.CorrectMemoryResponse:
        user_id = caller_id()
        (embedding,) = await self._embedder.embed([request.text])
        record = await self._store.correct(user_id, request.memory_id, request.text, embedding)
        return memory_pb2.CorrectMemoryResponse(memory=convert.memory_to_proto(record))

    async def GetMemoryHistory(
        self, request: memory_pb2.GetMemoryHistoryRequest, context: Context
    ) -> memory_pb2.GetMemoryHistoryResponse:
        versions = await self._store.history(caller_id(), request.memory_id)
        return memory_pb2.GetMemoryHistoryResponse(versions=[convert.memory_to_proto(v) for v in versions])

    async def GetMemorySettings(
        self, request: memory_pb2.GetMemorySettingsRequest, context: Context
    ) -> memory_pb2.GetMemorySettingsResponse:
        learns = await self._store.learns_facts(caller_id())
        return memory_pb2.GetMemorySettingsResponse(
            settings=account_pb2.MemorySettings(learn_from_conversations=learns)
        )

    async def SetMemorySettings(
        self, request: memory_pb2.SetMemorySettingsRequest, context: Context
    ) -> memory_pb2.SetMemorySettingsResponse:
        learns = await self._store.set_learns_facts(caller_id(), request.settings.learn_from_conversations)
        return memory_pb2.SetMemorySettingsResponse(
            settings=account_pb2.MemorySettings(learn_from_conversations=learns)
        )

    async def PutEphemeral(
        self, request: memory_pb2.PutEphemeralRequest, context: Context
    ) -> memory_pb2.PutEphemeralResponse:
        user_id = caller_id()
        value = require_json(request.value_json, "value_json")
        ttl = request.ttl.ToTimedelta().total_seconds() or self._defaults.ephemeral_ttl_seconds
        await self._ephemeral.put(user_id, request.namespace, request.key, value, ttl)
        return memory_pb2.PutEphemeralResponse()

    async def GetEphemeral(
        self, request: memory_pb2.GetEphemeralRequest, context: Context
    ) -> memory_pb2.GetEphemeralResponse:
        user_id = caller_id()
        value = await self._ephemeral.get(user_id, request.namespace, request.key)
        if value is None:
            return memory_pb2.GetEphemeralResponse(found=False)
        return memory_pb2.GetEphemeralResponse(found=True, value_json=value)

    async def ForgetEphemeral(
        self, request: memory_pb2.ForgetEphemeralRequest, context: Context
    ) -> memory_pb2.ForgetEphemeralResponse:
        deleted = await self._ephemeral.forget(request.user_id, list(request.namespaces))
        return memory_pb2.ForgetEphemeralResponse(deleted=deleted)

    async def GetEmbeddingStatus(
        self, request: memory_pb2.GetEmbeddingStatusRequest, context: Context
    ) -> memory_pb2.GetEmbeddingStatusResponse:
        # For no user: admitted by the deployment's service key.
        if self._reembedder is None:
            raise FailedPrecondition("this memory service does not embed in the background")
        progress = await self._reembedder.progress()
        return memory_pb2.GetEmbeddingStatusResponse(
            model=progress.model.name,
            dimension=progress.model.dimension,
            users_done=progress.users_done,
            users_total=progress.users_total,
            embedded=progress.embedded,
            finished=progress.finished,
            leased_by=progress.leased_by,
        )


def _seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9  # as ToTimedelta().total_seconds(), without a timedelta


def _next_token(kind: str, items: list[Any], size: int, cursor: Any) -> str:
    """A token after the last item of the page, or "" when `items` (fetched size + 1) shows no more."""
    if len(items) <= size:
        return ""
    return encode_page_token(kind, cursor(items[size - 1]))


RECALL_QUERY_LENGTH = 4000
"""Characters of a message a turn's recall embeds (Recall's own limit on a query)."""


class ConversationServicer(memory_pb2_grpc.ConversationServiceServicer):
    def __init__(
        self,
        store: ConversationStore,
        recaller: Recaller,
        *,
        recall_k: int = 8,
        turn_lease_seconds: float = 30.0,
        fact_jobs: FactJobs | None = None,
        conversation_recaller: ConversationRecaller | None = None,
        reembedder: Reembedder | None = None,
        quiet: Quiet | None = None,
    ) -> None:
        self._store = store
        self._quiet = quiet
        self._recaller = recaller
        self._recall_k = recall_k
        self._turn_lease_seconds = turn_lease_seconds
        self._fact_jobs = fact_jobs
        self._conversation_recaller = conversation_recaller
        self._reembedder = reembedder
        self._foreign_models: set[EmbeddingModel] = set()

    def _turn_embedding(self, recall: memory_pb2.TurnRecall) -> tuple[float, ...] | None:
        """The caller's vector of the turn's text when it is of the current model (name and dimension); one
        of another model (its caller configured with another model than this service) is ignored, and the
        text embedded here: a turn is never refused over it."""
        if not recall.embedding:
            return None
        current = self._recaller.model
        sent = EmbeddingModel(recall.embedding_model, len(recall.embedding))
        if sent != current:
            if sent not in self._foreign_models:  # once per model: every turn would say the same
                self._foreign_models.add(sent)
                log.warning(
                    "a caller embeds turns with another model than recall compares with; its vectors are "
                    "ignored and turns embedded here (set its embedding model to this service's)",
                    extra={"sent_model": str(sent), "current_model": str(current)},
                )
            return None
        return optional_embedding(recall.embedding, current.dimension, "recall.embedding")

    def _stored(self, user_id: str, message: MessageRecord) -> None:
        """A stored message is embedded in the background (conversation recall), off this call's path."""
        if self._reembedder is not None:
            self._reembedder.message_stored(user_id, message.id)

    def _answering(self, start: TurnStart, lease_seconds: float) -> None:
        """A turn being answered holds background work off (`mesh.quiet`) until its answer is stored, or
        its lease runs out: its answer streams meanwhile, and nothing this service could defer should
        compete with it (nor with the other turns streaming)."""
        if self._quiet is not None and start.state is TurnState.ANSWER:
            self._quiet.hold(start.answer_id, lease_seconds)

    async def StartTurn(
        self, request: memory_pb2.StartTurnRequest, context: Context
    ) -> memory_pb2.StartTurnResponse:
        user_id = caller_id()
        chat = request.chat
        turn = NewTurn(
            conversation_id=chat.conversation_id or None,
            agent_id=chat.agent_id,
            text=chat.text,
            client_request_id=chat.client_request_id or None,
            history_messages=request.history_messages,
            lease_seconds=_seconds(request.lease) or self._turn_lease_seconds,
        )
        if not request.HasField("recall"):
            start = await self._store.start_turn(user_id, turn)
            if not start.replayed:
                self._stored(user_id, start.message)
            self._answering(start, turn.lease_seconds)
            return convert.turn_start_to_proto(start)
        query = RecallQuery(
            text=chat.text.strip()[:RECALL_QUERY_LENGTH],
            agent_id=chat.agent_id,
            k=request.recall.k or self._recall_k,
            embedding=self._turn_embedding(request.recall),
        )
        if query.embedding is not None:
            start, hits = await self._start_searching(user_id, turn, query, query.embedding)
        else:
            # The recall reads and changes nothing: it runs (embedding the text first) while the message is
            # stored.
            recall = asyncio.create_task(self._recall(user_id, query))
            try:
                start = await self._store.start_turn(user_id, turn)
            except BaseException:
                recall.cancel()
                raise
            hits = await recall
        if not start.replayed:
            self._stored(user_id, start.message)
        self._answering(start, turn.lease_seconds)
        response = convert.turn_start_to_proto(start)
        if hits is None:
            response.recall_failed = True
        else:
            response.memories.extend(convert.hit_to_proto(hit) for hit in hits)
        return response

    async def _start_searching(
        self, user_id: str, turn: NewTurn, query: RecallQuery, embedding: Vector
    ) -> tuple[TurnStart, list[RecallHit] | None]:
        """The turn stored and the recall's candidates read by one statement (`start_turn_searching`);
        recalled on its own after a repeated request, which takes another way."""
        now = datetime.now(UTC)
        search = self._recaller.search(query, embedding, now)
        searching = time.perf_counter()
        start, found = await self._store.start_turn_searching(user_id, turn, search)
        if found is None:
            return start, await self._recall(user_id, query)
        return start, self._recaller.ranked(query, found, now, searched_in=time.perf_counter() - searching)

    async def _recall(self, user_id: str, query: RecallQuery) -> list[RecallHit] | None:
        """The hits, or None when recall failed: a turn goes on without memories rather than not at all."""
        try:
            return await self._recaller.recall(user_id, query)
        except AthenaError as exc:
            log.warning(
                "recall for a turn failed; it is answered without memories", extra={"error": exc.message}
            )
            return None

    async def RenewTurn(
        self, request: memory_pb2.RenewTurnRequest, context: Context
    ) -> memory_pb2.RenewTurnResponse:
        await self._store.renew_turn(caller_id(), request.message_id, _seconds(request.lease))
        return memory_pb2.RenewTurnResponse()

    async def AppendAssistantMessage(
        self, request: memory_pb2.AppendAssistantMessageRequest, context: Context
    ) -> memory_pb2.AppendAssistantMessageResponse:
        stored = await self._append(caller_id(), request)
        return memory_pb2.AppendAssistantMessageResponse(message=convert.message_to_proto(stored))

    async def DeliverAnswer(
        self, request: memory_pb2.DeliverAnswerRequest, context: Context
    ) -> memory_pb2.DeliverAnswerResponse:
        # For no caller: admitted by the deployment's service key; the user is the request's.
        await self._append(request.user_id, request.append)
        return memory_pb2.DeliverAnswerResponse()

    async def _append(self, user_id: str, request: memory_pb2.AppendAssistantMessageRequest) -> MessageRecord:
        message = request.message
        if message.role == chat_pb2.ROLE_USER:
            raise InvalidArgument("message.role", "must be ROLE_ASSISTANT (user messages start a turn)")
        status = convert.status_from_proto(message.status)
        if status is None:
            raise InvalidArgument("message.status", "is not a status this service knows")
        new = NewAssistantMessage(
            conversation_id=request.conversation_id,
            message_id=message.id or str(uuid.uuid4()),
            agent_id=message.agent_id,
            content=message.content,
            tool_calls=validate_tool_calls([convert.tool_call_from_proto(c) for c in message.tool_calls]),
            status=status,
            error=message.error,
        )
        stored = await self._store.append_assistant_message(user_id, new)
        if self._quiet is not None:
            self._quiet.release(stored.id)
        self._stored(user_id, stored)
        if self._fact_jobs is not None and stored.status is MessageStatus.COMPLETE:
            # After the answer streamed and was stored: learning its facts is off the turn's path, and
            # queueing it neither delays nor fails the call.
            self._fact_jobs.queue_soon(user_id, new.conversation_id, stored.id, stored.agent_id)
        return stored

    async def ListConversations(
        self, request: memory_pb2.ListConversationsRequest, context: Context
    ) -> memory_pb2.ListConversationsResponse:
        user_id = caller_id()
        size = request.page_size or 20
        after = decode_page_token(request.page_token, _CONVERSATION_PAGE)
        conversations = await self._store.list(user_id, size + 1, after)
        next_token = _next_token(
            _CONVERSATION_PAGE, conversations, size, lambda c: Cursor(c.updated_at, c.id)
        )
        return memory_pb2.ListConversationsResponse(
            conversations=[convert.conversation_to_proto(c) for c in conversations[:size]],
            next_page_token=next_token,
        )

    async def GetConversation(
        self, request: memory_pb2.GetConversationRequest, context: Context
    ) -> memory_pb2.GetConversationResponse:
        user_id = caller_id()
        conversation = await self._store.get(user_id, request.conversation_id, request.last_messages)
        return memory_pb2.GetConversationResponse(conversation=convert.conversation_to_proto(conversation))

    async def DeleteConversation(
        self, request: memory_pb2.DeleteConversationRequest, context: Context
    ) -> memory_pb2.DeleteConversationResponse:
        user_id = caller_id()
        await self._store.delete(user_id, request.conversation_id)
        return memory_pb2.DeleteConversationResponse()

    async def RecallConversations(
        self, request: memory_pb2.RecallConversationsRequest, context: Context
    ) -> memory_pb2.RecallConversationsResponse:
        user_id = caller_id()
        if self._conversation_recaller is None:
            raise FailedPrecondition("conversation recall is not configured")
        query = ConversationQuery(
            text=request.query,
            k=request.k or self._recall_k,
            agent_id=request.agent_id or None,
            since=request.since.ToDatetime(UTC) if request.HasField("since") else None,
            until=request.until.ToDatetime(UTC) if request.HasField("until") else None,
            exclude_conversation_id=request.exclude_conversation_id or None,
        )
        if self._reembedder is not None:  # what the user said a moment ago is found too
            await self._reembedder.indexed(user_id)
        hits = await self._conversation_recaller.recall(user_id, query)
        return memory_pb2.RecallConversationsResponse(
            results=[convert.message_hit_to_proto(hit) for hit in hits]
        )


class AgentServicer(memory_pb2_grpc.AgentServiceServicer):
    def __init__(self, store: AgentStore) -> None:
        self._store = store

    async def SyncAgents(
        self, request: memory_pb2.SyncAgentsRequest, context: Context
    ) -> memory_pb2.SyncAgentsResponse:
        # Acts for no user: the interceptor admitted the caller by the deployment's service key.
        await self._store.sync([convert.agent_from_proto(a) for a in request.agents])
        return memory_pb2.SyncAgentsResponse()

    async def ListAgents(
        self, request: memory_pb2.ListAgentsRequest, context: Context
    ) -> memory_pb2.ListAgentsResponse:
        agents = await self._store.list(caller_id())
        return memory_pb2.ListAgentsResponse(agents=[convert.user_agent_to_proto(a) for a in agents])

    async def SetAgentEnabled(
        self, request: memory_pb2.SetAgentEnabledRequest, context: Context
    ) -> memory_pb2.SetAgentEnabledResponse:
        user_id = caller_id()
        agent = await self._store.set_enabled(user_id, request.agent_id, request.enabled)
        return memory_pb2.SetAgentEnabledResponse(agent=convert.user_agent_to_proto(agent))


class UserDataServicer(memory_pb2_grpc.UserDataServiceServicer):
    def __init__(self, store: UserDataStore, ephemeral: EphemeralStore) -> None:
        self._store = store
        self._ephemeral = ephemeral

    async def ExportUserData(
        self, request: memory_pb2.ExportUserDataRequest, context: Context
    ) -> AsyncIterator[memory_pb2.ExportUserDataResponse]:
        user_id = caller_id()
        async for record in self._store.export(user_id):
            if isinstance(record, UserAgent):
                yield memory_pb2.ExportUserDataResponse(agent=convert.user_agent_to_proto(record))
            elif isinstance(record, ConversationRecord):
                yield memory_pb2.ExportUserDataResponse(conversation=convert.conversation_to_proto(record))
            elif isinstance(record, MemoryRecord):
                yield memory_pb2.ExportUserDataResponse(memory=convert.memory_to_proto(record))

    async def PurgeUser(
        self, request: memory_pb2.PurgeUserRequest, context: Context
    ) -> memory_pb2.PurgeUserResponse:
        user_id = caller_id()
        # PostgreSQL first (what matters most); if Redis is down the call fails UNAVAILABLE and a retry
        # finishes the job (both halves are idempotent).
        purged = await self._store.purge(user_id)
        keys = await self._ephemeral.purge(user_id)
        return memory_pb2.PurgeUserResponse(
            deleted_rows=purged.rows, deleted_keys=keys, data_key_destroyed=purged.data_key
        )
