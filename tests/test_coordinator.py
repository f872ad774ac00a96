"""The drift path the worker runs, without a broker: messages -> ``WorkerRuntime._outputs``
(scores, drift partials) -> ``Coordinator.merge`` / ``tick`` (windows, tests, alerts, table).

The same events must give the same tested windows whatever order the partitions are read in,
however the batches are cut, if batches are read twice, or if the coordinator restarts from
its table halfway. Counts are exact.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from stopdrift_common.schema import dumps
from stopdrift_common.settings import Settings
from stream_app.coordinator import Coordinator
from stream_app.metrics import WorkerMetrics
from stream_app.outcomes import InMessage
from stream_app.runtime import WorkerRuntime
from tests.helpers_stream import (
    FeatureModel,
    drift_settings,
    feature_champion,
    state_events,
)

WINDOW = 250
PARTITIONS = 4


Model = FeatureModel  # (other test modules import it from here)


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    # shared: the calibration cache
    return drift_settings(tmp_path_factory.mktemp("coordinator"), WINDOW, PARTITIONS)


@pytest.fixture(scope="module")
def champion():
    return feature_champion()


class Harness:
    """A worker's scoring side and a coordinator, wired as the Faust app wires them."""

    def __init__(self, settings, champion, table=None, start=1000.0):
        self.now = start
        self.champion = champion
        self.runtime = WorkerRuntime(settings, WorkerMetrics(), SimpleNamespace(current=None))
        self.current = champion
        self.coordinator = Coordinator(
            settings, champion=lambda: self.current, clock=lambda: self.now
        )
        self.table = {} if table is None else table
        self.out: list[tuple[str, bytes]] = []
        asyncio.run(self.coordinator.assigned(True, dict(self.table)))

    async def _write(self, outputs):
        self.out += [(t, v) for t, _, v in outputs]

    def batch(
        self, messages: list[InMessage], version: str | None = None, ends: dict | None = None
    ) -> None:
        """Score a batch and merge its partials; with ``ends`` (partition -> log end), the
        batch's progress report follows its partials, as the app sends it."""
        if version:  # a new champion: the worker scores with it from now on
            self.current = SimpleNamespace(**{**vars(self.champion), "version": version})
        _, outputs, _ = self.runtime._outputs(messages, self.current, self.now)
        partials = [v for t, _, v in outputs if t == self.runtime.settings.partials_topic]
        if ends is not None:
            read = {m.partition: m.offset + 1 for m in messages}
            partials.append(progress_report({p: (r, ends[p]) for p, r in read.items()}))
        asyncio.run(self.coordinator.merge(partials, self._write, self.table))
        self.now += 0.2

    def report(self, progress: dict) -> None:
        """A progress report alone (the app's timer): partition -> (read, end)."""
        asyncio.run(self.coordinator.merge([progress_report(progress)], self._write, self.table))

    def tick(self, seconds: float) -> None:
        self.now += seconds
        asyncio.run(self.coordinator.tick(self._write, self.table))

    def records(self, topic: str) -> list[dict]:
        import orjson

        return [orjson.loads(v) for t, v in self.out if t == topic]


def progress_report(progress: dict) -> bytes:
    import orjson

    return orjson.dumps({"progress": {str(p): list(v) for p, v in progress.items()}})


def partitioned(events, drift_from=None, lose=(), bad=()) -> dict[int, list[InMessage]]:
    """Messages per partition (keyed by state, like the producer), offsets in order; window
    positions in ``lose`` are not JSON, those in ``bad`` out of range."""
    by_partition: dict[int, list[InMessage]] = {p: [] for p in range(PARTITIONS)}
    for e in events:
        e = dict(e)
        if drift_from is not None and e["seq"] >= drift_from:
            e["stops_per_year"] *= 5
        value = dumps(e)
        if e["seq"] % WINDOW in lose:
            value = b'{"broken": '
        elif e["seq"] % WINDOW in bad:
            value = dumps({**e, "hit_rate": 1.5})
        p = sum(e["state"].encode()) % PARTITIONS
        by_partition[p].append(InMessage(value, e["state"].encode(), "stops.raw", p, 0))
    return {
        p: [InMessage(m.value, m.key, m.topic, m.partition, i) for i, m in enumerate(ms)]
        for p, ms in by_partition.items()
    }


