"""A lean HTTP/1.1 keep-alive client for the gateway (sync and asyncio).

The gateway speaks plain HTTP/1.1 JSON, so this client does only what that needs: one ``sendall`` per
request (request line, fixed headers prepared once, body), a buffered read of the status line and
headers, and the body by ``Content-Length`` or chunked encoding. It keeps idle connections in a
pool shared by every repository and manager that uses it (see ``GatewaySessionManagerFactory``).

A request that fails on a *reused* connection before any answer byte arrived (the server closed
the idle connection) is sent once more on a new connection; that is the only transparent retry
here. Everything else is the caller's policy.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["AsyncHttpPool", "HttpPool", "Response", "TransportError"]

_MAX_HEADER_LINES = 100
_MAX_LINE = 65536


class TransportError(Exception):
    """No (valid) answer came: connection refused, reset, timed out, or a malformed response."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent
        """Whether the request may have reached the server (False: safe to repeat any request)."""


@dataclass(slots=True)
class Response:
    """A complete answer: status, the headers (names lower-case) and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Target:
    """What every request to one base URL shares: address, TLS, the fixed header block."""

    def __init__(self, base_url: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"base_url must be http://host[:port] or https://host[:port], got {base_url!r}")
        self.tls = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.tls else 80)
        self.prefix = u.path.rstrip("/")
        self.ssl_context = ssl_context or (ssl.create_default_context() if self.tls else None)
        default_port = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not default_port:  # IPv6 literal
            host_header = f"[{self.host}]:{self.port}"
        lines = [f"Host: {host_header}"] + [f"{k}: {v}" for k, v in headers.items()]
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"header contains a line break: {line!r}")
        self.fixed = ("\r\n".join(lines) + "\r\n").encode("latin-1")

    def encode(self, method: str, path: str, body: bytes | None, extra: str) -> bytes:
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1")
        if body is None:
            return b"".join((head, self.fixed, extra.encode("latin-1"), b"\r\n"))
        length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode("latin-1")
        return b"".join((head, self.fixed, extra.encode("latin-1"), length, body))


def _parse_head(lines: list[bytes]) -> tuple[int, dict[str, str]]:
    status_line = lines[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise TransportError(f"malformed status line {status_line[:100]!r}", sent=True)
    try:
        status = int(parts[1])
    except ValueError:
        raise TransportError(f"malformed status line {status_line[:100]!r}", sent=True) from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise TransportError(f"malformed header line {line[:100]!r}", sent=True)
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return status, headers


def _keep_alive(headers: dict[str, str]) -> bool:
    return headers.get("connection", "").lower() != "close"


@dataclass(slots=True)
class PoolStats:
    """Counters of an :class:`HttpPool` (all since it was created)."""

    requests: int = 0
    connections_opened: int = 0
    connections_reused: int = 0
    connections_closed: int = 0
    stale_retries: int = 0


class _Conn:
    __slots__ = ("rfile", "sock", "used")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb", buffering=65536)
        self.used = False

    def close(self) -> None:
        try:
            self.rfile.close()
        finally:
            self.sock.close()


class HttpPool:
    """A thread-safe pool of keep-alive HTTP/1.1 connections to one gateway.

    Args:
        base_url: ``http://host:port`` or ``https://host:port`` (a path prefix is kept).
        headers: Headers sent with every request (``Authorization``, ``User-Agent``, ...).
        timeout: Seconds for connecting and for each socket read or write.
        max_idle: At most this many idle connections are kept; more are closed after use.
        ssl_context: For ``https``; the system default context when omitted.
    """

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        *,
        timeout: float = 10.0,
        max_idle: int = 64,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._target = _Target(base_url, headers or {}, ssl_context)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_idle = max(0, max_idle)
        self._idle: deque[_Conn] = deque()
        self._lock = threading.Lock()
        self._in_use = 0
        self._closed = False
        self.stats = PoolStats()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the idle connections; connections in use are closed when they are returned."""
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
        for c in idle:
            c.close()
            self.stats.connections_closed += 1

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def snapshot(self) -> dict[str, Any]:
        """The pool's state and counters as a plain dict."""
        s = self.stats
        with self._lock:
            idle, in_use = len(self._idle), self._in_use
        return {
            "base_url": self.base_url,
            "idle_connections": idle,
            "connections_in_use": in_use,
            "max_idle_connections": self.max_idle,
            "requests": s.requests,
            "connections_opened": s.connections_opened,
            "connections_reused": s.connections_reused,
            "connections_closed": s.connections_closed,
            "stale_retries": s.stale_retries,
            "closed": self._closed,
        }

    # -- requests ----------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None, extra_headers: str = "") -> Response:
        """Sends one request and reads the whole answer.

        ``extra_headers`` is a preformatted block of ``Name: value\\r\\n`` lines.
        Raises :class:`TransportError` when no valid answer came.
        """
        if self._closed:
            raise TransportError("the HTTP pool is closed", sent=False)
        data = self._target.encode(method, path, body, extra_headers)
        self.stats.requests += 1
        conn = self._checkout()
        try:
            try:
                resp, keep = self._exchange(conn, data, method)
            except TransportError as e:
                conn.close()
                self.stats.connections_closed += 1
                if not (conn.used and not e.sent):
                    raise
                # The server closed an idle connection: repeat once on a fresh one.
                self.stats.stale_retries += 1
                conn = self._connect()
                resp, keep = self._exchange(conn, data, method)
        except BaseException:
            with self._lock:
                self._in_use -= 1
            raise
        self._checkin(conn, keep)
        return resp

    def _checkout(self) -> _Conn:
        with self._lock:
            self._in_use += 1
            if self._idle:
                self.stats.connections_reused += 1
                return self._idle.pop()
        try:
            return self._connect()
        except BaseException:
            with self._lock:
                self._in_use -= 1
            raise

    def _checkin(self, conn: _Conn, keep: bool) -> None:
        conn.used = True
        with self._lock:
            self._in_use -= 1
            if keep and not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()
        self.stats.connections_closed += 1

    def _connect(self) -> _Conn:
        t = self._target
        try:
            sock = socket.create_connection((t.host, t.port), timeout=self.timeout)
        except OSError as e:
            raise TransportError(f"cannot connect to {t.host}:{t.port}: {e}", sent=False) from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if t.ssl_context is not None:
                sock = t.ssl_context.wrap_socket(sock, server_hostname=t.host)
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise TransportError(f"TLS handshake with {t.host}:{t.port} failed: {e}", sent=False) from e
        self.stats.connections_opened += 1
        return _Conn(sock)

    def _exchange(self, conn: _Conn, data: bytes, method: str) -> tuple[Response, bool]:
        try:
            conn.sock.sendall(data)
        except OSError as e:
            raise TransportError(f"send failed: {e}", sent=False) from e
        rfile = conn.rfile
        try:
            line = rfile.readline(_MAX_LINE)
            if not line:
                raise TransportError("connection closed before an answer", sent=False)
            lines = [line.rstrip(b"\r\n")]
            while True:
                line = rfile.readline(_MAX_LINE)
                if line in (b"\r\n", b"\n"):
                    break
                if not line or len(lines) > _MAX_HEADER_LINES:
                    raise TransportError("connection closed or too many header lines", sent=True)
                lines.append(line.rstrip(b"\r\n"))
            status, headers = _parse_head(lines)
            if status < 200 and status != 101:  # 100 Continue and friends: skip to the real answer
                return self._exchange_rest(conn, method)
            body = _read_body(rfile, headers, status, method)
        except OSError as e:
            raise TransportError(f"read failed: {e}", sent=True) from e
        return Response(status, headers, body), _keep_alive(headers)

    def _exchange_rest(self, conn: _Conn, method: str) -> tuple[Response, bool]:
        lines: list[bytes] = []
        while True:
            line = conn.rfile.readline(_MAX_LINE)
            if not line:
                raise TransportError("connection closed before an answer", sent=True)
            if line in (b"\r\n", b"\n"):
                if lines:
                    break
                continue
            lines.append(line.rstrip(b"\r\n"))
        status, headers = _parse_head(lines)
        return Response(status, headers, _read_body(conn.rfile, headers, status, method)), _keep_alive(headers)


