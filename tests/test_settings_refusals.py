"""Issue 17 (lower): settings that passed validation and then failed later (a negative seed in
PyCaret or pandas, a worker id that is no legal topic name or folder, ...) are refused at start
with the one-line error every bad setting gets, exit code 1, before anything runs."""

from __future__ import annotations

import pytest

from stopdrift import cli
from stopdrift_common.errors import UserError
from stopdrift_common.settings import Settings

# setting, environment variable, a value that used to pass and then failed, and how it failed
REFUSED = [
    ("seed", "STOPDRIFT_SEED", "-1", "RandomState: 'Seed must be between 0 and 2**32 - 1'"),
    ("seed", "STOPDRIFT_SEED", str(2**32), "same"),
    ("worker_id", "STOPDRIFT_WORKER_ID", "team a", "topic drift.partials.team a: illegal"),
    ("worker_id", "STOPDRIFT_WORKER_ID", "a/b", "topic name and a folder runs/faust/a/b"),
    ("worker_id", "STOPDRIFT_WORKER_ID", "..", "folder runs/faust/.. is runs/"),
    ("worker_id", "STOPDRIFT_WORKER_ID", ".hidden", "a hidden folder"),
    ("worker_id", "STOPDRIFT_WORKER_ID", "-x", "reads as an option"),
    ("worker_id", "STOPDRIFT_WORKER_ID", "w" * 240, "topic names over Kafka's 249 characters"),
    ("worker_id", "STOPDRIFT_WORKER_ID", "grüppe", "not a Kafka topic character"),
    ("model_name", "STOPDRIFT_MODEL_NAME", "team/model", "MLflow refuses '/' in model names"),
    ("model_name", "STOPDRIFT_MODEL_NAME", "m@x", "models:/m@x@champion"),
    ("model_alias", "STOPDRIFT_MODEL_ALIAS", "latest", "MLflow reserves it"),
    ("model_alias", "STOPDRIFT_MODEL_ALIAS", "v2", "MLflow reserves it"),
    ("model_alias", "STOPDRIFT_MODEL_ALIAS", "my champion", "not an alias character"),
    ("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "kafka", "later: 'no Kafka broker'"),
    ("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "kafka:99999", "no such port"),
    ("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", "a:9092,,b:9092", "an empty address"),
]


@pytest.mark.parametrize(("field", "variable", "value", "_why"), REFUSED)
def test_a_bad_setting_is_refused_in_one_line(monkeypatch, capsys, field, variable, value, _why):
    monkeypatch.setenv(variable, value)
    code = cli.main(["worker"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith(f"stopdrift worker: setting {field} (")
    assert variable in err[0]


@pytest.mark.parametrize(
    "values",
    [
        {"seed": 0},
        {"seed": 2**32 - 1},
        {"worker_id": "team-a.v2_1"},
        {"worker_id": "w" * 100},
        {"model_name": "stopdrift-race-classifier"},
        {"model_alias": "champion_2"},
        {"model_alias": "v2-candidate"},
        {"kafka_bootstrap_servers": "kafka:9092, kafka-2:9093"},
        {"kafka_bootstrap_servers": "[::1]:9092"},
        {"kafka_bootstrap_servers": ""},  # the embedded broker, as before
    ],
)
def test_legal_values_still_pass(values):
    assert Settings(**values)


def test_the_longest_worker_id_still_makes_legal_topic_names():
    longest = Settings(worker_id="w" * 100)
    changelog = f"{longest.worker_id}-drift-windows-{'c' * 40}-changelog"  # Faust's table topic
    for topic in (longest.partials_topic, changelog):
        assert len(topic) <= 249
    with pytest.raises(UserError, match="worker_id"):
        Settings(worker_id="w" * 101)
