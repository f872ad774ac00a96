"""MLflow edge of training: one run with everything, a registered version, tags and the alias.

PyCaret 3.3.2's own MLflow logging breaks with current mlflow, and mlflow 3 saves sklearn models
with skops by default, which fails on PyCaret pipelines: runs are logged here by hand and the
model is saved with cloudpickle (README, "Pitfalls we hit").

The version is created with the digests of its model directory and reference artifacts as tags
(``registry.MODEL_DIGEST_TAG``, ``registry.REFERENCE_DIGEST_TAG``): the stream refuses to
unpickle a version whose files no longer hash to them (README, "Trust model").

Once registered, the version gets its drift calibration for the settings training ran with
(``calibrate_version``; ``stopdrift calibrate --version N`` adds one for other settings): a
worker then loads it instead of spending 13-30 s of CPU on it at every start.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drift.monitor import MonitorConfig, prepare, reference_frame
from stopdrift_common import calibrations, registry
from stopdrift_common.errors import UserError
from stopdrift_common.schema import MODEL_FEATURES, TARGET
from stopdrift_common.settings import Settings

log = logging.getLogger("stopdrift.training")


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: str
    model_uri: str


def log_run(
    settings: Settings,
    *,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: Mapping[str, list[Path]],
    reference: dict[str, Any],
    reference_rows: pd.DataFrame,
    model: Any,
    input_example: pd.DataFrame,
    tags: Mapping[str, str],
) -> Registered:
    """Log one run (params, metrics, files, reference artifacts, model) and register the model
    as a new version of ``settings.model_name``. ``artifacts`` maps run folder -> files."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    registry.client(settings)  # sets the tracking URI
    mlflow.set_experiment(settings.experiment_name)
    signature = infer_signature(input_example, model.predict(input_example))
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags(dict(tags))
        mlflow.log_params({k: _param(v) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        for folder, paths in artifacts.items():
            for path in paths:
                mlflow.log_artifact(str(path), artifact_path=folder)
        with tempfile.TemporaryDirectory() as tmp:
            stats = Path(tmp) / Path(registry.REFERENCE_STATS_ARTIFACT).name
            stats.write_text(json.dumps(reference, indent=2, default=_json_default))
            rows = Path(tmp) / Path(registry.REFERENCE_ROWS_ARTIFACT).name
            reference_rows.to_parquet(rows, index=False)
            folder = str(Path(registry.REFERENCE_STATS_ARTIFACT).parent)
            mlflow.log_artifact(str(stats), artifact_path=folder)
            mlflow.log_artifact(str(rows), artifact_path=folder)
            reference_digest = registry.files_sha256(
                {registry.REFERENCE_STATS_ARTIFACT: stats, registry.REFERENCE_ROWS_ARTIFACT: rows}
            )
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format="cloudpickle",
            signature=signature,
            input_example=input_example,
        )
        digests = {
            registry.MODEL_DIGEST_TAG: logged_model_digest(info.model_uri),
            registry.REFERENCE_DIGEST_TAG: reference_digest,
        }
        # Registered with its digests in one call: no moment where the version exists untagged.
        mv = mlflow.register_model(info.model_uri, settings.model_name, tags=digests)
    version = str(mv.version)
    try:
        calibrate_version(settings, version)
    except Exception as exc:  # the version stands; a worker calibrates it itself
        log.error("model version %s registered without a drift calibration (%r)", version, exc)
    return Registered(run.info.run_id, version, f"models:/{settings.model_name}/{version}")


def calibrate_version(settings: Settings, version: str) -> str:
    """Compute ``version``'s drift calibration for ``settings``' drift options from its
    registered (digest-verified) reference, exactly as a worker would, and store it with the
    version. Returns the artifact path."""
    reference, rows = registry.load_reference(settings, version)
    frame = reference_frame(rows, [str(c) for c in reference["classes"]], TARGET, MODEL_FEATURES)
    config = MonitorConfig(**calibrations.monitor_options(settings))
    started = time.perf_counter()
    model = prepare(version, frame, config)
    artifact = registry.store_calibration(
        settings,
        version,
        config.calibration_key(),
        calibrations.frame_sha256(frame),
        model.calibration.to_dict(),
    )
    log.warning(
        "model version %s: drift calibration stored as %s (%.1f s)",
        version,
        artifact,
        time.perf_counter() - started,
    )
    return artifact


def run_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    """``stopdrift calibrate``: store a version's calibration for these drift settings."""
    registry.require_mlflow(settings)
    version = str(args.version) if args.version else registry.champion_version(settings)
    if version is None:
        raise UserError(f"no {settings.model_name}@{settings.model_alias} to calibrate")
    artifact = calibrate_version(settings, version)
    print(f"model {settings.model_name} version {version}: calibration stored as {artifact}")
    return 0


def logged_model_digest(model_uri: str) -> str:
    """``registry.tree_sha256`` of the model directory as stored: downloaded back, so the digest
    covers exactly the files (``MLmodel``, ``model.pkl``, environment files, input example) the
    stream will download and hash before unpickling."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return registry.tree_sha256(Path(local))


def record_decision(
    settings: Settings, version: str, promote: bool, tags: Mapping[str, str]
) -> str | None:
    """Tag the version with its evaluation and decision; move the alias when promoted. Returns
    the version the alias points at afterwards."""
    c = registry.client(settings)
    for key, value in tags.items():
        c.set_model_version_tag(settings.model_name, version, key, value)
    if promote:
        c.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    return registry.champion_version(settings)


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # mlflow's limit on a param value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
