"""Drift detection benchmark: honest false alarms, delays against an oracle, Evidently, River.

Everything runs on the real state table (the population) with a real model and the monitor's
DEFAULT settings (``stopdrift worker`` as installed: windows of 500, 1 false alarm per million
events, the default bootstrap), through the drift core the coordinator runs (``drift.monitor.
prepare``, ``Detector.scores``: the same code ``Detector.test`` calls; the benchmark checks that
the two agree on a sample of windows).

The model is a scikit-learn HistGradientBoosting classifier cross-fitted on the state table:
every row's probabilities come from a model that never saw it (like the registry's out-of-fold
reference rows), and a transformed row is rescored by its own fold's model.

1. **The honest null, two-level.** For each of ``--references`` references resampled from the
   table (a training set is a sample too), the monitor calibrates on that reference alone; the
   stream is fresh draws from the table. False alarms per million events per reference: their
   mean, the worst decile (90th percentile over references, with a bootstrap confidence
   interval), the worst. Joint calibration (the maximum, used) and Bonferroni, side by side.
2. **On rows the reference never saw.** 80/20 splits: the monitor calibrates on 80%, the
   stream's windows are distinct rows of the other 20%.
3. **Scenarios** (change at event 10,250, mid-window): shifts x1.3..x1.6 of each numeric
   feature, a gradual ramp, a missingness rise, a state-mix change, a label change (labels on
   every event), the natural drift (state rows, then city rows). Per scenario, over
   ``--repeats`` streams: stopdrift's delay (events from the change to the end of the first
   window that alerts), the ORACLE's (the best test that knows which feature changed and how:
   a one-sided test on that feature alone, same windows and scales, at the same false-alarm
   budget per scale), Evidently per window (its defaults), River's ADWIN and KSWIN on the
   changed feature.

Outputs ``benchmarks/results/drift.json`` and ``docs/img/drift_timelines.png`` (per scenario:
the monitor's evidence vs threshold over windows, the change, the alerts).

Run: ``.venv/bin/python -m benchmarks.drift_benchmark [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drift import statistics as st
from drift.counts import Counts
from drift.monitor import prepare
from stopdrift_common.data import load_source
from stopdrift_common.schema import CLASSES, MODEL_FEATURES, NUMERIC_FEATURES, TARGET
from stopdrift_common.settings import PROJECT_ROOT, Settings
from stream_app.coordinator import monitor_config

DATA_DIR = PROJECT_ROOT / "data"
RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "drift.json"
FIGURE = PROJECT_ROOT / "docs" / "img" / "drift_timelines.png"
CHANGE_AT = 10_250  # mid-window on purpose: the first window after the change is mixed
RAMP = 5_000


# --- the population: the state table with cross-fitted probabilities ---------------------------
class Population:
    """Rows of a table, each with probabilities from a fold model that never saw it."""

    def __init__(self, table: pd.DataFrame, seed: int, folds: int = 5):
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.table = table.reset_index(drop=True)
        self.states = sorted(self.table["state"].dropna().unique())
        y = self.table[TARGET].to_numpy()
        self.fold = np.random.default_rng(seed).integers(0, folds, len(self.table))
        self.models = []
        for f in range(folds):
            m = HistGradientBoostingClassifier(
                max_iter=100, categorical_features=[True] + [False] * 4, random_state=seed
            )
            train = self.fold != f
            m.fit(self._x(self.table[train]), y[train])
            assert list(m.classes_) == CLASSES
            self.models.append(m)
        self.full = HistGradientBoostingClassifier(
            max_iter=100, categorical_features=[True] + [False] * 4, random_state=seed
        ).fit(self._x(self.table), y)

    def _x(self, df: pd.DataFrame) -> np.ndarray:
        codes = pd.Categorical(df["state"], categories=self.states).codes.astype(float)
        codes[codes < 0] = np.nan
        nums = [pd.to_numeric(df[c], errors="coerce").to_numpy(float) for c in NUMERIC_FEATURES]
        return np.column_stack([codes, *nums])

    def proba(self, rows: pd.DataFrame, folds: np.ndarray | None) -> np.ndarray:
        """Probabilities of ``rows``: each row by its fold's model (``folds``), or by the model
        of the whole table (rows it never saw: the city table)."""
        if folds is None:
            return self.full.predict_proba(self._x(rows))
        out = np.empty((len(rows), len(CLASSES)))
        for f, model in enumerate(self.models):
            at = folds == f
            if at.any():
                out[at] = model.predict_proba(self._x(rows[at]))
        return out

    def frame(self, rows: pd.DataFrame, folds: np.ndarray | None) -> pd.DataFrame:
        """The monitor's view of rows: features, prediction, confidence, label."""
        p = self.proba(rows, folds)
        out = rows[MODEL_FEATURES].reset_index(drop=True).copy()
        out["predicted"] = np.asarray(CLASSES, dtype=object)[p.argmax(axis=1)]
        out["confidence"] = p.max(axis=1)
        out["label"] = rows[TARGET].to_numpy(dtype=object)
        return out

    def reference(self, index: np.ndarray) -> pd.DataFrame:
        rows = self.table.iloc[index].reset_index(drop=True)
        frame = self.frame(rows, self.fold[index])
        frame.attrs["classes"] = list(CLASSES)
        return frame


