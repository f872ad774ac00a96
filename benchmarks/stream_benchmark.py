"""Streaming benchmark: the live feed end to end on the embedded broker, in one run.

Measured, on one broker started here (Tansu, memory storage) and one MLflow server with a
champion trained here (PyCaret through ``training.train_and_register``):

1. ``raw_read``: kafka-python reading N per-event messages (no processing): the broker ceiling.
2. ``bare_faust``: a bare Faust agent with the worker's settings, ``take(2000)`` + orjson decode,
   nothing else, on the same N messages (a new consumer group, so it reads the backlog).
3. ``worker_events``: ``stopdrift worker`` (a subprocess, as users run it) on the same backlog:
   decode, score, DLQ, drift monitor, outputs, metrics. Goal: >= 85% of ``bare_faust``.
4. ``worker_arrays``: N_ARR events in array messages of 500. Goal: >= 50,000 events/s.
5. ``latency``: the producer at 1,000 events/s for D seconds; produced_at -> scored_at p50/p99
   (from the outputs). Goal: p99 < 250 ms; ``latency_drift``: the same while every window
   alerts (stops_per_year x5 from the first event). Goal: p99 < 250 ms.
6. ``rss``: the worker's resident memory with the model loaded, after the runs. Goal < 500 MB.
7. ``scaling``: a second worker joins the same group (4 partitions); N per-event events again.
   Goal: >= 1.8x the one-worker rate.

Rates are measured the same way for Faust and the worker: events after the first batch divided
by the time from the first batch to the last (startup and group joins excluded).

Run: ``.venv/bin/python -m benchmarks.stream_benchmark [--quick]``; writes
``benchmarks/results/stream.json`` and prints a table.
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
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stopdrift import servers
from stopdrift_common.settings import PROJECT_ROOT, Settings
from stopdrift_common.topics import ensure_topics

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "stream.json"
MODEL_NAME = "stopdrift-bench"
GOALS = {
    "worker_vs_bare_faust": 0.85,
    "arrays_events_per_s": 50_000,
    "latency_p99_s": 0.25,
    "latency_p99_drift_s": 0.25,
    "rss_mb": 500,
    "two_workers_speedup": 1.8,
}


# --- the bare Faust agent (run in a subprocess by this same module) -----------------------------
def bare_faust(bootstrap: str, out_path: str, web_port: int) -> None:
    import faust

    from stream_app.app import faust_settings
    from stream_app.faust_internals import limit_fetch_wait

    limit_fetch_wait()  # the same consumer settings as the worker

    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        worker_web_port=web_port,
        runs_dir=Path(out_path).parent,
        worker_id="bench-bare",
    )
    app = faust.App("bench-bare", **faust_settings(settings))
    topic = app.topic(settings.topics.raw, key_serializer="raw", value_serializer="raw")
    log: list[tuple[float, int]] = []

    @app.agent(topic)
    async def decode(stream):
        async for values in stream.take(
            settings.batch_max_events, within=settings.batch_within_seconds
        ):
            n = 0
            for v in values:
                obj = orjson.loads(v)
                n += len(obj) if isinstance(obj, list) else 1
            log.append((time.time(), n))
            Path(out_path).write_bytes(orjson.dumps(log))

    (Path(out_path).parent / "faust").mkdir(parents=True, exist_ok=True)
    faust.Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


# --- helpers -------------------------------------------------------------------------------------
def rate_from_batches(times: np.ndarray, sizes: np.ndarray) -> float:
    """Events after the first batch / time from the first batch to the last."""
    order = np.argsort(times)
    times, sizes = times[order], sizes[order]
    span = times[-1] - times[0]
    return float(sizes[1:].sum() / span) if span > 0 else float("nan")


def produce(settings: Settings, *extra: str) -> float:
    """Run ``stopdrift produce``; return the wall time before it started."""
    t0 = time.time()
    cmd = [sys.executable, "-m", "stopdrift.cli", "produce", "--no-progress"]
    cmd += ["--bootstrap-servers", settings.bootstrap, "--data-dir", str(settings.data_dir)]
    subprocess.run([*cmd, *extra], check=True, stdout=subprocess.DEVNULL)
    return t0


class Outputs:
    """Reads stops.scored incrementally (no consumer group) and keeps per-event results."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.c = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
        topic = settings.topics.scored
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        self.c.assign(parts)
        self.c.seek_to_beginning(*parts)
        self.rows: list[tuple[float, float]] = []  # (produced_at, scored_at)

    def drain(self, seconds: float = 0.5) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for records in self.c.poll(timeout_ms=200, max_records=5000).values():
                for r in records:
                    obj = orjson.loads(r.value)
                    for x in obj if isinstance(obj, list) else [obj]:
                        self.rows.append((x["produced_at"], x["scored_at"]))

    def since(self, t0: float) -> np.ndarray:
        a = np.asarray(self.rows, dtype=float).reshape(-1, 2)
        return a[a[:, 0] >= t0]

    def wait(self, t0: float, n: int, timeout: float) -> np.ndarray:
        deadline = time.monotonic() + timeout
        while len(self.since(t0)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.since(t0))} of {n} outputs after {timeout} s")
            self.drain(0.5)
        return self.since(t0)


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            return r.read().decode()
    except OSError:
        return ""


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


