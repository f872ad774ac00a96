"""``stopdrift train``: compare classifiers with PyCaret, evaluate the best on a seeded holdout
against the majority baseline and the current champion, log one MLflow run, register the model and
move the ``champion`` alias only on improvement.

The public API is ``train_and_register`` (used by the tests' ``champion`` fixture); ``run`` is the
CLI edge. PyCaret runs through a ``ClassificationExperiment`` object, not the functional API, so
two trainings in one process do not share PyCaret's global state.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stopdrift import servers
from stopdrift_common import registry
from stopdrift_common.data import load_source
from stopdrift_common.errors import ServerUnavailable, UserError
from stopdrift_common.settings import Settings
from training import model_card
from training.challenge import compare_with_champion
from training.evaluation import (
    PRIMARY_METRIC,
    auc_ovr_score,
    confusion_png,
    decide,
    f1_macro_score,
    holdout_metrics,
    majority_baseline,
)
from training.features import (
    CATEGORICAL_FEATURES,
    MODEL_FEATURES,
    NUMERIC_FEATURES,
    check_target,
    excluded_report,
    prepare,
)
from training.registration import log_run, record_decision

# Fast models with predict_proba (the stream needs class probabilities). `dummy` predicts the
# class prior: it shows the baseline inside the comparison table.
DEFAULT_MODELS = ["lr", "dt", "rf", "et", "lightgbm", "knn", "nb", "gbc", "ada", "dummy"]
NO_PROBA = {"ridge": "RidgeClassifier", "svm": "SGDClassifier (hinge loss)"}
TRAIN_SIZE = 0.75  # the rest is the seeded, stratified holdout (PyCaret's test split)
PKL_STEM = "Final Classification Model"  # pycaret.classification.load_model(<dir>/<stem>)


@dataclass
class TrainResult:
    model_name: str
    version: str
    run_id: str
    promoted: bool
    metrics: dict[str, float]
    baseline: dict[str, float]
    classes: list[str]
    pkl_path: Path
    holdout: pd.DataFrame  # raw holdout rows, target included
    decision: str = ""
    champion_version: str | None = None  # the alias after this run
    champion_metrics: dict[str, float] | None = None  # previous champion, see challenge.py
    champion_basis: str = ""  # the rows that comparison used
    candidate_vs_champion: dict[str, float] | None = None  # the candidate on those rows
    compare: pd.DataFrame = field(default_factory=pd.DataFrame)
    best_model: str = ""
    files: list[Path] = field(default_factory=list)
    elapsed_seconds: float = 0.0


def check_models(models: list[str] | None) -> list[str]:
    """The PyCaret ids to compare; those without class probabilities are refused."""
    chosen = [m.strip() for m in (models or DEFAULT_MODELS) if m.strip()]
    if not chosen:
        raise UserError("--models is empty: give comma-separated PyCaret ids such as lr,rf")
    refused = [m for m in chosen if m in NO_PROBA]
    if refused:
        raise UserError(
            f"model(s) {', '.join(refused)} give no class probabilities (predict_proba), which "
            f"the stream needs: choose from {', '.join(DEFAULT_MODELS)}"
        )
    return chosen


def check_folds(folds: int) -> int:
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds")
    return folds


def class_order(pipeline: Any, X: pd.DataFrame) -> list[str]:
    """Class names in the order of ``pipeline.predict_proba`` columns.

    PyCaret label-encodes the target inside the pipeline, so the estimator's ``classes_`` are
    codes; map them back through the pipeline's label encoder and check the result against
    ``predict`` on rows whose top probability is unique."""
    steps = dict(pipeline.steps)
    codes = np.asarray(pipeline.classes_)
    encoder = getattr(steps.get("label_encoding"), "transformer", None)
    classes = [str(c) for c in (encoder.inverse_transform(codes) if encoder else codes)]
    proba = np.asarray(pipeline.predict_proba(X))
    predicted = np.asarray(pipeline.predict(X)).astype(str)
    top = np.sort(proba, axis=1)
    unique_top = top[:, -1] > top[:, -2] if proba.shape[1] > 1 else np.ones(len(X), bool)
    argmax = np.asarray(classes)[proba.argmax(axis=1)]
    if not (argmax[unique_top] == predicted[unique_top]).all():
        raise RuntimeError(f"predict_proba columns do not follow {classes}: check the pipeline")
    return classes


def _oof_proba(
    pipeline: Any, X: pd.DataFrame, y: pd.Series, classes: list[str], folds: int, seed: int
) -> tuple[np.ndarray, str]:
    """Out-of-fold probabilities for the reference: in-sample probabilities of a refitted forest
    are near 1 and would make every live window look drifted in confidence."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    n_splits = max(2, min(folds, int(y.value_counts().min())))
    try:
        cv = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
        oof = cross_val_predict(clone(pipeline), X, y.astype(str), cv=cv, method="predict_proba")
    except Exception as exc:  # keep training usable; say what the reference holds instead
        warnings.warn(
            f"out-of-fold predictions failed ({exc}); reference uses in-sample ones", stacklevel=2
        )
        return np.asarray(pipeline.predict_proba(X)), "in-sample predictions of the final model"
    # cross_val_predict label-encodes y itself, so its columns follow the sorted class names.
    sorted_classes = sorted(y.astype(str).unique())
    order = [sorted_classes.index(c) for c in classes]
    return oof[:, order], f"out-of-fold predictions ({n_splits}-fold, seed {seed})"


