"""The drift monitor the stream worker calls once per micro-batch.

It counts each batch into tumbling windows keyed by the events' ``seq`` (``windows.SeqWindows``:
the same events per window however partitions, batches or workers deliver them; without seqs,
arrival order numbers the events), and for every window that closes
computes the statistics, asks the calibrated detector (``detectors.py``) for a verdict, keeps the
last window's figures in ``latest`` (read by the Prometheus collector in ``drift_metrics.py``)
and returns one alert message per drifted window, ready for the ``drift.alerts`` topic. When a
window drifts it may also write an Evidently HTML report of that window (``reports.py``) in a
background thread, at most one per ``report_min_interval_seconds``: a report costs about half a
second of CPU, far more than the counting.

Multi-worker: ``partials_message`` turns a batch into JSON-able counts per window index (plus
the rows behind them, for reports) without touching the monitor's state; every worker sends its
batches' messages to ``drift.partials`` (one partition), and the one worker that owns it merges
them with ``update_partials``. Counts merge exactly, so N workers give one worker's figures.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stopdrift_common.settings import Settings
from stream_app.detectors import (
    DEFAULT_BOOTSTRAP,
    CalibratedDetector,
    compute_statistics,
    summarise,
)
from stream_app.windows import ClosedWindow, Layout, SeqWindows, WindowPartial, align_proba

log = logging.getLogger(__name__)

REPORT_REFERENCE_ROWS = 2000  # reference rows given to Evidently (bounds a report's cost)


def report_name(unix_time: float) -> str:
    """The report file name for a window closed at ``unix_time``.

    >>> report_name(1700000000.7)
    'Classification_State_Metrics_1700000000_Drift_Report.html'
    """
    return f"Classification_State_Metrics_{int(unix_time)}_Drift_Report.html"


def _nested(flat: dict[tuple[str, str], float]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for (f, s), v in flat.items():
        out.setdefault(f, {})[s] = float(v) if math.isfinite(v) else None
    return out


class DriftMonitor:
    """Windows, statistics, calibrated verdicts and alert messages for one model version.

    Parameters
    ----------
    reference, reference_rows
        The champion's reference statistics and rows (``registry.Champion``); rows may be None.
    settings
        ``window_events``, ``false_alarm_rate``, ``persistence`` and ``seed`` are used.
    model_version
        Copied into alerts and metrics.
    report_dir
        Where Evidently reports of drifted windows are written (created when needed).
    write_reports
        False: never write reports (the rows of the window are then not kept either).
    report_min_interval_seconds
        A drifted window gets a new Evidently report at most this often; the alerts between
        share the latest report of the episode (a report costs ~0.3 s of CPU).
    """

    def __init__(
        self,
        reference: dict[str, Any],
        reference_rows: pd.DataFrame | None,
        settings: Settings,
        model_version: str,
        report_dir: Path,
        *,
        write_reports: bool = True,
        report_min_interval_seconds: float = 10.0,
        n_bootstrap: int = DEFAULT_BOOTSTRAP,
    ):
        self.settings = settings
        self.report_dir = Path(report_dir)
        self.write_reports = write_reports
        self.report_min_interval_seconds = report_min_interval_seconds
        self._arrivals = 0  # events counted, to number events that come without a seq
        # The champion's MLflow run: set by the worker, so each report is also logged there
        # (under drift_reports/, next to the model it is about). None: files only.
        self.run_id: str | None = None
        self._last_report: str | None = None
        self.n_bootstrap = n_bootstrap
        self.windows_total = 0
        self.alerts_total = 0
        self.reports_written = 0
        self.latest: dict[str, Any] | None = None
        self._last_report_at = -math.inf
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._lock = threading.Lock()  # reset may run in a thread while the loop calls update
        self.reset(reference, reference_rows, model_version)

    # --- lifecycle ------------------------------------------------------------------------------
    def reset(
        self, reference: dict[str, Any], reference_rows: pd.DataFrame | None, model_version: str
    ) -> None:
        """Start over for a new champion: new bins, recalibrated thresholds, the open window
        dropped (its predictions came from the old model). Lifetime counters are kept.

        Safe to call from another thread while ``update`` runs: the calibration (about half a
        second) is done first, then the new state is swapped in under a lock."""
        layout = Layout.from_reference(reference, reference_rows)
        detector = CalibratedDetector(
            layout,
            reference_rows,
            window_events=self.settings.window_events,
            false_alarm_rate=self.settings.false_alarm_rate,
            persistence=self.settings.persistence,
            n_bootstrap=self.n_bootstrap,
            seed=self.settings.seed,
        )
        keep_rows = self.write_reports and reference_rows is not None
        windows = SeqWindows(self.settings.window_events, keep_rows=keep_rows)
        with self._lock:
            self.reference = reference
            self.reference_rows = reference_rows
            self.model_version = str(model_version)
            self.layout, self.detector, self.windows = layout, detector, windows
            self._arrivals = 0

    def close(self, wait: bool = True) -> None:
        """Let pending reports finish (or not) and stop the report thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=wait)
            self._executor = None

    # --- per batch ------------------------------------------------------------------------------
    def update(
        self,
        features: pd.DataFrame,
        proba: np.ndarray,
        classes: list[str],
        labels: pd.Series | None = None,
        *,
        times: np.ndarray | None = None,
        now: float | None = None,
        seqs: np.ndarray | None = None,
    ) -> list[dict[str, Any]]:
        """Count one batch; return the alert messages of the windows it closed that drifted.

        ``features``: raw (pre-imputation) MODEL_FEATURES + ``source``, one row per scored
        event; ``proba``: (n, len(classes)); ``labels``: true classes where known (None/NaN
        elsewhere); ``times``: optional event times (seconds), kept as the window's span;
        ``seqs``: the events' sequence numbers (default: numbered in arrival order).
        """
        now = time.time() if now is None else now
        with self._lock:
            if seqs is None:
                seqs = np.arange(self._arrivals, self._arrivals + len(features))
            self._arrivals += len(features)
            rows = None
            if self.windows.keep_rows:
                rows = self._rows_with_predictions(features, proba, classes)
            closed = self.windows.add(
                seqs, features, proba, classes, labels, self.layout, times=times, now=now, rows=rows
            )
            return self._finish(closed)

    def partials_message(
        self,
        seqs: np.ndarray,
        features: pd.DataFrame,
        proba: np.ndarray,
        classes: list[str],
        labels: pd.Series | None = None,
    ) -> dict[str, Any]:
        """A batch's counts per window index, JSON-able, for the ``drift.partials`` topic; with
        the raw rows behind them when this monitor writes reports. Changes nothing here."""
        with self._lock:
            parts = self.windows.partials(seqs, features, proba, classes, labels, self.layout)
            message: dict[str, Any] = {
                "model_version": self.model_version,
                "windows": {str(k): p.to_dict() for k, (_, p) in parts.items()},
            }
            if self.windows.keep_rows:
                rows = self._rows_with_predictions(features, proba, classes)
                message["rows"] = _columns_by_window(
                    rows, {k: pos for k, (pos, _) in parts.items()}
                )
        return message

    def update_partials(
        self, message: dict[str, Any], now: float | None = None
    ) -> list[dict[str, Any]]:
        """Merge a ``partials_message`` (from any worker) into the windows; return the alerts
        of the windows it completed. Counts made for another model version are dropped."""
        with self._lock:
            if str(message.get("model_version")) != self.model_version:
                return []
            parts = {int(k): WindowPartial.from_dict(d) for k, d in message["windows"].items()}
            rows = {int(k): r for k, r in message.get("rows", {}).items()}  # framed at close
            return self._finish(self.windows.add_partials(parts, now, rows))

    def open_windows(self, keys: Any = None) -> dict[int, dict[str, Any] | None]:
        """The open windows' counts (all, or those of ``keys``; None for a key now closed), as
        JSON-able dicts tagged with the model version: what the coordinator saves in its
        changelog-backed table so open windows survive a restart."""
        with self._lock:
            keys = list(self.windows.open) if keys is None else [int(k) for k in keys]
            return {
                k: {"model_version": self.model_version, "partial": self.windows.open[k].to_dict()}
                if k in self.windows.open
                else None
                for k in keys
            }

    def restore_windows(self, saved: dict[int, dict[str, Any]]) -> int:
        """Reopen windows saved by ``open_windows`` (same model version only); return how many."""
        with self._lock:
            restored = 0
            for k, state in saved.items():
                if str(state.get("model_version")) == self.model_version:
                    self.windows.open[int(k)] = WindowPartial.from_dict(state["partial"])
                    restored += 1
            return restored

    def _rows_with_predictions(
        self, features: pd.DataFrame, proba: np.ndarray, classes: list[str]
    ) -> pd.DataFrame:
        aligned = align_proba(proba, classes, self.layout)
        predicted = np.asarray(self.layout.classes, dtype=object)[aligned.argmax(axis=1)]
        return features.reset_index(drop=True).assign(predicted=predicted)

    # --- closing windows ------------------------------------------------------------------------
    def _finish(self, closed: list[ClosedWindow]) -> list[dict[str, Any]]:
        alerts = []
        for window in closed:
            alert = self._evaluate(window)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _evaluate(self, window: ClosedWindow) -> dict[str, Any] | None:
        stats = compute_statistics(window.partial, self.layout)
        # A window may hold a few more events than window_events: redelivered events after a
        # restart (at-least-once). Thresholds hold for the nominal size; more events only
        # lower a statistic's noise, so testing such a window stays on the safe side.
        tested = (
            window.closed_by == "count" and int(window.partial.n) >= self.detector.window_events
        )
        if tested:
            self.detector.update(stats)
            verdict = self.detector.verdict
            drifted = self.detector.drifted_features
        else:
            verdict, drifted = {}, []
        summary = summarise(window.partial, self.layout)
        thresholds = _nested(self.detector.thresholds)
        self.windows_total += 1
        record: dict[str, Any] = {
            "model_version": self.model_version,
            "window": window.index,
            "start_event": window.start_event,
            "end_event": window.end_event,
            "n": int(window.partial.n),
            "closed_at": window.closed_at,
            "closed_by": window.closed_by,
            "first_event_time": window.partial.first_time,
            "last_event_time": window.partial.last_time,
            "tested": tested,
            "dataset_drifted": bool(drifted),
            "drifted_features": drifted,
            "statistics": _nested(stats),
            "thresholds": thresholds,
            "drifted": {f: bool(verdict.get(f, {}).get("drifted", False)) for f in _nested(stats)},
            **summary,
        }
        if not drifted:
            self.latest = record
            return None
        self.alerts_total += 1
        record["report_path"] = self._maybe_report(window)
        record["verdict"] = {
            f: {
                "drifted": v["drifted"],
                "statistics": {
                    s: {**e, "ratio": e["ratio"] if math.isfinite(e["ratio"]) else None}
                    for s, e in v["statistics"].items()
                },
            }
            for f, v in verdict.items()
            if v["drifted"]
        }
        record["calibration"] = dict(self.detector.calibration)
        self.latest = record
        return {"type": "drift_alert", **record}

    def _maybe_report(self, window: ClosedWindow) -> str | None:
        if not self.write_reports or window.rows is None or self.reference_rows is None:
            return None
        if window.closed_at - self._last_report_at < self.report_min_interval_seconds:
            return self._last_report  # same drift episode: point at its latest report
        self._last_report_at = window.closed_at
        path = self.report_dir / report_name(window.closed_at)
        if path.exists():
            path = path.with_name(path.stem + f"_w{window.index}.html")
        ref = self.reference_rows
        if len(ref) > REPORT_REFERENCE_ROWS:
            ref = ref.sample(REPORT_REFERENCE_ROWS, random_state=self.settings.seed)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-report")
        self._pending = [f for f in self._pending if not f.done()]
        mlflow = (self.settings.mlflow_tracking_uri, self.run_id) if self.run_id else None
        self._pending.append(self._executor.submit(_write_report, ref, window.rows, path, mlflow))
        self.reports_written += 1
        self._last_report = str(path)
        return self._last_report

    def wait_for_reports(self, timeout: float | None = None) -> None:
        """Block until the reports submitted so far are written (tests, shutdown)."""
        for f in list(self._pending):
            f.result(timeout=timeout)


