"""Window lifecycle: events in, closed windows out, none dropped, none counted twice.

Window ``k`` holds the events whose producer sequence number ``seq`` is in
``[k * W, (k + 1) * W)``: the same events whatever partition, batch, worker or speed they came
through. A window closes when the first of these happens:

- ``full``: it holds W events (valid ones and rejected ones that carry a seq); never more: when
  seqs repeat (two producers at once, a restarted producer, a client that always sends the same
  seq) the events past W open the key's next generation, so a window's size never depends on how
  the batches were cut;
- ``watermark``: every partition that holds the watermark has delivered an event at or past its
  last seq (the events it still lacks were lost, e.g. dead-lettered without a readable seq);
  which partitions hold it is the monitor's call (``drift.monitor``: by progress, not time);
- ``idle``: no event for it for ``idle_seconds``, asked for by the monitor only once no data
  waits on the broker (the feed went quiet);
- ``capacity``: more than ``max_open`` windows are open, a safety valve only (the oldest closes
  and is still tested): the workers pause partitions that run ahead long before that.

Closed windows are handed out in index order (``ready``): a window waits until the windows
before it have closed too, so the merged tests of consecutive windows (``detector.py``) see the
same windows whether the stream came live or as a backlog.

Every event is counted at most once, by its position in its partition (``(offset << 10) |
index in its message``): a window remembers, per partition, the position after the last event
it counted (``upto``), and so does its closed marker, so events read again after a worker or
coordinator restart are recognised and skipped. Markers are kept for the last ``keep_markers``
closed windows; older ones leave a per-partition floor behind.

>>> import pandas as pd
>>> from drift.counts import Layout
>>> layout = Layout.from_rows(pd.DataFrame({"x": [1.0, 2.0]}), ["x"], [], ["a"])
>>> book = WindowBook(layout, window_events=3)
>>> frame = pd.DataFrame({"x": [1.0] * 5, "predicted": ["a"] * 5, "confidence": [1.0] * 5})
>>> ev = Events.of(frame, layout, partition=[0] * 5, position=[1, 2, 3, 4, 5],
...                seq=[0, 1, 2, 3, 4])
>>> book.add(ev, floors={}, now=0.0)
5
>>> [(w.key, w.counts.n, w.closed_by) for w in book.ready()]
[(0, 3, 'full')]
>>> book.add(ev, floors={}, now=1.0)  # the same events again: nothing new
0
>>> twice = Events.of(frame.iloc[:2], layout, partition=[1, 1], position=[9, 9], seq=[5, 5])
>>> book.add(twice, floors={}, now=1.0)  # one event delivered twice in a batch: counted once
1
>>> book.close_idle(now=10.0, idle_seconds=5.0); [(w.key, w.counts.n) for w in book.ready()]
[(1, 3)]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from drift.counts import Counts, Layout

# Of the window records ``Window.to_dict`` writes to the coordinator's table: bump it when they
# change, so a restore skips what another release wrote instead of misreading it.
RECORD_SCHEMA = 1

POSITION_BITS = 10  # positions: (offset << 10) | index of the event in its message (< 1024)


def position(offset: Any, index: Any = 0) -> Any:
    """An event's position in its partition: offset, then index inside an array message.

    >>> position(7, 3)
    7171
    """
    return (np.asarray(offset, dtype=np.int64) << POSITION_BITS) | np.asarray(index, np.int64)


@dataclass
class Events:
    """A batch of events for one model version: valid ones (encoded) and rejected ones."""

    partition: np.ndarray
    position: np.ndarray
    seq: np.ndarray
    codes: np.ndarray  # (n, blocks) slots, from Layout.encode
    confidence: np.ndarray
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # raw columns, for reports
    reject_partition: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    reject_position: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    reject_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    reject_field: list[str] = field(default_factory=list)
    reject_reason: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        frame: pd.DataFrame,
        layout: Layout,
        partition: Sequence[int],
        position: Sequence[int],
        seq: Sequence[int],
        rejects: pd.DataFrame | None = None,
        keep_rows: Iterable[str] = (),
    ) -> Events:
        """``frame``: features, ``predicted``, ``confidence``, ``label`` of the valid events;
        ``rejects``: columns ``partition, position, seq, field, reason`` (seq -1: unknown)."""
        codes, confidence = layout.encode(frame)
        out = cls(
            np.asarray(partition, np.int64),
            np.asarray(position, np.int64),
            np.asarray(seq, np.int64),
            codes,
            confidence,
            {c: frame[c].to_numpy() for c in keep_rows if c in frame},
        )
        if rejects is not None and len(rejects):
            out.reject_partition = rejects["partition"].to_numpy(np.int64)
            out.reject_position = rejects["position"].to_numpy(np.int64)
            out.reject_seq = rejects["seq"].to_numpy(np.int64)
            out.reject_field = [str(f) for f in rejects["field"]]
            out.reject_reason = [str(r) for r in rejects["reason"]]
        return out

    def latest_seq(self) -> dict[int, tuple[int, int]]:
        """Per partition, ``(position, seq)`` of its last event with a known seq."""
        part = np.concatenate([self.partition, self.reject_partition])
        pos = np.concatenate([self.position, self.reject_position])
        seq = np.concatenate([self.seq, self.reject_seq])
        out: dict[int, tuple[int, int]] = {}
        known = seq >= 0
        for p in np.unique(part[known]).tolist():
            sel = np.flatnonzero(known & (part == p))
            last = sel[np.argmax(pos[sel])]
            out[int(p)] = (int(pos[last]), int(seq[last]))
        return out


@dataclass
class Window:
    key: int
    generation: int
    counts: Counts
    upto: dict[int, int]  # partition -> position after the last event counted
    opened_at: float
    last_event_at: float
    closed_by: str | None = None  # full, watermark, idle, capacity (None while open)
    closed_at: float | None = None
    rows: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)
    n_rows: int = 0

    @property
    def size(self) -> int:
        """Events in the window: valid and rejected."""
        return self.counts.n + self.counts.n_rejected

    def seq_range(self, window_events: int) -> tuple[int, int]:
        return self.key * window_events, (self.key + 1) * window_events

    def rows_frame(self) -> pd.DataFrame | None:
        """The raw rows kept for the window's report (None when none were kept, e.g. the
        window was restored after a restart)."""
        if not self.rows:
            return None
        return pd.DataFrame({c: np.concatenate([r[c] for r in self.rows]) for c in self.rows[0]})

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RECORD_SCHEMA,
            "generation": self.generation,
            "counts": self.counts.to_dict(),
            "upto": self.upto,
            "opened_at": self.opened_at,
            "last_event_at": self.last_event_at,
            "closed_by": self.closed_by,
            "closed_at": self.closed_at,
        }

    @classmethod
    def from_dict(cls, key: int, d: dict[str, Any], layout: Layout) -> Window:
        return cls(
            key=key,
            generation=int(d["generation"]),
            counts=Counts.from_dict(d["counts"], layout),
            upto={int(p): int(v) for p, v in d["upto"].items()},
            opened_at=float(d["opened_at"]),
            last_event_at=float(d["last_event_at"]),
            closed_by=d.get("closed_by"),
            closed_at=d.get("closed_at"),
        )


class WindowBook:
    """The windows of one model version (see the module docstring).

    Parameters
    ----------
    layout
        Decodes counts from the table (``restore``).
    window_events
        W, the number of sequence numbers per window.
    max_open
        At most this many windows stay open; one more closes the oldest (``capacity``).
    keep_markers
        Tested windows remembered for duplicate detection and the merged tests.
    row_limit
        Raw rows kept per window for its report (None: as many as ``window_events``).
    """

    def __init__(
        self,
        layout: Layout,
        window_events: int,
        max_open: int = 256,
        keep_markers: int = 256,
        row_limit: int | None = None,
    ):
        if window_events < 1:
            raise ValueError(f"window_events must be at least 1, got {window_events}")
        if max_open < 1 or keep_markers < 4:
            raise ValueError("max_open must be at least 1 and keep_markers at least 4")
        self.layout = layout
        self.window_events = window_events
        self.max_open = max_open
        self.keep_markers = keep_markers
        self.row_limit = window_events if row_limit is None else row_limit
        self.open: dict[int, Window] = {}
        # closed, waiting for the windows before them: (key, generation) -> window (a key whose
        # seqs repeat can have several full generations waiting)
        self.pending: dict[tuple[int, int], Window] = {}
        self.markers: OrderedDict[int, Window] = OrderedDict()  # tested (counts kept, no rows)
        self.duplicates = 0  # events skipped as already counted
        self.dirty: set[int] = set()  # keys whose saved state changed (``changes``)
        self.floor_updates: dict[int, int] = {}  # partition -> floor, from dropped markers

    # --- events in ---------------------------------------------------------------------------
    def add(self, events: Events, floors: dict[int, int], now: float) -> int:
        """Count new events (skipping ones already counted); return how many were new.
        Windows that became full move to ``pending``; a late event for a window that closed
        but is not tested yet still joins it while it has room."""
        n_valid = len(events.partition)
        part = np.concatenate([events.partition, events.reject_partition])
        pos = np.concatenate([events.position, events.reject_position])
        seq = np.concatenate([events.seq, events.reject_seq])
        keys = np.where(seq >= 0, seq // self.window_events, -1)
        # One event twice in one batch (a consumer that seeks back re-delivers what it had
        # buffered): the positions below only skip what earlier batches counted.
        first = np.zeros(len(part), dtype=bool)
        first[np.unique(np.stack([part, pos]), axis=1, return_index=True)[1]] = True
        self.duplicates += int((~first & (keys >= 0)).sum())
        keys[~first] = -1
        new = 0
        for key in np.unique(keys[keys >= 0]).tolist():
            sel = np.flatnonzero(keys == key)
            newest = self._newest(key)
            base = newest.upto if newest else {}
            limit = np.array(
                [max(floors.get(p, 0), base.get(p, 0)) for p in part[sel].tolist()], dtype=np.int64
            )
            keep = sel[pos[sel] >= limit]
            self.duplicates += len(sel) - len(keep)
            new += len(keep)
            while len(keep):  # in batch order, at most W per window
                window = self._target(key, now)
                take, keep = np.split(keep, [self.window_events - window.size])
                self._count(window, events, take, part, pos, n_valid, now)
                if window.closed_by is None and window.size >= self.window_events:
                    self._close(key, "full", now)
        while len(self.open) > self.max_open:
            self._close(min(self.open), "capacity", now)
        return new

    def _newest(self, key: int) -> Window | None:
        """The key's newest generation: open, else closed and untested, else tested."""
        if key in self.open:
            return self.open[key]
        waiting = self._pending_of(key)
        return waiting[-1] if waiting else self.markers.get(key)

    def _pending_of(self, key: int) -> list[Window]:
        return [self.pending[k] for k in sorted(self.pending) if k[0] == key]

    def _target(self, key: int, now: float) -> Window:
        """The window the key's next event joins: the open one, else a closed untested one with
        room (a late event), else a new generation (new key, or its seqs were reused)."""
        if key in self.open:
            return self.open[key]
        waiting = self._pending_of(key)
        if waiting and waiting[-1].size < self.window_events:
            return waiting[-1]
        newest = waiting[-1] if waiting else self.markers.get(key)
        window = Window(
            key,
            newest.generation + 1 if newest else 0,
            Counts.empty(self.layout),
            dict(newest.upto) if newest else {},
            now,
            now,
        )
        self.open[key] = window
        return window

    def _count(
        self,
        window: Window,
        events: Events,
        take: np.ndarray,
        part: np.ndarray,
        pos: np.ndarray,
        n_valid: int,
        now: float,
    ) -> None:
        valid = take[take < n_valid]
        if len(valid):
            window.counts = window.counts + Counts.from_codes(
                events.codes[valid], events.confidence[valid], self.layout
            )
            self._keep_rows(window, events, valid)
        rejected = (take[take >= n_valid] - n_valid).tolist()
        if rejected:
            window.counts.add_rejects(
                [events.reject_field[i] for i in rejected],
                [events.reject_reason[i] for i in rejected],
            )
        taken_part, taken_pos = part[take], pos[take]
        for p in np.unique(taken_part).tolist():
            last = int(taken_pos[taken_part == p].max())
            window.upto[p] = max(window.upto.get(p, 0), last + 1)
        window.last_event_at = now
        self.dirty.add(window.key)

    def _keep_rows(self, window: Window, events: Events, valid: np.ndarray) -> None:
        room = self.row_limit - window.n_rows
        if room <= 0 or not events.rows:
            return
        take = valid[:room]
        window.rows.append({c: a[take] for c, a in events.rows.items()})
        window.n_rows += len(take)

    # --- closing -----------------------------------------------------------------------------
    def _close(self, key: int, by: str, now: float) -> None:
        window = self.open.pop(key)
        window.closed_by, window.closed_at = by, now
        self.pending[key, window.generation] = window
        self.dirty.add(key)

    def close_through(self, watermark: int, now: float) -> None:
        """Close the windows whose last seq is at or below ``watermark``."""
        last_complete = (watermark + 1) // self.window_events - 1
        for key in sorted(k for k in self.open if k <= last_complete):
            self._close(key, "watermark", now)

    def close_idle(self, now: float, idle_seconds: float) -> None:
        for key in sorted(k for k, w in self.open.items() if now - w.last_event_at >= idle_seconds):
            self._close(key, "idle", now)

    def ready(self) -> list[Window]:
        """Closed windows whose earlier windows are all closed, in index order. Each becomes a
        marker: call ``predecessors`` for a window's merged tests before the next ``ready``."""
        lowest_open = min(self.open, default=None)
        out = []
        for key, generation in sorted(self.pending):
            if lowest_open is not None and key > lowest_open:
                break
            window = self.pending.pop((key, generation))
            self.markers[key] = Window(
                window.key,
                window.generation,
                window.counts,
                window.upto,
                window.opened_at,
                window.last_event_at,
                window.closed_by,
                window.closed_at,
            )
            self.markers.move_to_end(key)
            self.dirty.add(key)
            out.append(window)
        while len(self.markers) > self.keep_markers:
            key, dropped = self.markers.popitem(last=False)
            for p, upto in dropped.upto.items():
                self.floor_updates[p] = max(self.floor_updates.get(p, 0), upto)
            self.dirty.add(key)
        return out

    def predecessors(self, key: int, count: int) -> list[Counts]:
        """Counts of the tested windows ``key - count .. key - 1``: as many consecutive ones as
        are known, in index order."""
        out: list[Counts] = []
        for k in range(key - 1, key - count - 1, -1):
            marker = self.markers.get(k)
            if marker is None:
                break
            out.append(marker.counts)
        return out[::-1]

    # --- saved state -------------------------------------------------------------------------
    def changes(self) -> dict[int, dict[str, Any] | None]:
        """The saved state of each window changed since the last call: ``state`` is open,
        closing (closed, not tested yet) or tested; None: forget the key."""
        out: dict[int, dict[str, Any] | None] = {}
        for key in sorted(self.dirty):
            out[key] = self._record(key)
        self.dirty.clear()
        return out

    def _record(self, key: int) -> dict[str, Any] | None:
        """One record per key: its newest generation, with the older closed untested ones of
        a key whose seqs repeat under ``closing``."""
        waiting = [w.to_dict() for w in self._pending_of(key)]
        if key in self.open:
            state, window = "open", self.open[key].to_dict()
        elif waiting:
            state, window = "closing", waiting.pop()
        elif key in self.markers:
            state, window = "tested", self.markers[key].to_dict()
        else:
            return None
        return {"state": state, **window, **({"closing": waiting} if waiting else {})}

    def restore(self, saved: dict[int, dict[str, Any]], now: float) -> None:
        """Rebuild the windows from ``changes`` records (the coordinator's table). Open windows
        restart their idle clock at ``now``: the coordinator's outage is not the feed's."""
        self.open.clear()
        self.pending.clear()
        self.markers.clear()
        by_close = sorted(saved.items(), key=lambda kv: kv[1].get("closed_at") or 0.0)
        for key, record in by_close:
            for older in record.get("closing", []):
                window = Window.from_dict(int(key), older, self.layout)
                self.pending[int(key), window.generation] = window
            window = Window.from_dict(int(key), record, self.layout)
            if record["state"] == "open":
                window.last_event_at = now
                self.open[int(key)] = window
            elif record["state"] == "closing":
                self.pending[int(key), window.generation] = window
            else:
                self.markers[int(key)] = window
        self.dirty.clear()
