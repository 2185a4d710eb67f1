#!/usr/bin/env python3
"""What one session write costs a MongoDB-wire server, by write design (issue #12).

Runs the same appends (one message to a session whose `seq` advances) written
in the shapes the MongoDB store could use, and prints the server's CPU time
per acknowledged write (utime + stime of the server process from /proc, diffed
around each run) and the client-side throughput:

- ``3 docs``: the store's group commit today — per write, the guarded update
  of the session document, the message insert and the event insert, in one
  multi-namespace ``bulkWrite`` inside a transaction, ``--jobs`` sessions'
  writes per transaction;
  The store asks for a summary (counts); ``verbose`` asks for one result
  per model, as the store did before 2026-12-02; ``slim event`` carries a
  reference to the message instead of a copy of it;
- ``2 docs``: the same without the event insert (the event carried in the
  changed document, the feed from change streams), and with the event
  ``$set`` in the session document (latest only);
- ``1 doc``: the message and its event pushed into the session document
  itself (the bucket design, as the Python library's schema does), in a
  transaction or as a plain ordered ``bulkWrite`` (one document is atomic);
- ``library``: one ``update_one`` with ``$push`` per write, no transaction.

Index variants show what the secondary indexes cost per write. ``--only``
picks variants by a part of their name. Variants run
interleaved ``--rounds`` times on fresh collections; the table gives each
one's median. The server must run on this machine (its pid is read from
/proc): e.g.

    secantusd-rs --host 127.0.0.1 --port 27191 --storage-path /tmp/wc --log-level WARNING &
    python3 scripts/mongo_write_cost.py --uri mongodb://127.0.0.1:27191 --pid $!

Needs pymongo ≥ 4.9 (``MongoClient.bulk_write``); the benchmark venv
(``target/bench-venv``, made by scripts/bench.sh) has it. Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from typing import Any, Callable

from pymongo import InsertOne, MongoClient, UpdateOne

MESSAGE = json.dumps({"role": "user", "content": [{"text": "hello " * 20}]})


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, uri: str, pid: int, threads: int, writes: int, jobs: int) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri, w="majority")
        self.db = self.client["write_cost"]
        self.pid, self.threads, self.writes, self.jobs = pid, threads, writes, jobs
        self.sessions_per_thread = max(jobs, 4)

    def setup(self, session_indexes: bool = True, event_indexes: bool = True) -> None:
        self.client.drop_database("write_cost")
        db = self.db
        for name in ("sessions", "messages", "events"):
            db.create_collection(name)
        if session_indexes:  # the store's: created_at, updated_at, (session_type, updated_at)
            db.sessions.create_index([("created_at", 1)])
            db.sessions.create_index([("updated_at", 1)])
            db.sessions.create_index([("session_type", 1), ("updated_at", 1)])
        db.messages.create_index([("key", 1), ("uid", 1), ("agent_id", 1), ("message_id", 1)], unique=True)
        db.events.create_index([("key", 1), ("seq", 1)], unique=True)
        if event_indexes:
            db.events.create_index([("ts", 1), ("key", 1), ("seq", 1)])
            db.events.create_index([("hooks_pending", 1), ("lease_until", 1)])
        now = time.time()
        db.sessions.insert_many(
            [
                {
                    "_id": self.key(t, j),
                    "seq": 0,
                    "session_type": "agent",
                    "created_at": now,
                    "updated_at": now,
                    "agents": {"a": {"v": 1, "n": 0}},
                    "metadata": {"k": "v"},
                    "messages": [],
                    "events": [],
                }
                for t in range(self.threads)
                for j in range(self.sessions_per_thread)
            ]
        )

    def key(self, t: int, j: int) -> str:
        return f"t/s{t}-{j}"

    def models(self, shape: str, key: str, seq: int) -> list[Any]:
        now = time.time()
        event = {"seq": seq + 1, "type": "message.appended", "ts": now}
        if shape == "1 doc":
            return [
                UpdateOne(
                    {"_id": key, "seq": seq},
                    {
                        "$set": {"seq": seq + 1, "updated_at": now, "agents.a.n": seq + 1},
                        "$push": {
                            "messages": {"message_id": seq, "doc": MESSAGE},
                            "events": {"$each": [event], "$slice": -100},
                        },
                    },
                    namespace="write_cost.sessions",
                )
            ]
        update: dict[str, Any] = {"$set": {"seq": seq + 1, "updated_at": now, "agents.a.n": seq + 1}}
        if shape.startswith("2 docs, event in session"):
            cap = int(shape.rsplit(" ", 1)[1])
            small = {**event, "payload": {"agent_id": "a", "message_id": seq}, "hooks_pending": False}
            update["$push"] = {"events": {"$each": [small], "$slice": -cap}}
        models: list[Any] = [
            UpdateOne({"_id": key, "seq": seq}, update, namespace="write_cost.sessions"),
            InsertOne(
                {"key": key, "uid": 1, "agent_id": "a", "message_id": seq, "doc": MESSAGE},
                namespace="write_cost.messages",
            ),
        ]
        if shape == "2 docs, event set in session":
            update["$set"]["ev"] = {**event, "doc": MESSAGE, "hooks_pending": False}
        if shape == "3 docs, slim event":
            models.append(
                InsertOne(
                    {
                        "key": key,
                        **event,
                        "tenant": "t",
                        "session_id": key,
                        "ref": {"agent_id": "a", "message_id": seq},
                        "hooks_pending": False,
                        "lease_until": 0,
                    },
                    namespace="write_cost.events",
                )
            )
        if shape in ("3 docs", "3 docs, verbose"):
            models.append(
                InsertOne(
                    {
                        "key": key,
                        **event,
                        "tenant": "t",
                        "session_id": key,
                        "doc": MESSAGE,
                        "hooks_pending": False,
                        "lease_until": 0,
                    },
                    namespace="write_cost.events",
                )
            )
        return models

    def run(self, shape: str, transaction: bool) -> tuple[float, float]:
        """Server CPU µs per write and writes/s for `shape`."""
        done: list[int] = []
        client, db = self.client, self.db

        def worker(t: int) -> None:
            keys = [self.key(t, j) for j in range(self.sessions_per_thread)]
            seqs = dict.fromkeys(keys, 0)
            n, written, turn = self.writes // self.threads, 0, 0
            while written < n:
                if shape == "library":
                    k = keys[turn % len(keys)]
                    turn += 1
                    db.sessions.update_one(
                        {"_id": k},
                        {"$push": {"messages": {"message_id": seqs[k], "doc": MESSAGE}}, "$set": {"updated_at": time.time()}},
                    )
                    seqs[k] += 1
                    written += 1
                    continue
                batch = keys[: self.jobs]
                models = [m for k in batch for m in self.models(shape, k, seqs[k])]
                if transaction:
                    with client.start_session() as s, s.start_transaction():
                        client.bulk_write(models, session=s, verbose_results=shape.endswith("verbose"))
                else:
                    client.bulk_write(models, ordered=True)
                for k in batch:
                    seqs[k] += 1
                written += len(batch)
            done.append(written)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(self.threads)]
        c0, t0 = server_cpu(self.pid), time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        c1, t1 = server_cpu(self.pid), time.perf_counter()
        writes = sum(done)
        return 1e6 * (c1 - c0) / writes, writes / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uri", required=True, help="mongodb://127.0.0.1:PORT")
    ap.add_argument("--pid", type=int, required=True, help="the server's process id (its CPU is read from /proc)")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--writes", type=int, default=3200, help="writes per variant and round (bounded)")
    ap.add_argument("--jobs", type=int, default=4, help="sessions' writes per transaction (the group commit's batch)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", action="append", default=[], help="run only variants whose name contains this (repeatable)")
    a = ap.parse_args()
    if not a.uri.startswith("mongodb://127.0.0.1"):
        raise SystemExit("only a server on 127.0.0.1")
    b = Bench(a.uri, a.pid, a.threads, min(a.writes, 100_000), max(1, a.jobs))
    variants: list[tuple[str, Callable[[], None], str, bool]] = [
        ("3 docs, transaction, summary results", lambda: b.setup(), "3 docs", True),
        ("3 docs, transaction, verbose results (the store today)", lambda: b.setup(), "3 docs, verbose", True),
        ("3 docs, transaction, the event without the message (a reference)", lambda: b.setup(), "3 docs, slim event", True),
        ("2 docs, transaction, the event set in the session document (latest only)", lambda: b.setup(), "2 docs, event set in session", True),
        ("3 docs, transaction, events indexed on (key, seq) only", lambda: b.setup(event_indexes=False), "3 docs", True),
        ("3 docs, transaction, no session secondary indexes", lambda: b.setup(session_indexes=False), "3 docs", True),
        ("2 docs, transaction (no event document)", lambda: b.setup(), "2 docs", True),
        ("2 docs, transaction, the event in the session document (last 32 kept)", lambda: b.setup(), "2 docs, event in session 32", True),
        ("2 docs, transaction, the event in the session document (last 256 kept)", lambda: b.setup(), "2 docs, event in session 256", True),
        ("1 doc, transaction (message and event in the session)", lambda: b.setup(), "1 doc", True),
        ("1 doc, ordered bulkWrite, no transaction", lambda: b.setup(), "1 doc", False),
        ("library: one update_one $push per write", lambda: b.setup(), "library", False),
    ]
    if a.only:
        variants = [v for v in variants if any(o in v[0] for o in a.only)]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in variants}
    for _ in range(a.rounds):
        for name, setup, shape, txn in variants:
            setup()
            results[name].append(b.run(shape, txn))
    b.client.drop_database("write_cost")
    print(f"{a.threads} threads, {a.writes} writes per variant and round, {a.jobs} sessions per transaction, "
          f"{a.rounds} rounds interleaved (medians); server {a.uri}")
    print("| write design | server CPU µs per write | writes/s |\n|---|---:|---:|")
    for name, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        print(f"| {name} | {cpu:.0f} | {rate:.0f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