def live_order(parts, batch=200):
    """Interleaved, as a live feed arrives: small batches mixing every partition by seq."""
    merged = sorted((m for ms in parts.values() for m in ms), key=lambda m: _seq(m))
    return [merged[i : i + batch] for i in range(0, len(merged), batch)]


def backlog_order(parts, batch=2000):
    """A backlog: partitions read at different speeds (partition p in chunks of (p+1) * 300)."""
    cursors = {p: 0 for p in parts}
    batches = []
    while any(cursors[p] < len(parts[p]) for p in parts):
        out = []
        for p, ms in parts.items():
            step = (p + 1) * 300
            out += ms[cursors[p] : cursors[p] + step]
            cursors[p] += step
        batches += [out[i : i + batch] for i in range(0, len(out), batch)]
    return batches


def _seq(m: InMessage) -> int:
    import orjson

    try:
        return orjson.loads(m.value)["seq"]
    except Exception:
        return -1 if m.value.startswith(b'{"broken') else 0


def run(settings, champion, batches, idle=True) -> Harness:
    h = Harness(settings, champion)
    for b in batches:
        h.batch(b)
    if idle:
        h.tick(6)
    return h


def summary(windows):
    return [(w["id"], w["n"], w["rejected"], w["tested"], w["drifted_features"]) for w in windows]


N = 5000
CHANGE = 2500


@pytest.fixture(scope="module")
def parts():
    # not-JSON messages lose their seq; their window must close by the watermark
    return partitioned(state_events(N), drift_from=CHANGE, lose={17}, bad={101})


@pytest.fixture(scope="module")
def live(settings, champion, parts):
    # The not-JSON messages sit at seq%250 == 17 only once their neighbours are sorted.
    return run(settings, champion, live_order(parts))


