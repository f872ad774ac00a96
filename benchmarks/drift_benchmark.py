"""Drift detection benchmark on streams built from the real tables (no Kafka, no MLflow).

Streams (each event = one table row with the model's probabilities):

- ``none``: rows resampled from the reference (nothing changes), long (1,000,000 events in the
  full run): measures false alarms;
- ``natural``: the state rows, then the city rows (change at the first city row);
- ``shift``: resampled reference, stops_per_year multiplied by 1.5 from event N;
- ``gradual``: the same multiplier rising linearly from 1 to 2 over 5,000 events from N;
- ``missing``: the share of missing stops_per_year rising linearly to 50% over 5,000 events.

Detectors compared on the same streams:

- stopdrift's ``CalibratedDetector`` (every window; the statistics of all windows computed in a
  few vectorised numpy calls);
- Evidently's DataDriftPreset with its defaults, per window (slow: about 0.3 s a window, so only
  the windows around the change, plus a sample of windows of the ``none`` stream whose false
  alarms are extrapolated to a million events; the JSON says how many windows were run);
- River's ADWIN and KSWIN on two univariate streams: stops_per_year (log1p) and the max-proba.

Figures: detection delay (events from the change to the end of the first window, or River
update, that flags it), false alarms per million events (alarms before the change, or anywhere
in ``none``), and CPU per event of the monitor's counting + statistics against scoring.

The "model" is a scikit-learn HistGradientBoostingClassifier trained here on the state table
(the project's champion is a PyCaret pipeline in MLflow; this keeps the benchmark self-contained).

Run: ``.venv/bin/python -m benchmarks.drift_benchmark [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stopdrift_common.data import load_source
from stopdrift_common.reference import build_reference
from stopdrift_common.schema import CLASSES, MODEL_FEATURES, TARGET
from stopdrift_common.settings import PROJECT_ROOT

DATA_DIR = PROJECT_ROOT / "data"
RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "drift.json"


# --- a reference without MLflow (also used by the unit tests) -----------------------------------
def reference_rows_for(table: pd.DataFrame, proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The registry's ``reference_rows`` layout: raw MODEL_FEATURES + source + subject_race +
    predicted + proba_<class>."""
    rows = table[[*MODEL_FEATURES, "source", TARGET]].reset_index(drop=True).copy()
    rows["predicted"] = np.asarray(classes, dtype=object)[np.asarray(proba).argmax(axis=1)]
    for j, c in enumerate(classes):
        rows[f"proba_{c}"] = np.asarray(proba)[:, j]
    return rows


