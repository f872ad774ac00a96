"""The drift monitor: event batches in, tested windows and alerts out, each effect once.

One ``DriftMonitor`` merges the events of every worker (its caller feeds it the per-batch
messages all workers send; ``partial`` below). For each model version it keeps a
``WindowBook`` (the window lifecycle), a calibrated ``Detector`` and the reference; a batch
scored by version v is counted in v's windows only, so a champion swap never mixes two models'
predictions in one window, and v's windows are tested against v's reference.

It also keeps, per input partition, the seq of its latest event and the workers' PROGRESS
reports (the next offset whose outcome is written, and the partition's log end then). The
WATERMARK, the lowest latest seq over the partitions that hold it, closes every window the feed
has moved past. Progress decides, never the wall clock while data waits: a partition with data
still on the broker (read < end) always holds the watermark, however long it has been quiet (a
worker catching up on a backlog reads partitions unevenly); only a partition that is caught up
and quiet for ``idle_seconds`` stops holding it, and a window closes ``idle`` only while every
partition is caught up (the feed really went quiet). ``tick`` does the idle part; call it every
second or so. ``horizon`` tells the workers how far ahead of the watermark they may read: they
pause partitions that run further ahead (watermark alignment) so the open windows stay few.

Its state is a set of records (``changes``) a caller saves in a table and hands back to
``restore`` after a restart: open windows' counts, tested windows' markers (so events read
again are skipped), partitions and floors.

A partial is a dict (JSON-able)::

    {"model_version": "3",
     "events": {"partition": [...], "position": [...], "seq": [...],
                <feature>: [...], "predicted": [...], "confidence": [...], "label": [...]},
     "rejects": {"partition": [...], "position": [...], "seq": [...], "field": [...],
                 "reason": [...]},
     "progress": {"<partition>": [read, end], ...}}

``progress`` (optional; a message may hold only it, without a model version) says, per input
partition, the next offset whose outcome (and partial) is written and the log end seen then.

``position`` is ``windows.position(offset, index in the message)``; a reject's ``seq`` is -1
when unknown (it is then not windowed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from drift.calibration import CODE_VERSION, FORMAT_VERSION, Calibration, size_grid
from drift.counts import CONFIDENCE_COLUMN, LABEL_COLUMN, PREDICTED_COLUMN, Counts, Layout
from drift.detector import SCALES, Detector, Verdict
from drift.family import Family
from drift.windows import RECORD_SCHEMA, Events, Window, WindowBook

STATE_PREFIX = "w/"
log = logging.getLogger(__name__)


class UnknownVersion(Exception):
    """A partial of a model version the monitor has no reference for: prepare it first."""

    def __init__(self, version: str):
        super().__init__(f"no reference for model version {version}")
        self.version = version


@dataclass(frozen=True)
class MonitorConfig:
    """How windows are cut, when they close, and how they are tested."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    nullable: tuple[str, ...] = ()
    window_events: int = 500
    scales: tuple[int, ...] = SCALES
    min_events: int = 50
    idle_seconds: float = 30.0
    max_open: int = 1024
    partitions: int = 1  # input partitions expected before any has delivered
    false_alarms_per_million: float = 1.0
    # The bootstrap's own noise (its thresholds vary by about 0.1 decade between runs) spreads
    # the realized false-alarm rate over references: at the full budget the worst decile of
    # references measured 1.4-1.8 alarms per million. The calibration aims at budget / margin.
    calibration_margin: float = 2.0
    calibration_windows: int = 4000
    calibration_references: int = 40
    reference_quantile: float = 0.9
    method: str = "joint"
    n_bins: int = 10
    seed: int = 42

    @property
    def alpha(self) -> float:
        """False-alarm probability per window and scale the calibration aims at: a window
        closes every W events, the budget is split over the scales, less the margin."""
        budget = self.false_alarms_per_million * 1e-6 * self.window_events / len(self.scales)
        return budget / self.calibration_margin

    def calibration_key(self) -> dict[str, Any]:
        """What a calibration depends on (besides the reference rows): its cache key, with the
        code and format version of the calibration (a saved one of other code is not reused)."""
        keys = (
            "calibration_margin",
            "numeric",
            "categorical",
            "nullable",
            "window_events",
            "scales",
            "min_events",
            "false_alarms_per_million",
            "calibration_windows",
            "calibration_references",
            "reference_quantile",
            "method",
            "n_bins",
            "seed",
        )
        key = {k: getattr(self, k) for k in keys}
        return {**key, "calibration_code": CODE_VERSION, "calibration_format": FORMAT_VERSION}


