"""The memory limit of this process's container, read from its cgroup (v2 or v1).

Exported as ``monolith_ps_memory_limit_bytes`` so that an alert can compare resident
memory with the limit the kernel OOM-kills at, without kube-state-metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MemoryLimitCollector", "memory_limit_bytes"]

# cgroup v1 writes "no limit" as a page-rounded 2**63 - 1.
_UNLIMITED_V1 = 1 << 62


def memory_limit_bytes(
    root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
) -> int | None:
    """The memory limit of this process's cgroup in bytes; None when there is none.

    Looks at the cgroup ``/proc/self/cgroup`` names, then at the root of the mount (what a
    container with its own cgroup namespace sees).
    """
    root = Path(root)
    candidates: list[Path] = []
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":
            candidates += [root / relative / "memory.max", root / "memory.max"]
        elif "memory" in controllers.split(","):
            v1 = root / "memory"
            candidates += [v1 / relative / "memory.limit_in_bytes", v1 / "memory.limit_in_bytes"]
    for candidate in candidates:
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        if text.isdigit():
            limit = int(text)
            return None if limit >= _UNLIMITED_V1 else limit
    return None


class MemoryLimitCollector(Collector):
    """``monolith_ps_memory_limit_bytes``, read at each scrape; no sample without a limit."""

    def __init__(
        self, root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup"
    ) -> None:
        self._root = root
        self._proc_cgroup = proc_cgroup

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        limit = memory_limit_bytes(self._root, self._proc_cgroup)
        if limit is not None:
            family.add_metric([], float(limit))
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "monolith_ps_memory_limit_bytes",
            "Memory limit of this process's cgroup (the container's limit); absent without one.",
        )
