#!/usr/bin/env python3
"""Benchmarks of the Python client (issue #13): not a test, it prints figures.

  cpu         Client CPU per operation, one thread, loopback: this package against pymongo doing the
              same operation in the original library's layout (one document per session), same payloads.
              Only the benchmark process's CPU is counted (time.process_time); the servers are other
              processes.
  throughput  A 16-thread Python service running the Strands script (create session, create agent,
              append x2, update agent, append x2, update agent, list latest 20, read session) through
              this package against the same service using `strands-mongodb-session-manager` in process
              on the same MongoDB-wire server. Ops/s counts the 10 Strands operations of each session for
              both (the package sends "append assistant message + update agent" as one batch request).

Both start their own gateway from --gateway-bin (MongoDB store at --mongodb-uri, or --store embedded)
on a free 127.0.0.1 port, and use fresh databases. Needs the `bench` extra (pymongo,
strands-mongodb-session-manager):

  pip install -e 'examples/strands-adapter[bench]'
  python examples/strands-adapter/bench.py cpu --gateway-bin target/release/gateway --mongodb-uri mongodb://127.0.0.1:27017
  python examples/strands-adapter/bench.py throughput --gateway-bin target/release/gateway --mongodb-uri mongodb://127.0.0.1:27017
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from session_gateway_strands import GatewaySessionRepository


def user_message(i: int) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {
                "text": f"Turn {i}: could you summarise the open support tickets for account ACME-42, group them by priority and tell me which ones breach the SLA this week? Please include the owner of each ticket and the last customer reply."
            }
        ],
    }


def assistant_message(i: int) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [
            {
                "text": f"Turn {i}: there are 7 open tickets for ACME-42. High priority: #4411 (owner: dana, last reply 2 days ago, breaches SLA on Thursday) and #4420 (owner: li, replied today). Medium: #4398, #4402 and #4415, all owned by sam, none at risk. Low: #4371 and #4390 (owner: kim), waiting for the customer. Only #4411 breaches the SLA this week; I suggest escalating it to the on-call lead and sending the customer a status update today. Shall I draft that update?"
            },
            {
                "toolUse": {
                    "toolUseId": f"t-{i}",
                    "name": "ticket_search",
                    "input": {"account": "ACME-42", "state": "open"},
                }
            },
        ],
    }


def agent(turn: int) -> SessionAgent:
    return SessionAgent(
        agent_id="assistant",
        state={"user_name": "Ada", "locale": "en-GB", "turn": turn},
        conversation_manager_state={
            "__name__": "SlidingWindowConversationManager",
            "removed_message_count": 0,
            "model_call_count": turn,
        },
        _internal_state={"interrupt_state": {"activated": False, "context": {}, "interrupts": {}}},
    )


def message(i: int) -> SessionMessage:
    return SessionMessage(user_message(i) if i % 2 == 0 else assistant_message(i), i)


# -- a gateway of our own ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    def __init__(self, binary: str, store: str, mongodb_uri: str | None) -> None:
        self.dir = tempfile.mkdtemp(prefix="pyclient-bench-")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        storage = '[storage]\ntype = "embedded"\n\n[storage.embedded]\npath = "data/gateway.redb"\n'
        if store == "mongodb":
            db = f"bench_gw_{uuid.uuid4().hex[:8]}"
            storage = f'[storage]\ntype = "mongodb"\n\n[storage.mongodb]\nuri = "{mongodb_uri}"\ndatabase = "{db}"\n'
        Path(self.dir, "gateway.toml").write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n\n{storage}\n[plugins]\ncache_dir = "data/plugin-cache"\nwatch = false\n'
        )
        env = {**os.environ, "RUST_LOG": "warn"}
        env.pop("MONGODB_URI", None)
        self.log = open(Path(self.dir, "gateway.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(Path(binary).resolve()), "--config", "gateway.toml"],
            cwd=self.dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gateway exited: {Path(self.dir, 'gateway.log').read_text()[-2000:]}")
            try:
                with urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("gateway not ready after 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# -- goal 1: CPU per operation -------------------------------------------------------------------------------


def _agent_doc(a: SessionAgent) -> dict[str, Any]:
    return {
        "agent_id": a.agent_id,
        "state": a.state,
        "conversation_manager_state": a.conversation_manager_state,
        "_internal_state": a._internal_state,
    }


class Pymongo:
    """pymongo doing what the original library's repository does, in its layout (one document per session).

    The documents are built and read back as leanly as this package does it (no ``to_dict()`` /
    ``from_dict()`` round trips, which cost the original library far more than the driver), so the
    baseline is the driver's own cost."""

    def __init__(self, uri: str) -> None:
        from pymongo import MongoClient

        self.client: Any = MongoClient(uri)
        self.coll = self.client[f"bench_orig_{uuid.uuid4().hex[:8]}"]["sessions"]
        self.client.admin.command("ping")

    def create_session(self, sid: str) -> None:
        now = datetime.now(timezone.utc)
        self.coll.insert_one(
            {
                "_id": sid,
                "session_id": sid,
                "session_type": "AGENT",
                "created_at": now,
                "updated_at": now,
                "agents": {},
                "metadata": {},
                "feedbacks": [],
            }
        )

    def create_agent(self, sid: str, a: SessionAgent) -> None:
        now = datetime.now(timezone.utc)
        self.coll.update_one(
            {"_id": sid},
            {
                "$set": {
                    f"agents.{a.agent_id}": {
                        "agent_data": _agent_doc(a),
                        "created_at": now,
                        "updated_at": now,
                        "messages": [],
                    }
                }
            },
        )

    def append(self, sid: str, aid: str, m: SessionMessage) -> None:
        now = datetime.now(timezone.utc)
        doc = {
            "message": m.message,
            "message_id": m.message_id,
            "redact_message": m.redact_message,
            "created_at": now,
            "updated_at": now,
        }
        self.coll.update_one({"_id": sid}, {"$push": {f"agents.{aid}.messages": doc}, "$set": {"updated_at": now}})

    def update_agent(self, sid: str, a: SessionAgent) -> None:
        now = datetime.now(timezone.utc)
        self.coll.update_one(
            {"_id": sid},
            {
                "$set": {
                    f"agents.{a.agent_id}.agent_data": _agent_doc(a),
                    f"agents.{a.agent_id}.updated_at": now,
                    "updated_at": now,
                }
            },
        )

    def latest(self, sid: str, aid: str, n: int) -> list[SessionMessage]:
        doc = self.coll.find_one({"_id": sid}, {f"agents.{aid}.messages": {"$slice": -n}})
        return [
            SessionMessage(
                message=m["message"],
                message_id=m["message_id"],
                redact_message=m.get("redact_message"),
                created_at=m["created_at"].isoformat(),
                updated_at=m["updated_at"].isoformat(),
            )
            for m in doc["agents"][aid]["messages"]
        ]

    def read_session(self, sid: str) -> Session:
        doc = self.coll.find_one({"_id": sid}, {"agents": 0, "feedbacks": 0})
        return Session(
            session_id=doc["session_id"],
            session_type=SessionType(doc["session_type"]),
            created_at=doc["created_at"].isoformat(),
            updated_at=doc["updated_at"].isoformat(),
        )

    def close(self) -> None:
        self.client.drop_database(self.coll.database.name)
        self.client.close()