def test_every_window_is_tested_once_and_drifted_ones_alert(live):
    windows = live.records(live.runtime.settings.topics.windows)
    alerts = live.records(live.runtime.settings.topics.alerts)
    assert [w["window"] for w in windows] == list(range(N // WINDOW))
    assert [(w["n"], w["rejected"], w["tested"]) for w in windows] == [(248, 1, True)] * 20
    assert [a["window"] for a in alerts] == list(range(CHANGE // WINDOW, N // WINDOW))
    assert all("stops_per_year" in a["drifted_features"] for a in alerts)
    closed_by = [w["closed_by"] for w in windows]
    assert closed_by.count("watermark") >= 18 and "full" not in closed_by


def test_a_backlog_gives_the_same_windows_and_alerts(settings, champion, parts, live):
    backlog = run(settings, champion, backlog_order(parts))
    topic = settings.topics.windows
    assert summary(backlog.records(topic)) == summary(live.records(topic))
    for a, b in zip(backlog.records(topic), live.records(topic), strict=True):
        assert a["scales"]["1"]["evidence"] == pytest.approx(b["scales"]["1"]["evidence"])


def test_batches_read_twice_are_counted_once(settings, champion, parts, live):
    batches = live_order(parts)
    again = [b for i, b in enumerate(batches) for _ in range(2 if i % 3 == 0 else 1)]
    h = run(settings, champion, again)
    assert summary(h.records(settings.topics.windows)) == summary(
        live.records(settings.topics.windows)
    )
    windowed = sum(1 for i, b in enumerate(batches) if i % 3 == 0 for m in b if _seq(m) >= 0)
    assert h.coordinator.monitor.books["1"].duplicates == windowed


def test_messages_twice_in_one_batch_are_counted_once(settings, champion, parts, live):
    # A consumer that seeks back after a rebalance re-delivers what it had buffered: the same
    # messages can sit twice in one batch, beside new ones.
    batches = live_order(parts)
    doubled = [b + b[: len(b) // 2] if i % 3 == 0 else b for i, b in enumerate(batches)]
    h = run(settings, champion, doubled)
    assert summary(h.records(settings.topics.windows)) == summary(
        live.records(settings.topics.windows)
    )
    repeated = sum(
        1 for i, b in enumerate(batches) if i % 3 == 0 for m in b[: len(b) // 2] if _seq(m) >= 0
    )
    assert h.coordinator.monitor.books["1"].duplicates == repeated


def test_a_restart_from_the_table_loses_and_repeats_nothing(settings, champion, parts, live):
    batches = live_order(parts)
    first = Harness(settings, champion)
    for b in batches[:13]:
        first.batch(b)
    # restart: a new coordinator restored from the table; the last two batches read again
    second = Harness(settings, champion, table=dict(first.table), start=first.now)
    for b in batches[11:]:
        second.batch(b)
    second.tick(6)
    windows = first.records(settings.topics.windows) + second.records(settings.topics.windows)
    assert summary(windows) == summary(live.records(settings.topics.windows))


def test_a_new_model_version_gets_windows_of_its_own(settings, champion, parts):
    batches = live_order(parts)
    h = Harness(settings, champion)
    for b in batches[:10]:
        h.batch(b)
    for b in batches[10:]:
        h.batch(b, version="2")  # the champion moved: same reference, another version
    h.tick(6)
    windows = h.records(settings.topics.windows)
    versions = [w["model_version"] for w in windows]
    assert versions.count("1") >= 8 and versions.count("2") >= 10
    by_window: dict[int, int] = {}
    for w in windows:
        by_window[w["window"]] = by_window.get(w["window"], 0) + w["n"] + w["rejected"]
    assert sum(by_window.values()) == N - N // WINDOW  # every readable event in one window


def test_a_quiet_feed_closes_its_last_window_after_the_idle_time(settings, champion):
    events = state_events(1100)
    parts = partitioned(events, drift_from=1000)
    h = Harness(settings, champion)
    for b in live_order(parts):
        h.batch(b)
    windows = h.records(settings.topics.windows)
    assert [w["window"] for w in windows] == [0, 1, 2, 3]  # window 4 waits for more events
    h.tick(2)
    assert len(h.records(settings.topics.windows)) == 4
    h.tick(4)  # past the idle time
    last = h.records(settings.topics.windows)[-1]
    assert (last["window"], last["n"], last["closed_by"], last["drifted"]) == (4, 100, "idle", True)


def test_partitions_read_one_after_another_hold_every_window_while_their_data_waits(
    settings, champion, parts, live
):
    """A backlog read one partition at a time, each for longer than the idle time (as a worker
    catching up reads a few states at a time): the wall clock closes nothing while the
    progress reports say data still waits on the broker, so the windows are the live ones."""
    ends = {p: len(ms) for p, ms in parts.items()}
    h = Harness(settings, champion)
    h.report({p: (0, end) for p, end in ends.items()})  # before any event is read
    for p in sorted(parts):
        for i in range(0, len(parts[p]), 500):
            h.batch(parts[p][i : i + 500], ends=ends)
            h.tick(settings.window_idle_seconds + 1)  # quiet for longer than the idle time
    h.tick(6)
    windows = h.records(settings.topics.windows)
    assert summary(windows) == summary(live.records(settings.topics.windows))
    # Only the last window waits for the feed to go quiet (its end seq was never sent).
    assert {w["closed_by"] for w in windows[:-1]} == {"watermark"}
    assert [w["missing"] for w in windows] == [1] * len(windows)  # the one not-JSON event each


def test_without_progress_a_lagging_partition_stops_holding_after_the_idle_time(
    settings, champion, parts, live
):
    """What the progress reports prevent: the same read order with no report closes windows
    by the wall clock before the lagging partitions delivered (the 1,164 false alerts of a
    300,000-event backlog)."""
    h = Harness(settings, champion)
    for p in sorted(parts):
        for i in range(0, len(parts[p]), 500):
            h.batch(parts[p][i : i + 500])
            h.tick(settings.window_idle_seconds + 1)
    h.tick(6)
    assert summary(h.records(settings.topics.windows)) != summary(
        live.records(settings.topics.windows)
    )


def test_a_quiet_window_waits_while_any_partition_has_data_waiting(settings, champion):
    events = state_events(1100)
    parts = partitioned(events)
    ends = {p: len(ms) + 1000 for p, ms in parts.items()}  # more on the broker than read
    h = Harness(settings, champion)
    for b in live_order(parts):
        h.batch(b, ends=ends)
    h.tick(60)
    assert [w["window"] for w in h.records(settings.topics.windows)] == [0, 1, 2, 3]
    h.report({p: (len(ms), len(ms)) for p, ms in parts.items()})  # every partition caught up
    h.tick(settings.window_idle_seconds + 1)
    last = h.records(settings.topics.windows)[-1]
    assert (last["window"], last["n"], last["closed_by"], last["missing"]) == (4, 100, "idle", 150)
