"""The command-line flags of every client of the servers (``mps check``, ``mps sync-agent``):
the servers' CA, a client certificate for mutual TLS, and a bearer token."""

from __future__ import annotations

import argparse

__all__ = ["add_credential_flags"]


def add_credential_flags(parser: argparse.ArgumentParser, token_help: str) -> None:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key`` (a "TLS" group) and ``--token-file``."""
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-ca", metavar="FILE", help="CA certificate (PEM) of the servers")
    tls.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM), mutual TLS")
    tls.add_argument("--tls-key", metavar="FILE", help="client private key (PEM), mutual TLS")
    parser.add_argument("--token-file", metavar="FILE", help=token_help)
