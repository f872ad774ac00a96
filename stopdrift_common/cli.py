"""``stopdrift``: one console command, one subcommand per job.

Arguments are declared here (cheap to import); each subcommand's code is imported only when it
runs, so ``stopdrift --help`` does not load PyCaret or Faust. Problems the user can fix
(``UserError``) print one line and exit 1; bad arguments print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from stopdrift_common.errors import UserError
from stopdrift_common.settings import Settings

SCENARIOS = ["none", "natural", "shift", "gradual", "missing"]


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; users asked for one line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def probability(text: str) -> float:
    value = non_negative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mlflow-uri",
        dest="mlflow_tracking_uri",
        help="MLflow tracking server (default http://127.0.0.1:5001, env MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--bootstrap-servers",
        dest="kafka_bootstrap_servers",
        help="Kafka brokers (default: the embedded broker; env KAFKA_BOOTSTRAP_SERVERS)",
    )
    p.add_argument("--data-dir", type=Path, help="where the OPP CSVs are read from (default data/)")
    p.add_argument("--runs-dir", type=Path, help="where outputs are written (default runs/)")
    p.add_argument("--seed", type=int, help="random seed (default 42)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="stopdrift", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    p = sub.add_parser("analyze", help="profile both tables and print the top 10 states and cities")
    _common(p)
    p.add_argument("--full-profile", action="store_true", help="full (slower) ydata profiles")
    p.add_argument("--no-profile", action="store_true", help="skip the HTML profiles")
    p.set_defaults(run="training.analyze:run")

    p = sub.add_parser("train", help="compare classifiers with PyCaret, log and register the best")
    _common(p)
    p.add_argument("--source", choices=["state", "city", "both"], default="state")
    p.add_argument("--target", default="subject_race", help="column to predict")
    p.add_argument("--sample", type=positive_int, help="use at most N rows per source (tests)")
    p.add_argument("--models", help="comma-separated PyCaret model ids to compare (default: all)")
    p.add_argument("--folds", type=positive_int, default=5)
    p.add_argument("--no-profile", action="store_true", help="do not profile the training data")
    p.add_argument(
        "--start-mlflow", action="store_true", help="start a local MLflow server if none answers"
    )
    p.set_defaults(run="training.train:run")

    p = sub.add_parser("mlflow", help="run the MLflow tracking server (sqlite, loopback)")
    _common(p)
    p.add_argument("--port", type=positive_int, dest="mlflow_port")
    p.set_defaults(run="stopdrift_common.servers_cli:run_mlflow")

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker and create topics")
    _common(p)
    p.add_argument("--port", type=positive_int, dest="broker_port")
    p.add_argument("--partitions", type=positive_int)
    p.set_defaults(run="stopdrift_common.servers_cli:run_broker")

    p = sub.add_parser("produce", help="replay the tables as Kafka events on stops.raw")
    _common(p)
    p.add_argument("--source", choices=["state", "city", "both"], default="state")
    p.add_argument(
        "--rate",
        type=non_negative_float,
        default=0.0,
        help="events per second (0 = as fast as the broker takes)",
    )
    p.add_argument("--loop", type=positive_int, default=1, help="replay the table N times")
    p.add_argument(
        "--batch", type=positive_int, default=1, help="events per message (>1 sends JSON arrays)"
    )
    p.add_argument("--limit", type=positive_int, help="stop after N events")
    p.add_argument("--scenario", choices=SCENARIOS, default="none")
    p.add_argument("--feature", default="stops_per_year", help="feature the scenario shifts")
    p.add_argument("--at", type=int, default=0, help="event number where the scenario starts")
    p.add_argument(
        "--factor", type=non_negative_float, default=3.0, help="shift/gradual: multiplier"
    )
    p.add_argument(
        "--span", type=positive_int, default=2000, help="gradual/missing: events to ramp in over"
    )
    p.add_argument(
        "--share", type=probability, default=0.5, help="missing: final share of blanked values"
    )
    p.add_argument("--topic", help="topic to write to (default stops.raw)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run="producers.replay:run")

    p = sub.add_parser("worker", help="run the Faust stream app that scores and monitors stops.raw")
    _common(p)
    p.add_argument("--worker-id", help="consumer group / app id")
    p.add_argument("--web-port", type=positive_int, dest="worker_web_port")
    p.add_argument("--metrics-port", type=positive_int)
    p.add_argument("--window-events", type=positive_int)
    p.add_argument("--false-alarm-rate", type=probability)
    p.add_argument("--model-poll-seconds", type=non_negative_float)
    p.set_defaults(run="stream_app.worker:run")

    p = sub.add_parser("demo", help="start everything locally and replay the natural scenario")
    _common(p)
    p.add_argument(
        "--duration",
        type=non_negative_float,
        default=120.0,
        help="seconds to replay before stopping (0 = until Ctrl-C)",
    )
    p.add_argument("--rate", type=non_negative_float, default=500.0)
    p.add_argument("--scenario", choices=SCENARIOS, default="natural")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the servers up after the replay until Ctrl-C",
    )
    p.set_defaults(run="stopdrift_common.demo:run")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    names = {f for f in Settings.__dataclass_fields__}
    return Settings.from_env(**{k: v for k, v in vars(args).items() if k in names})


def _resolve(target: str) -> Callable[[argparse.Namespace, Settings], int | None]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        return int(_resolve(args.run)(args, settings) or 0)
    except UserError as exc:
        print(f"stopdrift {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopdrift {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
