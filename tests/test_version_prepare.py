"""Preparing a model version never stalls the drift coordinator (issue 17 item 3, 6; issue 16
item 3): a version that cannot be loaded ends, in bounded time, with its windows reported
untested and a reason while the others go on; a malformed calibration cache file is ignored; a
failed cache write keeps the calibration; the rebalance callback never waits on MLflow; a
version's calibration is stored with it in MLflow and loaded from there.

Each scenario runs in one event loop (``asyncio.run`` of the whole scenario), a real
``Coordinator`` and ``WorkerRuntime`` with no broker, as ``tests/test_coordinator.py`` does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import orjson
import pandas as pd
import pytest

from drift.calibration import Calibration
from stopdrift_common.schema import CLASSES, MODEL_FEATURES, TARGET
from stopdrift_common.settings import PROJECT_ROOT, Settings
from stream_app.coordinator import Coordinator
from stream_app.drift_metrics import DriftCollector
from stream_app.metrics import WorkerMetrics
from stream_app.runtime import WorkerRuntime
from tests.helpers_stream import state_events
from tests.test_coordinator import Model, live_order, partitioned

WINDOW = 250
BOUND = 20.0  # seconds: a scenario that takes longer is stuck (today's code retries forever)


class NotFound(Exception):
    """What MLflow raises for a deleted version."""

    error_code = "RESOURCE_DOES_NOT_EXIST"


def no_stored(*_args) -> None:
    """No calibration stored in the registry (the tests without MLflow)."""
    return None


def make_settings(runs_dir, **kw) -> Settings:
    return Settings(
        data_dir=PROJECT_ROOT / "data",
        runs_dir=runs_dir,
        window_events=WINDOW,
        window_idle_seconds=5,
        calibration_windows=200,
        calibration_references=10,
        partitions=4,
        **kw,
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    rows = pd.DataFrame(state_events(4053, loop_seed=7))
    proba = Model().predict_proba(rows)
    ref = rows[[*MODEL_FEATURES, TARGET]].copy()
    for j, c in enumerate(CLASSES):
        ref[f"proba_{c}"] = proba[:, j]
    return ref


def champion_of(reference: pd.DataFrame, version: str) -> SimpleNamespace:
    return SimpleNamespace(
        model=Model(), classes=CLASSES, name="m", version=version,
        reference={"classes": CLASSES}, reference_rows=reference,
    )  # fmt: skip


@pytest.fixture()
def fits(monkeypatch) -> list[int]:
    """Counts the bootstraps (``Calibration.fit``) run in the test."""
    calls: list[int] = []
    fit = Calibration.fit.__func__

    def counted(cls, *args, **kw):
        calls.append(1)
        return fit(cls, *args, **kw)

    monkeypatch.setattr(Calibration, "fit", classmethod(counted))
    return calls


class Loop:
    """One worker's scoring side feeding a coordinator, all in the running event loop."""

    def __init__(self, settings: Settings, coordinator: Coordinator):
        self.settings = settings
        self.coordinator = coordinator
        self.runtime = WorkerRuntime(settings, WorkerMetrics(), SimpleNamespace(current=None))
        self.table: dict = {}
        self.out: list[tuple[str, bytes]] = []

    async def write(self, outputs) -> None:
        self.out += [(t, v) for t, _, v in outputs]

    def partials(self, messages, scored_by) -> list[bytes]:
        _, outputs, _ = self.runtime._outputs(messages, scored_by, self.coordinator.clock())
        return [v for t, _, v in outputs if t == self.settings.partials_topic]

    async def merge(self, messages, scored_by) -> None:
        await self.coordinator.merge(self.partials(messages, scored_by), self.write, self.table)

    def windows(self) -> list[dict]:
        return [orjson.loads(v) for t, v in self.out if t == self.settings.topics.windows]