def _columns_by_window(rows: pd.DataFrame, positions: dict[int, np.ndarray]) -> dict[str, Any]:
    """``{window: rows.iloc[pos].to_dict("list")}``, the same values, from each column's array
    (``to_dict`` boxes every value through pandas: it was half the cost of a partials message).

    >>> rows = pd.DataFrame({"x": [0.5, None, 2.0], "s": ["a", None, "c"]})
    >>> _columns_by_window(rows, {3: np.array([0, 1]), 4: np.array([2])})
    {'3': {'x': [0.5, nan], 's': ['a', None]}, '4': {'x': [2.0], 's': ['c']}}
    """
    arrays = {c: rows[c].to_numpy() for c in rows.columns}
    plain = {c: a.dtype.kind in "fiubO" for c, a in arrays.items()}  # tolist() = boxed values
    return {
        str(k): {
            c: a[pos].tolist() if plain[c] else rows[c].iloc[pos].tolist()
            for c, a in arrays.items()
        }
        for k, pos in positions.items()
    }


def _write_report(
    reference_rows: pd.DataFrame,
    window_rows: pd.DataFrame,
    path: Path,
    mlflow: tuple[str, str] | None = None,
) -> None:
    """Write the report; with ``mlflow=(tracking_uri, run_id)`` also attach it to that run."""
    from stream_app.reports import log_report_to_mlflow, write_drift_report

    try:
        write_drift_report(reference_rows, window_rows, path)
    except Exception:  # a report is a by-product: never let it break the stream
        log.exception("drift report %s failed", path)
        return
    if mlflow is not None:
        log_report_to_mlflow(mlflow[0], mlflow[1], path)
