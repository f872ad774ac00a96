"""Reference statistics: what drift is measured against. Training builds them from the data the
champion was trained on and attaches them to the registered model version; the stream reads them
back from the registry (see ``registry.py``).

Numeric features are binned on the reference's quantiles, so each bin holds about the same share of
reference rows; a window's histogram on the same edges is then compared with the reference's.

>>> import pandas as pd
>>> edges = quantile_edges(pd.Series([1.0, 2, 3, 4, 5, 6, 7, 8]), n_bins=4)
>>> edges
[2.75, 4.5, 6.25]
>>> bin_counts(pd.Series([1.0, 3, 5, 7, None]).to_numpy(), edges).tolist()
[1, 1, 1, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stopdrift_common.schema import CATEGORICAL_FEATURES, MODEL_FEATURES, NUMERIC_FEATURES

REFERENCE_VERSION = 1
N_BINS = 10


def quantile_edges(values: pd.Series, n_bins: int = N_BINS) -> list[float]:
    """Inner bin edges at the reference quantiles (duplicates merged); missing values ignored."""
    present = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    if present.size == 0:
        return []
    qs = np.quantile(present, np.linspace(0, 1, n_bins + 1)[1:-1])
    return [float(x) for x in np.unique(qs)]


def bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of the non-missing values in the len(edges)+1 bins (right-closed on inner edges)."""
    values = np.asarray(values, dtype=float)
    present = values[~np.isnan(values)]
    idx = np.searchsorted(np.asarray(edges, dtype=float), present, side="left")
    return np.bincount(idx, minlength=len(edges) + 1)


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
    n = len(features)
    proba = np.asarray(proba, dtype=float)
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    numeric: dict[str, Any] = {}
    for col in NUMERIC_FEATURES:
        series = pd.to_numeric(features[col], errors="coerce")
        edges = quantile_edges(series, n_bins)
        counts = bin_counts(series.to_numpy(dtype=float), edges)
        present = series.dropna()
        numeric[col] = {
            "edges": edges,
            "proportions": (counts / max(counts.sum(), 1)).tolist(),
            "missing_share": float(series.isna().mean()),
            "min": float(present.min()) if len(present) else None,
            "max": float(present.max()) if len(present) else None,
            "mean": float(present.mean()) if len(present) else None,
        }
    categorical = {
        col: {
            "shares": features[col].astype("string").value_counts(normalize=True).to_dict(),
            "missing_share": float(features[col].isna().mean()),
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
        "prediction_shares": {c: float((predicted == c).mean()) for c in classes},
        "mean_confidence": float(proba.max(axis=1).mean()) if n else None,
    }
    if labels is not None:
        reference["label_shares"] = labels.value_counts(normalize=True).to_dict()
        reference["accuracy"] = float((predicted == labels.to_numpy()).mean())
    return reference
