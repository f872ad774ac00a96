"""``stopdrift demo``: start everything locally, replay a scenario, show what happens.

It only starts processes and reads their metrics: broker, MLflow (training a champion when the
registry has none), Alertmanager, Prometheus, the drift view (Evidently's UI), one worker and
the producer. A worker that exits is started again (as systemd's or compose's restart policy
would). Ctrl-C, SIGTERM or SIGHUP at any time (or the end of ``--duration``) stops every
process it started: each is registered the moment it is spawned, and a second Ctrl-C during the
stop only shortens the grace periods. A server already running is reused, and left alone, only
once it answers as the expected kind; a port taken by anything else is a one-line error, so a
second run works without cleanup and never talks to (or kills) a stranger.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from stopdrift import servers
from stopdrift_common.errors import EXIT_BROKER_LOST, UserError
from stopdrift_common.registry import champion_version, require_mlflow
from stopdrift_common.settings import PROJECT_ROOT, Settings, env_name
from stopdrift_common.topics import discard_drift_state, ensure_topics

MONITORING = PROJECT_ROOT / "monitoring"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stopdrift.cli", *args]


def _spawn(cmd: list[str], log: Path | None) -> subprocess.Popen:
    """A child in a process group of its own (stopped as a group); its output goes to ``log``
    (None: the demo's own output)."""
    if log is None:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP: stop everything the demo started."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Signals:
    """Stop signals as a ``Stop`` exception, except at two moments: while a child is being
    spawned and registered (the signal waits, so no child escapes the registry), and once the
    stop has begun (a further signal must not abort it: it only shortens the grace periods)."""

    def __init__(self) -> None:
        self.pending: str | None = None
        self.deferring = 0
        self.stopping = False
        self.hurry = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def ignore(self) -> None:
        """Once everything is stopped: a late signal has nothing left to stop and must not turn
        the demo's exit into a traceback or a death by signal (Python restores the default
        handlers while it shuts down, but keeps SIG_IGN)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            self.hurry = True
        elif self.deferring:
            self.pending = self.pending or name
        else:
            raise Stop(name)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold stop signals back until the block (spawn + register) is done."""
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
        if not self.deferring and self.pending and not self.stopping:
            raise Stop(self.pending)


def loopback_port(uri: str) -> int | None:
    """The port of an http URI on this host (a server the demo may start), else None.

    >>> loopback_port("http://127.0.0.1:5001"), loopback_port("http://mlflow.example:5000")
    (5001, None)
    """
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
        return None
    return parts.port or 80


def scrape(port: int) -> dict[str, float]:
    """Sum each sample of the worker's /metrics by name and label set ('name{k=v}')."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _get_json(url: str) -> object:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return json.loads(r.read())
    except OSError:
        return None


class Demo:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings
        self.dir = settings.runs_dir / "demo"
        self.logs = settings.runs_dir / "logs"
        self.started: list[servers.Service] = []
        self.procs: list[subprocess.Popen] = []
        self.worker_proc: subprocess.Popen | None = None
        self.restarts = 0
        self.view_url: str | None = None
        self.signals = Signals()
        self.hurried = False  # said once that a second signal shortens the stop

    def say(self, text: str) -> None:
        print(f"[demo] {text}", flush=True)

    def start_service(self, service: servers.Service, index: int | None = None) -> None:
        """Spawn and register (at ``index`` in place of a dead one), then wait until it serves;
        a timeout kills it and raises a one-line error that names its log."""
        self.say(f"starting {service.name} on 127.0.0.1:{service.port} (log {service.log_path})")
        with self.signals.deferred():
            service.spawn()
            if index is None:
                self.started.append(service)
            else:
                self.started[index] = service
        service.wait_ready()

    def spawn(self, cmd: list[str], log: Path | None) -> subprocess.Popen:
        with self.signals.deferred():
            proc = _spawn(cmd, log)
            self.procs.append(proc)
        return proc

    def reuse(self, name: str, port: int, expected: Callable[[int], bool], other: str) -> bool:
        """True when the expected kind of server already answers on ``port`` (reuse it), False
        when the port is free (start one); anything else on the port is a one-line error: the
        demo neither talks to it nor stops it. ``other`` says how to pick another port."""
        if not servers.port_open(port):
            return False
        if expected(port):
            self.say(f"{name} already answers on 127.0.0.1:{port}: reusing it")
            return True
        raise UserError(
            f"port {port} is taken by {servers.describe(port)}, which is not {name}: stop it, "
            f"or {other}"
        )

    # --- steps -----------------------------------------------------------------------------------
    def broker(self) -> None:
        s = self.settings
        if s.kafka_bootstrap_servers:
            self.say(f"using the Kafka brokers at {s.kafka_bootstrap_servers}")
        elif not self.reuse(
            "a Kafka broker",
            s.broker_port,
            servers.is_kafka,
            f"set {env_name('broker_port')} to another port (or --bootstrap-servers to a "
            "Kafka broker of yours)",
        ):
            self.start_service(servers.broker(s.broker_port, self.logs))
        created = ensure_topics(s)
        self.say(f"topics ready: {', '.join(s.topics.all())}" + (" (created)" if created else ""))

    def mlflow(self) -> None:
        """Reuse or start MLflow where the tracking URI points (on this host); a tracking server
        elsewhere must already answer."""
        s = self.settings
        port = loopback_port(s.mlflow_tracking_uri)
        if port is None:
            require_mlflow(s, timeout=5)
            self.say(f"using MLflow at {s.mlflow_tracking_uri}")
        elif not self.reuse(
            "MLflow",
            port,
            servers.is_mlflow,
            "pick another port with --mlflow-uri http://127.0.0.1:PORT (or MLFLOW_TRACKING_URI)",
        ):
            self.start_service(servers.mlflow_server(port, s.runs_dir / "mlflow", self.logs))

    def champion(self) -> None:
        s = self.settings
        version = champion_version(s)
        if version:
            self.say(f"champion model: {s.model_name} version {version}")
            return
        self.say("no champion model yet: training one (stopdrift train; about 1-2 minutes)")
        cmd = _cli(
            "train",
            "--mlflow-uri",
            s.mlflow_tracking_uri,
            "--runs-dir",
            str(s.runs_dir),
            "--data-dir",
            str(s.data_dir),
        )
        # Registered like a server: a signal during the training stops it too.
        if self.spawn(cmd, log=None).wait() != 0:
            raise UserError("training failed: see the output above")
        self.say(f"champion model: {s.model_name} version {champion_version(s)}")

    def monitoring(self) -> None:
        from stopdrift.monitoring_config import render_prometheus_config

        s = self.settings
        if not self.reuse(
            "Alertmanager",
            s.alertmanager_port,
            servers.is_alertmanager,
            f"set {env_name('alertmanager_port')} to another port",
        ):
            self.start_service(
                servers.alertmanager(
                    s.alertmanager_port,
                    MONITORING / "alertmanager.yml",
                    self.dir / "alertmanager",
                    self.logs,
                )
            )
        if self.reuse(
            "Prometheus",
            s.prometheus_port,
            servers.is_prometheus,
            f"set {env_name('prometheus_port')} to another port",
        ):
            return
        config = render_prometheus_config(
            [f"127.0.0.1:{s.metrics_port}"],
            f"127.0.0.1:{s.alertmanager_port}",
            self.dir / "prometheus.yml",
        )
        self.start_service(
            servers.prometheus(s.prometheus_port, config, self.dir / "prometheus-data", self.logs)
        )

    def drift_view(self) -> None:
        """Evidently's UI over the workspace the worker writes its drift snapshots to."""
        from stream_app.drift_view import DriftView

        s = self.settings
        view = DriftView(s.runs_dir / "evidently", base_url=s.drift_view_base_url)
        view.ensure_project()
        self.view_url = view.project_url()
        if self.reuse(
            "the drift view (Evidently UI)",
            s.drift_view_port,
            servers.is_drift_view,
            f"set {env_name('drift_view_port')} to another port",
        ):
            return
        self.start_service(
            servers.drift_view(s.drift_view_port, s.runs_dir / "evidently", self.logs)
        )

    def worker(self) -> None:
        s = self.settings
        if servers.port_open(s.metrics_port):
            raise UserError(
                f"port {s.metrics_port} is busy: is another worker running? "
                f"Stop it, or set STOPDRIFT_METRICS_PORT"
            )
        self.worker_proc = self.spawn(self.worker_cmd(), self.logs / "worker.log")
        self.say(
            f"worker started (metrics http://127.0.0.1:{s.metrics_port}/metrics, "
            f"log {self.logs / 'worker.log'})"
        )

    def worker_cmd(self) -> list[str]:
        s = self.settings
        return _cli(
            "worker",
            "--mlflow-uri",
            s.mlflow_tracking_uri,
            "--bootstrap-servers",
            s.bootstrap,
            "--runs-dir",
            str(s.runs_dir),
        )

    def supervise(self) -> None:
        """Restart what stopped: the embedded broker (its topics were in memory: they are
        recreated; the worker notices the lost offsets and exits for a fresh start) and the
        worker (it exits, uncommitted, when the broker stays away, loses its data or a write
        fails for good): the restart policy of the README."""
        for i, service in enumerate(self.started):
            if (
                service.name == "broker"
                and service.proc is not None
                and service.proc.poll() is not None
            ):
                self.say(
                    f"the embedded broker stopped (exit code {service.proc.returncode}): its "
                    "topics and offsets were in memory and are gone; starting it again"
                )
                self.start_service(servers.broker(self.settings.broker_port, self.logs), i)
                ensure_topics(self.settings)
                self.say("topics recreated; the worker and the producer start over on them")
        proc = self.worker_proc
        if proc is None or proc.poll() is None:
            return
        self.restarts += 1
        if proc.returncode == EXIT_BROKER_LOST:
            # Partials the worker wrote late, on the new broker, speak of events of the lost
            # log: the next worker must not merge them.
            discard_drift_state(self.settings)
        self.say(
            f"worker exited with code {proc.returncode}: starting it again (restart "
            f"{self.restarts}; log {self.logs / 'worker.log'})"
        )
        self.worker_proc = self.spawn(self.worker_cmd(), self.logs / "worker.log")

    def producer(self) -> subprocess.Popen:
        s = self.settings
        a = self.args
        cmd = _cli(
            "produce",
            "--bootstrap-servers",
            s.bootstrap,
            "--scenario",
            a.scenario,
            "--source",
            "both" if a.scenario == "natural" else "state",
            "--rate",
            str(a.rate),
            "--loop",
            "1000",
            "--no-progress",
            "--data-dir",
            str(s.data_dir),
        )
        if a.duration:
            cmd += ["--limit", str(max(1, int(a.rate * a.duration))) if a.rate else "1000000"]
        proc = self.spawn(cmd, self.logs / "producer.log")
        self.say(
            f"producer replaying scenario '{a.scenario}' at {a.rate:g} events/s "
            f"(log {self.logs / 'producer.log'})"
        )
        return proc

    def watch(self, producer: subprocess.Popen) -> None:
        self.producer_proc = producer
        s = self.settings
        deadline = time.monotonic() + self.args.duration if self.args.duration else None
        last_scored, last_t = 0.0, time.monotonic()
        while True:
            time.sleep(2)
            self.supervise()
            if self.producer_proc.poll() not in (None, 0):
                self.say(
                    f"the producer exited with code {self.producer_proc.returncode} (see "
                    f"{self.logs / 'producer.log'}): starting it again"
                )
                self.producer_proc = self.producer()
            producer = self.producer_proc
            m = scrape(s.metrics_port)
            scored = m.get("stopdrift_events_total{outcome=scored}", 0.0)
            dlq = m.get("stopdrift_events_total{outcome=dlq}", 0.0)
            now = time.monotonic()
            rate = (scored - last_scored) / (now - last_t)
            last_scored, last_t = scored, now
            version = next(
                (
                    k.split("version=")[1].rstrip("}")
                    for k in m
                    if k.startswith("stopdrift_model_version_info")
                ),
                "?",
            )
            alerts = m.get("stopdrift_drift_alerts_total", 0.0)
            drifted = sorted(
                k.split("feature=")[1].rstrip("}")
                for k, v in m.items()
                if k.startswith("stopdrift_feature_drifted{") and v
            )
            self.say(
                f"{rate:7.0f} events/s | scored {scored:8.0f} | dead-lettered {dlq:5.0f} | "
                f"model v{version} | drift alerts {alerts:.0f}"
                + (f" | drifted: {', '.join(drifted)}" if drifted else "")
            )
            if deadline and now >= deadline:
                return
            if producer.poll() is not None and rate == 0:
                return

    def summary(self) -> None:
        s = self.settings
        firing = _get_json(f"http://127.0.0.1:{s.alertmanager_port}/api/v2/alerts") or []
        names = sorted({a["labels"].get("alertname", "?") for a in firing})  # type: ignore[union-attr]
        self.say("where to look:")
        for name, url, what in self.urls():
            print(f"  {name:<13} {url}  {what}")
        print(f"  firing now    {', '.join(names) if names else 'none'}")
        print(f"  reports       {s.runs_dir / 'reports'}  (Evidently HTML per drift alert)")
        print(f"  logs          {self.logs}")

    def urls(self) -> list[tuple[str, str, str]]:
        """Every page the demo tells users to open (a browser test opens each one)."""
        s = self.settings
        return [
            (
                "drift view",
                self.view_url or s.drift_view_base_url,
                "(Evidently UI: drift per feature and predictions over time; alert snapshots)",
            ),
            (
                "Prometheus",
                f"http://127.0.0.1:{s.prometheus_port}/classic/alerts",
                "(alert rules and what fires; graphs at /classic/graph)",
            ),
            (
                "Alertmanager",
                f"http://127.0.0.1:{s.alertmanager_port}/api/v2/alerts",
                "(API: Debian's Alertmanager has no web UI; amtool works too)",
            ),
            ("MLflow", s.mlflow_tracking_uri, f"(model {s.model_name}@{s.model_alias})"),
            ("metrics", f"http://127.0.0.1:{s.metrics_port}/metrics", "(the worker's gauges)"),
        ]

    def stop(self) -> None:
        """Stop every process the demo started, and only those: the worker, producer and
        training first (they commit to the broker), then the servers, newest first. Signals no
        longer interrupt it; a second one shortens the grace periods."""
        self.signals.stopping = True

        def hurry() -> bool:
            if self.signals.hurry and not self.hurried:
                self.hurried = True
                self.say("stopping faster (a second signal): what does not exit in 1 s is killed")
            return self.signals.hurry

        servers.stop_processes(list(reversed(self.procs)), 15, hurry)
        procs = [s.proc for s in reversed(self.started) if s.proc is not None]
        servers.stop_processes(procs, 10, hurry)
        self.say("stopped every process the demo started")


def _stop_everything(demo: Demo) -> None:
    while True:
        # A signal that lands before stop() takes the signals over raises here: start again.
        with contextlib.suppress(Stop, KeyboardInterrupt):
            demo.stop()
            demo.signals.ignore()
            return


def run(args: argparse.Namespace, settings: Settings) -> int:
    demo = Demo(args, settings)
    demo.signals.install()
    try:
        demo.broker()
        demo.mlflow()
        demo.champion()
        demo.monitoring()
        demo.drift_view()
        demo.worker()
        demo.watch(demo.producer())
        demo.summary()
        if args.keep_running:
            demo.say("servers keep running; Ctrl-C stops them")
            while True:
                time.sleep(2)
                demo.supervise()
    except KeyboardInterrupt:
        demo.say("interrupted: stopping")
    except Stop as exc:
        demo.say(f"{exc}: stopping")
    finally:
        _stop_everything(demo)
    return 0


__all__ = ["run", "scrape"]
