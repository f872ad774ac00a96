"""Evidently 0.7 adapter: the only module that imports Evidently (lazily: importing it costs
seconds, and the worker only needs it when a window drifts).

``Reports`` writes one HTML report per drift alert in a background thread: Evidently's
DataDriftPreset of the window against the reference, with stopdrift's own verdict on top (the
features ranked by how far past threshold, the categories that moved, the rejected events).
Files are named after the alert (model version, window, generation), only the newest
``keep`` stay on disk. ``evidently_drift`` runs the same preset and returns Evidently's own
verdict (the benchmarks compare it with stopdrift's detector).

Reports never hurt scoring: the caller (the event loop) only appends to a bounded queue (the
oldest item is dropped when it is full, as under sustained drift); the disk is touched only by
the background thread, where every error (a full or read-only ``runs/``, a permission) is
counted and logged and degrades reports only. After a failed write the costly Evidently work
pauses for ``cooldown_seconds``: a full disk would otherwise cost 0.6 s of CPU per alert for
nothing.
"""

from __future__ import annotations

import errno
import html
import logging
import math
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from stopdrift_common.schema import CATEGORICAL_FEATURES, NUMERIC_FEATURES

log = logging.getLogger(__name__)

MONITORED_CATEGORICAL = [*CATEGORICAL_FEATURES, "predicted"]
REFERENCE_ROWS = 2000  # reference rows given to Evidently (bounds a report's cost)
QUEUE_SIZE = 16  # pending reports and snapshots (each holds its window's rows)
COOLDOWN_SECONDS = 30.0
ERROR_KINDS = ("no_space", "read_only", "permission", "os_error", "failed")
DROP_REASONS = ("queue_full", "disk_cooldown")
_LOG_EVERY = 100  # an error kind is logged the first time, then every 100th time

Task = tuple[Callable[..., None], tuple[Any, ...]]


