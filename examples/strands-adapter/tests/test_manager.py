"""The original library's manager surface (issue #13, goal 3) against a real gateway and a real strands.Agent."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from conftest import Gateway, start_gateway
from scripted_model import USAGE, ScriptedModel, guardrail, text, tool_call
from strands import Agent
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from session_gateway_strands import (
    AsyncGatewaySessionManager,
    GatewayError,
    GatewaySessionManager,
    GatewaySessionManagerFactory,
    GatewaySessionRepository,
    close_global_factory,
    get_global_factory,
    initialize_global_factory,
)


def texts(message: dict[str, Any]) -> list[str]:
    return [block["text"] for block in message["content"] if "text" in block]


def test_session_to_dict_is_accepted(gateway: Gateway, sid: str) -> None:
    """A thin client posting Strands' own objects (goal 4)."""
    http = gateway.http()
    resp = http.post("/v1/sessions", json=Session(session_id=sid, session_type=SessionType.AGENT).to_dict())
    assert resp.status_code == 201, resp.text
    assert resp.json()["session_type"] == "AGENT"
    # The repository accepts a to_dict() too, and a misspelt field is still refused.
    with GatewaySessionRepository(gateway.base_url) as repo:
        other = Session(session_id=sid + "-2", session_type=SessionType.AGENT).to_dict()
        assert repo.create_session(other).session_id == sid + "-2"
    bad = http.post("/v1/sessions", json={"session_id": sid + "-3", "sesion_type": "AGENT"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert http.get(f"/v1/sessions/{sid}-3").status_code == 404


def test_metadata_update_get_delete(gateway: Gateway, sid: str) -> None:
    with GatewaySessionManager(sid, gateway.base_url) as m:
        assert m.get_metadata() == {}
        m.update_metadata({"status": "active", "customer": {"tier": "gold", "name": "Ada"}})
        after = m.update_metadata({"customer.tier": "platinum", "priority": 2})  # partial: the rest is kept
        assert after == {"status": "active", "customer": {"tier": "platinum", "name": "Ada"}, "priority": 2}
        assert m.get_metadata() == after
        m.delete_metadata(["priority", "customer.name", "not-there"])
        assert m.get_metadata() == {"status": "active", "customer": {"tier": "platinum"}}
        with pytest.raises(GatewayError) as err:
            m.update_metadata({"$bad": 1})
        assert (err.value.status, err.value.code) == (400, "invalid_metadata_key")
    stored = gateway.http().get(f"/v1/sessions/{sid}/metadata").json()
    assert stored == {"status": "active", "customer": {"tier": "platinum"}}


def test_python_hook_arguments_are_refused(gateway: Gateway, sid: str) -> None:
    for name in ("metadataHook", "feedbackHook"):
        with pytest.raises(TypeError, match=r"\[\[hooks\]\]"):
            GatewaySessionManager(sid, gateway.base_url, **{name: lambda *a, **k: None})
    assert gateway.http().get(f"/v1/sessions/{sid}").status_code == 404  # nothing was created


def test_agent_calls_the_metadata_tool(gateway: Gateway, sid: str) -> None:
    manager = GatewaySessionManager(sid, gateway.base_url)
    manager.update_metadata({"status": "open"})
    model = ScriptedModel(
        [
            tool_call("manage_metadata", "tu-1", {"action": "set", "metadata": {"priority": "high"}}),
            tool_call("manage_metadata", "tu-2", {"action": "get", "keys": ["priority", "status"]}),
            tool_call("manage_metadata", "tu-3", {"action": "delete", "keys": ["status"]}),
            text("Noted."),
        ]
    )
    agent = Agent(model=model, tools=[manager.get_metadata_tool()], session_manager=manager, callback_handler=None)
    agent("Mark this as high priority")
    assert manager.get_metadata() == {"priority": "high"}
    results = [
        block["toolResult"]["content"][0]["text"]
        for msg in agent.messages
        for block in msg["content"]
        if "toolResult" in block
    ]
    assert results[0] == "Successfully updated metadata fields: ['priority']"
    assert json.loads(results[1].removeprefix("Metadata retrieved: ")) == {"priority": "high", "status": "open"}
    assert results[2] == "Successfully deleted metadata fields: ['status']"
    # The tool calls and results are part of the persisted conversation.
    stored = gateway.http().get(f"/v1/sessions/{sid}/agents/default/messages").json()
    assert [m["message"] for m in stored["messages"]] == json.loads(json.dumps(agent.messages))
    manager.close()


def test_feedbacks(gateway: Gateway, sid: str) -> None:
    with GatewaySessionManager(sid, gateway.base_url) as m:
        assert m.get_feedbacks() == []
        stored = m.add_feedback({"rating": "up", "comment": "fast answer"})
        assert stored["rating"] == "up" and stored["created_at"].endswith("Z")
        m.add_feedback({"rating": "down", "comment": "forgot my order", "ticket": 4411})
        m.add_feedback({"rating": None, "comment": "neutral"})
        got = m.get_feedbacks()
        assert [(f["rating"], f["comment"]) for f in got] == [
            ("up", "fast answer"),
            ("down", "forgot my order"),
            (None, "neutral"),
        ]
        assert got[1]["ticket"] == 4411
        with pytest.raises(GatewayError) as err:
            m.add_feedback({"rating": "great"})
        assert err.value.status == 422
        assert len(m.get_feedbacks()) == 3


def test_redaction_records_a_guardrail_event(gateway: Gateway, sid: str) -> None:
    manager = GatewaySessionManager(sid, gateway.base_url)
    model = ScriptedModel([guardrail("[User input redacted.]", "Sorry, I can't help with that.")])
    agent = Agent(model=model, session_manager=manager, callback_handler=None)
    agent("My card number is 4111 1111 1111 1111")
    first = gateway.http().get(f"/v1/sessions/{sid}/agents/default/messages/0").json()
    assert first["redact_message"]["content"] == [{"text": "[User input redacted.]"}]
    events = manager.get_guardrail_events()
    assert len(events) == 1
    assert {k: events[0][k] for k in ("message_id", "agent_id", "action")} == {
        "message_id": 0,
        "agent_id": "default",
        "action": "BLOCKED",
    }
    assert events[0]["timestamp"]
    # Calling it directly, as an application would, redacts the latest message and records another event.
    manager.redact_latest_message({"role": "assistant", "content": [{"text": "[removed]"}]}, agent)
    latest = gateway.http().get(f"/v1/sessions/{sid}/agents/default/messages/1").json()
    assert latest["redact_message"]["content"] == [{"text": "[removed]"}]
    assert [e["message_id"] for e in manager.get_guardrail_events()] == [0, 1]
    manager.close()


def test_sync_agent_captures_metrics_and_config(gateway: Gateway, sid: str) -> None:
    manager = GatewaySessionManager(sid, gateway.base_url)
    agent = Agent(
        model=ScriptedModel([text("One."), text("Two.")]),
        system_prompt="You are a support bot.",
        session_manager=manager,
        callback_handler=None,
        agent_id="assistant",
    )
    agent("first")
    agent("second")
    manager.sync_agent(agent)  # an explicit call, as the original's users made after each turn

    record = gateway.http().get(f"/v1/sessions/{sid}/agents/assistant").json()
    assert (record["model"], record["system_prompt"]) == ("ScriptedModel", "You are a support bot.")
    assert manager.get_agent_config("assistant") == {
        "agent_id": "assistant",
        "model": "ScriptedModel",
        "system_prompt": "You are a support bot.",
    }
    assert manager.get_agent_config("nobody") is None
    latest = gateway.http().get(f"/v1/sessions/{sid}/agents/assistant/messages/3").json()
    assert latest["event_loop_metrics"]["accumulated_metrics"]["latencyMs"] == 84
    assert latest["event_loop_metrics"]["accumulated_usage"]["totalTokens"] == 2 * USAGE["totalTokens"]

    manager.update_agent_config("assistant", model="bedrock/claude", system_prompt="Be brief.")
    assert manager.get_agent_config("assistant") == {
        "agent_id": "assistant",
        "model": "bedrock/claude",
        "system_prompt": "Be brief.",
    }
    after = gateway.http().get(f"/v1/sessions/{sid}/agents/assistant").json()
    assert after["state"] == record["state"] and after["message_count"] == 4  # the rest of the record kept

    second = Agent(model=ScriptedModel([]), session_manager=manager, callback_handler=None, agent_id="helper")
    assert second.messages == []
    agents = manager.list_agents()
    assert [(a["agent_id"], a["message_count"]) for a in agents] == [("assistant", 4), ("helper", 0)]
    assert agents[0]["system_prompt"] == "Be brief."
    assert manager.get_message_count("assistant") == 4
    assert manager.get_message_count() == 4
    manager.close()


def test_application_name(gateway: Gateway, sid: str) -> None:
    with GatewaySessionManager(sid, gateway.base_url, application_name="support-bot") as m:
        assert m.application_name == "support-bot"
    assert gateway.http().get(f"/v1/sessions/{sid}/metadata").json() == {"application_name": "support-bot"}
    with GatewaySessionManager(sid, gateway.base_url) as again:
        assert again.application_name == "support-bot"
    listed = gateway.http().get("/v1/sessions", params={"metadata.application_name": "support-bot"}).json()
    assert sid in [s["session_id"] for s in listed["sessions"]]


def test_message_added_is_one_request(gateway: Gateway, sid: str) -> None:
    """The message and the agent sync of a Strands turn go in one batch request each."""
    with GatewaySessionManagerFactory(gateway.base_url) as factory:
        manager = factory.create_session_manager(sid)
        agent = Agent(model=ScriptedModel([text("a"), text("b")]), session_manager=manager, callback_handler=None)
        agent("warm up")
        before = factory.get_connection_stats()["requests"]
        agent.state.set("turn", 2)
        agent("hello")
        # user message + agent sync (state changed): 1 batch; assistant message + its sync: 1 request.
        assert factory.get_connection_stats()["requests"] - before == 2
    stored = gateway.http().get(f"/v1/sessions/{sid}/agents/default").json()
    assert stored["state"] == {"turn": 2} and stored["message_count"] == 4


def test_factory_shares_one_pool(gateway: Gateway, sid: str) -> None:
    factory = GatewaySessionManagerFactory(gateway.base_url, application_name="bench")
    for i in range(5):
        m = factory.create_session_manager(f"{sid}-{i}")
        Agent(model=ScriptedModel([text("ok")]), session_manager=m, callback_handler=None)("hi")
        m.close()  # a shared pool stays open
    stats = factory.get_connection_stats()
    assert stats["managers_created"] == 5
    assert stats["connections_opened"] == 1  # one thread: one connection, reused for everything
    assert stats["connections_reused"] == stats["requests"] - 1
    assert stats["idle_connections"] == 1 and stats["connections_in_use"] == 0
    assert gateway.http().get(f"/v1/sessions/{sid}-4/metadata").json() == {"application_name": "bench"}
    factory.close()
    assert factory.get_connection_stats()["idle_connections"] == 0
    with pytest.raises(GatewayError):
        factory.create_session_manager(f"{sid}-late")


def test_global_factory(gateway: Gateway, sid: str) -> None:
    with pytest.raises(RuntimeError):
        get_global_factory()
    factory = initialize_global_factory(gateway.base_url)
    try:
        assert get_global_factory() is factory
        m = get_global_factory().create_session_manager(sid)
        m.update_metadata({"k": 1})
        assert factory.get_connection_stats()["requests"] >= 3
    finally:
        close_global_factory()
    with pytest.raises(RuntimeError):
        get_global_factory()


def test_async_manager(gateway: Gateway, sid: str) -> None:
    async def main() -> dict[str, Any]:
        manager = AsyncGatewaySessionManager(sid, gateway.base_url, application_name="async-app")
        model = ScriptedModel(
            [tool_call("manage_metadata", "tu-1", {"action": "set", "metadata": {"mood": "good"}}), text("Done.")]
        )
        agent = Agent(
            model=model,
            tools=[manager.get_metadata_tool()],
            session_manager=manager,
            callback_handler=None,
            system_prompt="async prompt",
        )
        await agent.invoke_async("remember I'm fine")
        out: dict[str, Any] = {
            "messages": json.loads(json.dumps(agent.messages)),
            "metadata": await manager.get_metadata(),
            "app": await manager.get_application_name(),
        }
        await manager.update_metadata({"x.y": 1})
        out["deleted"] = await manager.delete_metadata(["mood"])
        await manager.add_feedback({"rating": "up"})
        out["feedbacks"] = await manager.get_feedbacks()
        out["config"] = await manager.get_agent_config("default")
        await manager.update_agent_config("default", system_prompt="changed")
        out["config2"] = await manager.get_agent_config("default")
        out["agents"] = await manager.list_agents()
        out["count"] = await manager.get_message_count("default")
        out["total"] = await manager.get_message_count()
        out["pool"] = manager.async_pool.snapshot()
        await manager.aclose()
        return out

    out = asyncio.run(main())
    assert out["metadata"] == {"application_name": "async-app", "mood": "good"}
    assert out["app"] == "async-app"
    assert out["deleted"] == {"application_name": "async-app", "x": {"y": 1}}
    assert [f["rating"] for f in out["feedbacks"]] == ["up"]
    assert out["config"]["system_prompt"] == "async prompt" and out["config2"]["system_prompt"] == "changed"
    assert [a["agent_id"] for a in out["agents"]] == ["default"]
    assert out["count"] == out["total"] == 4
    assert out["pool"]["requests"] > 0 and out["pool"]["connections_opened"] == 1
    stored = gateway.http().get(f"/v1/sessions/{sid}/agents/default/messages").json()
    assert [m["message"] for m in stored["messages"]] == out["messages"]


def test_listing_pages_past_max_page_size(tmp_path_factory: pytest.TempPathFactory, sid: str) -> None:
    """A gateway whose max_page_size is below what is asked: the client pages until done."""
    small = start_gateway(tmp_path_factory.mktemp("small-pages"), "", server_extra="max_page_size = 3\n")
    try:
        with GatewaySessionRepository(small.base_url) as repo:
            repo.create_session(Session(session_id=sid, session_type=SessionType.AGENT))
            window = {"__name__": "SlidingWindowConversationManager", "removed_message_count": 0}
            repo.create_agent(sid, SessionAgent(agent_id="a", state={}, conversation_manager_state=window))
            for i in range(8):
                repo.create_message(sid, "a", SessionMessage({"role": "user", "content": [{"text": f"m{i}"}]}, i))
            assert [m.message_id for m in repo.list_messages(sid, "a")] == list(range(8))
            assert [m.message_id for m in repo.list_messages(sid, "a", limit=100000)] == list(range(8))
            assert [m.message_id for m in repo.list_messages(sid, "a", limit=5, offset=2)] == [2, 3, 4, 5, 6]
            assert [m.message_id for m in repo.list_latest_messages(sid, "a", 5)] == [3, 4, 5, 6, 7]
            assert [m.message_id for m in repo.list_latest_messages(sid, "a", 2)] == [6, 7]
            assert repo.get_message_count(sid, "a") == 8
        # A resumed agent gets the whole history.
        m = GatewaySessionManager(sid, small.base_url)
        agent = Agent(model=ScriptedModel([]), session_manager=m, callback_handler=None, agent_id="a")
        assert [texts(x) for x in agent.messages] == [[f"m{i}"] for i in range(8)]
        m.close()
    finally:
        small.stop()


def test_batch_failure_reports_what_was_written(gateway: Gateway, sid: str) -> None:
    with GatewaySessionRepository(gateway.base_url) as repo:
        repo.create_session(Session(session_id=sid, session_type=SessionType.AGENT))
        repo.create_agent(sid, SessionAgent(agent_id="a", state={}, conversation_manager_state={}))
        first = SessionMessage({"role": "user", "content": [{"text": "zero"}]}, 0)
        with pytest.raises(GatewayError) as err, repo.batch():
            repo.create_message(sid, "a", first)
            repo.create_message(sid, "a", SessionMessage({"role": "user", "content": [{"text": "gap"}]}, 7))
        assert (err.value.status, err.value.code) == (409, "message_id_gap")
        assert err.value.details["failed_op"] == 1
        assert first.created_at.endswith("Z")  # the written op's answer was applied
        assert [m.message_id for m in repo.list_messages(sid, "a")] == [0]


def test_http_errors_and_transport(gateway: Gateway, sid: str) -> None:
    with GatewaySessionRepository(gateway.base_url, retries=0) as repo:
        with pytest.raises(GatewayError) as err:
            repo.get_metadata(sid)
        assert (err.value.status, err.value.code) == (404, "not_found")
    # Raw check that the client's requests are plain HTTP/1.1 any server understands.
    assert httpx.get(gateway.base_url + "/healthz").status_code == 200
