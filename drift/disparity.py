"""Disparity as a monitored signal: the gap between groups, within locations, against the
reference's gap in the same places.

For each metric (``search_rate``, ``hit_rate``, ``inferred_threshold``) and pair (black-white,
hispanic-white) the unit is the LOCATION (state, city, geography, subgeography): its gap is the
minority group's value minus the white group's, both from rows whose RECORDED race
(``subject_race``, the label, never the model's prediction) is that group. Six statistics.

Why the design is what it is (measured on the OPP tables):

- a window of 500 shuffled state rows holds both rows of a location about 3 times, so pairs are
  not formed inside a window: ``GapBook`` keeps each location's latest value per group across
  windows, and a row TOUCHES its pair when its partner's value is known and not stale;
- gaps differ strongly between geographies, so an unstratified mean gap moves with the state
  mix. Each touched gap is RANKED among its own geography's reference gaps (a geography with
  fewer than ``min_locations`` reference locations is not tested: pooling geographies would
  let the mix back in). A state-mix change moves which geographies arrive, not where a
  location's gap falls within its own geography, so it does not read as a gap change;
- ranks, not standardised gaps: location gaps are skewed (one county at 8 points where its
  state's spread is 1), and with a reference of half the locations a mean-based statistic
  raised false alarms on held-out locations that ranks do not (measured, see the README);
- comparing each location with its OWN reference gap would have no null spread at all on a
  replay (the same rows come back), so it could not be calibrated without a model of the
  measurement noise; the alert still shows the same locations' own reference gap for reading;
- places whose geography the reference never saw (for that metric and pair) are "new places",
  reported apart, never mixed into the test;
- the thresholds come from a two-level bootstrap that resamples LOCATIONS (a reference of
  resampled locations x windows of distinct locations), so what makes gaps noisy (the spread
  between places) is what the null keeps.

The statistic, for the touched locations i of stratum g (n_g of them, N_g in the reference),
with F_i the mid-rank percentile of gap d_i among the stratum's reference gaps::

    z = sum_i (F_i - 1/2) sqrt(12)  /  sqrt(sum_g n_g (1 + (n_g + 1) / N_g))

(a Mann-Whitney rank sum per stratum, added over strata as in van Elteren's test; the
``(n_g + 1) / N_g`` term is the reference's own sampling error); evidence is ``-log10`` of its
two-sided p-value, mapped by the bootstrap to calibrated evidence. Window and reference gaps in
alerts are means (points), what a reader compares.

>>> import pandas as pd
>>> rows = pd.DataFrame({
...     "state": ["AA"] * 4, "city": ["Statewide"] * 4, "geography": ["AA"] * 4,
...     "subgeography": ["x", "x", "y", "y"], "subject_race": ["black", "white"] * 2,
...     "search_rate": [0.05, 0.02, 0.04, 0.03], "hit_rate": None,
...     "inferred_threshold": None})
>>> within_location_gaps(rows, "search_rate", "black")["gap"].round(4).tolist()
[0.03, 0.01]
>>> book = GapBook(window_events=2)
>>> _ = book.update(rows.assign(seq=range(4)))
>>> {k: round(v, 4) for k, v in book.close(0).gaps(STATISTICS[0], 1).items()}
{('AA', 'Statewide', 'AA', 'x'): 0.03}
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from drift.calibration import TailModel, exceedance_level
from drift.statistics import normal_evidence

METRICS = ("search_rate", "hit_rate", "inferred_threshold")
REFERENCE_GROUP = "white"
MINORITIES = ("black", "hispanic")
PAIRS = tuple((m, REFERENCE_GROUP) for m in MINORITIES)
LOCATION = ("state", "city", "geography", "subgeography")
GEOGRAPHY = LOCATION[:3]  # a location's stratum: its geography (a state, or a city)
RACE = "subject_race"  # the recorded race: the label, never the model's prediction
SCALES = (1, 2, 4, 8)  # 8 windows of 500 state events is about one pass over the locations
MIN_PAIRS = 10  # touched locations a statistic needs to be tested
MIN_LOCATIONS = 5  # reference locations a geography needs to be its own stratum
MAX_AGE = 10_000  # events (by seq) after which a partner's value is stale
NEAR_ZERO_GAP = 0.005  # below half a point a percent change reads badly: points only

CAVEATS = (
    "Aggregate rows (location x race), not individual stops.",
    "A change in a gap is not evidence of discrimination, nor of its absence.",
    "Hit-rate differences are subject to infra-marginality.",
    "Inferred thresholds are model estimates (a Bayesian threshold test), not observations.",
    "Check label, quality and state-mix alerts first.",
)

Location = tuple[str, str, str, str]


def pair_name(minority: str, white: str = REFERENCE_GROUP) -> str:
    return f"{minority}-{white}"


def statistic_name(metric: str, minority: str) -> str:
    """``"<metric>.<minority>-white"``.

    >>> statistic_name("search_rate", "black")
    'search_rate.black-white'
    """
    return f"{metric}.{pair_name(minority)}"


STATISTICS = tuple(statistic_name(m, g) for m in METRICS for g in MINORITIES)
_PARTS = {statistic_name(m, g): (m, g) for m in METRICS for g in MINORITIES}


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def location_of(row: Mapping[str, Any]) -> Location:
    """A row's location key; a missing part is the empty string (``subgeography`` is often NA).

    >>> location_of({"state": "TX", "city": "Statewide", "geography": "TX",
    ...              "subgeography": float("nan")})
    ('TX', 'Statewide', 'TX', '')
    """
    return tuple(_text(row.get(c)) for c in LOCATION)  # type: ignore[return-value]


def geography_label(geography: Sequence[str]) -> str:
    """How a geography reads in an alert: ``"WI statewide"``, ``"Little Rock, AR"``.

    >>> geography_label(("WI", "Statewide", "WI")), geography_label(("AR", "Little Rock", "x"))
    ('WI statewide', 'Little Rock, AR')
    """
    state, city = geography[0], geography[1]
    if city in ("", "Statewide"):
        return f"{state} statewide"
    return f"{city}, {state}"


def location_label(location: Sequence[str]) -> str:
    """``"WI statewide / Dane County"``."""
    base = geography_label(location[:3])
    return f"{base} / {location[3]}" if location[3] else base


def within_location_gaps(rows: pd.DataFrame, metric: str, minority: str) -> pd.DataFrame:
    """One row per location carrying ``metric`` for both ``minority`` and white: the location
    columns, ``minority``, ``white`` and ``gap`` (minority minus white). Where a location has
    several rows of a group, the last one counts (as in the stream)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    keyed = rows.assign(**{c: rows[c].map(_text) for c in LOCATION})
    keyed = keyed[keyed[metric].notna() & keyed[RACE].isin([minority, REFERENCE_GROUP])]
    wide = (
        keyed.drop_duplicates([*LOCATION, RACE], keep="last")
        .pivot(index=list(LOCATION), columns=RACE, values=metric)
        .reindex(columns=[minority, REFERENCE_GROUP])
        .dropna()
    )
    wide.columns.name = None
    out = wide.reset_index()
    out["gap"] = out[minority] - out[REFERENCE_GROUP]
    return out


