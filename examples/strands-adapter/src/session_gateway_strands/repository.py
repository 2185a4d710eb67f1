"""A Strands ``SessionRepository`` that stores sessions in a Session Gateway over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import httpx
from strands.session.session_repository import SessionRepository
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType, encode_bytes_values
from typing_extensions import Self

from .errors import GatewayAuthError, GatewayError

if TYPE_CHECKING:
    from strands.multiagent import MultiAgentBase

__all__ = ["MULTI_AGENT_PREFIX", "GatewaySessionRepository"]

MULTI_AGENT_PREFIX = "multi_agent:"
"""Multi-agent (Graph, Swarm) state is stored as an agent record with this id prefix."""

_MULTI_AGENT_FIELD = "multi_agent_state"
_USER_AGENT = "session-gateway-strands/0.1"


class GatewaySessionRepository(SessionRepository):
    """Strands ``SessionRepository`` over the Session Gateway HTTP API (``/v1``).

    Reads of a missing session, agent or message answer ``None``; every other failure raises
    :class:`GatewayError` (:class:`GatewayAuthError` for 401/403) carrying the gateway's code
    and message. Requests that are safe to repeat (reads, message writes with their explicit id)
    are retried on connection errors, 429 and 503; connection failures are retried for every request.

    Args:
        base_url: The gateway's address, e.g. ``http://127.0.0.1:8080``.
        api_key: Sent as ``Authorization: Bearer <key>`` when the gateway has ``[auth] mode = "keys"``.
        timeout: Seconds (or an ``httpx.Timeout``) for each request.
        page_size: Messages asked for per request when listing; at most the gateway's
            ``server.max_page_size`` (1000 by default).
        use_if_match: Send the agent version last seen as ``If-Match`` when updating an agent, so
            two processes writing the same agent fail (412 ``version_mismatch``) instead of
            overwriting each other.
        retries: How many times a retryable request is repeated.
        client: An ``httpx.Client`` to use instead of a new one (it is not closed by :meth:`close`).
        headers: Extra headers for every request.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        page_size: int = 1000,
        use_if_match: bool = True,
        retries: int = 2,
        client: httpx.Client | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Create the repository; no request is made until a method is called."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._base = base_url.rstrip("/")
        self._page_size = page_size
        self._use_if_match = use_if_match
        self._retries = max(0, retries)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._headers: dict[str, str] = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._headers.update(headers or {})
        self._versions: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP client (if this repository created it)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Self:
        """Use as a context manager that closes the client."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the client."""
        self.close()

    # -- sessions ----------------------------------------------------------------------------

    def create_session(self, session: Session, **kwargs: Any) -> Session:
        """Create the session (409 ``session_exists`` if it already exists)."""
        body = {"session_id": session.session_id, "session_type": _enum_value(session.session_type)}
        return _session(self._json("POST", "/v1/sessions", body=body))

    def read_session(self, session_id: str, **kwargs: Any) -> Session | None:
        """Read a session, or ``None`` if it does not exist."""
        data = self._json("GET", _path(session_id), missing_ok=True)
        return None if data is None else _session(data)

    def delete_session(self, session_id: str, **kwargs: Any) -> None:
        """Delete a session and everything in it (not part of the Strands interface)."""
        self._request("DELETE", _path(session_id))

    # -- agents ------------------------------------------------------------------------------

    def create_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        """Store a new agent."""
        self._put_agent(session_id, session_agent.agent_id, _agent_body(session_agent), if_match=False)

    def read_agent(self, session_id: str, agent_id: str, **kwargs: Any) -> SessionAgent | None:
        """Read an agent, or ``None`` if it does not exist."""
        data = self._get_agent(session_id, agent_id)
        return None if data is None else SessionAgent.from_dict(data)

    def update_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        """Replace an agent's state, guarded by ``If-Match`` when its version is known."""
        self._put_agent(session_id, session_agent.agent_id, _agent_body(session_agent), if_match=True)

    # -- messages ----------------------------------------------------------------------------

    def create_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Append a message with its explicit id; re-sending the same content is a no-op."""
        path = _path(session_id, agent_id, "messages")
        stored = self._json("POST", path, body=_message_body(session_message), idempotent=True)
        _stamp(session_message, stored)

    def read_message(self, session_id: str, agent_id: str, message_id: int, **kwargs: Any) -> SessionMessage | None:
        """Read one message, or ``None`` if it (or its agent or session) does not exist."""
        data = self._json("GET", _path(session_id, agent_id, "messages", str(message_id)), missing_ok=True)
        return None if data is None else SessionMessage.from_dict(data)

    def update_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Replace a message (Strands does this to store ``redact_message``)."""
        path = _path(session_id, agent_id, "messages", str(session_message.message_id))
        stored = self._json("PUT", path, body=_message_body(session_message), idempotent=True)
        _stamp(session_message, stored)

    def list_messages(
        self, session_id: str, agent_id: str, limit: int | None = None, offset: int = 0, **kwargs: Any
    ) -> list[SessionMessage]:
        """List messages in id order from ``offset``; all of them (page by page) when ``limit`` is None."""
        path = _path(session_id, agent_id, "messages")
        out: list[SessionMessage] = []
        pos = max(0, offset)
        while limit is None or len(out) < limit:
            want = self._page_size if limit is None else min(self._page_size, limit - len(out))
            data = self._json("GET", path, params={"limit": want, "offset": pos})
            page = cast(list[dict[str, Any]], data.get("messages") or [])
            out.extend(SessionMessage.from_dict(m) for m in page)
            pos += len(page)
            if not page or pos >= int(data.get("total", 0)):
                break
        return out

    # -- multi-agent (Graph, Swarm) -----------------------------------------------------------

    def create_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        """Store a multi-agent's state as the agent record ``multi_agent:<id>``."""
        body = {_MULTI_AGENT_FIELD: encode_bytes_values(multi_agent.serialize_state())}
        self._put_agent(session_id, MULTI_AGENT_PREFIX + multi_agent.id, body, if_match=False)

    def read_multi_agent(self, session_id: str, multi_agent_id: str, **kwargs: Any) -> dict[str, Any] | None:
        """Read a multi-agent's serialized state, or ``None`` if none is stored."""
        data = self._get_agent(session_id, MULTI_AGENT_PREFIX + multi_agent_id)
        state = None if data is None else data.get(_MULTI_AGENT_FIELD)
        return cast(dict[str, Any], state) if isinstance(state, dict) else None

    def update_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        """Replace a multi-agent's state."""
        body = {_MULTI_AGENT_FIELD: encode_bytes_values(multi_agent.serialize_state())}
        self._put_agent(session_id, MULTI_AGENT_PREFIX + multi_agent.id, body, if_match=True)

    # -- HTTP --------------------------------------------------------------------------------

    def _get_agent(self, session_id: str, agent_id: str) -> dict[str, Any] | None:
        resp = self._request("GET", _path(session_id, agent_id), missing_ok=True)
        if resp is None:
            return None
        data: dict[str, Any] = _decode(resp)
        self._remember(session_id, agent_id, data)
        return data

    def _put_agent(self, session_id: str, agent_id: str, body: dict[str, Any], *, if_match: bool) -> None:
        headers: dict[str, str] = {}
        if if_match and self._use_if_match:
            with self._lock:
                version = self._versions.get((session_id, agent_id))
            if version is not None:
                headers["If-Match"] = f'"{version}"'
        resp = self._request("PUT", _path(session_id, agent_id), body=body, headers=headers)
        assert resp is not None
        self._remember(session_id, agent_id, _decode(resp))

    def _remember(self, session_id: str, agent_id: str, agent: dict[str, Any]) -> None:
        version = agent.get("version")
        if isinstance(version, int):
            with self._lock:
                self._versions[(session_id, agent_id)] = version

    def _json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        missing_ok: bool = False,
        idempotent: bool = False,
    ) -> Any:
        resp = self._request(method, path, body=body, params=params, missing_ok=missing_ok, idempotent=idempotent)
        return None if resp is None else _decode(resp)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        missing_ok: bool = False,
        idempotent: bool = False,
    ) -> httpx.Response | None:
        """Sends one request; answers None for a gateway 404 when ``missing_ok``, raises on any other failure."""
        hdrs = {**self._headers, **(headers or {})}
        content: bytes | None = None
        if body is not None:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            hdrs["Content-Type"] = "application/json"
        retryable = idempotent or method == "GET"
        attempt = 0
        while True:
            try:
                resp = self._client.request(method, self._base + path, content=content, params=params, headers=hdrs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # nothing was sent: always safe to repeat
                if attempt < self._retries:
                    attempt += 1
                    time.sleep(0.1 * 2**attempt)
                    continue
                raise GatewayError(None, "transport_error", f"{method} {path}: {e!r}") from e
            except httpx.HTTPError as e:
                if retryable and attempt < self._retries:
                    attempt += 1
                    time.sleep(0.1 * 2**attempt)
                    continue
                raise GatewayError(None, "transport_error", f"{method} {path}: {e!r}") from e
            if resp.status_code in (429, 503) and retryable and attempt < self._retries:
                attempt += 1
                time.sleep(min(5.0, _retry_after(resp) or 0.1 * 2**attempt))
                continue
            if resp.is_success:
                return resp
            error = _error(resp)
            if missing_ok and resp.status_code == 404 and error.code == "not_found":
                return None
            raise error


def _path(session_id: str, *rest: str) -> str:
    """``/v1/sessions/{sid}/agents/{aid}/...`` with every id percent-encoded."""
    parts = [quote(session_id, safe="")]
    if rest:
        parts += ["agents", quote(rest[0], safe=""), *(quote(p, safe="") for p in rest[1:])]
    return "/v1/sessions/" + "/".join(parts)


def _enum_value(value: Any) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def _session(data: dict[str, Any]) -> Session:
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


def _agent_body(agent: SessionAgent) -> dict[str, Any]:
    body = agent.to_dict()
    for server_owned in ("created_at", "updated_at"):
        body.pop(server_owned, None)
    return body


def _message_body(message: SessionMessage) -> dict[str, Any]:
    d = message.to_dict()  # base64-encodes bytes (images, documents) the way Strands reads them back
    body: dict[str, Any] = {"message_id": d["message_id"], "message": d["message"]}
    if d.get("redact_message") is not None:
        body["redact_message"] = d["redact_message"]
    metrics = _metrics(d["message"])
    if metrics:
        body["event_loop_metrics"] = metrics
    return body


def _metrics(message: Any) -> dict[str, Any]:
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


def _stamp(message: SessionMessage, stored: Any) -> None:
    """Copies the gateway's timestamps onto the caller's message."""
    if isinstance(stored, dict):
        message.created_at = stored.get("created_at", message.created_at)
        message.updated_at = stored.get("updated_at", message.updated_at)


def _decode(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError as e:
        raise GatewayError(resp.status_code, "invalid_response", f"response is not JSON: {resp.text[:200]!r}") from e


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _error(resp: httpx.Response) -> GatewayError:
    code, message = f"http_{resp.status_code}", resp.text[:500] or resp.reason_phrase
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            code, message = str(err.get("code", code)), str(err.get("message", message))
    except (ValueError, AttributeError):
        pass
    kind = GatewayAuthError if resp.status_code in (401, 403) else GatewayError
    return kind(resp.status_code, code, message)
