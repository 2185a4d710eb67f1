"""``AsyncGatewaySessionManager``: the manager's surface as coroutines, for async services (FastAPI)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from strands.hooks.events import (
    AfterInvocationEvent,
    AfterMultiAgentInvocationEvent,
    AfterNodeCallEvent,
    AgentInitializedEvent,
    MessageAddedEvent,
    MultiAgentInitializedEvent,
)
from strands.hooks.registry import HookRegistry
from strands.types.exceptions import SessionException
from typing_extensions import Self

from . import _codec
from ._http import AsyncHttpPool, HttpPool, Response, TransportError
from .errors import GatewayError
from .manager import APPLICATION_NAME_KEY, GUARDRAIL_EVENTS_KEY, GatewaySessionManager
from .repository import _BATCH, _MAX_BATCH_OPS, Call, _headers, _path, error_from

if TYPE_CHECKING:
    from strands.types.tools import AgentTool

__all__ = ["AsyncGatewaySessionManager"]


class AsyncGatewaySessionManager(GatewaySessionManager):
    """:class:`GatewaySessionManager` for asyncio services: the same methods, as coroutines
    (``await manager.update_metadata({...})``), and the agent's writes made without blocking the event
    loop (Strands awaits the "message added" and "after invocation" hooks).

    Two steps stay synchronous because Strands calls them synchronously: reading or creating the
    session when the manager is constructed, and restoring the agent when it is constructed
    (``AgentInitializedEvent``), plus ``redact_latest_message``.

    Takes the arguments of :class:`GatewaySessionManager`, and ``async_pool`` to share an
    :class:`~session_gateway_strands.AsyncHttpPool` (one per event loop).
    """

    def __init__(
        self,
        session_id: str,
        base_url: str = "",
        api_key: str | None = None,
        *,
        async_pool: AsyncHttpPool | None = None,
        pool: HttpPool | None = None,
        timeout: float = 10.0,
        repository_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Connect to the gateway and read or create the session (a blocking request)."""
        super().__init__(
            session_id, base_url, api_key, pool=pool, timeout=timeout, repository_options=repository_options, **kwargs
        )
        opts = repository_options or {}
        if async_pool is None:
            async_pool = AsyncHttpPool(
                self.session_repository.pool.base_url,
                _headers(api_key, opts.get("headers")),
                timeout=timeout,
            )
            self._owns_async_pool = True
        else:
            self._owns_async_pool = False
        self.async_pool = async_pool
        self._retries = int(opts.get("retries", 2))

    async def aclose(self) -> None:
        """Close the connections (unless the pools are shared)."""
        self.close()
        if self._owns_async_pool:
            await self.async_pool.aclose()

    async def __aenter__(self) -> Self:
        """Use as an async context manager that closes the connections."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the connections."""
        await self.aclose()

    # -- Strands hooks (async where Strands allows it) -------------------------------------------

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        """Strands' hooks; "message added" and "after invocation" are coroutines."""
        registry.add_callback(AgentInitializedEvent, lambda event: self.initialize(event.agent))
        registry.add_callback(MessageAddedEvent, self._on_message_added_async)
        registry.add_callback(AfterInvocationEvent, self._after_invocation_async)
        registry.add_callback(MultiAgentInitializedEvent, lambda event: self.initialize_multi_agent(event.source))
        registry.add_callback(AfterNodeCallEvent, lambda event: self.sync_multi_agent(event.source))
        registry.add_callback(AfterMultiAgentInvocationEvent, lambda event: self.sync_multi_agent(event.source))

    async def _on_message_added_async(self, event: MessageAddedEvent) -> None:
        queued: list[tuple[str, Call]] = []
        token = _BATCH.set(queued)
        try:
            GatewaySessionManager.append_message(self, event.message, event.agent)
            GatewaySessionManager.sync_agent(self, event.agent)
        finally:
            _BATCH.reset(token)
        await self._flush(queued)

    async def _after_invocation_async(self, event: AfterInvocationEvent) -> None:
        queued: list[tuple[str, Call]] = []
        token = _BATCH.set(queued)
        try:
            GatewaySessionManager.sync_agent(self, event.agent)
        finally:
            _BATCH.reset(token)
        await self._flush(queued)

    # -- HTTP --------------------------------------------------------------------------------------

    async def _flush(self, queued: list[tuple[str, Call]]) -> None:
        repo = self.session_repository
        for i in range(0, len(queued), _MAX_BATCH_OPS):
            chunk = queued[i : i + _MAX_BATCH_OPS]
            calls = [c for _, c in chunk]
            if len(calls) == 1 or repo._batch_supported is False:
                for c in calls:
                    await self._run(c)
                continue
            try:
                resp = await self._send(
                    Call("POST", _path(self.session_id) + "/batch", {"ops": [c.batch_op for c in calls]})
                )
            except GatewayError as e:
                if e.status in (404, 405) and e.code in ("route_not_found", "method_not_allowed"):
                    repo._batch_supported = False
                    for c in calls:
                        await self._run(c)
                    continue
                for c, r in zip(calls, e.details.get("results") or []):
                    if c.done is not None:
                        c.done(r.get("body"), None)
                raise
            assert resp is not None
            repo._batch_supported = True
            for c, r in zip(calls, _codec.loads(resp.body)["results"]):
                if c.done is not None:
                    c.done(r.get("body"), None)

    async def _run(self, call: Call) -> Any:
        resp = await self._send(call)
        data = None if resp is None or not resp.body else _codec.loads(resp.body)
        return call.done(data, resp) if call.done is not None and data is not None else data

    async def _send(self, call: Call) -> Response | None:
        body = None if call.payload is None else _codec.dumps(call.payload)
        attempt = 0
        while True:
            try:
                resp = await self.async_pool.request(call.method, call.path, body, call.headers)
            except TransportError as e:
                if self.async_pool.closed:
                    raise GatewayError(None, "client_closed", "the connection pool was closed") from e
                if (call.idempotent or not e.sent) and attempt < self._retries:
                    attempt += 1
                    await asyncio.sleep(0.1 * 2**attempt)
                    continue
                raise GatewayError(None, "transport_error", f"{call.method} {call.path}: {e}") from e
            if 200 <= resp.status < 300:
                return resp
            if resp.status in (429, 503) and call.idempotent and attempt < self._retries:
                attempt += 1
                await asyncio.sleep(0.1 * 2**attempt)
                continue
            error = error_from(resp)
            if call.missing_ok and resp.status == 404 and error.code == "not_found":
                return None
            raise error

    def _sid(self) -> str:
        return _path(self.session_id)

    # -- the original library's methods, as coroutines ------------------------------------------

    async def get_application_name(self) -> str | None:
        """The application this session belongs to (metadata key ``application_name``)."""
        if self._application_name is None:
            value = (await self.get_metadata()).get(APPLICATION_NAME_KEY)
            self._application_name = value if isinstance(value, str) else None
        return self._application_name

    @property
    def application_name(self) -> str | None:
        """The application name given to the constructor (``await get_application_name()`` reads it)."""
        return self._application_name

    async def update_metadata(self, metadata: Mapping[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        """See :meth:`GatewaySessionManager.update_metadata`."""
        return cast(dict[str, Any], await self._run(Call("PATCH", self._sid() + "/metadata", dict(metadata))))

    async def get_metadata(self) -> dict[str, Any]:  # type: ignore[override]
        """See :meth:`GatewaySessionManager.get_metadata`."""
        return cast(dict[str, Any], await self._run(Call("GET", self._sid() + "/metadata")))

    async def delete_metadata(self, metadata_keys: list[str]) -> dict[str, Any]:  # type: ignore[override]
        """See :meth:`GatewaySessionManager.delete_metadata`."""
        if not metadata_keys:
            return await self.get_metadata()
        if any("," in k for k in metadata_keys):
            raise ValueError("metadata keys may not contain ','")
        query = quote(",".join(metadata_keys), safe=".,:@-_")
        return cast(dict[str, Any], await self._run(Call("DELETE", self._sid() + f"/metadata?keys={query}")))

    async def get_guardrail_events(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """See :meth:`GatewaySessionManager.get_guardrail_events`."""
        events = (await self.get_metadata()).get(GUARDRAIL_EVENTS_KEY) or {}
        values = [e for e in events.values() if isinstance(e, dict)] if isinstance(events, dict) else []
        return sorted(values, key=lambda e: str(e.get("timestamp", "")))

    async def add_feedback(self, feedback: Mapping[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        """See :meth:`GatewaySessionManager.add_feedback`."""
        return cast(dict[str, Any], await self._run(Call("POST", self._sid() + "/feedbacks", dict(feedback))))

    async def get_feedbacks(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """See :meth:`GatewaySessionManager.get_feedbacks`."""
        return cast(list[dict[str, Any]], (await self._run(Call("GET", self._sid() + "/feedbacks")))["feedbacks"])

    async def _agent_json(self, agent_id: str) -> dict[str, Any] | None:
        data = await self._run(Call("GET", _path(self.session_id, agent_id), missing_ok=True))
        if data is not None:
            self.session_repository._remember(self.session_id, agent_id, data)
        return cast("dict[str, Any] | None", data)

    async def get_agent_config(self, agent_id: str) -> dict[str, Any] | None:  # type: ignore[override]
        """See :meth:`GatewaySessionManager.get_agent_config`."""
        data = await self._agent_json(agent_id)
        if data is None:
            return None
        return {"agent_id": agent_id, "model": data.get("model"), "system_prompt": data.get("system_prompt")}

    async def update_agent_config(  # type: ignore[override]
        self, agent_id: str, model: str | None = None, system_prompt: str | None = None
    ) -> None:
        """See :meth:`GatewaySessionManager.update_agent_config`."""
        changes = {k: v for k, v in (("model", model), ("system_prompt", system_prompt)) if v is not None}
        if not changes:
            return
        for attempt in range(3):
            data = await self._agent_json(agent_id)
            if data is None:
                raise SessionException(f"agent {agent_id!r} does not exist in session {self.session_id!r}")
            body = {k: v for k, v in data.items() if k not in ("created_at", "updated_at", "version", "message_count")}
            body.update(changes)
            try:
                await self._run(self.session_repository._p_put_agent(self.session_id, agent_id, body, if_match=True))
            except GatewayError as e:
                if e.code == "version_mismatch" and attempt < 2:
                    continue
                raise
            self._config_of.setdefault(agent_id, {}).update(changes)
            return

    async def _agents(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], (await self._run(Call("GET", self._sid() + "/agents")))["agents"])

    async def list_agents(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """See :meth:`GatewaySessionManager.list_agents`."""
        keys = ("agent_id", "model", "system_prompt", "message_count", "created_at", "updated_at")
        return [{k: a.get(k) for k in keys} for a in await self._agents()]

    async def get_message_count(self, agent_id: str | None = None) -> int:  # type: ignore[override]
        """See :meth:`GatewaySessionManager.get_message_count`."""
        if agent_id is not None:
            data = await self._run(Call("GET", _path(self.session_id, agent_id, "messages") + "?limit=1&offset=0"))
            return int(data["total"])
        return sum(int(a.get("message_count") or 0) for a in await self._agents())

    def get_metadata_tool(self) -> AgentTool:
        """The ``manage_metadata`` tool (see :meth:`GatewaySessionManager.get_metadata_tool`), as a coroutine."""
        from strands import tool

        manager = self

        @tool(name="manage_metadata")
        async def manage_metadata(
            action: str, metadata: dict[str, Any] | None = None, keys: list[str] | None = None
        ) -> str:
            """Manage the session's metadata: get, set (or update), or delete fields.

            Args:
                action: "get", "set", "update" or "delete".
                metadata: For set/update: the fields to set, e.g. {"priority": "high"}.
                keys: For get: only these fields (all when omitted). For delete: the fields to remove.
            """
            try:
                act = action.lower()
                if act == "get":
                    current = await manager.get_metadata()
                    if keys:
                        found = {k: current[k] for k in keys if k in current}
                        if not found:
                            return f"No metadata found for keys: {keys}"
                        return f"Metadata retrieved: {json.dumps(found, default=str)}"
                    if not current:
                        return "No metadata stored in session"
                    return f"All metadata: {json.dumps(current, default=str)}"
                if act in ("set", "update"):
                    if not metadata:
                        return "Error: metadata dictionary required for set/update action"
                    await manager.update_metadata(metadata)
                    return f"Successfully updated metadata fields: {list(metadata)}"
                if act == "delete":
                    if not keys:
                        return "Error: keys list required for delete action"
                    await manager.delete_metadata(keys)
                    return f"Successfully deleted metadata fields: {keys}"
                return f"Error: unknown action {action!r}; use get, set, update or delete"
            except Exception as e:  # noqa: BLE001 - the agent sees the reason (e.g. a hook's denial) instead of a crash
                return f"Error: {e}"

        return manage_metadata
