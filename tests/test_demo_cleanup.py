"""The demo stops what it started on every path, and reuses only a server of the expected kind.

Real processes throughout: servers started by ``stopdrift.servers``, the demo as users run it
(``python -m stopdrift demo``), and, for the refusal, a tiny HTTP server that is deliberately the
wrong kind of server. No test trains a model: the demo is stopped (or refuses) before it needs
a champion.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stopdrift import servers
from stopdrift_common.errors import ServerUnavailable
from stopdrift_common.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


# --- processes ------------------------------------------------------------------------------------
def _stat(pid: str) -> tuple[int, int, str] | None:
    """(parent pid, process group, state) of a live process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp ...
    return int(fields[1]), int(fields[2]), fields[0]


def _processes() -> dict[int, tuple[int, int, str]]:
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (st := _stat(pid)) is not None:
            found[int(pid)] = st
    return found


def descendants(root: int) -> dict[int, int]:
    """pid -> process group of every live descendant of ``root``."""
    procs = _processes()
    out: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, pgrp, _) in procs.items():
            if ppid == parent and pid not in out:
                out[pid] = pgrp
                frontier.append(pid)
    return out


def alive(pids: set[int], groups: set[int]) -> dict[int, str]:
    """The processes among ``pids``, or in ``groups``, still running (zombies excluded)."""
    return {
        pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        for pid, (_, pgrp, state) in _processes().items()
        if (pid in pids or pgrp in groups) and state != "Z"
    }


def wait_until(condition: Callable[[], object], what: str, log: Callable[[], str], timeout=60.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log()[-4000:]}"
        time.sleep(0.05)
    return result


# --- a start that times out -----------------------------------------------------------------------
def test_a_start_that_times_out_is_killed_with_its_group_and_names_its_log(tmp_path):
    log = tmp_path / "silent.log"
    # Never opens its port; its child shares its process group and must die with it.
    cmd = ["sh", "-c", "sleep 60 & echo waiting; wait"]
    service = servers.Service("silent", cmd, servers.free_port(), log, ready_timeout=1)
    with pytest.raises(ServerUnavailable) as raised:
        service.start()
    message = str(raised.value)
    assert "\n" not in message and str(log) in message and "within 1s" in message, message
    assert service.proc is not None and service.proc.returncode is not None
    assert alive(set(), {service.proc.pid}) == {}


def test_a_second_signal_during_the_stop_shortens_the_grace_period():
    # A process group that ignores SIGTERM: only the SIGKILL after the grace period stops it.
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    time.sleep(0.3)
    started = time.monotonic()
    servers.stop_processes([proc], grace=30, hurry=lambda: time.monotonic() - started > 0.5)
    assert time.monotonic() - started < 5
    assert proc.returncode == -signal.SIGKILL
    assert alive(set(), {proc.pid}) == {}