class WorkerProc:
    def __init__(self, settings: Settings, logs: Path, n: int) -> None:
        self.metrics_port = servers.free_port()
        cmd = [sys.executable, "-m", "stopdrift.cli", "worker"]
        cmd += ["--bootstrap-servers", settings.bootstrap]
        cmd += ["--mlflow-uri", settings.mlflow_tracking_uri, "--runs-dir", str(settings.runs_dir)]
        cmd += ["--worker-id", "bench-worker", "--model-poll-seconds", "60"]
        cmd += ["--web-port", str(servers.free_port()), "--metrics-port", str(self.metrics_port)]
        env = {**os.environ, "STOPDRIFT_MODEL_NAME": MODEL_NAME}
        log = open(logs / f"worker-{n}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + 120
        while "stopdrift_model_loaded 1.0" not in scrape(self.metrics_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((logs / f"worker-{n}.log").read_text()[-2000:])
            time.sleep(0.3)

    def rss_mb(self) -> dict[str, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}

    def events(self) -> float:
        return sample(scrape(self.metrics_port), 'stopdrift_events_total{outcome="scored"}')

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def train_champion(settings: Settings, quick: bool) -> dict[str, Any]:
    from training.train import train_and_register

    models = ["lr", "dt", "rf"] if quick else ["lr", "dt", "rf", "lightgbm"]
    result = train_and_register(
        settings,
        source="state",
        sample=1500 if quick else None,
        models=models,
        folds=3,
        profile=False,
        echo=lambda _: None,
    )
    compare = result.compare
    best = str(compare.iloc[0]["Model"]) if "Model" in compare.columns and len(compare) else "?"
    return {"models_compared": models, "best": best, "version": result.version}


def loops_for(n: int) -> str:
    return str(n // 4053 + 1)  # the state table has 4,053 rows


# --- the run -------------------------------------------------------------------------------------
def run(quick: bool) -> dict[str, Any]:
    n_events = 20_000 if quick else 60_000
    n_arrays = 100_000 if quick else 300_000
    latency_seconds = 10 if quick else 30
    results: dict[str, Any] = {
        "quick": quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "goals": GOALS,
    }
    with tempfile.TemporaryDirectory(prefix="stopdrift-bench-") as tmp:
        base = Path(tmp)
        logs = base / "logs"
        broker = servers.broker(servers.free_port(), logs).start()
        mlflow = servers.mlflow_server(servers.free_port(), base / "mlflow", logs).start()
        workers: list[WorkerProc] = []
        try:
            settings = Settings(
                data_dir=PROJECT_ROOT / "data",
                runs_dir=base / "runs",
                mlflow_tracking_uri=f"http://127.0.0.1:{mlflow.port}",
                kafka_bootstrap_servers=f"127.0.0.1:{broker.port}",
                model_name=MODEL_NAME,
            )
            ensure_topics(settings)
            print("training a champion...", flush=True)
            results["model"] = train_champion(settings, quick)

            # 1. raw read
            produce(settings, "--limit", str(n_events), "--loop", loops_for(n_events))
            results["raw_read"] = raw_read(settings, n_events)
            print(f"raw read: {results['raw_read']['events_per_s']:,.0f} events/s", flush=True)

            # 2. bare Faust on the same backlog
            results["bare_faust"] = run_bare_faust(settings, base, n_events)
            print(f"bare Faust: {results['bare_faust']['events_per_s']:,.0f} events/s", flush=True)

            # 3. the worker on the same backlog
            outputs = Outputs(settings)
            workers.append(WorkerProc(settings, logs, 1))
            got = outputs.wait(0.0, n_events, timeout=600)
            results["worker_events"] = throughput(got, n_events)
            print(f"worker: {results['worker_events']['events_per_s']:,.0f} events/s", flush=True)

            # 4. arrays of 500
            t0 = produce(
                settings, "--limit", str(n_arrays), "--loop", loops_for(n_arrays), "--batch", "500"
            )
            got = outputs.wait(t0, n_arrays, timeout=600)
            results["worker_arrays"] = throughput(got, n_arrays)
            print(f"arrays: {results['worker_arrays']['events_per_s']:,.0f} events/s", flush=True)

            # 5. latency at 1,000 events/s
            n_lat = 1000 * latency_seconds
            t0 = produce(
                settings, "--rate", "1000", "--limit", str(n_lat), "--loop", loops_for(n_lat)
            )
            results["latency"] = latency(outputs.wait(t0, n_lat, timeout=120))
            print(f"latency: {results['latency']}", flush=True)

            # 5b. the same while every window alerts (stops_per_year x5 from the first event)
            t0 = produce(
                settings, "--rate", "1000", "--limit", str(n_lat), "--loop", loops_for(n_lat),
                "--scenario", "shift", "--feature", "stops_per_year", "--at", "0", "--factor", "5",
            )  # fmt: skip
            results["latency_drift"] = latency(outputs.wait(t0, n_lat, timeout=120))
            print(f"latency while drifting: {results['latency_drift']}", flush=True)

            # 6. memory
            results["rss"] = workers[0].rss_mb()
            print(f"rss: {results['rss']}", flush=True)

            # 7. a second worker in the group
            workers.append(WorkerProc(settings, logs, 2))
            settle(settings, outputs, workers)
            before = [w.events() for w in workers]
            t0 = produce(settings, "--limit", str(n_events), "--loop", loops_for(n_events))
            got = outputs.wait(t0, n_events, timeout=600)
            two = throughput(got, n_events)
            two["per_worker_events"] = [
                w.events() - b for w, b in zip(workers, before, strict=True)
            ]
            results["two_workers"] = two
            one_rate = results["worker_events"]["events_per_s"]
            results["two_workers"]["speedup"] = two["events_per_s"] / one_rate
            print(f"two workers: {two}", flush=True)
        finally:
            for w in workers:
                w.stop()
            mlflow.stop()
            broker.stop()
    results["checks"] = {
        "worker_vs_bare_faust": results["worker_events"]["events_per_s"]
        / results["bare_faust"]["events_per_s"],
        "arrays_events_per_s": results["worker_arrays"]["events_per_s"],
        "latency_p99_s": results["latency"]["p99_s"],
        "latency_p99_drift_s": results["latency_drift"]["p99_s"],
        "rss_mb": results["rss"]["VmRSS"],
        "two_workers_speedup": results["two_workers"]["speedup"],
    }
    return results


def latency(got: np.ndarray) -> dict[str, Any]:
    lat = got[:, 1] - got[:, 0]
    return {
        "rate_events_per_s": 1000,
        "events": int(len(lat)),
        "p50_s": float(np.percentile(lat, 50)),
        "p99_s": float(np.percentile(lat, 99)),
        "max_s": float(lat.max()),
        "measured_as": "scored_at - produced_at, from every output",
    }


def settle(settings: Settings, outputs: Outputs, workers: list[WorkerProc]) -> None:
    """Wait until the group has rebalanced: a trickle of events reaches every worker."""
    deadline = time.monotonic() + 120
    while True:
        before = [w.events() for w in workers]
        t0 = produce(settings, "--limit", "400", "--rate", "400")
        outputs.wait(t0, 400, timeout=120)
        if all(w.events() > b for w, b in zip(workers, before, strict=True)):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the second worker never got a partition")


def throughput(rows: np.ndarray, n: int) -> dict[str, Any]:
    scored_at = rows[:, 1]
    times, sizes = np.unique(scored_at, return_counts=True)  # one scored_at per batch
    return {
        "events": int(n),
        "batches": int(len(times)),
        "events_per_s": rate_from_batches(times, sizes),
    }


def raw_read(settings: Settings, n: int) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(settings.topics.raw, p) for p in range(settings.partitions)]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    count, first = 0, None
    while count < n:
        batch = c.poll(timeout_ms=1000, max_records=5000)
        if batch and first is None:
            first = time.perf_counter()
        count += sum(len(v) for v in batch.values())
    elapsed = time.perf_counter() - (first or time.perf_counter())
    c.close()
    return {"events": count, "events_per_s": count / elapsed if elapsed else float("nan")}


def run_bare_faust(settings: Settings, base: Path, n: int) -> dict[str, Any]:
    out = base / "bare" / "batches.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.stream_benchmark", "--bare-faust"]
    cmd += [settings.bootstrap, str(out), str(servers.free_port())]
    log = open(base / "logs" / "bare.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 600
        while True:
            batches = orjson.loads(out.read_bytes()) if out.exists() else []
            if sum(b[1] for b in batches) >= n:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((base / "logs" / "bare.log").read_text()[-2000:])
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(20)
    a = np.asarray(batches, dtype=float)
    return {"events": n, "batches": len(a), "events_per_s": rate_from_batches(a[:, 0], a[:, 1])}


def table(results: dict[str, Any]) -> str:
    c = results["checks"]
    rows = [
        ("kafka-python raw read", f"{results['raw_read']['events_per_s']:,.0f} ev/s", ""),
        ("bare Faust decode-only", f"{results['bare_faust']['events_per_s']:,.0f} ev/s", ""),
        (
            "worker, per-event messages",
            f"{results['worker_events']['events_per_s']:,.0f} ev/s "
            f"({c['worker_vs_bare_faust']:.0%} of bare Faust)",
            f">= {GOALS['worker_vs_bare_faust']:.0%}",
        ),
        (
            "worker, arrays of 500",
            f"{c['arrays_events_per_s']:,.0f} ev/s",
            f">= {GOALS['arrays_events_per_s']:,}",
        ),
        (
            "latency at 1,000 ev/s",
            f"p50 {results['latency']['p50_s'] * 1000:.0f} ms, "
            f"p99 {c['latency_p99_s'] * 1000:.0f} ms",
            f"p99 < {GOALS['latency_p99_s'] * 1000:.0f} ms",
        ),
        (
            "latency while every window alerts",
            f"p50 {results['latency_drift']['p50_s'] * 1000:.0f} ms, "
            f"p99 {c['latency_p99_drift_s'] * 1000:.0f} ms",
            f"p99 < {GOALS['latency_p99_drift_s'] * 1000:.0f} ms",
        ),
        (
            "worker RSS, model loaded",
            f"{c['rss_mb']:.0f} MB (peak {results['rss']['VmHWM']:.0f})",
            f"< {GOALS['rss_mb']} MB",
        ),
        (
            "two workers vs one",
            f"{results['two_workers']['events_per_s']:,.0f} ev/s ({c['two_workers_speedup']:.2f}x)",
            f">= {GOALS['two_workers_speedup']}x",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure':<{width}}  {'result':<44}  goal", "-" * (width + 56)]
    lines += [f"{a:<{width}}  {b:<44}  {g}" for a, b, g in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 3 minutes)")
    parser.add_argument("--bare-faust", nargs=3, metavar=("BOOTSTRAP", "OUT", "WEB_PORT"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.bare_faust:
        bootstrap, out, port = args.bare_faust
        bare_faust(bootstrap, out, int(port))
        return 0
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    started = time.time()
    results = run(args.quick)
    results["elapsed_s"] = time.time() - started
    results["command"] = "python -m benchmarks.stream_benchmark" + (
        " --quick" if args.quick else ""
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(table(results))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
