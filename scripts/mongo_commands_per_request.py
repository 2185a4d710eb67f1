#!/usr/bin/env python3
"""Server commands per request of a gateway on MongoDB (issue #12: "reads stay one command").

Starts `--gateway-bin` on a free 127.0.0.1 port with a fresh database on `--uri`, sends each kind
of request `--n` times one after another, and prints how many commands of each name the server
counted per request (`serverStatus` `metrics.commands`, diffed around the requests). The gateway's
background work (the outbox poll, twice a second by default) is measured over an idle second first
and subtracted. Compare binaries within one run:

    secantusd-rs --host 127.0.0.1 --port 27190 --storage-path /tmp/cmd &
    target/bench-venv/bin/python scripts/mongo_commands_per_request.py \\
        --uri mongodb://127.0.0.1:27190 --gateway-bin before/gateway --gateway-bin target/release/gateway

Needs pymongo (the benchmark venv, target/bench-venv, has it). Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from pymongo import MongoClient

# (label, method, path, body): the Strands script's requests, in an order that makes each valid.
REQUESTS: list[tuple[str, str, str, Any]] = [
    ("GET session (missing)", "GET", "/v1/sessions/nope", None),
    ("PUT agent", "PUT", "/v1/sessions/s/agents/a", {"state": {"turn": 1}}),
    (
        "POST message",
        "POST",
        "/v1/sessions/s/agents/a/messages",
        {"message": {"role": "user", "content": [{"text": "hello " * 40}]}},
    ),
    (
        "POST batch (message + agent)",
        "POST",
        "/v1/sessions/s/batch",
        {
            "ops": [
                {"op": "append_message", "agent_id": "a", "message": {"message": {"role": "assistant", "content": [{"text": "ok"}]}}},
                {"op": "put_agent", "agent_id": "a", "agent": {"state": {"turn": 2}}},
            ]
        },
    ),
    ("PATCH metadata", "PATCH", "/v1/sessions/s/metadata", {"status": "open"}),
    ("GET messages?latest=20", "GET", "/v1/sessions/s/agents/a/messages?latest=20", None),
    ("GET messages?offset=0&limit=20", "GET", "/v1/sessions/s/agents/a/messages?offset=0&limit=20", None),
    ("GET session", "GET", "/v1/sessions/s", None),
    ("GET agent", "GET", "/v1/sessions/s/agents/a", None),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command_totals(client: MongoClient[dict[str, Any]]) -> dict[str, int]:
    cmds = client.admin.command("serverStatus")["metrics"]["commands"]
    return {k: int(v["total"]) for k, v in cmds.items() if isinstance(v, dict) and "total" in v}


def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0 and k != "serverStatus"}


def send(url: str, method: str, path: str, body: Any) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, method=method, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.read()
        return int(e.code)


def measure(binary: str, uri: str, n: int) -> dict[str, dict[str, float]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    db = f"cmd_{uuid.uuid4().hex[:8]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="cmd-per-request-"))
    (work / "gateway.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\n\n[storage]\ntype = "mongodb"\n\n'
        f'[storage.mongodb]\nuri = "{uri}"\ndatabase = "{db}"\n'
    )
    log = (work / "gateway.log").open("wb")
    proc = subprocess.Popen([str(Path(binary).resolve()), "--config", "gateway.toml"], cwd=work, stdout=log, stderr=log)
    out: dict[str, dict[str, float]] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if send(url, "GET", "/healthz", None) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"gateway did not start: {(work / 'gateway.log').read_text()[-2000:]}")
            time.sleep(0.1)
        send(url, "POST", "/v1/sessions", {"session_id": "s"})
        send(url, "PUT", "/v1/sessions/s/agents/a", {"state": {}})
        for i in range(30):
            send(url, "POST", "/v1/sessions/s/agents/a/messages", {"message": {"i": i}})
        a, t0 = command_totals(client), time.monotonic()
        time.sleep(2)
        idle = {k: v / (time.monotonic() - t0) for k, v in diff(a, command_totals(client)).items()}
        for label, method, path, body in REQUESTS:
            a, t0 = command_totals(client), time.monotonic()
            for _ in range(n):
                status = send(url, method, path, body)
                if status >= 400 and not (label.endswith("(missing)") and status == 404):
                    raise SystemExit(f"{label}: HTTP {status}")
            seconds = time.monotonic() - t0
            counts = diff(a, command_totals(client))
            per = {k: max(0.0, (v - idle.get(k, 0.0) * seconds) / n) for k, v in counts.items()}
            out[label] = {k: round(v, 2) for k, v in per.items() if v >= 0.05}
        out["(idle, per second)"] = {k: round(v, 2) for k, v in idle.items()}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        client.drop_database(db)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uri", required=True, help="mongodb://127.0.0.1:PORT")
    ap.add_argument("--gateway-bin", action="append", required=True, help="repeat to compare binaries")
    ap.add_argument("--n", type=int, default=20, help="requests of each kind")
    a = ap.parse_args()
    if not a.uri.startswith("mongodb://127.0.0.1"):
        raise SystemExit("only a server on 127.0.0.1")
    results = {b: measure(b, a.uri, max(1, min(a.n, 1000))) for b in a.gateway_bin}
    labels = [r[0] for r in REQUESTS] + ["(idle, per second)"]
    print("| request | " + " | ".join(Path(b).name for b in results) + " |")
    print("|---|" + "---|" * len(results))
    for label in labels:
        cells = []
        for res in results.values():
            c = res.get(label, {})
            total = sum(c.values())
            cells.append(f"{total:.2f} ({', '.join(f'{k} {v:g}' for k, v in sorted(c.items()))})" if c else "0")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