@dataclass
class VersionModel:
    """What testing one model version's windows needs; built by ``prepare`` (slow)."""

    version: str
    layout: Layout
    family: Family
    calibration: Calibration
    detector: Detector


def prepare(
    version: str,
    reference: pd.DataFrame,
    config: MonitorConfig,
    calibration: Mapping[str, Any] | None = None,
) -> VersionModel:
    """Layout, family and calibrated detector of a version's reference rows (features,
    ``predicted``, ``confidence``, ``label``). ``calibration``: a saved ``Calibration.to_dict``
    of the same rows and config, to skip the bootstrap (seconds)."""
    layout = Layout.from_rows(
        reference, config.numeric, config.categorical, _classes(reference), config.n_bins
    )
    counts = Counts.of(reference, layout)
    has_labels = LABEL_COLUMN in reference and reference[LABEL_COLUMN].notna().any()
    family = Family(layout, counts, nullable=config.nullable, labels=bool(has_labels))
    if calibration is not None:
        cal = Calibration.from_dict(dict(calibration))
    else:
        codes, confidence = layout.encode(reference)
        cal = Calibration.fit(
            family,
            codes,
            confidence,
            sizes=size_grid(config.window_events, config.scales, config.min_events),
            alpha=config.alpha,
            n_windows=config.calibration_windows,
            n_references=config.calibration_references,
            reference_quantile=config.reference_quantile,
            method=config.method,
            seed=config.seed,
        )
    detector = Detector(family, cal, config.scales, config.min_events)
    return VersionModel(str(version), layout, family, cal, detector)


def _classes(reference: pd.DataFrame) -> list[str]:
    classes = reference.attrs.get("classes")
    if classes:
        return [str(c) for c in classes]
    return sorted(str(c) for c in reference[PREDICTED_COLUMN].dropna().unique())


@dataclass
class Effects:
    """What a call produced: windows tested (every closed window, in order), alerts (the
    drifted ones), raw rows for their reports, and the state records that changed."""

    windows: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    report_rows: dict[str, pd.DataFrame] = field(default_factory=dict)  # window id -> rows
    state: dict[str, Any] = field(default_factory=dict)  # table key -> record (None: delete)

    def __iadd__(self, other: Effects) -> Effects:
        self.windows += other.windows
        self.alerts += other.alerts
        self.report_rows.update(other.report_rows)
        self.state.update(other.state)
        return self


@dataclass
class _Skipped:
    """A window of an unpreparable version: only counted, to be reported untested."""

    n: int = 0
    rejected: int = 0
    opened_at: float = 0.0
    last_event_at: float = 0.0


@dataclass
class _Partition:
    position: int = -1
    seq: int = -1
    last_event_at: float = 0.0
    read: int = -1  # next offset whose outcome is written (-1: no progress report yet)
    end: int = -1  # the partition's log end at that report (-1: unknown)

    @property
    def pending(self) -> bool:
        """Events of this partition still wait on the broker."""
        return self.end >= 0 and self.read < self.end


