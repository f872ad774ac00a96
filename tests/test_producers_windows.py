"""Windows when seqs repeat (issue 17 item 8): two producers replaying the state table at once, a
producer restarted mid-feed, a client that sends ``"seq": 0`` for every event. Fed through the
real runtime and coordinator (``Harness``), in send order (Kafka keeps each partition's order).

Before windows were capped at W events, a window took every event of its key in a batch: sizes
followed the batch cut (two producers: 400 + 100 with batches of 200, 500 with 1,000; seq 0:
windows of 400, or 2,000 with batches of 2,000). Now every window holds W events, a repeated seq
range opens the key's next generation, and no event is lost or counted twice.
"""

from __future__ import annotations

import pytest

from tests import test_coordinator as tc
from tests.helpers_stream import state_events
from tests.test_coordinator import PARTITIONS, WINDOW, Harness, partitioned

settings, champion = tc.settings, tc.champion  # the coordinator tests' fixtures


def sent_order(events: list[dict], batch: int) -> list[list]:
    """Messages in the order they were sent, cut into batches of ``batch``."""
    parts = partitioned(events)
    cursor = dict.fromkeys(parts, 0)
    out = []
    for e in events:
        p = sum(e["state"].encode()) % PARTITIONS
        out.append(parts[p][cursor[p]])
        cursor[p] += 1
    return [out[i : i + batch] for i in range(0, len(out), batch)]


def feed(settings, champion, events, batch=200) -> tuple[Harness, list[dict], list[dict]]:
    h = Harness(settings, champion)
    for b in sent_order(events, batch):
        h.batch(b)
    h.tick(6)
    return h, h.records(settings.topics.windows), h.records(settings.topics.alerts)


def shape(windows: list[dict]) -> list[tuple[int, int, int, str]]:
    return [(w["window"], w["generation"], w["n"], w["closed_by"]) for w in windows]


@pytest.mark.parametrize("batch", [200, 1000])
def test_two_producers_at_once_give_two_generations_of_every_window(settings, champion, batch):
    a, b = state_events(2000), state_events(2000)  # two `stopdrift produce` runs: same events
    h, windows, alerts = feed(
        settings, champion, [e for pair in zip(a, b, strict=True) for e in pair], batch
    )
    assert shape(windows) == [(k, g, WINDOW, "full") for k in range(8) for g in (0, 1)]
    assert all(w["tested"] for w in windows) and alerts == []
    assert h.coordinator.monitor.books["1"].duplicates == 0  # 4,000 sent, 4,000 counted


def test_a_restarted_producer_reuses_the_seq_ranges_as_new_generations(settings, champion):
    events = state_events(1100) + state_events(2000, loop_seed=3)  # restarted at seq 0
    h, windows, alerts = feed(settings, champion, events)
    fresh = [(k, 0, WINDOW, "full") for k in range(4)]
    again = [(k, 1, WINDOW, "full") for k in range(4)]
    # window 4: the first run's last 100 events and the second run's first 150 fill
    # generation 0; the second run's other 100 close generation 1 by the watermark
    tail = [(4, 0, WINDOW, "full"), (4, 1, 100, "watermark")]
    assert shape(windows) == fresh + again + tail + [(k, 0, WINDOW, "full") for k in (5, 6, 7)]
    assert sum(w["n"] for w in windows) == 3100 and alerts == []
    assert h.coordinator.monitor.books["1"].duplicates == 0


@pytest.mark.parametrize("batch", [200, 2000])
def test_a_constant_seq_gives_windows_of_w_events_in_arrival_order(settings, champion, batch):
    events = [{**e, "seq": 0} for e in state_events(2100)]
    h, windows, alerts = feed(settings, champion, events, batch)
    full = [(0, g, WINDOW, "full") for g in range(8)]
    assert shape(windows) == [*full, (0, 8, 100, "idle")]  # the last closes when the feed stops
    assert all(w["tested"] for w in windows) and alerts == []
    assert h.coordinator.monitor.books["1"].duplicates == 0


def test_full_generations_waiting_to_be_tested_survive_a_restart():
    """Several full generations of one key, closed but not tested, are saved in that key's
    record (``closing``) and restored: none lost, none counted again."""
    import numpy as np
    import pandas as pd

    from drift.counts import Layout
    from drift.windows import Events, WindowBook

    layout = Layout.from_rows(pd.DataFrame({"x": [1.0, 2.0]}), ["x"], [], ["a"])
    frame = pd.DataFrame({"x": [1.0] * 1000, "predicted": ["a"] * 1000, "confidence": [1.0] * 1000})
    events = Events.of(frame, layout, [0] * 1000, np.arange(1000), [0] * 1000)
    book = WindowBook(layout, window_events=250)
    assert book.add(events, floors={}, now=0.0) == 1000
    saved = {k: r for k, r in book.changes().items() if r is not None}
    assert [len(r.get("closing", [])) for r in saved.values()] == [3]  # 4 generations, 1 record
    again = WindowBook(layout, window_events=250)
    again.restore(saved, now=1.0)
    assert again.add(events, floors={}, now=1.0) == 0 and again.duplicates == 1000
    assert [(w.key, w.generation, w.size) for w in again.ready()] == [(0, g, 250) for g in range(4)]
