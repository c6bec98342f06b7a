"""``mps sync-agent`` after its flags are parsed: settings, discovery, metrics endpoint and
the agent's run loop."""

from __future__ import annotations

import argparse
import logging
import sys

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

from monolith_ps.logs import configure_logging, fields
from sync_agent.agent import SyncAgent
from sync_agent.discovery.base import Discovery
from sync_agent.discovery.static import StaticDiscovery
from sync_agent.settings import AgentSettings, SettingsError

__all__ = ["build_discovery", "main"]

_LOGGER = logging.getLogger(__name__)
_DISCOVERY_SYNC_SECONDS = 30.0


def build_discovery(settings: AgentSettings) -> Discovery:
    """The discovery source the settings name."""
    if settings.discovery == "static":
        return StaticDiscovery(training=settings.training, serving=settings.serving)
    from sync_agent.discovery.kubernetes import KubernetesDiscovery

    discovery = KubernetesDiscovery(
        namespace=settings.namespace,
        training_selector=settings.training_selector,
        serving_selector=settings.serving_selector,
        grpc_port_name=settings.grpc_port_name,
    )
    if not discovery.wait_synced(timeout=_DISCOVERY_SYNC_SECONDS):
        _LOGGER.warning("discovery_not_synced", extra=fields(seconds=_DISCOVERY_SYNC_SECONDS))
    return discovery


def main(args: argparse.Namespace) -> int:
    """``mps sync-agent``: build the settings, the discovery and the agent, and run."""
    configure_logging(args.log_format, getattr(args, "log_level", "info").upper())
    try:
        settings = AgentSettings.from_args(args)
    except SettingsError as exc:
        print(f"mps sync-agent: {exc}", file=sys.stderr)
        return 2
    registry = CollectorRegistry()
    metrics_server = None
    metrics_port = None
    if settings.metrics_port is not None:
        disable_created_metrics()  # one more series per counter, used by no alert or panel
        metrics_server, _ = start_http_server(settings.metrics_port, registry=registry)
        metrics_port = metrics_server.server_port
    discovery = build_discovery(settings)
    with SyncAgent(settings, discovery, registry) as agent:
        _LOGGER.info(
            "agent_started",
            extra=fields(
                discovery=settings.discovery,
                sparse_interval=settings.sparse_interval,
                dense_interval=settings.dense_interval,
                metrics_port=metrics_port,
                partition="{}/{}".format(*settings.partition),
            ),
        )
        status = agent.run()
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    return status