# --- windows, scales, verdicts ------------------------------------------------------------------
def sampled_windows(model, frame: pd.DataFrame, index: np.ndarray, chunk: int = 2000) -> Counts:
    """Stacked counts of windows made of the rows ``index`` (shape (W, window)) of ``frame``:
    each row encoded once, windows counted in one ``bincount`` per chunk."""
    codes, confidence = model.layout.encode(frame)
    parts = [
        Counts.sampled(codes, confidence, index[i : i + chunk], model.layout)
        for i in range(0, len(index), chunk)
    ]
    return Counts(
        np.concatenate([p.counts for p in parts]),
        np.concatenate([p.confidence_sum for p in parts]),
        np.concatenate([p.confidence_squares for p in parts]),
        {},
        model.layout,
    )


def window_counts(frame: pd.DataFrame, model, window: int) -> Counts:
    """Stacked counts of consecutive windows of ``frame``'s rows (a whole number of windows)."""
    codes, confidence = model.layout.encode(frame)
    groups = np.arange(len(frame)) // window
    parts = Counts.grouped(codes, confidence, groups, int(groups.max()) + 1, model.layout)
    return Counts(
        np.stack([p.counts for p in parts]),
        np.array([p.confidence_sum for p in parts]),
        np.array([p.confidence_squares for p in parts]),
        {},
        model.layout,
    )


def rolled(a: np.ndarray, scale: int) -> np.ndarray:
    """Sums of each row and the ``scale - 1`` rows before it (the first ones: what exists).

    >>> rolled(np.array([1, 2, 3, 4]), 2).tolist()
    [1, 3, 5, 7]
    """
    c = np.cumsum(a, axis=0)
    out = c.copy()
    out[scale:] = c[scale:] - c[:-scale]
    return out


def merged(stack: Counts, scale: int) -> Counts:
    """Each window merged with the ``scale - 1`` before it (counts add exactly)."""
    return Counts(
        rolled(stack.counts, scale),
        rolled(stack.confidence_sum, scale),
        rolled(stack.confidence_squares, scale),
        {},
        stack.layout,
    )


@dataclass
class Verdicts:
    """Per window: the largest margin (evidence - threshold) over statistics, per scale."""

    margin: dict[int, np.ndarray]  # scale -> (W,)
    evidence: dict[int, np.ndarray] = field(default_factory=dict)  # scale -> max evidence
    threshold: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def alarms(self) -> np.ndarray:
        return np.any(np.stack([m > 0 for m in self.margin.values()]), axis=0)


def verdicts(model, stack: Counts, method: str | None = None) -> Verdicts:
    out = Verdicts({})
    w = stack.counts.shape[0]
    for scale in model.detector.scales:
        m = merged(stack, scale)
        calibrated, threshold = model.detector.scores(m, method)
        top = np.max(np.stack(list(calibrated.values())), axis=0)
        valid = np.arange(w) >= scale - 1  # a merge needs its windows
        out.evidence[scale] = np.where(valid, top, np.nan)
        out.threshold[scale] = threshold
        out.margin[scale] = np.where(valid, top - threshold, -np.inf)
    return out