def train_and_register(
    settings: Settings,
    source: str = "state",
    sample: int | None = None,
    models: list[str] | None = None,
    folds: int = 5,
    profile: bool = True,
    target: str = "subject_race",
    echo: Callable[[str], None] = print,
) -> TrainResult:
    started = time.perf_counter()
    check_target(target)
    models = check_models(models)
    check_folds(folds)
    data = prepare(load_source(settings.data_dir, source), target, sample, settings.seed)
    registry.require_mlflow(settings)
    counts = data[target].value_counts()
    if len(counts) < 2 or counts.min() < max(folds, 2) * 2:
        raise UserError(
            f"too few rows to train: class counts {counts.to_dict()} with {folds} folds "
            f"(raise --sample or lower --folds)"
        )
    out_dir = settings.runs_dir / "train"
    out_dir.mkdir(parents=True, exist_ok=True)
    echo(
        f"training on {len(data)} rows of {source} (target {target}); features: "
        f"{', '.join(MODEL_FEATURES)}"
    )
    echo("excluded columns:")
    for line in excluded_report():
        echo(f"  {line}")

    from pycaret.classification import ClassificationExperiment

    exp = ClassificationExperiment()
    # Imputation lives inside the pipeline, so the saved model imputes the stream's missing
    # values with the training means.
    exp.setup(
        data=data[MODEL_FEATURES + [target]],
        target=target,
        train_size=TRAIN_SIZE,
        data_split_stratify=True,
        fold_strategy="stratifiedkfold",
        fold=folds,
        numeric_features=NUMERIC_FEATURES,
        categorical_features=CATEGORICAL_FEATURES,
        numeric_imputation="mean",
        categorical_imputation="mode",
        session_id=settings.seed,
        n_jobs=1,  # lightgbm on all cores stalls compare_models on 2 cores
        html=False,
        verbose=False,
        log_experiment=False,
    )
    # Cross-validation scores the same way as the holdout (see evaluation.auc_ovr_score).
    exp.remove_metric("auc")
    exp.add_metric("auc", "AUC", auc_ovr_score, target="pred_proba")
    exp.add_metric("f1_macro", "F1 (macro)", f1_macro_score)
    available = set(exp.models().index)
    unknown = [m for m in models if m not in available]
    if unknown:
        raise UserError(
            f"unknown model id(s) {', '.join(unknown)}: choose from "
            f"{', '.join(m for m in sorted(available) if m not in NO_PROBA)}"
        )
    echo(f"comparing {', '.join(models)} ({folds}-fold CV on {len(exp.X_train)} rows)...")
    best = exp.compare_models(include=models, sort="F1 (macro)", n_select=1, verbose=False)
    compare = exp.pull().copy()
    if best is None or isinstance(best, list):
        raise UserError(f"no model could be trained from {', '.join(models)}")
    best_name = str(compare.iloc[0]["Model"])
    if type(best).__name__ == "LGBMClassifier":
        best.set_params(verbose=-1)  # its refits below would print "[LightGBM] [Info]" lines

    # Holdout: PyCaret's stratified test split, never seen by compare_models.
    holdout = data.loc[exp.X_test.index].copy()
    y_holdout = holdout[target].astype(str)
    scored = exp.predict_model(best, data=holdout[MODEL_FEATURES], raw_score=True, verbose=False)
    final = exp.finalize_model(best)
    classes = class_order(final, holdout[MODEL_FEATURES])
    candidate_proba = scored[[f"prediction_score_{c}" for c in classes]].to_numpy()
    metrics = holdout_metrics(y_holdout, candidate_proba, classes)
    majority = str(pd.Series(exp.y_train).astype(str).value_counts().sort_index().idxmax())
    baseline = majority_baseline(y_holdout, majority, classes)

    versus = compare_with_champion(
        settings,
        holdout,
        candidate_proba,
        classes,
        target,
        exp.X_train,
        pd.Series(exp.y_train),
        class_order,
    )
    champion_metrics = versus.champion if versus else None
    prev_version = versus.version if versus else None
    decision = decide(
        metrics,
        baseline,
        champion_metrics,
        prev_version,
        candidate_vs_champion=versus.candidate if versus else None,
        basis=versus.basis if versus else "",
    )

    # Files: pickle (PyCaret format), comparison table, confusion matrix, profile.
    pkl_path = Path(exp.save_model(final, str(out_dir / PKL_STEM), verbose=False)[1])
    compare_csv = out_dir / "compare_models.csv"
    compare.to_csv(compare_csv)
    cm_png = confusion_png(
        y_holdout,
        np.asarray(classes)[candidate_proba.argmax(axis=1)],
        classes,
        out_dir / "confusion_matrix.png",
        f"{best_name}, holdout ({len(holdout)} rows)",
    )
    plots = [cm_png]
    profiles: list[Path] = []
    if profile:
        from training.analyze import profile as make_profile

        profiles.append(
            make_profile(
                data,
                f"Training Data Profiling Report ({source})",
                out_dir / "profile_training.html",
            )
        )

    # Reference statistics of the raw (pre-imputation) training rows.
    oof, proba_method = _oof_proba(
        final, data[MODEL_FEATURES], data[target], classes, folds, settings.seed
    )
    reference = registry_reference(data, oof, classes, target)
    reference.update(source=source, seed=settings.seed, proba_method=proba_method)
    reference_rows = data[MODEL_FEATURES + ["source", target]].reset_index(drop=True).copy()
    reference_rows["predicted"] = np.asarray(classes)[oof.argmax(axis=1)]
    for i, c in enumerate(classes):
        reference_rows[f"proba_{c}"] = oof[:, i]

    metrics_json = out_dir / "metrics.json"
    metrics_json.write_text(
        json.dumps(
            {
                "model": best_name,
                "classes": classes,
                "holdout_rows": len(holdout),
                "holdout": metrics,
                "baseline": baseline,
                "previous_champion": champion_metrics,
                "previous_champion_version": prev_version,
                "champion_comparison_rows": versus.basis if versus else None,
                "candidate_on_those_rows": versus.candidate if versus else None,
                "decision": decision.reason,
            },
            indent=2,
        )
        + "\n"
    )
    params = {
        "source": source,
        "target": target,
        "sample": sample,
        "models": ",".join(models),
        "folds": folds,
        "seed": settings.seed,
        "train_size": TRAIN_SIZE,
        "rows": len(data),
        "train_rows": len(exp.X_train),
        "holdout_rows": len(holdout),
        "best_model": best_name,
        "features": ",".join(MODEL_FEATURES),
        "excluded": excluded_report(),
        "numeric_imputation": "mean",
        "categorical_imputation": "mode",
        "classes": ",".join(classes),
        "majority_class": majority,
    }
    run_metrics = {f"holdout_{k}": v for k, v in metrics.items()}
    run_metrics |= {f"baseline_{k}": v for k, v in baseline.items()}
    run_metrics |= {f"champion_{k}": v for k, v in (champion_metrics or {}).items()}
    registered = log_run(
        settings,
        run_name=f"train-{source}-{best_name}",
        params=params,
        metrics=run_metrics,
        artifacts={
            "compare": [compare_csv],
            "plots": plots,
            "profiles": profiles,
            "evaluation": [metrics_json],
        },
        reference=reference,
        reference_rows=reference_rows,
        model=final,
        input_example=holdout[MODEL_FEATURES].head(5).reset_index(drop=True),
        tags={"decision": decision.reason, "source": source, "best_model": best_name},
    )

    card_path = out_dir / "MODEL_CARD.md"
    card_path.write_text(
        model_card.render(
            model_name=settings.model_name,
            version=registered.version,
            estimator=best_name,
            source=source,
            target=target,
            classes=classes,
            n_train=len(exp.X_train),
            n_holdout=len(holdout),
            class_counts=counts.to_dict(),
            metrics=metrics,
            baseline=baseline,
            decision=decision.reason,
            seed=settings.seed,
            folds=folds,
            sample=sample,
            missing_shares=data[NUMERIC_FEATURES].isna().mean().to_dict(),
        )
    )
    registry.client(settings).log_artifact(registered.run_id, str(card_path), "model_card")

    version_tags = {f"holdout_{k}": f"{v:.4f}" for k, v in metrics.items()}
    version_tags |= {f"baseline_{k}": f"{v:.4f}" for k, v in baseline.items()}
    version_tags |= {
        "decision": "promoted" if decision.promote else "not promoted",
        "decision_reason": decision.reason,
        "decision_metric": PRIMARY_METRIC,
        "compared_with_version": prev_version or "none",
        "compared_on": versus.basis if versus else "no champion",
        "best_model": best_name,
        "source": source,
    }
    alias_now = record_decision(settings, registered.version, decision.promote, version_tags)
    return TrainResult(
        model_name=settings.model_name,
        version=registered.version,
        run_id=registered.run_id,
        promoted=decision.promote,
        metrics=metrics,
        baseline=baseline,
        classes=classes,
        pkl_path=pkl_path,
        holdout=holdout.reset_index(drop=True),
        decision=decision.reason,
        champion_version=alias_now,
        champion_metrics=champion_metrics,
        champion_basis=versus.basis if versus else "",
        candidate_vs_champion=versus.candidate if versus else None,
        compare=compare,
        best_model=best_name,
        files=[pkl_path, compare_csv, cm_png, metrics_json, card_path, *profiles],
        elapsed_seconds=time.perf_counter() - started,
    )


