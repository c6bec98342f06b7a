"""Discovery from fixed address lists: local clusters, tests, and hand-wired deployments."""

from __future__ import annotations

from collections.abc import Iterable

from monolith_ps.transport.flags import address_list
from sync_agent.discovery.base import Endpoint, Role


class InvalidAddressError(ValueError):
    """An address is not ``host:port`` with a port in 1..65535."""


def parse_address_list(text: str) -> list[str]:
    """Split ``"host:port,host:port"`` into addresses, checking each one."""
    addresses = address_list(text)
    for address in addresses:
        check_address(address)
    return addresses


def check_address(address: str) -> None:
    """Raise ``InvalidAddressError`` unless ``address`` is ``host:port``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidAddressError(f"address {address!r} is not host:port with a port in 1..65535")


class StaticDiscovery:
    """The same endpoints every time; servers themselves report shard index and epoch.

    >>> d = StaticDiscovery(training=["127.0.0.1:7000"], serving=["127.0.0.1:7100"])
    >>> [e.address for e in d.endpoints(Role.SERVING)]
    ['127.0.0.1:7100']
    """

    def __init__(self, training: Iterable[str], serving: Iterable[str]) -> None:
        self._endpoints: dict[Role, list[Endpoint]] = {}
        for role, addresses in ((Role.TRAINING, training), (Role.SERVING, serving)):
            unique = sorted(set(addresses))
            for address in unique:
                check_address(address)
            self._endpoints[role] = [Endpoint(role, a, name=a) for a in unique]

    def endpoints(self, role: Role) -> list[Endpoint]:
        return list(self._endpoints[role])

    def close(self) -> None:
        """Nothing to stop."""
