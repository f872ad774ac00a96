"""`stopdrift train` against a real MLflow server: what the registered model holds, that it
loads elsewhere, that the alias only moves on improvement, and the fast failures.

The session ``champion`` fixture (tests/conftest.py) trains once; these tests reuse it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stopdrift import cli, servers
from stopdrift_common import registry
from stopdrift_common.schema import CLASSES, EXCLUDED_COLUMNS, MODEL_FEATURES
from stopdrift_common.settings import PROJECT_ROOT

DATA_DIR = PROJECT_ROOT / "data"


def data_hashes() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(DATA_DIR.iterdir())}


HASHES_AT_IMPORT = data_hashes()


@pytest.mark.integration
def test_champion_beats_the_majority_baseline_on_the_holdout(champion) -> None:
    _, result = champion
    assert result.promoted
    assert result.metrics["f1_macro"] > result.baseline["f1_macro"]
    assert result.metrics["accuracy"] > result.baseline["accuracy"]
    assert result.metrics["auc_ovr"] > 0.5
    assert sorted(result.classes) == CLASSES
    assert set(result.holdout.columns) >= {*MODEL_FEATURES, "subject_race"}


@pytest.mark.integration
def test_leaky_columns_are_not_model_inputs(champion) -> None:
    from mlflow.models import get_model_info

    s, result = champion
    registry.client(s)
    info = get_model_info(f"models:/{s.model_name}/{result.version}")
    inputs = info.signature.inputs.input_names()
    assert inputs == MODEL_FEATURES
    assert not set(inputs) & set(EXCLUDED_COLUMNS)


@pytest.mark.integration
def test_reference_statistics_and_rows_are_attached_to_the_version(champion) -> None:
    s, result = champion
    champ = registry.load_champion(s)
    assert champ.version == result.version
    assert champ.classes == result.classes
    ref = champ.reference
    assert ref["features"] == MODEL_FEATURES
    assert set(ref["numeric"]) == set(MODEL_FEATURES) - {"state"}
    # The stream sees raw values: the reference keeps the missingness the pipeline imputes away.
    assert ref["numeric"]["search_rate"]["missing_share"] > 0.5
    assert sum(ref["prediction_shares"].values()) == pytest.approx(1.0)
    rows = champ.reference_rows
    expected = [*MODEL_FEATURES, "source", "subject_race", "predicted"]
    assert list(rows.columns) == expected + [f"proba_{c}" for c in result.classes]
    assert len(rows) == ref["n_rows"]
    proba = rows[[f"proba_{c}" for c in result.classes]].to_numpy()
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert (np.asarray(result.classes)[proba.argmax(axis=1)] == rows["predicted"]).all()


@pytest.mark.integration
def test_champion_alias_loads_in_a_new_process(champion, tmp_path: Path) -> None:
    s, result = champion
    rows = result.holdout[MODEL_FEATURES].head(50)
    rows.to_parquet(tmp_path / "rows.parquet")
    script = f"""
