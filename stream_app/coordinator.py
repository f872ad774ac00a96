"""The drift coordinator: the drift core (``drift.monitor``) wired to Kafka, a table and MLflow.

Exactly one worker of a group owns the single partition of ``drift.partials.<group>`` and
runs the coordinator; the others leave it inactive. On every assignment the owner rebuilds the
monitor from the changelog-backed table of window states, so windows survive a restart or a
move to another worker; partials read again after a crash are skipped event by event (the
monitor remembers what each window counted).

Each merge or tick produces effects, published in this order: alerts to ``drift.alerts``
(retried until the broker has them), then the table updates, then metrics and reports; the
agent acks its partials only after that.

A partial of a model version the monitor has not seen waits while that version is PREPARED in
a background task (never under the lock, never in the rebalance callback): its reference comes
from the worker's champion or MLflow (digest-verified), its calibration from the local cache
(``runs/calibration``), else from the version itself in MLflow (stored by training for the
default settings), else it is computed in a thread and cached best-effort. Preparation is
bounded: ``attempts`` tries with backoff (about a minute), then the version is UNPREPARABLE:
its partials are acked and only counted, its windows reported untested with the reason, every
other version goes on; a recovery attempt follows every ``recover_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import orjson
import pandas as pd

from drift.calibration import CalibrationFormatError
from drift.monitor import (
    DriftMonitor,
    Effects,
    MonitorConfig,
    VersionModel,
    prepare,
    version_order,
)
from drift.monitor import reference_frame as monitor_frame
from stopdrift_common.calibrations import CalibrationCache, frame_sha256, monitor_options
from stopdrift_common.errors import UserError
from stopdrift_common.registry import UnverifiedArtifacts, load_calibration, load_reference
from stopdrift_common.schema import MODEL_FEATURES, TARGET
from stopdrift_common.settings import Settings
from stream_app.drift_metrics import drift_snapshot

log = logging.getLogger("stopdrift.worker")
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
PREPARE_ATTEMPTS = 5  # with backoff 3, 6, 12, 24 s: a version gets about a minute
RECOVER_SECONDS = 300.0  # then one more try every five minutes

# write([(topic, key, value), ...]) returns once the broker has every message
Write = Callable[[list[tuple[str, bytes | None, bytes]]], Awaitable[None]]
# load_calibration(settings, version, key, reference_sha256, version_info) -> dict | None
Stored = Callable[..., dict[str, Any] | None]


def monitor_config(settings: Settings) -> MonitorConfig:
    """The drift core's configuration from the worker's settings."""
    return MonitorConfig(**monitor_options(settings))


def reference_frame(reference: dict[str, Any], rows: pd.DataFrame) -> pd.DataFrame:
    """The monitor's view of a registered version's reference rows."""
    return monitor_frame(rows, [str(c) for c in reference["classes"]], TARGET, MODEL_FEATURES)


def failure_kind(exc: BaseException) -> str:
    """A short, bounded label for why a version could not be prepared (a metric label)."""
    if isinstance(exc, UnverifiedArtifacts):
        return exc.reason  # digest_missing, digest_mismatch
    text = f"{getattr(exc, 'error_code', '')} {exc}"
    if "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower():
        return "not_found"
    if isinstance(exc, UserError):
        return "no_reference"
    if isinstance(exc, OSError | TimeoutError) or "Max retries" in text or "onnection" in text:
        return "unavailable"
    return "error"


class Coordinator:
    """Merges every worker's partials, tests closed windows, publishes alerts.

    ``champion``: returns the worker's current champion (or None), whose reference saves a trip
    to MLflow; ``reports``: writes a drifted window's Evidently report (may be None); ``load``
    and ``stored``: a version's reference and stored calibration from MLflow."""

    def __init__(
        self,
        settings: Settings,
        champion: Callable[[], Any] = lambda: None,
        reports: Any = None,
        load: Callable[[Settings, str], tuple[dict, pd.DataFrame]] = load_reference,
        retry_seconds: float = 3.0,
        clock: Callable[[], float] = time.time,
        flush: Callable[[], Awaitable[None]] | None = None,
        stored: Stored = load_calibration,
        attempts: int = PREPARE_ATTEMPTS,
        recover_seconds: float = RECOVER_SECONDS,
    ):
        self.settings = settings
        self.config = monitor_config(settings)
        self.clock = clock
        self.flush = flush  # sends the table's changelog writes (the app's producer.flush)
        self.monitor = DriftMonitor(self.config, now=clock())
        self.champion = champion
        self.reports = reports
        self._load = load
        self._stored = stored
        self.retry_seconds = retry_seconds
        self.attempts = attempts
        self.recover_seconds = recover_seconds
        self.cache = CalibrationCache(settings.runs_dir / "calibration", settings.model_name)
        self.active = False
        self.lock = asyncio.Lock()
        # One thread, always the same, for the drift core (as the scorer has its own): the
        # monitor is touched by one thread at a time, under ``lock``.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift")
        self.horizon: int | None = None  # first seq of the lowest open window, for alignment
        self.models: dict[str, VersionModel] = {}  # version -> calibrated model (kept)
        self.frames: dict[str, pd.DataFrame] = {}  # version -> reference frame (reports)
        self.unpreparable: dict[str, tuple[str, str]] = {}  # version -> (kind, detail)
        self._recover_at: dict[str, float] = {}  # unpreparable version -> next try (clock)
        self._tasks: dict[str, asyncio.Task] = {}  # version -> its preparation
        self.calibrations_computed = 0
        self.bad_partials = 0
        self.alert_write_retries = 0
        self.last_tested_at: float | None = None  # close time of the last tested window

    # --- ownership ---------------------------------------------------------------------------
    async def assigned(self, owns: bool, saved: dict[Any, bytes]) -> None:
        """After each rebalance: restore from the table if this worker owns the partials
        partition, else stand down (another worker coordinates). Never waits on MLflow or a
        calibration (the rebalance waits on this): versions not prepared yet are scheduled."""
        async with self.lock:
            self.monitor = DriftMonitor(self.config, now=self.clock())
            self.active = owns
            if not owns:
                return
            records = {_text(k): orjson.loads(v) for k, v in saved.items() if v}
            restored = self.monitor.restore(records, self.clock())
            for version in self.monitor.saved_versions():
                if not self._sync(version):
                    self._schedule(version, self.attempts)
            if self.models:
                latest = max(self.models, key=version_order)
                if latest not in self.monitor.versions:
                    self.monitor.add_version(self.models[latest], self.clock())
            log.warning("drift coordinator active: restored %d window records", restored)

    # --- work --------------------------------------------------------------------------------
    async def merge(self, values: list[bytes], write: Write, table: MutableMapping) -> Effects:
        """Merge a batch of partials; publish what they closed. A partial of a version not
        prepared yet waits for it without the lock (what came before it is published first);
        preparation is bounded, so a version that cannot be prepared delays, never stops."""
        partials = []
        for value in values:
            partial = _decode(value)
            if partial is None:
                self.bad_partials += 1
            else:
                partials.append(partial)
        total, done = Effects(), 0
        while done < len(partials):
            waiting = _version(partials[done])
            if waiting is not None and not self._ready_or_unpreparable(waiting):
                await self._wait_for(waiting)
            async with self.lock:
                if not self.active:  # stood down meanwhile: the new owner reads them again
                    return total
                run = []
                while done < len(partials):
                    version = _version(partials[done])
                    if version is not None and not self._sync(version):
                        break  # a version to wait for, without the lock
                    run.append(partials[done])
                    done += 1
                effects = await self._off_loop(self._ingest_all, run)
                await self._publish(effects, write, table)
            total += effects
        return total

    async def _off_loop(self, work: Callable[..., Effects], *args: Any) -> Effects:
        """Run the drift core's work (counting, testing: tens of microseconds per event) on the
        coordinator's own thread, so Faust's event loop keeps fetching and acking meanwhile;
        then note the horizon the workers align on."""
        loop = asyncio.get_running_loop()
        effects = await loop.run_in_executor(self._thread, work, *args)
        self.horizon = self.monitor.horizon(self.clock())
        return effects

    def _ingest_all(self, partials: list[dict[str, Any]]) -> Effects:
        effects = Effects()
        for partial in partials:
            effects += self._ingest(partial)
        return effects

    def _ingest(self, partial: dict[str, Any]) -> Effects:
        try:
            return self.monitor.ingest(partial, self.clock())
        except Exception:  # a malformed partial must not stop the coordinator
            log.exception("drift partial %s skipped", partial.get("id"))
            self.bad_partials += 1
            return Effects()

    async def tick(self, write: Write, table: MutableMapping) -> Effects:
        """Close idle windows (and what the watermark passed); publish. Also schedules the
        recovery attempts of unpreparable versions."""
        if self.active:
            self._schedule_recoveries()
        if self.lock.locked():  # a merge (or a calibration) is under way: next tick
            return Effects()
        async with self.lock:
            if not self.active:
                return Effects()
            try:
                effects = await self._off_loop(self.monitor.tick, self.clock())
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
        # /metrics reads this from its HTTP thread: a copy swapped in whole, never the live state.
        self.metrics_snapshot = drift_snapshot(self)

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
    def _sync(self, version: str) -> bool:
        """Tell the monitor what is known of ``version`` (prepared, or unpreparable); True once
        it can take the version's partials. Call with the lock held."""
        if version in self.monitor.versions or version in self.monitor.unprepared:
            return True
        if version in self.models:
            self.monitor.add_version(self.models[version], self.clock())
            return True
        if version in self.unpreparable:
            self.monitor.mark_unprepared(version, *self.unpreparable[version])
            return True
        return False

    def _ready_or_unpreparable(self, version: str) -> bool:
        return version in self.models or version in self.unpreparable

    async def _wait_for(self, version: str) -> None:
        """Until ``version`` is prepared or known unpreparable (bounded by ``attempts``)."""
        task = self._schedule(version, self.attempts)
        await asyncio.shield(task)  # a merge cancelled (shutdown) leaves the task to finish

    def _schedule(self, version: str, attempts: int) -> asyncio.Task:
        task = self._tasks.get(version)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._prepare(version, attempts))
            self._tasks[version] = task
        return task

    def _schedule_recoveries(self) -> None:
        """One more try for each unpreparable version whose time came (the registry may have
        come back, or the version been fixed)."""
        now = self.clock()
        for version, at in list(self._recover_at.items()):
            if now >= at:
                self._recover_at[version] = now + self.recover_seconds
                self._schedule(version, 1)

    async def _prepare(self, version: str, attempts: int) -> None:
        """Load and calibrate ``version``'s reference, trying ``attempts`` times with backoff,
        and then let the monitor count its partials, or mark it unpreparable. Holds the lock
        only to hand the result over."""
        kind, detail = "error", ""
        for attempt in range(1, attempts + 1):
            try:
                model, frame = await self._build(version)
            except Exception as exc:
                kind, detail = failure_kind(exc), _why(exc)
                wait = min(self.retry_seconds * 2 ** (attempt - 1), 30.0)
                last = attempt == attempts
                log.warning(
                    "drift monitor cannot prepare model version %s (attempt %d/%d, %s: %s)%s",
                    version,
                    attempt,
                    attempts,
                    kind,
                    detail,
                    "" if last else f"; retrying in {wait:.0f} s",
                )
                if not last:
                    await asyncio.sleep(wait)
                continue
            async with self.lock:
                self._prepared(version, model, frame)
            return
        async with self.lock:
            self._give_up(version, kind, detail)

    def _prepared(self, version: str, model: VersionModel, frame: pd.DataFrame) -> None:
        self.models[version] = model
        self.frames[version] = frame
        if self.unpreparable.pop(version, None) is not None:
            log.warning("model version %s prepared after all: its windows are tested", version)
        self._recover_at.pop(version, None)
        if self.active:
            self.monitor.add_version(model, self.clock())

    def _give_up(self, version: str, kind: str, detail: str) -> None:
        if version not in self.unpreparable:
            log.error(
                "model version %s cannot be prepared (%s: %s): its windows are reported "
                "untested; trying again every %.0f s",
                version,
                kind,
                detail,
                self.recover_seconds,
            )
        self.unpreparable[version] = (kind, detail)
        self._recover_at.setdefault(version, self.clock() + self.recover_seconds)
        if self.active:
            self.monitor.mark_unprepared(version, kind, detail)

    async def _build(self, version: str) -> tuple[VersionModel, pd.DataFrame]:
        """The version's model and reference frame; everything slow runs in a thread."""
        champion = self.champion()
        if champion is not None and str(champion.version) == version:
            return await asyncio.to_thread(self._from_champion, version, champion)
        return await asyncio.to_thread(self._from_registry, version)

    def _from_champion(self, version: str, champion: Any) -> tuple[VersionModel, pd.DataFrame]:
        frame = reference_frame(champion.reference, champion.reference_rows)
        tags = getattr(champion, "tags", None)  # None: loaded without them, nothing to look up
        info = None if tags is None else SimpleNamespace(tags=tags, run_id=champion.run_id)
        return self._calibrated(version, frame, info, lookup=tags is not None), frame

    def _from_registry(self, version: str) -> tuple[VersionModel, pd.DataFrame]:
        reference, rows = self._load(self.settings, version)
        frame = reference_frame(reference, rows)
        return self._calibrated(version, frame, None, lookup=True), frame

    def _calibrated(
        self, version: str, frame: pd.DataFrame, info: Any, lookup: bool
    ) -> VersionModel:
        """``prepare`` with a saved calibration when one fits (the local cache, then the one
        stored with the version), else with a new one: computed here (in a thread), kept in
        memory whatever happens to its cache file."""
        key, sha = self.config.calibration_key(), frame_sha256(frame)
        cached = self.cache.read(version, key, sha)
        if cached is not None:
            try:
                return prepare(version, frame, self.config, cached)
            except CalibrationFormatError as exc:
                self.cache.discard(self.cache.path(version, key, sha), str(exc))
        stored = self._stored_calibration(version, key, sha, info) if lookup else None
        if stored is not None:
            try:
                model = prepare(version, frame, self.config, stored)
                log.warning("model version %s: calibration loaded from the registry", version)
                return model
            except CalibrationFormatError as exc:
                log.error("model version %s: stored calibration refused (%s)", version, exc)
        started = time.perf_counter()
        model = prepare(version, frame, self.config)
        self.calibrations_computed += 1
        log.warning(
            "calibrated model version %s in %.1f s (none stored for these drift settings)",
            version,
            time.perf_counter() - started,
        )
        self.cache.write(version, key, sha, model.calibration.to_dict())  # best-effort
        return model

    def _stored_calibration(self, version: str, key: dict, sha: str, info: Any) -> dict | None:
        try:
            return self._stored(self.settings, version, key, sha, info)
        except Exception as exc:  # refused or unreachable: computing it is always possible
            log.error("model version %s: no usable stored calibration (%r)", version, exc)
            return None


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


def _version(partial: dict[str, Any]) -> str | None:
    version = partial.get("model_version")
    return None if version is None else str(version)


def _why(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else repr(exc))[:200]
