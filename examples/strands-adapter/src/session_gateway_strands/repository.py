"""A Strands ``SessionRepository`` that stores sessions in a Session Gateway over HTTP."""

from __future__ import annotations

import contextlib
import contextvars
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from strands.session.session_repository import SessionRepository
from strands.types.session import Session, SessionAgent, SessionMessage
from typing_extensions import Self

from . import _codec
from ._http import HttpPool, Response, TransportError
from .errors import GatewayAuthError, GatewayError

if TYPE_CHECKING:
    from strands.multiagent import MultiAgentBase

__all__ = ["MULTI_AGENT_PREFIX", "GatewaySessionRepository", "make_pool"]

MULTI_AGENT_PREFIX = "multi_agent:"
"""Multi-agent (Graph, Swarm) state is stored as an agent record with this id prefix."""

_MULTI_AGENT_FIELD = "multi_agent_state"
USER_AGENT = "session-gateway-strands/0.2"
_LIMIT_RE = re.compile(r"limit must be at most (\d+)")
_MAX_BATCH_OPS = 16


def make_pool(
    base_url: str,
    api_key: str | None = None,
    *,
    timeout: float = 10.0,
    max_idle: int = 64,
    headers: Mapping[str, str] | None = None,
) -> HttpPool:
    """An :class:`HttpPool` with the adapter's headers (``Authorization`` when an API key is given)."""
    return HttpPool(base_url, _headers(api_key, headers), timeout=timeout, max_idle=max_idle)


