"""A MetricSet builds what its class declares on the registry it is given."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from monolith_ps.metrics import MetricSet, counter, gauge, histogram


class _Base(MetricSet):
    runs = counter("demo_runs_total", "Runs, by outcome.", "outcome")


class _Jobs(_Base):
    queued = gauge("demo_queued", "Jobs waiting.")
    seconds = histogram("demo_seconds", "Time of one job.", "kind", buckets=(0.5, 1.0))


def test_every_declared_metric_is_built_on_the_given_registry_in_order():
    registry = CollectorRegistry()
    jobs = _Jobs(registry)
    jobs.runs.labels("ok").inc(2)
    jobs.queued.set(3)
    jobs.seconds.labels("full").observe(0.7)
    assert registry.get_sample_value("demo_runs_total", {"outcome": "ok"}) == 2
    assert registry.get_sample_value("demo_queued") == 3
    assert registry.get_sample_value("demo_seconds_bucket", {"kind": "full", "le": "1.0"}) == 1
    assert registry.get_sample_value("demo_seconds_bucket", {"kind": "full", "le": "0.5"}) == 0
    assert [family.name for family in registry.collect()] == [
        "demo_runs",
        "demo_queued",
        "demo_seconds",
    ]


def test_two_sets_on_one_registry_clash_and_two_registries_do_not():
    registry = CollectorRegistry()
    _Jobs(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        _Jobs(registry)
    assert _Jobs(CollectorRegistry()).runs is not _Jobs(CollectorRegistry()).runs


def test_the_class_attribute_is_the_declaration_not_a_metric():
    with pytest.raises(AttributeError, match="MetricSet.__init__ was not run"):
        _Jobs.__new__(_Jobs).runs  # noqa: B018 - the access is the test
