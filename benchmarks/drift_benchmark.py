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
