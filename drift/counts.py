"""Window counts: one binning of events into one flat count vector, mergeable by addition.

A ``Layout`` is read off the reference rows once: quantile bins for each numeric feature, the
categories of each categorical feature, the model's classes. It gives every event one code per
block, all in one flat vector:

=====================  ======================================================================
block                  slots
=====================  ======================================================================
numeric feature        its K reference-quantile bins, then ``missing``
categorical feature    its reference categories, then ``unseen``, then ``missing``
``prediction``         the model's classes (the predicted class of every event)
``label``              the classes, then ``other``: only events that carry a label
``correct``            ``wrong``, ``right``: only labelled events
=====================  ======================================================================

``Counts`` holds that vector (plus the sum and sum of squares of the model's confidence, and
the rejected events per feature and reason), so counts of disjoint event sets add up exactly:
N workers, N batches or N windows give the same figures as one. Arrays may carry leading
axes (stacked windows), which the calibration uses to count thousands of bootstrap windows at
once with one ``bincount``.

>>> import pandas as pd
>>> ref = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, None], "c": ["a", "a", "b", "b", "a"],
...                     "predicted": ["p", "q", "p", "q", "p"], "confidence": [.6] * 5,
...                     "label": ["p", "q", "q", "q", None]})
>>> layout = Layout.from_rows(ref, numeric=["x"], categorical=["c"], classes=["p", "q"],
...                           n_bins=2)
>>> layout.block("x").labels, layout.block("c").labels
(('<= 2.5', '> 2.5', 'missing'), ('a', 'b', 'unseen', 'missing'))
>>> window = pd.DataFrame({"x": [0.5, 9.0, None], "c": ["a", "z", "b"],
...                        "predicted": ["q", "q", "p"], "confidence": [.5, .7, .9],
...                        "label": [None, "q", "q"]})
>>> c = Counts.of(window, layout)
>>> c.block("x").tolist(), c.block("c").tolist(), c.n, c.labelled
([1, 1, 1], [1, 1, 1, 0], 3, 2)
>>> (c + c).block("correct").tolist()
[2, 2]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

N_BINS = 10
PREDICTION, LABEL, CORRECT = "prediction", "label", "correct"
# Columns of the frame the layout encodes, besides the features.
PREDICTED_COLUMN, CONFIDENCE_COLUMN, LABEL_COLUMN = "predicted", "confidence", "label"


@dataclass(frozen=True)
class Block:
    """A run of slots in the flat count vector: one feature (or the predictions, labels...)."""

    name: str
    kind: str  # "numeric", "categorical", "classes" (prediction, label) or "correct"
    labels: tuple[str, ...]
    offset: int

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


def quantile_edges(values: Any, n_bins: int = N_BINS) -> np.ndarray:
    """Inner bin edges at the quantiles of the present values (duplicates merged). A value
    equal to an edge falls in the bin below it (bins are right-closed).

    >>> quantile_edges([1.0, 2, 3, 4, 5, 6, 7, 8, None], n_bins=4).tolist()
    [2.75, 4.5, 6.25]
    """
    x = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:-1]))


def _bin_labels(edges: np.ndarray) -> tuple[str, ...]:
    if edges.size == 0:
        return ("all", "missing")
    labels = [f"<= {edges[0]:.4g}"]
    labels += [f"({a:.4g}, {b:.4g}]" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    labels.append(f"> {edges[-1]:.4g}")
    return (*labels, "missing")


@dataclass(frozen=True)
class Layout:
    """The reference's bins, categories and classes, as blocks of one flat count vector."""

    numeric: Mapping[str, np.ndarray]  # feature -> inner bin edges
    categorical: Mapping[str, tuple[str, ...]]  # feature -> reference categories
    classes: tuple[str, ...]
    blocks: tuple[Block, ...] = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        blocks, offset = [], 0

        def add(name: str, kind: str, labels: Sequence[str]) -> None:
            nonlocal offset
            blocks.append(Block(name, kind, tuple(labels), offset))
            offset += len(labels)

        for name, edges in self.numeric.items():
            add(name, "numeric", _bin_labels(np.asarray(edges)))
        for name, categories in self.categorical.items():
            add(name, "categorical", (*categories, "unseen", "missing"))
        add(PREDICTION, "classes", self.classes)
        add(LABEL, "classes", (*self.classes, "other"))
        add(CORRECT, "correct", ("wrong", "right"))
        object.__setattr__(self, "blocks", tuple(blocks))
        object.__setattr__(self, "size", offset)

    @classmethod
    def from_rows(
        cls,
        rows: pd.DataFrame,
        numeric: Iterable[str],
        categorical: Iterable[str],
        classes: Iterable[str],
        n_bins: int = N_BINS,
    ) -> Layout:
        """Bins at the quantiles of the reference rows, categories as they appear there."""
        return cls(
            numeric={f: quantile_edges(rows[f], n_bins) for f in numeric},
            categorical={
                f: tuple(sorted(str(v) for v in rows[f].dropna().unique())) for f in categorical
            },
            classes=tuple(str(c) for c in classes),
        )

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block {name!r} in this layout")

    @property
    def sink(self) -> int:
        """The slot past the end: codes of events a block does not count (unlabelled)."""
        return self.size

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, confidence)``: an ``(n, blocks)`` matrix of slot numbers in the flat vector
        and the model's confidence (max class probability) of each event.

        Features absent from ``frame`` count as missing; a class or label outside the layout's
        classes goes to ``other`` (labels) or is an error (predictions)."""
        n = len(frame)
        columns = []
        for b in self.blocks:
            if b.kind == "numeric":
                edges = np.asarray(self.numeric[b.name])
                x = _floats(frame, b.name, n)
                code = np.searchsorted(edges, x, side="left")
                code = np.where(np.isnan(x), b.size - 1, code)
            elif b.kind == "categorical":
                code = _category_codes(frame, b.name, self.categorical[b.name], n)
            elif b.name == PREDICTION:
                code = _category_codes(frame, PREDICTED_COLUMN, self.classes, n)
                if (code >= len(self.classes)).any():
                    bad = frame[PREDICTED_COLUMN][code >= len(self.classes)].iloc[0]
                    raise ValueError(f"predicted class {bad!r} is not one of {self.classes}")
            elif b.name == LABEL:
                code = _category_codes(frame, LABEL_COLUMN, self.classes, n)
                code = np.where(code == len(self.classes) + 1, -1, np.minimum(code, b.size - 1))
            else:  # correct
                label = _category_codes(frame, LABEL_COLUMN, self.classes, n)
                pred = _category_codes(frame, PREDICTED_COLUMN, self.classes, n)
                known = label < len(self.classes)
                unlabelled = label == len(self.classes) + 1
                code = np.where(unlabelled, -1, (known & (label == pred)).astype(np.int64))
            columns.append(np.where(code < 0, self.sink - b.offset, code) + b.offset)
        codes = np.stack(columns, axis=1).astype(np.int64) if columns else np.zeros((n, 0), int)
        return codes, _floats(frame, CONFIDENCE_COLUMN, n, default=0.0)


def _floats(frame: pd.DataFrame, name: str, n: int, default: float = np.nan) -> np.ndarray:
    if name not in frame:
        return np.full(n, default)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


_INDEXES: dict[tuple[str, ...], pd.Index] = {}


def _category_codes(frame: pd.DataFrame, name: str, categories: tuple[str, ...], n: int):
    """Index of each value in ``categories``; len(categories) = unseen, +1 = missing."""
    k = len(categories)
    if name not in frame:
        return np.full(n, k + 1)
    raw = frame[name].to_numpy(dtype=object)
    missing = pd.isna(raw)
    index = _INDEXES.get(categories)
    if index is None:  # a hash lookup: several times cheaper than a pandas Categorical
        if len(_INDEXES) > 64:
            _INDEXES.clear()
        index = _INDEXES[categories] = pd.Index(list(categories), dtype=object)
    codes = index.get_indexer(np.where(missing, None, raw.astype(str)).astype(object))
    return np.where(missing, k + 1, np.where(codes < 0, k, codes))


@dataclass
class Counts:
    """Counts of a set of events (or, stacked, of many sets: arrays with leading axes)."""

    counts: np.ndarray  # (..., layout.size) slots
    confidence_sum: Any = 0.0
    confidence_squares: Any = 0.0
    rejected: dict[str, dict[str, int]] = field(default_factory=dict)  # feature -> reason -> n
    layout: Layout | None = field(default=None, repr=False, compare=False)

    # --- making counts ---------------------------------------------------------------------
    @classmethod
    def empty(cls, layout: Layout) -> Counts:
        return cls(np.zeros(layout.size, np.int64), 0.0, 0.0, {}, layout)

    @classmethod
    def of(cls, frame: pd.DataFrame, layout: Layout) -> Counts:
        """Counts of the events in ``frame`` (features, ``predicted``, ``confidence``,
        ``label``)."""
        codes, confidence = layout.encode(frame)
        return cls.from_codes(codes, confidence, layout)

    @classmethod
    def from_codes(cls, codes: np.ndarray, confidence: np.ndarray, layout: Layout) -> Counts:
        flat = np.bincount(codes.ravel(), minlength=layout.size + 1)[: layout.size]
        conf = np.asarray(confidence, dtype=float)
        return cls(flat.astype(np.int64), float(conf.sum()), float((conf**2).sum()), {}, layout)

    @classmethod
    def grouped(
        cls,
        codes: np.ndarray,
        confidence: np.ndarray,
        groups: np.ndarray,
        n_groups: int,
        layout: Layout,
    ) -> list[Counts]:
        """``from_codes`` of each group of events at once (event i is in group ``groups[i]``):
        one ``bincount`` for all groups (a backlog batch spans a dozen windows)."""
        width = layout.size + 1
        g = np.asarray(groups, dtype=np.int64)
        flat = np.bincount((codes + (g * width)[:, None]).ravel(), minlength=n_groups * width)
        table = flat.reshape(n_groups, width)[:, : layout.size].astype(np.int64)
        conf = np.asarray(confidence, dtype=float)
        sums = np.bincount(g, weights=conf, minlength=n_groups)
        squares = np.bincount(g, weights=conf**2, minlength=n_groups)
        return [
            cls(table[j], float(sums[j]), float(squares[j]), {}, layout) for j in range(n_groups)
        ]

    @classmethod
    def sampled(
        cls, codes: np.ndarray, confidence: np.ndarray, index: np.ndarray, layout: Layout
    ) -> Counts:
        """Stacked counts of windows made of the rows ``index`` (shape ``(W, n)``) of an
        encoded table: the calibration's bootstrap windows, all in one ``bincount``."""
        w = index.shape[0]
        width = layout.size + 1
        picked = codes[index] + (np.arange(w) * width)[:, None, None]
        flat = np.bincount(picked.ravel(), minlength=w * width).reshape(w, width)
        conf = confidence[index]
        return cls(flat[:, : layout.size], conf.sum(axis=1), (conf**2).sum(axis=1), {}, layout)

    @classmethod
    def weighted(
        cls, codes: np.ndarray, confidence: np.ndarray, weights: np.ndarray, layout: Layout
    ) -> Counts:
        """Stacked counts of tables that hold row i ``weights[j, i]`` times (resampled
        references: ``weights`` are multinomial draws)."""
        width = layout.size + 1
        j = weights.shape[0]
        out = np.zeros((j, layout.size), np.int64)
        for r in range(j):
            flat = np.bincount(
                codes.ravel(), weights=np.repeat(weights[r], codes.shape[1]), minlength=width
            )
            out[r] = np.rint(flat[: layout.size]).astype(np.int64)
        return cls(out, weights @ confidence, weights @ confidence**2, {}, layout)

    # --- reading -----------------------------------------------------------------------------
    def block(self, name: str) -> np.ndarray:
        assert self.layout is not None, "counts without a layout"
        return self.counts[..., self.layout.block(name).slice]

    @property
    def n(self) -> Any:
        """Events counted (every event has exactly one prediction)."""
        total = self.block(PREDICTION).sum(axis=-1)
        return int(total) if np.ndim(total) == 0 else total

    @property
    def labelled(self) -> Any:
        total = self.block(CORRECT).sum(axis=-1)
        return int(total) if np.ndim(total) == 0 else total

    @property
    def n_rejected(self) -> int:
        return sum(sum(reasons.values()) for reasons in self.rejected.values())

    def rejected_by_feature(self) -> dict[str, int]:
        return {f: sum(reasons.values()) for f, reasons in self.rejected.items()}

    # --- combining ---------------------------------------------------------------------------
    def __add__(self, other: Counts) -> Counts:
        rejected = {f: dict(r) for f, r in self.rejected.items()}
        for f, reasons in other.rejected.items():
            mine = rejected.setdefault(f, {})
            for reason, n in reasons.items():
                mine[reason] = mine.get(reason, 0) + n
        return Counts(
            self.counts + other.counts,
            self.confidence_sum + other.confidence_sum,
            self.confidence_squares + other.confidence_squares,
            rejected,
            self.layout or other.layout,
        )

    def add_rejects(self, features: Iterable[str], reasons: Iterable[str]) -> None:
        for f, reason in zip(features, reasons, strict=True):
            mine = self.rejected.setdefault(f, {})
            mine[reason] = mine.get(reason, 0) + 1

    # --- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": np.asarray(self.counts).tolist(),
            "confidence_sum": float(self.confidence_sum),
            "confidence_squares": float(self.confidence_squares),
            "rejected": self.rejected,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], layout: Layout) -> Counts:
        counts = np.asarray(d["counts"], dtype=np.int64)
        if counts.shape != (layout.size,):
            raise ValueError(f"counts of {counts.shape} slots for a layout of {layout.size}")
        rejected = {f: {r: int(n) for r, n in v.items()} for f, v in d.get("rejected", {}).items()}
        return cls(
            counts, float(d["confidence_sum"]), float(d["confidence_squares"]), rejected, layout
        )
