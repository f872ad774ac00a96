"""``stopdrift demo``: start everything locally, replay a scenario, show what happens.

It only starts processes and reads their metrics: broker, MLflow (training a champion when the
registry has none), Alertmanager, Prometheus, one worker and the producer. Ctrl-C (or the end of
``--duration``) stops every process it started; servers that were already running are reused and
left alone, so a second run works without cleanup.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stopdrift_common import services
from stopdrift_common.errors import UserError
from stopdrift_common.registry import champion_version, require_mlflow
from stopdrift_common.settings import PROJECT_ROOT, Settings
from stopdrift_common.topics import ensure_topics

MONITORING = PROJECT_ROOT / "monitoring"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stopdrift_common.cli", *args]


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
        self.started: list[services.Service] = []
        self.procs: list[subprocess.Popen] = []

    def say(self, text: str) -> None:
        print(f"[demo] {text}", flush=True)

    def start_service(self, service: services.Service) -> None:
        self.say(f"starting {service.name} on 127.0.0.1:{service.port} (log {service.log_path})")
        self.started.append(service.start())

    # --- steps -----------------------------------------------------------------------------------
    def broker(self) -> None:
        s = self.settings
        if s.kafka_bootstrap_servers:
            self.say(f"using the Kafka brokers at {s.kafka_bootstrap_servers}")
        elif services.port_open(s.broker_port):
            self.say(f"a broker already answers on 127.0.0.1:{s.broker_port}: reusing it")
        else:
            self.start_service(services.broker(s.broker_port, self.logs))
        created = ensure_topics(s)
        self.say(f"topics ready: {', '.join(s.topics.all())}" + (" (created)" if created else ""))

    def mlflow(self) -> None:
        s = self.settings
        try:
            require_mlflow(s, timeout=2)
            self.say(f"MLflow already answers at {s.mlflow_tracking_uri}: reusing it")
        except UserError:
            self.start_service(
                services.mlflow_server(s.mlflow_port, s.runs_dir / "mlflow", self.logs)
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
        from stopdrift_common.monitoring_config import render_prometheus_config

        s = self.settings
        if services.port_open(s.alertmanager_port):
            self.say(f"an Alertmanager already answers on :{s.alertmanager_port}: reusing it")
        else:
            self.start_service(
                services.alertmanager(
                    s.alertmanager_port,
                    MONITORING / "alertmanager.yml",
                    self.dir / "alertmanager",
                    self.logs,
                )
            )
        if services.port_open(s.prometheus_port):
            self.say(f"a Prometheus already answers on :{s.prometheus_port}: reusing it")
            return
        config = render_prometheus_config(
            [f"127.0.0.1:{s.metrics_port}"],
            f"127.0.0.1:{s.alertmanager_port}",
            self.dir / "prometheus.yml",
        )
        self.start_service(
            services.prometheus(s.prometheus_port, config, self.dir / "prometheus-data", self.logs)
        )

    def worker(self) -> None:
        s = self.settings
        if services.port_open(s.metrics_port):
            raise UserError(
                f"port {s.metrics_port} is busy: is another worker running? "
                f"Stop it, or set STOPDRIFT_METRICS_PORT"
            )
        cmd = _cli(
            "worker",
            "--mlflow-uri",
            s.mlflow_tracking_uri,
            "--bootstrap-servers",
            s.bootstrap,
            "--runs-dir",
            str(s.runs_dir),
        )
        self.procs.append(_spawn(cmd, self.logs / "worker.log"))
        self.say(
            f"worker started (metrics http://127.0.0.1:{s.metrics_port}/metrics, "
            f"log {self.logs / 'worker.log'})"
        )

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
        s = self.settings
        deadline = time.monotonic() + self.args.duration if self.args.duration else None
        last_scored, last_t = 0.0, time.monotonic()
        while True:
            time.sleep(2)
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
        print(
            f"  Prometheus    http://127.0.0.1:{s.prometheus_port}/alerts  (drift gauges: "
            f"stopdrift_feature_drift_score)"
        )
        print(
            f"  Alertmanager  http://127.0.0.1:{s.alertmanager_port}  firing now: "
            f"{', '.join(names) if names else 'none'}"
        )
        print(f"  MLflow        {s.mlflow_tracking_uri}  (model {s.model_name}@{s.model_alias})")
        print(
            "  Grafana       http://127.0.0.1:3000 via `docker compose up grafana` "
            "(dashboard monitoring/grafana/dashboards/stopdrift.json)"
        )
        print(f"  reports       {s.runs_dir / 'reports'}  (Evidently HTML per drift alert)")
        print(f"  logs          {self.logs}")

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


def run(args: argparse.Namespace, settings: Settings) -> int:
    demo = Demo(args, settings)
    try:
        demo.broker()
        demo.mlflow()
        demo.champion()
        demo.monitoring()
        demo.worker()
        demo.watch(demo.producer())
        demo.summary()
        if args.keep_running:
            demo.say("servers keep running; Ctrl-C stops them")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        demo.say("interrupted")
    finally:
        demo.stop()
    return 0


__all__ = ["run", "scrape"]
