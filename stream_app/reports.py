"""Evidently 0.7 adapter: the only module that imports Evidently (lazily: importing it costs
seconds, and the worker only needs it when a window drifts).

``Reports`` writes one HTML report per drift alert in a background thread: Evidently's
DataDriftPreset of the window against the reference, with stopdrift's own verdict on top (the
features ranked by how far past threshold, the categories that moved, the rejected events).
Files are named after the alert (model version, window, generation), only the newest
``keep`` stay on disk. ``evidently_drift`` runs the same preset and returns Evidently's own
verdict (the benchmarks compare it with stopdrift's detector).
"""

from __future__ import annotations

import html
import logging
import math
import re
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from stopdrift_common.schema import CATEGORICAL_FEATURES, NUMERIC_FEATURES

log = logging.getLogger(__name__)

MONITORED_CATEGORICAL = [*CATEGORICAL_FEATURES, "predicted"]
REFERENCE_ROWS = 2000  # reference rows given to Evidently (bounds a report's cost)


def report_name(alert: dict[str, Any]) -> str:
    """File name of an alert's report: sortable by time, readable by window.

    >>> report_name({"worker_id": "w", "model_version": "3", "window": 21, "generation": 0,
    ...              "closed_at": 1700000000.5})
    'drift_1700000000_w_v3_window21_g0.html'
    """
    group = re.sub(r"[^A-Za-z0-9_.-]", "_", str(alert.get("worker_id", "stopdrift")))
    return (
        f"drift_{int(alert['closed_at'])}_{group}_v{alert['model_version']}"
        f"_window{alert['window']}_g{alert['generation']}.html"
    )


