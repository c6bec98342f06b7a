"""``mps sync-agent``: flags only; the work happens in ``sync_agent.agent``."""

from __future__ import annotations

import argparse

from monolith_ps.transport.flags import add_credential_flags

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The agent's flags. Flags override the config file's ``sync`` section."""
    parser.add_argument("--config", metavar="PATH", help="cluster config file (YAML or JSON)")
    static = parser.add_argument_group("static discovery")
    static.add_argument("--training", metavar="ADDR,ADDR", help="training servers, host:port")
    static.add_argument("--serving", metavar="ADDR,ADDR", help="serving servers, host:port")
    kube = parser.add_argument_group("Kubernetes discovery")
    kube.add_argument(
        "--discovery",
        choices=("static", "kubernetes"),
        default="static",
        help="where to find the servers (default: static)",
    )
    kube.add_argument("--namespace", metavar="NS", help="namespace of the PS pods")
    kube.add_argument("--training-selector", metavar="SEL", help="label selector of training pods")
    kube.add_argument("--serving-selector", metavar="SEL", help="label selector of serving pods")
    kube.add_argument(
        "--grpc-port-name",
        default="grpc",
        metavar="NAME",
        help="container port name of the PS gRPC port (default: grpc)",
    )
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--sparse-interval",
        metavar="DURATION",
        help="time between sparse rounds, e.g. 300s, 5m (default: config sync.sparse_interval)",
    )
    timing.add_argument(
        "--dense-interval",
        metavar="DURATION",
        help="time between dense rounds, e.g. 24h (default: config sync.dense_interval)",
    )
    timing.add_argument(
        "--rpc-timeout",
        metavar="DURATION",
        help="deadline of each unary call to a server (default: 5s)",
    )
    timing.add_argument(
        "--stall-timeout",
        metavar="DURATION",
        help="cut a replica's stream when it takes no chunk, or does not answer after the "
        "last one, for this long; it is then synced apart (default: 30s)",
    )
    timing.add_argument(
        "--new-replica-check",
        metavar="DURATION",
        help="how often to look for serving replicas that hold no state yet (new or "
        "restarted) and sync them at once, whatever the intervals (default: 1s)",
    )
    timing.add_argument(
        "--stream-timeout",
        metavar="DURATION",
        help="deadline of one export or apply stream (default: 600s)",
    )
    parser.add_argument(
        "--partition",
        metavar="INDEX/COUNT",
        help="sync only the serving shards s with s %% COUNT == INDEX, so COUNT agents share "
        "the work; INDEX may be 'auto': the trailing ordinal of $POD_NAME (default: all)",
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus /metrics on this port"
    )
    add_credential_flags(
        parser,
        token_help="bearer token (first line) sent with every call: the agent's role where "
        "the servers authorize by token",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="run one sparse and one dense round, then exit (status 1 if any stream failed)",
    )
    parser.add_argument("--log-format", choices=("json", "text"), default="text")


def run(args: argparse.Namespace) -> int:
    from sync_agent.main import main

    return main(args)
