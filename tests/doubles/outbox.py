"""`InMemoryOutbox`: the orchestrator's `AnswerOutbox` as a list, for tests of the turn."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.errors import Unavailable
from orchestrator.records import AssistantMessage


@dataclass
class InMemoryOutbox:
    """Keeps (user id, conversation id, answer) in `kept`; `down` makes it refuse like a dead Redis."""

    kept: list[tuple[str, str, AssistantMessage]] = field(default_factory=list)
    down: bool = False

    async def put(self, user_id: str, conversation_id: str, message: AssistantMessage) -> None:
        if self.down:
            raise Unavailable("the answer outbox is unavailable")
        self.kept.append((user_id, conversation_id, message))
