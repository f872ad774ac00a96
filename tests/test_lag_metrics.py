"""Issue 17 (lower): the lag of a revoked partition must not stay on ``/metrics``, where
``sum(stopdrift_consumer_lag_messages)`` would add this worker's stale value to the new owner's.
The revocation goes through the worker's own handler (``create_app``'s
``on_partitions_revoked``), the series is read from a fresh ``CollectorRegistry``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP
from prometheus_client import CollectorRegistry

from stopdrift_common.settings import Settings
from stream_app.metrics import WorkerMetrics
from stream_app.runtime import WorkerRuntime

LAG = "stopdrift_consumer_lag_messages"


def lag(registry: CollectorRegistry, partition: int) -> float | None:
    return registry.get_sample_value(LAG, {"partition": str(partition)})


def test_a_revoked_partition_leaves_no_lag_series(tmp_path):
    from stream_app.app import create_app

    settings = Settings(runs_dir=tmp_path / "runs", partitions=4)
    registry = CollectorRegistry()
    runtime = WorkerRuntime(settings, WorkerMetrics(registry), SimpleNamespace(current=None))
    coordinator = SimpleNamespace(active=False, flush=None)
    app = create_app(settings, runtime, coordinator, "stopdrift-windows-test")

    ends = {0: 110, 1: 60, 2: 30}
    runtime.record_lag({0: 99, 1: 49, 2: 9}, ends.get)
    assert [lag(registry, p) for p in range(3)] == [10.0, 10.0, 20.0]

    raw, partials = settings.topics.raw, settings.partials_topic
    # Partition 0 of the partials topic is not partition 0 of stops.raw: that lag stays.
    revoked = {TP(raw, 1), TP(raw, 2), TP(partials, 0)}
    asyncio.run(app.on_partitions_revoked.send(revoked=revoked))

    assert lag(registry, 0) == 10.0
    assert lag(registry, 1) is None and lag(registry, 2) is None
    assert sum(s.value for m in registry.collect() for s in m.samples if s.name == LAG) == 10.0
    # Taken back later: the next batch's lag shows again.
    runtime.record_lag({1: 59}, ends.get)
    assert lag(registry, 1) == 0.0
