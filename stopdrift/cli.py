"""``stopdrift``: one console command, one subcommand per job.

Arguments are declared here (cheap to import); each subcommand's code is imported only when it
runs, so ``stopdrift --help`` does not load PyCaret or Faust. A flag that sets a setting shows
the setting's default and environment variable in its help; every value is validated by the
settings object. Problems the user can fix (``UserError``: a bad setting, a missing server)
print one line and exit 1; bad arguments print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from stopdrift_common.errors import UserError
from stopdrift_common.settings import PROJECT_ROOT, Settings, env_name

SCENARIOS = ["none", "natural", "shift", "gradual", "missing"]
# disparity scenarios (producers/scenarios.py): one group's search rate, or two groups opposite
GAP_SCENARIOS = ["gap-black", "gap-hispanic", "gap-white", "gap-flat-black", "gap-flat-hispanic"]


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; users asked for one line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind: type, low: float, text: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not value >= low:
        raise argparse.ArgumentTypeError(f"{text!r} must be {low:g} or more")
    return value


def positive_int(text: str) -> int:
    return _number(int, 1, text, "a whole number")


def non_negative_float(text: str) -> float:
    return _number(float, 0, text, "a number")


def probability(text: str) -> float:
    value = non_negative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _shown(value: object) -> str:
    if isinstance(value, Path):
        try:
            return str(value.relative_to(PROJECT_ROOT)) + "/"
        except ValueError:
            return str(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting(p: argparse.ArgumentParser, flag: str, field: str, **kw) -> None:
    """A flag for a setting: its type, and help with the setting's description, default and
    environment variable (the settings object validates the value)."""
    info = Settings.model_fields[field]
    kind = {int: int, float: float, Path: Path}.get(info.annotation, str)  # type: ignore[arg-type]
    what = kw.pop("help", None) or info.description or field.replace("_", " ")
    p.add_argument(
        flag,
        dest=field,
        type=kw.pop("type", kind),
        # A setting without a default (None) says in its description what stands in for it.
        help=f"{what} ({'' if info.default is None else f'default {_shown(info.default)}; '}"
        f"env {env_name(field)})",
        **kw,
    )


def _common(p: argparse.ArgumentParser) -> None:
    setting(p, "--mlflow-uri", "mlflow_tracking_uri")
    setting(p, "--bootstrap-servers", "kafka_bootstrap_servers")
    setting(p, "--data-dir", "data_dir")
    setting(p, "--runs-dir", "runs_dir")
    setting(p, "--seed", "seed")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="stopdrift",
        description="stopdrift: a streaming drift monitor for traffic-stop data",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def command(name: str, text: str, run: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(run=run)
        _common(p)
        return p

    p = command(
        "analyze",
        "profile both tables, print the top 10 states and cities and the disparities",
        "training.analyze:run",
    )
    p.add_argument("--full-profile", action="store_true", help="full (slower) ydata profiles")
    p.add_argument("--no-profile", action="store_true", help="skip the HTML profiles")
    p.add_argument(
        "--bootstrap",
        type=positive_int,
        default=2000,
        help="location-bootstrap resamples of the disparity intervals (default 2000)",
    )

    p = command(
        "train",
        "compare classifiers with PyCaret, log and register the best",
        "training.train:run",
    )
    p.add_argument(
        "--source",
        choices=["state", "city", "both"],
        default="state",
        help="table(s) to train on (default state)",
    )
    p.add_argument(
        "--target", default="subject_race", help="column to predict (default subject_race)"
    )
    p.add_argument("--sample", type=positive_int, help="use at most N rows per source (tests)")
    p.add_argument("--models", help="comma-separated PyCaret model ids (default: ten models)")
    p.add_argument("--folds", type=positive_int, default=5, help="cross-validation folds (5)")
    p.add_argument("--no-profile", action="store_true", help="do not profile the training data")
    p.add_argument(
        "--start-mlflow", action="store_true", help="start a local MLflow server if none answers"
    )

    p = command(
        "mlflow",
        "run the MLflow tracking server (sqlite, loopback)",
        "stopdrift.server_commands:run_mlflow",
    )
    setting(p, "--port", "mlflow_port")
    setting(p, "--host", "mlflow_host")
    setting(p, "--backend-store-uri", "mlflow_backend_store_uri")
    setting(p, "--artifacts-dir", "mlflow_artifacts_dir")

    p = command(
        "ui",
        "serve the drift view: Evidently's UI over the workers' drift snapshots",
        "stopdrift.server_commands:run_ui",
    )
    setting(p, "--port", "drift_view_port")
    setting(p, "--host", "drift_view_host")

    p = command(
        "reports",
        "write drift reports and drift-view snapshots from drift.windows (each worker also "
        "runs this as its child process; the same group, so each record is reported once)",
        "stream_app.report_service:run",
    )
    setting(p, "--worker-id", "worker_id")
    setting(p, "--report-keep", "report_keep")
    setting(p, "--drift-view-url", "drift_view_url")

    p = command(
        "topics",
        "create the topics of a worker group (with their partition counts) and exit",
        "stopdrift.server_commands:run_topics",
    )
    setting(p, "--worker-id", "worker_id")
    setting(p, "--partitions", "partitions")

    p = command(
        "broker",
        "run the embedded Kafka-compatible broker and create the topics",
        "stopdrift.server_commands:run_broker",
    )
    setting(p, "--port", "broker_port")
    setting(p, "--partitions", "partitions")

    p = command("produce", "replay the tables as Kafka events on stops.raw", "producers.replay:run")
    p.add_argument(
        "--source",
        choices=["state", "city", "both"],
        default="state",
        help="table(s) to replay (default state)",
    )
    p.add_argument(
        "--rate",
        type=non_negative_float,
        default=0.0,
        help="events per second; 0 = as fast as the broker takes (default 0)",
    )
    p.add_argument(
        "--loop", type=positive_int, default=1, help="replay the table N times (default 1)"
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        default=1,
        help="events per message; above 1 sends JSON arrays (default 1)",
    )
    p.add_argument("--limit", type=positive_int, help="stop after N events (default: no limit)")
    p.add_argument(
        "--scenario",
        choices=SCENARIOS + GAP_SCENARIOS,
        default="none",
        help="drift scenario (default none); gap-<group>: that group's search rate x --factor; "
        "gap-flat-<group>: that group's x --factor and white drivers' the other way, the "
        "overall search rate flat",
    )
    p.add_argument(
        "--feature",
        default="stops_per_year",
        help="shift/gradual: the feature to scale (default stops_per_year)",
    )
    p.add_argument(
        "--at", type=int, default=0, help="event number where the scenario starts (default 0)"
    )
    p.add_argument(
        "--factor",
        type=non_negative_float,
        default=3.0,
        help="shift/gradual/gap-*: multiplier (default 3; for gap-* try 1.25 to 1.5)",
    )
    p.add_argument(
        "--span",
        type=positive_int,
        default=2000,
        help="gradual/missing: events to ramp in over (default 2000)",
    )
    p.add_argument(
        "--share",
        type=probability,
        default=0.5,
        help="missing: final share of blanked values (default 0.5)",
    )
    p.add_argument("--topic", help="topic to write to (default stops.raw)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = command(
        "worker",
        "run the Faust stream app that scores and monitors stops.raw",
        "stream_app.worker:run",
    )
    setting(p, "--worker-id", "worker_id")
    setting(p, "--web-port", "worker_web_port")
    setting(p, "--metrics-port", "metrics_port")
    setting(p, "--window-events", "window_events")
    setting(p, "--window-idle-seconds", "window_idle_seconds")
    setting(p, "--min-window-events", "min_window_events")
    setting(p, "--false-alarms-per-million", "false_alarms_per_million")
    setting(p, "--model-poll-seconds", "model_poll_seconds")
    setting(p, "--report-keep", "report_keep")
    setting(p, "--drift-view-url", "drift_view_url")

    p = command(
        "calibrate",
        "compute a model version's drift calibration for these drift settings and store it "
        "with the version (workers with the same settings then load it)",
        "training.registration:run_calibrate",
    )
    p.add_argument("--version", type=positive_int, help="model version (default: the champion)")
    setting(p, "--window-events", "window_events")
    setting(p, "--min-window-events", "min_window_events")
    setting(p, "--false-alarms-per-million", "false_alarms_per_million")

    p = command(
        "demo",
        "start everything locally and replay a drift scenario",
        "stopdrift.demo:run",
    )
    p.add_argument(
        "--duration",
        type=non_negative_float,
        default=120.0,
        help="seconds to replay before stopping; 0 = until Ctrl-C (default 120)",
    )
    p.add_argument(
        "--rate", type=non_negative_float, default=500.0, help="events per second (default 500)"
    )
    p.add_argument(
        "--scenario", choices=SCENARIOS, default="natural", help="drift scenario (default natural)"
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the servers up after the replay until Ctrl-C",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**given)


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