def _headers(api_key: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    h = {"Accept": "application/json", "User-Agent": USER_AGENT}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    h.update(headers or {})
    return h


class Call:
    """One prepared request: what to send, how to treat failures, what to do with the answer."""

    __slots__ = ("batch_op", "done", "headers", "idempotent", "method", "missing_ok", "path", "payload")

    def __init__(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        headers: str = "",
        missing_ok: bool = False,
        idempotent: bool = False,
        done: Callable[[Any, Response | None], Any] | None = None,
        batch_op: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.payload = payload
        self.headers = headers
        self.missing_ok = missing_ok
        self.idempotent = idempotent or method in ("GET", "HEAD")
        self.done = done
        """Called with the decoded JSON answer (``None`` for a 404 when ``missing_ok``, or no body)."""
        self.batch_op = batch_op
        """This call as an operation of ``POST /v1/sessions/{sid}/batch`` (writes that may be batched)."""


AGENT_EXTRA: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("gateway_agent_extra", default=None)
"""Fields added to agent records written in this context (the manager's ``model`` and ``system_prompt``)."""

_BATCH: contextvars.ContextVar[list[tuple[str, Call]] | None] = contextvars.ContextVar("gateway_batch", default=None)


class _Core:
    """Request planning shared by the sync repository and the async client: no I/O here."""

    _use_if_match: bool
    _versions: dict[tuple[str, str], int]
    _lock: threading.Lock

    def _init_core(self, use_if_match: bool, retries: int, page_size: int | None) -> None:
        if page_size is not None and page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._use_if_match = use_if_match
        self._retries = max(0, retries)
        self._page_size = page_size
        self._versions = {}
        self._lock = threading.Lock()
        self._batch_supported: bool | None = None

    # -- planning --------------------------------------------------------------------------

    def _p_create_session(self, session: Session | Mapping[str, Any], metadata: dict[str, Any] | None) -> Call:
        if isinstance(session, Session):
            body: dict[str, Any] = {
                "session_id": session.session_id,
                "session_type": _codec.enum_value(session.session_type),
            }
        else:
            body = {k: v for k, v in session.items() if k in ("session_id", "session_type", "metadata")}
            if "session_type" in body:
                body["session_type"] = _codec.enum_value(body["session_type"])
        if metadata:
            body["metadata"] = metadata
        return Call("POST", "/v1/sessions", body, done=lambda d, r: _codec.session_from(d))

    def _p_put_agent(self, sid: str, aid: str, body: dict[str, Any], *, if_match: bool) -> Call:
        version = None
        if if_match and self._use_if_match:
            with self._lock:
                version = self._versions.get((sid, aid))
        headers = f'If-Match: "{version}"\r\n' if version is not None else ""

        def done(data: Any, resp: Response | None) -> Any:
            self._remember(sid, aid, data)
            return data

        op: dict[str, Any] = {"op": "put_agent", "agent_id": aid, "agent": body}
        if version is not None:
            op["if_match"] = version
        return Call("PUT", _path(sid, aid), body, headers=headers, done=done, batch_op=op)

    def _p_create_message(
        self, sid: str, aid: str, message: SessionMessage, metrics: dict[str, Any] | None = None
    ) -> Call:
        body = _codec.message_body(message, metrics)
        return Call(
            "POST",
            _path(sid, aid, "messages"),
            body,
            idempotent=True,
            done=lambda d, r: _stamp(message, d),
            batch_op={"op": "append_message", "agent_id": aid, "message": body},
        )

    def _p_patch_message(self, sid: str, aid: str, mid: int, patch: dict[str, Any]) -> Call:
        return Call(
            "PATCH",
            _path(sid, aid, "messages", str(mid)),
            patch,
            idempotent=True,
            batch_op={"op": "patch_message", "agent_id": aid, "message_id": mid, "patch": patch},
        )

    def _remember(self, sid: str, aid: str, agent: Any) -> None:
        version = agent.get("version") if isinstance(agent, dict) else None
        if isinstance(version, int):
            with self._lock:
                self._versions[(sid, aid)] = version

    def _messages_query(self, want: int | None, pos: int) -> str:
        if want is None:
            return f"?offset={pos}"
        return f"?limit={want}&offset={pos}"

    def _learn_page_limit(self, err: GatewayError) -> bool:
        """Adapts to a gateway whose ``max_page_size`` is below the page asked for (400 ``invalid_query``)."""
        m = _LIMIT_RE.search(err.message) if err.status == 400 else None
        if m is None:
            return False
        self._page_size = max(1, int(m.group(1)))
        return True


class GatewaySessionRepository(_Core, SessionRepository):
    """Strands ``SessionRepository`` over the Session Gateway HTTP API (``/v1``).

    Reads of a missing session, agent or message answer ``None``; every other failure raises
    :class:`GatewayError` (:class:`GatewayAuthError` for 401/403) carrying the gateway's code
    and message. Requests that are safe to repeat (reads, message writes with their explicit id)
    are retried on connection errors, 429 and 503; a request that was not sent at all is retried
    whatever it is.

    Args:
        base_url: The gateway's address, e.g. ``http://127.0.0.1:8080``.
        api_key: Sent as ``Authorization: Bearer <key>`` when the gateway has ``[auth] mode = "keys"``.
        timeout: Seconds for connecting and for each read or write on the socket.
        page_size: Messages asked for per request when listing everything; by default the gateway's
            own page size (``server.max_page_size``). Either way the listing pages until done.
        use_if_match: Send the agent version last seen as ``If-Match`` when updating an agent, so
            two processes writing the same agent fail (412 ``version_mismatch``) instead of
            overwriting each other.
        retries: How many times a retryable request is repeated.
        pool: An :class:`~session_gateway_strands.HttpPool` to share (see
            :class:`~session_gateway_strands.GatewaySessionManagerFactory`); it is not closed by
            :meth:`close`. ``base_url``, ``api_key``, ``timeout`` and ``headers`` are then ignored.
        headers: Extra headers for every request.
    """

    def __init__(
        self,
        base_url: str = "",
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        page_size: int | None = None,
        use_if_match: bool = True,
        retries: int = 2,
        pool: HttpPool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Create the repository; no request is made until a method is called."""
        self._init_core(use_if_match, retries, page_size)
        if pool is None:
            if not base_url:
                raise ValueError("give base_url or pool")
            pool = make_pool(base_url, api_key, timeout=timeout, headers=headers)
            self._owns_pool = True
        else:
            self._owns_pool = False
        self.pool = pool

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections (if this repository created its pool)."""
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> Self:
        """Use as a context manager that closes the connections."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connections."""
        self.close()

    # -- sessions ----------------------------------------------------------------------------

    def create_session(
        self, session: Session | Mapping[str, Any], *, metadata: dict[str, Any] | None = None, **kwargs: Any
    ) -> Session:
        """Create the session (409 ``session_exists`` if it already exists).

        ``session`` is a Strands ``Session`` or its ``to_dict()``; ``metadata`` is the initial metadata.
        """
        return cast(Session, self._run(self._p_create_session(session, metadata)))

    def read_session(self, session_id: str, **kwargs: Any) -> Session | None:
        """Read a session, or ``None`` if it does not exist."""
        data = self.get_session_json(session_id)
        return None if data is None else _codec.session_from(data)

    def get_session_json(self, session_id: str) -> dict[str, Any] | None:
        """The gateway's session JSON (with ``metadata`` and ``agents``), or ``None`` if missing."""
        return cast("dict[str, Any] | None", self._run(Call("GET", _path(session_id), missing_ok=True)))

    def delete_session(self, session_id: str, **kwargs: Any) -> None:
        """Delete a session and everything in it (not part of the Strands interface)."""
        self._run(Call("DELETE", _path(session_id)))

    # -- agents ------------------------------------------------------------------------------

    def create_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        """Store a new agent (``extra=`` adds fields to the record, e.g. ``system_prompt``)."""
        body = _codec.agent_body(session_agent, kwargs.get("extra", AGENT_EXTRA.get()))
        self._run_or_queue(session_id, self._p_put_agent(session_id, session_agent.agent_id, body, if_match=False))

    def read_agent(self, session_id: str, agent_id: str, **kwargs: Any) -> SessionAgent | None:
        """Read an agent, or ``None`` if it does not exist."""
        resp = self._send(Call("GET", _path(session_id, agent_id), missing_ok=True))
        if resp is None:
            return None
        data = _decode(resp)
        self._remember(session_id, agent_id, data)
        return _codec.agent_from(data, resp.body)

    def get_agent_json(self, session_id: str, agent_id: str) -> dict[str, Any] | None:
        """The stored agent record as JSON (with ``version`` and ``message_count``), or ``None``."""
        data = self._run(Call("GET", _path(session_id, agent_id), missing_ok=True))
        if data is not None:
            self._remember(session_id, agent_id, data)
        return cast("dict[str, Any] | None", data)

    def put_agent_json(
        self, session_id: str, agent_id: str, body: dict[str, Any], *, if_match: bool = True
    ) -> dict[str, Any]:
        """Replaces an agent record with ``body`` (guarded by the version last seen)."""
        return cast(dict[str, Any], self._run(self._p_put_agent(session_id, agent_id, body, if_match=if_match)))

    def update_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        """Replace an agent's state, guarded by ``If-Match`` when its version is known
        (``extra=`` adds fields to the record)."""
        body = _codec.agent_body(session_agent, kwargs.get("extra", AGENT_EXTRA.get()))
        self._run_or_queue(session_id, self._p_put_agent(session_id, session_agent.agent_id, body, if_match=True))

    def list_agents(self, session_id: str) -> list[dict[str, Any]]:
        """Every agent record of the session (JSON), sorted by id."""
        data = self._run(Call("GET", _path(session_id) + "/agents"))
        return cast(list[dict[str, Any]], data["agents"])

    # -- messages ----------------------------------------------------------------------------

    def create_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Append a message with its explicit id; re-sending the same content is a no-op.

        ``event_loop_metrics=`` stores these metrics with it (default: the usage and metrics in the
        message's Strands metadata).
        """
        call = self._p_create_message(session_id, agent_id, session_message, kwargs.get("event_loop_metrics"))
        self._run_or_queue(session_id, call)

    def read_message(self, session_id: str, agent_id: str, message_id: int, **kwargs: Any) -> SessionMessage | None:
        """Read one message, or ``None`` if it (or its agent or session) does not exist."""
        resp = self._send(Call("GET", _path(session_id, agent_id, "messages", str(message_id)), missing_ok=True))
        return None if resp is None else _codec.messages_from([_decode(resp)], resp.body)[0]

    def update_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Replace a message (Strands does this to store ``redact_message``)."""
        path = _path(session_id, agent_id, "messages", str(session_message.message_id))
        body = _codec.message_body(session_message)
        stored = self._run(Call("PUT", path, body, idempotent=True))
        _stamp(session_message, stored)

    def patch_message(self, session_id: str, agent_id: str, message_id: int, patch: dict[str, Any]) -> None:
        """Changes only the given fields of a message (``message``, ``redact_message``, ``event_loop_metrics``)."""
        self._run_or_queue(session_id, self._p_patch_message(session_id, agent_id, message_id, patch))

    def list_messages(
        self, session_id: str, agent_id: str, limit: int | None = None, offset: int = 0, **kwargs: Any
    ) -> list[SessionMessage]:
        """List messages in id order from ``offset``; all of them (page by page) when ``limit`` is None."""
        path = _path(session_id, agent_id, "messages")
        out: list[SessionMessage] = []
        pos = max(0, offset)
        while limit is None or len(out) < limit:
            want = self._page_size if limit is None else limit - len(out)
            if want is not None and self._page_size is not None:
                want = min(want, self._page_size)
            try:
                resp = self._send(Call("GET", path + self._messages_query(want, pos)))
            except GatewayError as e:
                if self._learn_page_limit(e):
                    continue
                raise
            assert resp is not None
            data = _decode(resp)
            page = data.get("messages") or []
            out.extend(_codec.messages_from(page, resp.body))
            pos += len(page)
            if not page or pos >= int(data.get("total", 0)):
                break
        return out

    def list_latest_messages(self, session_id: str, agent_id: str, n: int) -> list[SessionMessage]:
        """The last ``n`` messages, oldest first (``GET …/messages?latest=n``); pages when ``n`` is large."""
        if n <= 0:
            return []
        path = _path(session_id, agent_id, "messages")
        try:
            resp = self._send(Call("GET", f"{path}?latest={n}"))
        except GatewayError as e:
            if not self._learn_page_limit(e) and "latest must be at most" not in e.message:
                raise
            total = self.get_message_count(session_id, agent_id)
            return self.list_messages(session_id, agent_id, limit=n, offset=max(0, total - n))
        assert resp is not None
        data = _decode(resp)
        out = _codec.messages_from(data.get("messages") or [], resp.body)
        # A gateway caps a page by count and bytes: a `latest` page it shortened
        # says so (`truncated`) and where the rest starts (`next_offset`).
        nxt = data.get("next_offset")
        if data.get("truncated") and nxt is not None and len(out) < n:
            out.extend(self.list_messages(session_id, agent_id, limit=n - len(out), offset=int(nxt)))
        return out

    def get_message_count(self, session_id: str, agent_id: str) -> int:
        """How many messages the agent has."""
        data = self._run(Call("GET", _path(session_id, agent_id, "messages") + "?limit=1&offset=0"))
        return int(data["total"])

    # -- metadata and feedback -----------------------------------------------------------------

    def get_metadata(self, session_id: str) -> dict[str, Any]:
        """The session's metadata (as the gateway's get-hooks show it)."""
        return cast(dict[str, Any], self._run(Call("GET", _path(session_id) + "/metadata")))

    def update_metadata(self, session_id: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Sets metadata fields (dotted keys set nested fields); answers the whole metadata after it."""
        return cast(dict[str, Any], self._run(Call("PATCH", _path(session_id) + "/metadata", dict(metadata))))

    def delete_metadata(self, session_id: str, keys: list[str]) -> dict[str, Any]:
        """Removes metadata fields (dotted paths); answers the whole metadata after it."""
        if not keys:
            return self.get_metadata(session_id)
        for k in keys:
            if "," in k:
                raise ValueError(f"metadata key {k!r} contains ','")
        query = quote(",".join(keys), safe=".,:@-_")
        return cast(dict[str, Any], self._run(Call("DELETE", _path(session_id) + f"/metadata?keys={query}")))

    def add_feedback(self, session_id: str, feedback: Mapping[str, Any]) -> dict[str, Any]:
        """Adds a feedback (``rating``: ``"up"``, ``"down"`` or ``None``, optional ``comment``, extras)."""
        return cast(dict[str, Any], self._run(Call("POST", _path(session_id) + "/feedbacks", dict(feedback))))

    def get_feedbacks(self, session_id: str) -> list[dict[str, Any]]:
        """The session's feedbacks, oldest first."""
        data = self._run(Call("GET", _path(session_id) + "/feedbacks"))
        return cast(list[dict[str, Any]], data["feedbacks"])

    # -- multi-agent (Graph, Swarm) -----------------------------------------------------------

    def create_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        """Store a multi-agent's state as the agent record ``multi_agent:<id>``."""
        body = {_MULTI_AGENT_FIELD: multi_agent.serialize_state()}
        self._run(self._p_put_agent(session_id, MULTI_AGENT_PREFIX + multi_agent.id, body, if_match=False))

    def read_multi_agent(self, session_id: str, multi_agent_id: str, **kwargs: Any) -> dict[str, Any] | None:
        """Read a multi-agent's serialized state, or ``None`` if none is stored."""
        data = self.get_agent_json(session_id, MULTI_AGENT_PREFIX + multi_agent_id)
        state = None if data is None else data.get(_MULTI_AGENT_FIELD)
        return cast(dict[str, Any], _codec.decode_bytes(state)) if isinstance(state, dict) else None

    def update_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        """Replace a multi-agent's state."""
        body = {_MULTI_AGENT_FIELD: multi_agent.serialize_state()}
        self._run(self._p_put_agent(session_id, MULTI_AGENT_PREFIX + multi_agent.id, body, if_match=True))

    # -- batching ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Collects the message and agent writes made inside the block and sends them when it ends,
        in one ``POST /v1/sessions/{sid}/batch`` per session (in order; see the README for the
        atomicity rules). Used by the manager for Strands' "message added, then agent synced"."""
        if _BATCH.get() is not None:  # nested: the outer block sends
            yield
            return
        queued: list[tuple[str, Call]] = []
        token = _BATCH.set(queued)
        try:
            yield
        finally:
            _BATCH.reset(token)
        self.flush(queued)

    def flush(self, queued: list[tuple[str, Call]]) -> None:
        """Sends queued writes: consecutive writes to one session go in one batch request."""
        i = 0
        while i < len(queued):
            sid = queued[i][0]
            j = i + 1
            while j < len(queued) and queued[j][0] == sid and j - i < _MAX_BATCH_OPS:
                j += 1
            calls = [c for _, c in queued[i:j]]
            if len(calls) == 1 or self._batch_supported is False:
                for c in calls:
                    self._run(c)
            else:
                self._run_batch(sid, calls)
            i = j

    def _run_batch(self, sid: str, calls: list[Call]) -> None:
        body = {"ops": [c.batch_op for c in calls]}
        try:
            resp = self._send(Call("POST", _path(sid) + "/batch", body, idempotent=False))
        except GatewayError as e:
            if e.status in (404, 405) and e.code in ("route_not_found", "method_not_allowed"):
                self._batch_supported = False  # an older gateway: one request per write
                for c in calls:
                    self._run(c)
                return
            committed = e.details.get("results") if isinstance(e.details, dict) else None
            for c, r in zip(calls, committed or []):
                if c.done is not None:
                    c.done(r.get("body"), None)
            raise
        assert resp is not None
        self._batch_supported = True
        results = _decode(resp)["results"]
        for c, r in zip(calls, results):
            if c.done is not None:
                c.done(r.get("body"), None)

    def _run_or_queue(self, sid: str, call: Call) -> None:
        queued = _BATCH.get()
        if queued is not None and call.batch_op is not None:
            queued.append((sid, call))
            return
        self._run(call)

    # -- HTTP --------------------------------------------------------------------------------

    def _run(self, call: Call) -> Any:
        resp = self._send(call)
        data = None if resp is None or not resp.body else _decode(resp)
        return call.done(data, resp) if call.done is not None and data is not None else data

    def _send(self, call: Call) -> Response | None:
        """Sends one request; answers None for a gateway 404 when ``missing_ok``, raises on any other failure."""
        body = None if call.payload is None else _codec.dumps(call.payload)
        attempt = 0
        while True:
            try:
                resp = self.pool.request(call.method, call.path, body, call.headers)
            except TransportError as e:
                if self.pool.closed:
                    raise GatewayError(None, "client_closed", "the connection pool was closed") from e
                if (call.idempotent or not e.sent) and attempt < self._retries:
                    attempt += 1
                    time.sleep(0.1 * 2**attempt)
                    continue
                raise GatewayError(None, "transport_error", f"{call.method} {call.path}: {e}") from e
            status = resp.status
            if 200 <= status < 300:
                return resp
            if status in (429, 503) and call.idempotent and attempt < self._retries:
                attempt += 1
                time.sleep(min(5.0, _retry_after(resp) or 0.1 * 2**attempt))
                continue
            error = error_from(resp)
            if call.missing_ok and status == 404 and error.code == "not_found":
                return None
            raise error


def _path(session_id: str, *rest: str) -> str:
    """``/v1/sessions/{sid}/agents/{aid}/...`` with every id percent-encoded."""
    if rest:
        tail = "/".join(quote(p, safe="") for p in rest[1:])
        base = f"/v1/sessions/{quote(session_id, safe='')}/agents/{quote(rest[0], safe='')}"
        return f"{base}/{tail}" if tail else base
    return "/v1/sessions/" + quote(session_id, safe="")


def _stamp(message: SessionMessage, stored: Any) -> None:
    """Copies the gateway's timestamps onto the caller's message."""
    if isinstance(stored, dict):
        message.created_at = stored.get("created_at", message.created_at)
        message.updated_at = stored.get("updated_at", message.updated_at)


def _decode(resp: Response) -> Any:
    try:
        return _codec.loads(resp.body)
    except ValueError as e:
        raise GatewayError(resp.status, "invalid_response", f"response is not JSON: {resp.body[:200]!r}") from e


def _retry_after(resp: Response) -> float | None:
    try:
        return float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None


def error_from(resp: Response) -> GatewayError:
    """The :class:`GatewayError` for a non-2xx answer."""
    code, message = f"http_{resp.status}", resp.body[:500].decode("utf-8", "replace") or f"HTTP {resp.status}"
    details: dict[str, Any] = {}
    try:
        data = _codec.loads(resp.body)
        err = data.get("error")
        if isinstance(err, dict):
            code, message = str(err.get("code", code)), str(err.get("message", message))
            details = {k: v for k, v in data.items() if k != "error"}
    except (ValueError, AttributeError):
        pass
    kind = GatewayAuthError if resp.status in (401, 403) else GatewayError
    return kind(resp.status, code, message, details)
