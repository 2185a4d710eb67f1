#!/usr/bin/env python3
"""What reading a session's latest 20 messages costs a MongoDB-wire server, by read design (issue #12).

The MongoDB store reads "latest N" as two `find`s: the session document (its incarnation `uid`,
liveness and the agent's message count), then the range of message documents. The alternative that
would make it one command is an `aggregate` on `sessions` with a `$lookup` into `messages`. This
script runs both on the same data (64 sessions of 40 messages, 8 client threads, `--reads` reads per
variant and round, `--rounds` rounds interleaved) and prints the server's CPU time per read
(utime + stime of the server process from /proc) and the reads per second:

    secantusd-rs --host 127.0.0.1 --port 27191 --storage-path /tmp/rc --log-level WARNING &
    target/bench-venv/bin/python scripts/mongo_read_cost.py --uri mongodb://127.0.0.1:27191 --pid $!

Needs pymongo (the benchmark venv, target/bench-venv, has it). Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any, Callable

from pymongo import MongoClient

SESSIONS, MESSAGES, LATEST = 64, 40, 20
MESSAGE = json.dumps({"role": "user", "content": [{"text": "hello " * 40}]})


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uri", required=True, help="mongodb://127.0.0.1:PORT")
    ap.add_argument("--pid", type=int, required=True, help="the server's process id (its CPU is read from /proc)")
    ap.add_argument("--reads", type=int, default=1600)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not a.uri.startswith("mongodb://127.0.0.1"):
        raise SystemExit("only a server on 127.0.0.1")
    client: MongoClient[dict[str, Any]] = MongoClient(a.uri)
    db = client["read_cost"]
    client.drop_database("read_cost")
    db.messages.create_index([("key", 1), ("uid", 1), ("agent_id", 1), ("message_id", 1)], unique=True)
    db.sessions.insert_many(
        [{"_id": f"t/s{i}", "uid": 7, "deleted": False, "agents": {"a": {"v": 1, "n": MESSAGES}}} for i in range(SESSIONS)]
    )
    db.messages.insert_many(
        [
            {"key": f"t/s{i}", "uid": 7, "agent_id": "a", "message_id": m, "doc": MESSAGE}
            for i in range(SESSIONS)
            for m in range(MESSAGES)
        ]
    )

    def two_finds(key: str) -> list[Any]:
        s = db.sessions.find_one({"_id": key, "deleted": {"$ne": True}}, {"uid": 1, "agents.a": 1})
        assert s is not None
        n = s["agents"]["a"]["n"]
        rng = {"$gte": n - LATEST, "$lt": n}
        filt = {"key": key, "uid": s["uid"], "agent_id": "a", "message_id": rng}
        return list(db.messages.find(filt).sort("message_id", 1).limit(LATEST).batch_size(LATEST))

    def one_lookup(key: str) -> list[Any]:
        pipeline = [
            {"$match": {"_id": key, "deleted": {"$ne": True}}},
            {"$project": {"uid": 1, "agents.a": 1}},
            {
                "$lookup": {
                    "from": "messages",
                    "let": {"uid": "$uid"},
                    "pipeline": [
                        {"$match": {"key": key, "agent_id": "a", "$expr": {"$eq": ["$uid", "$$uid"]}}},
                        {"$sort": {"message_id": -1}},
                        {"$limit": LATEST},
                    ],
                    "as": "m",
                }
            },
        ]
        return list(db.sessions.aggregate(pipeline))[0]["m"]

    variants: list[tuple[str, Callable[[str], list[Any]]]] = [
        ("2 finds: session, then the message range (the store today)", two_finds),
        ("1 aggregate: session with $lookup into messages", one_lookup),
    ]
    for _, f in variants:
        assert len(f("t/s1")) == LATEST

    def run(f: Callable[[str], list[Any]]) -> tuple[float, float]:
        n = min(a.reads, 100_000)

        def worker(t: int) -> None:
            for i in range(n // 8):
                f(f"t/s{(t * 8 + i) % SESSIONS}")

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        c0, t0 = server_cpu(a.pid), time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return 1e6 * (server_cpu(a.pid) - c0) / n, n / (time.perf_counter() - t0)

    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    for _ in range(a.rounds):
        for name, f in variants:
            results[name].append(run(f))
    client.drop_database("read_cost")
    print(f"latest {LATEST} of {MESSAGES} messages, {SESSIONS} sessions, 8 threads; server {a.uri}")
    print("| read design | server CPU µs per read, each round | reads/s, each round |\n|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {' / '.join(f'{r[0]:.0f}' for r in runs)} | {' / '.join(f'{r[1]:.0f}' for r in runs)} |")


if __name__ == "__main__":
    main()
