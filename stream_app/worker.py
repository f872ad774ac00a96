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
from stopdrift_common.ports import port_open
from stopdrift_common.settings import Settings
from stopdrift_common.topics import cluster_id, ensure_topics, require_broker, windows_table
from stream_app.runtime import WorkerRuntime


def _check_port(port: int, host: str, what: str, flag: str) -> None:
    if port_open(port, host):
        raise UserError(
            f"{what} port {host}:{port} is already in use (another worker?): choose another with "
            f"{flag}"
        )


def build(settings: Settings):
    """The Faust app, its runtime and drift coordinator; metrics registered but not served."""
    from stream_app.app import create_app
    from stream_app.coordinator import Coordinator
    from stream_app.drift_metrics import DriftCollector
    from stream_app.metrics import WorkerMetrics
    from stream_app.model_watch import ModelWatch
    from stream_app.reports import ReportLinks

    metrics = WorkerMetrics()
    watch = ModelWatch(settings, on_reject=metrics.record_rejection)
    runtime = WorkerRuntime(settings, metrics, watch)
    from stream_app.drift_view import DriftView

    view = DriftView(settings.runs_dir / "evidently", base_url=settings.drift_view_base_url)
    # Reports are written by the report service (a child process, see run()): the records
    # carry a sample of their rows, the scoring process never runs Evidently or writes them.
    reports = ReportLinks(
        settings.runs_dir / "reports",
        view=view,
        window_seconds=settings.drift_view_window_seconds,
        seed=settings.seed,
    )
    coordinator = Coordinator(settings, champion=lambda: watch.current, reports=reports)
    metrics.registry.register(DriftCollector(coordinator))
    table = windows_table(cluster_id(settings))
    return create_app(settings, runtime, coordinator, table), runtime, coordinator


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
    app, runtime, _ = build(settings)
    from stream_app.report_service import start_child

    # Drift reports and snapshots out of the scoring process; their counts on this /metrics.
    start_child(settings, runtime.metrics)
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
