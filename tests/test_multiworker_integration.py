"""Two workers in one consumer group give one worker's windows, even when the coordinator is
SIGKILLed.

Each worker sends its batches' drift columns to its group's ``drift.partials.<worker_id>``
topic; the one worker owning that single partition merges them into windows keyed by the
events' ``seq``. So a two-worker group must test the same windows, with the same events and the
same verdicts, as a one-worker group reading the same topic. Midway, the two-worker group's
coordinator is SIGKILLed: the other worker takes over its partitions and the coordinator's
table, and still no window is lost, counted twice or alerted twice.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from stopdrift import servers
from stopdrift_common.topics import ensure_topics
from tests.helpers_stream import (
    Worker,
    drift_records,
    metrics,
    natural_feed,
    register_copy,
    stream_settings,
)

pytestmark = pytest.mark.integration

MODEL_NAME = "stopdrift-multiworker-test"
WINDOW_EVENTS = 250
STATE_ROWS = 4053
N_EVENTS = 6000  # every state row, then city rows (the natural drift)
RATE = 500
DEADLINE = 240.0
FLAGS = ["--window-events", str(WINDOW_EVENTS), "--window-idle-seconds", "15"]


def summary(windows: list[dict]) -> list[tuple]:
    return sorted((w["id"], w["n"], w["tested"], tuple(w["drifted_features"])) for w in windows)


def test_two_workers_and_a_sigkill_give_one_workers_windows(champion, tmp_path):
    champion_settings, _ = champion
    logs = tmp_path / "logs"
    started: list = []
    try:
        broker = servers.broker(servers.free_port(), logs).start()
        started.append(broker)
        base = stream_settings(champion_settings, broker, tmp_path, "mw-base")
        register_copy(base, MODEL_NAME)
        groups = {"mw-one": 1, "mw-two": 2}
        workers: dict[str, list[Worker]] = {}
        for group, n in groups.items():
            settings = base.replace(worker_id=group)
            ensure_topics(settings)
            for _ in range(n):
                worker = Worker(settings, logs, MODEL_NAME, FLAGS)
                started.append(worker)
                worker.start()
                workers.setdefault(group, []).append(worker)
        time.sleep(12)  # let the two-worker group finish its rebalance before events arrive

        producer = subprocess.Popen(
            natural_feed(base, RATE, N_EVENTS),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(N_EVENTS / RATE * 0.5)
        coordinator = [
            w
            for w in workers["mw-two"]
            if "stopdrift_drift_coordinator 1.0" in metrics(w.metrics_port)
        ]
        assert len(coordinator) == 1, [metrics(w.metrics_port)[-500:] for w in workers["mw-two"]]
        coordinator[0].kill()
        assert producer.wait(120) == 0, producer.stderr.read()

        n_windows = N_EVENTS // WINDOW_EVENTS
        deadline = time.monotonic() + DEADLINE
        records = {}
        for group in groups:
            settings = base.replace(worker_id=group)
            while len(drift_records(settings, settings.topics.windows)) < n_windows:
                survivors = [w for w in workers[group] if w not in coordinator]
                assert all(w.alive() for w in survivors), "\n".join(w.log() for w in survivors)
                assert time.monotonic() < deadline, "\n".join(w.log() for w in survivors)
                time.sleep(2)
        time.sleep(3)
        for group in groups:
            settings = base.replace(worker_id=group)
            records[group] = (
                drift_records(settings, settings.topics.windows),
                drift_records(settings, settings.topics.alerts),
            )
    finally:
        for item in reversed(started):
            item.stop()

    (one_windows, one_alerts), (two_windows, two_alerts) = records["mw-one"], records["mw-two"]
    assert [w["window"] for w in one_windows] == list(range(n_windows))
    assert sorted(w["window"] for w in two_windows) == list(range(n_windows))
    assert [w["n"] for w in two_windows] == [WINDOW_EVENTS] * n_windows
    assert summary(two_windows) == summary(one_windows)
    for a, b in zip(
        sorted(one_windows, key=lambda w: w["window"]),
        sorted(two_windows, key=lambda w: w["window"]),
        strict=True,
    ):
        assert a["scales"]["1"]["evidence"] == pytest.approx(b["scales"]["1"]["evidence"])
    assert sorted(a["id"] for a in two_alerts) == sorted(a["id"] for a in one_alerts)
    assert len({a["id"] for a in two_alerts}) == len(two_alerts)  # none twice
    # Windows of state rows do not alert: the backlog read partition by partition fakes nothing.
    assert min(a["seq_start"] for a in one_alerts) >= (STATE_ROWS // WINDOW_EVENTS) * WINDOW_EVENTS