class Reports:
    """Writes each drift alert's HTML report and drift-view snapshot in one background thread,
    and a snapshot of a tested window at most every ``window_seconds`` (the drift view's "over
    time"); keeps the newest ``keep`` reports and ``view_keep`` snapshots."""

    def __init__(
        self,
        directory: Path,
        keep: int = 100,
        seed: int = 42,
        view: Any = None,
        view_keep: int = 200,
        window_seconds: float = 30.0,
    ):
        self.directory = Path(directory)
        self.keep = keep
        self.seed = seed
        self.view = view  # stream_app.drift_view.DriftView, or None
        self.view_keep = view_keep
        self.window_seconds = window_seconds
        self.written = 0
        self.failed = 0
        self._last_window_snapshot = -math.inf
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-report")
        self._pending: list[Future] = []

    def submit(
        self, alert: dict[str, Any], reference: pd.DataFrame, rows: pd.DataFrame
    ) -> dict[str, Any]:
        """Queue the report of ``alert``; return where it (and its snapshot) will be."""
        path = self.directory / report_name(alert)
        out: dict[str, Any] = {"path": str(path), "rows": len(rows)}
        snapshot = None
        if self.view is not None:
            from stream_app.drift_view import new_snapshot_id

            snapshot = new_snapshot_id()
            out["snapshot_url"] = self.view.snapshot_url(snapshot) if self.view.base_url else None
        self._queue(self._write, dict(alert), reference, rows, path, snapshot)
        return out

    def window(self, record: dict[str, Any], reference: pd.DataFrame, rows: pd.DataFrame):
        """A tested window without drift: a snapshot now and then, for drift over time."""
        if (
            self.view is None
            or record["closed_at"] - self._last_window_snapshot < self.window_seconds
        ):
            return
        self._last_window_snapshot = record["closed_at"]
        self._queue(self._snapshot, dict(record), reference, rows, None, ["window"])

    def _queue(self, fn, *args) -> None:
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._executor.submit(fn, *args))

    def _write(self, alert, reference, rows, path: Path, snapshot: str | None) -> None:
        try:
            write_drift_report(self._sample(reference), rows, path, summary_html(alert))
            self.written += 1
        except Exception:  # a report is a by-product: it never breaks the stream
            self.failed += 1
            log.exception("drift report %s failed", path)
        self._prune()
        if snapshot is not None:
            self._snapshot(alert, reference, rows, snapshot, ["alert"])

    def _snapshot(self, record, reference, rows, snapshot_id: str | None, tags: list[str]):
        from datetime import UTC, datetime

        metadata = {
            "window": str(record["window"]),
            "window_id": str(record["id"]),
            "model_version": str(record["model_version"]),
            "drifted_features": ", ".join(record.get("drifted_features", [])) or "none",
            "report": str(record.get("report", {}).get("path", "")),
        }
        try:
            self.view.add_snapshot(
                self._sample(reference),
                rows,
                timestamp=datetime.fromtimestamp(record["closed_at"], UTC),
                tags=tags,
                metadata=metadata,
                snapshot_id=snapshot_id,
            )
            self.view.prune(self.view_keep)
        except Exception:
            self.failed += 1
            log.exception("drift view snapshot of window %s failed", record["id"])

    def _sample(self, reference: pd.DataFrame) -> pd.DataFrame:
        if len(reference) > REFERENCE_ROWS:
            return reference.sample(REFERENCE_ROWS, random_state=self.seed)
        return reference

    def _prune(self) -> None:
        reports = sorted(self.directory.glob("drift_*.html"))
        for old in reports[: max(len(reports) - self.keep, 0)]:
            old.unlink(missing_ok=True)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the reports queued so far are written (tests, shutdown)."""
        for f in list(self._pending):
            f.result(timeout=timeout)


def summary_html(alert: dict[str, Any]) -> str:
    """stopdrift's verdict as an HTML block: what drifted, how far past threshold, where."""
    e = html.escape
    rows = []
    for f in alert.get("findings", []):
        where = ""
        moved = f.get("effects", {}).get("moved") or []
        if moved:
            where = "<br>".join(
                f"{e(m['category'])}: {m['reference_share']:.1%} &rarr; {m['window_share']:.1%}"
                f" ({m['contribution_share']:.0%} of the statistic)"
                for m in moved[:5]
            )
        reasons = f.get("effects", {}).get("reasons")
        if reasons:
            where = ", ".join(f"{e(r)}: {n}" for r, n in reasons.items())
        stats = ", ".join(f"{e(k)} {v:.1f}" for k, v in sorted(f["statistics"].items()))
        rows.append(
            f"<tr><td><b>{e(f['feature'])}</b></td><td>+{f['excess']:.1f}</td>"
            f"<td>{f['scale']}</td><td>{stats}</td><td>{where}</td></tr>"
        )
    scales = ", ".join(
        f"{s} window(s): {r['n']} events, max evidence {r['max_evidence']:.1f} "
        f"(threshold {r['threshold']:.1f})"
        for s, r in alert.get("scales", {}).items()
    )
    return (
        '<div style="font-family:sans-serif;margin:16px;padding:12px;border:2px solid #c62828">'
        f"<h2>stopdrift drift alert {e(str(alert.get('id')))}</h2>"
        f"<p>Window {alert.get('window')} (seq {alert.get('seq_start')}&ndash;"
        f"{alert.get('seq_end')}), {alert.get('n')} events, {alert.get('rejected')} rejected, "
        f"closed by {e(str(alert.get('closed_by')))}. Tested at {e(scales)}. Evidence is "
        "-log10 of the calibrated p-value; a feature drifts when its evidence exceeds the "
        "threshold.</p><table border=1 cellpadding=4 style='border-collapse:collapse'>"
        "<tr><th>feature</th><th>past threshold</th><th>windows</th><th>evidence</th>"
        "<th>where</th></tr>" + "".join(rows) + "</table>"
        "<p>Below: Evidently's DataDriftPreset of the window against the reference (its own "
        "tests and thresholds, not stopdrift's).</p></div>"
    )


