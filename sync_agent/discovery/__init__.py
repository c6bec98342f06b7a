"""Where the agent finds the servers: a static list, or the Kubernetes API."""

from sync_agent.discovery.base import Discovery, Endpoint, Role

__all__ = ["Discovery", "Endpoint", "Role"]
