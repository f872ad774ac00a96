"""Two workers in one consumer group give the same drift windows as one worker.

Each worker counts its share of ``stops.raw`` into per-window partials (windows keyed by the
events' ``seq``) and sends them to its group's ``drift.partials.<worker_id>`` topic; the one worker
owning that single partition merges them. So the alerts (window, statistics, verdicts) of a
two-worker group must equal a one-worker group's on the same events. The events are replayed as
a backlog (``--rate 0``), read partition by partition: windows of state rows must not alert
(arrival-order windows did, on the partition key ``state``).
"""

from __future__ import annotations

import subprocess
import time

import orjson
import pytest

from stopdrift_common import services
from stopdrift_common.settings import Settings
from stopdrift_common.topics import ensure_topics
from tests.helpers_stream import (
    Worker,
    produce_command,
    read_topic,
    register_copy,
    stream_settings,
)

pytestmark = pytest.mark.integration

MODEL_NAME = "stopdrift-multiworker-test"
WINDOW_EVENTS = 250
STATE_ROWS = 4053
N_EVENTS = 6000  # every state row, then city rows (the natural drift)
DEADLINE = 180.0


def flat(stats: dict[str, dict[str, float | None]]) -> dict[str, float]:
    return {f"{f}:{k}": v for f, d in stats.items() for k, v in d.items() if v is not None}


def alerts_by_group(settings: Settings) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for value in read_topic(settings, settings.topics.alerts):
        alert = orjson.loads(value)
        out.setdefault(alert["worker_id"], {})[alert["window"]] = alert
    return out


def test_two_workers_give_the_same_drift_windows_as_one(champion, tmp_path):
    champion_settings, _ = champion
    logs = tmp_path / "logs"
    started: list = []
    try:
        broker = services.broker(services.free_port(), logs).start()
        started.append(broker)
        base = stream_settings(
            champion_settings, broker, tmp_path, "mw-base", window_events=WINDOW_EVENTS
        )
        register_copy(base, MODEL_NAME)
        groups = {"mw-one": 1, "mw-two": 2}
        for group, n in groups.items():
            settings = Settings(**{**base.__dict__, "worker_id": group})
            ensure_topics(settings)
            for _ in range(n):
                worker = Worker(settings, logs, MODEL_NAME, ["--window-events", str(WINDOW_EVENTS)])
                started.append(worker)
                worker.start()
        time.sleep(15)  # let the two-worker group finish its rebalance before events arrive

        done = subprocess.run(
            produce_command(
                base, "--scenario", "natural", "--source", "both", "--rate", "0",
                "--limit", str(N_EVENTS),
            ),  # fmt: skip
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

        expected_windows = N_EVENTS // WINDOW_EVENTS
        deadline = time.monotonic() + DEADLINE
        while True:
            by_group = alerts_by_group(base)
            last = {g: max(by_group.get(g, {0: None})) for g in groups}
            if all(v >= expected_windows - 1 for v in last.values()):
                break
            workers = [w for w in started if isinstance(w, Worker)]
            assert all(w.alive() for w in workers), "\n".join(w.log() for w in workers)
            assert time.monotonic() < deadline, f"alerts so far: {last}"
            time.sleep(2)
        time.sleep(3)  # late alerts of the slower group
        by_group = alerts_by_group(base)
    finally:
        for item in reversed(started):
            item.stop()

    one, two = by_group["mw-one"], by_group["mw-two"]
    assert sorted(one) == sorted(two)
    for window in one:
        for key in ("n", "drifted_features", "start_event", "end_event"):
            assert one[window][key] == two[window][key], (window, key)
        # Counts are equal; sums of probabilities differ only in float summation order.
        assert flat(one[window]["statistics"]) == pytest.approx(flat(two[window]["statistics"]))
    # Only windows holding city rows drift; backlog order does not fake drift on `state`.
    assert min(one) * WINDOW_EVENTS + WINDOW_EVENTS > STATE_ROWS
