"""Drift over time in Evidently's own web UI: a local Evidently workspace holding a ``stopdrift``
project, one snapshot per drift alert (and per tested window, at a rate the caller bounds), and a
dashboard of drift per column, drifted columns, predicted-class shares and rows per window.
Staff open one page (``evidently ui --workspace DIR``, served from the wheel, no internet)
instead of a folder of HTML reports, and each alert can link to its snapshot's page.

Why this adapter writes the workspace files itself rather than calling ``Workspace.add_run``:
Evidently 0.7.23's local workspace has three pitfalls, each found by running it:

- ``Workspace(path)`` parses *every* snapshot in the workspace (about 23 ms and 1.5 MB each):
  a process that adds one snapshot would pay for all of them. This module never builds one; it
  uses the on-disk layout that ``evidently.ui.storage.local.base.LocalState`` reads and writes
  (``<workspace>/<project id>/metadata.json``, ``dashboard.json``, ``snapshots/<id>.json``).
- The workspace writes a snapshot in place. One half-written file (a crash, a full disk) makes
  the UI answer 500 to every project request until someone removes it. Here every file is
  written under a hidden temporary name first and appears only when complete.
- The UI's file watcher ignores a rename into ``snapshots/`` (it looks at the event's source
  name), so a plain atomic rename would stay invisible until the UI restarts. A hard link to
  the finished temporary file is a "created" event, which it picks up.

It also drops each metric's own copy of its plots (the snapshot page draws the report-level
widgets, which are kept): that halves a snapshot, to about 150 KB on disk and 0.8 MB in the
UI, which holds every snapshot in memory. One ``add_snapshot`` (2,000 reference rows, 500 in
the window) costs about 0.6 s of CPU: snapshot every alert and tested windows at a bounded
rate, and ``prune`` to a fixed number.

URL scheme of the UI (its single-page app's routes, checked against the served pages):
``{base}/projects/{project_id}`` is the dashboard, ``{base}/projects/{project_id}/reports`` the
list of snapshots, ``{base}/projects/{project_id}/reports/{snapshot_id}`` one snapshot; its JSON
API lists snapshots at ``{base}/api/projects/{project_id}/snapshots``.

Like ``reports.py``, this module imports Evidently lazily (importing it costs seconds) and knows
nothing of Kafka, Faust or Prometheus.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from stopdrift_common.schema import NUMERIC_FEATURES
from stream_app.reports import MONITORED_CATEGORICAL, evidently_dataset, monitored_columns

__all__ = [
    "CREATED_BY",
    "CREATED_BY_KEY",
    "UI_ENV",
    "DriftView",
    "SnapshotInfo",
    "new_snapshot_id",
    "ui_command",
]

log = logging.getLogger(__name__)

PREDICTED = "predicted"

# Fixed drift methods, so a plotted value means the same thing whatever the sample sizes
# (Evidently's automatic choice switches to p-values, where low means drift, for a reference
# of 1,000 rows or fewer). Both are distances, 0 for no change: the Wasserstein distance in
# units of the reference's standard deviation, Jensen-Shannon in [0, 1]; Evidently calls a
# column drifted at >= the threshold (its default, which is not stopdrift's calibrated test).
NUM_METHOD = "wasserstein"
CAT_METHOD = "jensenshannon"
DRIFT_THRESHOLD = 0.1

CREATED_BY_KEY = "created_by"
CREATED_BY = "stopdrift.drift_view"  # marks the snapshots prune() may delete

UI_ENV = {"DO_NOT_TRACK": "1"}  # the UI otherwise tries to send usage telemetry

# Evidently 0.7's local workspace layout (evidently/ui/storage/local/base.py).
_PROJECT_FILE = "metadata.json"
_DASHBOARD_FILE = "dashboard.json"
_SNAPSHOTS = "snapshots"
_LOCK_FILE = ".stopdrift-drift-view.lock"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HEAD_BYTES = 64 * 1024
_RESULTS_KEY = b', "metric_results": '  # what follows name, timestamp, metadata and tags
_STALE_TMP_SECONDS = 3600.0
_TAB_TITLE = "Drift"
_OWNER_KEY = "stopdrift_owner"  # in a panel's plot_params: the panels ensure_project() manages


@dataclass(frozen=True)
class SnapshotInfo:
    """What the workspace knows of one snapshot without reading its results."""

    id: str
    timestamp: datetime
    tags: list[str]
    metadata: dict[str, Any]


def ui_command(workspace_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command that serves ``workspace_dir`` in Evidently's UI; run it with ``UI_ENV``.

    >>> ui_command(Path("runs/evidently"), 8085)[-7:]
    ['ui', '--workspace', 'runs/evidently', '--host', '127.0.0.1', '--port', '8085']
    """
    return [
        sys.executable,
        "-m",
        "evidently.cli",
        "ui",
        "--workspace",
        str(workspace_dir),
        "--host",
        host,
        "--port",
        str(port),
    ]


