"""What the model sees: the target, the features, the columns left out (and why), and the
stratified, seeded sample of rows used in tests.

>>> import pandas as pd
>>> check_target("subject_race")
'subject_race'
>>> check_target("stop_rate")
Traceback (most recent call last):
...
stopdrift_common.errors.UserError: unknown target 'stop_rate': choose one of subject_race
>>> df = pd.DataFrame({"subject_race": ["a"] * 6 + ["b"] * 3 + [None], "x": range(10)})
>>> stratified_sample(df, 6, "subject_race", seed=0)["subject_race"].value_counts().to_dict()
{'a': 4, 'b': 2}
"""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from stopdrift_common.errors import UserError
from stopdrift_common.schema import (
    CATEGORICAL_FEATURES,
    EXCLUDED_COLUMNS,
    MODEL_FEATURES,
    NUMERIC_FEATURES,
    TARGET,
)

# The stream and the reference statistics are built around one target; other columns are either
# features, identifiers or leak the race group, so they are not offered as targets.
VALID_TARGETS = (TARGET,)

__all__ = [
    "CATEGORICAL_FEATURES",
    "EXCLUDED_COLUMNS",
    "MODEL_FEATURES",
    "NUMERIC_FEATURES",
    "VALID_TARGETS",
    "check_target",
    "excluded_report",
    "prepare",
    "stratified_sample",
]


def check_target(target: str) -> str:
    if target not in VALID_TARGETS:
        raise UserError(f"unknown target {target!r}: choose one of {', '.join(VALID_TARGETS)}")
    return target


def stratified_sample(df: pd.DataFrame, n: int | None, target: str, seed: int) -> pd.DataFrame:
    """At most ``n`` rows with a known target, keeping the target's class shares (seeded)."""
    df = df[df[target].notna()]
    if n is None or n >= len(df):
        return df
    sample, _ = train_test_split(df, train_size=n, stratify=df[target], random_state=seed)
    return sample.sort_index()


def prepare(df: pd.DataFrame, target: str, sample: int | None, seed: int) -> pd.DataFrame:
    """Rows for training: each source sampled on its own (so ``--sample`` means rows per source),
    unknown targets dropped. Keeps every column: the holdout is returned raw to callers."""
    check_target(target)
    parts = [
        stratified_sample(part, sample, target, seed)
        for _, part in df.groupby("source", sort=False)
    ]
    return pd.concat(parts).reset_index(drop=True)


def excluded_report() -> list[str]:
    """One line per column left out of the model, with the reason."""
    return [f"{col}: {why}" for col, why in EXCLUDED_COLUMNS.items()]
