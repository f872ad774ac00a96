"""Prometheus view of the drift monitor: a custom Collector that reads ``monitor.latest`` (the
last closed window) on each scrape and yields fresh gauge families. Nothing is stored in
prometheus_client itself, so a new champion (new features, new thresholds) never leaves stale
label children behind.

Labels are bounded: ``feature`` is a monitored feature (numeric + categorical + ``prediction`` +
``confidence``), ``statistic`` one of a handful of names, ``class`` a model class.

>>> from prometheus_client import CollectorRegistry
>>> class Fake:
...     windows_total, alerts_total, model_version = 3, 1, "7"
...     latest = {"statistics": {"stops_per_year": {"psi": 0.3}},
...               "thresholds": {"stops_per_year": {"psi": 0.1}},
...               "drifted": {"stops_per_year": True}, "dataset_drifted": True}
>>> registry = CollectorRegistry()
>>> registry.register(DriftCollector(Fake()))
>>> registry.get_sample_value("stopdrift_feature_drifted", {"feature": "stops_per_year"})
1.0
>>> registry.get_sample_value("stopdrift_drift_alerts_total")
1.0
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


def _num(x: Any) -> float | None:
    return None if x is None else float(x)


class DriftCollector(Collector):
    """Yields the drift gauges of ``monitor`` (anything with ``latest``, ``windows_total``,
    ``alerts_total`` and ``model_version``). Register it once:
    ``REGISTRY.register(DriftCollector(monitor))``; it follows ``monitor.reset`` by itself.
    A callable returning the monitor also works, for workers that replace the monitor."""

    def __init__(self, monitor: Any):
        self._monitor = monitor

    def _get(self) -> Any:
        m = self._monitor
        return m() if callable(m) and not hasattr(m, "latest") else m

    def collect(self) -> Iterator[Metric]:
        monitor = self._get()
        if monitor is None:
            return
        windows = CounterMetricFamily(
            "stopdrift_windows", "Drift windows closed by this worker's monitor"
        )
        windows.add_metric([], float(monitor.windows_total))
        yield windows
        alerts = CounterMetricFamily(
            "stopdrift_drift_alerts", "Drift windows that raised an alert on drift.alerts"
        )
        alerts.add_metric([], float(monitor.alerts_total))
        yield alerts
        info = GaugeMetricFamily(
            "stopdrift_monitor_model_version_info",
            "Model version whose reference the drift monitor compares against (value 1)",
            labels=["version"],
        )
        info.add_metric([str(monitor.model_version)], 1.0)
        yield info

        latest = monitor.latest
        if not latest:
            return
        score = GaugeMetricFamily(
            "stopdrift_feature_drift_score",
            "Drift statistic of the last closed window",
            labels=["feature", "statistic"],
        )
        threshold = GaugeMetricFamily(
            "stopdrift_feature_drift_threshold",
            "Calibrated threshold of the statistic (window drifts when score > threshold)",
            labels=["feature", "statistic"],
        )
        for feature, stats in latest.get("statistics", {}).items():
            for stat, value in stats.items():
                if value is not None:
                    score.add_metric([feature, stat], float(value))
                thr = latest.get("thresholds", {}).get(feature, {}).get(stat)
                if thr is not None:
                    threshold.add_metric([feature, stat], float(thr))
        yield score
        yield threshold

        drifted = GaugeMetricFamily(
            "stopdrift_feature_drifted",
            "1 when the feature drifted in the last closed window",
            labels=["feature"],
        )
        for feature, flag in latest.get("drifted", {}).items():
            drifted.add_metric([feature], 1.0 if flag else 0.0)
        yield drifted
        dataset = GaugeMetricFamily(
            "stopdrift_dataset_drifted", "1 when any feature drifted in the last closed window"
        )
        dataset.add_metric([], 1.0 if latest.get("dataset_drifted") else 0.0)
        yield dataset

        shares = GaugeMetricFamily(
            "stopdrift_prediction_share_ratio",
            "Share of the last window's events predicted as each class",
            labels=["class"],
        )
        for c, v in latest.get("prediction_shares", {}).items():
            shares.add_metric([c], float(v))
        yield shares
        ref_shares = GaugeMetricFamily(
            "stopdrift_reference_prediction_share_ratio",
            "Share of the reference rows predicted as each class",
            labels=["class"],
        )
        for c, v in latest.get("reference_prediction_shares", {}).items():
            ref_shares.add_metric([c], float(v))
        yield ref_shares

        for name, key, doc in [
            (
                "stopdrift_estimated_accuracy_ratio",
                "estimated_accuracy",
                "Mean max-probability of the last window (CBPE-style; assumes calibration)",
            ),
            (
                "stopdrift_observed_accuracy_ratio",
                "observed_accuracy",
                "Accuracy on the last window's labelled events",
            ),
            (
                "stopdrift_reference_accuracy_ratio",
                "reference_accuracy",
                "Accuracy of the model on its reference rows",
            ),
        ]:
            value = _num(latest.get(key))
            if value is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], value)
                yield g

        for name, key, doc in [
            ("stopdrift_missing_share_ratio", "missing_share", "Share of missing values"),
            (
                "stopdrift_out_of_range_share_ratio",
                "out_of_range_share",
                "Share of present values outside the valid range",
            ),
            (
                "stopdrift_unseen_category_share_ratio",
                "unseen_category_share",
                "Share of values in categories the reference never saw",
            ),
        ]:
            g = GaugeMetricFamily(name, f"{doc} in the last closed window", labels=["feature"])
            for feature, v in latest.get(key, {}).items():
                g.add_metric([feature], float(v))
            yield g
