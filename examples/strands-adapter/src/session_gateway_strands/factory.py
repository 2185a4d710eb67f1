"""``GatewaySessionManagerFactory``: managers that share one HTTP connection pool (the original's factory)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from typing_extensions import Self

from ._http import AsyncHttpPool, HttpPool
from .aio import AsyncGatewaySessionManager
from .manager import GatewaySessionManager
from .repository import _headers, make_pool

__all__ = [
    "GatewaySessionManagerFactory",
    "close_global_factory",
    "get_global_factory",
    "initialize_global_factory",
]


class GatewaySessionManagerFactory:
    """Creates :class:`GatewaySessionManager` objects that share one keep-alive connection pool, so a
    service (FastAPI, a worker) makes a manager per request without opening connections each time.

    ``factory = GatewaySessionManagerFactory("http://127.0.0.1:8080", api_key=...)``,
    ``manager = factory.create_session_manager("session-123")``.

    Args:
        base_url: The gateway's address.
        api_key: The API key, when the gateway requires one.
        timeout: Seconds per socket operation.
        max_idle_connections: Idle keep-alive connections kept open (more are opened under load and
            closed after use).
        headers: Extra headers for every request.
        **manager_defaults: Defaults for every manager (``application_name``, ``repository_options``, ...).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        max_idle_connections: int = 64,
        headers: Mapping[str, str] | None = None,
        **manager_defaults: Any,
    ) -> None:
        """Create the pool; no connection is opened until a request is made."""
        self.base_url = base_url
        self._pool = make_pool(base_url, api_key, timeout=timeout, max_idle=max_idle_connections, headers=headers)
        self._async_args = (base_url, _headers(api_key, headers), timeout, max_idle_connections)
        self._async_pool: AsyncHttpPool | None = None
        self._defaults = manager_defaults
        self._created = 0
        self._lock = threading.Lock()

    @property
    def pool(self) -> HttpPool:
        """The shared connection pool."""
        return self._pool

    def create_session_manager(self, session_id: str, **kwargs: Any) -> GatewaySessionManager:
        """A manager for ``session_id`` on the shared pool (``kwargs`` override the factory's defaults)."""
        manager = GatewaySessionManager(session_id, pool=self._pool, **{**self._defaults, **kwargs})
        with self._lock:
            self._created += 1
        return manager

    def create_async_session_manager(self, session_id: str, **kwargs: Any) -> AsyncGatewaySessionManager:
        """An :class:`AsyncGatewaySessionManager` on the shared pools; call it from the event loop that
        will use the manager (the async pool belongs to one event loop)."""
        if self._async_pool is None or self._async_pool.closed:
            base_url, headers, timeout, max_idle = self._async_args
            self._async_pool = AsyncHttpPool(base_url, headers, timeout=timeout, max_idle=max_idle)
        manager = AsyncGatewaySessionManager(
            session_id, pool=self._pool, async_pool=self._async_pool, **{**self._defaults, **kwargs}
        )
        with self._lock:
            self._created += 1
        return manager

    def get_connection_stats(self) -> dict[str, Any]:
        """The shared pool's state: idle and in-use connections, requests, connections opened and reused."""
        stats = self._pool.snapshot()
        stats["managers_created"] = self._created
        if self._async_pool is not None:
            stats["async"] = self._async_pool.snapshot()
        return stats

    def close(self) -> None:
        """Closes the shared connections (managers made by this factory stop working)."""
        self._pool.close()

    async def aclose(self) -> None:
        """Closes the shared connections, the async pool's too."""
        self._pool.close()
        if self._async_pool is not None:
            await self._async_pool.aclose()

    def __enter__(self) -> Self:
        """Use as a context manager that closes the pool."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the pool."""
        self.close()


_global_factory: GatewaySessionManagerFactory | None = None
_global_lock = threading.Lock()


def initialize_global_factory(base_url: str, api_key: str | None = None, **kwargs: Any) -> GatewaySessionManagerFactory:
    """Creates the process-wide factory (e.g. in a FastAPI lifespan); replaces and closes an earlier one."""
    global _global_factory
    with _global_lock:
        old, _global_factory = _global_factory, GatewaySessionManagerFactory(base_url, api_key, **kwargs)
    if old is not None:
        old.close()
    return _global_factory


def get_global_factory() -> GatewaySessionManagerFactory:
    """The factory made by :func:`initialize_global_factory` (``RuntimeError`` before that)."""
    factory = _global_factory
    if factory is None:
        raise RuntimeError("call initialize_global_factory() first")
    return factory


def close_global_factory() -> None:
    """Closes and forgets the process-wide factory."""
    global _global_factory
    with _global_lock:
        old, _global_factory = _global_factory, None
    if old is not None:
        old.close()