# --- the reference ------------------------------------------------------------------------


def rank_scores(gaps: np.ndarray, reference_gaps: np.ndarray, weights=None) -> np.ndarray:
    """Each gap's mid-rank percentile among the reference's gaps of its stratum, centred and
    scaled to variance 1 under the null: ``(F - 1/2) * sqrt(12)``, in [-1.73, 1.73].
    ``weights`` (a bootstrap's counts per reference gap, leading axes are resamples) weigh the
    reference gaps.

    >>> rank_scores(np.array([0.0, 2.0, 9.0]), np.array([1.0, 2.0, 3.0])).round(3).tolist()
    [-1.732, 0.0, 1.732]
    """
    r = np.asarray(reference_gaps, float)
    d = np.asarray(gaps, float)
    w = np.ones_like(r) if weights is None else np.asarray(weights, float)
    below = (r[None, :] < d[:, None]).astype(float) + 0.5 * (r[None, :] == d[:, None])
    total = w.sum(-1, keepdims=True)
    f = np.divide(w @ below.T, total, out=np.full(total.shape[:-1] + d.shape, 0.5), where=total > 0)
    return (f - 0.5) * math.sqrt(12.0)


@dataclass
class StatisticReference:
    """One statistic's reference: each location's gap and its stratum (its geography, when
    the geography has at least ``min_locations`` reference locations)."""

    locations: list[Location]
    gaps: np.ndarray
    stratum: np.ndarray  # index into ``strata``; -1 for a location of a sparse geography
    strata: list[tuple[str, str, str]]  # the tested geographies
    sparse: set[tuple[str, str, str]]  # geographies seen with too few locations to test

    @classmethod
    def of(cls, gaps: pd.DataFrame, min_locations: int = MIN_LOCATIONS) -> StatisticReference:
        locations = [tuple(r) for r in gaps[list(LOCATION)].itertuples(index=False)]
        sizes = Counter(loc[:3] for loc in locations)
        strata = sorted(g for g, n in sizes.items() if n >= min_locations)
        index = {g: i for i, g in enumerate(strata)}
        stratum = np.array([index.get(loc[:3], -1) for loc in locations], dtype=np.int64)
        sparse = {g for g, n in sizes.items() if n < min_locations}
        return cls(locations, gaps["gap"].to_numpy(float), stratum, strata, sparse)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.stratum_of = {g: i for i, g in enumerate(self.strata)}
        self.by_stratum = [np.sort(self.gaps[self.stratum == i]) for i in range(len(self.strata))]
        self.count = np.array([len(x) for x in self.by_stratum], dtype=float)
        self.mean = np.array([x.mean() for x in self.by_stratum])
        self._gap_of = dict(zip(self.locations, self.gaps.tolist(), strict=True))
        by_geo: dict[tuple[str, ...], list[float]] = {}
        for loc, d in self._gap_of.items():
            by_geo.setdefault(loc[:3], []).append(d)
        self.geography_mean = {g: float(np.mean(v)) for g, v in by_geo.items()}

    @property
    def n_locations(self) -> int:
        """Locations in tested geographies."""
        return int(self.count.sum())

    def gap_of(self, location: Location) -> float | None:
        return self._gap_of.get(location)


