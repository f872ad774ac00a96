"""stream_app.drift_view against a real Evidently 0.7 workspace and a real ``evidently ui`` server:
snapshots seen through Evidently's own workspace API, the dashboard's panels, the UI's pages and
JSON API, live pick-up of new projects, snapshots and deletions, prune, and (where chromium is
installed) the dashboard drawn by a headless browser.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stopdrift import servers
from stream_app.drift_view import (
    CREATED_BY,
    CREATED_BY_KEY,
    DRIFT_THRESHOLD,
    UI_ENV,
    DriftView,
    new_snapshot_id,
    ui_command,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
CLASSES = ["black", "hispanic", "white"]
COLUMNS = {"search_rate", "hit_rate", "inferred_threshold", "stops_per_year", "state", "predicted"}
PANELS = {
    "Drift score per column",
    "Drifted columns per window",
    "Predicted-class shares per window",
    "Rows per window",
}
T0 = datetime(2025, 6, 1, 12, 0)
SEED = 20250601

Rows = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]


@pytest.fixture(scope="module")
def rows() -> Rows:
    """2,000 reference rows, a 500-row window from the same table, and that window drifted
    (stops_per_year x3, predictions skewed to one class). ``predicted`` is fake, seeded."""
    state = pd.read_csv(DATA_DIR / "opp-stops_state.csv")
    rng = np.random.default_rng(SEED)
    state["predicted"] = rng.choice(CLASSES, size=len(state), p=[0.3, 0.3, 0.4])
    reference = state.sample(2000, random_state=1)
    window = state.sample(500, random_state=2)
    drifted = window.assign(
        stops_per_year=window["stops_per_year"] * 3,
        predicted=rng.choice(CLASSES, size=len(window), p=[0.7, 0.2, 0.1]),
    )
    return reference, window, drifted


def fill(view: DriftView, rows: Rows, n: int = 3) -> list[str]:
    """``n`` snapshots 5 minutes apart; the first is a drifted window tagged ``alert``."""
    reference, window, drifted = rows
    return [
        view.add_snapshot(
            reference,
            drifted if i == 0 else window,
            timestamp=T0 + timedelta(minutes=5 * i),
            tags=["alert"] if i == 0 else ["window"],
            metadata={"window": str(i)},
        )
        for i in range(n)
    ]


def results_by_type(snapshot: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for result in snapshot.metric_results.values():
        kind = result.metric_value_location.metric.params["type"].rsplit(":", 1)[-1]
        found.setdefault(kind, []).append(result)
    return found


# --- the workspace, without the UI -----------------------------------------------------------


def test_snapshots_through_evidently_workspace_api(tmp_path: Path, rows: Rows) -> None:
    from evidently.ui.workspace import Workspace

    view = DriftView(tmp_path / "ws", base_url="http://127.0.0.1:8085/")
    ids = fill(view, rows)

    ws = Workspace(str(tmp_path / "ws"))
    [project] = ws.search_project("stopdrift")
    project_id = str(project.id)
    assert project_id == view.ensure_project()
    assert sorted(str(s) for s in ws.list_runs(project.id)) == sorted(ids)

    alert = ws.get_run(project.id, ids[0])
    assert alert.timestamp == T0
    assert alert.tags == ["alert"]
    assert alert.metadata == {"window": "0", CREATED_BY_KEY: CREATED_BY}
    results = results_by_type(alert)
    drift = {
        r.metric_value_location.metric.params["column"]: r.value for r in results["ValueDrift"]
    }
    assert set(drift) == COLUMNS
    assert drift["stops_per_year"] >= DRIFT_THRESHOLD  # x3 is drift
    assert drift["predicted"] >= DRIFT_THRESHOLD
    [shares] = results["UniqueValueCount"]
    assert set(shares.shares) == set(CLASSES)
    assert sum(v.value for v in shares.shares.values()) == pytest.approx(1.0)
    assert [r.value for r in results["RowCount"]] == [500]
    assert len(results["DriftedColumnsCount"]) == 1

    titles = {p.title for p in ws.get_dashboard(project.id).panels}
    assert titles >= PANELS

    assert view.project_url() == f"http://127.0.0.1:8085/projects/{project_id}"
    assert (
        view.snapshot_url(ids[1]) == f"http://127.0.0.1:8085/projects/{project_id}/reports/{ids[1]}"
    )
    assert [s.id for s in view.list_snapshots()] == ids  # oldest first
    assert DriftView(tmp_path / "ws").project_url() is None
    assert DriftView(tmp_path / "ws").snapshot_url(ids[0]) is None


def test_ensure_project_is_idempotent_and_keeps_staff_panels(tmp_path: Path) -> None:
    from evidently.sdk.panels import text_panel
    from evidently.ui.workspace import Workspace

    first = DriftView(tmp_path / "ws").ensure_project()
    dashboard = next((tmp_path / "ws").glob("*/dashboard.json"))
    before = dashboard.read_text()
    assert DriftView(tmp_path / "ws").ensure_project() == first  # another process, same project
    assert dashboard.read_text() == before

    ws = Workspace(str(tmp_path / "ws"))
    [project] = ws.list_projects()
    project.dashboard.add_panel(text_panel("added in the UI"), tab="Drift")
    project.dashboard.add_panel(text_panel("another"), tab="Other")
    DriftView(tmp_path / "ws").ensure_project()
    titles = [p.title for p in ws.get_dashboard(project.id).panels]
    assert len(ws.list_projects()) == 1
    assert {"added in the UI", "another"} <= set(titles)
    assert sorted(t for t in titles if t in PANELS) == sorted(PANELS)  # no duplicates


def test_prune_deletes_only_its_oldest_snapshots(tmp_path: Path, rows: Rows) -> None:
    from evidently import Report
    from evidently.metrics import RowCount
    from evidently.ui.workspace import Workspace

    view = DriftView(tmp_path / "ws")
    ids = fill(view, rows)
    ws = Workspace(str(tmp_path / "ws"))
    project_id = view.ensure_project()
    foreign = ws.add_run(project_id, Report([RowCount()]).run(rows[1][["state"]], None)).id

    assert view.prune(keep=1) == ids[:2]
    assert {str(s) for s in ws.list_runs(project_id)} == {ids[2], str(foreign)}
    assert view.prune(keep=1) == []
    with pytest.raises(ValueError, match="keep must be an integer >= 0, got -1"):
        view.prune(keep=-1)


def test_bad_input_is_named(tmp_path: Path, rows: Rows) -> None:
    reference, window, _ = rows
    view = DriftView(tmp_path / "ws")
    with pytest.raises(ValueError, match="metadata keys and values must be strings"):
        view.add_snapshot(reference, window, timestamp=T0, tags=[], metadata={"window": 3})
    with pytest.raises(ValueError, match="share no monitored column"):
        view.add_snapshot(reference[["city"]], window[["city"]], timestamp=T0, tags=[], metadata={})
    with pytest.raises(ValueError, match="snapshot_id must be a lower-case UUID, got 'x'"):
        view.add_snapshot(reference, window, timestamp=T0, tags=[], metadata={}, snapshot_id="x")
    with pytest.raises(ValueError, match="base_url must start with http"):
        DriftView(tmp_path / "ws", base_url="127.0.0.1:8085")


# --- the UI server ---------------------------------------------------------------------------


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def get_json(url: str, data: dict | None = None) -> Any:
    body = None if data is None else json.dumps(data).encode()
    headers = {"content-type": "application/json"}
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 201), url
        return json.loads(response.read())


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f}s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, rows: Rows) -> Iterator[tuple]:
    """A workspace with 3 snapshots, served by ``evidently ui`` on a free loopback port."""
    root = tmp_path_factory.mktemp("drift_view")
    port = servers.free_port()
    base = f"http://127.0.0.1:{port}"
    view = DriftView(root / "ws", base_url=base)
    ids = fill(view, rows)
    with open(root / "ui.log", "wb") as log:
        proc = subprocess.Popen(
            ui_command(root / "ws", port),
            env={**os.environ, **UI_ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, (root / "ui.log").read_text()[-2000:]
            return servers.port_open(port) and get(f"{base}/api/version")[0] == 200

        wait_until(up, 60, "evidently ui did not answer")
        yield view, ids, base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.integration
def test_ui_serves_project_and_snapshots(served: tuple) -> None:
    view, ids, base = served
    project_id = view.ensure_project()

    status, page = get(view.project_url())
    assert status == 200 and b'<div id="root">' in page  # the app, which loads the JSON below
    assert get(view.snapshot_url(ids[0]))[0] == 200

    snapshots = get_json(f"{base}/api/projects/{project_id}/snapshots")
    assert sorted(s["id"] for s in snapshots) == sorted(ids)
    assert {s["id"]: s["tags"] for s in snapshots}[ids[0]] == ["alert"]

    report = get_json(f"{base}/api/projects/{project_id}/{ids[0]}/data")
    assert report["widgets"]  # what the snapshot page draws

    dashboard = get_json(f"{base}/api/v2/dashboards/{project_id}")
    assert {p["title"] for p in dashboard["panels"]} >= PANELS
    for panel in dashboard["panels"]:  # every panel has a point per snapshot
        series = get_json(
            f"{base}/api/v2/snapshots/{project_id}/data_series_batch",
            {"series_filter": panel["values"]},
        )
        assert len(series["sources"]) == 3, panel["title"]
        assert all(None not in s["values"] for s in series["series"]), panel["title"]
        if panel["title"] == "Drift score per column":
            assert {s["params"]["column"] for s in series["series"]} == COLUMNS


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install)")
def test_dashboard_renders_in_headless_chromium(served: tuple, tmp_path: Path) -> None:
    view, _, _ = served
    dom = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=15000", "--dump-dom", view.project_url(),
        ],
        capture_output=True, text=True, timeout=90, check=True,
    ).stdout  # fmt: skip
    assert all(title in dom for title in PANELS)
    assert "currently empty" not in dom
    assert dom.count("MuiLineElement-root") >= len(COLUMNS)  # a drawn line per column
    assert dom.count("MuiBarElement-root") >= 3  # bars of the bar panels


@pytest.mark.integration
def test_ui_follows_new_projects_snapshots_and_prune(served: tuple, rows: Rows) -> None:
    """Written while the UI runs: a new project, snapshots, deletions all show up live."""
    view, _, base = served
    live = DriftView(view.workspace_dir, project_name="stopdrift-live", base_url=base)
    project_id = live.ensure_project()

    def names() -> set[str]:
        return {p["name"] for p in get_json(f"{base}/api/projects")}

    def count() -> int:
        return len(get_json(f"{base}/api/projects/{project_id}/snapshots"))

    wait_until(lambda: "stopdrift-live" in names(), 10, "new project not listed")
    reserved = new_snapshot_id()  # as an alert would, to link before the snapshot exists
    reference, window, _ = rows
    ids = [
        live.add_snapshot(reference, window, timestamp=T0, tags=["window"], metadata={}),
        live.add_snapshot(
            reference, window, timestamp=T0 + timedelta(minutes=5), tags=["alert"], metadata={},
            snapshot_id=reserved,
        ),
    ]  # fmt: skip
    assert ids[1] == reserved
    wait_until(lambda: count() == 2, 10, "new snapshots not listed")
    assert live.prune(keep=1) == ids[:1]
    wait_until(lambda: count() == 1, 10, "pruned snapshot still listed")
    assert get(live.snapshot_url(ids[1]))[0] == 200