import json, sys
import mlflow, mlflow.sklearn, pandas as pd
mlflow.set_tracking_uri({s.mlflow_tracking_uri!r})
model = mlflow.sklearn.load_model("models:/{s.model_name}@{s.model_alias}")
rows = pd.read_parquet({str(tmp_path / "rows.parquet")!r})
print(json.dumps([str(p) for p in model.predict(rows)]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    predicted = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(predicted) == 50 and set(predicted) <= set(CLASSES)
    champ = registry.load_champion(s)
    assert predicted == [str(p) for p in champ.model.predict(rows)]


@pytest.mark.integration
def test_pkl_loads_with_pycaret_and_predicts_like_the_registered_model(champion) -> None:
    from pycaret.classification import load_model

    s, result = champion
    assert result.pkl_path.name == "Final Classification Model.pkl"
    assert result.pkl_path.is_relative_to(s.runs_dir)
    pipeline = load_model(str(result.pkl_path.with_suffix("")), verbose=False)
    rows = result.holdout[MODEL_FEATURES]
    champ = registry.load_champion(s)
    assert (np.asarray(pipeline.predict(rows)) == np.asarray(champ.model.predict(rows))).all()
    # Raw stream events may lack the rates: the pipeline imputes them itself.
    missing = rows.head(3).assign(search_rate=np.nan, hit_rate=None, inferred_threshold=np.nan)
    proba = pipeline.predict_proba(missing)
    assert proba.shape == (3, len(result.classes)) and np.isfinite(proba).all()


@pytest.mark.integration
def test_a_weaker_model_is_registered_but_the_alias_stays(champion, tmp_path: Path) -> None:
    from training.train import train_and_register

    s, result = champion
    weak_settings = s.replace(runs_dir=tmp_path / "runs")
    weak = train_and_register(
        weak_settings, sample=600, models=["dummy"], folds=2, profile=False, echo=lambda _: None
    )
    assert weak.version != result.version
    assert not weak.promoted
    assert registry.champion_version(s) == result.version
    assert "does not beat" in weak.decision
    tags = registry.client(s).get_model_version(s.model_name, weak.version).tags
    assert tags["decision"] == "not promoted"
    assert tags["decision_reason"] == weak.decision
    assert float(tags["holdout_accuracy"]) == pytest.approx(weak.metrics["accuracy"], abs=1e-4)


@pytest.mark.integration
def test_a_better_model_takes_the_alias(mlflow_settings, tmp_path: Path) -> None:
    """Same data and seed: the new holdout is inside the first champion's training rows, so the
    champion's pipeline is refitted on the new training split for a fair comparison."""
    from training.train import train_and_register

    s = mlflow_settings.replace(model_name="stopdrift-promotion-test")
    kwargs = dict(sample=400, folds=2, profile=False, echo=lambda _: None)
    weak = train_and_register(s, models=["nb"], **kwargs)
    assert weak.promoted  # beats the baseline, no champion yet
    strong = train_and_register(s, models=["rf"], **kwargs)
    assert strong.promoted, strong.decision
    assert "refitted on this training split" in strong.decision
    assert registry.champion_version(s) == strong.version != weak.version
    assert strong.candidate_vs_champion["f1_macro"] > strong.champion_metrics["f1_macro"]


@pytest.mark.integration
def test_cli_train_starts_mlflow_when_asked(tmp_path: Path, capsys, monkeypatch) -> None:
    """End to end through the CLI on a fresh server it starts itself (and stops afterwards)."""
    port = servers.free_port()
    monkeypatch.setenv("STOPDRIFT_MODEL_NAME", "stopdrift-cli-test")
    runs = tmp_path / "runs"
    code = cli.main(
        [
            "train",
            "--mlflow-uri",
            f"http://127.0.0.1:{port}",
            "--runs-dir",
            str(runs),
            "--sample",
            "300",
            "--models",
            "dt,nb",
            "--folds",
            "2",
            "--start-mlflow",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for text in [
        "Model comparison",
        "majority baseline",
        "Decision: promoted",
        "Elapsed:",
        "stop_rate: leaks the target",
    ]:
        assert text in out
    train_dir = runs / "train"
    assert (train_dir / "Final Classification Model.pkl").is_file()
    assert "Training Data Profiling Report" in (train_dir / "profile_training.html").read_text()
    card = (train_dir / "MODEL_CARD.md").read_text()
    assert "not** a tool to infer any person's race" in card and "majority baseline" in card
    assert pd.read_csv(train_dir / "compare_models.csv").shape[0] == 2
    assert (runs / "mlflow" / "mlflow.db").is_file()
    assert not servers.port_open(port)  # the server it started is stopped again


def test_mlflow_not_running_fails_fast_naming_the_fix(tmp_path: Path, capsys) -> None:
    port = servers.free_port()
    code = cli.main(
        ["train", "--mlflow-uri", f"http://127.0.0.1:{port}", "--runs-dir", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "stopdrift mlflow" in err[0] and str(port) in err[0]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--target", "stop_rate"], "unknown target 'stop_rate': choose one of subject_race"),
        (["--models", "lr,ridge"], "ridge give no class probabilities"),
        (["--folds", "1"], "cross-validation needs at least 2 folds"),
    ],
)
def test_bad_train_options_give_one_line(tmp_path: Path, capsys, flags, message) -> None:
    code = cli.main(
        ["train", *flags, "--runs-dir", str(tmp_path), "--mlflow-uri", "http://127.0.0.1:9"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert message in err[0]


def test_nothing_in_data_is_modified() -> None:
    """Runs last in this file: training and analysis above only read data/."""
    assert data_hashes() == HASHES_AT_IMPORT