class DisparityReference:
    """The reference's within-location gaps for the six statistics.

    Parameters
    ----------
    rows
        Reference rows with the location columns, ``subject_race`` and the three metrics
        (e.g. the table the champion was trained on).
    min_locations
        Geographies with fewer reference locations share one stratum.
    """

    def __init__(self, rows: pd.DataFrame, min_locations: int = MIN_LOCATIONS):
        missing = [c for c in (*LOCATION, RACE, *METRICS) if c not in rows.columns]
        if missing:
            raise ValueError(f"Reference rows lack column(s) {', '.join(missing)}")
        if min_locations < 1:
            raise ValueError(f"min_locations must be at least 1, got {min_locations}")
        self.min_locations = min_locations
        self.statistics: dict[str, StatisticReference] = {
            name: StatisticReference.of(within_location_gaps(rows, m, g), min_locations)
            for name, (m, g) in _PARTS.items()
        }

    def __getitem__(self, statistic: str) -> StatisticReference:
        return self.statistics[statistic]


# --- state across windows -------------------------------------------------------------------


@dataclass
class WindowGaps:
    """What a closed window needs to be tested: per scale and statistic, the touched locations
    and their gaps (over the last ``scale`` windows, the latest gap per location)."""

    window: int
    by_scale: dict[int, dict[str, dict[Location, float]]]
    stale: dict[str, int] = field(default_factory=dict)  # rows whose partner was stale

    def gaps(self, statistic: str, scale: int = 1) -> dict[Location, float]:
        return self.by_scale.get(scale, {}).get(statistic, {})


