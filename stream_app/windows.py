"""Drift windows as mergeable counts, and tumbling windows keyed by the events' ``seq``.

A ``WindowPartial`` holds only counts (per numeric feature: histogram on the reference's bins,
missing and out-of-range counts; per categorical feature: counts per reference category plus an
"unseen" bucket and a missing count; predicted-class counts; the sum of max-probabilities;
labelled and correct counts). Counts add up, so partials of disjoint event sets merge exactly:
N workers (or N batches) give the same figures as one, and a partial is JSON-able so it can
travel on a Kafka topic.

A partial's arrays may carry a leading "window" axis: ``stack`` turns W partials into one whose
arrays are ``(W, ...)``, and every statistic in ``stopdrift_common.statistics`` then scores the W
windows at once (used by the bootstrap and the benchmarks).

``SeqWindows`` puts event ``seq`` in window ``seq // window_events``, so the windows are identical
whatever the batch sizes, partitions or workers the events came through.

>>> import numpy as np, pandas as pd
>>> from stopdrift_common.schema import MODEL_FEATURES
>>> ref = {"classes": ["a", "b"], "prediction_shares": {"a": 0.5, "b": 0.5},
...        "mean_confidence": 0.7, "numeric": {"stops_per_year": {"edges": [10.0],
...        "proportions": [0.5, 0.5], "missing_share": 0.0}},
...        "categorical": {"state": {"shares": {"AZ": 0.5, "CA": 0.5}, "missing_share": 0.0}}}
>>> layout = Layout.from_reference(ref)
>>> df = pd.DataFrame({"state": ["AZ", "CA", "TX", None], "stops_per_year": [5, 20, None, -1]})
>>> p = WindowPartial.from_batch(df, np.array([[.9, .1], [.2, .8], [.6, .4], [.5, .5]]),
...                              ["a", "b"], None, layout)
>>> p.n, p.num_bins["stops_per_year"].tolist(), p.num_missing["stops_per_year"]
(4, [2, 1], 1)
>>> p.num_out_of_range["stops_per_year"], p.cat_counts["state"].tolist(), p.cat_missing["state"]
(1, [1, 1, 1], 1)
>>> p.pred_counts.tolist(), round(p.sum_max_proba, 2)
([3, 1], 2.8)
>>> w = SeqWindows(window_events=3)
>>> closed = w.add(np.arange(4), df, np.full((4, 2), .5), ["a", "b"], None, layout)
>>> [(c.index, c.start_event, c.end_event) for c in closed], w.open[1].n
([(0, 0, 3)], 1)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stopdrift_common.schema import RANGES

UNSEEN = "__unseen__"


# --- the baseline a window is binned and compared against ---------------------------------------
@dataclass(frozen=True)
class NumericSpec:
    edges: np.ndarray
    proportions: np.ndarray
    missing_share: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class CategoricalSpec:
    categories: tuple[str, ...]
    shares: np.ndarray  # aligned with categories
    missing_share: float

    def codes(self, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(category index, -1 when not a reference category; missing mask), vectorised.

        A hash lookup on the raw values: several times cheaper than building a pandas
        Categorical per batch, which dominated the monitor's per-batch cost.
        """
        raw = values.to_numpy(dtype=object)
        missing = pd.isna(raw)
        codes = _index(self.categories).get_indexer(raw)
        if (codes < 0).any():  # non-string values (e.g. 1 vs "1"): compare as text
            text = np.where(missing, None, raw.astype(str)).astype(object)
            codes = _index(self.categories).get_indexer(text)
        return codes, missing


_INDEXES: dict[tuple[str, ...], pd.Index] = {}


def _index(categories: tuple[str, ...]) -> pd.Index:
    if categories not in _INDEXES:
        if len(_INDEXES) > 64:  # one per layout; bounded across model changes
            _INDEXES.clear()
        _INDEXES[categories] = pd.Index(list(categories), dtype=object)
    return _INDEXES[categories]