def test_the_stop_waits_for_the_whole_group_and_kills_what_stays():
    # The leader exits on SIGTERM; its child ignores SIGTERM and outlives it.
    cmd = ["sh", "-c", "(trap '' TERM; exec sleep 60) & exec sleep 61"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    time.sleep(0.3)
    servers.stop_processes([proc], grace=1)
    assert proc.returncode == -signal.SIGTERM
    assert alive(set(), {proc.pid}) == {}


# --- the probes recognise the real servers, and only them -----------------------------------------
def test_each_probe_recognises_its_own_server_only(mlflow_server, broker, tmp_path):
    """The drift view is left out: Evidently's UI takes 10-25 s to start here; the monitoring
    integration test has the demo reuse a real one (``Demo.drift_view``), which it must
    recognise."""
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\n")
    logs = tmp_path / "logs"
    am_config = PROJECT_ROOT / "monitoring" / "alertmanager.yml"
    with (
        servers.prometheus(servers.free_port(), config, tmp_path / "prom", logs) as prometheus,
        servers.alertmanager(servers.free_port(), am_config, tmp_path / "am", logs) as am,
    ):
        ports = {"mlflow": mlflow_server.port, "prometheus": prometheus.port, "am": am.port}
        probes = {
            "mlflow": servers.is_mlflow,
            "prometheus": servers.is_prometheus,
            "am": servers.is_alertmanager,
            "drift view": servers.is_drift_view,
        }
        answers = {(p, s): probes[p](port) for p in probes for s, port in ports.items()}
        assert answers == {(p, s): p == s for p, s in answers}
        assert servers.is_kafka(broker.port)
        assert not servers.is_kafka(mlflow_server.port, timeout=1)


# --- the demo -------------------------------------------------------------------------------------
class AnswersOKToEverything(http.server.BaseHTTPRequestHandler):
    """The wrong kind of server: 200 "OK" to any GET (so a mere health check would pass)."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = b"OK"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def stranger() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AnswersOKToEverything)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class DemoRun:
    """``stopdrift demo`` in a subprocess on free ports, its output in a file."""

    def __init__(self, tmp_path: Path, mlflow_port: int, broker_port: int) -> None:
        self.ports = {"broker": broker_port, "mlflow": mlflow_port}
        env = {
            **os.environ,
            "STOPDRIFT_BROKER_PORT": str(broker_port),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "STOPDRIFT_RUNS_DIR": str(tmp_path / "runs"),
            # Ports the demo must not reach; free ones, so nothing of another run is touched.
            "STOPDRIFT_METRICS_PORT": str(servers.free_port()),
            "STOPDRIFT_PROMETHEUS_PORT": str(servers.free_port()),
            "STOPDRIFT_ALERTMANAGER_PORT": str(servers.free_port()),
            "STOPDRIFT_DRIFT_VIEW_PORT": str(servers.free_port()),
        }
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        env.pop("STOPDRIFT_KAFKA_BOOTSTRAP_SERVERS", None)
        self.path = tmp_path / "demo.out"
        with open(self.path, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stopdrift", "demo", "--duration", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a test's Ctrl-C is not the demo's
            )
        self.seen: dict[int, int] = {}  # pid -> process group of every child seen

    def log(self) -> str:
        return self.path.read_text(errors="replace")

    def children(self) -> dict[int, int]:
        self.seen.update(descendants(self.proc.pid))
        return self.seen

    def wait(self, timeout: float) -> int:
        """The demo's exit code, noting its children meanwhile."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"the demo did not exit\n{self.log()[-4000:]}"
            self.children()
            time.sleep(0.05)
        return self.proc.returncode

    def leftovers(self) -> dict[int, str]:
        return alive(set(self.seen), set(self.seen.values()) - {os.getpgid(0)})

    def finish(self) -> None:
        """After a failed test: stop the demo, then whatever of its own it left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in self.leftovers():  # only groups with a process of the demo's still in them
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_sigint_while_the_demo_waits_for_mlflow_leaves_nothing_behind(tmp_path):
    demo = DemoRun(tmp_path, servers.free_port(), servers.free_port())
    try:
        wait_until(lambda: "starting mlflow" in demo.log(), "the demo to start MLflow", demo.log)
        wait_until(
            lambda: any(
                b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in demo.children()
            ),
            "the MLflow server process",
            demo.log,
        )
        time.sleep(0.5)  # MLflow takes seconds to serve: still starting, with its own children
        children = demo.children()
        assert not servers.port_open(demo.ports["mlflow"]), "MLflow served too soon for this test"

        # Ctrl-C, then Ctrl-C again and again while it stops: the stop must not be cut short.
        deadline = time.monotonic() + 60
        while demo.proc.poll() is None and time.monotonic() < deadline:
            demo.proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        assert demo.wait(1) == 0, demo.log()
    finally:
        leftovers = demo.leftovers()
        demo.finish()
    assert len(children) >= 2, children  # the broker and MLflow at least
    assert leftovers == {}, demo.log()
    assert "SIGINT: stopping" in demo.log(), demo.log()
    assert "stopped every process the demo started" in demo.log()
    bound = {name: port for name, port in demo.ports.items() if servers.port_open(port)}
    assert bound == {}, (bound, demo.log())


@pytest.mark.parametrize("taken", ["mlflow", "broker"])
def test_the_demo_refuses_a_port_taken_by_another_kind_of_server_and_leaves_it_alone(
    taken, stranger, tmp_path
):
    port = stranger.server_address[1]
    other = servers.free_port()
    mlflow_port, broker_port = (port, other) if taken == "mlflow" else (other, port)
    demo = DemoRun(tmp_path, mlflow_port, broker_port)
    try:
        code = demo.wait(60)
    finally:
        leftovers = demo.leftovers()
        demo.finish()
    out = demo.log()
    refusals = [line for line in out.splitlines() if line.startswith("stopdrift demo: ")]
    assert code == 1 and len(refusals) == 1, out
    refusal = refusals[0]
    assert f"port {port} is taken by an HTTP server" in refusal, refusal
    assert "GET / answered 200" in refusal, refusal
    if taken == "mlflow":
        assert "which is not MLflow" in refusal and "--mlflow-uri" in refusal, refusal
        # The broker it started before it met the stranger is stopped.
        assert "starting broker" in out and not servers.port_open(broker_port), out
    else:
        assert "which is not a Kafka broker" in refusal, refusal
        assert "STOPDRIFT_BROKER_PORT" in refusal, refusal
        assert "starting" not in out, out
    assert leftovers == {}, out
    assert servers.is_mlflow(port) is False and servers.port_open(port)  # still serving
