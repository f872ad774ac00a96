"""The calibrated detector: its false-alarm rate on reference windows, and real shifts caught."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.drift_benchmark import fake_champion
from stopdrift_common.data import load_source
from stopdrift_common.schema import CLASSES
from stopdrift_common.settings import PROJECT_ROOT
from stream_app.detectors import CalibratedDetector, bootstrap_windows, compute_statistics
from stream_app.windows import Layout, SeqWindows

PROBA = [f"proba_{c}" for c in CLASSES]


@pytest.fixture(scope="module")
def champion():
    reference, rows = fake_champion(seed=0)
    return reference, rows, Layout.from_reference(reference, rows)


@pytest.mark.parametrize(("alpha", "n_null"), [(0.05, 4000), (0.001, 20000)])
def test_false_alarm_rate_on_reference_windows_is_under_nominal(champion, alpha, n_null):
    _, rows, layout = champion
    det = CalibratedDetector(layout, rows, window_events=500, false_alarm_rate=alpha, seed=1)
    assert det.calibration["seed"] == 1 and det.calibration["n_tests"] == len(det.thresholds)
    null = bootstrap_windows(layout, rows, 500, n_null, seed=2)  # other draws than calibration
    rate = det.exceedances(compute_statistics(null, layout)).mean()
    assert rate <= alpha


def test_calibration_is_reproducible(champion):
    _, rows, layout = champion
    a = CalibratedDetector(layout, rows, n_bootstrap=500, seed=5).thresholds
    b = CalibratedDetector(layout, rows, n_bootstrap=500, seed=5).thresholds
    assert a == b


def run_windows(det, layout, df, proba, window_events=500):
    windows = SeqWindows(window_events)
    flagged = []
    for c in windows.add(np.arange(len(df)), df, proba, CLASSES, None, layout):
        det.update(compute_statistics(c.partial, layout))
        flagged.append(det.drifted_features)
    return flagged


def test_shift_of_stops_per_year_is_detected_within_two_windows(champion):
    _, rows, layout = champion
    det = CalibratedDetector(layout, rows, window_events=500, seed=1)
    df = rows.sample(3000, replace=True, random_state=7).reset_index(drop=True)
    df.loc[1000:, "stops_per_year"] *= 1.5  # change at the start of window 2
    flagged = run_windows(det, layout, df, df[PROBA].to_numpy())
    assert flagged[:2] == [[], []]
    first = next(i for i, f in enumerate(flagged) if f)
    assert first in (2, 3)
    assert "stops_per_year" in flagged[first]


def test_city_rows_are_flagged_as_drift(champion):
    _, rows, layout = champion
    det = CalibratedDetector(layout, rows, window_events=500, seed=1)
    city = load_source(PROJECT_ROOT / "data", "city").sample(1000, random_state=3)
    proba = np.random.default_rng(4).dirichlet([2, 2, 2], len(city))
    flagged = run_windows(det, layout, city.reset_index(drop=True), proba)
    assert all(flagged)
    assert {"source", "state"} <= set(flagged[0])


def test_persistence_needs_k_windows_in_a_row():
    det = CalibratedDetector.from_thresholds({("x", "psi"): 1.0}, persistence=3)
    seen = [det.update({("x", "psi"): v}).drift_detected for v in [2, 2, 0, 2, 2, 2, 2]]
    assert seen == [False, False, False, False, False, True, True]
    verdict = det.verdict["x"]
    assert verdict["drifted"] and verdict["statistics"]["psi"]["ratio"] == 2.0


def test_without_reference_rows_the_multinomial_null_is_used(champion):
    reference, _, _ = champion
    layout = Layout.from_reference(reference)
    det = CalibratedDetector(layout, None, window_events=500, false_alarm_rate=0.05, seed=1)
    assert det.calibration["method"] == "multinomial"
    assert ("confidence", "drop") not in det.thresholds
    null = bootstrap_windows(layout, None, 500, 2000, seed=3)
    assert det.exceedances(compute_statistics(null, layout)).mean() <= 0.05


def test_rejects_bad_parameters(champion):
    _, rows, layout = champion
    with pytest.raises(ValueError, match="false_alarm_rate"):
        CalibratedDetector(layout, rows, false_alarm_rate=1.5)
    with pytest.raises(ValueError, match="persistence"):
        CalibratedDetector(layout, rows, persistence=0)
    assert isinstance(rows, pd.DataFrame)
