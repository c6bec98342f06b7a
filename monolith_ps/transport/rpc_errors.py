"""How a failed RPC is read and rendered, the same way in the client and the agent."""

from __future__ import annotations

import grpc

__all__ = ["error_text", "rpc_status"]


def rpc_status(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a failed call (UNKNOWN and the text when it has none)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    return code, details


def error_text(exc: BaseException) -> str:
    """A one-line description of a failure, with the gRPC status name when there is one."""
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        code, details = rpc_status(exc)
        return f"{code.name}: {details}"
    return str(exc) or type(exc).__name__