class GapBook:
    """Each location's latest value per group and metric, and the pairs each window touched.

    A row touches the pair (location, minority, white) of a metric when it carries that metric
    and its partner's latest value is known and at most ``max_age`` events (by ``seq``) apart.
    The touch belongs to the row's window (``seq // window_events``), whatever order the
    windows' events arrive in. Events are counted once by their ``(partition, position)``:
    positions rise within a partition (Kafka offsets), so one high-water mark per partition
    skips what was read twice (a batch re-read after a crash, a re-delivery inside a batch).

    State that outlives a window (latest values, touches of open windows, the last closed
    windows for the merged scales, the high-water marks) saves to JSON-able records with
    ``to_records`` and comes back with ``from_records``.

    >>> book = GapBook(window_events=10)
    >>> rows = pd.DataFrame({"state": "AA", "city": "Statewide", "geography": "AA",
    ...     "subgeography": "x", "subject_race": ["white", "black", "black"],
    ...     "search_rate": [0.02, 0.05, 0.06], "hit_rate": None, "inferred_threshold": None,
    ...     "seq": [0, 1, 2]})
    >>> _ = book.update(rows, partition=[0, 0, 0], position=[5, 6, 6])  # position 6 twice
    >>> book.duplicates, round(book.close(0).gaps("search_rate.black-white")[("AA",
    ...     "Statewide", "AA", "x")], 4)
    (1, 0.03)
    """

    def __init__(
        self, window_events: int = 500, max_age: int = MAX_AGE, scales: Sequence[int] = SCALES
    ):
        if window_events < 1:
            raise ValueError(f"window_events must be at least 1, got {window_events}")
        if max_age < 0:
            raise ValueError(f"max_age must be 0 or more, got {max_age}")
        if not scales or min(scales) < 1:
            raise ValueError(f"scales must be positive window counts, got {list(scales)}")
        self.window_events = window_events
        self.max_age = max_age
        self.scales = tuple(sorted(set(scales)))
        self._reset()

    def _reset(self) -> None:
        # (location, race, metric) -> (value, seq)
        self._latest: dict[tuple[Location, str, str], tuple[float, int]] = {}
        self._open: dict[int, dict[str, dict[Location, float]]] = {}
        self._closed: dict[int, dict[str, dict[Location, float]]] = {}
        self._stale: dict[int, dict[str, int]] = {}
        self._high: dict[Any, int] = {}
        self.last_closed: int | None = None
        self.duplicates = 0
        self.late = 0  # rows of windows already closed: they update values, touch nothing

    # --- feeding -----------------------------------------------------------------------------
    def update(
        self,
        rows: pd.DataFrame | Iterable[Mapping[str, Any]],
        partition: Sequence[Any] | None = None,
        position: Sequence[int] | None = None,
    ) -> GapBook:
        """Add valid events (location columns, ``subject_race``, the metrics, ``seq``), in the
        order read; ``partition``/``position`` identify each event (omit both: no dedup)."""
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        if (partition is None) != (position is None):
            raise ValueError("partition and position go together: give both or neither")
        if partition is not None and position is not None:
            if not len(partition) == len(position) == len(records):
                raise ValueError(
                    f"{len(records)} rows but {len(partition)} partitions and "
                    f"{len(position)} positions: give one of each per row"
                )
            keys = list(zip(partition, position, strict=True))
        else:
            keys = [(None, None)] * len(records)
        for row, (part, pos) in zip(records, keys, strict=True):
            if part is not None:
                part = part.item() if isinstance(part, np.generic) else part  # JSON-able
                if pos <= self._high.get(part, -1):
                    self.duplicates += 1
                    continue
                self._high[part] = int(pos)
            self._add(row)
        return self

    def _add(self, row: Mapping[str, Any]) -> None:
        race = row.get(RACE)
        if race not in (*MINORITIES, REFERENCE_GROUP):
            return
        seq = int(row["seq"])
        window = seq // self.window_events
        late = self.last_closed is not None and window <= self.last_closed
        loc = location_of(row)
        for metric in METRICS:
            value = row.get(metric)
            if value is None or not np.isfinite(value):
                continue  # a missing value leaves the latest known one in place
            value = float(value)
            self._latest[(loc, str(race), metric)] = (value, seq)
            if late:
                continue
            for minority in MINORITIES if race == REFERENCE_GROUP else (race,):
                partner = REFERENCE_GROUP if race != REFERENCE_GROUP else minority
                known = self._latest.get((loc, partner, metric))
                if known is None:
                    continue
                name = statistic_name(metric, minority)
                if abs(seq - known[1]) > self.max_age:
                    stale = self._stale.setdefault(window, {})
                    stale[name] = stale.get(name, 0) + 1
                    continue
                gap = value - known[0] if race != REFERENCE_GROUP else known[0] - value
                self._open.setdefault(window, {}).setdefault(name, {})[loc] = gap
        if late:
            self.late += 1

    # --- closing ----------------------------------------------------------------------------
    def close(self, window: int) -> WindowGaps:
        """The window's touched gaps at each scale; the window moves to the closed ones (kept
        for the merged scales). Close windows in index order."""
        touched = self._open.pop(window, {})
        stale = self._stale.pop(window, {})
        self._closed[window] = touched
        self.last_closed = window if self.last_closed is None else max(self.last_closed, window)
        horizon = window - max(self.scales) + 1
        for old in [k for k in self._closed if k < horizon]:
            del self._closed[old]
        for old in [k for k in self._open if k <= self.last_closed]:
            del self._open[old]  # rows of a window closed before: nothing will test them
            self._stale.pop(old, None)
        by_scale: dict[int, dict[str, dict[Location, float]]] = {}
        for scale in self.scales:
            merged: dict[str, dict[Location, float]] = {}
            for k in range(window - scale + 1, window + 1):  # later windows override
                for name, gaps in self._closed.get(k, {}).items():
                    merged.setdefault(name, {}).update(gaps)
            by_scale[scale] = merged
        return WindowGaps(window, by_scale, stale)

    # --- saving and restoring ---------------------------------------------------------------
    def to_records(self) -> dict[str, Any]:
        """JSON-able state (lists of flat records)."""

        def touched(book: dict[int, dict[str, dict[Location, float]]]) -> list[dict[str, Any]]:
            return [
                {"window": k, "statistic": s, "location": list(loc), "gap": g}
                for k, by in sorted(book.items())
                for s, gaps in sorted(by.items())
                for loc, g in gaps.items()
            ]

        return {
            "window_events": self.window_events,
            "max_age": self.max_age,
            "scales": list(self.scales),
            "latest": [
                {"location": list(loc), "race": r, "metric": m, "value": v, "seq": q}
                for (loc, r, m), (v, q) in self._latest.items()
            ],
            "open": touched(self._open),
            "closed": touched(self._closed),
            "stale": [
                {"window": k, "statistic": s, "rows": n}
                for k, by in sorted(self._stale.items())
                for s, n in sorted(by.items())
            ],
            "high_water": [{"partition": p, "position": q} for p, q in self._high.items()],
            "last_closed": self.last_closed,
            "duplicates": self.duplicates,
            "late": self.late,
        }

    @classmethod
    def from_records(cls, records: Mapping[str, Any]) -> GapBook:
        book = cls(records["window_events"], records["max_age"], records["scales"])
        for r in records["latest"]:
            book._latest[(tuple(r["location"]), r["race"], r["metric"])] = (r["value"], r["seq"])
        for name, target in (("open", book._open), ("closed", book._closed)):
            for r in records[name]:
                by = target.setdefault(int(r["window"]), {})
                by.setdefault(r["statistic"], {})[tuple(r["location"])] = r["gap"]
        for r in records["stale"]:
            book._stale.setdefault(int(r["window"]), {})[r["statistic"]] = int(r["rows"])
        book._high = {r["partition"]: int(r["position"]) for r in records["high_water"]}
        book.last_closed = records["last_closed"]
        book.duplicates = int(records["duplicates"])
        book.late = int(records["late"])
        return book


# --- the test of one statistic --------------------------------------------------------------


@dataclass
class GapTest:
    """One statistic at one scale of one window."""

    statistic: str
    scale: int
    n_locations: int  # touched locations tested (their geography is in the reference)
    z: float = 0.0
    evidence: float = 0.0  # -log10 of the asymptotic two-sided p-value
    calibrated: float = 0.0  # -log10 of the bootstrap tail probability
    threshold: float = math.inf
    window_gap: float | None = None
    reference_gap: float | None = None  # the reference's geography means, weighted as the window
    same_locations_gap: float | None = None  # the same locations' own reference gaps
    n_same_locations: int = 0
    new_places: list[str] = field(default_factory=list)  # geographies the reference never saw
    sparse_places: list[str] = field(default_factory=list)  # seen, too few locations to test
    reason: str = ""  # why it was not tested

    @property
    def tested(self) -> bool:
        return not self.reason

    @property
    def alerted(self) -> bool:
        return self.tested and self.calibrated > self.threshold


