"""Reports never hurt scoring (issue 17): the report writer's queue is bounded (the oldest item
dropped, counted, logged once per burst), and a full or read-only ``runs/`` (a real tmpfs of
64 kB) costs reports only: the coordinator merges, tests and alerts every window as before,
the errors are counted on ``/metrics``, and no half-written file is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from prometheus_client import generate_latest

from stopdrift_common.settings import PROJECT_ROOT, Settings
from stream_app.drift_view import DriftView
from stream_app.metrics import WorkerMetrics
from stream_app.reports import Reports
from tests.helpers_stream import feature_champion, state_events
from tests.test_coordinator import (
    PARTITIONS,
    WINDOW,
    Harness,
    live_order,
    partitioned,
)

N = 5000
CHANGE = 2500  # windows 10..19 drift
DATA_DIR = PROJECT_ROOT / "data"


@contextlib.contextmanager
def tmpfs(path: Path, *options: str) -> Iterator[Path]:
    """A 64 kB tmpfs at ``path`` (root only), unmounted afterwards."""
    path.mkdir(parents=True)
    opts = ",".join(("size=64k", *options))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        # A full disk needs a small file system of its own: make test runs as root here, as
        # make install does; a failure says why instead of passing silently.
        pytest.fail(f"cannot mount a 64 kB tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path) -> None:
    """Write until the file system is full."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


