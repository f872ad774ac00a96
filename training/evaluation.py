"""Holdout metrics, the majority-class baseline, and the promotion decision.

>>> import numpy as np
>>> y = np.array(["a", "a", "b", "c"])
>>> proba = np.array([[.8, .1, .1], [.6, .3, .1], [.2, .7, .1], [.1, .2, .7]])
>>> m = holdout_metrics(y, proba, ["a", "b", "c"])
>>> m["accuracy"], m["f1_macro"], m["auc_ovr"], m["recall_b"]
(1.0, 1.0, 1.0, 1.0)
>>> b = majority_baseline(y, majority="a", classes=["a", "b", "c"])
>>> b["accuracy"], round(b["f1_macro"], 3), b["auc_ovr"]
(0.5, 0.222, 0.5)
>>> decide(m, b, None).promote
True
>>> decide(b, b, None).reason
'not promoted: macro-F1 0.2222 does not beat the majority baseline 0.2222'
>>> decide(m, b, {"f1_macro": 1.0}, champion_version="3").reason.split(": ")[:2]
['not promoted', 'macro-F1 beats the majority baseline but not the champion (version 3)']
>>> decide(m, b, {"f1_macro": 0.5}, champion_version="3").promote
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score, roc_auc_score

# Macro-F1 weighs the three race groups equally and, unlike accuracy, is not met by always
# predicting the largest group; it is the one number the promotion decision compares.
PRIMARY_METRIC = "f1_macro"


def holdout_metrics(y_true: Any, proba: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Accuracy, macro-F1, one-vs-rest macro AUC and per-class recall of ``proba`` (columns in
    ``classes`` order) against the true labels."""
    y_true = np.asarray(y_true, dtype=object)
    proba = np.asarray(proba, dtype=float)
    predicted = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    metrics = {
        "accuracy": float(accuracy_score(y_true, predicted)),
        "f1_macro": float(
            f1_score(y_true, predicted, labels=classes, average="macro", zero_division=0)
        ),
        "auc_ovr": _auc(y_true, proba, classes),
    }
    recalls = recall_score(y_true, predicted, labels=classes, average=None, zero_division=0)
    metrics.update({f"recall_{c}": float(r) for c, r in zip(classes, recalls, strict=True)})
    return metrics


def _auc(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> float:
    present = set(y_true)
    if len(present) < 2 or not present <= set(classes):
        return float("nan")  # undefined with one class (tiny samples), not an error
    # Constant scores give 0.5 per class; sklearn needs the rows to sum to 1.
    proba = proba / np.clip(proba.sum(axis=1, keepdims=True), 1e-12, None)
    return float(roc_auc_score(y_true, proba, multi_class="ovr", labels=classes, average="macro"))


def auc_ovr_score(y_true: Any, y_score: Any, **_: Any) -> float:
    """One-vs-rest macro AUC from class probabilities, as a PyCaret custom metric.

    PyCaret 3.3.2's built-in AUC asks sklearn 1.4 for ``decision_function`` before
    ``predict_proba``; for models that have one (lr, gbc, ada, lightgbm) the scores do not sum to
    1, roc_auc_score raises and PyCaret reports 0.0."""
    return float(roc_auc_score(y_true, y_score, multi_class="ovr", average="macro"))


def f1_macro_score(y_true: Any, y_pred: Any, **_: Any) -> float:
    """Macro-F1 as a PyCaret custom metric (PyCaret's own F1 is class-weighted)."""
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def majority_baseline(y_true: Any, majority: str, classes: list[str]) -> dict[str, float]:
    """Metrics of always predicting ``majority`` (the training split's largest class) with
    constant probabilities: AUC is 0.5 by construction."""
    proba = np.zeros((len(y_true), len(classes)))
    proba[:, classes.index(majority)] = 1.0
    metrics = holdout_metrics(y_true, proba, classes)
    metrics["auc_ovr"] = 0.5
    return metrics


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(
    candidate: dict[str, float],
    baseline: dict[str, float],
    champion: dict[str, float] | None,
    champion_version: str | None = None,
    metric: str = PRIMARY_METRIC,
    candidate_vs_champion: dict[str, float] | None = None,
    basis: str = "the same holdout rows",
) -> Decision:
    """Promote only when the candidate beats the baseline and the current champion on
    ``metric``; ties keep the champion. ``candidate_vs_champion`` holds the candidate's metrics
    on the rows the champion was scored on (``basis``), when those are not the whole holdout."""
    name = {"f1_macro": "macro-F1"}.get(metric, metric)
    cand, base = candidate[metric], baseline[metric]
    if not cand > base:
        return Decision(
            False, f"not promoted: {name} {cand:.4f} does not beat the majority baseline {base:.4f}"
        )
    if champion is None:
        return Decision(
            True,
            f"promoted: {name} {cand:.4f} beats the majority baseline "
            f"{base:.4f} and there is no champion yet",
        )
    mine, champ = (candidate_vs_champion or candidate)[metric], champion[metric]
    versus = f"the champion (version {champion_version}): {mine:.4f} vs {champ:.4f} on {basis}"
    if not mine > champ:
        return Decision(False, f"not promoted: {name} beats the majority baseline but not {versus}")
    return Decision(
        True, f"promoted: {name} {cand:.4f} beats the majority baseline {base:.4f} and {versus}"
    )


def confusion_png(y_true: Any, predicted: Any, classes: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (share of each true group) with the counts."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never open a window
    import matplotlib.pyplot as plt

    cm = confusion_matrix(np.asarray(y_true), np.asarray(predicted), labels=classes)
    shares = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Importing PyCaret sets font.sans-serif to fonts this machine lacks (one warning per glyph);
    # matplotlib's bundled DejaVu Sans is always there.
    style = {"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "axes.grid": False}
    with plt.rc_context(style):
        _draw(cm, shares, classes, title, path)
    return path


def _draw(cm: np.ndarray, shares: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{shares[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