def _read_body(rfile: Any, headers: dict[str, str], status: int, method: str) -> bytes:
    if method == "HEAD" or status in (204, 304):
        return b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size_line = rfile.readline(_MAX_LINE)
            if not size_line:
                raise TransportError("connection closed inside a chunked body", sent=True)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise TransportError(f"malformed chunk size {size_line[:50]!r}", sent=True) from None
            if size == 0:
                while rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            chunk = rfile.read(size)
            if len(chunk) != size:
                raise TransportError("connection closed inside a chunk", sent=True)
            parts.append(chunk)
            rfile.readline(_MAX_LINE)
    length = headers.get("content-length")
    if length is None:
        data: bytes = rfile.read()  # until the server closes
        headers["connection"] = "close"
        return data
    try:
        n = int(length)
    except ValueError:
        raise TransportError(f"malformed Content-Length {length!r}", sent=True) from None
    body: bytes = rfile.read(n)
    if len(body) != n:
        raise TransportError(f"connection closed after {len(body)} of {n} body bytes", sent=True)
    return body


class AsyncHttpPool:
    """The asyncio counterpart of :class:`HttpPool` (same arguments); use it from one event loop."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        *,
        timeout: float = 10.0,
        max_idle: int = 64,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._target = _Target(base_url, headers or {}, ssl_context)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_idle = max(0, max_idle)
        self._idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]] = deque()
        self._in_use = 0
        self._closed = False
        self.stats = PoolStats()

    async def aclose(self) -> None:
        """Closes the idle connections."""
        self._closed = True
        while self._idle:
            _, w, _ = self._idle.pop()
            w.close()
            self.stats.connections_closed += 1

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def snapshot(self) -> dict[str, Any]:
        """The pool's state and counters as a plain dict."""
        s = self.stats
        return {
            "base_url": self.base_url,
            "idle_connections": len(self._idle),
            "connections_in_use": self._in_use,
            "max_idle_connections": self.max_idle,
            "requests": s.requests,
            "connections_opened": s.connections_opened,
            "connections_reused": s.connections_reused,
            "connections_closed": s.connections_closed,
            "stale_retries": s.stale_retries,
            "closed": self._closed,
        }

    async def request(self, method: str, path: str, body: bytes | None = None, extra_headers: str = "") -> Response:
        """Sends one request and reads the whole answer (see :meth:`HttpPool.request`)."""
        if self._closed:
            raise TransportError("the HTTP pool is closed", sent=False)
        data = self._target.encode(method, path, body, extra_headers)
        self.stats.requests += 1
        self._in_use += 1
        try:
            if self._idle:
                self.stats.connections_reused += 1
                conn = self._idle.pop()
            else:
                conn = await self._connect()
            try:
                resp = await asyncio.wait_for(self._exchange(conn, data, method), self.timeout)
            except (TransportError, asyncio.TimeoutError) as e:
                conn[1].close()
                self.stats.connections_closed += 1
                if isinstance(e, asyncio.TimeoutError):
                    raise TransportError(f"no answer within {self.timeout} s", sent=True) from e
                if not (conn[2] and not e.sent):
                    raise
                self.stats.stale_retries += 1
                conn = await self._connect()
                try:
                    resp = await asyncio.wait_for(self._exchange(conn, data, method), self.timeout)
                except asyncio.TimeoutError as e2:
                    conn[1].close()
                    raise TransportError(f"no answer within {self.timeout} s", sent=True) from e2
        finally:
            self._in_use -= 1
        if _keep_alive(resp.headers) and not self._closed and len(self._idle) < self.max_idle:
            self._idle.append((conn[0], conn[1], True))
        else:
            conn[1].close()
            self.stats.connections_closed += 1
        return resp

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        t = self._target
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(
                    t.host,
                    t.port,
                    ssl=t.ssl_context,
                    server_hostname=t.host if t.ssl_context else None,
                    limit=_MAX_LINE,
                ),
                self.timeout,
            )
        except (OSError, asyncio.TimeoutError) as e:
            raise TransportError(f"cannot connect to {t.host}:{t.port}: {e!r}", sent=False) from e
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats.connections_opened += 1
        return r, w, False

    async def _exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, bool], data: bytes, method: str
    ) -> Response:
        r, w, _ = conn
        try:
            w.write(data)
            await w.drain()
        except OSError as e:
            raise TransportError(f"send failed: {e}", sent=False) from e
        try:
            lines: list[bytes] = []
            while True:
                line = await r.readline()
                if not line:
                    raise TransportError("connection closed before an answer", sent=bool(lines))
                if line in (b"\r\n", b"\n"):
                    if not lines:
                        continue
                    status, headers = _parse_head(lines)
                    if status < 200:
                        lines = []
                        continue
                    break
                if len(lines) > _MAX_HEADER_LINES:
                    raise TransportError("too many header lines", sent=True)
                lines.append(line.rstrip(b"\r\n"))
            body = await _aread_body(r, headers, status, method)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            raise TransportError(f"read failed: {e!r}", sent=True) from e
        return Response(status, headers, body)


async def _aread_body(r: asyncio.StreamReader, headers: dict[str, str], status: int, method: str) -> bytes:
    if method == "HEAD" or status in (204, 304):
        return b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size_line = await r.readline()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise TransportError(f"malformed chunk size {size_line[:50]!r}", sent=True) from None
            if size == 0:
                while (await r.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(await r.readexactly(size))
            await r.readline()
    length = headers.get("content-length")
    if length is None:
        headers["connection"] = "close"
        return await r.read()
    return await r.readexactly(int(length))
