"""Bearer tokens on client channels: the caller's role where TLS ends before the server.

>>> channel = with_token(grpc.insecure_channel(address), read_token_file("/etc/mps/token"))

Every call on the returned channel carries ``authorization: Bearer <token>``; the server's
authorization (``ps_server.authz``) maps the token to a role.
"""

from __future__ import annotations

import collections
from typing import Any

import grpc

__all__ = ["read_token_file", "with_token"]


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> _Details:
        return _Details(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._entry],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # noqa: ANN001, ANN201
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # noqa: ANN001, ANN201
        return continuation(self._details(details), requests)


def with_token(channel: grpc.Channel, token: str | None) -> Any:
    """``channel`` whose calls carry ``token`` (``channel`` itself when there is none)."""
    if not token:
        return channel
    if any(c.isspace() for c in token):
        raise ValueError("a bearer token may not contain whitespace")
    return grpc.intercept_channel(channel, _BearerToken(token))


def read_token_file(path: str) -> str:
    """The first non-empty line of a token file (a mounted Secret key, for example)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror}") from exc
    raise ValueError(f"token file {path} holds no token")
