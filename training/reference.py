"""Reference statistics: a readable summary of what drift is measured against, logged with
each registered version (``reference/reference_stats.json``) next to the reference rows the
stream actually calibrates on (``reference/reference_rows.parquet``).

Numbers are binned with the drift core's one binning (``drift.counts``: quantile bins of the
reference, right-closed), so the summary shows exactly the bins the stream tests.

>>> import pandas as pd, numpy as np
>>> features = pd.DataFrame({"state": ["AZ", "CA", "AZ", "CA"],
...     "search_rate": [.1, None, .3, .4],
...     "hit_rate": [.2, None, .2, .2], "inferred_threshold": [.1, None, .1, .2],
...     "stops_per_year": [1.0, 2.0, 3.0, 4.0]})
>>> proba = np.array([[.2, .8], [.6, .4], [.7, .3], [.1, .9]])
>>> ref = build_reference(features, proba, ["a", "b"], n_bins=2)
>>> ref["numeric"]["stops_per_year"]["proportions"], ref["prediction_shares"]
([0.5, 0.5], {'a': 0.5, 'b': 0.5})
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from drift.counts import N_BINS, Counts, Layout
from stopdrift_common.schema import CATEGORICAL_FEATURES, MODEL_FEATURES, NUMERIC_FEATURES

REFERENCE_VERSION = 2


def build_reference(
    features: pd.DataFrame,
    proba: np.ndarray,
    classes: list[str],
    labels: pd.Series | None = None,
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """Reference statistics of the raw (pre-imputation) features and the model's probabilities.

    ``proba`` has one column per entry of ``classes``, in that order.
    """
    proba = np.asarray(proba, dtype=float)
    frame = features.reset_index(drop=True).copy()
    frame["predicted"] = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    frame["confidence"] = proba.max(axis=1)
    if labels is not None:
        frame["label"] = labels.reset_index(drop=True).astype(object)
    layout = Layout.from_rows(frame, NUMERIC_FEATURES, CATEGORICAL_FEATURES, classes, n_bins)
    counts = Counts.of(frame, layout)
    n = len(frame)
    numeric: dict[str, Any] = {}
    for col in NUMERIC_FEATURES:
        bins = counts.block(col)
        present = pd.to_numeric(frame[col], errors="coerce").dropna()
        numeric[col] = {
            "edges": layout.numeric[col].tolist(),
            "proportions": (bins[:-1] / max(bins[:-1].sum(), 1)).tolist(),
            "missing_share": float(bins[-1] / max(n, 1)),
            "min": float(present.min()) if len(present) else None,
            "max": float(present.max()) if len(present) else None,
            "mean": float(present.mean()) if len(present) else None,
        }
    categorical = {
        col: {
            "shares": frame[col].astype("string").value_counts(normalize=True).to_dict(),
            "missing_share": float(frame[col].isna().mean()),
        }
        for col in CATEGORICAL_FEATURES
    }
    reference: dict[str, Any] = {
        "version": REFERENCE_VERSION,
        "n_rows": n,
        "features": MODEL_FEATURES,
        "classes": list(classes),
        "numeric": numeric,
        "categorical": categorical,
        "prediction_shares": {
            c: float(x / max(n, 1))
            for c, x in zip(classes, counts.block("prediction"), strict=True)
        },
        "mean_confidence": float(frame["confidence"].mean()) if n else None,
    }
    if labels is not None:
        reference["label_shares"] = labels.value_counts(normalize=True).to_dict()
        reference["accuracy"] = float((frame["predicted"] == frame["label"]).mean())
    return reference