def registry_reference(
    data: pd.DataFrame, proba: np.ndarray, classes: list[str], target: str
) -> dict[str, Any]:
    from training.reference import build_reference

    return build_reference(
        data[MODEL_FEATURES].reset_index(drop=True),
        proba,
        classes,
        data[target].astype(str).reset_index(drop=True),
    )


def summary(result: TrainResult, settings: Settings) -> str:
    """What the user reads at the end of ``stopdrift train``."""
    cols = [
        c
        for c in ["Model", "Accuracy", "AUC", "F1 (macro)", "F1", "Kappa", "TT (Sec)"]
        if c in result.compare.columns
    ]
    keys = ["accuracy", "f1_macro", "auc_ovr"] + [f"recall_{c}" for c in result.classes]
    table = pd.DataFrame(
        {
            "model": [result.metrics[k] for k in keys],
            "majority baseline": [result.baseline[k] for k in keys],
        },
        index=keys,
    )
    lines = [
        "Model comparison (cross-validation on the training split, sorted by macro-F1):",
        result.compare[cols].to_string(float_format=lambda v: f"{v:.4f}"),
        "",
        f"Holdout ({len(result.holdout)} rows) of the best model, {result.best_model}:",
        table.to_string(float_format=lambda v: f"{v:.4f}"),
        "",
        f"Registered {result.model_name} version {result.version} (run {result.run_id}) at "
        f"{settings.mlflow_tracking_uri}",
        *_versus_lines(result),
        f"Decision: {result.decision}",
        f"Alias {settings.model_alias} -> version {result.champion_version}",
        "Files:",
        *[f"  {p}" for p in result.files],
        f"Elapsed: {result.elapsed_seconds:.1f} s",
    ]
    return "\n".join(lines)


