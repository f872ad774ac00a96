"""One typed, validated settings object (pydantic-settings).

Defaults run locally; ``STOPDRIFT_<NAME>`` environment variables override them (and
``KAFKA_BOOTSTRAP_SERVERS``, ``MLFLOW_TRACKING_URI``); CLI flags override both. A bad value is
refused at start with one line that names the setting, its variable and the rule, so a worker
never runs with drift monitoring silently off:

>>> Settings(window_events=250).window_events
250
>>> try:
...     Settings(window_events=0)
... except UserError as exc:
...     print(exc)
setting window_events (STOPDRIFT_WINDOW_EVENTS): Input should be greater than or equal to 100, got 0
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stopdrift_common.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "STOPDRIFT_"
# Settings also read from the variables their ecosystems use.
ALIASES = {
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
}


# A name that becomes part of Kafka topic names (drift.partials.<worker_id>, Faust's
# <worker_id>-...-changelog) and of folder and file names under runs/: Kafka's topic characters
# only, and a letter or digit first (no ".", "..", hidden folder or name that reads as an option).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Kafka allows 249 characters per topic name; the longest one built from worker_id adds about 70.
MAX_WORKER_ID = 100
MAX_SEED = 2**32 - 1  # NumPy's RandomState, pandas' random_state and PyCaret's session_id
# MLflow's alias characters; it reserves "latest" and "v<N>" and refuses them when they are set.
ALIAS = re.compile(r"[A-Za-z0-9_-]+")
RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)
BROKER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")

WINDOWS_TABLE = "drift-windows"  # the coordinator's Faust table of open windows (a prefix)


@dataclass(frozen=True)
class Topics:
    raw: str = "stops.raw"
    scored: str = "stops.scored"
    dlq: str = "stops.dlq"
    alerts: str = "drift.alerts"
    windows: str = "drift.windows"  # every closed window, tested or not, with its verdict
    # Prefix of each worker group's drift-partials topic (``Settings.partials_topic``).
    partials_prefix: str = "drift.partials"

    def all(self) -> list[str]:
        return [self.raw, self.scored, self.dlq, self.alerts, self.windows]


def _alias(name: str) -> Any:
    return AliasChoices(name, ENV_PREFIX + name.upper(), ALIASES[name])


Port = Field(ge=1, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", populate_by_name=True
    )

    # Data and outputs. Commands read data_dir and write only under runs_dir.
    data_dir: Path = Field(PROJECT_ROOT / "data", description="where the OPP CSVs are read")
    runs_dir: Path = Field(PROJECT_ROOT / "runs", description="where every output is written")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="seed of every random draw")

    # MLflow: tracking server and registry contract.
    mlflow_tracking_uri: str = Field(
        "http://127.0.0.1:5001",
        validation_alias=_alias("mlflow_tracking_uri"),
        description="MLflow tracking server",
    )
    mlflow_port: int = Field(5001, ge=1, le=65535, description="port of `stopdrift mlflow`")
    mlflow_host: str = Field("127.0.0.1", description="address `stopdrift mlflow` binds")
    mlflow_backend_store_uri: str | None = Field(
        None, description="MLflow backend store (default sqlite under runs/mlflow)"
    )
    mlflow_artifacts_dir: Path | None = Field(
        None, description="MLflow artifact store (default runs/mlflow/artifacts)"
    )
    experiment_name: str = Field("stopdrift", min_length=1)
    # In MLflow URIs (models:/NAME@ALIAS) and in the calibration cache's file names.
    model_name: str = Field("stopdrift-race-classifier", min_length=1, max_length=100)
    model_alias: str = Field("champion", min_length=1, max_length=255)

    # Kafka. None: the project's embedded broker (started by `stopdrift broker` / `demo`).
    kafka_bootstrap_servers: str | None = Field(
        None,
        validation_alias=_alias("kafka_bootstrap_servers"),
        description="Kafka brokers, host:port[,host:port] (default the embedded broker, "
        "127.0.0.1:9092)",
    )
    broker_port: int = Field(9092, ge=1, le=65535, description="port of the embedded broker")
    partitions: int = Field(4, ge=1, le=1024, description="partitions of stops.raw")

    # Worker.
    worker_id: str = Field(
        "stopdrift-worker",
        min_length=1,
        max_length=MAX_WORKER_ID,
        description="consumer group (also in topic and folder names: letters, digits, . _ -)",
    )
    worker_web_host: str = Field("127.0.0.1", description="address the worker's ports bind")
    worker_web_port: int = Field(6066, ge=1, le=65535, description="Faust web port")
    metrics_port: int = Field(8000, ge=1, le=65535, description="Prometheus /metrics port")
    batch_max_events: int = Field(2000, ge=1, le=100_000, description="messages per batch")
    batch_within_seconds: float = Field(0.2, gt=0, le=60, description="batch wait")
    model_poll_seconds: float = Field(
        10.0, ge=0, description="how often to look for a new champion (0: never)"
    )

    # Drift windows and detection.
    window_events: int = Field(500, ge=100, le=1_000_000, description="events per window")
    window_idle_seconds: float = Field(
        30.0, gt=0, le=86_400, description="a window with no new event for this long closes"
    )
    min_window_events: int = Field(
        50, ge=20, description="a closed window with fewer valid events is not tested"
    )
    max_open_windows: int = Field(
        1024, ge=4, le=100_000, description="open windows before the oldest closes early"
    )
    false_alarms_per_million: float = Field(
        1.0, gt=0, description="drift false alarms per million events (nine references in ten)"
    )
    calibration_windows: int = Field(
        4000, ge=200, le=1_000_000, description="bootstrap windows per size"
    )
    calibration_references: int = Field(
        40, ge=10, le=10_000, description="resampled references in the calibration"
    )
    report_keep: int = Field(100, ge=1, description="Evidently HTML reports kept on disk")
    drift_view_port: int = Field(8085, ge=1, le=65535, description="port of `stopdrift ui`")
    drift_view_host: str = Field("127.0.0.1", description="address `stopdrift ui` binds")
    drift_view_url: str | None = Field(
        None, description="URL staff reach the drift view at (default http://127.0.0.1:8085)"
    )
    drift_view_keep: int = Field(200, ge=1, description="drift view snapshots kept")
    drift_view_window_seconds: float = Field(
        30.0, ge=0, description="a tested window becomes a drift view snapshot at most this often"
    )

    # Monitoring servers.
    prometheus_port: int = Field(9090, ge=1, le=65535)
    alertmanager_port: int = Field(9093, ge=1, le=65535)

    topics: Topics = Field(default_factory=Topics, exclude=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise UserError(one_line(exc)) from None

    @field_validator("worker_id", "model_name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not SAFE_NAME.fullmatch(name):
            raise ValueError(
                "use letters, digits, '.', '_' and '-', starting with a letter or digit "
                "(it becomes part of topic, folder and file names)"
            )
        return name

    @field_validator("model_alias")
    @classmethod
    def _alias_not_reserved(cls, alias: str) -> str:
        if not ALIAS.fullmatch(alias):
            raise ValueError("use letters, digits, '_' and '-' (MLflow's alias characters)")
        if RESERVED_ALIAS.fullmatch(alias):
            raise ValueError("MLflow reserves this alias ('latest' and 'v<N>')")
        return alias

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _brokers(cls, servers: str | None) -> str | None:
        # Checked here: a malformed address would only show later as "no Kafka broker".
        for address in servers.split(",") if servers else []:  # empty: the embedded broker
            m = BROKER.fullmatch(address.strip())
            if m is None or not 1 <= int(m.group(2)) <= 65535:
                raise ValueError("expected host:port[,host:port] (port 1-65535)")
        return servers

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.min_window_events >= self.window_events:
            raise ValueError(
                f"min_window_events ({self.min_window_events}) must be below window_events "
                f"({self.window_events})"
            )
        if self.false_alarms_per_million * self.window_events / 1e6 >= 0.5:
            raise ValueError(
                f"false_alarms_per_million ({self.false_alarms_per_million:g}) is one alarm in "
                f"every other window or more: no test is left"
            )
        return self

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, validated like any other settings."""
        return type(self)(**{**self.model_dump(), **changes})

    @property
    def partials_topic(self) -> str:
        """Per-batch drift columns of every worker in this group, merged by one coordinator: one
        partition, so exactly one worker owns it and N workers give one worker's figures; one
        topic per group (worker_id), so two groups never count each other's events."""
        return f"{self.topics.partials_prefix}.{self.worker_id}"

    @property
    def drift_view_base_url(self) -> str:
        return self.drift_view_url or f"http://{self.drift_view_host}:{self.drift_view_port}"

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.broker_port}"


def env_name(field: str) -> str:
    """The environment variable of a setting.

    >>> env_name("window_idle_seconds"), env_name("mlflow_tracking_uri")
    ('STOPDRIFT_WINDOW_IDLE_SECONDS', 'STOPDRIFT_MLFLOW_TRACKING_URI or MLFLOW_TRACKING_URI')
    """
    name = ENV_PREFIX + field.upper()
    return f"{name} or {ALIASES[field]}" if field in ALIASES else name


def one_line(exc: ValidationError) -> str:
    """The first problem of a validation error, as one line a user can act on."""
    error = exc.errors()[0]
    loc = [str(x) for x in error.get("loc", ())]
    field = loc[0] if loc else ""
    if field.startswith(ENV_PREFIX.lower()) or field.upper() in ALIASES.values():
        field = next((k for k, v in ALIASES.items() if v == field.upper()), field)
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not field:
        return f"settings: {message}"
    given = error.get("input")
    shown = f", got {given!r}" if given is not None and not isinstance(given, dict) else ""
    return f"setting {field} ({env_name(field)}): {message}{shown}"
