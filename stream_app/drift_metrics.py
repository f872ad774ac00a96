"""Prometheus view of the drift coordinator: a custom Collector that yields the metric families
the coordinator last published (an immutable snapshot built on the event loop after each merge
or tick: a scrape runs on the HTTP server's thread and never reads the live monitor). Nothing
is stored in prometheus_client itself, so a new champion (new thresholds) never leaves stale
label children behind, and only the worker that coordinates exports drift gauges (the others
export ``stopdrift_drift_coordinator 0``).

The gauges describe the LAST TESTED window; ``stopdrift_drift_last_tested_window_timestamp_
seconds`` says when it closed, so alert rules can ignore a stale window. Labels are bounded:
``feature`` is a monitored feature, ``prediction``, ``confidence``, ``label`` or
``quality.<field>`` (the event contract's fields); ``scale`` is 1, 2 or 4; ``class`` a model
class.

>>> from prometheus_client import CollectorRegistry
>>> class Fake:
...     active, bad_partials, alert_write_retries, last_tested_at = True, 0, 0, 1700000000.0
...     class monitor:
...         windows_tested, windows_untested, alerts_total, unwindowed_rejects = 3, 1, 1, 0
...         books, versions = {}, {"7": None}
...         latest = {"drifted_features": ["state"], "threshold": 5.0, "drifted": True,
...                   "scales": {"1": {"threshold": 5.0, "evidence": {"state.distribution": 9.0,
...                                    "prediction.distribution": 1.0}}},
...                   "effects": {}}
>>> Fake.metrics_snapshot = drift_snapshot(Fake)  # the coordinator's, after each merge or tick
>>> registry = CollectorRegistry()
>>> registry.register(DriftCollector(Fake()))
>>> registry.get_sample_value("stopdrift_drift_evidence", {"feature": "state", "scale": "1"})
9.0
>>> registry.get_sample_value("stopdrift_feature_drifted", {"feature": "prediction"})
0.0
>>> registry.get_sample_value("stopdrift_drift_windows_total", {"outcome": "tested"})
3.0
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from drift.detector import feature_of


def drift_snapshot(coordinator: Any) -> tuple[Metric, ...]:
    """What ``DriftCollector`` serves until the next one: built at the end of
    ``Coordinator._publish`` (under its lock, the monitor at rest), never changed after, so a
    scrape sees one merge's or tick's state whole."""
    return tuple(DriftCollector.families(coordinator))


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None):
    g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        g.add_metric(list((labels or {}).values()), float(value))
    return g


class DriftCollector(Collector):
    """Yields the drift metrics of ``coordinator`` (``stream_app.coordinator.Coordinator``)."""

    def __init__(self, coordinator: Any):
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        c = self.coordinator
        active = bool(c.active)
        yield _gauge(
            "stopdrift_drift_coordinator",
            "1 on the worker that runs its group's drift coordinator",
            1.0 if active else 0.0,
        )
        if active:
            # This runs on the HTTP server's thread while the coordinator changes the monitor
            # (on its own thread): read only the copy it swaps in whole after each merge or tick.
            yield from getattr(c, "metrics_snapshot", ())

    @staticmethod
    def families(c: Any) -> Iterator[Metric]:
        """The drift families of ``c``'s live state: on the event loop only (drift_snapshot)."""
        m = c.monitor
        windows = CounterMetricFamily(
            "stopdrift_drift_windows", "Closed drift windows by outcome", labels=["outcome"]
        )
        windows.add_metric(["tested"], float(m.windows_tested))
        windows.add_metric(["untested"], float(m.windows_untested))  # fewer than the minimum
        yield windows
        for name, doc, value in [
            ("stopdrift_drift_alerts", "Drifted windows alerted on drift.alerts", m.alerts_total),
            (
                "stopdrift_drift_duplicate_events",
                "Events counted once already (read again)",
                sum(b.duplicates for b in m.books.values()),
            ),
            (
                "stopdrift_drift_unwindowed_rejects",
                "Rejected events with no seq to window them",
                m.unwindowed_rejects,
            ),
            (
                "stopdrift_drift_bad_partials",
                "Drift partials that could not be read",
                c.bad_partials,
            ),
            (
                "stopdrift_drift_alert_write_retries",
                "Retries of drift alert writes",
                c.alert_write_retries,
            ),
        ]:
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], float(value))
            yield counter
        yield from _preparation(c)
        yield _gauge(
            "stopdrift_drift_open_windows",
            "Drift windows open (waiting for events)",
            sum(len(b.open) + len(b.pending) for b in m.books.values()),
        )
        info = GaugeMetricFamily(
            "stopdrift_drift_model_version_info",
            "Model versions whose windows the monitor tests (value 1)",
            labels=["version"],
        )
        for version in m.versions:
            info.add_metric([str(version)], 1.0)
        yield info
        yield _gauge(
            "stopdrift_drift_last_tested_window_timestamp_seconds",
            "Unix time the last tested window closed",
            c.last_tested_at,
        )
        if m.latest:
            yield from _window(m.latest)