def _versus_lines(result: TrainResult) -> list[str]:
    if not result.champion_metrics or not result.candidate_vs_champion:
        return []
    mine, theirs = result.candidate_vs_champion, result.champion_metrics
    return [
        f"Against the previous champion, on {result.champion_basis}:",
        *[
            f"  {k:<9} candidate {mine[k]:.4f}  champion {theirs[k]:.4f}"
            for k in ("accuracy", "f1_macro", "auc_ovr")
        ],
    ]


def run(args: argparse.Namespace, settings: Settings) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep output readable
    check_target(args.target)
    models = args.models.split(",") if args.models else None
    check_models(models)
    check_folds(args.folds)
    load_source(settings.data_dir, args.source)  # bad data fails before any server is involved
    server = None
    try:
        registry.require_mlflow(settings)
    except ServerUnavailable:
        if not args.start_mlflow:
            raise
        port = _local_port(settings)
        server = servers.mlflow_server(
            port, settings.runs_dir / "mlflow", settings.runs_dir / "logs"
        ).start()
        settings = settings.replace(mlflow_tracking_uri=f"http://127.0.0.1:{port}")
        print(
            f"started MLflow on {settings.mlflow_tracking_uri} (store "
            f"{settings.runs_dir / 'mlflow'}); it stops when training ends, "
            f"`stopdrift mlflow` serves the same store"
        )
    try:
        result = train_and_register(
            settings,
            source=args.source,
            sample=args.sample,
            models=models,
            folds=args.folds,
            profile=not args.no_profile,
            target=args.target,
        )
    finally:
        if server is not None:
            server.stop()
    print()
    print(summary(result, settings))
    return 0


def _local_port(settings: Settings) -> int:
    """The loopback port to start MLflow on: the one in the tracking URI, else mlflow_port."""
    from urllib.parse import urlparse

    uri = urlparse(settings.mlflow_tracking_uri)
    if uri.hostname not in ("127.0.0.1", "localhost"):
        raise UserError(
            f"--start-mlflow starts a local server, but the tracking URI "
            f"{settings.mlflow_tracking_uri} is not on this machine: start that server instead"
        )
    return uri.port or settings.mlflow_port