def error_kind(exc: BaseException) -> str:
    """The bounded ``kind`` label of a report failure.

    >>> error_kind(OSError(errno.ENOSPC, "No space left on device"))
    'no_space'
    >>> error_kind(PermissionError(errno.EACCES, "denied")), error_kind(ValueError("x"))
    ('permission', 'failed')
    """
    if not isinstance(exc, OSError):
        return "failed"
    return {
        errno.ENOSPC: "no_space",
        errno.EDQUOT: "no_space",
        errno.EFBIG: "no_space",
        errno.EROFS: "read_only",
        errno.EACCES: "permission",
        errno.EPERM: "permission",
    }.get(exc.errno or 0, "os_error")


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
    time"); keeps the newest ``keep`` reports and ``view_keep`` snapshots.

    At most ``queue_size`` items wait; ``metrics`` (optional) has ``record_report_dropped(
    reason, n)``, ``record_report_error(kind)`` and ``record_report_written(kind)``."""

    def __init__(
        self,
        directory: Path,
        keep: int = 100,
        seed: int = 42,
        view: Any = None,
        view_keep: int = 200,
        window_seconds: float = 30.0,
        queue_size: int = QUEUE_SIZE,
        metrics: Any = None,
        cooldown_seconds: float = COOLDOWN_SECONDS,
    ):
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.seed = seed
        self.view = view  # stream_app.drift_view.DriftView, or None
        self.view_keep = view_keep
        self.window_seconds = window_seconds
        self.queue_size = queue_size
        self.metrics = metrics
        self.cooldown_seconds = cooldown_seconds
        self.written = 0
        self.failed = 0
        self.dropped: Counter[str] = Counter()  # reason -> items not written
        self.errors: Counter[str] = Counter()  # kind -> failures
        self._last_window_snapshot = -math.inf
        self._queue: deque[Task] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._burst = 0  # dropped for a full queue since it was last empty
        self._cool_until = -math.inf
        self._thread = threading.Thread(target=self._loop, name="drift-report", daemon=True)
        self._thread.start()
        if view is not None:  # find or make the project here: the event loop never touches disk
            self._queue_task(self._guarded, "project", view.ensure_project)

    # --- the event loop's side: no disk, no exception --------------------------------------

    def submit(
        self,
        alert: dict[str, Any],
        reference: pd.DataFrame,
        rows: pd.DataFrame,
        snapshot_id: str | None = None,
    ) -> dict[str, Any]:
        """Queue the report of ``alert``; return where it (and its snapshot) will be. The
        snapshot is ``snapshot_id`` (the id the alert already links to) or a new one."""
        path = self.directory / report_name(alert)
        out: dict[str, Any] = {"path": str(path), "rows": len(rows)}
        snapshot = None
        if self.view is not None:
            from stream_app.drift_view import new_snapshot_id

            snapshot = snapshot_id or new_snapshot_id()
            out["snapshot_url"] = self.view.known_snapshot_url(snapshot)
        self._queue_task(self._write, dict(alert), reference, rows, path, snapshot)
        return out

    def window(self, record: dict[str, Any], reference: pd.DataFrame, rows: pd.DataFrame):
        """A tested window without drift: a snapshot now and then, for drift over time."""
        if (
            self.view is None
            or record["closed_at"] - self._last_window_snapshot < self.window_seconds
        ):
            return
        self._last_window_snapshot = record["closed_at"]
        self._queue_task(self._snapshot, dict(record), reference, rows, None, ["window"])

    def _queue_task(self, fn: Callable[..., None], *args: Any) -> None:
        with self._cond:
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()  # the oldest goes: the newest windows matter most
                self._burst += 1
                self._drop("queue_full")
                if self._burst == 1:
                    log.warning(
                        "drift report queue full (%d waiting): dropping the oldest until it drains",
                        self.queue_size,
                    )
            self._queue.append((fn, args))
            self._cond.notify_all()

    # --- the background thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                while not self._queue:
                    self._end_burst()
                    self._cond.notify_all()
                    self._cond.wait()
                fn, args = self._queue.popleft()
                self._busy = True
            if fn != self._guarded and self._cooling():
                self._drop("disk_cooldown")
                continue
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - the last guard: the thread never dies
                self._error("drift report", exc)

    def _end_burst(self) -> None:
        if self._burst:
            log.warning("drift report queue drained: %d dropped in that burst", self._burst)
            self._burst = 0

    def _write(self, alert, reference, rows, path: Path, snapshot: str | None) -> None:
        if not path.exists():  # else written already (a record read again)
            header = summary_html(alert)
            self._guarded("report", write_drift_report, self._sample(reference), rows, path, header)
        self._guarded("prune", self._prune)
        if snapshot is not None and not self._cooling():
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
        if self._guarded(
            "snapshot",
            self.view.add_snapshot,
            self._sample(reference),
            rows,
            timestamp=datetime.fromtimestamp(record["closed_at"], UTC),
            tags=tags,
            metadata=metadata,
            snapshot_id=snapshot_id,
        ):
            self._guarded("prune", self.view.prune, self.view_keep)

    def _guarded(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Run one step; a failure is counted and logged, never raised. True if it succeeded."""
        try:
            fn(*args, **kwargs)
        except FileExistsError:  # a snapshot with this id is there: written before
            return True
        except Exception as exc:  # noqa: BLE001 - a report is a by-product of the stream
            self._error(f"drift {what}", exc)
            return False
        if what in ("report", "snapshot"):
            self.written += 1
            self._count("record_report_written", what)
        return True

    def _error(self, what: str, exc: Exception) -> None:
        kind = error_kind(exc)
        self.failed += 1
        self.errors[kind] += 1
        self._count("record_report_error", kind)
        if isinstance(exc, OSError):
            self._cool_until = time.monotonic() + self.cooldown_seconds
        n = self.errors[kind]
        if n == 1 or n % _LOG_EVERY == 0:
            log.warning(
                "%s failed (%s, %d so far): %s; reports degrade, scoring goes on",
                what,
                kind,
                n,
                exc,
                exc_info=kind == "failed",
            )

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self._count("record_report_dropped", reason)

    def _count(self, method: str, label: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, method)(label)

    def _cooling(self) -> bool:
        return time.monotonic() < self._cool_until

    def _sample(self, reference: pd.DataFrame) -> pd.DataFrame:
        if len(reference) > REFERENCE_ROWS:
            return reference.sample(REFERENCE_ROWS, random_state=self.seed)
        return reference

    def _prune(self) -> None:
        reports = sorted(self.directory.glob("drift_*.html"))
        for old in reports[: max(len(reports) - self.keep, 0)]:
            old.unlink(missing_ok=True)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the items queued so far are done (tests, shutdown)."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._queue and not self._busy, timeout):
                raise TimeoutError(f"drift reports still pending after {timeout} s")


# --- reports out of the scoring process ----------------------------------------------------

