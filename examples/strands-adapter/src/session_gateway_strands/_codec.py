"""JSON encoding and decoding: one ``orjson`` pass per request, Strands' bytes convention kept."""

from __future__ import annotations

import base64
from enum import Enum
from typing import Any, cast

import orjson
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType, decode_bytes_values

_BYTES_MARK = b'"__bytes_encoded__"'


def _default(obj: Any) -> Any:
    """What orjson cannot encode natively: bytes the way Strands' ``encode_bytes_values`` does."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"__bytes_encoded__": True, "data": base64.b64encode(bytes(obj)).decode()}
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON; bytes become ``{"__bytes_encoded__": true, "data": <base64>}``."""
    return orjson.dumps(value, default=_default)


def loads(data: bytes) -> Any:
    """Parses JSON."""
    return orjson.loads(data)


def enum_value(value: Any) -> str:
    """A ``SessionType`` (or a raw string) as the string the gateway stores."""
    return str(value.value if isinstance(value, Enum) else value)


def session_from(data: dict[str, Any]) -> Session:
    """A Strands ``Session`` from the gateway's session JSON."""
    raw_type = str(data.get("session_type", SessionType.AGENT.value))
    try:
        session_type = SessionType(raw_type)
    except ValueError:  # a type Strands does not know (set by another client): kept as the raw string
        session_type = cast(SessionType, raw_type)
    return Session(
        session_id=data["session_id"],
        session_type=session_type,
        created_at=data["created_at"],
        updated_at=data["updated_at"],
    )


def agent_body(agent: SessionAgent, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The agent record sent to the gateway (``SessionAgent.to_dict()`` without the server-owned times)."""
    body: dict[str, Any] = {
        "agent_id": agent.agent_id,
        "state": agent.state,
        "conversation_manager_state": agent.conversation_manager_state,
        "_internal_state": agent._internal_state,
    }
    if extra:
        body.update(extra)
    return body


def agent_from(data: dict[str, Any], raw: bytes | None = None) -> SessionAgent:
    """A Strands ``SessionAgent`` from the gateway's agent JSON (bytes decoded only when present)."""
    if raw is not None and _BYTES_MARK not in raw:
        return SessionAgent(
            agent_id=data["agent_id"],
            state=data.get("state", {}),
            conversation_manager_state=data.get("conversation_manager_state", {}),
            _internal_state=data.get("_internal_state", {}),
            created_at=data.get("created_at", ""),
            updated_at=data.get("updated_at", ""),
        )
    return SessionAgent.from_dict(data)


def message_body(message: SessionMessage, event_loop_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``POST …/messages`` and ``PUT …/messages/{mid}`` take for a Strands message."""
    body: dict[str, Any] = {"message_id": message.message_id, "message": message.message}
    if message.redact_message is not None:
        body["redact_message"] = message.redact_message
    metrics = event_loop_metrics if event_loop_metrics is not None else message_metrics(message.message)
    if metrics:
        body["event_loop_metrics"] = metrics
    return body


def message_metrics(message: Any) -> dict[str, Any]:
    """The usage and metrics Strands keeps in a message's metadata, flattened for ``event_loop_metrics``
    (``{"inputTokens": 10, "outputTokens": 5, "totalTokens": 15, "latencyMs": 420, ...}``)."""
    meta = message.get("metadata") if isinstance(message, dict) else None
    if not isinstance(meta, dict):
        return {}
    out: dict[str, Any] = {}
    for part in ("usage", "metrics"):
        values = meta.get(part)
        if isinstance(values, dict):
            out.update(values)
    return out


def messages_from(items: list[dict[str, Any]], raw: bytes) -> list[SessionMessage]:
    """Strands ``SessionMessage`` objects from the gateway's message JSON."""
    if _BYTES_MARK in raw:
        return [SessionMessage.from_dict(m) for m in items]
    return [
        SessionMessage(
            message=m["message"],
            message_id=m["message_id"],
            redact_message=m.get("redact_message"),
            created_at=m.get("created_at", ""),
            updated_at=m.get("updated_at", ""),
        )
        for m in items
    ]


def decode_bytes(value: Any) -> Any:
    """Strands' bytes convention decoded (for values read outside a message)."""
    return decode_bytes_values(value)
