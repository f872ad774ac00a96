"""The monitor as the worker uses it: one call per batch, alerts for drifted windows, metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from benchmarks.drift_benchmark import fake_champion
from stopdrift_common.schema import CLASSES, MODEL_FEATURES
from stopdrift_common.settings import Settings
from stream_app.drift_metrics import DriftCollector
from stream_app.monitor import DriftMonitor
from stream_app.reports import log_report_to_mlflow, write_drift_report

PROBA = [f"proba_{c}" for c in CLASSES]
COLUMNS = [*MODEL_FEATURES, "source"]


@pytest.fixture(scope="module")
def champion():
    return fake_champion(seed=0)


def make_monitor(champion, tmp_path, **kw):
    reference, rows = champion
    settings = dataclasses.replace(Settings(), window_events=500, false_alarm_rate=0.001, seed=1)
    kw.setdefault("write_reports", False)
    kw.setdefault("n_bootstrap", 2000)
    return DriftMonitor(reference, rows, settings, "3", tmp_path / "reports", **kw)


def shifted_stream(rows, n=3000, at=1000, seed=7, factor=1.5):
    df = rows.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    df.loc[at:, "stops_per_year"] *= factor
    return df


def feed(monitor, df, batch=700, labels=True):
    alerts = []
    for pos in range(0, len(df), batch):
        part = df.iloc[pos : pos + batch]
        alerts += monitor.update(
            part[COLUMNS],
            part[PROBA].to_numpy(),
            CLASSES,
            part["subject_race"] if labels else None,
        )
    return alerts


def test_alerts_for_drifted_windows_only_with_the_figures(champion, tmp_path):
    monitor = make_monitor(champion, tmp_path)
    alerts = feed(monitor, shifted_stream(champion[1]))
    assert monitor.windows_total == 6
    assert len(alerts) == monitor.alerts_total >= 3
    first = alerts[0]
    assert first["window"] == 2 and (first["start_event"], first["end_event"]) == (1000, 1500)
    assert "stops_per_year" in first["drifted_features"]
    spy = first["verdict"]["stops_per_year"]["statistics"]
    assert any(e["exceeded"] and e["value"] > e["threshold"] for e in spy.values())
    assert first["model_version"] == "3" and first["calibration"]["seed"] == 1
    orjson.dumps(first)  # publishable as is
    latest = monitor.latest
    assert latest["window"] == 5
    assert latest["dataset_drifted"] == (alerts[-1]["window"] == 5)
    assert latest["observed_accuracy"] is not None and 0 < latest["estimated_accuracy"] < 1


def test_reference_stream_raises_no_alert(champion, tmp_path):
    monitor = make_monitor(champion, tmp_path)
    df = champion[1].sample(5000, replace=True, random_state=11).reset_index(drop=True)
    assert feed(monitor, df, batch=1234, labels=False) == []
    assert monitor.windows_total == 10 and monitor.latest["observed_accuracy"] is None


def test_partials_from_two_workers_give_the_same_figures(champion, tmp_path):
    df = shifted_stream(champion[1], n=500, at=0, factor=2.0)
    single = make_monitor(champion, tmp_path)
    feed(single, df, batch=500)
    a, b = make_monitor(champion, tmp_path), make_monitor(champion, tmp_path)
    coordinator = make_monitor(champion, tmp_path)
    # Each worker sees a different, interleaved half of the stream (as partitions would).
    seqs = np.arange(len(df))
    halves = [seqs % 2 == 0, seqs % 2 == 1]
    for m, h in [(a, halves[0]), (b, halves[1])]:
        message = m.partials_message(
            seqs[h], df[h][COLUMNS], df[h][PROBA].to_numpy(), CLASSES, df[h]["subject_race"]
        )
        # as it travels on the drift.partials topic: JSON
        coordinator.update_partials(orjson.loads(orjson.dumps(message)))
    for feature, stats in single.latest["statistics"].items():  # float sums: summation order
        assert coordinator.latest["statistics"][feature] == pytest.approx(stats), feature
    assert coordinator.latest["drifted_features"] == single.latest["drifted_features"] != []


def test_reset_for_a_new_champion_drops_the_open_window(champion, tmp_path):
    monitor = make_monitor(champion, tmp_path)
    feed(monitor, champion[1].iloc[:300])
    assert monitor.windows.open[0].n == 300
    reference, rows = fake_champion(seed=5)
    monitor.reset(reference, rows, "4")
    assert not monitor.windows.open and monitor.model_version == "4"
    feed(monitor, rows.iloc[:500])
    assert monitor.latest["model_version"] == "4"


def test_collector_exports_the_last_window(champion, tmp_path):
    monitor = make_monitor(champion, tmp_path)
    registry = CollectorRegistry()
    registry.register(DriftCollector(monitor))
    assert registry.get_sample_value("stopdrift_windows_total") == 0.0
    assert registry.get_sample_value("stopdrift_feature_drift_score", {"feature": "x"}) is None
    feed(monitor, shifted_stream(champion[1], n=1000, at=500))
    get = registry.get_sample_value
    labels = {"feature": "stops_per_year", "statistic": "psi"}
    assert get("stopdrift_feature_drift_score", labels) == pytest.approx(
        monitor.latest["statistics"]["stops_per_year"]["psi"]
    )
    assert get("stopdrift_feature_drift_threshold", labels) > 0
    assert get("stopdrift_feature_drifted", {"feature": "stops_per_year"}) == 1.0
    assert get("stopdrift_dataset_drifted") == 1.0
    assert get("stopdrift_windows_total") == 2.0 and get("stopdrift_drift_alerts_total") >= 1.0
    shares = [get("stopdrift_prediction_share_ratio", {"class": c}) for c in CLASSES]
    assert sum(shares) == pytest.approx(1.0)
    assert 0 < get("stopdrift_estimated_accuracy_ratio") < 1
    assert get("stopdrift_observed_accuracy_ratio") is not None
    assert get("stopdrift_missing_share_ratio", {"feature": "search_rate"}) > 0.5
    assert get("stopdrift_out_of_range_share_ratio", {"feature": "stops_per_year"}) == 0.0
    assert get("stopdrift_unseen_category_share_ratio", {"feature": "source"}) == 0.0
    assert get("stopdrift_monitor_model_version_info", {"version": "3"}) == 1.0


def test_drifted_window_gets_an_evidently_report(champion, tmp_path):
    monitor = make_monitor(champion, tmp_path, write_reports=True)
    alerts = feed(monitor, shifted_stream(champion[1], n=1000, at=500))
    monitor.wait_for_reports(timeout=120)
    monitor.close()
    paths = {a["report_path"] for a in alerts}
    assert alerts and None not in paths  # every alert points at a report
    assert len(paths) == 1  # alerts within report_min_interval_seconds share one
    path = tmp_path / "reports" / paths.pop().rsplit("/", 1)[1]
    assert path.name.startswith("Classification_State_Metrics_") and path.stat().st_size > 10_000
    assert "stops_per_year" in path.read_text(errors="ignore")


def test_report_writer_and_mlflow_logging_failure(champion, tmp_path):
    _, rows = champion
    path = write_drift_report(rows.iloc[:300], rows.iloc[300:400], tmp_path / "r.html")
    assert path.is_file()
    store = (tmp_path / "mlruns").as_uri()  # a run that does not exist: logged, not raised
    assert log_report_to_mlflow(store, "no-such-run", path) is False


def test_cost_per_batch_is_counted_once(champion, tmp_path):
    """The monitor must not keep per-event Python state: a batch of 2,000 events adds 4 windows."""
    monitor = make_monitor(champion, tmp_path)
    df = champion[1].sample(2000, replace=True, random_state=1)
    monitor.update(df[COLUMNS], df[PROBA].to_numpy(), CLASSES, None)
    assert monitor.windows_total == 4 and not monitor.windows.open
    assert np.isfinite(list(monitor.latest["statistics"]["state"].values())).all()
