"""Drift calibrations as files: stored with a model version in MLflow, cached under ``runs/``.

A calibration (``drift.calibration.Calibration.to_dict``) depends on the reference rows and on
the drift settings plus the calibration's code and format version (``MonitorConfig.
calibration_key``). Training computes it for the default settings when it registers a version
(``stopdrift calibrate --version N`` for other settings) and logs it as the run artifact
``drift/calibration-<key hash>.json``, with its sha256 as the version tag
``stopdrift.calibration_sha256.<key hash>`` (``registry.store_calibration``/``load_calibration``).
A worker whose settings match loads it; otherwise it computes its own once and keeps it in the
local cache below. Both hold the same document::

    {"kind": "stopdrift.calibration", "envelope": 1, "key": {...},
     "reference_sha256": "<frame_sha256 of the monitor's reference frame>",
     "calibration": {"format": 1, ...}}

Anything else (a truncated file, another key, other rows) is refused: ``ForeignCalibration``.
This module knows nothing of the drift core (``tests/test_boundaries.py``): the calibration
itself stays a dict here, parsed and validated by ``Calibration.from_dict``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stopdrift_common.schema import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from stopdrift_common.settings import Settings

log = logging.getLogger("stopdrift.calibration")
KIND = "stopdrift.calibration"
ENVELOPE = 1  # the layout of the document around the calibration
ARTIFACT_FOLDER = "drift"
DIGEST_TAG_PREFIX = "stopdrift.calibration_sha256."


class ForeignCalibration(ValueError):
    """A calibration document that is not the one asked for (or not one at all)."""


def monitor_options(settings: Settings) -> dict[str, Any]:
    """The drift core's ``MonitorConfig`` arguments from the settings: one definition for the
    worker that tests windows and for training that calibrates them ahead of time."""
    return {
        "numeric": tuple(NUMERIC_FEATURES),
        "categorical": tuple(CATEGORICAL_FEATURES),
        "nullable": tuple(NUMERIC_FEATURES),  # the contract lets numbers be null, never a state
        "window_events": settings.window_events,
        "min_events": settings.min_window_events,
        "idle_seconds": settings.window_idle_seconds,
        "max_open": settings.max_open_windows,
        "partitions": settings.partitions,
        "false_alarms_per_million": settings.false_alarms_per_million,
        "calibration_windows": settings.calibration_windows,
        "calibration_references": settings.calibration_references,
        "seed": settings.seed,
    }


def canonical(key: Mapping[str, Any]) -> str:
    """The key as JSON text: tuples and lists compare equal, key order does not matter."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def key_hash(key: Mapping[str, Any]) -> str:
    """16 hex digits naming a key in file names and tags.

    >>> key_hash({"a": (1, 2)}) == key_hash({"a": [1, 2]})
    True
    """
    return hashlib.sha256(canonical(key).encode()).hexdigest()[:16]


def frame_sha256(frame: pd.DataFrame) -> str:
    """The reference rows as the monitor sees them (columns, values, order)."""
    h = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def artifact_path(key: Mapping[str, Any]) -> str:
    return f"{ARTIFACT_FOLDER}/calibration-{key_hash(key)}.json"


def digest_tag(key: Mapping[str, Any]) -> str:
    return f"{DIGEST_TAG_PREFIX}{key_hash(key)}"


def document(
    key: Mapping[str, Any], reference_sha256: str, calibration: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "kind": KIND,
        "envelope": ENVELOPE,
        "key": json.loads(canonical(key)),
        "reference_sha256": reference_sha256,
        "calibration": dict(calibration),
    }


def calibration_of(doc: Any, key: Mapping[str, Any], reference_sha256: str) -> dict[str, Any]:
    """The calibration dict of ``doc`` if it is the calibration of these rows under this key.

    >>> doc = document({"w": 500}, "abc", {"format": 1})
    >>> calibration_of(doc, {"w": 500}, "abc")
    {'format': 1}
    >>> calibration_of(doc, {"w": 250}, "abc")
    Traceback (most recent call last):
    ...
    stopdrift_common.calibrations.ForeignCalibration: calibration of other drift settings
    """
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("envelope") != ENVELOPE:
        raise ForeignCalibration("not a stopdrift calibration of this envelope version")
    if not isinstance(doc.get("key"), dict) or canonical(doc["key"]) != canonical(key):
        raise ForeignCalibration("calibration of other drift settings")
    if doc.get("reference_sha256") != reference_sha256:
        raise ForeignCalibration("calibration of other reference rows")
    if not isinstance(doc.get("calibration"), dict):
        raise ForeignCalibration("document holds no calibration")
    return doc["calibration"]


class CalibrationCache:
    """One JSON document per (model, version, key, reference rows) under ``folder``. Reading
    never raises: a file that is not what its name promises is logged and removed (the name is
    ours, so is the file); writing is best-effort (a full disk costs the next start a
    calibration, never this one)."""

    def __init__(self, folder: Path, model_name: str):
        self.folder = folder
        self.model_name = model_name

    def path(self, version: str, key: Mapping[str, Any], reference_sha256: str) -> Path:
        name = f"{self.model_name}-v{version}-{key_hash(key)}-{reference_sha256[:16]}.json"
        return self.folder / name

    def read(
        self, version: str, key: Mapping[str, Any], reference_sha256: str
    ) -> dict[str, Any] | None:
        path = self.path(version, key, reference_sha256)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("calibration cache %s unreadable (%r): ignored", path, exc)
            return None
        try:
            return calibration_of(json.loads(text), key, reference_sha256)
        except ValueError as exc:  # not JSON, or not this calibration
            self.discard(path, str(exc))
            return None

    def discard(self, path: Path, why: str) -> None:
        log.warning("calibration cache %s ignored and removed: %s", path, why[:200])
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s (%r)", path, exc)

    def write(
        self,
        version: str,
        key: Mapping[str, Any],
        reference_sha256: str,
        calibration: Mapping[str, Any],
    ) -> bool:
        path = self.path(version, key, reference_sha256)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # replicas may share the folder
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(document(key, reference_sha256, calibration)))
            tmp.replace(path)
            return True
        except OSError as exc:
            log.error("caching the calibration in %s failed (%r): kept in memory", path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return False