def check_against_detector(model, stack: Counts, v: Verdicts, n: int = 25) -> int:
    """``Detector.test`` (what the coordinator calls) on a sample of windows must give the
    vectorised verdicts: same alarm, same evidence. Returns the number checked."""
    rows = np.random.default_rng(0).choice(np.arange(3, stack.counts.shape[0]), n, replace=False)
    for w in rows.tolist():
        windows = [
            Counts(
                stack.counts[k],
                float(stack.confidence_sum[k]),
                float(stack.confidence_squares[k]),
                {},
                stack.layout,
            )
            for k in range(w - 3, w + 1)
        ]
        verdict = model.detector.test(windows)
        assert verdict.drifted == bool(v.alarms[w]), (w, verdict.drifted, v.alarms[w])
        for scale, r in verdict.scales.items():
            assert math.isclose(r.max_evidence, v.evidence[scale][w], rel_tol=1e-9, abs_tol=1e-9)
    return n


# --- 1. the honest null ------------------------------------------------------------------------
def honest_null(pop: Population, config, references: int, windows: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = len(pop.table)
    everyone = pop.reference(np.arange(n))  # the population as the monitor sees it
    per_ref: dict[str, list[float]] = {"joint": [], "bonferroni": []}
    thresholds, calib_seconds, checked = [], [], 0
    for i in range(references):
        index = rng.integers(0, n, n)  # the reference: a sample of the population
        started = time.perf_counter()
        model = prepare(str(i), pop.reference(index), config)
        calib_seconds.append(time.perf_counter() - started)
        thresholds.append(model.calibration.threshold(config.window_events, True))
        stream = rng.integers(0, n, (windows, config.window_events))  # fresh draws
        stack = sampled_windows(model, everyone, stream)
        for method in per_ref:
            v = verdicts(model, stack, method)
            if method == "joint" and i == 0:
                checked = check_against_detector(model, stack, v)
            events = windows * config.window_events
            per_ref[method].append(float(v.alarms.sum()) / events * 1e6)
        print(
            f"  null reference {i + 1}/{references}: {per_ref['joint'][-1]:.2f} (joint), "
            f"{per_ref['bonferroni'][-1]:.2f} (Bonferroni) per million",
            flush=True,
        )
    out: dict[str, Any] = {
        "references": references,
        "events_per_reference": windows * config.window_events,
        "calibration_seconds_mean": float(np.mean(calib_seconds)),
        "threshold_mean": float(np.mean(thresholds)),
        "windows_checked_against_detector_test": checked,
    }
    for method, rates in per_ref.items():
        r = np.asarray(rates)
        boot = np.random.default_rng(seed).choice(r, (2000, r.size), replace=True)
        q90 = np.quantile(boot, 0.9, axis=1)
        out[method] = {
            "mean_per_million": float(r.mean()),
            "worst_decile_per_million": float(np.quantile(r, 0.9)),
            "worst_decile_ci95": [float(np.quantile(q90, 0.025)), float(np.quantile(q90, 0.975))],
            "worst_per_million": float(r.max()),
            "share_of_references_with_an_alarm": float((r > 0).mean()),
            "per_reference": rates,
        }
    return out


# --- 2. rows the reference never saw ------------------------------------------------------------
def held_out(pop: Population, config, splits: int, windows: int, seed: int) -> dict:
    """False alarms on rows the reference never saw: the reference is half of the state rows,
    the stream replays the other half in shuffled loops (as ``stopdrift produce`` replays a
    table), so a merged window of 4 x 500 events holds distinct rows, like a live feed.

    An earlier design (80/20 splits, each window 500 rows drawn from the 811 held-out rows)
    could not feed the merged scales: 2,000 events from 811 rows repeat each row 2.5 times, so
    the holdout's own deviation counted 2.5 times (about 290 alarms per million, all at scale 4;
    none at scale 1 in 6,000 windows)."""
    w = config.window_events
    n = len(pop.table)
    everyone = pop.reference(np.arange(n))
    alarms: list[int] = []
    by_scale = {scale: 0 for scale in config.scales}
    for split in range(splits):
        perm = np.random.default_rng(seed + split).permutation(n)
        ref, rest = perm[: n // 2], perm[n // 2 :]
        model = prepare(f"h{split}", pop.reference(ref), config)
        rng = np.random.default_rng(seed + 1000 + split)
        loops = -(-windows * w // len(rest))
        stream = np.concatenate([rng.permutation(rest) for _ in range(loops)])[: windows * w]
        v = verdicts(model, sampled_windows(model, everyone, stream.reshape(windows, w)))
        alarms.append(int(v.alarms.sum()))
        for scale, margin in v.margin.items():
            by_scale[scale] += int((margin > 0).sum())
        print(f"  held-out split {split + 1}/{splits}: {alarms[-1]} alarms", flush=True)
    events = splits * windows * w
    return {
        "splits": splits,
        "windows_per_split": windows,
        "events": events,
        "alarms": alarms,
        "alarms_by_scale": by_scale,
        "per_million": sum(alarms) / events * 1e6,
        "note": "reference = a random half of the state rows; the stream replays the other "
        "half in shuffled loops (no drift, rows the reference never saw)",
    }


# --- 3. scenarios --------------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    kind: str  # shift, gradual, missing, state, label, natural
    feature: str | None = None
    factor: float = 1.0
    share: float = 0.0
    target: str | None = None  # state: the category the mix moves to


def scenarios(quick: bool) -> list[Scenario]:
    factors = [1.5] if quick else [1.3, 1.4, 1.5, 1.6]
    out = [
        Scenario(f"shift x{f} {feat}", "shift", feat, factor=f)
        for feat in NUMERIC_FEATURES
        for f in factors
    ]
    out += [
        Scenario("gradual x1.5 stops_per_year", "gradual", "stops_per_year", factor=1.5),
        Scenario("missing +2% stops_per_year", "missing", "stops_per_year", share=0.02),
        Scenario("missing +10 pts hit_rate", "missing", "hit_rate", share=0.6),
        Scenario("state mix: 10% more TX", "state", "state", share=0.10, target="TX"),
        Scenario("labels: 30% flipped", "label", "label", share=0.30),
        Scenario("natural (state, then city rows)", "natural"),
    ]
    return out


def transform(sc: Scenario, rows: pd.DataFrame, start: int, rng) -> pd.DataFrame:
    """The scenario applied to the rows of events ``start ..`` (event numbers of the stream)."""
    out = rows.copy()
    position = start + np.arange(len(rows))
    after = position >= CHANGE_AT
    if sc.kind in ("shift", "gradual"):
        ramp = np.clip((position - CHANGE_AT) / RAMP, 0, 1) if sc.kind == "gradual" else after
        factor = 1 + (sc.factor - 1) * ramp
        low, high = {"stops_per_year": (0, None)}.get(sc.feature, (0.0, 1.0))
        out[sc.feature] = (out[sc.feature] * factor).clip(lower=low, upper=high)
    elif sc.kind == "missing":
        present = out[sc.feature].notna().to_numpy()
        blank = after & present & (rng.random(len(out)) < sc.share)
        out.loc[blank, sc.feature] = np.nan
    elif sc.kind == "state":
        move = after & (rng.random(len(out)) < sc.share)
        out.loc[move, "state"] = sc.target
    elif sc.kind == "label":
        flip = after & (rng.random(len(out)) < sc.share)
        labels = out[TARGET].to_numpy(dtype=object)
        others = {c: [o for o in CLASSES if o != c] for c in CLASSES}
        labels[flip] = [others[c][int(rng.integers(2))] for c in labels[flip]]
        out[TARGET] = labels
    return out


def oracle_evidence(
    sc: Scenario, pop: Population, stream: pd.DataFrame, w: int, reference: pd.DataFrame
) -> dict:
    """Per window, the oracle's sufficient counts (merge by addition): it tests only the
    changed feature, one-sided in the known direction."""
    ref = pop.table
    k = len(stream) // w
    g = np.arange(len(stream)) // w
    if sc.kind in ("shift", "gradual"):
        r = np.sort(pd.to_numeric(ref[sc.feature], errors="coerce").dropna().to_numpy(float))
        x = pd.to_numeric(stream[sc.feature], errors="coerce").to_numpy(float)
        present = ~np.isnan(x)
        below = np.searchsorted(r, x[present], "left")
        ties = np.searchsorted(r, x[present], "right") - below
        u = np.zeros(len(x))
        u[present] = below + ties / 2  # Mann-Whitney U contributions of window values
        return {
            "kind": "rank",
            "u": np.bincount(g, u, k),
            "n": np.bincount(g, present, k),
            "n_ref": r.size,
        }
    if sc.kind == "missing":
        miss = stream[sc.feature].isna().to_numpy()
        return {
            "kind": "share_up",
            "hits": np.bincount(g, miss, k),
            "n": np.bincount(g, None, k),
            "ref_hits": int(ref[sc.feature].isna().sum()),
            "n_ref": len(ref),
        }
    if sc.kind == "state":
        hit = (stream["state"] == sc.target).to_numpy()
        return {
            "kind": "share_up",
            "hits": np.bincount(g, hit, k),
            "n": np.bincount(g, None, k),
            "ref_hits": int((ref["state"] == sc.target).sum()),
            "n_ref": len(ref),
        }
    if sc.kind == "label":
        right = (stream["predicted"].to_numpy() == stream["label"].to_numpy()).astype(float)
        ref_right = int((reference["predicted"] == reference["label"]).sum())
        return {
            "kind": "share_down",
            "hits": np.bincount(g, right, k),
            "n": np.bincount(g, None, k),
            "ref_hits": ref_right,
            "n_ref": len(ref),
        }
    return {}


def oracle_alarms(o: dict, scales: tuple[int, ...], alpha: float) -> np.ndarray | None:
    if not o:
        return None
    level = -math.log10(alpha)
    out = np.zeros(len(o["n"]), dtype=bool)
    for scale in scales:
        n = rolled(o["n"], scale)
        if o["kind"] == "rank":
            m = o["n_ref"]
            u = rolled(o["u"], scale)
            z = (u - n * m / 2) / np.sqrt(np.maximum(n * m * (n + m + 1) / 12, 1e-12))
            ev = st.normal_evidence(z, "upper")
        else:
            sided = "upper" if o["kind"] == "share_up" else "lower"
            ev = st.share_evidence(o["ref_hits"], o["n_ref"], rolled(o["hits"], scale), n, sided)
        valid = np.arange(len(n)) >= scale - 1
        out |= valid & (ev > level)
    return out


def first_delay(alarms: np.ndarray | None, w: int, change: int) -> float | None:
    if alarms is None:
        return None
    ends = (np.arange(len(alarms)) + 1) * w
    after = np.flatnonzero(alarms & (ends > change))
    return float(ends[after[0]] - change) if after.size else None


def stream_rows(sc: Scenario, pop: Population, city: pd.DataFrame, n_events: int, rng):
    """(transformed raw rows, their folds (None: unseen rows), the change point)."""
    if sc.kind == "natural":
        state = pop.table.sample(frac=1, random_state=int(rng.integers(1 << 31)))
        rows = pd.concat([state, city.sample(frac=1, random_state=int(rng.integers(1 << 31)))])
        rows = rows.reset_index(drop=True).iloc[: (len(rows) // 500) * 500]
        folds = np.concatenate(
            [pop.fold[state.index.to_numpy()], np.full(len(rows) - len(state), -1)]
        )
        return rows, folds, len(state)
    index = rng.integers(0, len(pop.table), n_events)
    rows = transform(sc, pop.table.iloc[index].reset_index(drop=True), 0, rng)
    return rows, pop.fold[index], CHANGE_AT


def scored_frame(pop: Population, rows: pd.DataFrame, folds: np.ndarray) -> pd.DataFrame:
    frame = rows[MODEL_FEATURES].reset_index(drop=True).copy()
    p = np.empty((len(rows), len(CLASSES)))
    seen = folds >= 0
    if seen.any():
        p[seen] = pop.proba(rows[seen], folds[seen])
    if (~seen).any():
        p[~seen] = pop.proba(rows[~seen], None)
    frame["predicted"] = np.asarray(CLASSES, dtype=object)[p.argmax(axis=1)]
    frame["confidence"] = p.max(axis=1)
    frame["label"] = rows[TARGET].to_numpy(dtype=object)
    return frame, p


def run_river(values: np.ndarray, kind: str, seed: int) -> list[int]:
    from river import drift

    det = drift.ADWIN() if kind == "adwin" else drift.KSWIN(seed=seed)
    flags = []
    for i, v in enumerate(values):
        if np.isnan(v):
            continue
        det.update(float(v))
        if det.drift_detected:
            flags.append(i + 1)
    return flags


def river_values(sc: Scenario, stream: pd.DataFrame, proba: np.ndarray) -> np.ndarray:
    """The univariate stream River watches: the changed feature (log for counts), a missing
    indicator, a category indicator, correctness, or (natural) log stops_per_year."""
    if sc.kind in ("shift", "gradual"):
        x = pd.to_numeric(stream[sc.feature], errors="coerce").to_numpy(float)
        return np.log1p(x) if sc.feature == "stops_per_year" else x
    if sc.kind == "missing":
        return stream[sc.feature].isna().to_numpy(float)
    if sc.kind == "state":
        return (stream["state"] == sc.target).to_numpy(float)
    if sc.kind == "label":
        return (stream["predicted"].to_numpy() == stream["label"].to_numpy()).astype(float)
    return np.log1p(pd.to_numeric(stream["stops_per_year"], errors="coerce").to_numpy(float))


def evidently_delay(
    model_ref: pd.DataFrame, frame: pd.DataFrame, w: int, change: int, before: int, after: int
) -> dict:
    """Evidently's DataDriftPreset on the windows around the change (about 0.5 s a window):
    the delay of its any-column and its default (half the columns) verdicts."""
    from stream_app.reports import evidently_drift

    ref = model_ref.sample(min(2000, len(model_ref)), random_state=0)
    first = max(0, change // w - before)
    out: dict[str, Any] = {
        "windows_run": 0,
        "any_column": None,
        "dataset": None,
        "false_alarms_any_column": 0,
    }
    for k in range(first, min(len(frame) // w, change // w + after)):
        verdict = evidently_drift(ref, frame.iloc[k * w : (k + 1) * w])
        out["windows_run"] += 1
        end = (k + 1) * w
        if end <= change:
            out["false_alarms_any_column"] += bool(verdict["drifted_columns"])
            continue
        if verdict["drifted_columns"] and out["any_column"] is None:
            out["any_column"] = end - change
        if verdict["dataset_drift"] and out["dataset"] is None:
            out["dataset"] = end - change
    return out


def run_scenarios(pop, city, config, model, args) -> tuple[dict, dict]:
    w = config.window_events
    n_events = 40_000 if args.quick else 60_000
    results, timelines = {}, {}
    reference_frame_rows = pop.reference(np.arange(len(pop.table)))
    for s_i, sc in enumerate(scenarios(args.quick)):
        rng = np.random.default_rng(args.seed + 100 * s_i)
        rec: dict[str, Any] = {"kind": sc.kind, "feature": sc.feature}
        delays = {"stopdrift": [], "bonferroni": [], "oracle": [], "adwin": [], "kswin": []}
        false_alarms = 0
        for rep in range(args.repeats):
            rows, folds, change = stream_rows(sc, pop, city, n_events, rng)
            frame, proba = scored_frame(pop, rows, folds)
            stack = window_counts(frame, model, w)
            v = verdicts(model, stack)
            delays["stopdrift"].append(first_delay(v.alarms, w, change))
            delays["bonferroni"].append(
                first_delay(verdicts(model, stack, "bonferroni").alarms, w, change)
            )
            ends = (np.arange(len(v.alarms)) + 1) * w
            false_alarms += int((v.alarms & (ends <= change)).sum())
            o = oracle_alarms(
                oracle_evidence(sc, pop, frame, w, reference_frame_rows),
                model.detector.scales,
                config.alpha * config.calibration_margin,  # the full budget, no margin
            )
            if o is not None:  # no oracle for the natural drift: everything changes at once
                delays["oracle"].append(first_delay(o, w, change))
            if rep < args.river_repeats:
                values = river_values(sc, frame, proba)
                for kind in ("adwin", "kswin"):
                    flags = [f for f in run_river(values, kind, args.seed) if f > change]
                    delays[kind].append(float(flags[0] - change) if flags else None)
            if rep == 0:
                timelines[sc.name] = {
                    "evidence": {s: v.evidence[s].tolist() for s in v.evidence},
                    "threshold": {s: v.threshold[s].tolist() for s in v.threshold},
                    "alarms": v.alarms.tolist(),
                    "change": change,
                }
                if args.evidently and sc.name in EVIDENTLY_SCENARIOS:
                    rec["evidently"] = evidently_delay(
                        reference_frame_rows, frame, w, change, *((2, 6) if args.quick else (4, 12))
                    )
        for name, ds in delays.items():
            rec[name] = summarise(ds)
        rec["stopdrift"]["false_alarms_before_change"] = false_alarms
        s_mean, o_mean = rec["stopdrift"]["mean"], rec["oracle"]["mean"]
        s_med, o_med = rec["stopdrift"]["median"], rec["oracle"]["median"]
        # means: delays come in steps of a window, and medians jump between steps
        rec["ratio_to_oracle"] = (s_mean / o_mean) if s_mean and o_mean else None
        results[sc.name] = rec
        print(
            f"  {sc.name}: stopdrift {fmt(s_med)}, oracle {fmt(o_med)}, Bonferroni "
            f"{fmt(rec['bonferroni']['median'])}",
            flush=True,
        )
    return results, timelines


EVIDENTLY_SCENARIOS = {
    "shift x1.5 stops_per_year",
    "shift x1.5 hit_rate",
    "gradual x1.5 stops_per_year",
    "missing +2% stops_per_year",
    "state mix: 10% more TX",
    "labels: 30% flipped",
    "natural (state, then city rows)",
}


def summarise(delays: list[float | None]) -> dict[str, Any]:
    found = [d for d in delays if d is not None]
    if not delays:
        return {"median": None, "mean": None, "detected": 0, "runs": 0}
    return {
        "median": float(np.median(found)) if len(found) * 2 > len(delays) else None,
        "mean": float(np.mean(found)) if found else None,
        "detected": len(found),
        "runs": len(delays),
    }


def both(summary: dict[str, Any]) -> str:
    if summary["runs"] == 0:
        return "-"
    missed = summary["runs"] - summary["detected"]
    text = f"{fmt(summary['median'])} ({fmt(summary['mean'])})"
    return text + (f", missed {missed}/{summary['runs']}" if missed else "")


def fmt(x: Any) -> str:
    return "missed" if x is None else f"{x:,.0f}"


# --- the picture ---------------------------------------------------------------------------------
def plot(timelines: dict, window: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(timelines)
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    colours = {1: "#1f77b4", 2: "#ff7f0e", 4: "#2ca02c"}
    for ax, name in zip(axes.ravel(), names, strict=False):
        t = timelines[name]
        for scale, ev in t["evidence"].items():
            x = (np.arange(len(ev)) + 1) * window
            margin = np.asarray(ev) - np.asarray(t["threshold"][scale])
            ax.plot(x, margin, lw=0.9, color=colours[int(scale)], label=f"{scale} window(s)")
        alarms = np.flatnonzero(np.asarray(t["alarms"]))
        ax.plot((alarms + 1) * window, np.zeros(alarms.size), "|", color="red", ms=8, label="alert")
        ax.axhline(0, color="black", lw=0.8)
        ax.axvline(t["change"], color="grey", ls="--", lw=0.8)
        ax.set_title(name, fontsize=8)
        ax.set_ylim(-6, 12)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6, loc="upper left")
    fig.suptitle(
        "Largest evidence minus threshold per window and scale (above 0: drift); dashed: "
        "the change; red: alerts",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# --- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer references and scenarios")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--references", type=int, help="resampled references (default 40)")
    parser.add_argument("--null-windows", type=int, help="windows per reference (20,000)")
    parser.add_argument("--repeats", type=int, help="streams per scenario (default 20)")
    parser.add_argument("--river-repeats", type=int, default=3)
    parser.add_argument("--no-evidently", dest="evidently", action="store_false")
    parser.add_argument(
        "--held-out-only",
        action="store_true",
        help="re-measure only the held-out rows, into the last run's JSON",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args(argv)
    if args.held_out_only and not args.out.is_file():
        parser.error(f"--held-out-only updates the last run's results, but {args.out} is missing")
    args.references = args.references or (5 if args.quick else 40)
    args.null_windows = args.null_windows or (4000 if args.quick else 20_000)
    args.repeats = args.repeats or (5 if args.quick else 20)
    started = time.time()

    settings = Settings()  # the defaults a user gets
    config = monitor_config(settings)
    pop = Population(load_source(DATA_DIR, "state"), args.seed)
    city = load_source(DATA_DIR, "city")
    result: dict[str, Any] = {
        "meta": {
            "seed": args.seed,
            "quick": args.quick,
            "settings": {
                k: getattr(settings, k)
                for k in (
                    "window_events",
                    "false_alarms_per_million",
                    "calibration_windows",
                    "calibration_references",
                    "min_window_events",
                )
            },
            "alpha_per_scale": config.alpha,
            "calibration_margin": config.calibration_margin,
            "scales": list(config.scales),
            "change_at": CHANGE_AT,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
            "model": "sklearn HistGradientBoostingClassifier, 5-fold cross-fitted on the state "
            "table (not PyCaret)",
            "oracle": "one-sided test on the changed feature alone (rank z for shifts, exact "
            "share tests for missingness, the moved-to state and accuracy), same windows and "
            "scales, at -log10(alpha per scale): the same budget without the nine-in-ten "
            "reference margin stopdrift pays",
            "river": {"adwin": "ADWIN() defaults", "kswin": f"KSWIN(seed={args.seed}) defaults"},
            "evidently": "DataDriftPreset defaults per window (numeric features, state, "
            "predicted class), 2,000 reference rows",
        }
    }
    if not args.held_out_only:
        print("honest null (resampled references, fresh draws from the table) ...", flush=True)
        result["null"] = honest_null(pop, config, args.references, args.null_windows, args.seed)
    print("rows the reference never saw ...", flush=True)
    result["held_out"] = held_out(
        pop, config, 5 if args.quick else 20, 200 if args.quick else 1000, args.seed
    )
    if args.held_out_only:  # re-measure this part alone, keep the rest of the last run
        last = json.loads(args.out.read_text())
        last["held_out"] = result["held_out"]
        args.out.write_text(json.dumps(last, indent=2, default=float) + "\n")
        print(json.dumps(result["held_out"], indent=1))
        return 0
    print("scenarios ...", flush=True)
    started_cal = time.perf_counter()
    model = prepare("bench", pop.reference(np.arange(len(pop.table))), config)
    result["meta"]["calibration_seconds"] = time.perf_counter() - started_cal
    result["meta"]["thresholds"] = {
        str(p.size): {"joint": p.threshold_labelled, "bonferroni": p.bonferroni_labelled}
        for p in model.calibration.points
    }
    result["scenarios"], timelines = run_scenarios(pop, city, config, model, args)
    plot(timelines, config.window_events, args.figure)
    result["meta"]["runtime_s"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(markdown(result))
    print(f"\nwrote {args.out} and {args.figure} in {result['meta']['runtime_s']:.0f} s")
    return 0


def markdown(result: dict[str, Any]) -> str:
    null = result["null"]
    lines = [
        "| false alarms / million events | mean | worst decile (95% CI) | worst |",
        "|---|---|---|---|",
    ]
    for method in ("joint", "bonferroni"):
        n = null[method]
        lo, hi = n["worst_decile_ci95"]
        lines.append(
            f"| {method} | {n['mean_per_million']:.2f} | "
            f"{n['worst_decile_per_million']:.2f} ({lo:.2f}-{hi:.2f}) | "
            f"{n['worst_per_million']:.2f} |"
        )
    lines += [
        "",
        "| scenario | stopdrift: median (mean) | oracle: median (mean) | ratio of means | "
        "Bonferroni | ADWIN | KSWIN | Evidently (any column / default) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["scenarios"].items():
        ev = r.get("evidently")
        evs = f"{fmt(ev['any_column'])} / {fmt(ev['dataset'])}" if ev else "-"
        ratio = f"{r['ratio_to_oracle']:.2f}" if r["ratio_to_oracle"] else "-"
        lines.append(
            f"| {name} | {both(r['stopdrift'])} | {both(r['oracle'])}"
            f" | {ratio} | {fmt(r['bonferroni']['median'])} | "
            f"{fmt(r['adwin']['median'])} | {fmt(r['kswin']['median'])} | {evs} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
