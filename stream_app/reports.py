"""Evidently 0.7 adapter: the only module that imports Evidently (lazily: importing it costs
seconds, and the worker only needs it when a drifted window gets a report).

``write_drift_report`` writes a DataDriftPreset HTML report of one window against the reference;
``evidently_drift`` runs the same preset and returns Evidently's own verdict (the benchmarks
compare it with the calibrated detector); ``log_report_to_mlflow`` attaches a report to an MLflow
run and never raises.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from stopdrift_common.schema import CATEGORICAL_FEATURES, NUMERIC_FEATURES

log = logging.getLogger(__name__)

MONITORED_CATEGORICAL = [*CATEGORICAL_FEATURES, "source", "predicted"]


def _columns(reference_rows: pd.DataFrame, window_rows: pd.DataFrame) -> tuple[list, list]:
    both = set(reference_rows.columns) & set(window_rows.columns)

    def has_values(c: str) -> bool:  # Evidently refuses a column that is empty on either side
        return bool(reference_rows[c].notna().any() and window_rows[c].notna().any())

    both = {c for c in both if has_values(c)}
    num = [c for c in NUMERIC_FEATURES if c in both]
    cat = [c for c in MONITORED_CATEGORICAL if c in both]
    return num, cat


def _run(reference_rows: pd.DataFrame, window_rows: pd.DataFrame):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    num, cat = _columns(reference_rows, window_rows)
    if not num and not cat:
        raise ValueError("reference and window rows share no monitored column")

    def dataset(df: pd.DataFrame):
        frame = df[num + cat].copy()
        for c in num:
            frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
        for c in cat:
            frame[c] = frame[c].astype(object)
        definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
        return Dataset.from_pandas(frame, data_definition=definition)

    report = Report([DataDriftPreset(columns=num + cat)])
    return report.run(dataset(window_rows), dataset(reference_rows)), num + cat


def write_drift_report(reference_rows: pd.DataFrame, window_rows: pd.DataFrame, path: Path) -> Path:
    """Write an Evidently DataDriftPreset HTML report of ``window_rows`` against
    ``reference_rows`` (numeric features, state, source and the predicted class) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot, _ = _run(reference_rows, window_rows)
    tmp = path.with_suffix(".tmp")
    snapshot.save_html(str(tmp))
    tmp.replace(path)  # readers never see a half-written report
    return path


def evidently_drift(reference_rows: pd.DataFrame, window_rows: pd.DataFrame) -> dict[str, Any]:
    """Evidently's default verdict for one window: the columns it calls drifted, their share,
    and its dataset-level call (share >= 0.5, the preset's default ``drift_share``)."""
    snapshot, columns = _run(reference_rows, window_rows)
    drifted: list[str] = []
    share = None
    for result in snapshot.dict().get("metrics", []):
        name = str(result.get("metric_name") or result.get("metric_id", ""))
        value = result.get("value")
        if name.startswith("DriftedColumnsCount"):
            share = float(value["share"]) if isinstance(value, dict) else None
        elif name.startswith("ValueDrift("):
            col = name.split("column=", 1)[1].split(",", 1)[0].rstrip(")")
            config = result.get("config", {})
            threshold = config.get("threshold")
            method = str(config.get("method", ""))
            if value is None or threshold is None:
                continue
            # p-value tests drift when p < threshold; distances when value >= threshold.
            is_p = "p_value" in method or "test" in method.lower()
            if (value < threshold) if is_p else (value >= threshold):
                drifted.append(col)
    if share is None:
        share = len(drifted) / max(len(columns), 1)
    return {"drifted_columns": drifted, "share": share, "dataset_drift": share >= 0.5}


def log_report_to_mlflow(tracking_uri: str, run_id: str, path: Path) -> bool:
    """Attach a report to an MLflow run under ``drift_reports/``. Returns False (and logs why)
    when it fails; never raises: the stream must not stop for a missing tracking server."""
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=tracking_uri).log_artifact(run_id, str(path), "drift_reports")
        return True
    except Exception as exc:  # noqa: BLE001 - any failure is logged, none is fatal
        log.warning("could not log %s to MLflow run %s at %s: %s", path, run_id, tracking_uri, exc)
        return False
