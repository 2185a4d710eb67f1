"""Strands Agents session persistence in a Session Gateway.

- :class:`GatewaySessionManager`: a drop-in for the original library's ``MongoDBSessionManager``.
- :class:`AsyncGatewaySessionManager`: the same, with coroutine methods, for asyncio services.
- :class:`GatewaySessionManagerFactory`: managers sharing one HTTP connection pool.
- :class:`GatewaySessionRepository`: the Strands ``SessionRepository`` over HTTP.
"""

from ._http import AsyncHttpPool, HttpPool, TransportError
from .aio import AsyncGatewaySessionManager
from .errors import GatewayAuthError, GatewayError
from .factory import (
    GatewaySessionManagerFactory,
    close_global_factory,
    get_global_factory,
    initialize_global_factory,
)
from .manager import GatewaySessionManager
from .repository import MULTI_AGENT_PREFIX, GatewaySessionRepository

__all__ = [
    "MULTI_AGENT_PREFIX",
    "AsyncGatewaySessionManager",
    "AsyncHttpPool",
    "GatewayAuthError",
    "GatewayError",
    "GatewaySessionManager",
    "GatewaySessionManagerFactory",
    "GatewaySessionRepository",
    "HttpPool",
    "TransportError",
    "close_global_factory",
    "get_global_factory",
    "initialize_global_factory",
]
__version__ = "0.2.0"
