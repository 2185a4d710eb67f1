"""Strands Agents session persistence in a Session Gateway."""

from .errors import GatewayAuthError, GatewayError
from .manager import GatewaySessionManager
from .repository import MULTI_AGENT_PREFIX, GatewaySessionRepository

__all__ = [
    "MULTI_AGENT_PREFIX",
    "GatewayAuthError",
    "GatewayError",
    "GatewaySessionManager",
    "GatewaySessionRepository",
]
__version__ = "0.1.0"
