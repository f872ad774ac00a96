"""The candidate against the current champion, on rows neither has been trained on.

The champion was refitted on all of its training rows (``finalize_model``), and with the same
data and seed the new holdout is part of them: scored there, it looks near perfect and could never
be replaced. So the comparison uses the holdout rows the champion has not seen (a row is seen when
its features, source and label all appear in the champion's reference rows, its training data).
When too few such rows remain, the champion's pipeline is refitted on the candidate's training
split and both are scored on the whole holdout: the same rows, the same training data.

>>> import pandas as pd
>>> hold = pd.DataFrame({"x": [1.0, 2.0, None], "y": ["a", "b", "a"]})
>>> ref = pd.DataFrame({"x": [None, 2.0, 5.0], "y": ["a", "a", "b"]})
>>> seen_by(ref, hold, ["x", "y"]).tolist()
[False, False, True]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stopdrift_common import registry
from stopdrift_common.errors import UserError
from stopdrift_common.schema import MODEL_FEATURES
from stopdrift_common.settings import Settings
from training.evaluation import holdout_metrics

MIN_UNSEEN_ROWS = 100  # below this, metrics on the unseen rows are too noisy to decide on


@dataclass(frozen=True)
class ChampionComparison:
    version: str
    champion: dict[str, float]  # the champion's metrics on the comparison rows
    candidate: dict[str, float]  # the candidate's metrics on the same rows
    n_rows: int
    basis: str  # what was compared, for the decision's reason


def seen_by(reference_rows: pd.DataFrame, rows: pd.DataFrame, keys: list[str]) -> pd.Series:
    """True for each of ``rows`` whose ``keys`` values all appear in one reference row (missing
    values match missing values)."""
    known = reference_rows[keys].drop_duplicates().assign(_seen=True)
    merged = rows[keys].reset_index(drop=True).merge(known, on=keys, how="left")
    return merged["_seen"].fillna(False).astype(bool).set_axis(rows.index)


def compare_with_champion(
    settings: Settings,
    holdout: pd.DataFrame,
    candidate_proba: np.ndarray,
    classes: list[str],
    target: str,
    X_train: pd.DataFrame,
    y_train: pd.Series,
    class_order: Any,
) -> ChampionComparison | None:
    """None when there is no champion yet."""
    if registry.champion_version(settings) is None:
        return None
    try:
        champ = registry.load_champion(settings)
    except UserError:
        return None
    y = holdout[target].astype(str)
    keys = [*MODEL_FEATURES, "source", target]
    rows = champ.reference_rows
    if rows is not None and set(keys) <= set(rows.columns):
        unseen = ~seen_by(rows, holdout, keys).to_numpy()
        if unseen.sum() >= MIN_UNSEEN_ROWS and y[unseen].nunique() == y.nunique():
            part = holdout[unseen]
            return ChampionComparison(
                champ.version,
                holdout_metrics(
                    y[unseen], champ.model.predict_proba(part[MODEL_FEATURES]), champ.classes
                ),
                holdout_metrics(y[unseen], candidate_proba[unseen], classes),
                int(unseen.sum()),
                f"the {int(unseen.sum())} holdout rows the champion was not trained on",
            )
        n_seen = int(len(holdout) - unseen.sum())
    else:
        n_seen = len(holdout)  # unknown: assume the champion saw them all
    from sklearn.base import clone

    refit = clone(champ.model).fit(X_train[MODEL_FEATURES], y_train.astype(str))
    refit_classes = class_order(refit, holdout[MODEL_FEATURES])
    return ChampionComparison(
        champ.version,
        holdout_metrics(y, refit.predict_proba(holdout[MODEL_FEATURES]), refit_classes),
        holdout_metrics(y, candidate_proba, classes),
        len(holdout),
        f"the whole holdout, with the champion's pipeline refitted on this training split (it "
        f"had been trained on {n_seen} of the {len(holdout)} holdout rows)",
    )
