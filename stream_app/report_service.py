"""Drift reports and drift-view snapshots out of the scoring process.

The coordinator puts a bounded sample of a window's rows on the records it publishes
(``reports.ReportLinks``): every alert, and a tested window every ``drift_view_window_seconds``.
This service reads ``drift.windows`` with a consumer group of its own, loads each model
version's reference rows from MLflow once, and hands the records to ``reports.Reports``
(its bounded queue and guarded writes): the HTML report where the alert says it is, and the
snapshot under the id the alert links to. Evidently's CPU, memory and disk errors stay here:
an alert costs the worker a sample's encoding, about a millisecond.

``stopdrift worker`` starts it as a child process (it stops with the worker); ``stopdrift
reports`` runs it alone. Both join the same group, so a group's records are reported once.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson
import pandas as pd

from stopdrift_common.registry import load_reference
from stopdrift_common.settings import Settings
from stream_app.reports import Reports, decode_sample, snapshot_id_of

log = logging.getLogger(__name__)

Load = Callable[[Settings, str], tuple[dict, pd.DataFrame]]
REFERENCE_RETRY_SECONDS = 30.0  # after MLflow failed for a version, its records skip this long


def group_id(settings: Settings) -> str:
    """The service's consumer group: one per worker group.

    >>> group_id(Settings(worker_id="w1"))
    'stopdrift-reports.w1'
    """
    return f"stopdrift-reports.{settings.worker_id}"


class ReportService:
    """Turns window records that carry a sample into reports and snapshots."""

    def __init__(
        self,
        settings: Settings,
        load: Load = load_reference,
        reports: Any = None,
        metrics: Any = None,
    ):
        from stream_app.drift_view import DriftView

        self.settings = settings
        self._load = load
        if reports is None:
            view = DriftView(settings.runs_dir / "evidently", base_url=settings.drift_view_base_url)
            reports = Reports(
                settings.runs_dir / "reports",
                keep=settings.report_keep,
                seed=settings.seed,
                view=view,
                view_keep=settings.drift_view_keep,
                window_seconds=0.0,  # the worker sampled windows at its rate already
                metrics=metrics,
            )
        self.reports = reports
        self.references: dict[str, pd.DataFrame] = {}
        self._failed_at: dict[str, float] = {}  # version -> when loading it last failed
        self.skipped = 0

    def handle(self, value: bytes | None) -> None:
        """One ``drift.windows`` message; never raises (a bad record is logged and skipped)."""
        try:
            record = orjson.loads(value or b"")
            sample = record.get("sample") if isinstance(record, dict) else None
            if not sample or not record.get("tested"):
                return
            reference = self._reference(str(record["model_version"]))
            if reference is None:
                self.skipped += 1
                return
            rows = decode_sample(sample)
            if record.get("drifted"):
                self.reports.submit(record, reference, rows, snapshot_id=snapshot_id_of(record))
            else:
                self.reports.window(record, reference, rows)
        except Exception:  # noqa: BLE001 - one bad record must not stop the reports
            self.skipped += 1
            log.exception("drift window record skipped by the report service")

    def _reference(self, version: str) -> pd.DataFrame | None:
        if version in self.references:
            return self.references[version]
        if time.monotonic() - self._failed_at.get(version, -1e9) < REFERENCE_RETRY_SECONDS:
            return None
        from stream_app.coordinator import reference_frame

        try:
            frame = reference_frame(*self._load(self.settings, version))
        except Exception as exc:  # noqa: BLE001 - MLflow away: these reports wait, then retry
            self._failed_at[version] = time.monotonic()
            log.warning("reference of model version %s not loaded (%s)", version, str(exc)[:200])
            return None
        self.references[version] = frame
        return frame


def consume(
    settings: Settings, keep_going: Callable[[], bool] = lambda: True, metrics: Any = None
) -> None:
    """Read ``drift.windows`` (from the start, the first time) until ``keep_going()`` is false."""
    from kafka import KafkaConsumer

    service = ReportService(settings, metrics=metrics)
    consumer = KafkaConsumer(
        settings.topics.windows,
        bootstrap_servers=settings.bootstrap,
        group_id=group_id(settings),
        auto_offset_reset="earliest",  # a backlog is bounded by the report queue
        enable_auto_commit=True,  # reports are best effort: one read again is written once
        session_timeout_ms=6000,  # the embedded broker's group joins (README, pitfalls)
        heartbeat_interval_ms=2000,
    )
    log.warning("report service reading %s as %s", settings.topics.windows, group_id(settings))
    try:
        while keep_going():
            for records in consumer.poll(timeout_ms=1000).values():
                for message in records:
                    service.handle(message.value)
    finally:
        consumer.close()


class LineMetrics:
    """``Reports``' metrics in the child: one JSON line per count on stdout, which the worker
    turns into its own counters (``stopdrift_report_errors_total`` etc. on its ``/metrics``)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def _line(self, method: str, label: str) -> None:
        with contextlib.suppress(OSError):  # the worker is gone: this process follows soon
            self.stream.write(json.dumps({"count": method, "label": label}) + "\n")
            self.stream.flush()

    def record_report_dropped(self, reason: str) -> None:
        self._line("record_report_dropped", reason)

    def record_report_error(self, kind: str) -> None:
        self._line("record_report_error", kind)

    def record_report_written(self, kind: str) -> None:
        self._line("record_report_written", kind)


COUNTS = ("record_report_dropped", "record_report_error", "record_report_written")
RESTART_SECONDS = 5.0


def start_child(settings: Settings, metrics: Any = None) -> threading.Thread:
    """Run the service as a child of the worker, restarted if it dies, its counts relayed to
    ``metrics`` (``WorkerMetrics``). A fresh interpreter, not a fork of the worker's state."""
    thread = threading.Thread(
        target=_supervise, args=(settings, metrics), name="report-service", daemon=True
    )
    thread.start()
    return thread


def _supervise(settings: Settings, metrics: Any) -> None:
    while True:
        process = _spawn(settings)
        atexit.register(_stop, process)
        assert process.stdout is not None
        for line in process.stdout:
            _relay(line, metrics)
        code = process.wait()
        atexit.unregister(_stop)
        log.warning("report service exited (%s); restarting in %.0f s", code, RESTART_SECONDS)
        time.sleep(RESTART_SECONDS)


def _spawn(settings: Settings) -> subprocess.Popen:
    """The settings go through stdin: they may hold credentials, which a command line would
    show to every user of the host."""
    process = subprocess.Popen(
        [sys.executable, "-m", "stream_app.report_service", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert process.stdin is not None
    process.stdin.write(settings.model_dump_json())
    process.stdin.close()
    return process


def _relay(line: str, metrics: Any) -> None:
    try:
        count = json.loads(line)
        method, label = count["count"], str(count["label"])
    except (ValueError, KeyError, TypeError):
        log.info("report service: %s", line.rstrip())  # something else printed: keep it
        return
    if metrics is not None and method in COUNTS:
        getattr(metrics, method)(label)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()


def _child(parent: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s reports %(message)s")
    os.nice(10)  # on a shared host, scoring goes first
    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    out = sys.stdout
    sys.stdout = sys.stderr  # stdout carries the counts only
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the worker's group
        consume(settings, keep_going=lambda: os.getppid() == parent, metrics=LineMetrics(out))


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``stopdrift reports``: the service in the foreground until Ctrl-C."""
    from stopdrift_common.topics import require_broker

    require_broker(settings)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s reports %(message)s")
    consume(settings)
    return 0


if __name__ == "__main__":  # the worker's child: python -m stream_app.report_service PARENT_PID
    _child(int(sys.argv[1]))
