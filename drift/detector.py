"""The test of a closed window: its family of statistics at several window sizes, one verdict.

When window k closes, the detector tests it alone, merged with window k-1, and merged with
windows k-3..k (``scales`` 1, 2, 4; counts add exactly): a large change shows in one window, a
small one needs the events of four. Each scale has its share of the false-alarm budget
(``Calibration.alpha``), so a verdict is a family test at each scale, at the merged size.

The verdict ranks the features by how far past the threshold their strongest statistic went
(calibrated evidence minus threshold, in decades of p-value) and says where the drift is: for
each drifted feature, its effects (``Family.effects``) at the scale that saw it best.

>>> import pandas as pd
>>> from drift.calibration import Calibration
>>> from drift.counts import Counts, Layout
>>> from drift.family import Family
>>> rng = np.random.default_rng(1)
>>> ref = pd.DataFrame({"x": rng.normal(size=2000), "predicted": rng.choice(["p", "q"], 2000),
...                     "confidence": rng.uniform(.5, 1, 2000)})
>>> layout = Layout.from_rows(ref, ["x"], [], ["p", "q"])
>>> family = Family(layout, Counts.of(ref, layout), labels=False)
>>> codes, conf = layout.encode(ref)
>>> cal = Calibration.fit(family, codes, conf, sizes=[100, 400], alpha=0.01, n_windows=500,
...                       n_references=10, seed=0)
>>> detector = Detector(family, cal, scales=(1, 2), min_events=50)
>>> same = Counts.of(ref.sample(200, random_state=2), layout)
>>> detector.test([same, same]).drifted
False
>>> moved = Counts.of(ref.sample(200, random_state=3).assign(x=lambda d: d.x + 1), layout)
>>> verdict = detector.test([same, moved])
>>> verdict.drifted, verdict.drifted_features, sorted(verdict.scales)
(True, ['x'], [1, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import numpy as np

from drift.calibration import Calibration
from drift.counts import Counts
from drift.family import QUALITY, Family

SCALES = (1, 2, 4)
MIN_EVENTS = 50


@dataclass
class ScaleResult:
    windows: int  # how many windows were merged
    n: int  # events tested
    threshold: float  # calibrated evidence the family's maximum must exceed
    evidence: dict[str, float]  # calibrated evidence per statistic
    drifted: bool

    @property
    def max_evidence(self) -> float:
        return max(self.evidence.values(), default=0.0)


@dataclass
class Finding:
    """One drifted feature: how far past the threshold, where, and what moved."""

    feature: str
    excess: float  # calibrated evidence - threshold, at the scale that saw it best
    evidence: float
    threshold: float
    scale: int
    statistics: dict[str, float]  # calibrated evidence of its statistics at that scale
    effects: dict[str, Any] = field(default_factory=dict)


@dataclass
class Verdict:
    tested: bool
    scales: dict[int, ScaleResult] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)  # drifted features, ranked
    reason: str = ""  # why a window was not tested

    @property
    def drifted(self) -> bool:
        return bool(self.findings)

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.findings]

    def feature_evidence(self, scale: int = 1) -> dict[str, float]:
        """Per feature, the largest calibrated evidence of its statistics at ``scale``."""
        result = self.scales.get(scale)
        out: dict[str, float] = {}
        if result is not None:
            for name, e in result.evidence.items():
                feature = feature_of(name)
                out[feature] = max(out.get(feature, 0.0), e)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "tested": self.tested,
            "reason": self.reason,
            "scales": {
                str(s): {
                    "windows": r.windows,
                    "n": r.n,
                    "threshold": r.threshold,
                    "max_evidence": r.max_evidence,
                    "drifted": r.drifted,
                    "evidence": r.evidence,
                }
                for s, r in self.scales.items()
            },
            "findings": [f.__dict__ for f in self.findings],
        }


def feature_of(statistic: str) -> str:
    """``stops_per_year.location`` -> ``stops_per_year``; ``quality.hit_rate`` stays whole."""
    return statistic if statistic.startswith(QUALITY + ".") else statistic.rsplit(".", 1)[0]


class Detector:
    """Tests a window at several merged sizes against calibrated thresholds.

    Parameters
    ----------
    family, calibration
        The reference's statistics and their calibration (``Calibration.fit``).
    scales
        How many consecutive windows each test merges (1 = the window alone).
    min_events
        A window with fewer valid events is not tested (its statistics would rest on too few
        events); merged scales still count its events.
    """

    def __init__(
        self,
        family: Family,
        calibration: Calibration,
        scales: Sequence[int] = SCALES,
        min_events: int = MIN_EVENTS,
    ):
        if not scales or min(scales) < 1 or 1 not in scales:
            raise ValueError(f"scales must include 1 and be positive, got {scales}")
        if min_events < 1:
            raise ValueError(f"min_events must be at least 1, got {min_events}")
        self.family = family
        self.calibration = calibration
        self.scales = tuple(sorted(set(scales)))
        self.min_events = min_events

    def test(self, windows: Sequence[Counts]) -> Verdict:
        """``windows``: the closing window LAST, preceded by the consecutive windows before it
        (as many as are known, up to the largest scale)."""
        current = windows[-1]
        if current.n < self.min_events:
            return Verdict(False, reason=f"{current.n} events (fewer than {self.min_events})")
        scales = [s for s in self.scales if s <= len(windows)]
        merged = {s: reduce(lambda a, b: a + b, windows[-s:]) for s in scales}
        stacked = Counts(
            np.stack([merged[s].counts for s in scales]),
            np.array([merged[s].confidence_sum for s in scales]),
            np.array([merged[s].confidence_squares for s in scales]),
            {},
            current.layout,
        )
        calibrated, thresholds = self.scores(stacked)  # every scale in one vectorised pass
        results: dict[int, ScaleResult] = {}
        for i, scale in enumerate(scales):
            evidence = {k: float(v[i]) for k, v in calibrated.items()}
            evidence.update(self.family.quality_evidence(merged[scale]))  # exact: no tail map
            results[scale] = ScaleResult(
                windows=scale,
                n=int(merged[scale].n),
                threshold=float(thresholds[i]),
                evidence=evidence,
                drifted=max(evidence.values(), default=0.0) > thresholds[i],
            )
        return Verdict(True, results, self._findings(results, merged))

    def scores(self, stacked: Counts, method: str | None = None):
        """Calibrated evidence of each statistic and the family threshold, for stacked
        windows (arrays of shape ``(k,)``), each at its own size: ``test`` scores the scales of
        one window with it, the benchmarks score thousands of windows."""
        n = np.atleast_1d(stacked.n)
        labelled = np.atleast_1d(stacked.labelled) >= self.family.min_labelled
        evidence = self.family.evidence(stacked)
        return (
            self.calibration.calibrated(evidence, n),
            self.calibration.threshold(n, labelled, method),
        )

    def _findings(self, results: dict[int, ScaleResult], merged: dict[int, Counts]):
        best: dict[str, Finding] = {}
        for scale, r in results.items():
            by_feature: dict[str, dict[str, float]] = {}
            for name, e in r.evidence.items():
                by_feature.setdefault(feature_of(name), {})[name] = e
            for feature, stats in by_feature.items():
                top = max(stats.values())
                excess = top - r.threshold
                if excess <= 0:
                    continue
                if feature not in best or excess > best[feature].excess:
                    best[feature] = Finding(feature, excess, top, r.threshold, scale, stats)
        findings = sorted(best.values(), key=lambda f: -f.excess)
        effects_by_scale = {s: self.family.effects(merged[s]) for s in {f.scale for f in findings}}
        for f in findings:
            f.effects = effects_by_scale[f.scale].get(f.feature, {})
        return findings


def summary(verdict: Verdict) -> str:
    """One line per drifted feature, for logs and alert texts.

    >>> v = Verdict(True, findings=[Finding("state", 2.5, 7.7, 5.2, 1, {}, {"moved": [
    ...     {"category": "TX", "window_share": .3, "reference_share": .1}]})])
    >>> summary(v)
    'state (+2.5, scale 1: TX 10% -> 30%)'
    """
    parts = []
    for f in verdict.findings:
        moved = f.effects.get("moved") or []
        where = ", ".join(
            f"{m['category']} {m['reference_share']:.0%} -> {m['window_share']:.0%}"
            for m in moved[:3]
        )
        parts.append(
            f"{f.feature} (+{f.excess:.1f}, scale {f.scale}" + (f": {where})" if where else ")")
        )
    return "; ".join(parts)
