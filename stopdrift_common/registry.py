"""The model contract between training and the stream, through the MLflow registry only.

Training registers a version of ``settings.model_name`` (an sklearn/PyCaret pipeline saved with
cloudpickle, with signature and input example) whose run also holds:

- ``reference/reference_stats.json``: the statistics drift is measured against (``reference.py``);
- ``reference/reference_rows.parquet``: the raw reference rows with the model's predictions, for
  calibrating detectors and for Evidently reports.

The alias ``champion`` points at the version the stream must use. The stream calls
``load_champion`` at start and ``champion_version`` on a timer to pick up a new champion.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stopdrift_common.errors import ServerUnavailable, UserError
from stopdrift_common.settings import Settings

REFERENCE_STATS_ARTIFACT = "reference/reference_stats.json"
REFERENCE_ROWS_ARTIFACT = "reference/reference_rows.parquet"


@dataclass
class Champion:
    name: str
    version: str
    run_id: str
    model: Any  # sklearn Pipeline with predict_proba; columns in ``classes`` order
    reference: dict[str, Any]
    reference_rows: pd.DataFrame

    @property
    def classes(self) -> list[str]:
        return list(self.reference["classes"])


def client(settings: Settings):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def champion_version(settings: Settings) -> str | None:
    """The version number the alias points at, or None when there is no champion yet."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version_by_alias(settings.model_name, settings.model_alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise
    return str(mv.version)


def load_champion(settings: Settings, version: str | None = None) -> Champion:
    """Load the champion (or a given version) with its reference statistics and rows. A
    version without its reference rows is refused: the stream would score with no drift
    monitoring."""
    import mlflow.sklearn

    c = client(settings)
    version = version or champion_version(settings)
    if version is None:
        raise UserError(
            f"no model {settings.model_name}@{settings.model_alias} in the registry at "
            f"{settings.mlflow_tracking_uri}: run `stopdrift train` first"
        )
    mv = c.get_model_version(settings.model_name, version)
    reference, rows = load_reference(settings, str(version), run_id=mv.run_id)
    model = mlflow.sklearn.load_model(f"models:/{settings.model_name}/{version}")
    return Champion(settings.model_name, str(version), mv.run_id, model, reference, rows)


def load_reference(
    settings: Settings, version: str, run_id: str | None = None
) -> tuple[dict[str, Any], pd.DataFrame]:
    """A version's reference statistics and rows (what its drift is measured against)."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    run_id = run_id or c.get_model_version(settings.model_name, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            stats_path = c.download_artifacts(run_id, REFERENCE_STATS_ARTIFACT, tmp)
            rows_path = c.download_artifacts(run_id, REFERENCE_ROWS_ARTIFACT, tmp)
        except (MlflowException, OSError) as exc:
            raise UserError(
                f"model {settings.model_name} version {version} has no reference "
                f"({REFERENCE_STATS_ARTIFACT}, {REFERENCE_ROWS_ARTIFACT}): it was not "
                f"registered by `stopdrift train` ({str(exc).splitlines()[0][:120]})"
            ) from None
        reference = json.loads(Path(stats_path).read_text())
        rows = pd.read_parquet(rows_path)
    missing = [f"proba_{c}" for c in reference.get("classes", []) if f"proba_{c}" not in rows]
    if not reference.get("classes") or missing:
        raise UserError(
            f"model {settings.model_name} version {version}: reference rows lack "
            f"{', '.join(missing) or 'classes'}"
        )
    return reference, rows


def require_mlflow(settings: Settings, timeout: float = 3.0) -> None:
    """Fail fast, with how to start it, when the tracking server does not answer."""
    import urllib.error
    import urllib.request

    uri = settings.mlflow_tracking_uri
    if not uri.startswith("http"):
        return  # a local file/sqlite store needs no server
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            if r.status == 200:
                return
    except (urllib.error.URLError, OSError, TimeoutError):
        pass
    raise ServerUnavailable(
        f"MLflow tracking server not reachable at {uri}: start it with `stopdrift mlflow` "
        f"(or `make mlflow`), or set MLFLOW_TRACKING_URI"
    )
