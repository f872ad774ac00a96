"""The monitoring path end to end, with real servers: worker -> Prometheus (the committed rules)
-> Alertmanager (the committed config), and the worker's drift.alerts topic and Evidently report.

One stack is started for the module: a broker, a worker serving a copy of the session's
champion with small drift windows, Alertmanager, and Prometheus scraping the worker every second.
The natural scenario is replayed once at 1,000 events/s (every state row, then city rows: the
model was trained on states, so the city rows drift), then a few malformed messages so the
dead-letter panel has data. Then:

- every query of every Grafana panel (``build_dashboard.PANELS``) returns data from Prometheus'
  HTTP API at some point of the run (a failure names the panels that stayed empty);
- a drift alert fires in Prometheus and is active in Alertmanager;
- drift.alerts carries an alert with drifted features, statistics, thresholds, the model version
  and a report path, and the Evidently HTML report is on disk.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from stopdrift_common import services
from stopdrift_common.monitoring_config import (
    ALERTMANAGER_CONFIG,
    MONITORING_DIR,
    render_prometheus_config,
)
from stopdrift_common.schema import NUMERIC_FEATURES
from stopdrift_common.settings import Settings
from tests.helpers_stream import (
    Worker,
    produce_command,
    read_topic,
    register_copy,
    send_all,
    stream_settings,
)

pytestmark = pytest.mark.integration

MODEL_NAME = "stopdrift-monitoring-test"
WINDOW_EVENTS = 250
STATE_ROWS = 4053  # rows of data/opp-stops_state.csv: the natural scenario replays them first
N_EVENTS = 6000  # all the state rows, then about 1,950 city rows
# Paced like a live stream: at --rate 0 the whole replay waits in the topic and the worker reads
# it a partition at a time, so windows hold only the states of one partition (events are keyed
# by state) and "state" drifts in windows of state rows (measured: 4 of 13 alerts).
RATE = 1000
DEADLINE = 150.0  # seconds per wait: generous, CI has 2 shared cores
DRIFT_ALERTS = {"StopdriftFeatureDrift", "StopdriftPredictionDrift"}
T = TypeVar("T")


@dataclass
class Stack:
    settings: Settings
    worker: Worker
    prometheus: services.Service
    alertmanager: services.Service
    model_version: str
    logs: Path

    def diagnostics(self) -> str:
        tails = []
        for name in ("prometheus.log", "alertmanager.log"):
            path = self.logs / name
            if path.exists():
                tails.append(f"--- {name}\n{path.read_text(errors='replace')[-1500:]}")
        return f"--- worker log\n{self.worker.log()}\n" + "\n".join(tails)


def get_json(port: int, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}{query}", timeout=5) as r:
        return json.loads(r.read())


def wait_for(condition: Callable[[], T], what: str, stack: Stack) -> T:
    deadline = time.monotonic() + DEADLINE
    while True:
        result = condition()
        if result:
            return result
        assert stack.worker.alive(), f"worker died waiting for {what}\n{stack.diagnostics()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{stack.diagnostics()}"
        time.sleep(1.0)


def dashboard_panels() -> list[tuple[str, list[tuple[str, str]]]]:
    path = MONITORING_DIR / "grafana" / "build_dashboard.py"
    spec = importlib.util.spec_from_file_location("build_dashboard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [(title, targets) for title, _, _, targets, _ in module.PANELS]


def malformed_messages() -> list[tuple[bytes, bytes]]:
    """A few events the worker must dead-letter, so the DLQ-by-reason panel has data."""
    return [
        (b"AZ", b'{"state": "AZ", '),  # invalid_json
        (b"AZ", b""),  # empty_message
        (b"AZ", b"[]"),  # empty_array
        (b"AZ", b'"just a string"'),  # not_object
    ]


@pytest.fixture(scope="module")
def stack(champion, tmp_path_factory):
    champion_settings, _ = champion
    base = tmp_path_factory.mktemp("monitoring")
    logs = base / "logs"
    started: list[Any] = []  # stopped in reverse order, whatever happens
    try:
        broker = services.broker(services.free_port(), logs).start()
        started.append(broker)
        settings = stream_settings(
            champion_settings, broker, base, "monitoring-it", window_events=WINDOW_EVENTS
        )
        version = register_copy(settings, MODEL_NAME)
        worker = Worker(settings, logs, MODEL_NAME, ["--window-events", str(WINDOW_EVENTS)])
        started.append(worker)
        worker.start()

        alertmanager = services.alertmanager(
            services.free_port(), ALERTMANAGER_CONFIG, base / "alertmanager", logs
        ).start()
        started.append(alertmanager)
        config = render_prometheus_config(
            [f"127.0.0.1:{worker.metrics_port}"],
            f"127.0.0.1:{alertmanager.port}",
            base / "prometheus.yml",
            scrape_interval="1s",  # the drift alerts have no `for:`: they fire on one evaluation
        )
        prometheus = services.prometheus(
            services.free_port(), config, base / "prometheus-data", logs
        ).start()
        started.append(prometheus)
        s = Stack(settings, worker, prometheus, alertmanager, version, logs)

        # Scrapes of the idle worker first: counters then rise from a sample Prometheus has seen.
        wait_for(
            lambda: get_json(prometheus.port, "/api/v1/query", query='up{job="stopdrift-worker"}')[
                "data"
            ]["result"],
            "the first scrape of the worker",
            s,
        )
        done = subprocess.run(
            produce_command(
                settings,
                "--scenario",
                "natural",
                "--source",
                "both",
                "--rate",
                str(RATE),
                "--limit",
                str(N_EVENTS),
            ),  # fmt: skip
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"produce failed\n{done.stdout}\n{done.stderr}"
        send_all(settings, malformed_messages())
        yield s
    finally:
        for service in reversed(started):
            service.stop()


def has_data(result: list[dict[str, Any]]) -> bool:
    """An instant-query vector with at least one finite value (histogram_quantile over an idle
    histogram returns NaN samples: Grafana draws nothing for them)."""
    return any(math.isfinite(float(r["value"][1])) for r in result)


def test_every_dashboard_panel_query_returns_data(stack):
    """Each panel's queries are polled until each has returned data once: rates over [1m] go
    quiet a minute after the stream ends, gauges of the last window stay."""
    pending = {(title, expr) for title, targets in dashboard_panels() for _, expr in targets}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + DEADLINE
    while pending and time.monotonic() < deadline:
        for title, expr in sorted(pending):
            answer = get_json(stack.prometheus.port, "/api/v1/query", query=expr)
            if answer["status"] != "success":
                errors[expr] = str(answer.get("error"))
            elif has_data(answer["data"]["result"]):
                pending.discard((title, expr))
        if pending:
            time.sleep(1.0)
    assert not errors, f"queries Prometheus rejected: {errors}"
    empty = "\n".join(f"  {title}: {expr}" for title, expr in sorted(pending))
    assert not pending, f"panels whose queries returned no data:\n{empty}\n{stack.diagnostics()}"


def test_a_drift_alert_fires_in_prometheus_and_reaches_alertmanager(stack):
    def firing() -> list[dict[str, Any]]:
        alerts = get_json(stack.prometheus.port, "/api/v1/alerts")["data"]["alerts"]
        return [
            a for a in alerts if a["labels"]["alertname"] in DRIFT_ALERTS and a["state"] == "firing"
        ]

    fired = wait_for(firing, "a firing drift alert in Prometheus", stack)
    for alert in fired:
        assert alert["labels"]["category"] == "drift"
        assert alert["labels"]["job"] == "stopdrift-worker"
    names = {a["labels"]["alertname"] for a in fired}

    def received() -> list[dict[str, Any]]:
        alerts = get_json(stack.alertmanager.port, "/api/v2/alerts")
        return [a for a in alerts if a["labels"]["alertname"] in names]

    active = wait_for(received, f"{names} in Alertmanager", stack)
    # active = routed to a receiver, neither silenced nor inhibited (the worker is up)
    assert {a["status"]["state"] for a in active} == {"active"}
    assert all(a["receivers"] and a["receivers"][0]["name"] == "default" for a in active)


def test_drift_alerts_topic_carries_the_evidence_and_the_report_exists(stack):
    settings = stack.settings

    def alerts_with_report() -> list[dict[str, Any]]:
        alerts = [orjson.loads(v) for v in read_topic(settings, settings.topics.alerts)]
        return [a for a in alerts if a.get("report_path")]

    alerts = wait_for(alerts_with_report, "a drift alert on drift.alerts with a report", stack)
    alert = alerts[0]
    every = [orjson.loads(v) for v in read_topic(settings, settings.topics.alerts)]
    early = [a["window"] for a in every if a["end_event"] <= STATE_ROWS]
    print(
        f"\n{len(every)} drift alerts, {len(early)} in windows of state rows only {early}; "
        f"first with a report: window {alert['window']}, drifted {alert['drifted_features']}"
    )
    # The city rows differ in content, not only in which states they name: some window flags a
    # numeric feature or the predictions (a state-only verdict could be a partition artefact).
    content = {"prediction", "confidence", *NUMERIC_FEATURES}
    assert any(content & set(a["drifted_features"]) for a in every), [
        a["drifted_features"] for a in every
    ]
    assert alert["type"] == "drift_alert"
    assert alert["model_version"] == stack.model_version
    assert alert["n"] == WINDOW_EVENTS and alert["tested"] is True
    drifted = alert["drifted_features"]
    assert drifted and alert["dataset_drifted"] is True
    for feature in drifted:
        stats = alert["statistics"][feature]
        thresholds = alert["thresholds"][feature]
        assert stats and thresholds, feature
        # the verdict names the statistic(s) that went over their calibrated threshold
        exceeded = {
            s: e for s, e in alert["verdict"][feature]["statistics"].items() if e["exceeded"]
        }
        assert exceeded, (feature, alert["verdict"][feature])
        for statistic, e in exceeded.items():
            assert e["value"] > e["threshold"] == thresholds[statistic], (feature, statistic, e)
    report = Path(alert["report_path"])
    assert report.is_relative_to(settings.runs_dir), report
    wait_for(lambda: report.is_file() and report.stat().st_size > 0, f"report {report}", stack)
    assert b"<html" in report.read_bytes()[:5000].lower()

    # ... and is logged to MLflow, in the run of the model version that raised it.
    from stopdrift_common.registry import client

    c = client(settings)
    run_id = c.get_model_version(MODEL_NAME, stack.model_version).run_id

    def logged() -> list[str]:
        return [f.path for f in c.list_artifacts(run_id, "drift_reports")]

    names = wait_for(logged, "the report in the model's MLflow run", stack)
    assert any(n.endswith(report.name) for n in names), names
