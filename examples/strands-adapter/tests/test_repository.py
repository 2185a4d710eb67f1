"""GatewaySessionRepository against a running gateway: the Strands contract and the HTTP mapping."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Gateway
from scripted_model import ScriptedModel, text
from strands import Agent
from strands.multiagent import GraphBuilder
from strands.session.repository_session_manager import RepositorySessionManager
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from session_gateway_strands import MULTI_AGENT_PREFIX, GatewayError, GatewaySessionManager, GatewaySessionRepository


@pytest.fixture
def repo(gateway: Gateway) -> Iterator[GatewaySessionRepository]:
    with GatewaySessionRepository(gateway.base_url, page_size=2) as r:
        yield r


def user(i: int) -> SessionMessage:
    return SessionMessage.from_message({"role": "user", "content": [{"text": f"message {i}"}]}, i)


def with_agent(repo: GatewaySessionRepository, sid: str, n_messages: int = 0) -> None:
    repo.create_session(Session(session_id=sid, session_type=SessionType.AGENT))
    repo.create_agent(sid, SessionAgent(agent_id="a", state={}, conversation_manager_state={}))
    for i in range(n_messages):
        repo.create_message(sid, "a", user(i))


def test_missing_things_read_as_none(repo: GatewaySessionRepository, sid: str) -> None:
    assert repo.read_session(sid) is None
    assert repo.read_agent(sid, "a") is None
    assert repo.read_message(sid, "a", 0) is None
    assert repo.read_multi_agent(sid, "graph") is None
    with_agent(repo, sid)
    assert repo.read_agent(sid, "b") is None
    assert repo.read_message(sid, "a", 0) is None
    with pytest.raises(GatewayError) as err:
        repo.update_message(sid, "a", user(0))
    assert (err.value.status, err.value.code) == (404, "not_found")


def test_session_and_agent_round_trip(repo: GatewaySessionRepository, sid: str) -> None:
    created = repo.create_session(Session(session_id=sid, session_type=SessionType.AGENT))
    assert created.session_type == SessionType.AGENT and created.created_at.endswith("Z")
    read = repo.read_session(sid)
    assert read is not None and (read.session_id, read.session_type) == (sid, SessionType.AGENT)
    with pytest.raises(GatewayError) as err:
        repo.create_session(Session(session_id=sid, session_type=SessionType.AGENT))
    assert (err.value.status, err.value.code) == (409, "session_exists")

    agent = SessionAgent(agent_id="a", state={"k": [1, "two"]}, conversation_manager_state={"removed_message_count": 0})
    agent._internal_state = {"model_state": {"x": 1}}
    repo.create_agent(sid, agent)
    agent.state["k"] = "changed"
    repo.update_agent(sid, agent)
    back = repo.read_agent(sid, "a")
    assert back is not None
    assert (back.agent_id, back.state, back.conversation_manager_state) == (
        "a",
        {"k": "changed"},
        {"removed_message_count": 0},
    )
    assert back._internal_state == {"model_state": {"x": 1}}
    assert back.created_at.endswith("Z") and back.updated_at >= back.created_at


def test_concurrent_agent_writers_get_version_mismatch(
    gateway: Gateway, repo: GatewaySessionRepository, sid: str
) -> None:
    with_agent(repo, sid)
    with GatewaySessionRepository(gateway.base_url) as other:
        theirs = other.read_agent(sid, "a")
        assert theirs is not None
        repo.update_agent(sid, SessionAgent(agent_id="a", state={"by": "repo"}, conversation_manager_state={}))
        with pytest.raises(GatewayError) as err:
            other.update_agent(sid, theirs)
        assert (err.value.status, err.value.code) == (412, "version_mismatch")
    with GatewaySessionRepository(gateway.base_url, use_if_match=False) as last_writer_wins:
        last_writer_wins.update_agent(
            sid, SessionAgent(agent_id="a", state={"by": "lww"}, conversation_manager_state={})
        )
    assert repo.read_agent(sid, "a").state == {"by": "lww"}  # type: ignore[union-attr]


def test_messages_append_read_update(repo: GatewaySessionRepository, sid: str) -> None:
    with_agent(repo, sid, 2)
    first = repo.read_message(sid, "a", 0)
    assert first is not None and first.message["content"] == [{"text": "message 0"}] and first.redact_message is None
    repo.create_message(sid, "a", user(1))  # the same id and content again: an idempotent retry
    with pytest.raises(GatewayError) as err:
        repo.create_message(sid, "a", SessionMessage({"role": "user", "content": [{"text": "other"}]}, 1))
    assert (err.value.status, err.value.code) == (409, "message_conflict")
    with pytest.raises(GatewayError) as err:
        repo.create_message(sid, "a", user(5))
    assert (err.value.status, err.value.code) == (409, "message_id_gap")

    first.redact_message = {"role": "user", "content": [{"text": "[redacted]"}]}
    repo.update_message(sid, "a", first)
    back = repo.read_message(sid, "a", 0)
    assert back is not None and back.to_message() == {"role": "user", "content": [{"text": "[redacted]"}]}
    assert back.created_at == first.created_at


def test_list_messages_pages(repo: GatewaySessionRepository, sid: str) -> None:
    with_agent(repo, sid, 7)  # page_size=2: listing everything takes four requests

    def ids(**kw: Any) -> list[int]:
        return [m.message_id for m in repo.list_messages(sid, "a", **kw)]

    assert ids() == [0, 1, 2, 3, 4, 5, 6]
    assert ids(offset=3) == [3, 4, 5, 6]
    assert ids(limit=3, offset=2) == [2, 3, 4]
    assert ids(limit=5) == [0, 1, 2, 3, 4]
    assert ids(limit=10, offset=6) == [6]
    assert ids(offset=9) == []
    assert ids(limit=0) == []
    assert [m.message["content"][0]["text"] for m in repo.list_messages(sid, "a", limit=2, offset=1)] == [
        "message 1",
        "message 2",
    ]
    with pytest.raises(GatewayError) as err:
        repo.list_messages(sid, "nobody")
    assert err.value.status == 404


def test_bytes_round_trip(repo: GatewaySessionRepository, sid: str) -> None:
    with_agent(repo, sid)
    png = b"\x89PNG\r\n\x1a\n\x00\xff"
    image = {"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": png}}}]}
    repo.create_message(sid, "a", SessionMessage.from_message(image, 0))  # type: ignore[arg-type]
    back = repo.read_message(sid, "a", 0)
    assert back is not None and back.message["content"][0]["image"]["source"]["bytes"] == png
    listed = repo.list_messages(sid, "a")
    assert listed[0].message == back.message
    assert base64.b64encode(png).decode() in repr(SessionMessage.from_message(image, 0).to_dict())  # type: ignore[arg-type]


def test_errors_carry_code_and_message(gateway: Gateway, repo: GatewaySessionRepository) -> None:
    with pytest.raises(GatewayError) as err:
        repo.create_session(Session(session_id="has space", session_type=SessionType.AGENT))
    assert err.value.status == 400 and err.value.code and "has space" not in err.value.code
    assert err.value.message in str(err.value)

    with (
        GatewaySessionRepository("http://127.0.0.1:9", retries=0, timeout=2) as nowhere,
        pytest.raises(GatewayError) as err,
    ):
        nowhere.read_session("s")
    assert (err.value.status, err.value.code) == (None, "transport_error")


def test_repository_works_with_strands_manager(gateway: Gateway, sid: str) -> None:
    with GatewaySessionRepository(gateway.base_url) as r:
        manager = RepositorySessionManager(session_id=sid, session_repository=r)
        agent = Agent(
            model=ScriptedModel([text("pong")]), session_manager=manager, callback_handler=None, agent_id="bot"
        )
        agent("ping")
        assert [m.message["content"][0]["text"] for m in r.list_messages(sid, "bot")] == ["ping", "pong"]


def test_multi_agent_state(gateway: Gateway, sid: str) -> None:
    def run_graph(task: str) -> str:
        manager = GatewaySessionManager(sid, gateway.base_url)
        builder = GraphBuilder()
        for name, reply in (("research", "facts"), ("write", "essay")):
            builder.add_node(
                Agent(name=name, agent_id=name, model=ScriptedModel([text(reply)]), callback_handler=None), name
            )
        builder.add_edge("research", "write")
        builder.set_entry_point("research")
        builder.set_max_node_executions(5)
        builder.set_session_manager(manager)
        graph = builder.build()
        graph(task)
        manager.close()
        return graph.id

    graph_id = run_graph("Write about otters")
    with GatewaySessionRepository(gateway.base_url) as r:
        state = r.read_multi_agent(sid, graph_id)
        assert state is not None
        assert (state["type"], state["status"], state["execution_order"]) == (
            "graph",
            "completed",
            ["research", "write"],
        )
        assert state["node_results"]["write"]["result"]
        assert gateway.http().get(f"/v1/sessions/{sid}").json()["agents"] == [MULTI_AGENT_PREFIX + graph_id]

        # A new process-like run restores (and, the graph having completed, restarts) from the stored state.
        assert run_graph("Now about beavers") == graph_id
        assert r.read_multi_agent(sid, graph_id)["current_task"] == "Now about beavers"  # type: ignore[index]
