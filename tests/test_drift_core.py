"""The drift core on the real state table: calibration under an honest null, every tested
statistic can fire, data quality and state-mix alerts say where the drift is."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from drift.counts import Counts
from drift.monitor import DriftMonitor, MonitorConfig, prepare
from drift.windows import position
from stopdrift_common.data import load_source
from stopdrift_common.schema import CATEGORICAL_FEATURES, CLASSES, NUMERIC_FEATURES
from stopdrift_common.settings import PROJECT_ROOT

CONFIG = MonitorConfig(
    numeric=tuple(NUMERIC_FEATURES),
    categorical=tuple(CATEGORICAL_FEATURES),
    nullable=tuple(NUMERIC_FEATURES),
    window_events=500,
    calibration_windows=600,
    calibration_references=20,
)


def population() -> pd.DataFrame:
    """The state table as the monitor sees it, with a model whose predictions depend on the
    features (so that prediction and confidence statistics mean something)."""
    table = load_source(PROJECT_ROOT / "data", "state")
    x = np.log1p(table["stops_per_year"].to_numpy(float))
    a = 1 / (1 + np.exp(-(x - 7)))
    proba = np.column_stack([a * 0.5, 0.3 + 0 * a, 0.7 - a * 0.5])
    frame = table[["state", *NUMERIC_FEATURES]].copy()
    frame["predicted"] = np.asarray(CLASSES, dtype=object)[proba.argmax(axis=1)]
    frame["confidence"] = proba.max(axis=1)
    frame["label"] = table["subject_race"].to_numpy(dtype=object)
    frame.attrs["classes"] = list(CLASSES)
    return frame


@pytest.fixture(scope="module")
def pop() -> pd.DataFrame:
    return population()


@pytest.fixture(scope="module")
def model(pop):
    return prepare("1", pop, CONFIG)


def test_the_calibration_holds_under_a_two_level_null(pop):
    """References resampled from the table, each calibrated on its own; windows drawn fresh
    from the table. At a budget large enough to count alarms in a small run (5 in 100 windows
    per scale), the pooled false-alarm rate stays within the binomial bound of the nominal."""
    config = MonitorConfig(**{**CONFIG.__dict__, "false_alarms_per_million": 300.0})
    alpha = config.alpha  # per window and scale
    rng = np.random.default_rng(7)
    alarms, tests = 0, 0
    for i in range(6):
        reference = pop.iloc[rng.integers(0, len(pop), len(pop))].reset_index(drop=True)
        reference.attrs["classes"] = list(CLASSES)
        m = prepare(str(i), reference, config)
        windows = pop.iloc[rng.integers(0, len(pop), 300 * 500)].reset_index(drop=True)
        codes, conf = m.layout.encode(windows)
        stack = Counts.sampled(codes, conf, np.arange(len(windows)).reshape(300, 500), m.layout)
        calibrated, threshold = m.detector.scores(stack)
        top = np.max(np.stack(list(calibrated.values())), axis=0)
        alarms += int((top > threshold).sum())
        tests += 300
    bound = stats.binom.ppf(0.999, tests, alpha)
    assert alarms <= bound, (alarms, tests, alpha, bound)


def window_of(pop: pd.DataFrame, seed: int, n: int = 500) -> pd.DataFrame:
    return pop.sample(n, random_state=seed).reset_index(drop=True)


def tripped(pop: pd.DataFrame, statistic: str) -> tuple[pd.DataFrame, dict]:
    """A window of reference rows changed so that ``statistic`` should fire."""
    w = window_of(pop, 3)
    feature, test = statistic.rsplit(".", 1)
    rejects: dict = {}
    if test == "distribution" and feature in NUMERIC_FEATURES:
        present = w[feature].notna()
        w.loc[present, feature] = np.quantile(pop[feature].dropna(), [0.05, 0.95])[
            np.arange(present.sum()) % 2
        ]  # the same middle, the mass moved to the tails
    elif test == "location":
        w[feature] = w[feature] * (2.5 if feature == "stops_per_year" else 1.8)
    elif test == "missing":
        w.loc[w.index[::2], feature] = np.nan
    elif statistic == "state.distribution":  # every state a little: no single one much
        w["state"] = np.resize(sorted(pop["state"].unique()), len(w))
    elif feature == "state":
        w.loc[w.index[:80], "state"] = "CT"  # one small state gains 16 points
    elif feature == "prediction":
        w["predicted"] = CLASSES[1]
    elif feature == "confidence":
        w["confidence"] = 0.34
    elif statistic == "label.distribution":
        w["label"] = CLASSES[0]
    elif statistic == "label.accuracy":
        w["label"] = [next(c for c in CLASSES if c != p) for p in w["predicted"]]
    elif feature == "quality":
        rejects = {test: {"out_of_range": 20}}
    return w, rejects


def test_the_family_tests_only_statistics_that_can_vary(model):
    names = [*model.family.names, *model.family.labelled_names]
    assert "source.distribution" not in names  # one category in the reference: not tested
    assert len(names) == len(set(names)) == 4 * 3 + 2 + 2 + 2


@pytest.mark.parametrize(
    "statistic",
    [f"{f}.{t}" for f in NUMERIC_FEATURES for t in ("distribution", "location", "missing")]
    + [
        "state.distribution",
        "state.category",
        "prediction.distribution",
        "confidence.drop",
        "label.distribution",
        "label.accuracy",
        "quality.hit_rate",
    ],
)
def test_every_tested_statistic_can_fire(model, pop, statistic):
    window, rejects = tripped(pop, statistic)
    counts = Counts.of(window, model.layout)
    counts.rejected = rejects
    verdict = model.detector.test([counts])
    result = verdict.scales[1]
    assert result.evidence[statistic] > result.threshold, (statistic, result.evidence)
    assert statistic.rsplit(".", 1)[0] in verdict.drifted_features or statistic.startswith(
        "quality"
    )


def test_a_clean_window_does_not_fire(model, pop):
    for seed in range(5):
        assert not model.detector.test(
            [Counts.of(window_of(pop, 100 + seed), model.layout)]
        ).drifted


def partial(frame: pd.DataFrame, first_seq: int, rejects: dict | None = None) -> dict:
    seqs = np.arange(first_seq, first_seq + len(frame))
    events = {c: frame[c].tolist() for c in frame.columns}
    events.update(partition=[0] * len(frame), position=position(seqs).tolist(), seq=seqs.tolist())
    return {"model_version": "1", "events": events, "rejects": rejects or {}}


def test_a_window_with_out_of_range_values_raises_a_data_quality_alert_naming_the_field(model, pop):
    monitor = DriftMonitor(CONFIG)
    monitor.add_version(model)
    frame = window_of(pop, 5, 480)
    bad = np.arange(480, 500)  # 20 events dead-lettered with their seq: hit_rate out of range
    rejects = {
        "partition": [0] * 20,
        "position": position(bad).tolist(),
        "seq": bad.tolist(),
        "field": ["hit_rate"] * 20,
        "reason": ["out_of_range"] * 20,
    }
    effects = monitor.ingest(partial(frame, 0, rejects), now=1.0)
    [alert] = effects.alerts
    assert alert["drifted_features"] == ["quality.hit_rate"]
    finding = alert["findings"][0]
    assert finding["effects"]["reasons"] == {"out_of_range": 20}
    assert math.isclose(finding["effects"]["share"], 20 / 500)


def test_an_alert_on_a_state_mix_change_names_the_states_that_moved(model, pop):
    monitor = DriftMonitor(CONFIG)
    monitor.add_version(model)
    frame = window_of(pop, 6)
    frame.loc[frame.index[:120], "state"] = "TX"
    [alert] = monitor.ingest(partial(frame, 0), now=1.0).alerts
    state = next(f for f in alert["findings"] if f["feature"] == "state")
    moved = state["effects"]["moved"]
    assert moved[0]["category"] == "TX"
    assert moved[0]["window_share"] > moved[0]["reference_share"] + 0.15
    assert sum(m["contribution_share"] for m in moved) > 0.8