def _preparation(c: Any) -> Iterator[Metric]:
    """Model versions the coordinator could not prepare: their windows go untested."""
    unprepared = getattr(c, "unpreparable", {})
    yield _gauge(
        "stopdrift_drift_versions_unprepared",
        "Model versions that could not be prepared (reference or calibration): their windows "
        "are reported untested",
        len(unprepared),
    )
    skipped = CounterMetricFamily(
        "stopdrift_drift_partials_skipped",
        "Partials of unprepared model versions, counted but not tested, by reason",
        labels=["reason"],
    )
    for reason, count in sorted(getattr(c.monitor, "partials_skipped", {}).items()):
        skipped.add_metric([reason], float(count))
    yield skipped
    computed = CounterMetricFamily(
        "stopdrift_drift_calibrations_computed",
        "Calibrations this worker computed (none saved or stored for its drift settings)",
    )
    computed.add_metric([], float(getattr(c, "calibrations_computed", 0)))
    yield computed


def _window(latest: dict[str, Any]) -> Iterator[Metric]:
    """Gauges of the last tested window."""
    evidence = GaugeMetricFamily(
        "stopdrift_drift_evidence",
        "Calibrated evidence (-log10 p) of the feature's strongest statistic, last window",
        labels=["feature", "scale"],
    )
    threshold = GaugeMetricFamily(
        "stopdrift_drift_threshold",
        "Evidence a feature must exceed to drift, last window",
        labels=["scale"],
    )
    features: set[str] = set()
    for scale, result in latest.get("scales", {}).items():
        best: dict[str, float] = {}
        for statistic, e in result["evidence"].items():
            f = feature_of(statistic)
            best[f] = max(best.get(f, 0.0), e)
        for f, e in sorted(best.items()):
            evidence.add_metric([f, str(scale)], e)
        features |= set(best)
        threshold.add_metric([str(scale)], result["threshold"])
    yield evidence
    yield threshold
    drifted = GaugeMetricFamily(
        "stopdrift_feature_drifted",
        "1 when the feature drifted in the last tested window",
        labels=["feature"],
    )
    for f in sorted(features):
        drifted.add_metric([f], 1.0 if f in latest.get("drifted_features", []) else 0.0)
    yield drifted
    yield _gauge(
        "stopdrift_dataset_drifted",
        "1 when any feature drifted in the last tested window",
        1.0 if latest.get("drifted") else 0.0,
    )
    effects = latest.get("effects", {})
    shares = GaugeMetricFamily(
        "stopdrift_prediction_share_ratio",
        "Share of the last tested window's events predicted as each class",
        labels=["class", "sample"],
    )
    for cls, pair in effects.get("prediction", {}).get("shares", {}).items():
        shares.add_metric([cls, "window"], pair["window"])
        shares.add_metric([cls, "reference"], pair["reference"])
    yield shares
    confidence = effects.get("confidence", {})
    accuracy = GaugeMetricFamily(
        "stopdrift_accuracy_ratio",
        "Accuracy of the last tested window: estimated (mean max-probability) or observed "
        "(labelled events), and the reference's",
        labels=["kind", "sample"],
    )
    for kind, sample, value in [
        ("estimated", "window", confidence.get("mean")),
        ("estimated", "reference", confidence.get("reference_mean")),
        ("observed", "window", effects.get("label", {}).get("accuracy")),
        ("observed", "reference", effects.get("label", {}).get("reference_accuracy")),
    ]:
        if value is not None:
            accuracy.add_metric([kind, sample], float(value))
    yield accuracy
    missing = GaugeMetricFamily(
        "stopdrift_missing_share_ratio",
        "Share of missing values in the last tested window",
        labels=["feature", "sample"],
    )
    rejected = GaugeMetricFamily(
        "stopdrift_rejected_share_ratio",
        "Share of the last tested window's events rejected because of the field",
        labels=["field"],
    )
    for name, e in effects.items():
        if "missing_share" in e:
            missing.add_metric([name, "window"], e["missing_share"])
            missing.add_metric([name, "reference"], e["reference_missing_share"])
        if name.startswith("quality."):
            rejected.add_metric([name.split(".", 1)[1]], e["share"])
    yield missing
    yield rejected
