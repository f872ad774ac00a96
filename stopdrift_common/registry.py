"""The model contract between training and the stream, through the MLflow registry only.

Training registers a version of ``settings.model_name`` (an sklearn/PyCaret pipeline saved with
cloudpickle, with signature and input example) whose run also holds:

- ``reference/reference_stats.json``: the statistics drift is measured against (``reference.py``);
- ``reference/reference_rows.parquet``: the raw reference rows with the model's predictions, for
  calibrating detectors and for Evidently reports.

The version carries two tags written by training when it registers it: ``MODEL_DIGEST_TAG``
(``tree_sha256`` of the logged model directory, every file of it) and ``REFERENCE_DIGEST_TAG``
(``files_sha256`` of the two reference artifacts). ``load_champion`` and ``load_reference``
download the files, recompute the digests and refuse (``UnverifiedArtifacts``) a version whose
tag is missing or differs *before* anything is unpickled or parsed.

A version may also hold drift calibrations (``calibrations.py``): ``drift/calibration-<key
hash>.json`` in its run, each with its sha256 in the tag ``stopdrift.calibration_sha256.<key
hash>``. ``store_calibration`` adds one; ``load_calibration`` returns it verified, or None when
the version has none for that key.

The alias ``champion`` points at the version the stream must use. The stream calls
``load_champion`` at start and ``champion_version`` on a timer to pick up a new champion.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stopdrift_common import calibrations
from stopdrift_common.errors import ServerUnavailable, UserError
from stopdrift_common.settings import Settings

REFERENCE_STATS_ARTIFACT = "reference/reference_stats.json"
REFERENCE_ROWS_ARTIFACT = "reference/reference_rows.parquet"
MODEL_DIGEST_TAG = "stopdrift.model_sha256"
REFERENCE_DIGEST_TAG = "stopdrift.reference_sha256"


class UnverifiedArtifacts(UserError):
    """A version whose artifacts are not the ones registered: its digest tag is missing
    (``reason`` "digest_missing") or differs from the downloaded bytes ("digest_mismatch")."""

    def __init__(self, message: str, *, version: str, reason: str) -> None:
        super().__init__(message)
        self.version = version
        self.reason = reason


@dataclass
class Champion:
    name: str
    version: str
    run_id: str
    model: Any  # sklearn Pipeline with predict_proba; columns in ``classes`` order
    reference: dict[str, Any]
    reference_rows: pd.DataFrame
    tags: dict[str, str] = field(default_factory=dict)  # the version's tags when loaded

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
    monitoring. So is one whose artifacts do not match its digest tags, before unpickling."""
    c = client(settings)
    version = version or champion_version(settings)
    if version is None:
        raise UserError(
            f"no model {settings.model_name}@{settings.model_alias} in the registry at "
            f"{settings.mlflow_tracking_uri}: run `stopdrift train` first"
        )
    mv = c.get_model_version(settings.model_name, version)
    what = f"model {settings.model_name} version {version}"
    expected = _expected_digest(mv.tags, MODEL_DIGEST_TAG, what, str(version))  # before any I/O
    reference, rows = load_reference(settings, str(version), version_info=mv)
    model = _load_verified_model(settings, str(version), expected)
    tags = dict(mv.tags or {})
    return Champion(settings.model_name, str(version), mv.run_id, model, reference, rows, tags)


def _load_verified_model(settings: Settings, version: str, expected: str) -> Any:
    """Download the model directory, check its digest, and only then unpickle those same local
    files (never ``models:/`` again: that would fetch unverified bytes a second time)."""
    import mlflow.artifacts
    import mlflow.sklearn

    what = f"model {settings.model_name} version {version}"
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{settings.model_name}/{version}", dst_path=tmp
        )
        _check_digest(expected, tree_sha256(Path(local)), MODEL_DIGEST_TAG, what, version)
        return mlflow.sklearn.load_model(local)