def gap_statistic(
    reference: StatisticReference, gaps: Mapping[Location, float]
) -> tuple[float, list[Location], list[Location], list[Location]]:
    """``(z, tested, sparse, new)``: the stratified rank statistic of touched gaps, and the
    touched locations split into those tested, those of geographies with too few reference
    locations, and new places (geographies the reference never saw).

    Within each stratum, each gap's rank score among the reference's gaps (``rank_scores``);
    ``z = sum of scores / sqrt(sum_g n_g (1 + (n_g + 1) / N_g))``, the variance of a rank-sum
    against a reference that is itself a sample (Mann-Whitney, summed over strata as in van
    Elteren's test). Ranks keep one outlying place (a gap of 8 points where its geography's
    spread is 1) from deciding a window, and put geographies of different spreads on one scale.

    >>> ref = StatisticReference.of(pd.DataFrame({"state": ["A"] * 3, "city": ["Statewide"] * 3,
    ...     "geography": ["A"] * 3, "subgeography": ["x", "y", "z"], "gap": [0.01, 0.02, 0.03]}),
    ...     min_locations=2)
    >>> z, tested, sparse, new = gap_statistic(ref, {("A", "Statewide", "A", "x"): 0.04,
    ...                                              ("B", "Statewide", "B", "q"): 0.0})
    >>> round(z, 3), len(tested), [loc[0] for loc in new]  # 1.732 / sqrt(1 + 2 / 3)
    (1.342, 1, ['B'])
    """
    tested, sparse, new = [], [], []
    for loc in gaps:
        geo = loc[:3]
        if geo in reference.stratum_of:
            tested.append(loc)
        else:
            (sparse if geo in reference.sparse else new).append(loc)
    if not tested:
        return 0.0, tested, sparse, new
    total, var = 0.0, 0.0
    by: dict[int, list[float]] = {}
    for loc in tested:
        by.setdefault(reference.stratum_of[loc[:3]], []).append(gaps[loc])
    for g, values in by.items():
        total += float(rank_scores(np.array(values), reference.by_stratum[g]).sum())
        n = len(values)
        var += n * (1 + (n + 1) / reference.count[g])
    return total / math.sqrt(var), tested, sparse, new


# --- calibration ----------------------------------------------------------------------------


@dataclass
class GapPoint:
    """One statistic's calibration at one number of touched locations."""

    n: int
    tail: TailModel
    threshold: float  # calibrated evidence a window must exceed

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "tail": self.tail.to_dict(), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GapPoint:
        return cls(int(d["n"]), TailModel(**d["tail"]), float(d["threshold"]))


@dataclass
class DisparityCalibration:
    """Per statistic, calibrated evidence and thresholds for any number of touched locations
    (interpolated in log n between the grid points)."""

    points: dict[str, list[GapPoint]]
    alpha: float  # false-alarm probability per statistic, per window and scale
    meta: dict[str, Any] = field(default_factory=dict)

    def _around(self, statistic: str, n: int) -> tuple[GapPoint, GapPoint, float]:
        pts = self.points[statistic]
        sizes = [p.n for p in pts]
        x = min(max(n, sizes[0]), sizes[-1])
        i = int(np.searchsorted(sizes, x))
        if i >= len(sizes) or sizes[i] == x or i == 0:
            p = pts[min(i, len(sizes) - 1)]
            return p, p, 0.0
        lo, hi = pts[i - 1], pts[i]
        return lo, hi, (math.log(x) - math.log(lo.n)) / (math.log(hi.n) - math.log(lo.n))

    def calibrated(self, statistic: str, evidence: float, n: int) -> float:
        lo, hi, w = self._around(statistic, n)
        return float((1 - w) * lo.tail(np.array(evidence)) + w * hi.tail(np.array(evidence)))

    def threshold(self, statistic: str, n: int) -> float:
        lo, hi, w = self._around(statistic, n)
        return (1 - w) * lo.threshold + w * hi.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": {s: [p.to_dict() for p in pts] for s, pts in self.points.items()},
            "alpha": self.alpha,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DisparityCalibration:
        points = {s: [GapPoint.from_dict(p) for p in pts] for s, pts in d["points"].items()}
        return cls(points, float(d["alpha"]), dict(d.get("meta", {})))


def location_grid(n_locations: int, min_pairs: int = MIN_PAIRS) -> list[int]:
    """Numbers of touched locations to calibrate at: doubling from ``min_pairs`` to all.

    >>> location_grid(225), location_grid(58), location_grid(7)
    ([10, 20, 40, 80, 160, 225], [10, 20, 40, 58], [])
    """
    if n_locations < min_pairs:
        return []
    grid, n = [], min_pairs
    while n < n_locations:
        grid.append(n)
        n *= 2
    return [*grid, n_locations]


