"""Wall time of the batch side end to end, as a user runs it: ``stopdrift analyze`` (minimal and
full profiles) and ``stopdrift train`` on the full tables (default models, minimal profile)
against a real MLflow server started here on a free port, in a temporary directory.

Run: ``.venv/bin/python -m benchmarks.train_benchmark``; writes
``benchmarks/results/train_benchmark.json`` (commands, wall seconds, the comparison table's top
rows, holdout metrics vs the majority baseline, the registry decision).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from stopdrift import servers

OUT = Path(__file__).resolve().parent / "results" / "train_benchmark.json"
STOPDRIFT = [sys.executable, "-m", "stopdrift.cli"]


def timed(args: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(STOPDRIFT + args, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
    return wall, done.stdout


def main() -> int:
    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
        },
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "runs"
        port = servers.free_port()
        uri = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        with servers.mlflow_server(port, runs / "mlflow", runs / "logs"):
            results["mlflow_server_start_seconds"] = round(time.perf_counter() - started, 1)
            commands = [
                ["analyze", "--no-profile"],
                ["analyze"],
                ["analyze", "--full-profile"],
                ["train", "--source", "state"],
                ["train", "--source", "state", "--no-profile"],
                ["train", "--source", "both", "--no-profile"],
            ]
            for args in commands:
                full = [*args, "--runs-dir", str(runs)]
                if args[0] == "train":
                    full += ["--mlflow-uri", uri]
                wall, stdout = timed(full)
                entry: dict = {
                    "command": "stopdrift " + " ".join(args),
                    "wall_seconds": round(wall, 1),
                }
                if args[0] == "train":
                    metrics = json.loads((runs / "train" / "metrics.json").read_text())
                    compare = pd.read_csv(runs / "train" / "compare_models.csv", index_col=0)
                    cols = ["Model", "Accuracy", "AUC", "F1 (macro)", "TT (Sec)"]
                    entry.update(
                        best_model=metrics["model"],
                        holdout_rows=metrics["holdout_rows"],
                        holdout=metrics["holdout"],
                        baseline=metrics["baseline"],
                        decision=metrics["decision"],
                        compare_top=compare[cols].head(5).round(4).reset_index().to_dict("records"),
                    )
                results["runs"].append(entry)
                print(f"{entry['command']}: {entry['wall_seconds']} s", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
