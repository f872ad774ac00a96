"""Open drift windows survive a worker restart: their counts are rebuilt from Kafka.

The coordinator keeps each open window's counts in a changelog-backed Faust table. A worker is
SIGKILLed while the natural scenario flows (so windows are open), restarted, and every window
after the change must still be complete and tested: without the table, the counts of the windows
open at the kill would be lost and those windows could never reach their size.
"""

from __future__ import annotations

import re
import subprocess
import time

import orjson
import pytest

from stopdrift_common import services
from tests.helpers_stream import (
    Worker,
    produce_command,
    read_topic,
    register_copy,
    stream_settings,
)

pytestmark = pytest.mark.integration

MODEL_NAME = "stopdrift-restart-test"
WINDOW_EVENTS = 250
STATE_ROWS = 4053
N_EVENTS = 6000
RATE = 400  # 15 s of events: the kill lands mid-stream
DEADLINE = 180.0


def test_open_windows_survive_a_worker_restart(champion, tmp_path):
    champion_settings, _ = champion
    logs = tmp_path / "logs"
    broker = services.broker(services.free_port(), logs).start()
    worker = None
    try:
        settings = stream_settings(
            champion_settings, broker, tmp_path, "restart-it", window_events=WINDOW_EVENTS
        )
        register_copy(settings, MODEL_NAME)
        worker = Worker(settings, logs, MODEL_NAME, ["--window-events", str(WINDOW_EVENTS)])
        worker.start()
        producer = subprocess.Popen(
            produce_command(
                settings, "--scenario", "natural", "--source", "both", "--rate", str(RATE),
                "--limit", str(N_EVENTS),
            ),  # fmt: skip
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(N_EVENTS / RATE * 0.7)  # well into the city rows: drift windows are open
        worker.kill()
        worker.start()
        assert producer.wait(120) == 0, producer.stderr.read()

        last_full = N_EVENTS // WINDOW_EVENTS - 1
        first_drift = STATE_ROWS // WINDOW_EVENTS + 1  # the first window of city rows only
        expected = set(range(first_drift, last_full + 1))
        deadline = time.monotonic() + DEADLINE
        while True:
            alerts = [orjson.loads(v) for v in read_topic(settings, settings.topics.alerts)]
            windows = {a["window"] for a in alerts if a["tested"]}
            if expected <= windows:
                break
            assert worker.alive(), worker.log()
            assert time.monotonic() < deadline, f"missing windows {sorted(expected - windows)}"
            time.sleep(2)
        assert re.search(r"restored [1-9]\d* open drift windows", worker.log())
        assert all(a["n"] >= WINDOW_EVENTS for a in alerts)
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
