"""The command-line flags of every client of the servers (``mps check``, ``mps sync-agent``,
``mps reset-cursors``): the servers' CA, a client certificate for mutual TLS, and a bearer
token."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monolith_ps.transport.channels import ClientTLS

__all__ = ["add_credential_flags", "address_list", "credentials_from"]


def add_credential_flags(parser: argparse.ArgumentParser, token_help: str) -> None:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` (a "TLS" group) and ``--token-file``."""
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-ca", metavar="FILE", help="CA certificate (PEM) of the servers")
    tls.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM), mutual TLS")
    tls.add_argument("--tls-key", metavar="FILE", help="client private key (PEM), mutual TLS")
    parser.add_argument("--token-file", metavar="FILE", help=token_help)


def credentials_from(args: argparse.Namespace) -> tuple[ClientTLS | None, str | None]:
    """The TLS settings and bearer token the flags of :func:`add_credential_flags` name
    (None for each not given). Imports the transport only when called: parsers stay cheap."""
    from monolith_ps.transport.bearer import read_token_file
    from monolith_ps.transport.channels import ClientTLS

    tls = None
    if args.tls_ca or args.tls_cert:
        tls = ClientTLS(ca_path=args.tls_ca, cert_path=args.tls_cert, key_path=args.tls_key)
    token = read_token_file(args.token_file) if args.token_file else None
    return tls, token


def address_list(text: str) -> list[str]:
    """``host:port`` addresses from a comma-separated flag value, in the order given."""
    return [a.strip() for a in text.split(",") if a.strip()]
