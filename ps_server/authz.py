"""Per-RPC authorization: which caller role may call which ParameterServer RPC.

A caller's roles come from its mutual-TLS client certificate (subject CN or a SAN,
matched against ``auth.identities``) and from a bearer token in the ``authorization``
metadata (``Bearer <token>``, checked against the tokens ``auth.token_files`` and
``auth.token_env`` name), for deployments where TLS ends before the server. A call no role
of the caller allows gets PERMISSION_DENIED and is counted in
``monolith_ps_rpc_denied_total``. Health checking and reflection stay open.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

from monolith_ps.config import CALLER_ROLES, AuthConfig, ConfigError
from monolith_ps.logs import fields
from monolith_ps.v1 import ps_pb2
from ps_server.handler_cache import replaced

__all__ = ["ALLOWED", "Authorizer", "allowed"]

_LOGGER = logging.getLogger(__name__)
_SERVICE = ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"]
_PREFIX = f"/{_SERVICE.full_name}/"
_ALL = frozenset(method.name for method in _SERVICE.methods)
_BOTH = frozenset({"training", "serving"})

# role -> (server roles it applies on, RPCs it may call there)
ALLOWED: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "trainer": (
        frozenset({"training"}),
        frozenset({"Lookup", "Push", "PullDense", "PushDense", "DescribeTables"}),
    ),
    "reader": (frozenset({"serving"}), frozenset({"Lookup", "PullDense", "DescribeTables"})),
    "agent": (_BOTH, frozenset({"ExportDelta", "ApplyDelta", "GetSyncState", "DescribeTables"})),
    "admin": (_BOTH, _ALL),
}
# auth_context keys that carry a certificate's names
_CERT_NAME_KEYS = (
    "x509_common_name",
    "x509_subject_alternative_name",
    "peer_dns",
    "peer_uri",
    "peer_spiffe_id",
    "peer_email",
    "peer_ip",
)


def allowed(server_role: str, caller_role: str, method: str) -> bool:
    """Whether ``caller_role`` may call ``method`` on a server of ``server_role``."""
    servers, methods = ALLOWED[caller_role]
    return server_role in servers and method in methods


def _read_tokens(config: AuthConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """token -> role, from the files and environment variables the config names."""
    tokens: dict[str, str] = {}
    sources = [(role, "file", path) for role, path in config.token_files.items()]
    sources += [(role, "env", name) for role, name in config.token_env.items()]
    for role, kind, where in sources:
        if kind == "file":
            try:
                with open(where, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                raise ConfigError(
                    f"auth.token_files.{role}: cannot read {where}: {exc.strerror}"
                ) from exc
        else:
            if where not in environ:
                raise ConfigError(f"auth.token_env.{role}: ${where} is not set")
            text = environ[where]
        found = [line.strip() for line in text.splitlines() if line.strip()]
        if not found:
            raise ConfigError(f"auth.token_{kind}{'s' if kind == 'file' else ''}.{role}: "
                              f"{where} holds no token")  # fmt: skip
        tokens.update(dict.fromkeys(found, role))
    return tokens


class Authorizer(grpc.ServerInterceptor):
    """Refuses ParameterServer RPCs that no role of the caller allows (PERMISSION_DENIED).

    >>> authorizer = Authorizer("serving", config.auth, registry)
    >>> server = grpc.server(pool, interceptors=[metrics, authorizer, ...])
    """

    def __init__(
        self,
        server_role: str,
        config: AuthConfig,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._server_role = server_role
        self._identities = dict(config.identities)
        self._tokens = _read_tokens(config, environ)
        self.denied = Counter(
            "monolith_ps_rpc_denied_total",
            "RPCs refused by authorization (PERMISSION_DENIED), by method and the caller's "
            'roles ("none": no known certificate name or token).',
            ["method", "roles"],
            registry=registry,
        )
        if not self._identities and not self._tokens:
            _LOGGER.warning(
                "authorization_without_callers",
                extra=fields(reason="auth on, but auth.identities and tokens are empty: "
                             "every RPC but health and reflection is refused"),
            )  # fmt: skip

    def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001, ANN201
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_PREFIX):
            return handler
        method = handler_call_details.method[len(_PREFIX) :]
        return _checked_first(handler, lambda context: self._check(method, context))

    def roles_of(self, context: grpc.ServicerContext) -> tuple[set[str], str]:
        """The caller's roles, and who it is in words (for the refusal message)."""
        auth = context.auth_context() or {}
        names = [
            value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            for key in _CERT_NAME_KEYS
            for value in auth.get(key, ())
        ]
        roles = {self._identities[name] for name in names if name in self._identities}
        who = f"certificate names {sorted(set(names))}" if names else "no client certificate"
        token = _bearer_token(context.invocation_metadata() or ())
        if token is not None:
            role = self._token_role(token)
            who += ", a bearer token" + ("" if role else " that matches no role")
            if role:
                roles.add(role)
        return roles, who

    def _token_role(self, token: str) -> str | None:
        found = None
        for known, role in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = role
        return found

    def _check(self, method: str, context: grpc.ServicerContext) -> None:
        roles, who = self.roles_of(context)
        if any(allowed(self._server_role, role, method) for role in roles):
            return
        may = [r for r in CALLER_ROLES if allowed(self._server_role, r, method)]
        self.denied.labels(method, ",".join(sorted(roles)) or "none").inc()
        _LOGGER.info(
            "rpc_denied", extra=fields(method=method, roles=",".join(sorted(roles)) or "none")
        )
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{method} refused: the caller ({who}) has role(s) "
            f"{', '.join(sorted(roles)) or 'none'}; on a {self._server_role} server {method} "
            f"needs {' or '.join(may)}",
        )


def _bearer_token(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


def _checked_first(
    handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]
) -> grpc.RpcMethodHandler:
    """``handler`` with ``check(context)`` run before its behaviour (it aborts to refuse)."""
    for kind, wrap in (
        ("unary_unary", _check_then_answer),
        ("stream_unary", _check_then_answer),
        ("unary_stream", _check_then_stream),
        ("stream_stream", _check_then_stream),
    ):
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return replaced(handler, **{kind: wrap(behaviour, check)})
    raise ValueError("an RPC method handler without a behaviour")


def _check_then_answer(
    behaviour: Callable[[Any, grpc.ServicerContext], Any],
    check: Callable[[grpc.ServicerContext], None],
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """A single-answer behaviour (request or request stream in) run after ``check``."""

    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        check(context)
        return behaviour(request, context)

    return checked


def _check_then_stream(
    behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
    check: Callable[[grpc.ServicerContext], None],
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """A streaming-answer behaviour run after ``check`` (a generator, as the one it wraps)."""

    def checked(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        check(context)
        yield from behaviour(request, context)

    return checked