def test_a_deleted_version_ends_untested_with_a_reason_while_the_others_go_on(tmp_path, reference):
    """Partials of version 9 (deleted from the registry: every load fails) between version 1's:
    the merge naming it returns in bounded time, version 1's windows are all tested, version
    9's are reported untested (with why, on the windows records and /metrics), none waits."""
    settings = make_settings(tmp_path / "runs")
    v1, v9 = champion_of(reference, "1"), champion_of(reference, "9")
    loads: list[str] = []

    def load(_settings, version):
        loads.append(version)
        raise NotFound(f"Model Version (name=m, version={version}) not found")

    now = [1000.0]
    coordinator = Coordinator(
        settings, champion=lambda: v1, load=load, stored=no_stored, retry_seconds=0.01, attempts=3,
        clock=lambda: now[0], recover_seconds=60,
    )  # fmt: skip
    batches = live_order(partitioned(state_events(5000)))

    async def scenario() -> Loop:
        h = Loop(settings, coordinator)
        await coordinator.assigned(True, {})
        for i, batch in enumerate(batches):
            await h.merge(batch, v9 if 8 <= i < 14 else v1)
            now[0] += 0.2
        now[0] += 10
        await coordinator.tick(h.write, h.table)
        return h

    started = time.monotonic()
    h = asyncio.run(asyncio.wait_for(scenario(), BOUND))
    assert time.monotonic() - started < BOUND
    assert loads == ["9"] * 3  # bounded attempts, then no more until the recovery time
    windows = h.windows()
    tested = [w for w in windows if w["tested"]]
    assert tested and {w["model_version"] for w in tested} == {"1"}
    skipped = [w for w in windows if w["model_version"] == "9"]
    assert skipped and all(not w["tested"] for w in skipped)
    assert all("not_found" in w["untested_reason"] for w in skipped)
    assert sum(w["n"] for w in skipped) == sum(len(b) for b in batches[8:14])
    assert {w["window"] for w in windows} == set(range(5000 // WINDOW))  # every window reported
    kind, _ = coordinator.unpreparable["9"]
    assert kind == "not_found"
    metrics = scrape(coordinator)
    assert metrics[("stopdrift_drift_versions_unprepared", ())] == 1.0
    assert metrics[("stopdrift_drift_partials_skipped_total", (("reason", "not_found"),))] == 6


def test_an_unpreparable_version_is_tried_again_later_and_recovers(tmp_path, reference):
    settings = make_settings(tmp_path / "runs")
    v1, v2 = champion_of(reference, "1"), champion_of(reference, "2")
    registry_up = [False]

    def load(_settings, version):
        if not registry_up[0]:
            raise ConnectionError("Max retries exceeded: connection refused")
        return v2.reference, v2.reference_rows

    now = [1000.0]
    coordinator = Coordinator(
        settings, champion=lambda: v1, load=load, stored=no_stored, retry_seconds=0.01, attempts=2,
        clock=lambda: now[0], recover_seconds=60,
    )  # fmt: skip
    batches = live_order(partitioned(state_events(2000)))

    async def scenario() -> Loop:
        h = Loop(settings, coordinator)
        await coordinator.assigned(True, {})
        await h.merge(batches[0], v2)
        assert coordinator.unpreparable["2"][0] == "unavailable"
        registry_up[0] = True
        now[0] += 61  # the recovery time
        await coordinator.tick(h.write, h.table)
        await asyncio.wait_for(coordinator._tasks["2"], BOUND)
        for batch in batches[1:]:
            await h.merge(batch, v2)
            now[0] += 0.2
        return h

    h = asyncio.run(asyncio.wait_for(scenario(), BOUND))
    assert "2" in coordinator.monitor.versions and not coordinator.unpreparable
    assert any(w["tested"] and w["model_version"] == "2" for w in h.windows())


def test_a_version_that_does_not_exist_in_a_real_registry(mlflow_settings, reference):
    """The same with the real MLflow client: a partial naming a version the registry never had."""
    settings = make_settings(
        mlflow_settings.runs_dir,
        mlflow_tracking_uri=mlflow_settings.mlflow_tracking_uri,
        model_name="stopdrift-no-such-model",
    )
    coordinator = Coordinator(settings, retry_seconds=0.01, attempts=2)
    batches = live_order(partitioned(state_events(600)))

    async def scenario() -> Loop:
        h = Loop(settings, coordinator)
        await coordinator.assigned(True, {})
        await h.merge(batches[0], champion_of(reference, "41"))
        return h

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert coordinator.unpreparable["41"][0] == "not_found"


def test_assigned_returns_promptly_while_mlflow_is_unreachable(tmp_path, reference):
    """A restored table names version 5, which only MLflow has, and MLflow hangs: the rebalance
    callback returns at once; version 5 is prepared in the background once MLflow answers."""
    settings = make_settings(tmp_path / "runs")
    v5 = champion_of(reference, "5")
    batches = live_order(partitioned(state_events(1000)))
    first = Coordinator(settings, champion=lambda: v5)

    async def fill() -> dict:
        h = Loop(settings, first)
        await first.assigned(True, {})
        for batch in batches[:3]:
            await h.merge(batch, v5)
        return h.table

    table = asyncio.run(fill())
    assert any(k.startswith("w/5/") for k in table)
    answer = threading.Event()

    def hanging_load(_settings, version):
        answer.wait(BOUND)  # MLflow does not answer until the test says so
        return v5.reference, v5.reference_rows

    second = Coordinator(settings, load=hanging_load, stored=no_stored, retry_seconds=0.01)

    async def rebalance() -> float:
        started = time.monotonic()
        await asyncio.wait_for(second.assigned(True, dict(table)), BOUND)
        took = time.monotonic() - started
        assert second.active and "5" not in second.monitor.versions
        answer.set()
        await asyncio.wait_for(second._tasks["5"], BOUND)
        return took

    try:
        took = asyncio.run(rebalance())
    finally:
        answer.set()
    assert took < 0.5
    assert "5" in second.monitor.versions  # restored windows resume once it is prepared


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"points": 1}',
        b'{"kind": "stopdrift.calibration", "envelope": 1, "key": {}}',
        "truncated",
        "another format",
    ],
)
def test_a_malformed_cache_file_is_ignored(tmp_path, reference, fits, content):
    settings = make_settings(tmp_path / "runs")
    v1 = champion_of(reference, "1")
    batches = live_order(partitioned(state_events(600)))

    async def prepare_once() -> Coordinator:
        coordinator = Coordinator(settings, champion=lambda: v1, retry_seconds=0.01)
        h = Loop(settings, coordinator)
        await coordinator.assigned(True, {})
        await h.merge(batches[0], v1)
        return coordinator

    asyncio.run(asyncio.wait_for(prepare_once(), BOUND))
    assert len(fits) == 1
    files = list((settings.runs_dir / "calibration").glob("*.json"))
    assert len(files) == 1
    good = files[0].read_bytes()
    if content == "truncated":
        content = good[: len(good) // 2]
    elif content == "another format":
        doc = orjson.loads(good)
        doc["calibration"]["format"] = 999
        content = orjson.dumps(doc)
    files[0].write_bytes(content)

    coordinator = asyncio.run(asyncio.wait_for(prepare_once(), BOUND))
    assert "1" in coordinator.monitor.versions
    assert len(fits) == 2  # computed again, once
    assert files[0].read_bytes() != content  # replaced by a good one
    asyncio.run(asyncio.wait_for(prepare_once(), BOUND))
    assert len(fits) == 2  # which the next start uses


def test_a_failed_cache_write_keeps_the_calibration(tmp_path, reference, fits):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "calibration").write_text("a file where the cache folder should be")
    settings = make_settings(runs)
    v1 = champion_of(reference, "1")
    batches = live_order(partitioned(state_events(1000)))
    now = [1000.0]
    coordinator = Coordinator(
        settings, champion=lambda: v1, retry_seconds=0.01, clock=lambda: now[0]
    )

    async def scenario() -> Loop:
        h = Loop(settings, coordinator)
        await coordinator.assigned(True, {})
        for batch in batches[:2]:
            await h.merge(batch, v1)
        await coordinator.assigned(True, dict(h.table))  # a rebalance: the model is kept
        for batch in batches[2:]:
            await h.merge(batch, v1)
            now[0] += 0.2
        return h

    h = asyncio.run(asyncio.wait_for(scenario(), BOUND))
    assert len(fits) == 1
    assert coordinator.calibrations_computed == 1
    assert [w["tested"] for w in h.windows()] == [True] * 4


