"""``stopdrift mlflow`` and ``stopdrift broker``: run one local server in the foreground."""

from __future__ import annotations

import argparse
import dataclasses
import re
import signal
import time

from stopdrift import servers
from stopdrift_common.settings import Settings
from stopdrift_common.topics import ensure_topics


def run_mlflow(args: argparse.Namespace, settings: Settings) -> int:
    _exit_on_stop_signals()
    s = settings
    store = s.mlflow_backend_store_uri or f"sqlite under {s.runs_dir / 'mlflow'}"
    server = foreground(
        servers.mlflow_server(
            s.mlflow_port,
            s.runs_dir / "mlflow",
            s.runs_dir / "logs",
            s.mlflow_host,
            s.mlflow_backend_store_uri,
            s.mlflow_artifacts_dir,
        )
    )
    with server:
        print(
            f"MLflow tracking server on http://{s.mlflow_host}:{s.mlflow_port} (store "
            f"{without_password(store)}); Ctrl-C stops it",
            flush=True,
        )
        _wait(server)
    return 0


def run_ui(args: argparse.Namespace, settings: Settings) -> int:
    _exit_on_stop_signals()
    s = settings
    server = foreground(
        servers.drift_view(
            s.drift_view_port, s.runs_dir / "evidently", s.runs_dir / "logs", s.drift_view_host
        )
    )
    with server:
        print(
            f"drift view (Evidently UI) on {s.drift_view_base_url} (workspace "
            f"{s.runs_dir / 'evidently'}); Ctrl-C stops it",
            flush=True,
        )
        _wait(server)
    return 0


def run_topics(args: argparse.Namespace, settings: Settings) -> int:
    """Create the topics a worker group needs (with their partition counts) and exit."""
    created = ensure_topics(settings)
    print(
        f"topics on {settings.bootstrap}: "
        + (f"created {', '.join(created)}" if created else "all present"),
        flush=True,
    )
    return 0


def run_broker(args: argparse.Namespace, settings: Settings) -> int:
    _exit_on_stop_signals()
    server = servers.broker(settings.broker_port, settings.runs_dir / "logs")
    with server:
        ensure_topics(settings)
        print(
            f"Kafka-compatible broker (Tansu, in memory) on 127.0.0.1:{settings.broker_port}; "
            f"topics {', '.join(settings.topics.all())}; Ctrl-C stops it"
        )
        _wait(server)
    return 0


def foreground(server: servers.Service) -> servers.Service:
    """A server whose output goes to this command's stdout (a terminal, `docker logs`)."""
    return dataclasses.replace(server, log_path=None)


def without_password(uri: str) -> str:
    """A store URI fit to print.

    >>> without_password("postgresql+psycopg2://mlflow:s3cret@postgres:5432/mlflow")
    'postgresql+psycopg2://mlflow:***@postgres:5432/mlflow'
    """
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", uri)


def _wait(server: servers.Service) -> None:
    while server.proc is not None and server.proc.poll() is None:
        time.sleep(0.5)


def _exit_on_stop_signals() -> None:
    """SIGTERM (kill, a script's cleanup) or SIGHUP (a closed terminal) must stop the server
    too, not only this wrapper, from the start on: as SystemExit they unwind through the start
    (which kills a server not yet ready) or the `with` block (which stops its process group)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)
