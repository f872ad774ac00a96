"""Faults as a measured suite: what a fault costs the feed, on the real parts.

Each fault runs on its own embedded broker with a worker as users run it (``stopdrift worker``,
restarted by this suite when it exits, as systemd or compose would) and the champion trained
here. ``N`` events with known ids are produced at a steady rate; the fault is injected midway;
then every outcome on ``stops.scored`` and ``stops.dlq`` is read back:

- **events lost**: sent (acknowledged by the broker) but with no outcome (goal 0);
- **duplicates**: outcomes beyond one per event (at-least-once: re-read after a crash);
- **seconds to recover**: from the fault to the first event scored after it;
- **worker alive**: at the end (after restarts by the suite, counted).

Faults: the worker SIGKILLed mid-batch; the embedded broker restarted (memory storage: the
events in it are gone with it, detected and said, and the events sent afterwards must all be
scored); MLflow down when the worker starts, and down mid-stream; a new champion whose
``predict_proba`` raises (the worker keeps its model and says so on /metrics); a flood of
10,000 events with distinct unknown states (label cardinality on /metrics stays bounded).

Run: ``.venv/bin/python -m benchmarks.faults`` (about 6 minutes); writes
``benchmarks/results/faults.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from stopdrift import servers
from stopdrift_common.schema import dumps
from stopdrift_common.settings import PROJECT_ROOT, Settings
from tests.helpers_stream import (
    Worker,
    metrics,
    read_topic,
    send_paced,
    state_events,
    stream_settings,
)

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "faults.json"
MODEL = "stopdrift-faults"
N_EVENTS = 6000
RATE = 400.0  # events/s: 15 s of feed, the fault at about 7 s


class Run:
    """One fault's stack: a broker, a worker (restarted when it exits), a stream."""

    def __init__(self, base: Path, mlflow: Settings, name: str):
        self.base = base / name
        self.broker = servers.broker(servers.free_port(), self.base / "logs").start()
        self.settings = stream_settings(mlflow, self.broker, self.base, f"faults-{name}")
        self.worker = Worker(self.settings, self.base / "logs", MODEL, ["--window-events", "500"])
        self.restarts = 0
        self.events = state_events(N_EVENTS)
        for e in self.events:
            e["event_id"] = f"{name}-{e['seq']}"
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start_worker(self, wait: bool = True) -> None:
        """Start the worker (waiting for its model, unless MLflow is down) and supervise it."""
        if wait:
            self.worker.start()
        else:
            self.worker.spawn()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stop.is_set():
            time.sleep(1)
            if self.worker.proc is not None and self.worker.proc.poll() is not None:
                self.restarts += 1
                self.worker.spawn()

    def send(self, events: list[dict] | None = None, rate: float = RATE) -> None:
        send_paced(
            self.settings, [(e["state"].encode(), dumps(e)) for e in events or self.events], rate
        )

    def outcomes(self) -> Counter:
        ids: Counter = Counter()
        for value in read_topic(self.settings, self.settings.topics.scored):
            obj = orjson.loads(value)
            for r in obj if isinstance(obj, list) else [obj]:
                ids[r["event_id"]] += 1
        for value in read_topic(self.settings, self.settings.topics.dlq):
            d = orjson.loads(value)
            text = d.get("original_text") or orjson.dumps(d.get("element") or {}).decode()
            found = re.search(r'"event_id":\s*"([^"]+)"', text)
            if found:
                ids[found.group(1)] += 1
        return ids

    def wait_for_outcomes(self, wanted: set[str], timeout: float = 240.0) -> Counter:
        deadline = time.monotonic() + timeout
        while True:
            got = self.outcomes()
            if wanted <= set(got) or time.monotonic() > deadline:
                return got
            time.sleep(2)

    def close(self) -> None:
        self._stop.set()
        self.worker.stop()
        self.broker.stop()


def scored_since(run: Run, t0: float) -> float | None:
    """Seconds from ``t0`` to the first output scored after it (None: none)."""
    first = None
    for value in read_topic(run.settings, run.settings.topics.scored):
        obj = orjson.loads(value)
        for r in obj if isinstance(obj, list) else [obj]:
            if r["scored_at"] > t0 and (first is None or r["scored_at"] < first):
                first = r["scored_at"]
    return None if first is None else first - t0