def scrape(coordinator) -> dict:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(DriftCollector(coordinator))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
    }


def test_a_registered_version_carries_its_calibration_and_workers_load_it(
    mlflow_settings, reference, fits, monkeypatch
):
    """Training stores the calibration with the version (artifact + digest tag); a worker with
    the same drift settings loads it and calibrates nothing; ``stopdrift calibrate`` stores one
    for other settings; a stored calibration whose file changed is refused (and computed)."""
    from sklearn.dummy import DummyClassifier

    from stopdrift.cli import main
    from stopdrift_common import calibrations, registry
    from stopdrift_common.settings import env_name
    from training.registration import log_run

    settings = make_settings(
        mlflow_settings.runs_dir,
        mlflow_tracking_uri=mlflow_settings.mlflow_tracking_uri,
        model_name="stopdrift-calibrated",
    )
    features = reference[MODEL_FEATURES]
    model = DummyClassifier(strategy="prior").fit(features, reference[TARGET])
    registered = log_run(
        settings, run_name="calibrated", params={}, metrics={}, artifacts={},
        reference={"classes": CLASSES}, reference_rows=reference, model=model,
        input_example=features.head(5), tags={},
    )  # fmt: skip
    version = registered.version
    assert len(fits) == 1  # at registration
    tags = registry.client(settings).get_model_version(settings.model_name, version).tags
    key = Coordinator(settings).config.calibration_key()
    assert tags[calibrations.digest_tag(key)]

    def prepared_by_a_worker(s: Settings) -> Coordinator:
        coordinator = Coordinator(s, retry_seconds=0.01, attempts=2)

        async def scenario() -> None:
            await coordinator.assigned(True, {})
            batch = live_order(partitioned(state_events(300)))[0]
            await Loop(s, coordinator).merge(batch, champion_of(reference, version))

        asyncio.run(asyncio.wait_for(scenario(), 60))
        assert version in coordinator.monitor.versions
        return coordinator

    worker = prepared_by_a_worker(settings.replace(runs_dir=mlflow_settings.runs_dir / "w1"))
    assert worker.calibrations_computed == 0 and len(fits) == 1

    for field, value in [("model_name", settings.model_name), ("calibration_windows", "200"),
                         ("calibration_references", "10"), ("partitions", "4")]:  # fmt: skip
        monkeypatch.setenv(env_name(field), value)
    uri = settings.mlflow_tracking_uri
    assert (
        main(["calibrate", "--version", version, "--window-events", "500", "--mlflow-uri", uri])
        == 0
    )
    assert len(fits) == 2
    other = settings.replace(window_events=500, runs_dir=mlflow_settings.runs_dir / "w2")
    assert prepared_by_a_worker(other).calibrations_computed == 0

    registry.client(settings).set_model_version_tag(
        settings.model_name, version, calibrations.digest_tag(key), "0" * 64
    )  # the stored file no longer matches its digest: refused, computed instead
    tampered = prepared_by_a_worker(settings.replace(runs_dir=mlflow_settings.runs_dir / "w3"))
    assert tampered.calibrations_computed == 1 and len(fits) == 3
