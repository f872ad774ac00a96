"""Drift scenarios: how the replayed rows change over the stream.

A scenario decides two things:

- ``rows(tables, source, loop)``: the base order of the rows for one pass over the data (a seeded
  shuffle of the chosen table, so a stream without a scenario is stationary);
- ``apply(chunk, start)``: a transformation of a chunk of rows whose first row is event number
  ``start`` of the whole replay (counted from 0 across loops). Chunks arrive in order; a scenario
  may keep state between chunks (``missing`` keeps its random generator), and its output does not
  depend on how the stream is cut into chunks.

Add one by writing a small class with these two methods and listing it in ``SCENARIOS``.

>>> import pandas as pd
>>> chunk = pd.DataFrame({"stops_per_year": [10.0, 10.0, 10.0, 10.0], "state": ["AZ"] * 4})
>>> Shift(feature="stops_per_year", at=2, factor=3.0).apply(chunk, 0)["stops_per_year"].tolist()
[10.0, 10.0, 30.0, 30.0]
>>> Gradual(feature="stops_per_year", at=0, factor=3.0, span=4).apply(chunk, 0)[
...     "stops_per_year"].tolist()
[10.0, 15.0, 20.0, 25.0]

Disparity scenarios change the gap between groups, for rehearsing the disparity monitor:
``gap-<group>`` scales one group's search rate; ``gap-flat-<group>`` scales a minority group's
and moves white drivers' the other way, so the overall search rate stays flat.

>>> rates = pd.DataFrame({"subject_race": ["black", "white", "hispanic", "black"],
...                       "search_rate": [0.04, 0.02, 0.03, None]})
>>> GapShift(group="black", at=0, factor=1.5).apply(rates, 0)["search_rate"].tolist()
[0.06, 0.02, 0.03, nan]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stopdrift_common.errors import UserError
from stopdrift_common.schema import NUMERIC_FEATURES, RANGES, SOURCES


def shuffled(table: pd.DataFrame, seed: int, loop: int) -> pd.DataFrame:
    """A seeded permutation of the rows (a resample without replacement): same seed and loop,
    same order; each loop gets its own order."""
    order = np.random.default_rng([seed, loop]).permutation(len(table))
    return table.iloc[order]


@dataclass
class Scenario:
    """No drift: each loop replays a seeded shuffle of the chosen table(s), unchanged."""

    seed: int = 42

    def rows(self, tables: dict[str, pd.DataFrame], source: str, loop: int) -> pd.DataFrame:
        names = SOURCES if source == "both" else [source]
        return pd.concat([shuffled(tables[s], self.seed, loop) for s in names])

    def apply(self, chunk: pd.DataFrame, start: int) -> pd.DataFrame:
        return chunk


@dataclass
class Natural(Scenario):
    """Natural drift: the state table (shuffled) and then the city table (shuffled), whatever
    ``--source`` says. The model was trained on states; cities differ in every feature."""

    def rows(self, tables: dict[str, pd.DataFrame], source: str, loop: int) -> pd.DataFrame:
        return pd.concat([shuffled(tables[s], self.seed, loop) for s in SOURCES])


def _numeric_feature(feature: str) -> str:
    if feature not in NUMERIC_FEATURES:
        raise UserError(
            f"--feature {feature!r} cannot be shifted: choose one of {', '.join(NUMERIC_FEATURES)}"
        )
    return feature


def _scaled(values: pd.Series, factor: np.ndarray | float, feature: str) -> pd.Series:
    """Multiply, then clip to the contract's range so shifted events stay valid (a rate stays in
    [0, 1]): the scenario tests the drift monitor, not the dead-letter queue."""
    low, high = RANGES[feature]
    return (values * factor).clip(lower=low, upper=high)


@dataclass
class Shift(Scenario):
    """Sudden drift: ``feature`` is multiplied by ``factor`` from event ``at`` on."""

    feature: str = "stops_per_year"
    at: int = 0
    factor: float = 3.0

    def __post_init__(self) -> None:
        _numeric_feature(self.feature)

    def apply(self, chunk: pd.DataFrame, start: int) -> pd.DataFrame:
        position = start + np.arange(len(chunk))
        factor = np.where(position >= self.at, self.factor, 1.0)
        out = chunk.copy()
        out[self.feature] = _scaled(out[self.feature], factor, self.feature)
        return out


@dataclass
class Gradual(Shift):
    """Gradual drift: the multiplier ramps linearly from 1 at event ``at`` to ``factor`` at
    ``at + span`` and stays there."""

    span: int = 2000

    def apply(self, chunk: pd.DataFrame, start: int) -> pd.DataFrame:
        position = start + np.arange(len(chunk))
        progress = np.clip((position - self.at) / max(self.span, 1), 0.0, 1.0)
        out = chunk.copy()
        out[self.feature] = _scaled(
            out[self.feature], 1.0 + (self.factor - 1.0) * progress, self.feature
        )
        return out


@dataclass
class Missing(Scenario):
    """Data-quality drift: from event ``at`` on, each numeric model feature of each event is
    blanked with a probability that ramps from 0 to ``share`` over ``span`` events.

    One uniform draw per event and feature is taken for every event (before ``at`` too), so the
    result does not depend on the chunk sizes."""

    at: int = 0
    share: float = 0.5
    span: int = 2000
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng([self.seed, 7])

    def apply(self, chunk: pd.DataFrame, start: int) -> pd.DataFrame:
        draws = self._rng.random((len(chunk), len(NUMERIC_FEATURES)))
        position = start + np.arange(len(chunk))
        progress = np.clip((position - self.at + 1) / max(self.span, 1), 0.0, 1.0)
        probability = np.where(position >= self.at, self.share * progress, 0.0)
        blank = draws < probability[:, None]
        out = chunk.copy()
        for j, col in enumerate(NUMERIC_FEATURES):
            out[col] = out[col].mask(blank[:, j])
        return out


GROUPS = ("black", "hispanic", "white")
GAP_FEATURE = "search_rate"


def _group(group: str) -> str:
    if group not in GROUPS:
        raise UserError(f"unknown group {group!r}: choose one of {', '.join(GROUPS)}")
    return group


@dataclass
class GapShift(Scenario):
    """A disparity change: from event ``at`` on, the search rate of rows whose RECORDED race
    (``subject_race``) is ``group`` is multiplied by ``factor`` (clipped to [0, 1]); every
    other row and column is unchanged. With a factor of 1.5 on black drivers, whose search
    rate is about twice white drivers' in these tables, each location's black-white gap about
    doubles."""

    group: str = "black"
    at: int = 0
    factor: float = 1.5

    def __post_init__(self) -> None:
        _group(self.group)

    def _factors(self) -> dict[str, float]:
        return {self.group: self.factor}

    def apply(self, chunk: pd.DataFrame, start: int) -> pd.DataFrame:
        after = (start + np.arange(len(chunk))) >= self.at
        race = chunk["subject_race"].to_numpy()
        factor = np.ones(len(chunk))
        for group, f in self._factors().items():
            factor[after & (race == group)] = f
        out = chunk.copy()
        out[GAP_FEATURE] = _scaled(out[GAP_FEATURE], factor, GAP_FEATURE)
        return out


def flat_white_factor(rows: pd.DataFrame, group: str, factor: float) -> float:
    """The factor for white drivers' search rate that keeps the overall search rate of ``rows``
    (searches / stops: each row's rate weighted by its ``stops_per_year``) unchanged when
    ``group``'s is multiplied by ``factor``.

    >>> rows = pd.DataFrame({"subject_race": ["black", "white"], "search_rate": [0.04, 0.02],
    ...                      "stops_per_year": [100.0, 400.0]})
    >>> flat_white_factor(rows, "black", 1.25)  # 4 searches more, 8 * (1 - f) fewer
    0.875
    """
    searches = (rows[GAP_FEATURE] * rows["stops_per_year"]).groupby(rows["subject_race"]).sum()
    white = float(searches.get("white", 0.0))
    if white <= 0:
        raise UserError("no white rows with a search rate: gap-flat cannot keep the rate flat")
    f = 1.0 - (factor - 1.0) * float(searches.get(group, 0.0)) / white
    if f < 0:
        raise UserError(
            f"--factor {factor:g} is too large for gap-flat-{group}: white drivers' search rate "
            f"would have to fall below 0 to keep the overall rate flat (try --factor 1.25)"
        )
    return f


@dataclass
class FlatGapShift(GapShift):
    """Two groups in opposite directions: from event ``at`` on, ``group``'s search rate times
    ``factor`` and white drivers' times ``white_factor``; by default the factor that keeps the
    overall (stop-weighted) search rate of one pass of the replayed table(s) unchanged
    (``flat_white_factor``: on the state table black x1.25 gives white x0.870). The overall
    rate stays flat while the gap between the groups moves."""

    white_factor: float | None = None

    def __post_init__(self) -> None:
        if _group(self.group) == "white":
            raise UserError(
                "gap-flat moves a minority group against white: choose black or hispanic"
            )

    def rows(self, tables: dict[str, pd.DataFrame], source: str, loop: int) -> pd.DataFrame:
        rows = super().rows(tables, source, loop)
        if self.white_factor is None:  # the same tables every loop: the same factor
            self.white_factor = flat_white_factor(rows, self.group, self.factor)
        return rows

    def _factors(self) -> dict[str, float]:
        if self.white_factor is None:
            raise ValueError("FlatGapShift.rows() sets white_factor before apply(), or pass one")
        return {self.group: self.factor, "white": self.white_factor}


GAP_SCENARIOS = [f"gap-{g}" for g in GROUPS] + [f"gap-flat-{g}" for g in GROUPS[:2]]

SCENARIOS: dict[str, type[Scenario]] = {
    "none": Scenario,
    "natural": Natural,
    "shift": Shift,
    "gradual": Gradual,
    "missing": Missing,
    **{name: FlatGapShift if "flat" in name else GapShift for name in GAP_SCENARIOS},
}


def build(
    name: str,
    *,
    seed: int = 42,
    feature: str = "stops_per_year",
    at: int = 0,
    factor: float = 3.0,
    span: int = 2000,
    share: float = 0.5,
) -> Scenario:
    """The scenario called ``name`` with the arguments it uses (others are ignored)."""
    if name not in SCENARIOS:
        raise UserError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}")
    if name == "shift":
        return Shift(seed=seed, feature=feature, at=at, factor=factor)
    if name == "gradual":
        return Gradual(seed=seed, feature=feature, at=at, factor=factor, span=span)
    if name == "missing":
        return Missing(seed=seed, at=at, share=share, span=span)
    if name in GAP_SCENARIOS:
        group = name.rsplit("-", 1)[1]
        return SCENARIOS[name](seed=seed, group=group, at=at, factor=factor)
    return SCENARIOS[name](seed=seed)