@dataclass(frozen=True)
class Layout:
    """What the reference says, in arrays: bins, categories, classes and their reference shares.

    Monitored categoricals are the reference's ``categorical`` entries plus, when the reference
    rows are given and hold it, ``source`` (the reference dict has no shares for it).
    """

    numeric: dict[str, NumericSpec]
    categorical: dict[str, CategoricalSpec]
    classes: tuple[str, ...]
    prediction_shares: np.ndarray
    mean_confidence: float | None
    accuracy: float | None
    n_rows: int | None = None  # reference rows the shares were computed on

    @classmethod
    def from_reference(
        cls, reference: dict[str, Any], reference_rows: pd.DataFrame | None = None
    ) -> Layout:
        if not reference.get("classes"):
            raise ValueError("reference has no 'classes': it is not a stopdrift reference")
        numeric = {}
        for name, spec in reference.get("numeric", {}).items():
            low, high = RANGES.get(name, (None, None))
            numeric[name] = NumericSpec(
                edges=np.asarray(spec["edges"], dtype=float),
                proportions=np.asarray(spec["proportions"], dtype=float),
                missing_share=float(spec.get("missing_share", 0.0)),
                low=low,
                high=high,
            )
        categorical = {}
        cat_refs = dict(reference.get("categorical", {}))
        if "source" not in cat_refs and reference_rows is not None and "source" in reference_rows:
            src = reference_rows["source"].astype("string")
            cat_refs["source"] = {
                "shares": src.value_counts(normalize=True).to_dict(),
                "missing_share": float(src.isna().mean()),
            }
        for name, spec in cat_refs.items():
            shares = {str(k): float(v) for k, v in spec["shares"].items() if float(v) > 0}
            cats = tuple(sorted(shares))
            categorical[name] = CategoricalSpec(
                categories=cats,
                shares=np.asarray([shares[c] for c in cats], dtype=float),
                missing_share=float(spec.get("missing_share", 0.0)),
            )
        classes = tuple(str(c) for c in reference["classes"])
        pshares = reference.get("prediction_shares", {})
        return cls(
            numeric=numeric,
            categorical=categorical,
            classes=classes,
            prediction_shares=np.asarray([float(pshares.get(c, 0.0)) for c in classes]),
            mean_confidence=reference.get("mean_confidence"),
            accuracy=reference.get("accuracy"),
            n_rows=reference.get("n_rows"),
        )


def align_proba(proba: np.ndarray, classes: Iterable[str], layout: Layout) -> np.ndarray:
    """Reorder the columns of ``proba`` (one per entry of ``classes``) into the layout's class
    order; a class the model has but the reference lacks is dropped, one it lacks is zero."""
    proba = np.asarray(proba, dtype=float)
    classes = [str(c) for c in classes]
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise ValueError(
            f"proba has shape {proba.shape}, expected (n_events, {len(classes)}) for {classes}"
        )
    if tuple(classes) == layout.classes:
        return proba
    out = np.zeros((proba.shape[0], len(layout.classes)))
    for j, c in enumerate(layout.classes):
        if c in classes:
            out[:, j] = proba[:, classes.index(c)]
    return out


# --- counts -------------------------------------------------------------------------------------
def _num(x: Any) -> Any:
    return x.tolist() if isinstance(x, np.ndarray) else x


