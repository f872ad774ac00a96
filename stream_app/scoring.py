"""Vectorised scoring: all valid events of a batch go through the model in one call.

Missing values stay missing (None -> NaN): the pipeline imputes them as it did in training.
``predict_proba`` columns follow ``classes`` (the champion's class order, from its reference).

>>> import numpy as np
>>> class Half:
...     def predict_proba(self, X):
...         return np.tile([0.2, 0.5, 0.3], (len(X), 1))
>>> events = [{"state": "AZ", "search_rate": None, "hit_rate": 0.3,
...            "inferred_threshold": None, "stops_per_year": 12.0}]
>>> X = features_frame(events)
>>> X.dtypes["search_rate"], bool(X["search_rate"].isna().all())
(dtype('float64'), True)
>>> s = score(Half(), ["black", "hispanic", "white"], X)
>>> s.predicted, s.probabilities[0]
(['hispanic'], {'black': 0.2, 'hispanic': 0.5, 'white': 0.3})
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stopdrift_common.schema import CATEGORICAL_FEATURES, MODEL_FEATURES, NUMERIC_FEATURES


def features_frame(events: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The model's input columns, numeric ones as float64 with NaN for missing values."""
    frame = pd.DataFrame.from_records(list(events), columns=MODEL_FEATURES)
    for col in NUMERIC_FEATURES:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in CATEGORICAL_FEATURES:
        frame[col] = frame[col].astype(object)
    return frame


@dataclass
class Scores:
    proba: np.ndarray  # (n events, n classes), columns in ``classes`` order
    classes: list[str]
    errors: dict[int, str] = field(default_factory=dict)  # row -> error, when rows failed

    @property
    def predicted(self) -> list[str]:
        if len(self.proba) == 0:
            return []
        return np.asarray(self.classes, dtype=object)[self.proba.argmax(axis=1)].tolist()

    @property
    def probabilities(self) -> list[dict[str, float]]:
        rounded = np.round(self.proba, 6).tolist()
        return [dict(zip(self.classes, row, strict=True)) for row in rounded]


PARALLEL_ROWS = 5_000  # from this many rows, a LightGBM model predicts on every core


def predict_params(model: Any, n_rows: int) -> dict[str, Any]:
    """Extra ``predict_proba`` arguments for a call on ``n_rows`` rows: ``num_threads`` for a
    large batch scored by LightGBM (trained with ``n_jobs=1``; each row's result is the same
    whatever the thread count). Array messages give 15,000-row calls where the model is most
    of the time; per-event batches stay on one thread, next to Faust's event loop.

    >>> predict_params(object(), 50_000)
    {}
    """
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if n_rows >= PARALLEL_ROWS and type(final).__module__.startswith("lightgbm"):
        return {"num_threads": os.cpu_count() or 1}
    return {}


def score(model: Any, classes: Sequence[str], frame: pd.DataFrame) -> Scores:
    """One ``predict_proba`` call for the whole frame."""
    if len(frame) == 0:
        return Scores(np.zeros((0, len(classes))), list(classes))
    params = predict_params(model, len(frame))
    proba = np.asarray(model.predict_proba(frame, **params), dtype=float)
    if proba.shape[1] != len(classes):
        raise ValueError(
            f"the model returned {proba.shape[1]} probability columns for {len(classes)} classes "
            f"({', '.join(classes)}): the registered reference does not match the model"
        )
    return Scores(proba, list(classes))