def calibrate(
    reference: DisparityReference,
    *,
    window_events: int = 500,
    false_alarms_per_million: float = 1.0,
    scales: Sequence[int] = SCALES,
    n_references: int = 40,
    n_windows: int = 2000,
    reference_quantile: float = 0.9,
    margin: float = 2.0,
    min_pairs: int = MIN_PAIRS,
    seed: int = 42,
) -> DisparityCalibration:
    """Thresholds for the six statistics under a false-alarm budget (call once per model
    version; the result saves as JSON with ``to_dict``).

    The budget, ``false_alarms_per_million`` events, is split over the scales and, Bonferroni,
    over the statistics tested, then divided by ``margin`` (as the feature statistics do): a
    window of ``window_events`` is tested at each scale, so each statistic gets
    ``alpha = budget * window_events / (scales * statistics * margin)`` per test.

    The null is a two-level bootstrap over LOCATIONS: ``n_references`` references resampled
    (with replacement) from the reference's locations, and ``n_windows`` windows of n DISTINCT
    locations (a window's touched pairs) drawn from them; a window's locations whose geography
    a resampled reference lost are new places there, as they would be live. Per n on
    ``location_grid``, the evidence's tail model is fitted on all draws and the threshold is the
    level the calibrated evidence exceeds with probability ``alpha`` for ``reference_quantile``
    of the references.

    >>> rng = np.random.default_rng(3)
    >>> rows = pd.DataFrame({"state": "AA", "city": "Statewide", "geography": "AA",
    ...     "subgeography": np.repeat(np.arange(40).astype(str), 2),
    ...     "subject_race": ["black", "white"] * 40, "search_rate": rng.uniform(0, .1, 80),
    ...     "hit_rate": np.nan, "inferred_threshold": np.nan})
    >>> cal = calibrate(DisparityReference(rows), n_references=10, n_windows=300, seed=1)
    >>> sorted(cal.points), [p.n for p in cal.points["search_rate.black-white"]]
    (['search_rate.black-white'], [10, 20, 40])
    >>> cal.alpha, round(cal.threshold("search_rate.black-white", 20), 2)  # 500e-6 / (4 * 2)
    (6.25e-05, 4.72)
    """
    if not 0 < false_alarms_per_million < 1e6:
        raise ValueError(
            f"false_alarms_per_million must be between 0 and 1e6, got {false_alarms_per_million}"
        )
    if margin < 1:
        raise ValueError(f"margin must be at least 1, got {margin}")
    names = [s for s in STATISTICS if len(location_grid(reference[s].n_locations, min_pairs)) > 0]
    budget = false_alarms_per_million * 1e-6 * window_events
    alpha = min(budget / (len(scales) * max(len(names), 1) * margin), 0.5)
    rng = np.random.default_rng(seed)
    points: dict[str, list[GapPoint]] = {}
    for name in names:
        ref = reference[name]
        keep = ref.stratum >= 0
        d, g = ref.gaps[keep], ref.stratum[keep]
        big_n, n_strata = d.size, len(ref.strata)
        weights = rng.multinomial(big_n, np.full(big_n, 1 / big_n), size=n_references)
        # scores[j, i]: location i's rank score against resampled reference j, in its stratum
        scores = np.zeros((n_references, big_n))
        counts = np.zeros((n_references, n_strata))
        for k in range(n_strata):
            at = g == k
            scores[:, at] = rank_scores(d[at], d[at], weights[:, at])
            counts[:, k] = weights[:, at].sum(axis=1)
        order = rng.random((n_windows, big_n)).argsort(axis=1)
        pts = []
        for n in location_grid(big_n, min_pairs):
            idx = order[:, :n]  # (B, n) distinct locations per window
            members = np.zeros((n_windows, n_strata))
            np.add.at(members, (np.repeat(np.arange(n_windows), n), g[idx].ravel()), 1.0)
            evidence = np.empty((n_references, n_windows))
            for j in range(n_references):
                seen = counts[j] > 0  # a stratum a resampled reference lost is a new place
                m = members * seen
                tested = m.sum(axis=1)
                var = (m * (1 + (m + 1) / np.maximum(counts[j], 1.0))).sum(axis=1)
                total = np.where(seen[g[idx]], scores[j][idx], 0.0).sum(axis=1)
                z = np.divide(total, np.sqrt(var), out=np.zeros(n_windows), where=var > 0)
                evidence[j] = normal_evidence(np.where(tested >= min_pairs, z, 0.0), "two")
            tail = TailModel.fit(evidence)
            levels = [exceedance_level(tail(row), alpha) for row in evidence]
            # Never below the nominal level: a statistic with no null spread keeps its exact
            # evidence, and a threshold of 0 would fire on rounding noise.
            level = max(float(np.quantile(levels, reference_quantile)), -math.log10(alpha))
            pts.append(GapPoint(n, tail, level))
        points[name] = pts
    meta = {
        "window_events": window_events,
        "false_alarms_per_million": false_alarms_per_million,
        "scales": list(scales),
        "n_references": n_references,
        "n_windows": n_windows,
        "reference_quantile": reference_quantile,
        "margin": margin,
        "min_pairs": min_pairs,
        "seed": seed,
        "reference_locations": {s: reference[s].n_locations for s in STATISTICS},
    }
    return DisparityCalibration(points, alpha, meta)


