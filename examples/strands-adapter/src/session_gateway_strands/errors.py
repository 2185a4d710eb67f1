"""Exceptions raised by the adapter."""

from __future__ import annotations

from typing import Any

from strands.types.exceptions import SessionException


class GatewayError(SessionException):
    """The gateway refused a request, or could not be reached.

    Attributes:
        status: HTTP status of the answer, or ``None`` when no answer came (connection error, timeout).
        code: The gateway's machine-readable code (``message_conflict``, ``version_mismatch``, ...),
            or ``transport_error`` / ``invalid_response`` for failures on the client side.
        message: The gateway's human-readable explanation.
        details: Other fields of the error body (e.g. ``failed_op`` and ``results`` of a batch).
    """

    def __init__(self, status: int | None, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        """Create the error from the parts of a gateway error body."""
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}
        where = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"session gateway: {code} ({where}): {message}")


class GatewayAuthError(GatewayError):
    """The API key is missing or invalid (401), or its role may not do this (403)."""
