"""The model card: what the model is for, what it was trained on, how well it does against a
majority baseline, and what it must not be used for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stopdrift_common.schema import EXCLUDED_COLUMNS, MODEL_FEATURES

METRIC_NAMES = {"accuracy": "accuracy", "f1_macro": "macro-F1", "auc_ovr": "AUC (one-vs-rest)"}


def render(
    *,
    model_name: str,
    version: str | None,
    estimator: str,
    source: str,
    target: str,
    classes: Sequence[str],
    n_train: int,
    n_holdout: int,
    class_counts: Mapping[str, int],
    metrics: Mapping[str, float],
    baseline: Mapping[str, float],
    decision: str,
    seed: int,
    folds: int,
    sample: int | None,
    missing_shares: Mapping[str, float],
) -> str:
    rows = [
        f"| {label} | {metrics[key]:.3f} | {baseline[key]:.3f} |"
        for key, label in METRIC_NAMES.items()
    ]
    rows += [
        f"| recall of {c} | {metrics[f'recall_{c}']:.3f} | {baseline[f'recall_{c}']:.3f} |"
        for c in classes
    ]
    excluded = "\n".join(f"  - `{col}`: {why}" for col, why in EXCLUDED_COLUMNS.items())
    counts = ", ".join(f"{c}: {n}" for c, n in class_counts.items())
    missing = ", ".join(f"`{c}` {share:.0%}" for c, share in missing_shares.items())
    sampled = f"a stratified sample of at most {sample} rows per source" if sample else "all rows"
    return f"""# Model card: {model_name} (version {version or "unregistered"})

## Model
{estimator}, chosen by PyCaret `compare_models` ({folds}-fold stratified cross-validation on the
training split), then refitted on all rows (`finalize_model`). Preprocessing is inside the saved
pipeline: numeric features imputed with the training mean, `state` with its mode, then one-hot.
Seed {seed}.

## Data
Stanford Open Policing Project summary tables (ODC-BY 1.0), source: **{source}**, {sampled}.
Each row is an **aggregate for one location x one race group**, not one stop.
Rows: {n_train} for training/cross-validation, {n_holdout} held out (stratified, seeded).
Class counts: {counts}.

## Target and features
- Target: `{target}` ({", ".join(classes)}).
- Features: {", ".join(f"`{f}`" for f in MODEL_FEATURES)}.
- Excluded columns and why:
{excluded}

## Holdout metrics vs the majority-class baseline
| metric | model | majority baseline |
|---|---|---|
{chr(10).join(rows)}

Registry decision: {decision}

## Intended use
A probe of how distinguishable the race groups are from stop outcomes (search rate, hit rate,
inferred search threshold, stop volume) within a state, i.e. a measure of the **disparity between
groups** in how they are stopped and searched, and the model whose inputs and outputs the stream
monitors for drift. It is **not** a tool to infer any person's race, and must not be used to
make or support decisions about individuals.

## Limitations
- Rows are aggregates (location x race group), not individual stops: the model has never seen a
  person and says nothing about one.
- Missing values in the training rows: {missing}. They are imputed with training means, so
  for most rows the model relies on `state` and `stops_per_year`; where the rates are missing
  depends on the state's data, so missingness itself carries signal.
- State and city tables differ in distribution (and the city table covers other places): a model
  trained on one source is shifted on the other; the stream reports this as drift.
- Three groups only (black, hispanic, white); other groups in the OPP data are not modelled.
- The baseline and the metrics come from one seeded holdout split of a small table; differences
  of a few points between models are within noise.
"""