def load_reference(
    settings: Settings, version: str, version_info: Any = None
) -> tuple[dict[str, Any], pd.DataFrame]:
    """A version's reference statistics and rows (what its drift is measured against), read
    only once their digest matches the version's ``REFERENCE_DIGEST_TAG``. ``version_info``:
    the version's ``ModelVersion`` when the caller has it already."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    mv = version_info or c.get_model_version(settings.model_name, version)
    what = f"model {settings.model_name} version {version}"
    expected = _expected_digest(mv.tags, REFERENCE_DIGEST_TAG, f"{what}'s reference", version)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            stats_path = Path(c.download_artifacts(mv.run_id, REFERENCE_STATS_ARTIFACT, tmp))
            rows_path = Path(c.download_artifacts(mv.run_id, REFERENCE_ROWS_ARTIFACT, tmp))
        except (MlflowException, OSError) as exc:
            raise UserError(
                f"{what} has no reference "
                f"({REFERENCE_STATS_ARTIFACT}, {REFERENCE_ROWS_ARTIFACT}): it was not "
                f"registered by `stopdrift train` ({str(exc).splitlines()[0][:120]})"
            ) from None
        actual = files_sha256(
            {REFERENCE_STATS_ARTIFACT: stats_path, REFERENCE_ROWS_ARTIFACT: rows_path}
        )
        _check_digest(expected, actual, REFERENCE_DIGEST_TAG, f"{what}'s reference", version)
        reference = json.loads(stats_path.read_text())
        rows = pd.read_parquet(rows_path)
    missing = [f"proba_{c}" for c in reference.get("classes", []) if f"proba_{c}" not in rows]
    if not reference.get("classes") or missing:
        raise UserError(f"{what}: reference rows lack {', '.join(missing) or 'classes'}")
    return reference, rows


# --- drift calibrations stored with a version ---------------------------------------------------
def store_calibration(
    settings: Settings,
    version: str,
    key: Mapping[str, Any],
    reference_sha256: str,
    calibration: Mapping[str, Any],
) -> str:
    """Log the calibration as an artifact of ``version``'s run, then tag the version with its
    digest (in that order: a tag never names a file that is not there). Returns its path."""
    c = client(settings)
    mv = c.get_model_version(settings.model_name, version)
    artifact = calibrations.artifact_path(key)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact).name
        path.write_text(json.dumps(calibrations.document(key, reference_sha256, calibration)))
        c.log_artifact(mv.run_id, str(path), calibrations.ARTIFACT_FOLDER)
        digest = file_sha256(path)
    c.set_model_version_tag(settings.model_name, version, calibrations.digest_tag(key), digest)
    return artifact


def load_calibration(
    settings: Settings,
    version: str,
    key: Mapping[str, Any],
    reference_sha256: str,
    version_info: Any = None,
) -> dict[str, Any] | None:
    """``version``'s stored calibration for ``key`` (a ``Calibration.to_dict``), or None when
    it has none for these settings. Its file must hash to its tag (``UnverifiedArtifacts``
    otherwise) and be the calibration of these reference rows (``ForeignCalibration``).
    ``version_info``: anything with the version's ``tags`` and ``run_id``."""
    mv = version_info or client(settings).get_model_version(settings.model_name, version)
    expected = (mv.tags or {}).get(calibrations.digest_tag(key))
    if not expected:
        return None
    what = f"model {settings.model_name} version {version}'s drift calibration"
    artifact = calibrations.artifact_path(key)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(client(settings).download_artifacts(mv.run_id, artifact, tmp))
        _check_digest(expected, file_sha256(path), calibrations.digest_tag(key), what, version)
        doc = json.loads(path.read_text())
    return calibrations.calibration_of(doc, key, reference_sha256)


# --- digests: what training tags and the stream recomputes --------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_sha256(files: Mapping[str, Path]) -> str:
    """One digest for named files: sha256 over ``name NUL sha256(content) LF`` lines sorted by
    name, so an added, removed or renamed file changes it as much as a changed byte."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{file_sha256(files[name])}\n".encode())
    return h.hexdigest()


def tree_sha256(root: Path) -> str:
    """``files_sha256`` of every file under ``root``, named by their path relative to it. The
    whole model directory, not only ``model.pkl``: ``MLmodel`` says which file is unpickled,
    in which format, and which code directories go on ``sys.path``."""
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    return files_sha256(files)


def _expected_digest(tags: Mapping[str, str], tag: str, what: str, version: str) -> str:
    expected = (tags or {}).get(tag, "")
    if not expected:
        raise UnverifiedArtifacts(
            f"{what} has no {tag} tag: not registered by `stopdrift train`, refused unread",
            version=version,
            reason="digest_missing",
        )
    return expected


def _check_digest(expected: str, actual: str, tag: str, what: str, version: str) -> None:
    if actual != expected:
        raise UnverifiedArtifacts(
            f"{what} is not what was registered: its files hash to {actual[:16]}, "
            f"its {tag} tag says {expected[:16]}; refused unread",
            version=version,
            reason="digest_mismatch",
        )


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