@dataclass
class WindowPartial:
    """Counts of one set of events (or, stacked, of W sets: arrays with a leading axis)."""

    n: Any = 0
    num_bins: dict[str, np.ndarray] = field(default_factory=dict)
    num_missing: dict[str, Any] = field(default_factory=dict)
    num_out_of_range: dict[str, Any] = field(default_factory=dict)
    cat_counts: dict[str, np.ndarray] = field(default_factory=dict)  # last entry: unseen
    cat_missing: dict[str, Any] = field(default_factory=dict)
    pred_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sum_max_proba: Any = 0.0
    labelled: Any = 0
    correct: Any = 0
    first_time: float | None = None
    last_time: float | None = None

    @classmethod
    def empty(cls, layout: Layout) -> WindowPartial:
        return cls(
            n=0,
            num_bins={k: np.zeros(len(s.edges) + 1, np.int64) for k, s in layout.numeric.items()},
            num_missing={k: 0 for k in layout.numeric},
            num_out_of_range={k: 0 for k in layout.numeric},
            cat_counts={
                k: np.zeros(len(s.categories) + 1, np.int64) for k, s in layout.categorical.items()
            },
            cat_missing={k: 0 for k in layout.categorical},
            pred_counts=np.zeros(len(layout.classes), np.int64),
        )

    @classmethod
    def from_batch(
        cls,
        features: pd.DataFrame,
        proba: np.ndarray,
        classes: Iterable[str],
        labels: pd.Series | np.ndarray | None,
        reference: Layout | dict[str, Any],
        times: np.ndarray | None = None,
    ) -> WindowPartial:
        """Counts of one batch, vectorised. ``features`` are raw (pre-imputation) values;
        a monitored column absent from ``features`` counts as missing."""
        layout = reference if isinstance(reference, Layout) else Layout.from_reference(reference)
        n = len(features)
        out = cls.empty(layout)
        out.n = n
        if n == 0:
            return out
        for name, spec in layout.numeric.items():
            if name in features:
                values = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=float)
            else:
                values = np.full(n, np.nan)
            present = values[~np.isnan(values)]
            idx = np.searchsorted(spec.edges, present, side="left")
            out.num_bins[name] = np.bincount(idx, minlength=len(spec.edges) + 1).astype(np.int64)
            out.num_missing[name] = int(n - present.size)
            bad = np.zeros(present.size, dtype=bool)
            if spec.low is not None:
                bad |= present < spec.low
            if spec.high is not None:
                bad |= present > spec.high
            out.num_out_of_range[name] = int(bad.sum())
        for name, spec in layout.categorical.items():
            if name not in features:
                out.cat_missing[name] = n
                continue
            codes, missing = spec.codes(features[name])
            k = len(spec.categories)
            counts = np.bincount(codes[codes >= 0], minlength=k)
            unseen = int(((codes < 0) & ~missing).sum())
            out.cat_counts[name] = np.append(counts, unseen).astype(np.int64)
            out.cat_missing[name] = int(missing.sum())
        p = align_proba(proba, classes, layout)
        if len(p) != n:
            raise ValueError(f"proba has {len(p)} rows for {n} feature rows")
        top = p.argmax(axis=1)
        out.pred_counts = np.bincount(top, minlength=len(layout.classes)).astype(np.int64)
        out.sum_max_proba = float(p.max(axis=1).sum())
        if labels is not None:
            lab = np.asarray(labels, dtype=object)
            known = ~pd.isna(lab)
            predicted = np.asarray(layout.classes, dtype=object)[top]
            out.labelled = int(known.sum())
            out.correct = int((lab[known].astype(str) == predicted[known]).sum())
        if times is not None and len(times):
            t = np.asarray(times, dtype=float)
            out.first_time, out.last_time = float(np.nanmin(t)), float(np.nanmax(t))
        return out

    @classmethod
    def by_group(
        cls,
        features: pd.DataFrame,
        proba: np.ndarray,
        classes: Iterable[str],
        labels: pd.Series | np.ndarray | None,
        layout: Layout,
        groups: np.ndarray,
        n_groups: int,
    ) -> list[WindowPartial]:
        """``from_batch`` of each group of events at once: event ``i`` belongs to group
        ``groups[i]`` (``0 <= groups[i] < n_groups``, every group non-empty). The same counts
        as ``from_batch`` on each group's rows, but every event is coded once and each count is
        one ``bincount`` over all groups: a batch read off a backlog spans a dozen windows, and
        per-window pandas calls made the drift counts the worker's largest cost after scoring.
        """
        n = len(features)
        g = np.asarray(groups, dtype=np.int64)
        if len(g) != n:
            raise ValueError(f"{len(g)} group numbers for {n} feature rows")
        sizes = np.bincount(g, minlength=n_groups)
        outs = [cls.empty(layout) for _ in range(n_groups)]

        def per_group(codes: np.ndarray, keep: np.ndarray | None, width: int) -> np.ndarray:
            """(n_groups, width) counts of ``codes`` (0 <= code < width) of the kept events."""
            gg, cc = (g, codes) if keep is None else (g[keep], codes[keep])
            flat = np.bincount(gg * width + cc, minlength=n_groups * width)
            return flat.reshape(n_groups, width).astype(np.int64)

        def totals(mask: np.ndarray) -> list[int]:
            return np.bincount(g[mask], minlength=n_groups).tolist()

        for name, spec in layout.numeric.items():
            if name in features:
                values = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=float)
            else:
                values = np.full(n, np.nan)
            present = ~np.isnan(values)
            idx = np.searchsorted(spec.edges, values, side="left")  # NaN: ignored below
            bins = per_group(idx, present, len(spec.edges) + 1)
            bad = np.zeros(n, dtype=bool)
            if spec.low is not None:
                bad |= values < spec.low  # NaN compares False: never out of range
            if spec.high is not None:
                bad |= values > spec.high
            missing = (sizes - np.bincount(g[present], minlength=n_groups)).tolist()
            out_of_range = totals(bad)
            for j, out in enumerate(outs):
                out.num_bins[name] = bins[j]
                out.num_missing[name] = missing[j]
                out.num_out_of_range[name] = out_of_range[j]
        for name, spec in layout.categorical.items():
            if name not in features:
                for j, out in enumerate(outs):
                    out.cat_missing[name] = int(sizes[j])
                continue
            codes, missing = spec.codes(features[name])
            k = len(spec.categories)
            codes = np.where(codes < 0, k, codes)  # the last bucket: unseen (or missing)
            counts = per_group(codes, ~missing, k + 1)
            n_missing = totals(missing)
            for j, out in enumerate(outs):
                out.cat_counts[name] = counts[j]
                out.cat_missing[name] = n_missing[j]
        p = align_proba(proba, classes, layout)
        if len(p) != n:
            raise ValueError(f"proba has {len(p)} rows for {n} feature rows")
        top = p.argmax(axis=1)
        pred = per_group(top, None, len(layout.classes))
        max_proba = p.max(axis=1)
        order = np.argsort(g, kind="stable")  # each group's events, in batch order
        bounds = np.cumsum(sizes)[:-1]
        members = np.split(order, bounds)
        if labels is not None:
            lab = np.asarray(labels, dtype=object)
            known = ~pd.isna(lab)
            predicted = np.asarray(layout.classes, dtype=object)[top]
            correct = np.zeros(n, dtype=bool)
            correct[known] = lab[known].astype(str) == predicted[known]
            labelled, n_correct = totals(known), totals(correct)
        sizes_list = sizes.tolist()
        for j, out in enumerate(outs):
            out.n = sizes_list[j]
            out.pred_counts = pred[j]
            # the same summation, in the same order, as from_batch on the group's rows
            out.sum_max_proba = float(max_proba[members[j]].sum())
            if labels is not None:
                out.labelled, out.correct = labelled[j], n_correct[j]
        return outs

    def merge(self, other: WindowPartial) -> WindowPartial:
        """Counts of the union of two disjoint event sets (a new partial; inputs unchanged)."""

        def add(a: dict, b: dict) -> dict:
            return {k: a[k] + b[k] for k in a}

        times_first = [t for t in (self.first_time, other.first_time) if t is not None]
        times_last = [t for t in (self.last_time, other.last_time) if t is not None]
        return WindowPartial(
            n=self.n + other.n,
            num_bins=add(self.num_bins, other.num_bins),
            num_missing=add(self.num_missing, other.num_missing),
            num_out_of_range=add(self.num_out_of_range, other.num_out_of_range),
            cat_counts=add(self.cat_counts, other.cat_counts),
            cat_missing=add(self.cat_missing, other.cat_missing),
            pred_counts=self.pred_counts + other.pred_counts,
            sum_max_proba=self.sum_max_proba + other.sum_max_proba,
            labelled=self.labelled + other.labelled,
            correct=self.correct + other.correct,
            first_time=min(times_first) if times_first else None,
            last_time=max(times_last) if times_last else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (plain lists, ints and floats)."""
        return {
            "n": _num(self.n),
            "num_bins": {k: _num(v) for k, v in self.num_bins.items()},
            "num_missing": {k: _num(v) for k, v in self.num_missing.items()},
            "num_out_of_range": {k: _num(v) for k, v in self.num_out_of_range.items()},
            "cat_counts": {k: _num(v) for k, v in self.cat_counts.items()},
            "cat_missing": {k: _num(v) for k, v in self.cat_missing.items()},
            "pred_counts": _num(self.pred_counts),
            "sum_max_proba": _num(self.sum_max_proba),
            "labelled": _num(self.labelled),
            "correct": _num(self.correct),
            "first_time": self.first_time,
            "last_time": self.last_time,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowPartial:
        def arr(x: Any) -> np.ndarray:
            return np.asarray(x, dtype=np.int64)

        return cls(
            n=int(d["n"]),
            num_bins={k: arr(v) for k, v in d["num_bins"].items()},
            num_missing={k: int(v) for k, v in d["num_missing"].items()},
            num_out_of_range={k: int(v) for k, v in d["num_out_of_range"].items()},
            cat_counts={k: arr(v) for k, v in d["cat_counts"].items()},
            cat_missing={k: int(v) for k, v in d["cat_missing"].items()},
            pred_counts=arr(d["pred_counts"]),
            sum_max_proba=float(d["sum_max_proba"]),
            labelled=int(d["labelled"]),
            correct=int(d["correct"]),
            first_time=d.get("first_time"),
            last_time=d.get("last_time"),
        )

    def equals(self, other: WindowPartial, tol: float = 1e-9) -> bool:
        """Same counts (the float sum of max-probabilities within ``tol``)."""
        a, b = self.to_dict(), other.to_dict()
        sa, sb = a.pop("sum_max_proba"), b.pop("sum_max_proba")
        return a == b and bool(np.allclose(sa, sb, rtol=0, atol=tol))


def stack(partials: list[WindowPartial]) -> WindowPartial:
    """W single-window partials -> one partial whose arrays have a leading window axis."""
    first = partials[0]

    def col(get) -> np.ndarray:
        return np.stack([np.asarray(get(p)) for p in partials])

    return WindowPartial(
        n=col(lambda p: p.n),
        num_bins={k: col(lambda p, k=k: p.num_bins[k]) for k in first.num_bins},
        num_missing={k: col(lambda p, k=k: p.num_missing[k]) for k in first.num_missing},
        num_out_of_range={
            k: col(lambda p, k=k: p.num_out_of_range[k]) for k in first.num_out_of_range
        },
        cat_counts={k: col(lambda p, k=k: p.cat_counts[k]) for k in first.cat_counts},
        cat_missing={k: col(lambda p, k=k: p.cat_missing[k]) for k in first.cat_missing},
        pred_counts=col(lambda p: p.pred_counts),
        sum_max_proba=col(lambda p: p.sum_max_proba),
        labelled=col(lambda p: p.labelled),
        correct=col(lambda p: p.correct),
    )


# --- tumbling windows ---------------------------------------------------------------------------
@dataclass
class ClosedWindow:
    index: int
    start_event: int  # events counted since the assembler started (or was reset), inclusive
    end_event: int  # exclusive
    partial: WindowPartial
    closed_at: float
    closed_by: str  # "count" (window_events reached) or "evicted" (too many windows open)
    rows: pd.DataFrame | None = None  # the window's raw rows, when the assembler keeps them


class SeqWindows:
    """Tumbling windows by the producer's sequence number: window ``k`` holds the events with
    ``k * window_events <= seq < (k + 1) * window_events``, whatever partition, batch or worker
    they arrive in.

    Arrival order is not a good window key for a keyed topic: a consumer that catches up on a
    backlog reads one partition (a few states) at a time, so arrival-order windows look like
    ``state`` drift on a stationary stream. Sequence windows hold the same events however the
    stream is consumed, and their partials merge exactly across workers (``add_partials``).

    A window closes when it holds ``window_events`` events. At most ``max_open`` windows stay
    open; opening one more closes the oldest early (``closed_by="evicted"``: its statistics are
    reported but not tested). Events that arrive for a window already closed open it anew.

    >>> import numpy as np, pandas as pd
    >>> ref = {"classes": ["a", "b"], "prediction_shares": {"a": 0.5, "b": 0.5},
    ...        "mean_confidence": 0.7, "numeric": {}, "categorical": {}}
    >>> layout = Layout.from_reference(ref)
    >>> w = SeqWindows(window_events=2)
    >>> df = pd.DataFrame(index=range(3))
    >>> closed = w.add(np.array([3, 0, 2]), df, np.full((3, 2), .5), ["a", "b"], None, layout)
    >>> [(c.index, c.start_event, c.end_event, int(c.partial.n)) for c in closed]
    [(1, 2, 4, 2)]
    >>> sorted(w.open)
    [0]
    """

    def __init__(self, window_events: int, keep_rows: bool = False, max_open: int = 16):
        if window_events < 1:
            raise ValueError(f"window_events must be at least 1, got {window_events}")
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.window_events = window_events
        self.keep_rows = keep_rows
        self.max_open = max_open
        self.open: dict[int, WindowPartial] = {}
        self._rows: dict[int, list[pd.DataFrame | dict[str, list]]] = {}

    def partials(
        self,
        seqs: np.ndarray,
        features: pd.DataFrame,
        proba: np.ndarray,
        classes: Iterable[str],
        labels: pd.Series | None,
        layout: Layout,
        times: np.ndarray | None = None,
    ) -> dict[int, tuple[np.ndarray, WindowPartial]]:
        """A batch's counts per window index (with the batch positions in each window)."""
        keys = np.asarray(seqs, dtype=np.int64) // self.window_events
        if len(keys) == 0:
            return {}
        windows, groups = np.unique(keys, return_inverse=True)
        parts = WindowPartial.by_group(
            features, proba, classes, labels, layout, groups, len(windows)
        )
        order = np.argsort(groups, kind="stable")  # each window's events, in batch order
        members = np.split(order, np.cumsum(np.bincount(groups))[:-1])
        if times is not None:
            t = np.asarray(times, dtype=float)
            for pos, part in zip(members, parts, strict=True):
                part.first_time, part.last_time = float(np.nanmin(t[pos])), float(np.nanmax(t[pos]))
        return {
            int(k): (pos, part)
            for k, pos, part in zip(windows.tolist(), members, parts, strict=True)
        }

    def add(
        self,
        seqs: np.ndarray,
        features: pd.DataFrame,
        proba: np.ndarray,
        classes: Iterable[str],
        labels: pd.Series | None,
        layout: Layout,
        times: np.ndarray | None = None,
        now: float | None = None,
        rows: pd.DataFrame | None = None,
    ) -> list[ClosedWindow]:
        """Count a batch; return the windows it completed (and any it evicted)."""
        parts = self.partials(seqs, features, proba, classes, labels, layout, times)
        src = features if rows is None else rows
        window_rows = {k: src.iloc[pos] for k, (pos, _) in parts.items()}
        return self.add_partials({k: p for k, (_, p) in parts.items()}, now, window_rows)

    def add_partials(
        self,
        partials: dict[int, WindowPartial],
        now: float | None = None,
        rows: dict[int, pd.DataFrame | dict[str, list]] | None = None,
    ) -> list[ClosedWindow]:
        """Merge counts per window index (from this worker or others); ``rows``: the raw rows
        behind them (frames, or columns as lists: ``{"x": [...], ...}``), kept for reports
        when ``keep_rows``."""
        now = time.time() if now is None else now
        closed: list[ClosedWindow] = []
        if self.keep_rows and rows:
            for k, frame in rows.items():
                self._rows.setdefault(k, []).append(frame)
        for k in sorted(partials):
            current = self.open.get(k)
            self.open[k] = partials[k] if current is None else current.merge(partials[k])
            if self.open[k].n >= self.window_events:
                closed.append(self._close(k, "count", now))
        while len(self.open) > self.max_open:
            closed.append(self._close(min(self.open), "evicted", now))
        return closed

    def _close(self, k: int, by: str, now: float) -> ClosedWindow:
        partial = self.open.pop(k)
        rows = _rows_frame(self._rows.pop(k, []))
        start = k * self.window_events
        return ClosedWindow(k, start, start + self.window_events, partial, now, by, rows)


def _rows_frame(chunks: list[pd.DataFrame | dict[str, list]]) -> pd.DataFrame | None:
    """One frame of a window's rows, in arrival order. Chunks of columns (from partials
    messages) are joined as lists and become ONE frame: a frame per message cost the
    coordinator more than merging the counts.

    >>> _rows_frame([{"x": [1.0, None]}, {"x": [3.0]}])["x"].tolist()
    [1.0, nan, 3.0]
    >>> _rows_frame([]) is None
    True
    """
    if not chunks:
        return None
    first = chunks[0]
    if all(isinstance(c, dict) and c.keys() == first.keys() for c in chunks):
        return pd.DataFrame({col: [v for c in chunks for v in c[col]] for col in first})
    frames = [c if isinstance(c, pd.DataFrame) else pd.DataFrame(c) for c in chunks]
    return pd.concat(frames, ignore_index=True)