def monitored_columns(
    reference_rows: pd.DataFrame, window_rows: pd.DataFrame
) -> tuple[list[str], list[str]]:
    """The numeric and categorical columns to compare: those both frames hold with at least one
    value each (Evidently refuses a column that is empty on either side).

    >>> ref = pd.DataFrame({"hit_rate": [0.1, None], "state": ["AZ", "CA"], "predicted": "a"})
    >>> win = pd.DataFrame({"hit_rate": [None, None], "state": ["AZ", "AZ"], "predicted": "b"})
    >>> monitored_columns(ref, win)
    ([], ['state', 'predicted'])
    """

    def usable(c: str) -> bool:
        return (
            c in reference_rows.columns
            and c in window_rows.columns
            and bool(reference_rows[c].notna().any() and window_rows[c].notna().any())
        )

    num = [c for c in NUMERIC_FEATURES if usable(c)]
    return num, [c for c in MONITORED_CATEGORICAL if usable(c)]


def evidently_dataset(rows: pd.DataFrame, num: list[str], cat: list[str]) -> Any:
    """``rows`` as an Evidently dataset of the columns ``num`` (as floats) and ``cat``."""
    from evidently import DataDefinition, Dataset

    frame = rows[num + cat].copy()
    for c in num:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    for c in cat:
        frame[c] = frame[c].astype(object)
    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    return Dataset.from_pandas(frame, data_definition=definition)


def _run(reference_rows: pd.DataFrame, window_rows: pd.DataFrame):
    from evidently import Report
    from evidently.presets import DataDriftPreset

    num, cat = monitored_columns(reference_rows, window_rows)
    if not num and not cat:
        raise ValueError("reference and window rows share no monitored column")
    report = Report([DataDriftPreset(columns=num + cat)])
    window, reference = (evidently_dataset(r, num, cat) for r in (window_rows, reference_rows))
    return report.run(window, reference), num + cat


def write_drift_report(
    reference_rows: pd.DataFrame, window_rows: pd.DataFrame, path: Path, header: str = ""
) -> Path:
    """Write Evidently's DataDriftPreset report of ``window_rows`` against ``reference_rows``
    to ``path``, with ``header`` (HTML) at the top of the page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot, _ = _run(reference_rows, window_rows)
    tmp = path.with_suffix(".tmp")
    snapshot.save_html(str(tmp))
    if header:
        page = tmp.read_text(encoding="utf-8")
        at = page.find(">", page.find("<body")) + 1
        tmp.write_text(page[:at] + header + page[at:], encoding="utf-8")
    tmp.replace(path)  # readers never see a half-written report
    return path


def evidently_drift(reference_rows: pd.DataFrame, window_rows: pd.DataFrame) -> dict[str, Any]:
    """Evidently's default verdict for one window: the columns it calls drifted, their share,
    and its dataset-level call (share >= 0.5, the preset's default ``drift_share``)."""
    snapshot, columns = _run(reference_rows, window_rows)
    drifted: list[str] = []
    share = None
    for result in snapshot.dict().get("metrics", []):
        name = str(result.get("metric_name") or result.get("metric_id", ""))
        value = result.get("value")
        if name.startswith("DriftedColumnsCount"):
            share = float(value["share"]) if isinstance(value, dict) else None
        elif name.startswith("ValueDrift("):
            col = name.split("column=", 1)[1].split(",", 1)[0].rstrip(")")
            config = result.get("config", {})
            threshold = config.get("threshold")
            method = str(config.get("method", ""))
            if value is None or threshold is None:
                continue
            # p-value tests drift when p < threshold; distances when value >= threshold.
            is_p = "p_value" in method or "test" in method.lower()
            if (value < threshold) if is_p else (value >= threshold):
                drifted.append(col)
    if share is None:
        share = len(drifted) / max(len(columns), 1)
    return {"drifted_columns": drifted, "share": share, "dataset_drift": share >= 0.5}
