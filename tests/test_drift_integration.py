"""Every window tested, live or as a backlog: the worker as users run it, a real broker and
registry, events sent by an outside Kafka client. Counts are exact (no sets).

- a drifted stream that loses an event in every window (not JSON: no seq) and dead-letters
  another (out of range, seq readable): every window is tested, clean windows raise no alert,
  every drifted window does; the same events read as a backlog give the same windows and
  alerts;
- a feed that goes quiet right after a change alerts within the idle time;
- labels that stop matching the predictions (shuffled) raise a label alert.
"""

from __future__ import annotations

import random
import time

import pytest

from stopdrift import servers
from stopdrift_common.schema import dumps
from tests.helpers_stream import (
    Worker,
    drift_records,
    register_copy,
    send_paced,
    state_events,
    stream_settings,
)

pytestmark = pytest.mark.integration

WINDOW = 250
IDLE = 5.0
FLAGS = ["--window-events", str(WINDOW), "--window-idle-seconds", str(IDLE)]


def wait_for_windows(settings, n_windows: int, workers: list[Worker], timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        windows = drift_records(settings, settings.topics.windows)
        if len(windows) >= n_windows:
            time.sleep(2)  # anything past the expected count would show up now
            return drift_records(settings, settings.topics.windows)
        for w in workers:
            assert w.alive(), w.log()
        assert time.monotonic() < deadline, (
            f"{len(windows)} of {n_windows} windows\n" + workers[0].log()
        )
        time.sleep(1)


def messages_of(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(e["state"].encode(), dumps(e)) for e in events]


@pytest.fixture()
def broker(tmp_path):
    server = servers.broker(servers.free_port(), tmp_path / "logs").start()
    yield server
    server.stop()


def test_every_window_is_tested_live_and_as_a_backlog_with_the_same_alerts(
    champion, broker, tmp_path
):
    champion_settings, _ = champion
    live = stream_settings(champion_settings, broker, tmp_path, "drift-live")
    backlog = live.replace(worker_id="drift-backlog")
    register_copy(live, "stopdrift-drift-it")

    n, change = 6000, 3000
    events = state_events(n)
    messages = messages_of(events)
    for k in range(n // WINDOW):
        lost = k * WINDOW + 17  # not JSON: dead-lettered without a seq
        messages[lost] = (messages[lost][0], b'{"seq": %d, "state": ' % lost)
        bad = k * WINDOW + 101  # out of range: dead-lettered, seq readable
        messages[bad] = (messages[bad][0], dumps({**events[bad], "hit_rate": 1.5}))
    for seq in range(change, n):
        if seq % WINDOW not in (17, 101):
            e = {**events[seq], "stops_per_year": events[seq]["stops_per_year"] * 5}
            messages[seq] = (messages[seq][0], dumps(e))

    workers = [Worker(live, tmp_path / "logs", "stopdrift-drift-it", FLAGS)]
    workers[0].start()
    try:
        send_paced(live, messages, rate=1500)
        workers.append(Worker(backlog, tmp_path / "logs", "stopdrift-drift-it", FLAGS))
        workers[1].start()  # after the outage: everything is a backlog
        by_group = {}
        for s in (live, backlog):
            wait_for_windows(s, n // WINDOW, workers)
        for s in (live, backlog):
            by_group[s.worker_id] = (
                drift_records(s, s.topics.windows),
                drift_records(s, s.topics.alerts),
            )
    finally:
        for w in workers:
            w.stop()

    for group, (windows, alerts) in by_group.items():
        assert [w["window"] for w in windows] == list(range(n // WINDOW)), group
        assert all(w["tested"] for w in windows), group
        assert [(w["n"], w["rejected"]) for w in windows] == [(WINDOW - 2, 1)] * (n // WINDOW)
        assert [a["window"] for a in alerts] == list(range(change // WINDOW, n // WINDOW)), group
        assert all("stops_per_year" in a["drifted_features"] for a in alerts), group
        assert len({a["id"] for a in alerts}) == len(alerts)

    (live_windows, live_alerts), (backlog_windows, backlog_alerts) = by_group.values()
    for a, b in zip(live_windows, backlog_windows, strict=True):
        assert (a["id"], a["n"], a["drifted_features"]) == (b["id"], b["n"], b["drifted_features"])
        for scale, result in a["scales"].items():
            assert result["evidence"] == pytest.approx(b["scales"][scale]["evidence"])
    assert [a["id"] for a in live_alerts] == [b["id"] for b in backlog_alerts]


def test_a_feed_that_goes_quiet_right_after_a_change_alerts_within_the_idle_time(
    champion, broker, tmp_path
):
    champion_settings, _ = champion
    s = stream_settings(champion_settings, broker, tmp_path, "drift-quiet")
    register_copy(s, "stopdrift-quiet-it")
    events = state_events(1120)
    for e in events[1000:]:  # the last 120 events: a partial window, then nothing
        e["stops_per_year"] *= 5
    worker = Worker(s, tmp_path / "logs", "stopdrift-quiet-it", FLAGS)
    worker.start()
    try:
        send_paced(s, messages_of(events), rate=2000)
        sent = time.monotonic()
        while not any(a["window"] == 4 for a in drift_records(s, s.topics.alerts)):
            assert time.monotonic() - sent < IDLE + 20, worker.log()
            time.sleep(0.5)
        waited = time.monotonic() - sent
        windows = wait_for_windows(s, 5, [worker])
    finally:
        worker.stop()
    assert waited < IDLE + 20
    assert [(w["window"], w["n"], w["closed_by"]) for w in windows][-1] == (4, 120, "idle")
    assert [w["drifted"] for w in windows] == [False] * 4 + [True]


def test_shuffled_labels_raise_a_label_alert(champion, broker, tmp_path):
    champion_settings, _ = champion
    s = stream_settings(champion_settings, broker, tmp_path, "drift-labels")
    register_copy(s, "stopdrift-labels-it")
    n, change = 3000, 1500
    events = state_events(n)
    labels = [e["subject_race"] for e in events[change:]]
    random.Random(1).shuffle(labels)  # same label mix, no longer the event's own
    for e, label in zip(events[change:], labels, strict=True):
        e["subject_race"] = label
    worker = Worker(s, tmp_path / "logs", "stopdrift-labels-it", FLAGS)
    worker.start()
    try:
        send_paced(s, messages_of(events), rate=0)
        windows = wait_for_windows(s, n // WINDOW, [worker])
        alerts = drift_records(s, s.topics.alerts)
    finally:
        worker.stop()
    assert [w["window"] for w in windows] == list(range(n // WINDOW))
    assert [a["window"] for a in alerts] == list(range(change // WINDOW, n // WINDOW))
    assert all(a["drifted_features"][0] == "label" for a in alerts), [
        a["drifted_features"] for a in alerts
    ]
    accuracy = [a["effects"]["label"]["accuracy"] for a in alerts]
    assert max(accuracy) < min(w["effects"]["label"]["accuracy"] for w in windows[:6])
