"""``stopdrift worker``: check the ports and the broker, create the topics, serve the metrics,
then run the Faust app until SIGINT/SIGTERM.

Several workers can run on one host: each needs its own ``--web-port`` and ``--metrics-port``;
workers with the same ``--worker-id`` share the partitions of ``stops.raw`` (one consumer group).
"""

from __future__ import annotations

import argparse
import logging
import os

from stopdrift_common.errors import UserError
from stopdrift_common.services import port_open
from stopdrift_common.settings import Settings
from stopdrift_common.topics import ensure_topics, require_broker


def _check_port(port: int, host: str, what: str, flag: str) -> None:
    if port_open(port, host):
        raise UserError(
            f"{what} port {host}:{port} is already in use (another worker?): choose another with "
            f"{flag}"
        )


def build(settings: Settings):
    """The Faust app and its runtime, metrics registered but not served (tests, benchmarks)."""
    from stream_app.app import create_app
    from stream_app.metrics import WorkerMetrics
    from stream_app.model_watch import ModelWatch
    from stream_app.runtime import WorkerRuntime

    metrics = WorkerMetrics()
    runtime = WorkerRuntime(settings, metrics, ModelWatch(settings))
    _register_drift_metrics(metrics, runtime)
    return create_app(settings, runtime), runtime


def _register_drift_metrics(metrics, runtime) -> None:
    """The drift part exports its gauges through a collector that reads the monitor on each
    scrape; the runtime replaces nothing but resets its monitor on a new champion."""
    try:
        from stream_app.drift_metrics import DriftCollector
    except ImportError:  # drift monitoring not installed: scoring metrics only
        return
    metrics.registry.register(DriftCollector(lambda: runtime.monitor))


def run(args: argparse.Namespace, settings: Settings) -> int:
    _check_port(settings.worker_web_port, settings.worker_web_host, "web", "--web-port")
    _check_port(settings.metrics_port, settings.worker_web_host, "metrics", "--metrics-port")
    require_broker(settings)
    ensure_topics(settings)
    (settings.runs_dir / "faust").mkdir(parents=True, exist_ok=True)

    # MLflow's download progress bars would land in the log as warnings (Faust redirects stdout).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Bound MLflow's own HTTP retries (minutes by default): the model watch retries by itself.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    import faust
    import prometheus_client

    prometheus_client.disable_created_metrics()  # no *_created series: half the scrape size
    app, runtime = build(settings)
    try:
        runtime.metrics.serve(settings.metrics_port, settings.worker_web_host)
    except OSError as exc:
        raise UserError(
            f"cannot serve metrics on {settings.worker_web_host}:{settings.metrics_port} ({exc}): "
            f"choose another --metrics-port"
        ) from None
    logging.getLogger("stopdrift").setLevel(logging.INFO)
    worker = faust.Worker(app, loglevel="warn", quiet=True)
    worker.execute_from_commandline()
    return 0