def new_snapshot_id() -> str:
    """A fresh snapshot id, time-ordered like Evidently's own (UUID version 7)."""
    import uuid6  # Evidently's dependency, light (unlike importing Evidently)

    return str(uuid6.uuid7())


class DriftView:
    """One Evidently project in a local workspace, fed with drift windows.

    ``ensure_project()`` finds the project by name or creates it, with its dashboard (both
    idempotent, across processes too); ``add_snapshot()`` adds one window; ``prune(keep)``
    bounds the disk (and the UI's memory, which holds every snapshot); ``project_url()`` and
    ``snapshot_url()`` give links into a UI served at ``base_url`` (None without one).
    """

    def __init__(
        self,
        workspace_dir: Path,
        project_name: str = "stopdrift",
        base_url: str | None = None,
    ) -> None:
        if not project_name.strip():
            raise ValueError(f"project_name must not be blank, got {project_name!r}")
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.workspace_dir = Path(workspace_dir)
        self.project_name = project_name
        self.base_url = base_url.rstrip("/") if base_url else None
        self._project_id: str | None = None  # found or made
        self._ensured = False  # made or checked (dashboard, snapshots folder) by this object

    # --- the project and its dashboard -------------------------------------------------------

    def ensure_project(self) -> str:
        """The project's id; creates the project and its dashboard panels if missing."""
        if not self._ensured or self._project_id is None:
            self.workspace_dir.mkdir(parents=True, exist_ok=True)
            with self._locked():
                project_id = self._find_project()
                if project_id is None:
                    project_id = self._create_project()
                else:  # made elsewhere maybe (Workspace.add_project makes no snapshots/)
                    (self.workspace_dir / project_id / _SNAPSHOTS).mkdir(exist_ok=True)
                    self._ensure_dashboard(project_id)
            self._project_id, self._ensured = project_id, True
        return self._project_id

    def _find_project(self) -> str | None:
        found = []
        for meta in self.workspace_dir.glob(f"*/{_PROJECT_FILE}"):
            if not _UUID.match(meta.parent.name):
                continue
            try:
                name = json.loads(meta.read_text(encoding="utf-8")).get("name")
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable Evidently project file %s: %s", meta, exc)
                continue
            if name == self.project_name:
                found.append(meta.parent.name)
        return min(found) if found else None  # ids are time-ordered: the oldest wins

    def _create_project(self) -> str:
        from evidently.sdk.models import ProjectModel

        project = ProjectModel(
            name=self.project_name,
            description="stopdrift: drift alerts and tested windows vs the champion's reference",
        )
        project_id = str(project.id)
        folder = self.workspace_dir / project_id
        try:
            (folder / _SNAPSHOTS).mkdir(parents=True)
            self._ensure_dashboard(project_id)  # before the project appears: never an empty page
            _publish(folder / _PROJECT_FILE, _to_json(project.dict(), 2))
        except BaseException:  # a full disk: no half-made project left for the next attempt
            shutil.rmtree(folder, ignore_errors=True)
            raise
        log.info("created Evidently project %r (%s)", self.project_name, project_id)
        return project_id

    def _ensure_dashboard(self, project_id: str) -> None:
        """Put this module's panels on the project's dashboard: replace their older versions,
        drop the ones it no longer makes, keep any panel staff added in the UI. Writes only on
        a change."""
        from evidently._pydantic_compat import parse_obj_as
        from evidently.sdk.models import DashboardModel, DashboardTabModel

        path = self.workspace_dir / project_id / _DASHBOARD_FILE
        current = {"tabs": [], "panels": []}
        if path.exists():
            current = json.loads(path.read_text(encoding="utf-8"))
        dashboard = parse_obj_as(DashboardModel, current)
        namespace = uuid.UUID(project_id)
        ours = _panels(namespace)
        theirs = [p for p in dashboard.panels if p.plot_params.get(_OWNER_KEY) != CREATED_BY]
        dashboard.panels = ours + theirs
        valid = {p.id for p in dashboard.panels}
        tab_id = uuid.uuid5(namespace, "tab")
        tab = next((t for t in dashboard.tabs if t.id == tab_id), None)
        if tab is None:
            tab = DashboardTabModel(id=tab_id, title=_TAB_TITLE, panels=[])
            dashboard.tabs.insert(0, tab)
        mine = [p.id for p in ours]
        for t in dashboard.tabs:
            t.panels = [p for p in t.panels if p in valid and (t is tab or p not in mine)]
        tab.panels = mine + [p for p in tab.panels if p not in mine]
        text = _to_json(dashboard.dict())
        if json.loads(text) != current:
            _replace(path, text)

    # --- snapshots ---------------------------------------------------------------------------

    def add_snapshot(
        self,
        reference_rows: pd.DataFrame,
        window_rows: pd.DataFrame,
        *,
        timestamp: datetime,
        tags: list[str],
        metadata: dict[str, str],
        snapshot_id: str | None = None,
    ) -> str:
        """Compare ``window_rows`` with ``reference_rows`` (drift of each monitored column,
        drifted columns, predicted-class shares, row count), store the result as a snapshot at
        ``timestamp`` (an aware time is converted to UTC; a naive one is taken as UTC) with
        ``tags`` and ``metadata``, and return the snapshot's id: ``snapshot_id`` if given (from
        ``new_snapshot_id()``, so an alert sent before the snapshot is written can link to it),
        else a new one."""
        _check_labels(tags, metadata)
        snapshot_id = new_snapshot_id() if snapshot_id is None else snapshot_id
        if not _UUID.match(snapshot_id):
            raise ValueError(f"snapshot_id must be a lower-case UUID, got {snapshot_id!r}")
        project_id = self.ensure_project()
        model = _snapshot_model(
            reference_rows,
            window_rows,
            timestamp=_naive_utc(timestamp),
            tags=list(tags),
            metadata={**metadata, CREATED_BY_KEY: CREATED_BY},
        )
        text = _to_json(model.dict())
        try:
            _publish(self._snapshot_path(project_id, snapshot_id), text)
        except FileNotFoundError:  # the project was deleted (in the UI) since: make it again
            self._ensured = False
            _publish(self._snapshot_path(self.ensure_project(), snapshot_id), text)
        return snapshot_id

    def list_snapshots(self) -> list[SnapshotInfo]:
        """This module's snapshots in the project, oldest (by window timestamp) first. Reads only
        the head of each file; skips (and logs) a file it cannot read."""
        folder = self.workspace_dir / self.ensure_project() / _SNAPSHOTS
        found = []
        for path in folder.glob("*.json"):
            snapshot_id = path.name[: -len(".json")]
            if not _UUID.match(snapshot_id):
                continue
            try:
                head = _read_head(path)
            except FileNotFoundError:
                continue  # pruned meanwhile
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable Evidently snapshot %s: %s", path, exc)
                continue
            metadata = head.get("metadata") or {}
            if metadata.get(CREATED_BY_KEY) != CREATED_BY:
                continue
            stamp = datetime.fromisoformat(head["timestamp"])
            found.append(SnapshotInfo(snapshot_id, stamp, list(head.get("tags") or []), metadata))
        return sorted(found, key=lambda s: (s.timestamp, s.id))

    def prune(self, keep: int) -> list[str]:
        """Delete this module's oldest snapshots beyond the newest ``keep`` (snapshots added in
        the UI or by other code are left alone); return the deleted ids, oldest first. Also
        removes temporary files a crashed writer left behind."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be an integer >= 0, got {keep!r}")
        project_id = self.ensure_project()
        ours = self.list_snapshots()
        doomed = ours[: max(len(ours) - keep, 0)]
        for info in doomed:
            with contextlib.suppress(FileNotFoundError):
                self._snapshot_path(project_id, info.id).unlink()
        _remove_stale_temporaries(self.workspace_dir / project_id / _SNAPSHOTS)
        return [info.id for info in doomed]

    # --- links -------------------------------------------------------------------------------

    def project_url(self) -> str | None:
        """The project's dashboard page, or None without a ``base_url``. Cheap once the project
        exists (no Evidently import): fit for the alert path."""
        if self.base_url is None:
            return None
        return f"{self.base_url}/projects/{self._existing_project()}"

    def snapshot_url(self, snapshot_id: str) -> str | None:
        """One snapshot's page (its full Evidently report), or None without a ``base_url``."""
        if self.base_url is None:
            return None
        return f"{self.base_url}/projects/{self._existing_project()}/reports/{snapshot_id}"

    def known_snapshot_url(self, snapshot_id: str) -> str | None:
        """``snapshot_url`` without touching the disk (fit for the event loop): None without a
        ``base_url`` or until this object has found or made the project."""
        if self.base_url is None or self._project_id is None:
            return None
        return f"{self.base_url}/projects/{self._project_id}/reports/{snapshot_id}"

    # --- helpers -----------------------------------------------------------------------------

    def _existing_project(self) -> str:
        if self._project_id is None and self.workspace_dir.is_dir():
            self._project_id = self._find_project()
        return self._project_id or self.ensure_project()

    def _snapshot_path(self, project_id: str, snapshot_id: str) -> Path:
        if not _UUID.match(snapshot_id):
            raise ValueError(f"not a snapshot id: {snapshot_id!r}")
        return self.workspace_dir / project_id / _SNAPSHOTS / f"{snapshot_id}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise find-or-create between processes sharing the workspace."""
        with open(self.workspace_dir / _LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


# --- the report ------------------------------------------------------------------------------


def _snapshot_model(
    reference_rows: pd.DataFrame,
    window_rows: pd.DataFrame,
    *,
    timestamp: datetime,
    tags: list[str],
    metadata: dict[str, str],
) -> Any:
    from evidently import Report
    from evidently.metrics import RowCount, UniqueValueCount
    from evidently.presets import DataDriftPreset

    if len(window_rows) == 0 or len(reference_rows) == 0:
        raise ValueError(
            f"need rows on both sides, got {len(reference_rows)} reference and "
            f"{len(window_rows)} window rows"
        )
    num, cat = monitored_columns(reference_rows, window_rows)
    if not num and not cat:
        raise ValueError(
            f"reference and window rows share no monitored column with values "
            f"(monitored: {NUMERIC_FEATURES + MONITORED_CATEGORICAL})"
        )
    metrics: list[Any] = [
        DataDriftPreset(
            columns=num + cat,
            num_method=NUM_METHOD,
            cat_method=CAT_METHOD,
            threshold=DRIFT_THRESHOLD,
        ),
        RowCount(),
    ]
    if PREDICTED in cat:
        metrics.append(UniqueValueCount(column=PREDICTED))
    snapshot = Report(metrics).run(
        evidently_dataset(window_rows, num, cat),
        evidently_dataset(reference_rows, num, cat),
        timestamp=timestamp,
        tags=tags,
        metadata=metadata,
    )
    model = snapshot.to_snapshot_model()
    for result in model.metric_results.values():
        result.widget = None  # the snapshot page draws the report-level widgets, kept
    return model


def _panels(namespace: uuid.UUID) -> list[Any]:
    """The dashboard panels, with ids derived from the project id (stable across runs)."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import bar_plot_panel, counter_panel, line_plot_panel

    drift = (
        f"Evidently: Wasserstein distance in reference std units (numbers), Jensen-Shannon "
        f"(categories); 0 = no change, its threshold {DRIFT_THRESHOLD}"
    )
    panels = {
        "drifted-latest": counter_panel(
            "Drifted columns (Evidently), latest window",
            [
                PanelMetric(
                    metric="DriftedColumnsCount",
                    metric_labels={"value_type": "count"},
                    legend="drifted columns",
                )
            ],
            size="half",
        ),
        "rows-latest": counter_panel(
            "Rows in the latest window",
            [PanelMetric(metric="RowCount", legend="rows")],
            size="half",
        ),
        "drift-per-column": line_plot_panel(
            "Drift score per column",
            [PanelMetric(metric="ValueDrift", legend="{{column}}")],
            description=drift,
        ),
        "drifted-columns": bar_plot_panel(
            "Drifted columns per window",
            [
                PanelMetric(
                    metric="DriftedColumnsCount",
                    metric_labels={"value_type": "count"},
                    legend="drifted columns",
                )
            ],
            description="Evidently's own verdict (score over its threshold), not stopdrift's alert",
            size="half",
        ),
        "rows": bar_plot_panel(
            "Rows per window",
            [PanelMetric(metric="RowCount", legend="rows")],
            size="half",
        ),
        "predicted-shares": bar_plot_panel(
            "Predicted-class shares per window",
            [
                PanelMetric(
                    metric="UniqueValueCount",
                    metric_labels={"column": PREDICTED, "value_type": "share"},
                    legend="{{label}}",
                )
            ],
            description="share of the window's events predicted as each class",
            stacked=True,
        ),
    }
    for key, panel in panels.items():
        panel.id = uuid.uuid5(namespace, key)
        panel.plot_params[_OWNER_KEY] = CREATED_BY
    return list(panels.values())


# --- files -----------------------------------------------------------------------------------


def _to_json(obj: Any, indent: int | None = None) -> str:
    from evidently.legacy.utils import NumpyEncoder  # numpy values, UUIDs, datetimes

    return json.dumps(obj, cls=NumpyEncoder, indent=indent)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _publish(path: Path, text: str) -> None:
    """Create ``path`` complete: write a hidden temporary file, hard-link it into place (the
    UI's watcher sees a created file that is already whole), drop the temporary name. Where
    hard links are not supported: rename, then append a newline (a modify event it sees)."""
    tmp = _temporary(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            os.replace(tmp, path)
            with open(path, "a", encoding="utf-8") as f:
                f.write("\n")
    finally:
        tmp.unlink(missing_ok=True)  # also a half-written one (a full disk): no space held


def _replace(path: Path, text: str) -> None:
    """Overwrite ``path`` atomically (the UI reads the dashboard afresh on each request)."""
    tmp = _temporary(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_head(path: Path) -> dict[str, Any]:
    """A snapshot's name, timestamp, metadata and tags from the start of its file (they come
    before the results in Evidently 0.7's layout); the whole file if that layout changed."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    cut = head.find(_RESULTS_KEY)
    if cut > 0:
        with contextlib.suppress(ValueError):
            return json.loads(head[:cut] + b"}")
    return json.loads(path.read_bytes())


def _remove_stale_temporaries(folder: Path) -> None:
    cutoff = time.time() - _STALE_TMP_SECONDS
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


# --- checks ----------------------------------------------------------------------------------


def _naive_utc(timestamp: datetime) -> datetime:
    """UTC without a zone: the UI sorts and filters snapshot times, and a mix of aware and naive
    times would fail there.

    >>> from datetime import timedelta, timezone
    >>> _naive_utc(datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    datetime.datetime(2025, 1, 1, 10, 0)
    """
    if not isinstance(timestamp, datetime):
        raise ValueError(f"timestamp must be a datetime, got {timestamp!r}")
    if timestamp.tzinfo is None:
        return timestamp
    return timestamp.astimezone(UTC).replace(tzinfo=None)


def _check_labels(tags: Sequence[str], metadata: dict[str, str]) -> None:
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"tags must be a list of strings, got {tags!r}")
    bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
    if bad:
        raise ValueError(f"metadata keys and values must be strings, got {bad!r}")
    if CREATED_BY_KEY in metadata:
        raise ValueError(f"metadata key {CREATED_BY_KEY!r} is reserved for this module")