# --- the alert ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DisparityAlert:
    """What staff read when a gap changed: one statistic of one window, at the scale that saw
    it best. Gaps are in points (percentage points of the rate)."""

    window: int
    metric: str
    pair: str  # "black-white"
    scale: int  # windows merged
    window_gap_points: float
    reference_gap_points: float  # the reference's gap in the same geographies
    change_points: float
    change_percent: float | None  # None when the reference gap is near zero
    same_locations_reference_gap_points: float | None
    n_locations: int
    n_same_locations: int
    evidence: float
    threshold: float
    top_geographies: tuple[dict[str, Any], ...]
    top_locations: tuple[dict[str, Any], ...]
    untested: tuple[dict[str, Any], ...]  # other statistics not tested, and why
    new_places: tuple[str, ...]  # geographies the reference never saw: not in the gaps
    sparse_places: tuple[str, ...]  # geographies with too few reference locations: not tested
    summary: str
    caveats: tuple[str, ...] = CAVEATS
    type: str = "disparity_alert"

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        lists = ("top_geographies", "top_locations", "untested", "new_places", "sparse_places")
        for k in (*lists, "caveats"):
            out[k] = list(out[k])
        return out


def _points(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 4)


def _moved(
    ref: StatisticReference, gaps: Mapping[Location, float], tested: list[Location], top: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    by_geo: dict[tuple[str, str, str], list[float]] = {}
    for loc in tested:
        by_geo.setdefault(loc[:3], []).append(gaps[loc])
    geos = []
    for geo, values in by_geo.items():
        ref_gap = ref.geography_mean.get(geo)
        if ref_gap is None:
            continue
        change = float(np.mean(values)) - ref_gap
        geos.append(
            {
                "geography": geography_label(geo),
                "n_locations": len(values),
                "window_gap_points": _points(float(np.mean(values))),
                "reference_gap_points": _points(ref_gap),
                "change_points": _points(change),
                "_weight": abs(change) * len(values),
            }
        )
    geos.sort(key=lambda r: -r.pop("_weight"))
    locs = []
    for loc in tested:
        own = ref.gap_of(loc)
        if own is not None:
            locs.append(
                {
                    "location": location_label(loc),
                    "window_gap_points": _points(gaps[loc]),
                    "reference_gap_points": _points(own),
                    "change_points": _points(gaps[loc] - own),
                }
            )
    locs.sort(key=lambda r: -abs(r["change_points"]))
    return geos[:top], locs[:top]


def describe(
    test: GapTest,
    reference: DisparityReference,
    gaps: Mapping[Location, float],
    window: int,
    untested: Sequence[GapTest] = (),
    top: int = 5,
) -> DisparityAlert:
    """The alert of one tested statistic (normally one that ``alerted``)."""
    metric, minority = _PARTS[test.statistic]
    ref = reference[test.statistic]
    _, tested, _, _ = gap_statistic(ref, gaps)
    geos, locs = _moved(ref, gaps, tested, top)
    window_gap = test.window_gap or 0.0
    reference_gap = test.reference_gap or 0.0
    change = window_gap - reference_gap
    percent = (
        round(100 * change / abs(reference_gap), 2) if abs(reference_gap) >= NEAR_ZERO_GAP else None
    )
    label = f"{minority.capitalize()}-{REFERENCE_GROUP} {metric.replace('_', ' ')} gap"
    where = ", ".join(f"{g['geography']} ({g['change_points']:+.2f})" for g in geos[:3])
    windows = "1 window" if test.scale == 1 else f"{test.scale} windows"
    summary = (
        f"{label}: {100 * window_gap:.2f} points in {test.n_locations} locations against "
        f"{100 * reference_gap:.2f} in the reference for the same geographies, "
        f"{100 * change:+.2f} points"
        + (f" ({percent:+.0f}%)" if percent is not None else "")
        + f", over {windows} ending at window {window}"
        + (f"; largest changes {where}" if where else "")
        + ". A change in the difference between groups in aggregate rates within the same "
        "places, larger than the reference's place-to-place variation allows; not evidence of "
        "discrimination, nor of its absence."
    )
    return DisparityAlert(
        window=window,
        metric=metric,
        pair=pair_name(minority),
        scale=test.scale,
        window_gap_points=_points(window_gap) or 0.0,
        reference_gap_points=_points(reference_gap) or 0.0,
        change_points=_points(change) or 0.0,
        change_percent=percent,
        same_locations_reference_gap_points=_points(test.same_locations_gap),
        n_locations=test.n_locations,
        n_same_locations=test.n_same_locations,
        evidence=round(test.calibrated, 4),
        threshold=round(test.threshold, 4),
        top_geographies=tuple(geos),
        top_locations=tuple(locs),
        untested=tuple(
            {"statistic": u.statistic, "scale": u.scale, "reason": u.reason} for u in untested
        ),
        new_places=tuple(test.new_places),
        sparse_places=tuple(test.sparse_places),
        summary=summary,
    )


# --- one window's verdict -------------------------------------------------------------------


@dataclass
class DisparityVerdict:
    window: int
    tests: list[GapTest]
    alerts: list[DisparityAlert]

    @property
    def alerted(self) -> bool:
        return bool(self.alerts)

    @property
    def new_places(self) -> list[str]:
        return sorted({p for t in self.tests for p in t.new_places})

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "tests": [dict(t.__dict__, tested=t.tested, alerted=t.alerted) for t in self.tests],
            "alerts": [a.to_dict() for a in self.alerts],
            "new_places": self.new_places,
        }