def files(folder: Path) -> list[str]:
    """Files that hold space, and any temporary file (a half-written report or snapshot)."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and (p.stat().st_size > 0 or p.name.endswith(".tmp"))
    )


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    return Settings(
        data_dir=DATA_DIR,
        runs_dir=tmp_path_factory.mktemp("reports"),  # the calibration cache: a normal disk
        window_events=WINDOW,
        window_idle_seconds=5,
        calibration_windows=500,
        partitions=PARTITIONS,
    )


@pytest.fixture(scope="module")
def champion() -> SimpleNamespace:
    return feature_champion()


@pytest.fixture(scope="module")
def batches():
    return live_order(partitioned(state_events(N), drift_from=CHANGE))


def run_with_reports(settings, champion, batches, reports: Reports) -> Harness:
    h = Harness(settings, champion)
    h.coordinator.reports = reports
    for b in batches:
        h.batch(b)
    h.tick(6)
    return h


def assert_monitoring_unharmed(h: Harness) -> None:
    """Every window tested once, the drifted ones alerted, each alert naming its report."""
    windows = h.records(h.runtime.settings.topics.windows)
    alerts = h.records(h.runtime.settings.topics.alerts)
    assert [(w["window"], w["n"], w["tested"]) for w in windows] == [
        (k, WINDOW, True) for k in range(N // WINDOW)
    ]
    assert [a["window"] for a in alerts] == list(range(CHANGE // WINDOW, N // WINDOW))
    assert all(a["report"]["path"].endswith(".html") for a in alerts)


@pytest.mark.parametrize(
    ("options", "kind"), [((), "no_space"), (("ro",), "read_only")], ids=["full", "read-only"]
)
def test_a_full_or_read_only_runs_dir_costs_reports_only(
    settings, champion, batches, tmp_path: Path, options: tuple[str, ...], kind: str
) -> None:
    with tmpfs(tmp_path / "runs", *options) as runs:
        if not options:
            fill(runs)  # full before the first alert: even the drift view's project fails
        metrics = WorkerMetrics()
        view = DriftView(runs / "evidently", base_url="http://127.0.0.1:8085")
        # No cooldown: every item tries the disk, so each one's error is counted.
        reports = Reports(runs / "reports", view=view, metrics=metrics, cooldown_seconds=0)
        h = run_with_reports(settings, champion, batches, reports)
        reports.wait(timeout=120)

        assert_monitoring_unharmed(h)
        assert reports._thread.is_alive()  # the writer goes on, for when the disk has room
        errors = sample(metrics, "stopdrift_report_errors_total", kind=kind)
        # the project, then per alert its report and its snapshot (each also retries the project)
        assert errors >= 1 + 2 * (N - CHANGE) // WINDOW
        assert errors == sum(reports.errors.values()) == reports.failed
        assert sample(metrics, "stopdrift_reports_written_total", kind="report") == 0
        assert f'stopdrift_report_errors_total{{kind="{kind}"}}'.encode() in generate_latest(
            metrics.registry
        )
        assert files(runs) == ([] if options else ["filler"])  # no half-written file holds space


def test_after_a_failed_write_reports_pause_instead_of_burning_cpu(
    settings, champion, batches, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "runs") as runs:
        metrics = WorkerMetrics()
        reports = Reports(runs / "reports", metrics=metrics, cooldown_seconds=600)
        h = run_with_reports(settings, champion, batches, reports)
        reports.wait(timeout=120)

        assert_monitoring_unharmed(h)
        # the first report (1.5 MB) finds no room; the others are not even rendered
        assert sample(metrics, "stopdrift_report_errors_total", kind="no_space") == 1
        paused = sample(metrics, "stopdrift_reports_dropped_total", reason="disk_cooldown")
        assert paused == (N - CHANGE) // WINDOW - 1
        assert files(runs) == []


@pytest.fixture(scope="module")
def rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    state = pd.read_csv(DATA_DIR / "opp-stops_state.csv")
    state["predicted"] = "white"
    return state.sample(1000, random_state=1), state.sample(300, random_state=2)


def alert(k: int) -> dict:
    return {"id": f"w{k}", "worker_id": "w", "model_version": "1", "window": k,
            "generation": 0, "closed_at": 1_700_000_000 + k}  # fmt: skip


def test_a_burst_keeps_the_newest_k_and_counts_the_rest(
    tmp_path: Path, rows, caplog: pytest.LogCaptureFixture
) -> None:
    n, k = 10, 3
    metrics = WorkerMetrics()
    reports = Reports(tmp_path / "reports", queue_size=k, metrics=metrics)
    reference, window = rows
    caplog.set_level(logging.WARNING, logger="stream_app.reports")
    with reports._cond:  # one merge's burst: the writer takes nothing until it is queued
        out = [reports.submit(alert(i), reference, window) for i in range(n)]
    reports.wait(timeout=120)

    assert all(o["path"].endswith(f"_window{i}_g0.html") for i, o in enumerate(out))
    assert [p.name for p in sorted((tmp_path / "reports").glob("*.html"))] == [
        Path(o["path"]).name for o in out[n - k :]
    ]
    assert reports.dropped["queue_full"] == n - k
    assert sample(metrics, "stopdrift_reports_dropped_total", reason="queue_full") == n - k
    assert sample(metrics, "stopdrift_reports_written_total", kind="report") == k
    messages = [r.getMessage() for r in caplog.records]
    assert sum("queue full" in m for m in messages) == 1  # once per burst, not per drop
    assert f"drained: {n - k} dropped in that burst" in " ".join(messages)


# --- reports out of the scoring process ------------------------------------------------------


def test_the_report_service_writes_what_the_worker_links_to(
    settings, champion, batches, tmp_path: Path
) -> None:
    """The worker's side (``ReportLinks``) puts a bounded sample on the records and writes
    nothing; the service, fed those records as ``drift.windows`` holds them, writes each
    alert's report and snapshot where the alert says they are."""
    import orjson

    from stream_app.report_service import ReportService
    from stream_app.reports import SAMPLE_ROWS, ReportLinks, snapshot_id_of

    runs = tmp_path / "runs"
    base = "http://127.0.0.1:8085"
    worker_view = DriftView(runs / "evidently", base_url=base)
    links = ReportLinks(runs / "reports", view=worker_view, window_seconds=30.0)
    deadline = time.monotonic() + 60
    while worker_view.known_snapshot_url("x") is None:  # found (made) in a background thread
        assert time.monotonic() < deadline, "the drift view's project was not made"
        time.sleep(0.1)
    h = run_with_reports(settings, champion, batches, links)
    assert_monitoring_unharmed(h)
    assert not (runs / "reports").exists()  # the scoring process wrote no report

    values = [v for t, v in h.out if t == settings.topics.windows]
    records = [orjson.loads(v) for v in values]
    sampled = [r for r in records if "sample" in r]
    alerts = [r for r in records if r["drifted"]]
    assert all("sample" in a for a in alerts)
    assert len(sampled) == len(alerts) + 1  # and one tested window: the closes span 5 s < 30 s
    assert all(r["sample"]["rows"] == SAMPLE_ROWS and r["sample"]["of"] == WINDOW for r in sampled)
    assert max(len(v) for v in values) < 64_000  # a record with its sample: far below 1 MB

    service_settings = settings.replace(runs_dir=runs, drift_view_url=base)
    service = ReportService(
        service_settings, load=lambda _s, _v: (champion.reference, champion.reference_rows)
    )
    for value in values:
        service.handle(value)
    service.reports.wait(timeout=300)

    assert service.skipped == 0 and service.reports.failed == 0
    for a in alerts:
        page = Path(a["report"]["path"]).read_text(encoding="utf-8")
        assert f"stopdrift drift alert {a['id']}" in page
        assert a["report"]["snapshot_url"] == worker_view.snapshot_url(snapshot_id_of(a))
    snapshots = DriftView(runs / "evidently").list_snapshots()
    assert {s.id for s in snapshots if s.tags == ["alert"]} == {snapshot_id_of(a) for a in alerts}
    assert sum(s.tags == ["window"] for s in snapshots) == 1

    service.handle(values[-1])  # read again (a restart before the commit): written once
    service.reports.wait(timeout=60)
    assert service.reports.failed == 0
    assert len(DriftView(runs / "evidently").list_snapshots()) == len(snapshots)


def test_the_childs_counts_reach_the_workers_metrics() -> None:
    """The service's counts, as the worker's child prints them, on the worker's /metrics."""
    import io

    from stream_app.report_service import LineMetrics, _relay

    out = io.StringIO()
    child = LineMetrics(out)
    child.record_report_error("no_space")
    child.record_report_dropped("queue_full")
    child.record_report_written("snapshot")
    metrics = WorkerMetrics()
    for line in [*out.getvalue().splitlines(keepends=True), "a stray line\n"]:
        _relay(line, metrics)
    assert sample(metrics, "stopdrift_report_errors_total", kind="no_space") == 1
    assert sample(metrics, "stopdrift_reports_dropped_total", reason="queue_full") == 1
    assert sample(metrics, "stopdrift_reports_written_total", kind="snapshot") == 1
