"""A quick seeded simulation of the disparity statistics (``drift/disparity.py``) on the state
table, through the code a stream would call (``DisparityMonitor``: update per window of 500
events, close, test at scales 1/2/4/8 with the default budget of 1 false alarm per million
events). Not the drift benchmark (the disparity scenarios are not in it yet): about 1.5 min of
CPU.

- null: seeded replays of the whole table against a reference of the whole table;
- held-out null: the reference is a random half of the locations, the stream the other half;
- power: delay from the change (event 6,250, mid-window) to the end of the first window whose
  black-white search-rate alert fires, for each location's gap widened by 20% and 50%, and for
  the producer's ``gap-flat-black --factor 1.25`` (black x1.25, white x0.870);
- state mix: after one pass, only Illinois's rows (its gaps 3 points above the mean).

    python -m benchmarks.disparity_sim            # writes benchmarks/results/disparity.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from drift import disparity as dp
from producers import scenarios
from stopdrift_common.settings import PROJECT_ROOT

W = 500
CHANGE = 6250


def replay(table: pd.DataFrame, loops: int, seed: int, first_seq: int = 0) -> pd.DataFrame:
    parts = [
        table.sample(frac=1, random_state=np.random.default_rng([seed, loop]))
        for loop in range(loops)
    ]
    feed = pd.concat(parts, ignore_index=True)
    return feed.assign(seq=np.arange(first_seq, first_seq + len(feed)))


def widen(feed: pd.DataFrame, table: pd.DataFrame, factor: float) -> pd.DataFrame:
    white = dp.within_location_gaps(table, "search_rate", "black").set_index(list(dp.LOCATION))
    keys = pd.MultiIndex.from_frame(feed[list(dp.LOCATION)].map(dp._text))
    w = white["white"].reindex(keys).to_numpy()
    change = (feed["subject_race"] == "black").to_numpy() & (feed["seq"] >= CHANGE).to_numpy()
    change &= ~np.isnan(w)
    s = feed["search_rate"].to_numpy().copy()
    s[change] = w[change] + factor * (s[change] - w[change])
    return feed.assign(search_rate=s)


def flat(feed: pd.DataFrame, table: pd.DataFrame, factor: float) -> pd.DataFrame:
    scenario = scenarios.FlatGapShift(group="black", at=CHANGE, factor=factor)
    scenario.white_factor = scenarios.flat_white_factor(table, "black", factor)
    return scenario.apply(feed, 0)


def run(reference, calibration, feed: pd.DataFrame) -> list[dp.DisparityVerdict]:
    monitor = dp.DisparityMonitor(reference, calibration, window_events=W)
    out = []
    for k in range(len(feed) // W):
        monitor.update(feed.iloc[k * W : (k + 1) * W])
        out.append(monitor.close(k))
    return out


def n_alerts(verdicts) -> int:
    return sum(len(v.alerts) for v in verdicts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--null-streams", type=int, default=12)
    p.add_argument("--null-loops", type=int, default=10)
    p.add_argument("--splits", type=int, default=6)
    p.add_argument("--power-streams", type=int, default=12)
    p.add_argument("--out", type=Path, default=PROJECT_ROOT / "benchmarks/results/disparity.json")
    args = p.parse_args(argv)
    started = time.process_time()
    state = pd.read_csv(PROJECT_ROOT / "data/opp-stops_state.csv")
    reference = dp.DisparityReference(state)
    t = time.process_time()
    calibration = dp.calibrate(reference, window_events=W, seed=42)
    result: dict = {"calibration_cpu_seconds": round(time.process_time() - t, 2)}
    result["alpha"] = calibration.alpha

    events = alarms = 0
    for seed in range(args.null_streams):
        verdicts = run(reference, calibration, replay(state, args.null_loops, seed))
        events += len(verdicts) * W
        alarms += n_alerts(verdicts)
    result["null"] = {"events": events, "alarms": alarms}
    print("null", result["null"], flush=True)

    keys = state[list(dp.LOCATION)].map(dp._text).apply(tuple, axis=1)
    locations = sorted(set(keys))
    events = alarms = 0
    for split in range(args.splits):
        chosen = np.random.default_rng(split).permutation(len(locations))[: len(locations) // 2]
        in_ref = keys.isin({locations[i] for i in chosen}).to_numpy()
        ref = dp.DisparityReference(state[in_ref])
        cal = dp.calibrate(ref, window_events=W, seed=split)
        verdicts = run(ref, cal, replay(state[~in_ref], 6, split))
        events += len(verdicts) * W
        alarms += n_alerts(verdicts)
    result["held_out_null"] = {"events": events, "alarms": alarms}
    print("held-out null", result["held_out_null"], flush=True)

    changes = {
        "gap +20%": lambda f: widen(f, state, 1.2),
        "gap +50%": lambda f: widen(f, state, 1.5),
        "gap-flat-black x1.25": lambda f: flat(f, state, 1.25),
    }
    result["power"] = {}
    for name, change in changes.items():
        delays, early = [], 0
        for seed in range(args.power_streams):
            verdicts = run(reference, calibration, change(replay(state, 5, 100 + seed)))
            first = [
                v.window
                for v in verdicts
                if any((a.metric, a.pair) == ("search_rate", "black-white") for a in v.alerts)
            ]
            early += sum(len(v.alerts) for v in verdicts if (v.window + 1) * W <= CHANGE)
            delays.append((first[0] + 1) * W - CHANGE if first else None)
        found = [d for d in delays if d is not None]
        result["power"][name] = {
            "caught": f"{len(found)}/{len(delays)}",
            "median_delay_events": statistics.median(found) if found else None,
            "delays": delays,
            "alarms_before_the_change": early,
        }
        print(name, result["power"][name], flush=True)

    first = replay(state, 1, seed=7)
    only = state[state["state"].isin(["IL", "AZ", "CA"])]
    mix = replay(only, 20, seed=8, first_seq=len(first))
    verdicts = run(reference, calibration, pd.concat([first, mix], ignore_index=True))
    result["state_mix_il_only"] = {"events": len(verdicts) * W, "alarms": n_alerts(verdicts)}
    print("state mix", result["state_mix_il_only"], flush=True)
    result["cpu_seconds"] = round(time.process_time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"cpu {result['cpu_seconds']} s; written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
