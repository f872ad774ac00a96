"""Build the stopdrift Grafana dashboard with grafanalib.

``PANELS`` holds every panel's title, kind, unit and PromQL queries in one list: the dashboard is
generated from it, and the tests evaluate each query against a real Prometheus.

Run: ``.venv/bin/python monitoring/grafana/build_dashboard.py`` (writes
``monitoring/grafana/dashboards/stopdrift.json``; commit the result).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "stopdrift.json"
DATASOURCE = {"type": "prometheus", "uid": "stopdrift-prometheus"}
UID = "stopdrift-main"

# (title, kind, unit, [(legend, PromQL), ...], width)
PANELS: list[tuple[str, str, str, list[tuple[str, str]], int]] = [
    (
        "Throughput (events/s)",
        "timeseries",
        "ops",
        [
            ("scored", 'sum(rate(stopdrift_events_total{outcome="scored"}[1m]))'),
            ("dead-lettered", 'sum(rate(stopdrift_events_total{outcome="dlq"}[1m]))'),
        ],
        8,
    ),
    (
        "End-to-end latency",
        "timeseries",
        "s",
        [
            (
                "p50",
                "histogram_quantile(0.5, "
                "sum by (le) (rate(stopdrift_end_to_end_latency_seconds_bucket[1m])))",
            ),
            (
                "p95",
                "histogram_quantile(0.95, "
                "sum by (le) (rate(stopdrift_end_to_end_latency_seconds_bucket[1m])))",
            ),
            (
                "scoring p95",
                "histogram_quantile(0.95, "
                "sum by (le) (rate(stopdrift_scoring_duration_seconds_bucket[1m])))",
            ),
        ],
        8,
    ),
    (
        "Dead-letter queue by reason",
        "timeseries",
        "ops",
        [("{{reason}}", "sum by (reason) (rate(stopdrift_dlq_events_total[1m])) > 0")],
        8,
    ),
    (
        "Consumer lag (messages)",
        "timeseries",
        "short",
        [
            ("total", "sum(stopdrift_consumer_lag_messages)"),
            ("partition {{partition}}", "sum by (partition) (stopdrift_consumer_lag_messages)"),
        ],
        8,
    ),
    (
        "Drift evidence per feature, last tested window (above the threshold = drift)",
        "timeseries",
        "short",
        [
            ("{{feature}}", 'max by (feature) (stopdrift_drift_evidence{scale="1"})'),
            ("threshold", 'max(stopdrift_drift_threshold{scale="1"})'),
        ],
        16,
    ),
    (
        "Drifted features (last tested window)",
        "timeseries",
        "short",
        [("{{feature}}", "max by (feature) (stopdrift_feature_drifted)")],
        12,
    ),
    (
        "Data quality: missing and rejected shares",
        "timeseries",
        "percentunit",
        [
            (
                "missing {{feature}}",
                'max by (feature) (stopdrift_missing_share_ratio{sample="window"})',
            ),
            ("rejected: {{field}}", "max by (field) (stopdrift_rejected_share_ratio)"),
            (
                "dead-lettered (all)",
                'sum(rate(stopdrift_events_total{outcome="dlq"}[5m])) '
                "/ sum(rate(stopdrift_events_total[5m]))",
            ),
        ],
        12,
    ),
    (
        "Prediction shares vs reference",
        "timeseries",
        "percentunit",
        [("{{class}} ({{sample}})", "max by (class, sample) (stopdrift_prediction_share_ratio)")],
        12,
    ),
    (
        "Estimated vs observed accuracy",
        "timeseries",
        "percentunit",
        [("{{kind}} ({{sample}})", "max by (kind, sample) (stopdrift_accuracy_ratio)")],
        12,
    ),
    (
        "Firing alerts",
        "table",
        "short",
        [("{{alertname}}", 'ALERTS{alertstate="firing"}')],
        12,
    ),
    (
        "Windows tested and drift alerts (per minute)",
        "timeseries",
        "short",
        [
            (
                "windows tested",
                'sum(rate(stopdrift_drift_windows_total{outcome="tested"}[1m])) * 60',
            ),
            ("drift alerts", "sum(rate(stopdrift_drift_alerts_total[1m])) * 60"),
        ],
        6,
    ),
    (
        "Model version",
        "stat",
        "none",
        [("{{model}}", "max by (model) (stopdrift_model_version)")],
        6,
    ),
    (
        "Age of the last tested window",
        "stat",
        "s",
        [("age", "time() - max(stopdrift_drift_last_tested_window_timestamp_seconds)")],
        6,
    ),
]


def queries() -> list[str]:
    """Every PromQL query of the dashboard (the tests evaluate them on a real Prometheus)."""
    return [expr for _, _, _, targets, _ in PANELS for _, expr in targets]


def build() -> dict[str, Any]:
    from grafanalib._gen import DashboardEncoder
    from grafanalib.core import Dashboard, GridPos, Stat, Table, Target, Time, TimeSeries

    panels = []
    x = y = 0
    row_height = 8
    for i, (title, kind, unit, targets, width) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + row_height
        grid = GridPos(h=row_height, w=width, x=x, y=y)
        x += width
        tgts = [
            Target(expr=expr, legendFormat=legend, refId=chr(ord("A") + j), datasource=DATASOURCE)
            for j, (legend, expr) in enumerate(targets)
        ]
        common = {"title": title, "targets": tgts, "gridPos": grid, "id": i + 1}
        if kind == "stat":
            panel = Stat(**common, format=unit, reduceCalc="lastNotNull", dataSource=DATASOURCE)
        elif kind == "table":
            panel = Table(**common, dataSource=DATASOURCE)
        else:
            panel = TimeSeries(**common, unit=unit, dataSource=DATASOURCE)
        panels.append(panel)
    dashboard = Dashboard(
        title="stopdrift: stream scoring and drift",
        uid=UID,
        tags=["stopdrift"],
        panels=panels,
        refresh="10s",
        time=Time("now-30m", "now"),
        timezone="utc",
    ).auto_panel_ids()
    return json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({len(PANELS)} panels, {len(queries())} queries)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
