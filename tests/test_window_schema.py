"""Issue 17 (lower): the coordinator's table records carry a schema version, and a record this
release cannot read (another release's schema, or not a record at all) is skipped with a log
line on restore: the coordinator comes up with every other window, never crashes on it."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import orjson

from drift.windows import RECORD_SCHEMA
from stream_app.coordinator import Coordinator
from stream_app.metrics import WorkerMetrics
from stream_app.runtime import WorkerRuntime
from tests.helpers_stream import drift_settings
from tests.test_drift_metrics_snapshot import PARTITIONS, WINDOW, batches, champion

BOUND = 120.0


def test_window_records_carry_a_schema_and_unknown_ones_are_skipped_on_restore(tmp_path, caplog):
    settings = drift_settings(tmp_path / "runs", WINDOW, PARTITIONS)
    model = champion()
    runtime = WorkerRuntime(settings, WorkerMetrics(), SimpleNamespace(current=None))
    now = [1000.0]
    table: dict = {}
    written: list[dict] = []

    async def write(outputs) -> None:
        written.extend(orjson.loads(v) for t, _, v in outputs if t == settings.topics.windows)

    def partials(messages) -> list[bytes]:
        _, outputs, _ = runtime._outputs(messages, model, now[0])
        return [v for t, _, v in outputs if t == settings.partials_topic]

    feed = batches(2000)

    async def first(coordinator: Coordinator) -> None:
        await coordinator.assigned(True, {})
        for batch in feed[:6]:
            await coordinator.merge(partials(batch), write, table)
            now[0] += 0.2

    asyncio.run(asyncio.wait_for(first(Coordinator(settings, champion=lambda: model)), BOUND))
    records = {k: orjson.loads(v) for k, v in table.items() if k.startswith("w/")}
    assert len(records) >= 3
    assert all(r["schema"] == RECORD_SCHEMA == 1 for r in records.values())

    # What a later release could have left: its own layout under another schema number, and a
    # value that is not a record at all. Both used to crash the restore (KeyError, TypeError).
    future, junk, *kept = sorted(records)
    table[future] = orjson.dumps({"schema": 2, "state": "open", "window": {"n": 3}})
    table[junk] = orjson.dumps([1, 2, 3])
    legacy = kept[0]  # written before the field existed: same layout as schema 1
    table[legacy] = orjson.dumps({k: v for k, v in records[legacy].items() if k != "schema"})

    coordinator = Coordinator(settings, champion=lambda: model)

    async def restart() -> None:
        await coordinator.assigned(True, dict(table))
        for batch in feed[6:]:
            await coordinator.merge(partials(batch), write, table)
            now[0] += 0.2

    with caplog.at_level(logging.WARNING):
        asyncio.run(asyncio.wait_for(restart(), BOUND))
    skipped = [r.getMessage() for r in caplog.records if "skipped on restore" in r.getMessage()]
    assert len(skipped) == 2, skipped
    assert f"window record {future} skipped on restore: schema 2" in skipped[0] + skipped[1]
    assert coordinator.active
    assert f"restored {len(records) - 2} window records" in caplog.text
    assert written and written[-1]["window"] >= 6  # the restored coordinator went on