def row(fault: str, run: Run, sent: list[dict], got: Counter, t_fault: float, notes: str):
    ids = {e["event_id"] for e in sent}
    lost = len(ids - set(got))
    return {
        "fault": fault,
        "events_sent": len(ids),
        "events_lost": lost,
        "duplicates": sum(max(n - 1, 0) for i, n in got.items() if i in ids),
        "seconds_to_recover": scored_since(run, t_fault),
        "worker_alive": run.worker.alive(),
        "worker_restarts": run.restarts,
        "notes": notes,
    }


def in_background(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


# --- the faults ---------------------------------------------------------------------------------
def worker_sigkill(base: Path, mlflow: Settings) -> dict:
    run = Run(base, mlflow, "sigkill")
    try:
        run.start_worker()
        feed = in_background(run.send)
        time.sleep(N_EVENTS / RATE / 2)
        t = time.time()
        run.worker.proc.send_signal(signal.SIGKILL)  # the supervisor starts it again
        feed.join()
        got = run.wait_for_outcomes({e["event_id"] for e in run.events})
        return row(
            "worker SIGKILL mid-batch",
            run,
            run.events,
            got,
            t,
            "restarted; uncommitted batches read again (duplicates, same event_id)",
        )
    finally:
        run.close()


def broker_restart(base: Path, mlflow: Settings) -> dict:
    run = Run(base, mlflow, "broker")
    try:
        run.start_worker()
        first, second = run.events[: N_EVENTS // 2], run.events[N_EVENTS // 2 :]
        run.send(first)
        time.sleep(5)
        port = run.broker.port
        t = time.time()
        run.broker.stop()
        run.broker = servers.broker(port, run.base / "logs").start()  # empty: memory storage
        from stopdrift_common.topics import ensure_topics

        ensure_topics(run.settings)
        said = _wait_log(run, "the broker lost", 60)
        run.send(second)
        got = run.wait_for_outcomes({e["event_id"] for e in second})
        r = row(
            "embedded broker restart",
            run,
            second,
            got,
            t,
            "memory storage: the first half went with the broker (topics, outcomes, "
            "offsets); the worker said so"
            + (f" ({said})" if said else " (NOT SAID)")
            + ", exited (code 4) and was restarted; counted: the events sent after",
        )
        r["detected"] = bool(said)
        return r
    finally:
        run.close()


def _wait_log(run: Run, text: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(run.worker.log_dir.glob("worker-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if text in line:
                    return line.split("] ", 3)[-1].strip()[:160]
        time.sleep(1)
    return None


def mlflow_down_at_start(base: Path, mlflow_server, mlflow: Settings) -> dict:
    run = Run(base, mlflow, "mlflow-start")
    try:
        mlflow_server.stop()
        run.start_worker(wait=False)
        feed = in_background(run.send)
        time.sleep(10)
        t = time.time()
        mlflow_server.start()
        feed.join()
        got = run.wait_for_outcomes({e["event_id"] for e in run.events})
        return row(
            "MLflow down when the worker starts",
            run,
            run.events,
            got,
            t,
            "the worker waits (a log line every few seconds), events wait unacked",
        )
    finally:
        if not servers.port_open(mlflow_server.port):
            mlflow_server.start()
        run.close()


def mlflow_down_mid_stream(base: Path, mlflow_server, mlflow: Settings) -> dict:
    run = Run(base, mlflow, "mlflow-mid")
    try:
        run.start_worker()
        feed = in_background(run.send)
        time.sleep(N_EVENTS / RATE / 2)
        t = time.time()
        mlflow_server.stop()
        feed.join()
        got = run.wait_for_outcomes({e["event_id"] for e in run.events})
        mlflow_server.start()
        return row(
            "MLflow down mid-stream",
            run,
            run.events,
            got,
            t,
            "scoring goes on with the loaded model",
        )
    finally:
        if not servers.port_open(mlflow_server.port):
            mlflow_server.start()
        run.close()


def broken_champion(base: Path, mlflow: Settings) -> dict:
    run = Run(base, mlflow, "champion")
    try:
        run.start_worker()
        feed = in_background(run.send)
        time.sleep(N_EVENTS / RATE / 3)
        t = time.time()
        version = register_broken(run.settings)
        feed.join()
        got = run.wait_for_outcomes({e["event_id"] for e in run.events})
        rejected = re.search(
            r"^stopdrift_champion_rejected_version (\S+)$",
            metrics(run.worker.metrics_port),
            flags=re.M,
        )
        said = rejected and float(rejected.group(1)) == float(version)
        return row(
            "a champion whose predict raises",
            run,
            run.events,
            got,
            t,
            f"version {version} refused; the worker kept its model and says so on "
            f"/metrics: {'yes' if said else 'NO'}",
        )
    finally:
        run.close()


def register_broken(settings: Settings) -> str:
    """A new version of the model whose ``predict_proba`` raises, made the champion. Registered
    as training registers (with its digests), so the worker's smoke test is what refuses it."""
    import mlflow
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from stopdrift_common.registry import MODEL_DIGEST_TAG, REFERENCE_DIGEST_TAG, client
    from training.registration import logged_model_digest

    c = client(settings)
    current = c.get_model_version_by_alias(MODEL, settings.model_alias)

    def fail(x):
        raise RuntimeError("this model is broken")

    broken = Pipeline([("broken", FunctionTransformer(fail))])
    with mlflow.start_run(run_id=current.run_id):  # the same reference artifacts
        info = mlflow.sklearn.log_model(broken, name="broken", serialization_format="cloudpickle")
    tags = {
        MODEL_DIGEST_TAG: logged_model_digest(info.model_uri),
        REFERENCE_DIGEST_TAG: current.tags[REFERENCE_DIGEST_TAG],
    }
    mv = mlflow.register_model(info.model_uri, MODEL, tags=tags)
    c.set_registered_model_alias(MODEL, settings.model_alias, mv.version)
    return str(mv.version)


def unknown_state_flood(base: Path, mlflow: Settings) -> dict:
    run = Run(base, mlflow, "flood")
    try:
        run.start_worker()
        series_before = len(metrics(run.worker.metrics_port).splitlines())
        flood = [
            {**e, "state": f"Z{i:05d}", "event_id": f"unknown-state-{i}"}
            for i, e in enumerate(state_events(10_000))
        ]
        t = time.time()
        run.send(flood + run.events, rate=0)
        got = run.wait_for_outcomes({e["event_id"] for e in flood + run.events})
        series_after = len(metrics(run.worker.metrics_port).splitlines())
        r = row(
            "10,000 distinct unknown states",
            run,
            flood + run.events,
            got,
            t,
            f"/metrics lines {series_before} -> {series_after} (bounded labels)",
        )
        r["metrics_lines"] = [series_before, series_after]
        return r
    finally:
        run.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from training.train import train_and_register

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        mlflow_server = servers.mlflow_server(servers.free_port(), base / "mlflow", base / "logs")
        mlflow_server.start()
        try:
            mlflow = Settings(
                runs_dir=base / "train",
                mlflow_tracking_uri=f"http://127.0.0.1:{mlflow_server.port}",
                model_name=MODEL,
            )
            train_and_register(
                mlflow, source="state", sample=1500, models=["lr", "rf"], folds=3, profile=False
            )
            rows = [
                worker_sigkill(base, mlflow),
                broker_restart(base, mlflow),
                mlflow_down_at_start(base, mlflow_server, mlflow),
                mlflow_down_mid_stream(base, mlflow_server, mlflow),
                unknown_state_flood(base, mlflow),
                broken_champion(base, mlflow),  # last: it moves the champion
            ]
        finally:
            mlflow_server.stop()
    result = {
        "events_per_run": N_EVENTS,
        "rate": RATE,
        "rows": rows,
        "runtime_s": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| fault | events | lost | duplicates | recovered in | worker alive (restarts) | |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        rec = "-" if r["seconds_to_recover"] is None else f"{r['seconds_to_recover']:.1f} s"
        lines.append(
            f"| {r['fault']} | {r['events_sent']:,} | {r['events_lost']} | "
            f"{r['duplicates']} | {rec} | {'yes' if r['worker_alive'] else 'no'} "
            f"({r['worker_restarts']}) | {r['notes']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
