"""``GatewaySessionManager``: the original library's ``MongoDBSessionManager`` surface over a Session Gateway."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from strands.hooks.events import (
    AfterInvocationEvent,
    AfterMultiAgentInvocationEvent,
    AfterNodeCallEvent,
    AgentInitializedEvent,
    MessageAddedEvent,
    MultiAgentInitializedEvent,
)
from strands.hooks.registry import HookRegistry
from strands.session.repository_session_manager import RepositorySessionManager
from strands.types.content import Message
from strands.types.exceptions import SessionException
from strands.types.session import SessionMessage
from typing_extensions import Self

from ._http import HttpPool
from .errors import GatewayError
from .repository import AGENT_EXTRA, GatewaySessionRepository

if TYPE_CHECKING:
    from strands.types.tools import AgentTool

__all__ = ["HOOK_ARGUMENTS_REPLACED", "GatewaySessionManager", "agent_config_of", "event_loop_metrics_of"]

HOOK_ARGUMENTS_REPLACED = (
    "{name} is not supported: hooks run in the gateway (sandboxed WASM plugins configured with [[hooks]] in "
    "gateway.toml, e.g. a metadata validator or an SNS/SQS notification on feedback), so every client gets them. "
    "See the gateway README, section Hooks."
)

GUARDRAIL_EVENTS_KEY = "guardrail_events"
APPLICATION_NAME_KEY = "application_name"


def event_loop_metrics_of(agent: Any, new_message: Any = None) -> dict[str, Any] | None:
    """The agent's accumulated event-loop metrics in the original library's shape, or ``None`` when no model
    call has been measured yet (``latencyMs`` is 0), the case in which the original did not write them.

    ``new_message``: a model reply just added to the agent. Strands adds the reply before it adds the
    reply's usage and latency to the agent's totals, so they are added here (the sync after the
    invocation corrects the record if the totals turn out different)."""
    metrics = getattr(agent, "event_loop_metrics", None)
    if metrics is None:
        return None
    accumulated_metrics = dict(getattr(metrics, "accumulated_metrics", {}) or {})
    accumulated_usage = dict(getattr(metrics, "accumulated_usage", {}) or {})
    meta = new_message.get("metadata") if isinstance(new_message, dict) else None
    if isinstance(meta, dict):
        for source, target in ((meta.get("usage"), accumulated_usage), (meta.get("metrics"), accumulated_metrics)):
            if isinstance(source, dict):
                for k, v in source.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        target[k] = target.get(k, 0) + v
    if not accumulated_metrics.get("latencyMs"):
        return None
    durations = list(getattr(metrics, "cycle_durations", []) or [])
    cycles = int(getattr(metrics, "cycle_count", 0) or 0)
    tool_usage = {}
    for name, tm in (getattr(metrics, "tool_metrics", {}) or {}).items():
        tool_usage[name] = {
            "call_count": tm.call_count,
            "success_count": tm.success_count,
            "error_count": tm.error_count,
            "total_time": tm.total_time,
        }
    return {
        "accumulated_metrics": accumulated_metrics,
        "accumulated_usage": accumulated_usage,
        "cycle_metrics": {
            "cycle_count": cycles,
            "total_duration": sum(durations),
            "average_cycle_time": sum(durations) / cycles if cycles else 0,
        },
        "tool_usage": tool_usage,
    }


def _totals(metrics: dict[str, Any]) -> tuple[Any, Any]:
    return metrics.get("accumulated_metrics"), metrics.get("accumulated_usage")


def _latency(metrics: dict[str, Any]) -> float:
    value = (metrics.get("accumulated_metrics") or {}).get("latencyMs", 0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def agent_config_of(agent: Any) -> dict[str, Any]:
    """``model`` (the model id) and ``system_prompt`` of an agent, as the original captured them."""
    out: dict[str, Any] = {}
    model = getattr(agent, "model", None)
    if model is not None:
        model_id = None
        config = getattr(model, "config", None)
        if isinstance(config, dict):
            model_id = config.get("model_id")
        if not model_id:
            model_id = getattr(model, "model_id", None) or type(model).__name__
        out["model"] = str(model_id)
    prompt = getattr(agent, "system_prompt", None)
    if prompt:
        out["system_prompt"] = prompt
    return out


class GatewaySessionManager(RepositorySessionManager):
    """Persists a Strands agent's session in a Session Gateway; a drop-in for the original library's
    ``MongoDBSessionManager`` (same method names and meaning).

    ``Agent(session_manager=GatewaySessionManager("s1", "http://127.0.0.1:8080"))``

    The session is read (or created) when the manager is constructed, so a wrong address or API key
    fails here with :class:`~session_gateway_strands.GatewayError`.

    Besides Strands' own persistence it offers the original's methods: :meth:`update_metadata`,
    :meth:`get_metadata`, :meth:`delete_metadata`, :meth:`get_metadata_tool`, :meth:`add_feedback`,
    :meth:`get_feedbacks`, :meth:`get_agent_config`, :meth:`update_agent_config`, :meth:`list_agents`,
    :meth:`get_message_count`, :attr:`application_name`; :meth:`sync_agent` captures the agent's
    event-loop metrics on its latest message and its model id and system prompt on its record;
    :meth:`redact_latest_message` also records a guardrail event.

    When a message is added to the agent, the message and the agent's sync (when its state changed)
    go to the gateway in one request (``POST /v1/sessions/{sid}/batch``).

    Args:
        session_id: The session to use; created if it does not exist. Ids are 1-128 characters
            from ``[A-Za-z0-9._:@-]``.
        base_url: The gateway's address.
        api_key: The API key, when the gateway requires one.
        application_name: Stored in the session's metadata (key ``application_name``) when the session
            is created; read back by :attr:`application_name`.
        timeout: Seconds per socket operation.
        pool: An :class:`~session_gateway_strands.HttpPool` shared with other managers (see
            :class:`~session_gateway_strands.GatewaySessionManagerFactory`); not closed by :meth:`close`.
        repository_options: Further keyword arguments for :class:`GatewaySessionRepository`
            (``page_size``, ``use_if_match``, ``retries``, ``headers``).
        metadataHook, feedbackHook: Not supported: the gateway runs hooks (``[[hooks]]`` in
            ``gateway.toml``); passing one raises ``TypeError`` rather than silently skipping it.
        **kwargs: Passed on to ``RepositorySessionManager``.
    """

    session_repository: GatewaySessionRepository

    def __init__(
        self,
        session_id: str,
        base_url: str = "",
        api_key: str | None = None,
        *,
        application_name: str | None = None,
        timeout: float = 10.0,
        pool: HttpPool | None = None,
        repository_options: dict[str, Any] | None = None,
        metadataHook: Any = None,
        feedbackHook: Any = None,
        **kwargs: Any,
    ) -> None:
        """Connect to the gateway and read or create the session."""
        for name, value in (("metadataHook", metadataHook), ("feedbackHook", feedbackHook)):
            if value is not None:
                raise TypeError(HOOK_ARGUMENTS_REPLACED.format(name=name))
        repository = GatewaySessionRepository(
            base_url, api_key, timeout=timeout, pool=pool, **(repository_options or {})
        )
        self._application_name = application_name
        self._metrics_written: dict[str, tuple[int, Any]] = {}
        self._config_of: dict[str, dict[str, Any]] = {}
        initial = {APPLICATION_NAME_KEY: application_name} if application_name else None
        try:
            if initial:
                # The parent creates the session when it is missing: with the application name in it.
                original = repository.create_session
                repository.create_session = lambda s, **kw: original(s, metadata=initial, **kw)  # type: ignore[method-assign]
                try:
                    super().__init__(session_id=session_id, session_repository=repository, **kwargs)
                finally:
                    del repository.create_session
            else:
                super().__init__(session_id=session_id, session_repository=repository, **kwargs)
        except BaseException:
            repository.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections (unless the pool is shared)."""
        self.session_repository.close()

    def __enter__(self) -> Self:
        """Use as a context manager that closes the connections."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connections."""
        self.close()

    # -- Strands hooks -----------------------------------------------------------------------

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        """Strands' hooks, with "message added" persisted as one request (message + agent sync)."""
        registry.add_callback(AgentInitializedEvent, lambda event: self.initialize(event.agent))
        registry.add_callback(MessageAddedEvent, self._on_message_added)
        registry.add_callback(AfterInvocationEvent, lambda event: self.sync_agent(event.agent))
        registry.add_callback(MultiAgentInitializedEvent, lambda event: self.initialize_multi_agent(event.source))
        registry.add_callback(AfterNodeCallEvent, lambda event: self.sync_multi_agent(event.source))
        registry.add_callback(AfterMultiAgentInvocationEvent, lambda event: self.sync_multi_agent(event.source))

    def _on_message_added(self, event: MessageAddedEvent) -> None:
        with self.session_repository.batch():
            self.append_message(event.message, event.agent)
            self.sync_agent(event.agent)

    def append_message(self, message: Message, agent: Any, **kwargs: Any) -> None:
        """Append a message to the agent's session, with the agent's event-loop metrics when it has any."""
        latest = self._latest_agent_message[agent.agent_id]
        session_message = SessionMessage.from_message(message, 0 if latest is None else latest.message_id + 1)
        self._latest_agent_message[agent.agent_id] = session_message
        metrics = event_loop_metrics_of(agent, message)
        self.session_repository.create_message(
            self.session_id, agent.agent_id, session_message, event_loop_metrics=metrics
        )
        if metrics is not None:
            self._metrics_written[agent.agent_id] = (session_message.message_id, metrics)
        self._held_records.setdefault(agent.agent_id, []).append(session_message)

    def redact_latest_message(self, redact_message: Message, agent: Any, **kwargs: Any) -> None:
        """Redact the message most recently appended, and record a guardrail event (``action`` ``BLOCKED``)
        in the session's metadata under ``guardrail_events``."""
        latest = self._latest_agent_message.get(agent.agent_id)
        if latest is None:
            raise SessionException("No message to redact.")
        super().redact_latest_message(redact_message, agent, **kwargs)
        event = {
            "message_id": latest.message_id,
            "agent_id": agent.agent_id,
            "action": "BLOCKED",
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        }
        key = f"{agent.agent_id}#{latest.message_id}".replace(".", "%2E")
        self.session_repository.update_metadata(self.session_id, {f"{GUARDRAIL_EVENTS_KEY}.{key}": event})

    def sync_agent(self, agent: Any, **kwargs: Any) -> None:
        """Store the agent's state (when it changed), its model id and system prompt, and its
        event-loop metrics on its latest message (when they changed since last written)."""
        config = agent_config_of(agent)
        self._config_of[agent.agent_id] = config
        token = AGENT_EXTRA.set(config)
        try:
            super().sync_agent(agent, **kwargs)
        finally:
            AGENT_EXTRA.reset(token)
        latest = self._latest_agent_message.get(agent.agent_id)
        metrics = event_loop_metrics_of(agent)
        if latest is None or metrics is None:
            return
        written = self._metrics_written.get(agent.agent_id)
        if written is not None and written[0] == latest.message_id:
            if _totals(written[1]) == _totals(metrics):
                return  # the totals are those written with the message (cycle figures as of then)
            if _latency(written[1]) > _latency(metrics):
                return  # written with the reply's own figures, which Strands adds to its totals just after

        self.session_repository.patch_message(
            self.session_id, agent.agent_id, latest.message_id, {"event_loop_metrics": metrics}
        )
        self._metrics_written[agent.agent_id] = (latest.message_id, metrics)

    def initialize(self, agent: Any, **kwargs: Any) -> None:
        """Restore (or create) the agent from the session; a new agent's record gets its model and prompt."""
        self._config_of[agent.agent_id] = agent_config_of(agent)
        token = AGENT_EXTRA.set(self._config_of[agent.agent_id])
        try:
            super().initialize(agent, **kwargs)
        finally:
            AGENT_EXTRA.reset(token)

    # -- the original library's methods ---------------------------------------------------------

    @property
    def application_name(self) -> str | None:
        """The application this session belongs to (metadata key ``application_name``)."""
        if self._application_name is None:
            value = self.get_metadata().get(APPLICATION_NAME_KEY)
            self._application_name = value if isinstance(value, str) else None
        return self._application_name

    def update_metadata(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Sets metadata fields, keeping the others (dotted keys set nested fields).

        Answers the whole metadata after the change. The gateway's hooks may deny or rewrite it
        (:class:`GatewayError` ``denied_by_hook``)."""
        return self.session_repository.update_metadata(self.session_id, metadata)

    def get_metadata(self) -> dict[str, Any]:
        """The session's metadata (as the gateway's get-hooks show it)."""
        return self.session_repository.get_metadata(self.session_id)

    def delete_metadata(self, metadata_keys: list[str]) -> dict[str, Any]:
        """Removes the given metadata fields (dotted paths); missing ones are ignored."""
        return self.session_repository.delete_metadata(self.session_id, list(metadata_keys))

    def get_guardrail_events(self) -> list[dict[str, Any]]:
        """The guardrail events :meth:`redact_latest_message` recorded, oldest first."""
        events = self.get_metadata().get(GUARDRAIL_EVENTS_KEY) or {}
        values = [e for e in events.values() if isinstance(e, dict)] if isinstance(events, dict) else []
        return sorted(values, key=lambda e: str(e.get("timestamp", "")))

    def add_feedback(self, feedback: Mapping[str, Any]) -> dict[str, Any]:
        """Adds a feedback: ``{"rating": "up" | "down" | None, "comment": "...", ...}``; the gateway
        stamps ``created_at``. Answers the stored feedback."""
        return self.session_repository.add_feedback(self.session_id, feedback)

    def get_feedbacks(self) -> list[dict[str, Any]]:
        """The session's feedbacks, oldest first."""
        return self.session_repository.get_feedbacks(self.session_id)

    def get_agent_config(self, agent_id: str) -> dict[str, Any] | None:
        """``{"agent_id", "model", "system_prompt"}`` as stored for the agent, or ``None`` if it does not exist."""
        data = self.session_repository.get_agent_json(self.session_id, agent_id)
        if data is None:
            return None
        return {"agent_id": agent_id, "model": data.get("model"), "system_prompt": data.get("system_prompt")}

    def update_agent_config(self, agent_id: str, model: str | None = None, system_prompt: str | None = None) -> None:
        """Sets the stored model id and/or system prompt of an agent (the rest of its record is kept)."""
        changes: dict[str, Any] = {}
        if model is not None:
            changes["model"] = model
        if system_prompt is not None:
            changes["system_prompt"] = system_prompt
        if not changes:
            return
        for attempt in range(3):
            data = self.session_repository.get_agent_json(self.session_id, agent_id)
            if data is None:
                raise SessionException(f"agent {agent_id!r} does not exist in session {self.session_id!r}")
            body = {k: v for k, v in data.items() if k not in ("created_at", "updated_at", "version", "message_count")}
            body.update(changes)
            try:
                self.session_repository.put_agent_json(self.session_id, agent_id, body, if_match=True)
            except GatewayError as e:  # a concurrent write: read again and retry
                if e.code == "version_mismatch" and attempt < 2:
                    continue
                raise
            self._config_of.setdefault(agent_id, {}).update(changes)
            return

    def list_agents(self) -> list[dict[str, Any]]:
        """The session's agents: ``agent_id``, ``model``, ``system_prompt``, ``message_count``, ``created_at``,
        ``updated_at`` (multi-agent records included, under their ``multi_agent:`` id)."""
        keys = ("agent_id", "model", "system_prompt", "message_count", "created_at", "updated_at")
        return [{k: a.get(k) for k in keys} for a in self.session_repository.list_agents(self.session_id)]

    def get_message_count(self, agent_id: str | None = None) -> int:
        """How many messages one agent has, or all the session's agents together when ``agent_id`` is None."""
        if agent_id is not None:
            return self.session_repository.get_message_count(self.session_id, agent_id)
        return sum(int(a.get("message_count") or 0) for a in self.session_repository.list_agents(self.session_id))

    def get_metadata_tool(self) -> AgentTool:
        """A Strands tool, ``manage_metadata``, with which the agent reads and changes this session's metadata.

        ``Agent(tools=[manager.get_metadata_tool()], session_manager=manager)``
        """
        from strands import tool

        manager = self

        @tool(name="manage_metadata")
        def manage_metadata(action: str, metadata: dict[str, Any] | None = None, keys: list[str] | None = None) -> str:
            """Manage the session's metadata: get, set (or update), or delete fields.

            Args:
                action: "get", "set", "update" or "delete".
                metadata: For set/update: the fields to set, e.g. {"priority": "high"}.
                keys: For get: only these fields (all when omitted). For delete: the fields to remove.
            """
            try:
                act = action.lower()
                if act == "get":
                    current = manager.get_metadata()
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
                    manager.update_metadata(metadata)
                    return f"Successfully updated metadata fields: {list(metadata)}"
                if act == "delete":
                    if not keys:
                        return "Error: keys list required for delete action"
                    manager.delete_metadata(keys)
                    return f"Successfully deleted metadata fields: {keys}"
                return f"Error: unknown action {action!r}; use get, set, update or delete"
            except Exception as e:  # noqa: BLE001 - the agent sees the reason (e.g. a hook's denial) instead of a crash
                return f"Error: {e}"

        return manage_metadata
