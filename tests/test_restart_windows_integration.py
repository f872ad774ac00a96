"""Windows survive a coordinator's death: their state is rebuilt from Kafka, events read again
are not counted twice, and no window is tested twice.

The coordinator keeps each window's state (counts, and per partition the position of the last
event it counted) in a changelog-backed Faust table. The only worker is SIGKILLed while the
natural scenario flows (windows open, batches scored but not committed), restarted, and every
window must come out exactly once, with exactly its events.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from stopdrift import servers
from tests.helpers_stream import (
    Worker,
    drift_records,
    natural_feed,
    register_copy,
    stream_settings,
)

pytestmark = pytest.mark.integration

MODEL_NAME = "stopdrift-restart-test"
WINDOW_EVENTS = 250
STATE_ROWS = 4053
N_EVENTS = 6000
RATE = 400  # 15 s of events
DEADLINE = 180.0
FIRST_CITY = STATE_ROWS // WINDOW_EVENTS  # the window where city rows start
FLAGS = ["--window-events", str(WINDOW_EVENTS), "--window-idle-seconds", "15"]


def test_windows_survive_a_sigkill_exactly_once(champion, tmp_path):
    champion_settings, _ = champion
    logs = tmp_path / "logs"
    broker = servers.broker(servers.free_port(), logs).start()
    worker = None
    try:
        settings = stream_settings(champion_settings, broker, tmp_path, "restart-it")
        register_copy(settings, MODEL_NAME)
        worker = Worker(settings, logs, MODEL_NAME, FLAGS)
        worker.start()
        producer = subprocess.Popen(
            natural_feed(settings, RATE, N_EVENTS),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Kill once the coordinator has closed the state windows (its table then holds
        # positions and open windows), whatever the machine's speed: not after a fixed sleep.
        deadline = time.monotonic() + DEADLINE
        while len(drift_records(settings, settings.topics.windows)) < FIRST_CITY:
            assert worker.alive(), worker.log()
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.2)
        worker.kill()
        worker.start()
        assert producer.wait(120) == 0, producer.stderr.read()

        n_windows = N_EVENTS // WINDOW_EVENTS
        deadline = time.monotonic() + DEADLINE
        while len(windows := drift_records(settings, settings.topics.windows)) < n_windows:
            assert worker.alive(), worker.log()
            assert time.monotonic() < deadline, f"{len(windows)} windows\n{worker.log()}"
            time.sleep(2)
        time.sleep(3)
        windows = drift_records(settings, settings.topics.windows)
        alerts = drift_records(settings, settings.topics.alerts)
        log = worker.log()
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()

    assert re.search(r"restored [1-9]\d* window records", log), log
    assert sorted(w["window"] for w in windows) == list(range(n_windows)), [
        (w["id"], w["n"], w["rejected"], w["closed_by"]) for w in windows
    ]
    assert [w["n"] for w in windows] == [WINDOW_EVENTS] * n_windows  # none counted twice
    assert all(w["tested"] for w in windows)
    alerted = [a["window"] for a in alerts]
    assert len(alerted) == len(set(alerted))  # no alert twice
    assert min(alerted) >= FIRST_CITY and set(range(FIRST_CITY + 1, n_windows)) <= set(alerted)