class DriftMonitor:
    """Merges partials into windows per model version and tests every closed window."""

    def __init__(self, config: MonitorConfig, now: float = 0.0):
        self.config = config
        self.versions: dict[str, VersionModel] = {}
        self.books: dict[str, WindowBook] = {}
        self.partitions = {p: _Partition(last_event_at=now) for p in range(config.partitions)}
        self.floors: dict[int, int] = {}
        self.latest_version: str | None = None
        self.windows_tested = 0
        self.windows_untested = 0
        self.alerts_total = 0
        self.unwindowed_rejects = 0
        self.latest: dict[str, Any] | None = None  # the last tested window's record
        self._saved: dict[str, dict[int, dict[str, Any]]] = {}  # restored, version not ready
        # Versions that could not be prepared (kind, detail): their partials are counted per
        # window only and their windows reported untested, so they never hold the others up.
        self.unprepared: dict[str, tuple[str, str]] = {}
        self._skipped: dict[str, dict[int, _Skipped]] = {}
        self.partials_skipped: dict[str, int] = {}  # kind -> partials of unprepared versions

    # --- versions ----------------------------------------------------------------------------
    def add_version(self, model: VersionModel, now: float = 0.0) -> None:
        """Start testing ``model.version``'s windows (restoring any saved ones; ``now`` restarts
        their idle clocks)."""
        if model.version in self.books:
            return
        c = self.config
        book = WindowBook(model.layout, c.window_events, max_open=c.max_open)
        saved = self._saved.pop(model.version, None)
        if saved:
            book.restore(saved, now)
        self.versions[model.version] = model
        self.books[model.version] = book
        self.latest_version = max(self.books, key=version_order)
        self.unprepared.pop(model.version, None)  # recovered: counted in full from now on

    def mark_unprepared(self, version: str, kind: str, detail: str) -> None:
        """``version`` cannot be prepared (``kind``: a short label, ``detail``: why): count its
        partials per window and report those windows untested, instead of waiting for it."""
        if version not in self.versions:
            self.unprepared[str(version)] = (kind, detail[:300])

    def saved_versions(self) -> list[str]:
        """Versions with restored windows but no ``add_version`` yet."""
        return sorted(self._saved)

    # --- input -------------------------------------------------------------------------------
    def ingest(self, partial: Mapping[str, Any], now: float) -> Effects:
        """Count one partial; return the effects of the windows it (or the watermark) closed.
        Raises ``UnknownVersion`` (changing nothing) when its version is not prepared."""
        if partial.get("model_version") is not None:
            version = str(partial["model_version"])
            model = self.versions.get(version)
            if model is None and version in self.unprepared:
                self._skip(version, partial, now)
            elif model is None:
                raise UnknownVersion(version)
            else:
                self._count(version, model, partial, now)
        self.progress(partial.get("progress") or {})
        return self._advance(now)

    def _count(self, version: str, model: VersionModel, partial: Mapping[str, Any], now: float):
        events = self._events(partial, model)
        self._track(events, now)
        self.unwindowed_rejects += int((events.reject_seq < 0).sum())
        self.books[version].add(events, self.floors, now)

    def _skip(self, version: str, partial: Mapping[str, Any], now: float) -> None:
        """A partial of an unprepared version: its seqs still move the watermark (the other
        versions' windows close as they would); its windows get counts, no test."""
        ev, rej = partial.get("events") or {}, partial.get("rejects") or {}
        kind = self.unprepared[version][0]
        self.partials_skipped[kind] = self.partials_skipped.get(kind, 0) + 1
        parts = [*ev.get("partition", []), *rej.get("partition", [])]
        positions = [*ev.get("position", []), *rej.get("position", [])]
        seqs = [*ev.get("seq", []), *rej.get("seq", [])]
        seen = Events(  # positions only: what the watermark needs
            np.asarray(parts, np.int64),
            np.asarray(positions, np.int64),
            np.asarray(seqs, np.int64),
            np.zeros((len(seqs), 0), np.int64),
            np.zeros(len(seqs)),
        )
        self._track(seen, now)
        windows = self._skipped.setdefault(version, {})
        valid = np.arange(len(seqs)) < len(ev.get("seq", []))
        known = seen.seq >= 0
        for key in np.unique(seen.seq[known] // self.config.window_events).tolist():
            in_key = known & (seen.seq // self.config.window_events == key)
            w = windows.setdefault(int(key), _Skipped(opened_at=now))
            w.last_event_at = now
            w.n += int((in_key & valid).sum())
            w.rejected += int((in_key & ~valid).sum())

    def progress(self, report: Mapping[Any, Sequence[int]]) -> None:
        """Record the workers' progress: partition -> (next offset written, log end)."""
        for p, (read, end) in report.items():
            state = self.partitions.setdefault(int(p), _Partition())
            state.read, state.end = int(read), int(end)

    def data_pending(self) -> bool:
        """True while some partition has events on the broker that no partial counted yet."""
        return any(s.pending for s in self.partitions.values())

    def horizon(self, now: float) -> int | None:
        """The first seq of the lowest window still open (or None: none is): workers may read
        a quarter of ``max_open * window_events`` past it before they pause a partition."""
        keys = [min(b.open) for b in self.books.values() if b.open]
        if keys:
            return min(keys) * self.config.window_events
        watermark = self.watermark(now)
        return None if watermark is None else max(watermark, 0)

    def tick(self, now: float) -> Effects:
        """Close idle windows once no data waits anywhere (and whatever the watermark passed);
        retire old versions."""
        if not self.data_pending():
            for book in self.books.values():
                book.close_idle(now, self.config.idle_seconds)
        effects = self._advance(now)
        effects.state.update(self._retire())
        return effects

    def _events(self, partial: Mapping[str, Any], model: VersionModel) -> Events:
        ev = partial.get("events") or {}
        columns = [
            *self.config.numeric,
            *self.config.categorical,
            PREDICTED_COLUMN,
            CONFIDENCE_COLUMN,
            LABEL_COLUMN,
        ]
        frame = pd.DataFrame({c: ev[c] for c in columns if c in ev})
        for c in self.config.numeric:
            if c in frame:
                frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
        rejects = pd.DataFrame(partial.get("rejects") or {})
        keep = [*self.config.numeric, *self.config.categorical, PREDICTED_COLUMN]
        return Events.of(
            frame,
            model.layout,
            ev.get("partition", []),
            ev.get("position", []),
            ev.get("seq", []),
            rejects if len(rejects) else None,
            keep,
        )

    def _track(self, events: Events, now: float) -> None:
        seen = set(events.partition.tolist()) | set(events.reject_partition.tolist())
        if seen and self.watermark(now) is None:
            # The feed (re)starts after a quiet spell: every partition gets ``idle_seconds`` to
            # show up before the ones that came first may move the watermark on their own.
            for state in self.partitions.values():
                state.last_event_at = now
        latest = events.latest_seq()
        for p in seen:
            state = self.partitions.setdefault(int(p), _Partition())
            state.last_event_at = now
            if p in latest and latest[p][0] >= state.position:
                state.position, state.seq = latest[p]

    def watermark(self, now: float) -> int | None:
        """The lowest latest seq of the partitions that hold it: those with data still on the
        broker, and those active in the last ``idle_seconds``."""
        holding = [
            s.seq
            for s in self.partitions.values()
            if s.pending or now - s.last_event_at < self.config.idle_seconds
        ]
        return min(holding) if holding else None

    # --- closing and testing -----------------------------------------------------------------
    def _advance(self, now: float) -> Effects:
        effects = Effects()
        watermark = self.watermark(now)
        for version, book in self.books.items():
            if watermark is not None and watermark >= 0:
                book.close_through(watermark, now)
            for window in book.ready():
                effects += self._test(version, book, window)
            for p, floor in book.floor_updates.items():
                self.floors[p] = max(self.floors.get(p, 0), floor)
            if book.floor_updates:
                book.floor_updates.clear()
                effects.state["floors"] = dict(self.floors)
            for key, record in book.changes().items():
                effects.state[f"{STATE_PREFIX}{version}/{key}"] = record
        effects.state["partitions"] = {
            str(p): [s.position, s.seq, s.last_event_at, s.read, s.end]
            for p, s in self.partitions.items()
        }
        effects.windows += self._close_skipped(watermark, now)
        return effects

    def _close_skipped(self, watermark: int | None, now: float) -> list[dict[str, Any]]:
        """Untested records of unprepared versions' windows the watermark passed (or, once no
        data waits, that went idle): a window is reported once all its events could come."""
        out = []
        quiet = not self.data_pending()
        w_events = self.config.window_events
        for version, windows in self._skipped.items():
            for key in sorted(windows):
                w = windows[key]
                if watermark is not None and watermark >= (key + 1) * w_events - 1:
                    by = "watermark"
                elif quiet and now - w.last_event_at >= self.config.idle_seconds:
                    by = "idle"
                else:
                    continue
                del windows[key]
                out.append(self._skipped_record(version, key, w, by, now))
        self.windows_untested += len(out)
        return out

    def _skipped_record(self, version: str, key: int, w: _Skipped, by: str, now: float):
        kind, detail = self.unprepared.get(version, ("recovered", "prepared late"))
        start, end = key * self.config.window_events, (key + 1) * self.config.window_events
        return {
            "id": f"{version}:{key}:unprepared",
            "model_version": version,
            "window": key,
            "generation": 0,
            "seq_start": start,
            "seq_end": end,
            "n": w.n,
            "rejected": w.rejected,
            "missing": max(end - start - w.n - w.rejected, 0),
            "closed_by": by,
            "opened_at": w.opened_at,
            "last_event_at": w.last_event_at,
            "closed_at": now,
            "tested": False,
            "untested_reason": f"model version {version} cannot be prepared ({kind}): {detail}",
            "unprepared": kind,
            "drifted": False,
            "drifted_features": [],
            "threshold": None,
            "feature_evidence": {},
            "scales": {},
            "findings": [],
            "effects": {},
            "calibration": {},
        }

    def _test(self, version: str, book: WindowBook, window: Window) -> Effects:
        model = self.versions[version]
        scales = model.detector.scales
        history = book.predecessors(window.key, max(scales) - 1)
        try:
            verdict = model.detector.test([*history, window.counts])
        except Exception as exc:  # a bug must cost one verdict, not the window's record
            log.exception("testing window %s of model version %s failed", window.key, version)
            verdict = Verdict(False, reason=f"test failed: {exc!r}"[:200])
        record = self._record(version, window, verdict, model)
        effects = Effects(windows=[record])
        if verdict.tested:
            self.windows_tested += 1
            self.latest = record
            rows = window.rows_frame()
            if rows is not None:  # for reports: every tested window's raw rows
                effects.report_rows[record["id"]] = rows
        else:
            self.windows_untested += 1
        if verdict.drifted:
            self.alerts_total += 1
            effects.alerts.append({"type": "drift_alert", **record})
        return effects

    def _record(self, version: str, window: Window, verdict: Verdict, model: VersionModel):
        start, end = window.seq_range(self.config.window_events)
        scale1 = verdict.scales.get(1)
        return {
            "id": f"{version}:{window.key}:{window.generation}",
            "model_version": version,
            "window": window.key,
            "generation": window.generation,
            "seq_start": start,
            "seq_end": end,
            "n": window.counts.n,
            "rejected": window.counts.n_rejected,
            # Seqs of the window never counted: lost before they could be windowed (dead-lettered
            # without a readable seq), or never sent (the feed stopped inside the window).
            "missing": max(end - start - window.size, 0),
            "closed_by": window.closed_by,
            "opened_at": window.opened_at,
            "last_event_at": window.last_event_at,
            "closed_at": window.closed_at,
            "tested": verdict.tested,
            "untested_reason": verdict.reason or None,
            "drifted": verdict.drifted,
            "drifted_features": verdict.drifted_features,
            "threshold": scale1.threshold if scale1 else None,
            "feature_evidence": verdict.feature_evidence(1),
            "scales": verdict.to_dict()["scales"],
            "findings": [f.__dict__ for f in verdict.findings],
            "effects": model.family.effects(window.counts) if verdict.tested else {},
            "calibration": {
                "alpha_per_scale": model.calibration.alpha,
                "method": model.calibration.method,
                **model.calibration.meta,
            },
        }

    def _retire(self) -> dict[str, Any]:
        """Drop the books of older versions once all their windows are tested."""
        out: dict[str, Any] = {}
        for version in [v for v in self.books if v != self.latest_version]:
            book = self.books[version]
            if book.open or book.pending:
                continue
            for key in book.markers:
                out[f"{STATE_PREFIX}{version}/{key}"] = None
            del self.books[version]
            del self.versions[version]
        return out

    # --- saved state -------------------------------------------------------------------------
    def restore(self, records: Mapping[str, Any], now: float) -> int:
        """Reset to the saved ``records`` (the table, after a restart or a new assignment):
        returns the number of windows restored. Versions not prepared yet are kept aside
        until ``add_version``."""
        self._saved = {}
        windows = 0
        for key, record in records.items():
            if record is None:
                continue
            if key == "floors":
                self.floors = {int(p): int(v) for p, v in record.items()}
            elif key == "partitions":
                for p, (pos, seq, _, *progress) in record.items():
                    read, end = progress or (-1, -1)  # saved before progress reports
                    self.partitions[int(p)] = _Partition(int(pos), int(seq), now, read, end)
            elif key.startswith(STATE_PREFIX):
                # No "schema": written before the field, in schema 1's layout.
                schema = record.get("schema", 1) if isinstance(record, dict) else None
                if schema != RECORD_SCHEMA:  # another release's: misread, it would crash or lie
                    log.warning(
                        "window record %s skipped on restore: schema %r, this release reads %d "
                        "(its window starts over)",
                        key,
                        schema,
                        RECORD_SCHEMA,
                    )
                    continue
                version, _, k = key[len(STATE_PREFIX) :].rpartition("/")
                self._saved.setdefault(version, {})[int(k)] = record
                windows += 1
        for version in list(self.books):
            book = self.books[version]
            book.restore(self._saved.pop(version, {}), now)
        return windows


def version_order(version: str) -> tuple[int, str]:
    """Registry versions are numbers: "10" comes after "9".

    >>> sorted(["10", "9", "x"], key=version_order)
    ['x', '9', '10']
    """
    return (int(version), version) if version.isdigit() else (-1, version)


def reference_frame(
    rows: pd.DataFrame,
    classes: Sequence[str],
    label: str | None,
    features: Sequence[str],
) -> pd.DataFrame:
    """The monitor's view of a model's reference rows: the features, the predicted class and
    its probability (``confidence``) from ``proba_<class>`` columns, and the true label.

    >>> rows = pd.DataFrame({"x": [1.0], "proba_a": [0.3], "proba_b": [0.7], "y": ["a"]})
    >>> reference_frame(rows, ["a", "b"], "y", ["x"]).to_dict("records")
    [{'x': 1.0, 'predicted': 'b', 'confidence': 0.7, 'label': 'a'}]
    """
    proba = rows[[f"proba_{c}" for c in classes]].to_numpy(dtype=float)
    out = rows[list(features)].copy()
    out[PREDICTED_COLUMN] = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    out[CONFIDENCE_COLUMN] = proba.max(axis=1)
    out[LABEL_COLUMN] = rows[label].to_numpy(dtype=object) if label and label in rows else None
    out.attrs["classes"] = list(classes)
    return out.reset_index(drop=True)
