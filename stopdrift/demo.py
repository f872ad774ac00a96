"""``stopdrift demo``: start everything locally, replay a scenario, show what happens.

It only starts processes and reads their metrics: broker, MLflow (training a champion when the
registry has none), Alertmanager, Prometheus, the drift view (Evidently's UI), one worker and
the producer. A worker that exits is started again (as systemd's or compose's restart policy
would). Ctrl-C, SIGTERM or SIGHUP (or the end of ``--duration``) stops every process it
started; servers that were already running are reused and left alone, so a second run works
without cleanup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stopdrift import servers
from stopdrift_common.errors import EXIT_BROKER_LOST, UserError
from stopdrift_common.registry import champion_version, require_mlflow
from stopdrift_common.settings import PROJECT_ROOT, Settings
from stopdrift_common.topics import discard_drift_state, ensure_topics

MONITORING = PROJECT_ROOT / "monitoring"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stopdrift.cli", *args]


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


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

    def say(self, text: str) -> None:
        print(f"[demo] {text}", flush=True)

    def start_service(self, service: servers.Service) -> None:
        self.say(f"starting {service.name} on 127.0.0.1:{service.port} (log {service.log_path})")
        self.started.append(service.start())

    # --- steps -----------------------------------------------------------------------------------
    def broker(self) -> None:
        s = self.settings
        if s.kafka_bootstrap_servers:
            self.say(f"using the Kafka brokers at {s.kafka_bootstrap_servers}")
        elif servers.port_open(s.broker_port):
            self.say(f"a broker already answers on 127.0.0.1:{s.broker_port}: reusing it")
        else:
            self.start_service(servers.broker(s.broker_port, self.logs))
        created = ensure_topics(s)
        self.say(f"topics ready: {', '.join(s.topics.all())}" + (" (created)" if created else ""))

    def mlflow(self) -> None:
        s = self.settings
        try:
            require_mlflow(s, timeout=2)
            self.say(f"MLflow already answers at {s.mlflow_tracking_uri}: reusing it")
        except UserError:
            self.start_service(
                servers.mlflow_server(s.mlflow_port, s.runs_dir / "mlflow", self.logs)
            )

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
        if subprocess.run(cmd).returncode != 0:
            raise UserError("training failed: see the output above")
        self.say(f"champion model: {s.model_name} version {champion_version(s)}")

    def monitoring(self) -> None:
        from stopdrift.monitoring_config import render_prometheus_config

        s = self.settings
        if servers.port_open(s.alertmanager_port):
            self.say(f"an Alertmanager already answers on :{s.alertmanager_port}: reusing it")
        else:
            self.start_service(
                servers.alertmanager(
                    s.alertmanager_port,
                    MONITORING / "alertmanager.yml",
                    self.dir / "alertmanager",
                    self.logs,
                )
            )
        if servers.port_open(s.prometheus_port):
            self.say(f"a Prometheus already answers on :{s.prometheus_port}: reusing it")
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
        if servers.port_open(s.drift_view_port):
            self.say(f"a drift view already answers on :{s.drift_view_port}: reusing it")
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
        self.worker_proc = _spawn(self.worker_cmd(), self.logs / "worker.log")
        self.procs.append(self.worker_proc)
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
                self.started[i] = servers.broker(self.settings.broker_port, self.logs).start()
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
        self.worker_proc = _spawn(self.worker_cmd(), self.logs / "worker.log")
        self.procs.append(self.worker_proc)

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
        proc = _spawn(cmd, self.logs / "producer.log")
        self.procs.append(proc)
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
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
        for service in reversed(self.started):
            service.stop()
        self.say("stopped every process the demo started")


class Stop(Exception):
    """SIGTERM or SIGHUP: stop like Ctrl-C does."""


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def run(args: argparse.Namespace, settings: Settings) -> int:
    demo = Demo(args, settings)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
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
        demo.say("interrupted")
    except Stop as exc:
        demo.say(f"{exc}: stopping")
    finally:
        with contextlib.suppress(Stop, KeyboardInterrupt):  # a second signal: stop anyway
            demo.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


__all__ = ["run", "scrape"]
