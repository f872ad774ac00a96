"""The data flow is one way: producers -> topic -> stream_app, training -> registry -> stream_app.
The stream never imports training (model and reference reach it only through MLflow), and
neither side imports the other; what both need lives in stopdrift_common. The drift core
imports no project package and nothing of Kafka, Faust, Prometheus or MLflow: anyone can reuse
it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stopdrift_common.settings import PROJECT_ROOT

IO = {"faust", "kafka", "aiokafka", "prometheus_client", "mlflow", "evidently"}
FORBIDDEN = {
    "stream_app": {"training", "producers", "stopdrift"},
    "producers": {"training", "stream_app", "drift", "stopdrift"},
    "training": {"stream_app", "producers"},  # (it may start MLflow: `train --start-mlflow`)
    "stopdrift_common": {"training", "stream_app", "producers", "drift", "stopdrift"},
    "drift": {"training", "stream_app", "producers", "stopdrift", "stopdrift_common", *IO},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_across_the_flow(package: str) -> None:
    offenders = {
        str(path.relative_to(PROJECT_ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
