"""The family of tested statistics: what is tested for each feature, and its evidence.

=======================  ==================================================  ================
statistic                test (window against the reference as a sample)      fires when
=======================  ==================================================  ================
``<num>.distribution``   chi-square of the present values' quantile bins      the shape moves
``<num>.location``       Mann-Whitney rank z on those bins (two-sided)        values shift
``<num>.missing``        share of missing values (two-sided)                  missingness moves
``<cat>.distribution``   chi-square of the categories, unseen ones included    the mix moves
``<cat>.category``       the largest one-category share test (Bonferroni)     one share moves
``prediction.distribution``  chi-square of the predicted classes              predictions move
``confidence.drop``      Welch z of the mean max-probability (one-sided)      confidence falls
``label.distribution``   chi-square of the true labels (events with a label)  the label mix moves
``label.accuracy``       share of correct predictions (one-sided, fall)       accuracy falls
``quality.<field>``      share of events rejected for that field (exact)      rejects rise
=======================  ==================================================  ================

Every statistic gives EVIDENCE, ``-log10`` of its asymptotic p-value (``statistics.py``), so
they share one scale. Label statistics are computed only when a window has at least
``min_labelled`` labelled events. Data-quality statistics compare the window's share of
rejected events with the reference's, which has none: an exact test, so one stray reject in
500 events is not an alert (p = 0.11) but a handful of the same kind is.

Which statistics are tested is decided here, once per reference: a statistic that cannot
vary (a categorical feature with one category, say) is left out.

>>> import pandas as pd
>>> from drift.counts import Counts, Layout
>>> ref = pd.DataFrame({"x": [1.0, 2, 3, 4] * 25, "predicted": ["p", "q"] * 50,
...                     "confidence": [.6, .8] * 50, "label": ["p", "q", "q", "q"] * 25})
>>> layout = Layout.from_rows(ref, ["x"], [], ["p", "q"], n_bins=4)
>>> family = Family(layout, Counts.of(ref, layout), nullable=["x"])
>>> family.names
('x.distribution', 'x.location', 'x.missing', 'prediction.distribution', 'confidence.drop')
>>> shifted = ref.assign(x=ref["x"] + 1.5)
>>> ev = family.evidence(Counts.of(shifted, layout))
>>> round(float(ev["x.location"]), 1), round(float(ev["prediction.distribution"]), 1)
(10.4, 0.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from drift import statistics as st
from drift.counts import CORRECT, LABEL, PREDICTION, Counts, Layout

MIN_LABELLED = 30  # labelled events a window needs before its label statistics are tested
QUALITY = "quality"


@dataclass(frozen=True)
class Statistic:
    name: str  # "<feature>.<test>"
    feature: str
    test: str  # distribution, location, missing, drop, accuracy, rejected

    @property
    def labelled(self) -> bool:
        return self.feature == LABEL


class Family:
    """The tested statistics of one reference, and their evidence for any window(s).

    Parameters
    ----------
    layout, reference
        The reference's layout and its counts (``Counts.of(reference_rows, layout)``).
    nullable
        Features whose missing share is tested (the others cannot be missing in the stream).
    labels
        Whether the label statistics exist (the reference rows carry labels).
    """

    def __init__(
        self,
        layout: Layout,
        reference: Counts,
        nullable: Iterable[str] = (),
        labels: bool = True,
        min_labelled: int = MIN_LABELLED,
    ):
        self.layout = layout
        self.reference = reference
        self.min_labelled = min_labelled
        nullable = set(nullable)
        stats: list[Statistic] = []
        for name in layout.numeric:
            if len(layout.numeric[name]) > 0:  # at least two bins: the shape can move
                stats += [
                    Statistic(f"{name}.distribution", name, "distribution"),
                    Statistic(f"{name}.location", name, "location"),
                ]
            if name in nullable:
                stats.append(Statistic(f"{name}.missing", name, "missing"))
        for name, categories in layout.categorical.items():
            # One category: only unseen ones could show, which is still a change of mix.
            if categories:
                stats += [
                    Statistic(f"{name}.distribution", name, "distribution"),
                    Statistic(f"{name}.category", name, "category"),
                ]
            if name in nullable:
                stats.append(Statistic(f"{name}.missing", name, "missing"))
        stats.append(Statistic(f"{PREDICTION}.distribution", PREDICTION, "distribution"))
        stats.append(Statistic("confidence.drop", "confidence", "drop"))
        self.has_labels = labels and int(reference.labelled) > 0
        if self.has_labels:
            stats += [
                Statistic(f"{LABEL}.distribution", LABEL, "distribution"),
                Statistic(f"{LABEL}.accuracy", LABEL, "accuracy"),
            ]
        self.statistics = tuple(stats)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.statistics if not s.labelled)

    @property
    def labelled_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.statistics if s.labelled)

    # --- evidence ----------------------------------------------------------------------------
    def evidence(self, window: Counts, reference: Counts | None = None) -> dict[str, Any]:
        """Evidence of every statistic (arrays of the broadcast shape of the window's and the
        reference's leading axes). Label statistics are 0 where fewer than ``min_labelled``
        events carry a label; ``quality.<field>`` appear for the fields the window rejected."""
        ref = self.reference if reference is None else reference
        layout = self.layout
        out: dict[str, Any] = {}
        n_w, n_r = window.n, ref.n
        for s in self.statistics:
            if s.test in ("distribution", "location", "missing") and s.feature in layout.numeric:
                w, r = window.block(s.feature), ref.block(s.feature)
                if s.test == "distribution":
                    out[s.name] = st.chi_square_evidence(*st.chi_square(r[..., :-1], w[..., :-1]))
                elif s.test == "location":
                    z = st.rank_z(r[..., :-1], w[..., :-1])
                    out[s.name] = st.normal_evidence(z, "two")
                else:
                    out[s.name] = st.share_evidence(r[..., -1], n_r, w[..., -1], n_w)
            elif s.feature in layout.categorical:
                w, r = window.block(s.feature), ref.block(s.feature)
                if s.test == "distribution":  # categories and unseen, not missing
                    out[s.name] = st.chi_square_evidence(*st.chi_square(r[..., :-1], w[..., :-1]))
                elif s.test == "category":
                    out[s.name] = st.category_evidence(r[..., :-1], w[..., :-1])
                else:
                    out[s.name] = st.share_evidence(r[..., -1], n_r, w[..., -1], n_w)
            elif s.feature == PREDICTION:
                out[s.name] = st.chi_square_evidence(
                    *st.chi_square(ref.block(PREDICTION), window.block(PREDICTION))
                )
            elif s.test == "drop":
                z = st.mean_drop_z(
                    ref.confidence_sum,
                    ref.confidence_squares,
                    n_r,
                    window.confidence_sum,
                    window.confidence_squares,
                    n_w,
                )
                out[s.name] = st.normal_evidence(z, "upper")
            elif s.feature == LABEL:
                enough = np.asarray(window.labelled) >= self.min_labelled
                if s.test == "distribution":
                    ev = st.chi_square_evidence(
                        *st.chi_square(ref.block(LABEL), window.block(LABEL))
                    )
                else:
                    rc, wc = ref.block(CORRECT), window.block(CORRECT)
                    ev = st.share_evidence(
                        rc[..., 1], rc.sum(axis=-1), wc[..., 1], wc.sum(axis=-1), "lower"
                    )
                out[s.name] = np.where(enough, ev, 0.0)
        if window.rejected:
            out.update(self.quality_evidence(window))
        return out

    def quality_evidence(self, window: Counts) -> dict[str, float]:
        """Data quality of one window: per field, the exact test of its rejected share against
        the reference's, which has none."""
        total = window.n + window.n_rejected
        return {
            f"{QUALITY}.{feature}": float(st.unseen_evidence(self.reference.n, n_bad, total))
            for feature, n_bad in sorted(window.rejected_by_feature().items())
        }

    # --- what a human reads ------------------------------------------------------------------
    def effects(self, window: Counts, top: int = 5) -> dict[str, dict[str, Any]]:
        """Per feature, what moved, in shares (window vs reference), for alerts and reports:
        numeric features their missing share and where their values went (the bins that
        moved most), categorical ones the categories that moved most with their share of
        the chi-square, predictions and labels their class shares, quality the rejects."""
        ref = self.reference
        out: dict[str, dict[str, Any]] = {}
        n_w, n_r = max(window.n, 1), max(ref.n, 1)
        for name in self.layout.numeric:
            w, r = window.block(name), ref.block(name)
            present_w, present_r = max(int(w[:-1].sum()), 1), max(int(r[:-1].sum()), 1)
            u = _superiority(r[:-1], w[:-1])
            out[name] = {
                "missing_share": float(w[-1] / n_w),
                "reference_missing_share": float(r[-1] / n_r),
                "present": int(w[:-1].sum()),
                # P(a window value > a reference value) + half the ties: 0.5 = no shift
                "probability_larger": u,
                "moved": _moved(
                    self.layout.block(name).labels[:-1], r[:-1], w[:-1], present_r, present_w, top
                ),
            }
        for name in self.layout.categorical:
            w, r = window.block(name)[:-1], ref.block(name)[:-1]
            out[name] = {
                "moved": _moved(
                    self.layout.block(name).labels[:-1],
                    r,
                    w,
                    max(int(r.sum()), 1),
                    max(int(w.sum()), 1),
                    top,
                ),
            }
        out[PREDICTION] = {
            "shares": _share_pairs(
                self.layout.classes, ref.block(PREDICTION), window.block(PREDICTION)
            ),
        }
        out["confidence"] = {
            "mean": float(window.confidence_sum / n_w),
            "reference_mean": float(ref.confidence_sum / n_r),
        }
        if self.has_labels:
            wc, rc = window.block(CORRECT), ref.block(CORRECT)
            out[LABEL] = {
                "labelled": int(wc.sum()),
                "accuracy": float(wc[1] / wc.sum()) if wc.sum() else None,
                "reference_accuracy": float(rc[1] / max(rc.sum(), 1)),
                "shares": _share_pairs(
                    self.layout.block(LABEL).labels, ref.block(LABEL), window.block(LABEL)
                ),
            }
        total = window.n + window.n_rejected
        for feature, reasons in sorted(window.rejected.items()):
            n_bad = sum(reasons.values())
            out[f"{QUALITY}.{feature}"] = {
                "rejected": n_bad,
                "share": n_bad / max(total, 1),
                "reasons": dict(sorted(reasons.items())),
            }
        return out


def _superiority(reference_bins: np.ndarray, window_bins: np.ndarray) -> float | None:
    """Mann-Whitney's U / (R W): the chance a window value exceeds a reference value."""
    r = np.asarray(reference_bins, float)
    w = np.asarray(window_bins, float)
    if r.sum() == 0 or w.sum() == 0:
        return None
    below = np.cumsum(r) - r  # reference values in lower bins
    return float((w * (below + r / 2)).sum() / (r.sum() * w.sum()))


def _share_pairs(labels, reference_counts, window_counts) -> dict[str, dict[str, float]]:
    rs, ws = st.shares(reference_counts), st.shares(window_counts)
    return {
        str(c): {"window": float(w), "reference": float(r)}
        for c, r, w in zip(labels, rs, ws, strict=True)
    }


def _moved(labels, reference_counts, window_counts, n_ref, n_win, top) -> list[dict[str, Any]]:
    """The ``top`` categories (or bins) whose counts moved the chi-square most."""
    contrib = st.chi_square_contributions(reference_counts, window_counts)
    total = float(contrib.sum())
    order = np.argsort(-contrib, kind="stable")[:top]
    return [
        {
            "category": str(labels[i]),
            "window_share": float(window_counts[i] / n_win),
            "reference_share": float(reference_counts[i] / n_ref),
            "contribution": float(contrib[i]),
            "contribution_share": float(contrib[i] / total) if total > 0 else 0.0,
        }
        for i in order
        if contrib[i] > 0
    ]
