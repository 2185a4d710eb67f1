#!/usr/bin/env python3
"""Peer benchmark: the PyPI package `strands-mongodb-session-manager` (in-process
pymongo) doing the Strands-level session script the gateway benchmark's
`Mix::Strands` does over HTTP, from `--concurrency` threads against the same
MongoDB server. Prints one JSON object on stdout.

What the package supports (0.2.0): sessions, agents, messages (create, read,
update, list with offset/limit). It has no metadata and no feedback, so the
script is the Strands subset, 10 operations per session:

  create_session   KeyValueSessionManager(session_id, storage): read_session + create_session
  create_agent     create_agent
  append_message   create_message (x2)
  update_agent     update_agent (reads the agent, then replaces it)
  append_message   create_message (x2)
  update_agent     update_agent
  list_latest_20   list_messages(offset=max(0, n-20), limit=20)
  get_session      read_session

One `MongoDBSessionStorage` (one MongoClient, its index created once) is shared
by all threads: the cheapest way to use the package (its own docs build a
manager per request, which creates the index again each time).

    python peer.py --uri mongodb://127.0.0.1:27017 --db peer_x --concurrency 16 --seconds 5
"""

import argparse
import json
import sys
import threading
import time

from strands.types.session import SessionAgent, SessionMessage
from strands_agents_session import KeyValueSessionManager
from strands_mongodb_session_manager import MongoDBSessionStorage


def user_message(i):
    return {"role": "user", "content": [{"text": f"Turn {i}: could you summarise the open support tickets for account ACME-42, group them by priority and tell me which ones breach the SLA this week? Please include the owner of each ticket and the last customer reply."}]}


def assistant_message(i):
    return {"role": "assistant", "content": [
        {"text": f"Turn {i}: there are 7 open tickets for ACME-42. High priority: #4411 (owner: dana, last reply 2 days ago, breaches SLA on Thursday) and #4420 (owner: li, replied today). Medium: #4398, #4402 and #4415, all owned by sam, none at risk. Low: #4371 and #4390 (owner: kim), waiting for the customer. Only #4411 breaches the SLA this week; I suggest escalating it to the on-call lead and sending the customer a status update today. Shall I draft that update?"},
        {"toolUse": {"toolUseId": f"t-{i}", "name": "ticket_search", "input": {"account": "ACME-42", "state": "open"}}},
    ]}


def agent(turn):
    return SessionAgent(
        agent_id="assistant",
        state={"user_name": "Ada", "locale": "en-GB", "turn": turn},
        conversation_manager_state={"__name__": "SlidingWindowConversationManager", "removed_message_count": 0, "model_call_count": turn},
        _internal_state={"interrupt_state": {"activated": False, "context": {}, "interrupts": {}}},
    )


def pct(sorted_us, q):
    if not sorted_us:
        return 0
    i = min(len(sorted_us), max(1, int(-(-len(sorted_us) * q // 1)))) - 1
    return sorted_us[i]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--max-ops", type=int, default=1_000_000)
    ap.add_argument("--tag", default="peer")
    a = ap.parse_args()

    storage = MongoDBSessionStorage(connection_string=a.uri, database_name=a.db, collection_name="sessions")
    storage.client.admin.command("ping")

    lock = threading.Lock()
    done = [0]
    per_op = {}
    errors = []
    start = time.perf_counter()
    deadline = start + a.seconds

    def worker(w):
        local = {}
        n = 0

        def timed(name, fn):
            if time.perf_counter() >= deadline:
                return False
            t = time.perf_counter()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    if len(errors) < 5:
                        errors.append(f"{name}: {e!r}")
                    else:
                        errors.append(None)
                return False
            local.setdefault(name, []).append(int((time.perf_counter() - t) * 1e6))
            return True

        while time.perf_counter() < deadline:
            with lock:
                if done[0] >= a.max_ops:
                    break
            sid = f"{a.tag}-{w}-{n}"
            n += 1
            box = {}
            ops_before = sum(len(v) for v in local.values())

            def create():
                box["m"] = KeyValueSessionManager(session_id=sid, storage=storage)

            steps = [
                ("create_session", create),
                ("create_agent", lambda: box["m"].create_agent(sid, agent(0))),
                ("append_message", lambda: box["m"].create_message(sid, "assistant", SessionMessage(user_message(0), 0))),
                ("append_message", lambda: box["m"].create_message(sid, "assistant", SessionMessage(assistant_message(1), 1))),
                ("update_agent", lambda: box["m"].update_agent(sid, agent(1))),
                ("append_message", lambda: box["m"].create_message(sid, "assistant", SessionMessage(user_message(2), 2))),
                ("append_message", lambda: box["m"].create_message(sid, "assistant", SessionMessage(assistant_message(3), 3))),
                ("update_agent", lambda: box["m"].update_agent(sid, agent(2))),
                ("list_latest_20", lambda: box["m"].list_messages(sid, "assistant", limit=20, offset=max(0, 4 - 20))),
                ("get_session", lambda: box["m"].read_session(sid)),
            ]
            for name, fn in steps:
                if not timed(name, fn):
                    break
            with lock:
                done[0] += sum(len(v) for v in local.values()) - ops_before
        with lock:
            for k, v in local.items():
                per_op.setdefault(k, []).extend(v)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start

    out_ops = {}
    all_us = []
    for k, v in per_op.items():
        v.sort()
        all_us.extend(v)
        out_ops[k] = {"n": len(v), "p50": pct(v, 0.5), "p95": pct(v, 0.95), "p99": pct(v, 0.99), "max": v[-1] if v else 0}
    all_us.sort()
    res = {
        "concurrency": a.concurrency,
        "ops": len(all_us),
        "secs": elapsed,
        "ops_per_s": len(all_us) / elapsed if elapsed > 0 else 0.0,
        "errors": len(errors),
        "error_samples": [e for e in errors if e][:5],
        "all": {"n": len(all_us), "p50": pct(all_us, 0.5), "p95": pct(all_us, 0.95), "p99": pct(all_us, 0.99)},
        "per_op": out_ops,
        "python": sys.version.split()[0],
    }
    storage.client.drop_database(a.db)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
