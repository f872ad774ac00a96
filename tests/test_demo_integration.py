"""``stopdrift demo`` as users run it: it restarts what stops, and SIGTERM stops all it started.

The demo runs on free ports against the session's MLflow (its champion is served, so nothing is
trained). While it replays: the worker is SIGKILLed (the demo starts it again), then the
embedded broker (its topics were in memory: the demo restarts it and recreates them; the worker
notices the lost offsets, exits, and is started again). Then SIGTERM: the demo stops every
process it started and leaves no port bound.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from stopdrift import servers
from tests.helpers_stream import metrics, register_copy

pytestmark = pytest.mark.integration

MODEL_NAME = "stopdrift-demo-test"


def wait_until(condition, what: str, log, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log()[-4000:]}"
        time.sleep(1)
    return result


def scored(port: int) -> float:
    found = re.search(r'stopdrift_events_total\{outcome="scored"\} (\S+)', metrics(port))
    return float(found.group(1)) if found else 0.0


def pid_on(port: int) -> int | None:
    """The process listening on a loopback port (``ss`` of iproute2)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True)
    found = re.search(r"pid=(\d+)", out.stdout)
    return int(found.group(1)) if found else None


def test_the_demo_restarts_what_stops_and_sigterm_stops_everything(champion, tmp_path):
    champion_settings, _ = champion
    register_copy(champion_settings, MODEL_NAME)
    ports = {
        "STOPDRIFT_BROKER_PORT": servers.free_port(),
        "STOPDRIFT_METRICS_PORT": servers.free_port(),
        "STOPDRIFT_WORKER_WEB_PORT": servers.free_port(),
        "STOPDRIFT_PROMETHEUS_PORT": servers.free_port(),
        "STOPDRIFT_ALERTMANAGER_PORT": servers.free_port(),
        "STOPDRIFT_DRIFT_VIEW_PORT": servers.free_port(),
    }
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "STOPDRIFT_MODEL_NAME": MODEL_NAME,
        "MLFLOW_TRACKING_URI": champion_settings.mlflow_tracking_uri,
        "STOPDRIFT_RUNS_DIR": str(tmp_path / "runs"),
        "STOPDRIFT_CALIBRATION_WINDOWS": "1000",
    }
    log_path = tmp_path / "demo.out"
    with open(log_path, "w") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "stopdrift", "demo", "--duration", "0", "--rate", "300"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log() -> str:
        return log_path.read_text(errors="replace")

    metrics_port = ports["STOPDRIFT_METRICS_PORT"]
    try:
        wait_until(lambda: scored(metrics_port) > 300, "the demo's worker scoring", log, 180)

        # The worker dies: the demo starts it again and scoring goes on.
        os.kill(pid_on(metrics_port), signal.SIGKILL)
        wait_until(lambda: "worker exited with code -9" in log(), "the demo to notice", log)
        wait_until(lambda: scored(metrics_port) > 100, "the restarted worker scoring", log)

        # The embedded broker dies: restarted, topics recreated; the worker sees the lost
        # offsets, exits and is started again, and scores the new log.
        os.kill(pid_on(ports["STOPDRIFT_BROKER_PORT"]), signal.SIGKILL)
        wait_until(lambda: "topics recreated" in log(), "the broker restart", log)
        wait_until(
            lambda: (
                "the broker lost"
                in (tmp_path / "runs" / "logs" / "worker.log").read_text(errors="replace")
            ),
            "the worker to say so",
            log,
        )
        restarts = log().count("worker exited")
        wait_until(lambda: log().count("worker exited") > restarts, "the worker's exit", log)
        wait_until(lambda: scored(metrics_port) > 100, "scoring on the new log", log, 180)

        demo.send_signal(signal.SIGTERM)
        assert demo.wait(60) == 0, log()
    finally:
        if demo.poll() is None:  # a failed wait: still let the demo stop what it started
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()
    assert "SIGTERM: stopping" in log() and "stopped every process the demo started" in log()
    bound = {name: port for name, port in ports.items() if servers.port_open(port)}
    assert bound == {}, (bound, log())
