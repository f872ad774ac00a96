"""Helpers for integration tests that run the worker as a user does (a subprocess of
``python -m stopdrift.cli worker``) against a real broker and MLflow registry: start it
and wait for its model, produce raw messages, read an output topic from the beginning.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from stopdrift import servers
from stopdrift_common.settings import Settings

WAIT = 90.0  # seconds: generous, CI has 2 shared cores


def metrics(port: int) -> str:
    """The worker's /metrics text, or "" while it is not answering."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            return r.read().decode()
    except OSError:
        return ""


class Worker:
    """The worker subprocess; ``start`` again (after ``kill``/``stop``) keeps its id (consumer
    group) and its ports.

    ``model_name``: the registered model it serves (env STOPDRIFT_MODEL_NAME); ``extra_args``:
    more CLI flags (e.g. ``["--window-events", "250"]``)."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        model_name: str,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.model_name = model_name
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.web_port = servers.free_port()
        self.metrics_port = servers.free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        """Start the worker and wait until it scores with the champion."""
        self.spawn()
        deadline = time.monotonic() + WAIT
        while "stopdrift_model_loaded 1.0" not in metrics(self.metrics_port):
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "worker did not load the model\n" + self.log()
            time.sleep(0.3)

    def spawn(self) -> None:
        """Start the worker process (without waiting for it)."""
        s = self.settings
        self.starts += 1
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        cmd = [
            sys.executable,
            "-m",
            "stopdrift.cli",
            "worker",
            "--bootstrap-servers",
            s.bootstrap,
            "--mlflow-uri",
            s.mlflow_tracking_uri,
            "--runs-dir",
            str(s.runs_dir),
            "--worker-id",
            s.worker_id,
            "--web-port",
            str(self.web_port),
            "--metrics-port",
            str(self.metrics_port),
            "--model-poll-seconds",
            "1",
            *self.extra_args,
        ]
        # A smaller bootstrap than the default 4,000 windows per size: the same code, seconds
        # less per calibration on CI's two cores.
        env = {
            **os.environ,
            "STOPDRIFT_MODEL_NAME": self.model_name,
            "STOPDRIFT_CALIBRATION_WINDOWS": "1000",
            **self.env,
        }
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    @property
    def log_path(self) -> Path:
        # The web port tells apart workers of one group (they share the worker id).
        return self.log_dir / f"worker-{self.settings.worker_id}-{self.web_port}-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def register_copy(settings: Settings, name: str) -> str:
    """Register the champion's model again under ``name`` (a new version) and point the alias
    at it: the run (and its reference artifacts) is the same. A test that serves its own name
    is not moved by other tests retraining the session's champion."""
    import mlflow

    from stopdrift_common.registry import MODEL_DIGEST_TAG, REFERENCE_DIGEST_TAG, client

    c = client(settings)
    source = c.get_model_version_by_alias(settings.model_name, settings.model_alias)
    # The same files, so the same digest tags: without them the worker refuses the version.
    digests = {
        k: v for k, v in source.tags.items() if k in (MODEL_DIGEST_TAG, REFERENCE_DIGEST_TAG)
    }
    mv = mlflow.register_model(source.source, name, tags=digests)  # waits until it is READY
    c.set_registered_model_alias(name, settings.model_alias, mv.version)
    return str(mv.version)


def producer(settings: Settings):
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=settings.bootstrap, linger_ms=5, max_request_size=4 * 1024 * 1024
    )


