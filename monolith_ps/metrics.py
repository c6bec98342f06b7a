"""Prometheus metrics declared as a class that lists them, built on an injected registry.

A component lists its metrics once, as class attributes, and gets them built on the
registry it is given (the global one is never used)::

    class JobMetrics(MetricSet):
        runs = counter("demo_jobs_total", "Jobs run, by outcome.", "outcome")
        seconds = histogram("demo_job_duration_seconds", "Time of one job.", buckets=(0.1, 1))

    metrics = JobMetrics(CollectorRegistry())
    metrics.runs.labels("ok").inc()

The metrics are registered in the order they are declared, base classes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar, overload

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["MetricSet", "counter", "gauge", "histogram"]

_Metric = TypeVar("_Metric", bound=MetricWrapperBase)


class _Declared(Generic[_Metric]):
    """One metric of a ``MetricSet``: what to build, built per instance by ``MetricSet``."""

    def __init__(
        self, kind: type[_Metric], name: str, documentation: str, labels: Sequence[str], **extra
    ) -> None:
        self._kind = kind
        self._args = (name, documentation, tuple(labels))
        self._extra = extra
        self._attr = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self._attr = attr

    @overload
    def __get__(self, instance: None, owner: type) -> _Declared[_Metric]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> _Metric: ...
    def __get__(self, instance: object | None, owner: type) -> Any:
        if instance is None:
            return self
        raise AttributeError(f"{owner.__name__}.{self._attr}: MetricSet.__init__ was not run")

    def build(self, registry: CollectorRegistry) -> _Metric:
        return self._kind(*self._args, registry=registry, **self._extra)


def counter(name: str, documentation: str, *labels: str) -> _Declared[Counter]:
    """A counter of a ``MetricSet``; ``name`` ends in ``_total``."""
    return _Declared(Counter, name, documentation, labels)


def gauge(name: str, documentation: str, *labels: str) -> _Declared[Gauge]:
    """A gauge of a ``MetricSet``."""
    return _Declared(Gauge, name, documentation, labels)


def histogram(
    name: str, documentation: str, *labels: str, buckets: Sequence[float]
) -> _Declared[Histogram]:
    """A histogram of a ``MetricSet`` with its bucket bounds."""
    return _Declared(Histogram, name, documentation, labels, buckets=tuple(buckets))


class MetricSet:
    """Builds every metric its class declares (``counter``, ``gauge``, ``histogram``) on
    ``registry``, as instance attributes of the same names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        for klass in reversed(type(self).__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, _Declared):
                    setattr(self, attr, value.build(registry))