class Client:
    """This package, the same operations."""

    def __init__(self, url: str) -> None:
        self.repo = GatewaySessionRepository(url)

    def create_session(self, sid: str) -> None:
        self.repo.create_session(Session(session_id=sid, session_type=SessionType.AGENT))

    def create_agent(self, sid: str, a: SessionAgent) -> None:
        self.repo.create_agent(sid, a)

    def append(self, sid: str, aid: str, m: SessionMessage) -> None:
        self.repo.create_message(sid, aid, m)

    def update_agent(self, sid: str, a: SessionAgent) -> None:
        self.repo.update_agent(sid, a)

    def latest(self, sid: str, aid: str, n: int) -> list[SessionMessage]:
        return self.repo.list_latest_messages(sid, aid, n)

    def read_session(self, sid: str) -> Session:
        s = self.repo.read_session(sid)
        assert s is not None
        return s

    def close(self) -> None:
        self.repo.close()


def cpu_per_op(impl: Any, n: int, tag: str) -> dict[str, float]:
    """Microseconds of this process's CPU per operation, for each operation."""
    per_session = 50
    sids = [f"cpu-{tag}-{uuid.uuid4().hex[:8]}-{i}" for i in range(n // per_session + 1)]
    for sid in sids:
        impl.create_session(sid)
        impl.create_agent(sid, agent(0))
    msgs = [message(i) for i in range(per_session)]
    agents = [agent(t) for t in range(n)]
    out: dict[str, float] = {}

    t0 = time.process_time()
    for i in range(n):
        impl.append(sids[i // per_session], "assistant", msgs[i % per_session])
    out["append"] = (time.process_time() - t0) / n * 1e6

    t0 = time.process_time()
    for i in range(n):
        impl.update_agent(sids[i % len(sids)], agents[i])
    out["agent update"] = (time.process_time() - t0) / n * 1e6

    full = [sid for sid in sids[:-1]] or sids
    t0 = time.process_time()
    for i in range(n):
        got = impl.latest(full[i % len(full)], "assistant", 20)
    out["list latest 20"] = (time.process_time() - t0) / n * 1e6
    assert len(got) == 20, len(got)

    t0 = time.process_time()
    for i in range(n):
        impl.read_session(sids[i % len(sids)])
    out["read session"] = (time.process_time() - t0) / n * 1e6
    return out


def cmd_cpu(a: argparse.Namespace) -> None:
    gw = Gateway(a.gateway_bin, a.store, a.mongodb_uri)
    try:
        mongo, client = Pymongo(a.mongodb_uri), Client(gw.url)
        for impl in (mongo, client):  # warm-up: connections, caches, imports
            cpu_per_op(impl, 100, "warm")
        rounds: dict[str, list[dict[str, float]]] = {"pymongo": [], "client": []}
        for _ in range(a.rounds):  # interleaved, so background load hits both alike
            rounds["pymongo"].append(cpu_per_op(mongo, a.n, "m"))
            rounds["client"].append(cpu_per_op(client, a.n, "c"))
        mongo.close()
        client.close()
    finally:
        gw.stop()
    print(
        f"client CPU per operation (µs, median of {a.rounds} rounds of {a.n}; one thread; "
        f"gateway store {a.store}; MongoDB-wire server {a.mongodb_uri})"
    )
    print("| operation | pymongo | session-gateway-strands | ratio |\n|---|---:|---:|---:|")
    summary = {}
    for op in rounds["pymongo"][0]:
        m = sorted(r[op] for r in rounds["pymongo"])[len(rounds["pymongo"]) // 2]
        c = sorted(r[op] for r in rounds["client"])[len(rounds["client"]) // 2]
        summary[op] = {"pymongo_us": round(m, 1), "client_us": round(c, 1), "ratio": round(c / m, 2)}
        print(f"| {op} | {m:.0f} | {c:.0f} | {c / m:.2f} |")
    print(json.dumps(summary))


# -- goal 2: throughput of a 16-thread service ---------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """utime + stime of process `pid` in seconds, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_service(
    name: str, script: Any, threads: int, seconds: float, max_sessions: int, pids: dict[str, int] | None = None
) -> dict[str, Any]:
    """Runs `script` from `threads` threads; with `pids` ({label: pid}), also the CPU time per operation of
    each of those processes and of this one (label "service") over the run."""
    pids = dict(pids or {})
    cpu0 = {k: process_cpu(pid) for k, pid in pids.items()}
    own0 = time.process_time()
    lock = threading.Lock()
    ops = [0]
    sessions = [0]
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + seconds

    def worker(w: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            with lock:
                if sessions[0] >= max_sessions:
                    return
                sessions[0] += 1
            sid = f"{name}-{uuid.uuid4().hex[:6]}-{w}-{n}"
            n += 1
            try:
                done = script(sid)
            except Exception as e:  # noqa: BLE001 - reported
                with lock:
                    errors.append(repr(e)[:300])
                return
            with lock:
                ops[0] += done

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    cpu_us = {k: 1e6 * (process_cpu(pid) - cpu0[k]) / max(ops[0], 1) for k, pid in pids.items()}
    cpu_us["service"] = 1e6 * (time.process_time() - own0) / max(ops[0], 1)
    return {
        "ops": ops[0],
        "seconds": round(elapsed, 2),
        "ops_per_s": round(ops[0] / elapsed, 1),
        "cpu_us_per_op": {k: round(v) for k, v in cpu_us.items()},
        "errors": errors[:3],
    }


def peer_script(uri: str) -> tuple[Any, Any]:
    from strands_agents_session import KeyValueSessionManager
    from strands_mongodb_session_manager import MongoDBSessionStorage

    storage = MongoDBSessionStorage(
        connection_string=uri, database_name=f"bench_peer_{uuid.uuid4().hex[:8]}", collection_name="sessions"
    )
    storage.client.admin.command("ping")

    def script(sid: str) -> int:
        m = KeyValueSessionManager(session_id=sid, storage=storage)
        m.create_agent(sid, agent(0))
        m.create_message(sid, "assistant", SessionMessage(user_message(0), 0))
        m.create_message(sid, "assistant", SessionMessage(assistant_message(1), 1))
        m.update_agent(sid, agent(1))
        m.create_message(sid, "assistant", SessionMessage(user_message(2), 2))
        m.create_message(sid, "assistant", SessionMessage(assistant_message(3), 3))
        m.update_agent(sid, agent(2))
        assert len(m.list_messages(sid, "assistant", limit=20, offset=0)) == 4
        assert m.read_session(sid) is not None
        return 10

    return script, storage


def client_script(repo: GatewaySessionRepository) -> Any:
    def script(sid: str) -> int:
        # What GatewaySessionManager does for a Strands agent: read + create the session, create the agent,
        # append the user message, then "assistant message + agent sync" as one batch.
        assert repo.read_session(sid) is None
        repo.create_session(Session(session_id=sid, session_type=SessionType.AGENT))
        repo.create_agent(sid, agent(0))
        repo.create_message(sid, "assistant", SessionMessage(user_message(0), 0))
        with repo.batch():
            repo.create_message(sid, "assistant", SessionMessage(assistant_message(1), 1))
            repo.update_agent(sid, agent(1))
        repo.create_message(sid, "assistant", SessionMessage(user_message(2), 2))
        with repo.batch():
            repo.create_message(sid, "assistant", SessionMessage(assistant_message(3), 3))
            repo.update_agent(sid, agent(2))
        assert len(repo.list_latest_messages(sid, "assistant", 20)) == 4
        assert repo.read_session(sid) is not None
        return 10

    return script


def cmd_throughput(a: argparse.Namespace) -> None:
    gw = Gateway(a.gateway_bin, a.store, a.mongodb_uri)
    results: dict[str, list[dict[str, Any]]] = {"peer": [], "client": []}
    try:
        peer, storage = peer_script(a.mongodb_uri)
        repo = GatewaySessionRepository(gw.url)
        client = client_script(repo)
        run_service("warm-peer", peer, 2, 1.0, 20)
        run_service("warm-client", client, 2, 1.0, 20)
        server = {"server": a.server_pid} if a.server_pid else {}
        for _ in range(a.rounds):  # interleaved rounds, ratio per round
            results["peer"].append(run_service("peer", peer, a.threads, a.seconds, a.max_sessions, server))
            results["client"].append(
                run_service(
                    "client", client, a.threads, a.seconds, a.max_sessions, {**server, "gateway": gw.proc.pid}
                )
            )
        repo.close()
        storage.client.close()
    finally:
        gw.stop()
    print(
        f"{a.threads} threads, Strands script (10 operations per session), {a.seconds:g} s per run; "
        f"gateway store {a.store}; MongoDB-wire server {a.mongodb_uri}"
    )
    print(
        "| round | strands-mongodb-session-manager ops/s | session-gateway-strands ops/s | ratio "
        "| CPU µs per op, library: service / server | gateway: service / gateway / server |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for i, (p, c) in enumerate(zip(results["peer"], results["client"]), 1):
        pc, cc = p["cpu_us_per_op"], c["cpu_us_per_op"]
        peer_cpu = " / ".join(str(pc[k]) for k in ("service", "server") if k in pc)
        client_cpu = " / ".join(str(cc[k]) for k in ("service", "gateway", "server") if k in cc)
        print(
            f"| {i} | {p['ops_per_s']:.0f} | {c['ops_per_s']:.0f} | {c['ops_per_s'] / max(p['ops_per_s'], 1e-9):.2f} "
            f"| {peer_cpu} | {client_cpu} |"
        )
    print(json.dumps(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("cpu", "throughput"):
        p = sub.add_parser(name)
        p.add_argument("--gateway-bin", required=True)
        p.add_argument(
            "--mongodb-uri", required=True, help="MongoDB-wire server (pymongo / the peer, and the gateway's store)"
        )
        p.add_argument("--store", choices=("mongodb", "embedded"), default="mongodb")
        p.add_argument("--rounds", type=int, default=3)
    sub.choices["cpu"].add_argument("--n", type=int, default=1000, help="operations per measurement")
    sub.choices["throughput"].add_argument("--threads", type=int, default=16)
    sub.choices["throughput"].add_argument("--seconds", type=float, default=10.0)
    sub.choices["throughput"].add_argument("--max-sessions", type=int, default=20000, help="bound per run")
    sub.choices["throughput"].add_argument(
        "--server-pid", type=int, help="the MongoDB-wire server's pid: also print its CPU per operation"
    )
    a = ap.parse_args()
    {"cpu": cmd_cpu, "throughput": cmd_throughput}[a.cmd](a)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
