"""One typed settings object. Defaults run locally; ``STOPDRIFT_*`` env variables override them,
and CLI flags override both (see ``cli.py``).

>>> s = Settings.from_env({"STOPDRIFT_WINDOW_EVENTS": "250", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
>>> s.window_events, s.kafka_bootstrap_servers, s.mlflow_tracking_uri
(250, 'k:9092', 'http://127.0.0.1:5001')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stopdrift_common.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Topics:
    raw: str = "stops.raw"
    scored: str = "stops.scored"
    dlq: str = "stops.dlq"
    alerts: str = "drift.alerts"
    # Prefix of each worker group's drift-counts topic (``Settings.partials_topic``).
    partials_prefix: str = "drift.partials"

    def all(self) -> list[str]:
        return [self.raw, self.scored, self.dlq, self.alerts]


@dataclass(frozen=True)
class Settings:
    # Data and outputs. Commands read data_dir and write only under runs_dir.
    data_dir: Path = PROJECT_ROOT / "data"
    runs_dir: Path = PROJECT_ROOT / "runs"
    seed: int = 42

    # MLflow: tracking server and registry contract.
    mlflow_tracking_uri: str = "http://127.0.0.1:5001"
    mlflow_port: int = 5001
    experiment_name: str = "stopdrift"
    model_name: str = "stopdrift-race-classifier"
    model_alias: str = "champion"

    # Kafka. None means: the project's embedded broker (started by `stopdrift broker` / `demo`).
    kafka_bootstrap_servers: str | None = None
    broker_port: int = 9092
    partitions: int = 4
    topics: Topics = field(default_factory=Topics)

    # Worker.
    worker_id: str = "stopdrift-worker"
    worker_web_host: str = "127.0.0.1"
    worker_web_port: int = 6066
    metrics_port: int = 8000
    batch_max_events: int = 2000
    batch_within_seconds: float = 0.2
    model_poll_seconds: float = 10.0

    # Drift windows and detection.
    window_events: int = 500
    false_alarm_rate: float = 0.001
    persistence: int = 1

    # Monitoring servers.
    prometheus_port: int = 9090
    alertmanager_port: int = 9093

    @property
    def partials_topic(self) -> str:
        """Per-batch drift counts of every worker in this group, merged by one coordinator: one
        partition, so exactly one worker owns it and N workers give one worker's figures; one
        topic per group (worker_id), so two groups never count each other's events."""
        return f"{self.topics.partials_prefix}.{self.worker_id}"

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.broker_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``STOPDRIFT_<FIELD>`` env variables (and ``KAFKA_BOOTSTRAP_SERVERS``,
        ``MLFLOW_TRACKING_URI``), then keyword overrides that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        aliases = {
            "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
            "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
        }
        for f in dataclasses.fields(cls):
            if f.name == "topics":
                continue
            raw = env.get(f"STOPDRIFT_{f.name.upper()}") or env.get(aliases.get(f.name, ""), "")
            if raw:
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return dataclasses.replace(cls(), **values)


def _parse(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw)
    except ValueError:
        raise UserError(f"setting {name}: {raw!r} is not a valid {kind}") from None
    return raw
