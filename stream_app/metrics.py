"""The worker's Prometheus metrics, on their own registry (tests make a fresh one each).

Label values are bounded: outcome (2), DLQ reason codes (the contract's codes without the field
part), partitions, and the model name/version currently loaded (one child at a time).

>>> m = WorkerMetrics()
>>> m.record_outcomes(scored=3, dlq_reasons={"invalid_json": 1})
>>> m.registry.get_sample_value("stopdrift_events_total", {"outcome": "scored"})
3.0
>>> m.registry.get_sample_value("stopdrift_dlq_events_total", {"reason": "invalid_json"})
1.0
>>> m.set_model("clf", "2"); m.set_model("clf", "3")
>>> m.registry.get_sample_value("stopdrift_model_version_info", {"model": "clf", "version": "2"})
>>> m.registry.get_sample_value("stopdrift_model_version", {"model": "clf"})
3.0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from stream_app.model_watch import REJECTION_REASONS
from stream_app.reports import DROP_REASONS, ERROR_KINDS

# The reason codes decode_message and the worker can give (schema.py, outcomes.py).
DLQ_REASONS = [
    "empty_message",
    "oversize",
    "not_utf8",
    "invalid_json",
    "empty_array",
    "array_too_long",
    "not_object",
    "missing_field",
    "wrong_type",
    "unknown_category",
    "not_finite",
    "out_of_range",
    "invalid",
    "scoring_failed",
    "encoding_failed",
    "decoding_failed",
    "processing_failed",
]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 50000)
SCORING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "stopdrift_events",
            "Events by outcome (scored or dead-lettered)",
            ["outcome"],
            registry=r,
        )
        self.dlq = Counter(
            "stopdrift_dlq_events", "Dead-lettered events by reason code", ["reason"], registry=r
        )
        for outcome in ("scored", "dlq"):
            self.events.labels(outcome)
        for reason in DLQ_REASONS:
            self.dlq.labels(reason)
        self.batch_size = Histogram(
            "stopdrift_batch_size_events",
            "Events per processed batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.scoring = Histogram(
            "stopdrift_scoring_duration_seconds",
            "Time of the one vectorised scoring call per batch",
            buckets=SCORING_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "stopdrift_end_to_end_latency_seconds",
            "From the producer's produced_at to the scored output being written",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "stopdrift_consumer_lag_messages",
            "Messages behind the fetch high-watermark, per input partition",
            ["partition"],
            registry=r,
        )
        self.paused_partitions = Gauge(
            "stopdrift_paused_partitions",
            "Input partitions paused because they ran ahead of the slowest one (alignment)",
            registry=r,
        )
        self.model_info = Gauge(
            "stopdrift_model_version_info",
            "1 for the model version being used",
            ["model", "version"],
            registry=r,
        )
        self.model_version = Gauge(
            "stopdrift_model_version",
            "Version number of the model being used",
            ["model"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "stopdrift_model_loaded", "1 once a champion is loaded and scoring", registry=r
        )
        self.write_retries = Counter(
            "stopdrift_output_write_retries",
            "Batches whose outputs had to be written again (the broker was away)",
            registry=r,
        )
        self.champion_rejected = Gauge(
            "stopdrift_champion_rejected_version",
            "The last champion version refused (not as registered, or it failed on its own "
            "reference rows): the worker kept its model; 0 when none",
            registry=r,
        )
        self.champion_rejections = Counter(
            "stopdrift_champion_rejections",
            "Champion versions refused, by reason: digest_missing / digest_mismatch (its files "
            "are not the ones registered: never unpickled, look for tampering) or smoke_test",
            ["reason"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.champion_rejections.labels(reason)
        self.broker_reset = Gauge(
            "stopdrift_broker_reset_detected",
            "1 once the broker lost stops.raw's log (offsets went back): the worker exits",
            registry=r,
        )
        self.last_batch = Gauge(
            "stopdrift_last_batch_timestamp_seconds",
            "Unix time the last batch was written",
            registry=r,
        )
        self.reports_dropped = Counter(
            "stopdrift_reports_dropped",
            "Drift reports and snapshots not written, by reason: queue_full (the oldest waiting "
            "is dropped under sustained drift) or disk_cooldown (a write failed moments ago)",
            ["reason"],
            registry=r,
        )
        self.report_errors = Counter(
            "stopdrift_report_errors",
            "Failed drift report, snapshot or drift-view writes, by kind: no_space, read_only, "
            "permission, os_error, failed (Evidently or the data); scoring goes on",
            ["kind"],
            registry=r,
        )
        self.reports_written = Counter(
            "stopdrift_reports_written",
            "Drift reports (HTML) and drift-view snapshots written, by kind",
            ["kind"],
            registry=r,
        )
        for reason in DROP_REASONS:
            self.reports_dropped.labels(reason)
        for kind in ERROR_KINDS:
            self.report_errors.labels(kind)
        for kind in ("report", "snapshot"):
            self.reports_written.labels(kind)
        self._model: tuple[str, str] | None = None

    def record_outcomes(self, scored: int, dlq_reasons: Mapping[str, int]) -> None:
        if scored:
            self.events.labels("scored").inc(scored)
        total = 0
        for reason, n in dlq_reasons.items():
            self.dlq.labels(reason if reason in DLQ_REASONS else "invalid").inc(n)
            total += n
        if total:
            self.events.labels("dlq").inc(total)

    def observe_latencies(self, seconds: Iterable[float] | np.ndarray) -> None:
        """Many observations at once: bucket counts with numpy, then one update per bucket."""
        values = np.asarray(list(seconds) if not isinstance(seconds, np.ndarray) else seconds)
        if values.size == 0:
            return
        values = np.maximum(values, 0.0)
        edges = np.asarray(LATENCY_BUCKETS)
        # Histogram buckets are cumulative "le" bounds; the client stores per-bucket counts.
        idx = np.searchsorted(edges, values, side="left")
        counts = np.bincount(idx, minlength=len(edges) + 1)
        buckets = self.latency._buckets  # noqa: SLF001 - the client has no bulk observe
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(float(n))
        self.latency._sum.inc(float(values.sum()))  # noqa: SLF001

    def set_model(self, name: str, version: str) -> None:
        if self._model is not None and self._model != (name, version):
            self.model_info.remove(*self._model)
        self._model = (name, version)
        self.model_info.labels(name, version).set(1)
        with contextlib.suppress(ValueError):
            self.model_version.labels(name).set(float(version))
        self.model_loaded.set(1)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the lag series of input partitions this worker no longer owns (revoked): left
        behind, a stale value would be summed with the new owner's lag for ever."""
        for partition in partitions:
            self.lag.remove(str(partition))

    def record_rejection(self, version: str, reason: str) -> None:
        """``ModelWatch``'s ``on_reject``: count the refusal by reason, show the version."""
        self.champion_rejections.labels(
            reason if reason in REJECTION_REASONS else "smoke_test"
        ).inc()
        self.champion_rejected.set(float(version) if version.isdigit() else 0)

    def record_report_dropped(self, reason: str) -> None:
        """``Reports``' counters (called from its thread; the client's counters are locked)."""
        self.reports_dropped.labels(reason if reason in DROP_REASONS else "queue_full").inc()

    def record_report_error(self, kind: str) -> None:
        self.report_errors.labels(kind if kind in ERROR_KINDS else "failed").inc()

    def record_report_written(self, kind: str) -> None:
        self.reports_written.labels("snapshot" if kind == "snapshot" else "report").inc()

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)
