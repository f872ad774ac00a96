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
- drift.alerts carries alerts only for windows of city rows, each with its features ranked, the
  states that moved and a report, and the Evidently HTML report (with stopdrift's verdict on
  top) is on disk.
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

from stopdrift import servers
from stopdrift.monitoring_config import (
    ALERTMANAGER_CONFIG,
    MONITORING_DIR,
    render_prometheus_config,
)
from stopdrift_common.schema import NUMERIC_FEATURES
from stopdrift_common.settings import Settings
from tests.helpers_stream import (
    Worker,
    natural_feed,
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
DRIFT_ALERTS = {
    "StopdriftFeatureDrift",
    "StopdriftPredictionDrift",
    "StopdriftEstimatedAccuracyDrop",
}
T = TypeVar("T")


@dataclass
class Stack:
    settings: Settings
    worker: Worker
    prometheus: servers.Service
    alertmanager: servers.Service
    drift_view: servers.Service
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
    """Events the worker must dead-letter, so the DLQ-by-reason panel has data, and the last
    window's missing events, out of range: a data-quality drift for the rejected-share panel."""
    from producers.replay import load_tables
    from stopdrift_common.schema import dumps, make_event

    row = load_tables(Settings())["state"].iloc[0].to_dict()
    row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    out_of_range = [
        (
            b"AZ",
            dumps(
                make_event(
                    {**row, "hit_rate": 1.5},
                    source="state",
                    row=0,
                    loop=9,
                    seq=seq,
                    produced_at=time.time(),
                )
            ),
        )
        for seq in range(N_EVENTS - 10, N_EVENTS)
    ]
    return [
        (b"AZ", b'{"state": "AZ", '),  # invalid_json
        (b"AZ", b""),  # empty_message
        (b"AZ", b"[]"),  # empty_array
        (b"AZ", b'"just a string"'),  # not_object
        *out_of_range,
    ]


@pytest.fixture(scope="module")
def stack(champion, tmp_path_factory):
    champion_settings, _ = champion
    base = tmp_path_factory.mktemp("monitoring")
    logs = base / "logs"
    started: list[Any] = []  # stopped in reverse order, whatever happens
    try:
        broker = servers.broker(servers.free_port(), logs).start()
        started.append(broker)
        settings = stream_settings(
            champion_settings, broker, base, "monitoring-it", window_events=WINDOW_EVENTS
        )
        version = register_copy(settings, MODEL_NAME)
        view_port = servers.free_port()
        drift_view = servers.drift_view(view_port, settings.runs_dir / "evidently", logs).start()
        started.append(drift_view)
        worker = Worker(
            settings,
            logs,
            MODEL_NAME,
            [
                "--window-events",
                str(WINDOW_EVENTS),
                "--drift-view-url",
                f"http://127.0.0.1:{view_port}",
            ],
        )
        started.append(worker)
        worker.start()

        alertmanager = servers.alertmanager(
            servers.free_port(), ALERTMANAGER_CONFIG, base / "alertmanager", logs
        ).start()
        started.append(alertmanager)
        config = render_prometheus_config(
            [f"127.0.0.1:{worker.metrics_port}"],
            f"127.0.0.1:{alertmanager.port}",
            base / "prometheus.yml",
            scrape_interval="1s",  # the drift alerts have no `for:`: they fire on one evaluation
        )
        prometheus = servers.prometheus(
            servers.free_port(), config, base / "prometheus-data", logs
        ).start()
        started.append(prometheus)
        s = Stack(settings, worker, prometheus, alertmanager, drift_view, version, logs)

        # Scrapes of the idle worker first: counters then rise from a sample Prometheus has seen.
        wait_for(
            lambda: get_json(prometheus.port, "/api/v1/query", query='up{job="stopdrift-worker"}')[
                "data"
            ]["result"],
            "the first scrape of the worker",
            s,
        )
        done = subprocess.run(
            # The last 10 events come out of range (malformed_messages).
            natural_feed(settings, RATE, N_EVENTS - 10),
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


def test_drift_alerts_topic_carries_the_verdict_and_the_report_exists(stack):
    settings = stack.settings

    def alerts_with_report() -> list[dict[str, Any]]:
        alerts = [orjson.loads(v) for v in read_topic(settings, settings.topics.alerts)]
        return [a for a in alerts if a.get("report")]

    alerts = wait_for(alerts_with_report, "a drift alert on drift.alerts with a report", stack)
    every = [orjson.loads(v) for v in read_topic(settings, settings.topics.alerts)]
    # No alert while state rows flow: the first alert is in a window that holds city rows.
    assert min(a["seq_end"] for a in every) > STATE_ROWS, [a["window"] for a in every]
    # The city rows differ in content, not only in which states they name: some window flags a
    # numeric feature or the predictions.
    content = {"prediction", "confidence", *NUMERIC_FEATURES}
    assert any(content & set(a["drifted_features"]) for a in every), [
        a["drifted_features"] for a in every
    ]
    alert = alerts[0]
    assert alert["type"] == "drift_alert" and alert["drifted"] is True and alert["tested"]
    assert alert["model_version"] == stack.model_version
    assert alert["id"] == f"{alert['model_version']}:{alert['window']}:{alert['generation']}"
    # Features ranked by how far past the threshold; each names the scale that saw it best.
    findings = alert["findings"]
    assert [f["feature"] for f in findings] == alert["drifted_features"]
    assert [f["excess"] for f in findings] == sorted((f["excess"] for f in findings), reverse=True)
    for f in findings:
        scale = alert["scales"][str(f["scale"])]
        assert f["evidence"] > scale["threshold"] == f["threshold"]
    # Where a state drift is: the states that moved, window share vs reference share.
    state = [f for a in every for f in a["findings"] if f["feature"] == "state"]
    assert state and state[0]["effects"]["moved"][0]["category"]
    report = Path(alert["report"]["path"])
    assert report.is_relative_to(settings.runs_dir), report
    wait_for(lambda: report.is_file() and report.stat().st_size > 0, f"report {report}", stack)
    page = report.read_text(errors="replace")
    assert "<html" in page[:5000].lower() and f"stopdrift drift alert {alert['id']}" in page


def test_every_page_the_demo_prints_opens_with_content(stack):
    """The URLs ``stopdrift demo`` prints (the README shows the same), and the pages an alert
    links to, rendered by headless Chromium: no 404, real content."""
    import argparse

    from stopdrift.demo import Demo
    from tests.helpers_pages import dump_dom, status

    s = stack.settings.replace(
        prometheus_port=stack.prometheus.port,
        alertmanager_port=stack.alertmanager.port,
        metrics_port=stack.worker.metrics_port,
        drift_view_port=stack.drift_view.port,
    )
    demo = Demo(argparse.Namespace(), s)
    demo.drift_view()  # finds the drift view the worker writes to (already serving: reused)
    alert = wait_for(
        lambda: [
            a
            for a in (orjson.loads(v) for v in read_topic(s, s.topics.alerts))
            if a.get("report", {}).get("snapshot_url")
        ],
        "an alert with a drift view snapshot",
        stack,
    )[0]
    report = Path(alert["report"]["path"])
    wait_for(lambda: report.is_file(), "the alert's report", stack)
    expected = {
        "drift view": "Drift score per column",
        "Prometheus": "StopdriftFeatureDrift",
        "Alertmanager": "alertname",
        "MLflow": "MLflow",
        "metrics": "stopdrift_events_total",
    }
    pages = [(name, url, expected[name]) for name, url, _ in demo.urls()]
    pages += [
        ("alert snapshot", alert["report"]["snapshot_url"], "Drift"),
        ("alert report", report.as_uri(), f"stopdrift drift alert {alert['id']}"),
    ]
    for name, url, marker in pages:
        if url.startswith("http"):
            assert status(url) == 200, (name, url, status(url))
        dom = wait_for(
            lambda url=url, marker=marker: marker in (d := dump_dom(url)) and d,
            f"{name} ({url}) rendering {marker!r}",
            stack,
        )
        assert "currently empty" not in dom, (name, url)
