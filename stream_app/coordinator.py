"""The drift coordinator: the drift core (``drift.monitor``) wired to Kafka, a table and MLflow.

Exactly one worker of a group owns the single partition of ``drift.partials.<group>`` and
runs the coordinator; the others leave it inactive. On every assignment the owner rebuilds the
monitor from the changelog-backed table of window states, so windows survive a restart or a
move to another worker; partials read again after a crash are skipped event by event (the
monitor remembers what each window counted).

Each merge or tick produces effects, published in this order: alerts to ``drift.alerts``
(retried until the broker has them), then the table updates, then metrics and reports; the
agent acks its partials only after that. A partial of a model version the monitor has not seen
waits until that version's reference is loaded (from the worker's champion, or MLflow) and
calibrated; calibrations are cached under ``runs/calibration``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from drift.monitor import (
    DriftMonitor,
    Effects,
    MonitorConfig,
    UnknownVersion,
    prepare,
    version_order,
)
from drift.monitor import reference_frame as monitor_frame
from stopdrift_common.registry import load_reference
from stopdrift_common.schema import CATEGORICAL_FEATURES, MODEL_FEATURES, NUMERIC_FEATURES, TARGET
from stopdrift_common.settings import Settings

log = logging.getLogger("stopdrift.worker")
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

# write([(topic, key, value), ...]) returns once the broker has every message
Write = Callable[[list[tuple[str, bytes | None, bytes]]], Awaitable[None]]


def monitor_config(settings: Settings) -> MonitorConfig:
    """The drift core's configuration from the worker's settings."""
    return MonitorConfig(
        numeric=tuple(NUMERIC_FEATURES),
        categorical=tuple(CATEGORICAL_FEATURES),
        nullable=tuple(NUMERIC_FEATURES),  # the contract lets numbers be null, never a state
        window_events=settings.window_events,
        min_events=settings.min_window_events,
        idle_seconds=settings.window_idle_seconds,
        max_open=settings.max_open_windows,
        partitions=settings.partitions,
        false_alarms_per_million=settings.false_alarms_per_million,
        calibration_windows=settings.calibration_windows,
        calibration_references=settings.calibration_references,
        seed=settings.seed,
    )


def reference_frame(reference: dict[str, Any], rows: pd.DataFrame) -> pd.DataFrame:
    """The monitor's view of a registered version's reference rows."""
    return monitor_frame(rows, [str(c) for c in reference["classes"]], TARGET, MODEL_FEATURES)


class Coordinator:
    """Merges every worker's partials, tests closed windows, publishes alerts.

    ``champion``: returns the worker's current champion (or None), whose reference saves a trip
    to MLflow; ``reports``: writes a drifted window's Evidently report (may be None)."""

    def __init__(
        self,
        settings: Settings,
        champion: Callable[[], Any] = lambda: None,
        reports: Any = None,
        load: Callable[[Settings, str], tuple[dict, pd.DataFrame]] = load_reference,
        retry_seconds: float = 3.0,
        clock: Callable[[], float] = time.time,
        flush: Callable[[], Awaitable[None]] | None = None,
    ):
        self.settings = settings
        self.config = monitor_config(settings)
        self.clock = clock
        self.flush = flush  # sends the table's changelog writes (the app's producer.flush)
        self.monitor = DriftMonitor(self.config, now=clock())
        self.champion = champion
        self.reports = reports
        self._load = load
        self.retry_seconds = retry_seconds
        self.active = False
        self.lock = asyncio.Lock()
        self.models: dict[str, Any] = {}  # version -> VersionModel (calibrated once)
        self.frames: dict[str, pd.DataFrame] = {}  # version -> reference frame (reports)
        self.bad_partials = 0
        self.alert_write_retries = 0
        self.last_tested_at: float | None = None  # close time of the last tested window

    # --- ownership ---------------------------------------------------------------------------
    async def assigned(self, owns: bool, saved: dict[Any, bytes]) -> None:
        """After each rebalance: restore from the table if this worker owns the partials
        partition, else stand down (another worker coordinates)."""
        async with self.lock:
            self.monitor = DriftMonitor(self.config, now=self.clock())
            self.active = owns
            if not owns:
                return
            records = {_text(k): orjson.loads(v) for k, v in saved.items() if v}
            restored = self.monitor.restore(records, self.clock())
            for version in self.monitor.saved_versions():
                await self._prepare(version)
            if self.models:
                latest = max(self.models, key=version_order)
                if latest not in self.monitor.versions:
                    self.monitor.add_version(self.models[latest], self.clock())
            log.warning("drift coordinator active: restored %d window records", restored)

    # --- work --------------------------------------------------------------------------------
    async def merge(self, values: list[bytes], write: Write, table: MutableMapping) -> Effects:
        """Merge a batch of partials; publish what they closed."""
        async with self.lock:
            effects = Effects()
            for value in values:
                partial = _decode(value)
                if partial is None:
                    self.bad_partials += 1
                    continue
                while True:
                    try:
                        effects += self.monitor.ingest(partial, self.clock())
                        break
                    except UnknownVersion as exc:
                        await self._prepare(exc.version)
                    except Exception:  # a malformed partial must not stop the coordinator
                        log.exception("drift partial %s skipped", partial.get("id"))
                        self.bad_partials += 1
                        break
            await self._publish(effects, write, table)
            return effects

    async def tick(self, write: Write, table: MutableMapping) -> Effects:
        """Close idle windows (and what the watermark passed); publish."""
        if self.lock.locked():  # a merge (or a calibration) is under way: next tick
            return Effects()
        async with self.lock:
            if not self.active:
                return Effects()
            try:
                effects = self.monitor.tick(self.clock())
            except Exception:  # never let the timer take the app down
                log.exception("drift tick failed")
                return Effects()
            await self._publish(effects, write, table)
            return effects

    async def _publish(self, effects: Effects, write: Write, table) -> None:
        for window in effects.windows:
            window["worker_id"] = self.settings.worker_id
        if self.reports is not None:
            self._queue_reports(effects)
        for alert in effects.alerts:  # the alert is the window's record
            alert.update(next(w for w in effects.windows if w["id"] == alert["id"]))
        topics = self.settings.topics
        alerts = {a["id"]: a for a in effects.alerts}
        key = self.settings.worker_id.encode()  # one partition per group: records stay in order
        messages = [
            (topics.windows, key, orjson.dumps(alerts.get(w["id"], w), option=JSON_OPTIONS))
            for w in effects.windows
        ]
        messages += [
            (topics.alerts, key, orjson.dumps(a, option=JSON_OPTIONS)) for a in alerts.values()
        ]
        attempt = 0
        while messages:  # outputs first: a crash now re-tests the window, never loses it
            try:
                await write(messages)
                break
            except Exception as exc:
                attempt += 1
                self.alert_write_retries += 1
                wait = min(2.0**attempt, 30.0)
                log.error(
                    "writing %d drift outputs failed (%r); retrying in %.0f s",
                    len(messages),
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
        for key, record in effects.state.items():
            if record is None:
                table.pop(key, None)
            else:
                table[key] = orjson.dumps(record, option=JSON_OPTIONS)
        if self.flush is not None and effects.windows:
            # The table's changelog on the broker now, not at the next commit: a window tested
            # and then restored as untested would be tested (and alerted) twice.
            await self.flush()
        tested = [w for w in effects.windows if w["tested"]]
        if tested:
            self.last_tested_at = tested[-1]["closed_at"]

    def _queue_reports(self, effects: Effects) -> None:
        """Hand the windows' rows to the report writer: a queue append, no disk; whatever goes
        wrong costs a report, never the windows' records."""
        drifted = {a["id"] for a in effects.alerts}
        for record in effects.windows:
            rows = effects.report_rows.get(record["id"])
            reference = self.frames.get(record["model_version"])
            if rows is None or reference is None:
                continue
            try:
                if record["id"] in drifted:
                    record["report"] = self.reports.submit(record, reference, rows)
                else:
                    self.reports.window(record, reference, rows)
            except Exception:
                log.exception("queueing the report of window %s failed", record.get("id"))

    # --- model versions ----------------------------------------------------------------------
    async def _prepare(self, version: str) -> None:
        """Load and calibrate ``version``'s reference (retrying while MLflow is away), then
        let the monitor count its partials."""
        if version in self.monitor.versions:
            return
        model = self.models.get(version)
        while model is None:
            try:
                reference, rows = await self._reference(version)
                frame = reference_frame(reference, rows)
                model = await asyncio.to_thread(self._calibrated, version, frame)
                self.models[version] = model
                self.frames[version] = frame
            except Exception as exc:
                log.warning(
                    "drift monitor cannot prepare model version %s yet (%s); retrying in %.0f s",
                    version,
                    str(exc)[:200],
                    self.retry_seconds,
                )
                await asyncio.sleep(self.retry_seconds)
        self.monitor.add_version(model, self.clock())

    async def _reference(self, version: str) -> tuple[dict, pd.DataFrame]:
        champion = self.champion()
        if champion is not None and str(champion.version) == version:
            return champion.reference, champion.reference_rows
        return await asyncio.to_thread(self._load, self.settings, version)

    def _calibrated(self, version: str, frame: pd.DataFrame):
        """``prepare`` with a disk cache: the bootstrap takes seconds; its result depends only
        on the reference rows and the drift settings."""
        path = self._cache_path(version, frame)
        saved = None
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = None
        started = time.perf_counter()
        model = prepare(version, frame, self.config, saved)
        if saved is None:
            log.warning(
                "calibrated model version %s in %.1f s", version, time.perf_counter() - started
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # replicas may share the folder
            tmp.write_text(json.dumps(model.calibration.to_dict()))
            tmp.replace(path)
        return model

    def _cache_path(self, version: str, frame: pd.DataFrame) -> Path:
        digest = hashlib.sha256()
        digest.update(json.dumps(self.config.calibration_key(), sort_keys=True).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        name = f"{self.settings.model_name}-v{version}-{digest.hexdigest()[:16]}.json"
        return self.settings.runs_dir / "calibration" / name


def _decode(value: bytes | None) -> dict[str, Any] | None:
    try:
        partial = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        log.error("a drift partial is not JSON: skipped")
        return None
    if not isinstance(partial, dict) or not ("model_version" in partial or "progress" in partial):
        log.error("a drift partial has neither a model_version nor progress: skipped")
        return None
    return partial


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)
