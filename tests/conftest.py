"""Shared fixtures: real servers on free loopback ports, settings that write only under tmp.

Integration tests start the real broker (Tansu), MLflow server, Prometheus and Alertmanager
through ``stopdrift.servers`` and stop them at the end of the session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stopdrift import servers
from stopdrift_common.settings import PROJECT_ROOT, Settings

DATA_DIR = PROJECT_ROOT / "data"


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stopdrift")


@pytest.fixture(scope="session")
def mlflow_server(session_dir: Path):
    port = servers.free_port()
    with servers.mlflow_server(port, session_dir / "mlflow", session_dir / "logs") as server:
        yield server


@pytest.fixture(scope="session")
def broker(session_dir: Path):
    port = servers.free_port()
    with servers.broker(port, session_dir / "logs") as server:
        yield server


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """Settings for a test with no servers: outputs under tmp, data read from data/."""
    return Settings(data_dir=DATA_DIR, runs_dir=tmp_path / "runs")


@pytest.fixture()
def mlflow_settings(settings: Settings, mlflow_server: servers.Service) -> Settings:
    return settings.replace(
        mlflow_tracking_uri=f"http://127.0.0.1:{mlflow_server.port}",
        mlflow_port=mlflow_server.port,
    )


@pytest.fixture(scope="session")
def champion(session_dir: Path, mlflow_server: servers.Service):
    """A small but real champion: PyCaret trained on a sample of the state table, registered in
    the session's MLflow server. Returns (settings, training result)."""
    from training.train import train_and_register

    s = Settings(
        data_dir=DATA_DIR,
        runs_dir=session_dir / "champion-runs",
        mlflow_tracking_uri=f"http://127.0.0.1:{mlflow_server.port}",
        mlflow_port=mlflow_server.port,
        model_name="stopdrift-test-classifier",
    )
    result = train_and_register(
        s, source="state", sample=1500, models=["lr", "dt", "rf"], folds=3, profile=False
    )
    return s, result
