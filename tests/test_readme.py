"""The README's examples work as written.

Every ``stopdrift`` command line in the README's shell blocks parses and its settings validate;
the ``produce`` lines run to completion against an embedded broker of their own; the Python
client example delivers its event; the systemd unit restarts the worker it starts.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from stopdrift import servers
from stopdrift.cli import build_parser, settings_from_args
from stopdrift_common.settings import PROJECT_ROOT, Settings
from tests.helpers_stream import read_topic

README = (PROJECT_ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def command_lines() -> list[list[str]]:
    """``stopdrift ...`` lines of the shell blocks, without comments and a trailing ``&``."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[-1] == "&":
                words.pop()
            if words and Path(words[0]).name == "stopdrift":
                out.append(words[1:])
    return out


COMMANDS = command_lines()


def test_the_readme_shows_every_command():
    assert {c[0] for c in COMMANDS} >= {"analyze", "mlflow", "train", "broker", "produce", "worker"}


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_line_parses_and_its_settings_validate(args):
    settings_from_args(build_parser().parse_args(args))


def test_the_produce_examples_run_against_a_broker(tmp_path):
    broker = servers.broker(servers.free_port(), tmp_path / "logs").start()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker.port}",
        "STOPDRIFT_RUNS_DIR": str(tmp_path / "runs"),
    }
    try:
        for args in [c for c in COMMANDS if c[0] == "produce"]:
            run = subprocess.run(
                [sys.executable, "-m", "stopdrift.cli", *args, "--no-progress"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert run.returncode == 0, (args, run.stderr[-2000:])
            assert re.search(r"failed 0,", run.stdout), run.stdout
    finally:
        broker.stop()


def test_the_python_client_example_delivers_its_event(tmp_path):
    (example,) = [b for b in blocks("python") if "KafkaProducer" in b]
    broker = servers.broker(servers.free_port(), tmp_path / "logs").start()
    try:
        settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{broker.port}")
        from stopdrift_common.topics import ensure_topics

        ensure_topics(settings)
        code = example.replace("127.0.0.1:9092", settings.bootstrap)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        (message,) = read_topic(settings, settings.topics.raw)
    finally:
        broker.stop()
    from stopdrift_common.schema import decode_message

    decoded = decode_message(message)
    assert orjson.loads(message)["event_id"] == "manual-1"
    assert len(decoded.valid) == 1 and not decoded.rejects  # a valid event


def test_the_systemd_unit_restarts_the_worker():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(PROJECT_ROOT / "deploy" / "stopdrift-worker.service")
    service = unit["Service"]
    assert service["Restart"] == "always" and float(service["RestartSec"]) > 0
    program, *args = shlex.split(service["ExecStart"])
    assert Path(program).name == "stopdrift" and args[0] == "worker"
    settings_from_args(build_parser().parse_args(args))