def fake_champion(
    table: pd.DataFrame | None = None, seed: int = 0
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Reference statistics and rows of the state table with a seeded Dirichlet "model"
    (probabilities that ignore the features: enough for tests of the counting and calibration)."""
    if table is None:
        table = load_source(DATA_DIR, "state")
    proba = np.random.default_rng(seed).dirichlet([2.0, 2.0, 2.0], len(table))
    reference = build_reference(table[MODEL_FEATURES], proba, CLASSES, table[TARGET])
    return reference, reference_rows_for(table, proba, CLASSES)


# --- a small real model -------------------------------------------------------------------------
class TableModel:
    """HistGradientBoosting on the raw MODEL_FEATURES (NaN handled natively, state as a
    categorical code; a state it never saw is treated as missing)."""

    def __init__(self, train: pd.DataFrame, seed: int):
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.states = sorted(train["state"].dropna().unique())
        self.model = HistGradientBoostingClassifier(
            max_iter=100, categorical_features=[True] + [False] * 4, random_state=seed
        )
        self.model.fit(self._x(train), train[TARGET].to_numpy())
        self.classes = [str(c) for c in self.model.classes_]

    def _x(self, df: pd.DataFrame) -> np.ndarray:
        codes = pd.Categorical(df["state"], categories=self.states).codes.astype(float)
        codes[codes < 0] = np.nan
        nums = [pd.to_numeric(df[c], errors="coerce").to_numpy(float) for c in MODEL_FEATURES[1:]]
        return np.column_stack([codes, *nums])

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(self._x(df))


# --- streams ------------------------------------------------------------------------------------
WINDOW = 500
CHANGE_AT = 10_250  # mid-window on purpose: the first window after the change is mixed
RAMP = 5_000


def resampled(rows: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    return rows.iloc[rng.integers(0, len(rows), n)].reset_index(drop=True)


def make_stream(
    name: str, state: pd.DataFrame, city: pd.DataFrame, n: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, int]:
    """(raw rows, index of the first changed event)."""
    if name == "natural":
        s = state.sample(frac=1, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)
        c = city.sample(frac=1, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)
        return pd.concat([s, c], ignore_index=True), len(s)
    df = resampled(state, n, rng)
    spy = df["stops_per_year"].to_numpy(float).copy()
    ramp = np.clip((np.arange(n) - CHANGE_AT) / RAMP, 0, 1)
    if name == "shift":
        spy[CHANGE_AT:] *= 1.5
    elif name == "gradual":
        spy *= 1 + ramp
    elif name == "missing":
        spy[rng.random(n) < 0.5 * ramp] = np.nan
    elif name != "none":
        raise ValueError(f"unknown scenario {name!r}")
    df["stops_per_year"] = spy
    return df, CHANGE_AT


# --- detectors on one stream --------------------------------------------------------------------
def delay_and_false_alarms(flags_at: list[int], change_at: int | None, n_events: int) -> dict:
    """``flags_at``: event positions (exclusive end) where a detector fired."""
    if change_at is None:
        before, after = flags_at, []
        clean = n_events
    else:
        before = [f for f in flags_at if f <= change_at]
        after = [f for f in flags_at if f > change_at]
        clean = change_at
    return {
        "delay_events": (after[0] - change_at) if after else None,
        "detected": bool(after) if change_at is not None else None,
        "false_alarms": len(before),
        "events_without_change": clean,
        "false_alarms_per_million": len(before) / clean * 1e6 if clean else None,
    }


def run_monitor(monitor, df, proba, classes, batch=2000) -> tuple[list[int], float]:
    """Feed the real DriftMonitor in worker-sized batches: (window ends that alerted, CPU s)."""
    cols = [*MODEL_FEATURES, "source"]
    flags, cpu = [], 0.0
    for pos in range(0, len(df), batch):
        part = df.iloc[pos : pos + batch]
        t = time.process_time()
        alerts = monitor.update(part[cols], proba[pos : pos + batch], classes, None)
        cpu += time.process_time() - t
        flags += [a["end_event"] for a in alerts]
    return flags, cpu


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


def river_streams(df: pd.DataFrame, proba: np.ndarray) -> dict[str, np.ndarray]:
    spy = df["stops_per_year"].to_numpy(float)
    return {
        "log_stops_per_year": np.log1p(spy),
        "max_proba": proba.max(axis=1),
        "stops_per_year_missing": np.isnan(spy).astype(float),
    }


def run_evidently(rows_ref, df, proba, classes, change_at, windows_before, windows_after):
    """Evidently on the windows around the change: [(window end, any column, dataset)]."""
    from stream_app.reports import evidently_drift

    ev_rows = df[[*MODEL_FEATURES, "source"]].copy()
    ev_rows["predicted"] = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    first = max(0, change_at // WINDOW - windows_before) if change_at is not None else 0
    last = min(len(df) // WINDOW, (change_at // WINDOW if change_at else 0) + windows_after)
    out = []
    for w in range(first, last):
        window = ev_rows.iloc[w * WINDOW : (w + 1) * WINDOW]
        verdict = evidently_drift(rows_ref, window)
        out.append(((w + 1) * WINDOW, bool(verdict["drifted_columns"]), verdict["dataset_drift"]))
    return out, first * WINDOW


def evidently_figures(results, change_at, start_event) -> dict[str, dict]:
    out = {}
    for j, label in [(1, "evidently_any_column"), (2, "evidently_dataset_share")]:
        flags = [r[0] for r in results if r[j]]
        windows_before = sum(1 for r in results if change_at is None or r[0] <= change_at)
        clean_events = windows_before * WINDOW
        before = [f for f in flags if change_at is None or f <= change_at]
        after = [f for f in flags if change_at is not None and f > change_at]
        out[label] = {
            "delay_events": (after[0] - change_at) if after else None,
            "detected": bool(after) if change_at is not None else None,
            "false_alarms": len(before),
            "events_without_change": clean_events,
            "false_alarms_per_million": len(before) / clean_events * 1e6 if clean_events else None,
            "windows_run": len(results),
            "first_event_run": start_event,
            "note": "false alarms extrapolated from the windows run",
        }
    return out


# --- the benchmark ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from stopdrift_common.settings import Settings
    from stream_app.detectors import CalibratedDetector, bootstrap_windows, compute_statistics
    from stream_app.monitor import DriftMonitor
    from stream_app.windows import Layout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short streams (< 2 minutes)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.time()
    rng = np.random.default_rng(args.seed)
    quick = args.quick
    n_stream = 20_000 if quick else 50_000
    n_null = 200_000 if quick else 1_000_000
    n_kswin_null = 20_000 if quick else 200_000
    ev_null_windows = 20 if quick else 150
    ev_before, ev_after = (4, 6) if quick else (10, 20)
    n_splits, heldout_windows = (5, 400) if quick else (20, 1000)

    state = load_source(DATA_DIR, "state")
    city = load_source(DATA_DIR, "city")
    model = TableModel(state, args.seed)
    classes = model.classes
    proba_state = model.predict_proba(state)
    reference = build_reference(state[MODEL_FEATURES], proba_state, classes, state[TARGET])
    rows = reference_rows_for(state, proba_state, classes)
    settings = Settings(window_events=WINDOW, false_alarm_rate=0.001, persistence=1, seed=args.seed)

    # Scoring baseline: the model's predict_proba on worker-sized batches.
    batch = resampled(state, 2000, rng)
    t = time.process_time()
    for _ in range(10):
        model.predict_proba(batch)
    scoring_us = (time.process_time() - t) / 20_000 * 1e6

    t = time.process_time()
    monitor = DriftMonitor(
        reference, rows, settings, "bench", Path("/nonexistent"), write_reports=False
    )
    calibration_s = time.process_time() - t
    layout = monitor.layout
    result: dict[str, Any] = {
        "meta": {
            "seed": args.seed,
            "quick": quick,
            "window_events": WINDOW,
            "false_alarm_rate_per_window": settings.false_alarm_rate,
            "persistence": settings.persistence,
            "calibration": monitor.detector.calibration,
            "change_at": CHANGE_AT,
            "ramp_events": RAMP,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores (shared)",
            "model": "sklearn HistGradientBoostingClassifier on the state table (not PyCaret)",
            "river": {"adwin": "ADWIN() defaults", "kswin": f"KSWIN(seed={args.seed}) defaults"},
            "evidently": "DataDriftPreset defaults (drift_share 0.5) on numeric features, state, "
            "source, predicted class",
        },
        "scenarios": {},
    }

    # none: a long stream of reference-resampled windows, statistics vectorised.
    t = time.process_time()
    null = bootstrap_windows(layout, rows, WINDOW, n_null // WINDOW, seed=args.seed + 1)
    stats = compute_statistics(null, layout)
    hits = monitor.detector.exceedances(stats)
    vector_s = time.process_time() - t
    none: dict[str, Any] = {
        "n_events": n_null,
        "change_at": None,
        "stopdrift": {
            "false_alarms": int(hits.sum()),
            "windows": int(hits.size),
            "false_alarms_per_million": float(hits.sum()) / n_null * 1e6,
            "nominal_per_million": settings.false_alarm_rate * 1e6 / WINDOW,
        },
    }
    # none, held out: the reference is a random 80% of the state rows (as a training split
    # would be), the stream brings the other rows (windows of distinct rows, so unconditionally
    # a window is a fresh sample of the table). Averaged over several splits: given one
    # reference sample, the false-alarm rate itself varies.
    proba_all = proba_state
    splits, hits_total, windows_total, per_split, culprits = n_splits, 0, 0, [], {}
    for split in range(splits):
        perm = np.random.default_rng(args.seed + 100 + split).permutation(len(state))
        k = int(0.8 * len(state))
        ia, ib = perm[:k], perm[k:]
        a = state.iloc[ia]
        ref_a = build_reference(a[MODEL_FEATURES], proba_all[ia], classes, a[TARGET])
        rows_a = rows.iloc[ia].reset_index(drop=True)
        lay_a = Layout.from_reference(ref_a, rows_a)
        det_a = CalibratedDetector(
            lay_a, rows_a, WINDOW, settings.false_alarm_rate, seed=args.seed + split
        )
        rows_b = rows.iloc[ib].reset_index(drop=True)
        windows_b = bootstrap_windows(
            lay_a, rows_b, WINDOW, heldout_windows, seed=args.seed + 200 + split, replace=False
        )
        stats_b = compute_statistics(windows_b, lay_a)
        hits_b = det_a.exceedances(stats_b)
        hits_total += int(hits_b.sum())
        windows_total += int(hits_b.size)
        per_split.append(float(hits_b.mean()))
        for key, thr in det_a.thresholds.items():
            c = int((np.asarray(stats_b[key]) > thr).sum())
            if c:
                culprits[f"{key[0]}:{key[1]}"] = culprits.get(f"{key[0]}:{key[1]}", 0) + c
    none["stopdrift_heldout"] = {
        "false_alarms": hits_total,
        "windows": windows_total,
        "false_alarms_per_million": hits_total / (windows_total * WINDOW) * 1e6,
        "false_alarm_rate_per_window": hits_total / windows_total,
        "max_split_rate_per_window": max(per_split),
        "splits": splits,
        "statistics_that_fired": culprits,
        "note": "reference = random 80% of the state rows, windows = distinct rows of the "
        "other 20%; averaged over splits",
    }
    # River on the null stream (per event; KSWIN is slow, so fewer events).
    null_df = resampled(state, n_null, rng)
    null_proba = model.predict_proba(null_df)
    streams = river_streams(null_df, null_proba)
    for kind, n_ev in [("adwin", n_null), ("kswin", n_kswin_null)]:
        for sname, values in streams.items():
            flags = run_river(values[:n_ev], kind, args.seed)
            none[f"{kind}_{sname}"] = delay_and_false_alarms(flags, None, n_ev)
    ev_rows = null_df.iloc[: ev_null_windows * WINDOW]
    ev, start = run_evidently(
        rows, ev_rows, null_proba[: len(ev_rows)], classes, None, 0, ev_null_windows
    )
    none.update(evidently_figures(ev, None, start))
    result["scenarios"]["none"] = none

    # Change scenarios: the real monitor, River and Evidently on the same stream.
    monitor_cpu, monitor_events = 0.0, 0
    for name in ["natural", "shift", "gradual", "missing"]:
        df, change_at = make_stream(name, state, city, n_stream, rng)
        proba = model.predict_proba(df)
        monitor.reset(reference, rows, "bench")
        flags, cpu = run_monitor(monitor, df, proba, classes)
        monitor_cpu += cpu
        monitor_events += len(df)
        sc: dict[str, Any] = {"n_events": len(df), "change_at": change_at}
        sc["stopdrift"] = delay_and_false_alarms(flags, change_at, len(df))
        first_alert = None
        if flags:
            after = [f for f in flags if f > change_at]
            first_alert = after[0] if after else None
        sc["stopdrift"]["first_alert_window_end"] = first_alert
        for kind in ["adwin", "kswin"]:
            for sname, values in river_streams(df, proba).items():
                sc[f"{kind}_{sname}"] = delay_and_false_alarms(
                    run_river(values, kind, args.seed), change_at, len(df)
                )
        ev, start = run_evidently(rows, df, proba, classes, change_at, ev_before, ev_after)
        sc.update(evidently_figures(ev, change_at, start))
        result["scenarios"][name] = sc

    monitor_us = monitor_cpu / monitor_events * 1e6
    result["cost"] = {
        "monitor_update_cpu_us_per_event": monitor_us,
        "vectorised_window_statistics_us_per_event": vector_s / n_null * 1e6,
        "scoring_cpu_us_per_event_hgb": scoring_us,
        "share_of_cpu_at_3000_events_per_s": monitor_us * 3000 / 1e6,
        "calibration_cpu_s": calibration_s,
        "batch_events": 2000,
        "note": "CPU time (process_time) of DriftMonitor.update in 2,000-event batches, "
        "reports off; scoring = this benchmark's HistGradientBoosting model",
    }
    result["meta"]["runtime_s"] = time.time() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(markdown(result))
    print(f"\nwrote {args.out} in {result['meta']['runtime_s']:.0f} s")
    return 0


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isfinite(x):
        return f"{x:,.{digits}f}"
    return str(x)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| scenario | detector | detection delay (events) | false alarms / million events |"
        " events without change |",
        "|---|---|---|---|---|",
    ]
    for name, sc in result["scenarios"].items():
        for det, fig in sc.items():
            if not isinstance(fig, dict):
                continue
            lines.append(
                f"| {name} | {det} | {_fmt(fig.get('delay_events'))} | "
                f"{_fmt(fig.get('false_alarms_per_million'))} | "
                f"{_fmt(fig.get('events_without_change') or fig.get('windows', 0) * WINDOW)} |"
            )
    c = result["cost"]
    lines += [
        "",
        f"Monitor CPU: {c['monitor_update_cpu_us_per_event']:.2f} us/event "
        f"({c['share_of_cpu_at_3000_events_per_s']:.1%} of one core at 3,000 events/s); "
        f"scoring (HGB) {c['scoring_cpu_us_per_event_hgb']:.2f} us/event; vectorised window "
        f"statistics {c['vectorised_window_statistics_us_per_event']:.3f} us/event; "
        f"calibration {c['calibration_cpu_s']:.2f} s CPU.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
