"""A Strands model that streams canned replies: no network, deterministic."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any, TypeVar

from pydantic import BaseModel
from strands.models import Model
from strands.types.content import Messages
from strands.types.streaming import StreamEvent
from strands.types.tools import ToolSpec

T = TypeVar("T", bound=BaseModel)


def text(reply: str) -> dict[str, Any]:
    """An assistant reply made of one text block."""
    return {"role": "assistant", "content": [{"text": reply}]}


def tool_call(name: str, tool_use_id: str, tool_input: dict[str, Any], say: str = "") -> dict[str, Any]:
    """An assistant reply that calls a tool."""
    content: list[dict[str, Any]] = [{"text": say}] if say else []
    content.append({"toolUse": {"name": name, "toolUseId": tool_use_id, "input": tool_input}})
    return {"role": "assistant", "content": content}


def guardrail(redact_user_with: str, reply: str) -> dict[str, Any]:
    """A reply whose guardrail blocks the user's input (as Bedrock guardrails do)."""
    return {"role": "assistant", "content": [{"text": reply}], "redact_user": redact_user_with}


USAGE = {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}
"""The token usage every scripted reply reports."""


class ScriptedModel(Model):
    """Streams the given replies in order, one per model call."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.replies = list(replies)
        self.calls: list[Messages] = []

    def update_config(self, **model_config: Any) -> None:
        pass

    def get_config(self) -> dict[str, Any]:
        return {}

    async def structured_output(
        self, output_model: type[T], prompt: Messages, system_prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[dict[str, T | Any], None]:
        raise NotImplementedError
        yield {}  # pragma: no cover

    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterable[StreamEvent]:
        if not self.replies:
            raise AssertionError("the scripted model ran out of replies")
        self.calls.append(json.loads(json.dumps(messages)))
        reply = self.replies.pop(0)
        for event in _events(reply):
            yield event


def _events(reply: dict[str, Any]) -> list[StreamEvent]:
    stop = "end_turn"
    events: list[StreamEvent] = [{"messageStart": {"role": "assistant"}}]
    for block in reply["content"]:
        if "text" in block:
            events += [
                {"contentBlockStart": {"start": {}}},
                {"contentBlockDelta": {"delta": {"text": block["text"]}}},
                {"contentBlockStop": {}},
            ]
        elif "toolUse" in block:
            use = block["toolUse"]
            stop = "tool_use"
            events += [
                {"contentBlockStart": {"start": {"toolUse": {"name": use["name"], "toolUseId": use["toolUseId"]}}}},
                {"contentBlockDelta": {"delta": {"toolUse": {"input": json.dumps(use["input"])}}}},
                {"contentBlockStop": {}},
            ]
    events.append({"metadata": {"usage": USAGE, "metrics": {"latencyMs": 42}}})  # type: ignore[typeddict-item]
    if "redact_user" in reply:
        events.append({"redactContent": {"redactUserContentMessage": reply["redact_user"]}})
        stop = "guardrail_intervened"
    events.append({"messageStop": {"stopReason": stop}})  # type: ignore[typeddict-item]
    return events
