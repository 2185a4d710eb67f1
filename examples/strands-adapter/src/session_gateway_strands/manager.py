"""``GatewaySessionManager``: a ``RepositorySessionManager`` backed by a Session Gateway."""

from __future__ import annotations

from typing import Any

import httpx
from strands.session.repository_session_manager import RepositorySessionManager

from .repository import GatewaySessionRepository

__all__ = ["GatewaySessionManager"]


class GatewaySessionManager(RepositorySessionManager):
    """Persists a Strands agent's session in a Session Gateway.

    ``Agent(session_manager=GatewaySessionManager(session_id="s1", base_url="http://127.0.0.1:8080"))``

    The session is read (or created) when the manager is constructed, so a wrong address or API key
    fails here with :class:`~session_gateway_strands.GatewayError`.

    Args:
        session_id: The session to use; created if it does not exist. Ids are 1-128 characters
            from ``[A-Za-z0-9._:@-]``.
        base_url: The gateway's address.
        api_key: The API key, when the gateway requires one.
        timeout: Seconds (or an ``httpx.Timeout``) per request.
        client: An ``httpx.Client`` to share instead of a new one.
        repository_options: Further keyword arguments for :class:`GatewaySessionRepository`
            (``page_size``, ``use_if_match``, ``retries``, ``headers``).
        **kwargs: Passed on to ``RepositorySessionManager``.
    """

    session_repository: GatewaySessionRepository

    def __init__(
        self,
        session_id: str,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        client: httpx.Client | None = None,
        repository_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Connect to the gateway and read or create the session."""
        repository = GatewaySessionRepository(
            base_url, api_key, timeout=timeout, client=client, **(repository_options or {})
        )
        try:
            super().__init__(session_id=session_id, session_repository=repository, **kwargs)
        except BaseException:
            repository.close()
            raise

    def close(self) -> None:
        """Close the HTTP client."""
        self.session_repository.close()