def send_all(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    """Send (key, value) messages to stops.raw and wait until the broker has each one."""
    p = producer(settings)
    futures = [p.send(settings.topics.raw, key=k, value=v) for k, v in messages]
    p.flush(30)
    for f in futures:
        f.get(10)  # raises if the broker did not take it
    p.close()


def read_topic(settings: Settings, topic: str) -> list[bytes]:
    """Every message on ``topic`` so far (no consumer group: assign, read until quiet). Not
    ``end_offsets``: the embedded broker's ListOffsets LATEST is wrong (README, pitfalls)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or []]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    out: list[bytes] = []
    quiet = 0
    while quiet < 2:
        batch = c.poll(timeout_ms=300)
        quiet = 0 if batch else quiet + 1
        for records in batch.values():
            out.extend(r.value for r in records)
    c.close()
    return out


def stream_settings(
    champion_settings: Settings, broker: servers.Service, base: Path, worker_id: str, **kw
) -> Settings:
    """Settings for a stream test: the session's MLflow and data, its own broker, outputs under
    ``base``, its own worker group; topics created."""
    from stopdrift_common.topics import ensure_topics

    s = Settings(
        data_dir=champion_settings.data_dir,
        runs_dir=base / "runs",
        mlflow_tracking_uri=champion_settings.mlflow_tracking_uri,
        kafka_bootstrap_servers=f"127.0.0.1:{broker.port}",
        model_name=champion_settings.model_name,
        worker_id=worker_id,
        **kw,
    )
    ensure_topics(s)
    return s


def produce_command(settings: Settings, *args: str) -> list[str]:
    """``stopdrift produce`` against the test's broker and data, as a user would run it."""
    return [
        sys.executable, "-m", "stopdrift.cli", "produce", "--bootstrap-servers",
        settings.bootstrap, "--data-dir", str(settings.data_dir), "--no-progress", *args,
    ]  # fmt: skip


def natural_feed(settings: Settings, rate: float, limit: int) -> list[str]:
    """``stopdrift produce`` of the natural scenario (state rows, then city rows)."""
    return produce_command(
        settings, "--scenario", "natural", "--source", "both", "--rate", str(rate),
        "--limit", str(limit),
    )  # fmt: skip


def drift_records(settings: Settings, topic: str) -> list[dict]:
    """This worker group's records on ``drift.windows`` or ``drift.alerts``, in topic order."""
    import orjson

    records = [orjson.loads(v) for v in read_topic(settings, topic)]
    return [r for r in records if r.get("worker_id") == settings.worker_id]


def state_events(n: int, loop_seed: int = 42) -> list[dict]:
    """``n`` events of the state table as the producer makes them (seeded shuffles, looped),
    seq 0..n-1."""
    from producers import scenarios
    from producers.events import to_events
    from producers.replay import chunks, load_tables
    from stopdrift_common.settings import PROJECT_ROOT

    tables = load_tables(Settings(data_dir=PROJECT_ROOT / "data"))
    loops = -(-n // len(tables["state"]))
    scenario = scenarios.build("none", seed=loop_seed)
    rows = [c for _, c in chunks(tables, scenario, "state", loops, n, 5000)]
    import pandas as pd

    return to_events(pd.concat(rows), 0, time.time())


def send_paced(settings: Settings, messages: list[tuple[bytes | None, bytes]], rate: float) -> None:
    """Send (key, value) messages to stops.raw at about ``rate`` messages per second (0: at
    once) and wait until the broker has each one."""
    p = producer(settings)
    futures = []
    start = time.monotonic()
    for i, (k, v) in enumerate(messages):
        if rate and i % 50 == 0:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        futures.append(p.send(settings.topics.raw, key=k, value=v))
    p.flush(60)
    for f in futures:
        f.get(10)
    p.close()


class FeatureModel:
    """Predictions that depend on the features (so prediction statistics mean something)."""

    def predict_proba(self, frame):
        import numpy as np

        x = np.log1p(frame["stops_per_year"].fillna(1000).to_numpy(dtype=float))
        a = 1 / (1 + np.exp(-(x - 7)))
        return np.column_stack([a * 0.5, 0.3 * np.ones_like(a), 0.7 - a * 0.5])


def feature_champion(version: str = "1"):
    """A champion as the worker sees it (no MLflow): ``FeatureModel`` and its reference rows,
    4,053 state events with their predicted probabilities."""
    from types import SimpleNamespace

    import pandas as pd

    from stopdrift_common.schema import CLASSES, MODEL_FEATURES, TARGET

    rows = pd.DataFrame(state_events(4053, loop_seed=7))
    proba = FeatureModel().predict_proba(rows)
    ref = rows[[*MODEL_FEATURES, TARGET]].copy()
    for j, c in enumerate(CLASSES):
        ref[f"proba_{c}"] = proba[:, j]
    return SimpleNamespace(
        model=FeatureModel(), classes=CLASSES, name="m", version=version,
        reference={"classes": CLASSES}, reference_rows=ref,
    )  # fmt: skip


def drift_settings(runs_dir: Path, window: int = 250, partitions: int = 4) -> Settings:
    """The broker-less drift tests' settings: small windows, a short idle time, a quick
    calibration."""
    from stopdrift_common.settings import PROJECT_ROOT

    return Settings(
        data_dir=PROJECT_ROOT / "data",
        runs_dir=runs_dir,
        window_events=window,
        window_idle_seconds=5,
        calibration_windows=500,
        partitions=partitions,
    )