SAMPLE_ROWS = 200  # window rows a record carries for its report (a 500-row window: 40%)
_SNAPSHOT_IDS = uuid.UUID("5d1f0c8e-2b0a-4c57-9a55-0b7c1d8e6f21")  # uuid5 namespace


def snapshot_id_of(record: dict[str, Any]) -> str:
    """The drift-view snapshot id of a window record: derived from its group and id, so the
    worker can link an alert to a snapshot another process writes later (or writes again).

    >>> snapshot_id_of({"worker_id": "w", "id": "3:21:0"}) == snapshot_id_of(
    ...     {"worker_id": "w", "id": "3:21:0"})
    True
    """
    return str(uuid.uuid5(_SNAPSHOT_IDS, f"{record.get('worker_id')}/{record['id']}"))


def encode_sample(rows: pd.DataFrame, n: int = SAMPLE_ROWS, seed: int = 42) -> dict[str, Any]:
    """At most ``n`` of ``rows``, by column (names once, nulls as None): about 50 bytes a row
    in JSON (200 rows of the state table: 10 kB, 0.7 ms to sample and encode).

    >>> encode_sample(pd.DataFrame({"a": [1.5, None], "b": ["x", "y"]}))
    {'rows': 2, 'of': 2, 'columns': {'a': [1.5, None], 'b': ['x', 'y']}}
    """
    picked = rows if len(rows) <= n else rows.sample(n, random_state=seed).sort_index()
    columns = {
        str(c): [None if pd.isna(v) else v for v in picked[c].tolist()] for c in picked.columns
    }
    return {"rows": len(picked), "of": len(rows), "columns": columns}


def decode_sample(sample: dict[str, Any]) -> pd.DataFrame:
    """The rows ``encode_sample`` encoded (numbers back as floats, nulls as NaN)."""
    frame = pd.DataFrame(sample["columns"])
    if len(frame) != sample["rows"]:
        raise ValueError(f"sample says {sample['rows']} rows, holds {len(frame)}")
    return frame


class ReportLinks:
    """The worker's side when reports are written by another process (``report_service``),
    with ``Reports``' interface: ``submit`` puts a bounded sample of an alert's rows on its
    record and says where its report and snapshot will be; ``window`` puts a sample on a
    tested window's record at most every ``window_seconds`` (the drift view's "over time").
    No disk and no Evidently in the scoring process; the drift view's project id (for the
    links) is looked up once, in a background thread."""

    def __init__(
        self,
        directory: Path,
        view: Any = None,
        window_seconds: float = 30.0,
        sample_rows: int = SAMPLE_ROWS,
        seed: int = 42,
        retry_seconds: float = 30.0,
    ):
        self.directory = Path(directory)
        self.view = view
        self.window_seconds = window_seconds
        self.sample_rows = sample_rows
        self.seed = seed
        self._last_window_sample = -math.inf
        if view is not None:
            threading.Thread(
                target=self._find_project, args=(retry_seconds,), name="drift-view", daemon=True
            ).start()

    def submit(
        self, alert: dict[str, Any], reference: pd.DataFrame, rows: pd.DataFrame
    ) -> dict[str, Any]:
        alert["sample"] = encode_sample(rows, self.sample_rows, self.seed)
        out: dict[str, Any] = {
            "path": str(self.directory / report_name(alert)),
            "rows": alert["sample"]["rows"],
        }
        if self.view is not None:
            out["snapshot_url"] = self.view.known_snapshot_url(snapshot_id_of(alert))
        return out

    def window(self, record: dict[str, Any], reference: pd.DataFrame, rows: pd.DataFrame):
        if record["closed_at"] - self._last_window_sample < self.window_seconds:
            return
        self._last_window_sample = record["closed_at"]
        record["sample"] = encode_sample(rows, self.sample_rows, self.seed)

    def _find_project(self, retry_seconds: float) -> None:
        while True:
            try:
                self.view.ensure_project()
                return
            except Exception as exc:  # noqa: BLE001 - links are a by-product; retry later
                log.warning("drift view project not ready (%s): alerts go without a link", exc)
                time.sleep(retry_seconds)


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
    try:
        snapshot.save_html(str(tmp))
        if header:
            page = tmp.read_text(encoding="utf-8")
            at = page.find(">", page.find("<body")) + 1
            tmp.write_text(page[:at] + header + page[at:], encoding="utf-8")
        tmp.replace(path)  # readers never see a half-written report
    finally:
        tmp.unlink(missing_ok=True)  # a full disk keeps no half-written file
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
