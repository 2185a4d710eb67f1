"""Starts real gateways for the tests, from the binary in GATEWAY_BIN."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parents[2]
BUILD_HINT = f"build it with `cargo build --bin gateway` in {REPO}, or point GATEWAY_BIN at a built `gateway` binary"


def gateway_bin() -> Path:
    """The gateway binary; fails the test (never skips) when it is missing."""
    path = Path(os.environ.get("GATEWAY_BIN") or REPO / "target" / "debug" / "gateway")
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"gateway binary not found at {path}: {BUILD_HINT}", pytrace=False)
    return path


@dataclass
class Gateway:
    """A running gateway process."""

    base_url: str
    proc: subprocess.Popen[bytes]
    log: Path
    clients: list[httpx.Client] = field(default_factory=list)

    def http(self, api_key: str | None = None) -> httpx.Client:
        """A plain HTTP client for checking what the gateway stored."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        client = httpx.Client(base_url=self.base_url, headers=headers, timeout=10)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def new_key(directory: Path, tenant: str, role: str) -> tuple[str, str]:
    """Runs `gateway key new`; returns the key and the [[auth.keys]] entry it printed."""
    out = subprocess.run(
        [str(gateway_bin()), "key", "new", "--tenant", tenant, "--role", role, "--id", f"{tenant}-{role}"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    key = re.search(r"\bsgw_[A-Za-z0-9]+\b", out)
    entry = out[out.find("[[auth.keys]]") :] if "[[auth.keys]]" in out else ""
    if key is None or not entry:
        pytest.fail(f"unexpected output of `gateway key new`:\n{out}", pytrace=False)
    return key.group(0), entry


def start_gateway(directory: Path, extra_toml: str = "", server_extra: str = "") -> Gateway:
    """Starts a gateway on a free loopback port with an embedded store in `directory`; waits for /healthz."""
    binary = gateway_bin()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "gateway.toml"
    config.write_text(
        '[server]\nlisten = "127.0.0.1:0"\n' + server_extra + "\n"
        '[storage]\ntype = "embedded"\n\n[storage.embedded]\npath = "data/gateway.redb"\n\n'
        '[plugins]\ncache_dir = "data/plugin-cache"\nwatch = false\n\n' + extra_toml
    )
    log = directory / "gateway.log"
    env = {**os.environ, "RUST_LOG": "info"}
    env.pop("GATEWAY_CONFIG", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "--config", str(config), "--log-json"],
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 60
    addr = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gateway exited with {proc.returncode}:\n{log.read_text()[-4000:]}", pytrace=False)
        addr = addr or _listening_addr(log)
        if addr:
            try:
                if httpx.get(f"http://{addr}/healthz", timeout=2).status_code == 200:
                    return Gateway(f"http://{addr}", proc, log)
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"gateway not healthy after 60 s:\n{log.read_text()[-4000:]}", pytrace=False)


def _listening_addr(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if fields.get("message") == "session gateway listening" and fields.get("addr"):
            return str(fields["addr"])
    return None


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway without authentication, shared by the tests."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.stop()


@pytest.fixture
def sid() -> str:
    """A fresh session id."""
    return f"t-{uuid.uuid4().hex[:12]}"


def run_helper(args: dict[str, Any]) -> dict[str, Any]:
    """Runs resume_helper.py in a new Python process and returns what it printed."""
    proc = subprocess.run(
        [sys.executable, str(TESTS / "resume_helper.py"), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"helper failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