def test_window(
    window: WindowGaps,
    reference: DisparityReference,
    calibration: DisparityCalibration,
    *,
    min_pairs: int = MIN_PAIRS,
    top: int = 5,
) -> DisparityVerdict:
    """Test the six statistics of a closed window at every scale; one alert per statistic
    that exceeded its threshold at some scale (the scale with the largest excess)."""
    tests: list[GapTest] = []
    for name in STATISTICS:
        ref = reference[name]
        for scale, by in sorted(window.by_scale.items()):
            gaps = by.get(name, {})
            z, tested, sparse, new = gap_statistic(ref, gaps)
            n = len(tested)
            test = GapTest(
                name,
                scale,
                n,
                new_places=sorted({geography_label(loc[:3]) for loc in new}),
                sparse_places=sorted({geography_label(loc[:3]) for loc in sparse}),
            )
            if name not in calibration.points:
                test.reason = "too few reference locations"
            elif n < min_pairs:
                test.reason = f"{n} touched locations (fewer than {min_pairs})"
            if n:
                g = [ref.stratum_of[loc[:3]] for loc in tested]
                test.window_gap = float(np.mean([gaps[loc] for loc in tested]))
                test.reference_gap = float(np.mean(ref.mean[g]))
                own = [ref.gap_of(loc) for loc in tested]
                own = [x for x in own if x is not None]
                test.n_same_locations = len(own)
                test.same_locations_gap = float(np.mean(own)) if own else None
            if test.tested:
                test.z = z
                test.evidence = float(normal_evidence(np.array(z), "two"))
                test.calibrated = calibration.calibrated(name, test.evidence, n)
                test.threshold = calibration.threshold(name, n)
            tests.append(test)
    alerts = []
    untested = [t for t in tests if not t.tested and t.scale == 1]
    for name in STATISTICS:
        fired = [t for t in tests if t.statistic == name and t.alerted]
        if fired:
            best = max(fired, key=lambda t: t.calibrated - t.threshold)
            gaps = window.gaps(name, best.scale)
            alerts.append(describe(best, reference, gaps, window.window, untested, top))
    return DisparityVerdict(window.window, tests, alerts)


test_window.__test__ = False  # type: ignore[attr-defined]  # a function, not a pytest test


class DisparityMonitor:
    """The pieces wired together for a stream: a ``GapBook`` fed with events, each closed
    window tested against the reference with the calibration of the model version.

    >>> rng = np.random.default_rng(0)
    >>> n = 60  # locations, each with a black and a white row; gaps 2 +- 0.5 points
    >>> white = rng.uniform(.01, .05, n)
    >>> black = white + .02 + rng.normal(0, .005, n)
    >>> rows = pd.DataFrame({"state": "AA", "city": "Statewide", "geography": "AA",
    ...     "subgeography": np.repeat(np.arange(n).astype(str), 2),
    ...     "subject_race": ["black", "white"] * n,
    ...     "search_rate": np.column_stack([black, white]).ravel(),
    ...     "hit_rate": np.nan, "inferred_threshold": np.nan})
    >>> reference = DisparityReference(rows)
    >>> cal = calibrate(reference, window_events=40, n_references=10, n_windows=300)
    >>> monitor = DisparityMonitor(reference, cal, window_events=40, scales=(1, 2))
    >>> shuffled = rows.sample(frac=1, random_state=1).reset_index(drop=True)
    >>> worse = shuffled.assign(search_rate=np.where(shuffled.subject_race == "black",
    ...                         shuffled.search_rate + .02, shuffled.search_rate))
    >>> feed = pd.concat([shuffled, worse], ignore_index=True).assign(seq=range(2 * 2 * n))
    >>> for k in range(6):
    ...     _ = monitor.update(feed[feed.seq // 40 == k])
    ...     verdict = monitor.close(k)
    ...     print(k, [(a.pair, a.scale, a.change_points) for a in verdict.alerts])
    0 []
    1 []
    2 []
    3 [('black-white', 1, 1.2195)]
    4 [('black-white', 1, 1.5659)]
    5 [('black-white', 2, 2.0023)]
    >>> print(verdict.alerts[0].summary[:90])
    Black-white search rate gap: 4.04 points in 53 locations against 2.04 in the reference for
    """

    def __init__(
        self,
        reference: DisparityReference,
        calibration: DisparityCalibration,
        *,
        window_events: int = 500,
        scales: Sequence[int] = SCALES,
        max_age: int = MAX_AGE,
        min_pairs: int = MIN_PAIRS,
    ):
        self.reference = reference
        self.calibration = calibration
        self.min_pairs = min_pairs
        self.book = GapBook(window_events, max_age, scales)

    def update(self, rows, partition=None, position=None) -> DisparityMonitor:
        self.book.update(rows, partition, position)
        return self

    def close(self, window: int) -> DisparityVerdict:
        return test_window(
            self.book.close(window), self.reference, self.calibration, min_pairs=self.min_pairs
        )

    def to_records(self) -> dict[str, Any]:
        return self.book.to_records()

    def restore(self, records: Mapping[str, Any]) -> DisparityMonitor:
        self.book = GapBook.from_records(records)
        return self
