"""``stopdrift mlflow`` and ``stopdrift broker``: run one local server in the foreground."""

from __future__ import annotations

import argparse
import signal
import time

from stopdrift_common import services
from stopdrift_common.settings import Settings
from stopdrift_common.topics import ensure_topics


def run_mlflow(args: argparse.Namespace, settings: Settings) -> int:
    server = services.mlflow_server(
        settings.mlflow_port, settings.runs_dir / "mlflow", settings.runs_dir / "logs"
    )
    with server:
        print(
            f"MLflow tracking server on http://127.0.0.1:{settings.mlflow_port} "
            f"(store {settings.runs_dir / 'mlflow'}; log {server.log_path}); Ctrl-C stops it"
        )
        _wait(server)
    return 0


def run_broker(args: argparse.Namespace, settings: Settings) -> int:
    server = services.broker(settings.broker_port, settings.runs_dir / "logs")
    with server:
        ensure_topics(settings)
        print(
            f"Kafka-compatible broker (Tansu, in memory) on 127.0.0.1:{settings.broker_port}; "
            f"topics {', '.join(settings.topics.all())}; Ctrl-C stops it"
        )
        _wait(server)
    return 0


def _wait(server: services.Service) -> None:
    # SIGTERM (kill, a script's cleanup) must stop the server too, not only this wrapper: turn it
    # into SystemExit so the `with` block stops the child process group.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    while server.proc is not None and server.proc.poll() is None:
        time.sleep(0.5)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)
