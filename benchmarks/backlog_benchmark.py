"""Backlog benchmark: a no-drift backlog read by ``stopdrift worker`` as installed.

The events are on the broker before the worker starts (as after an outage), so the worker reads
its partitions unevenly. What must hold whatever the skew: every window is tested at its full
size (closed ``full``, never by the wall clock or the open-window cap before its events were
read), no alert on a no-drift feed, and bounded memory.

Two streams, each on a broker of its own with the same champion:

- ``even``: N events of the state table (seeded shuffles, looped), keyed by state, 4 partitions;
- ``skewed``: the same events, but half of them all in partition 0 (the rest keyed as usual).

Measured from outside (kafka-python reads ``drift.windows`` and ``drift.alerts``; the worker's
RSS from /proc every second): windows by how they closed, windows below their full size,
alerts, open windows and paused partitions seen on ``/metrics``, peak RSS, events/s.

The replayed rows are the state table the champion was trained on (its reference holds a
quarter of them): this checks the window lifecycle, not the false-alarm rate (for that, the
drift benchmark's held-out null).

Run: ``.venv/bin/python -m benchmarks.backlog_benchmark [--events N]`` (default 1,000,000 per
stream; about 15 minutes for both on 2 cores); writes ``benchmarks/results/backlog.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from benchmarks.stream_benchmark import MODEL_NAME, WorkerProc, sample, scrape, train_champion
from stopdrift import servers
from stopdrift_common.schema import dumps
from stopdrift_common.settings import PROJECT_ROOT, Settings
from stopdrift_common.topics import ensure_topics

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "backlog.json"


def events(n: int) -> list[dict]:
    """``n`` events of the state table as ``stopdrift produce`` makes them, seq 0..n-1."""
    import pandas as pd

    from producers import scenarios
    from producers.events import to_events
    from producers.replay import chunks, load_tables

    tables = load_tables(Settings(data_dir=PROJECT_ROOT / "data"))
    loops = -(-n // len(tables["state"]))
    rows = [c for _, c in chunks(tables, scenarios.build("none", seed=7), "state", loops, n, 5000)]
    return to_events(pd.concat(rows), 0, time.time())


def send(settings: Settings, evs: list[dict], skewed: bool) -> None:
    """Send every event (keyed by state; with ``skewed``, every second event to partition 0)
    and wait until the broker has them all."""
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=settings.bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1
    )
    for i, e in enumerate(evs):
        key = e["state"].encode()
        p.send(settings.topics.raw, dumps(e), key=key, partition=0 if skewed and i % 2 else None)
    p.flush(timeout=600)
    p.close()


class Records:
    """Reads a topic from its start without a consumer group, incrementally."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.c = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
        parts = [TopicPartition(topic, p) for p in self.c.partitions_for_topic(topic) or [0]]
        self.c.assign(parts)
        self.c.seek_to_beginning(*parts)
        self.rows: list[dict] = []

    def drain(self) -> list[dict]:
        while batch := self.c.poll(timeout_ms=300, max_records=5000):
            for records in batch.values():
                self.rows += [orjson.loads(r.value) for r in records]
        return self.rows


def children_rss_mb(pid: int) -> float:
    """Resident memory of a process's children (the worker's report service)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            status = Path(f"/proc/{child}/status")
            if status.exists():
                fields = dict(x.split(":", 1) for x in status.read_text().splitlines() if ":" in x)
                total += int(fields["VmRSS"].split()[0]) / 1024
    return total


def run_stream(name: str, n: int, evs: list[dict], base: Path, quick_train: bool) -> dict:
    logs = base / name / "logs"
    broker = servers.broker(servers.free_port(), logs).start()
    mlflow = servers.mlflow_server(servers.free_port(), base / "mlflow", logs).start()
    worker = None
    try:
        settings = Settings(
            data_dir=PROJECT_ROOT / "data",
            runs_dir=base / "runs",  # shared: the champion's calibration is computed once
            mlflow_tracking_uri=f"http://127.0.0.1:{mlflow.port}",
            kafka_bootstrap_servers=f"127.0.0.1:{broker.port}",
            model_name=MODEL_NAME,
        )
        ensure_topics(settings)
        if not (base / "trained").exists():
            print("training a champion...", flush=True)
            train_champion(settings, quick_train)
            (base / "trained").touch()
        t = time.monotonic()
        send(settings, evs, skewed=name == "skewed")
        print(f"{name}: {n:,} events on the broker in {time.monotonic() - t:.0f} s", flush=True)
        windows = Records(settings, settings.topics.windows)
        alerts = Records(settings, settings.topics.alerts)
        expected = n // settings.window_events
        started = time.monotonic()
        worker = WorkerProc(settings, logs, 1)
        peak_rss, peak_children, max_paused = 0.0, 0.0, 0.0
        deadline = started + 3600
        while len(windows.drain()) < expected:
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{len(windows.rows)} of {expected} windows; see {logs}")
            peak_rss = max(peak_rss, worker.rss_mb()["VmRSS"])
            peak_children = max(peak_children, children_rss_mb(worker.proc.pid))
            text = scrape(worker.metrics_port)
            paused = sample(text, "stopdrift_paused_partitions")
            max_paused = max(max_paused, paused if paused == paused else 0.0)
            time.sleep(1.0)
        seconds = time.monotonic() - started
        full = [w for w in windows.rows if w["window"] < expected]
        return {
            "events": n,
            "windows": len(full),
            "closed_by": dict(Counter(w["closed_by"] for w in full)),
            "below_full_size": sum(1 for w in full if w["missing"]),
            "tested": sum(1 for w in full if w["tested"]),
            "alerts": len(alerts.drain()),
            "alerting_features": dict(
                Counter(f for a in alerts.rows for f in a.get("drifted_features", []))
            ),
            "peak_rss_mb": round(peak_rss, 1),
            "peak_report_service_rss_mb": round(peak_children, 1),
            "max_paused_partitions": max_paused,
            "seconds_to_last_window": round(seconds, 1),
            "events_per_s_incl_startup": round(n / seconds),
        }
    finally:
        if worker is not None:
            worker.stop()
        mlflow.stop()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events per stream")
    parser.add_argument("--streams", nargs="+", default=["even", "skewed"])
    parser.add_argument("--quick-train", action="store_true", help="a smaller champion")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    evs = events(args.events)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python -m benchmarks.backlog_benchmark " + " ".join(argv or sys.argv[1:]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    with tempfile.TemporaryDirectory(prefix="stopdrift-backlog-") as tmp:
        for name in args.streams:
            results[name] = run_stream(name, args.events, evs, Path(tmp), args.quick_train)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
