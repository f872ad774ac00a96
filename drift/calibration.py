"""Thresholds that hold when the reference is itself a sample: a two-level bootstrap.

The live question is "does this window of the CURRENT population look like the REFERENCE?",
where the reference is one sample of N rows of that population. Both are noisy, and an unlucky
reference (a rare state over-represented, say) makes every window look a little drifted. So the
bootstrap draws both levels: J references resampled from the reference rows (the spread of a
reference around its population) and B windows drawn from the reference rows (the population),
and compares every window with every reference.

Per window size in a grid (a window that closed early is tested at its own size; merged windows
are larger), it fits:

1. each statistic's null distribution, pooled over references and windows, as a map from its
   asymptotic evidence to CALIBRATED evidence, ``-log10`` of the bootstrap tail probability
   (the body is empirical, the far tail exponential: the top ``tail_fraction`` of draws is
   extrapolated, since the rates asked for lie beyond what B draws resolve). A statistic with
   no null spread (no missing values in the reference, no rejected rows) keeps its exact
   evidence: it cannot fire under the null, so it costs no false alarms;
2. the family's threshold: for each resampled reference, the level the MAXIMUM calibrated
   evidence over the family exceeds with probability ``alpha`` (tail extrapolated), and the
   ``reference_quantile`` (0.9) of those levels over the references. So for nine references in
   ten the family's false-alarm rate per test is at most ``alpha``; the maximum accounts for
   correlated statistics (the three rate features are missing together), where Bonferroni
   would count them three times. ``bonferroni`` is kept beside it for comparison: the level
   where the SUM of the statistics' tail probabilities (distinct statistics once) is ``alpha``.

A window of a size between grid points gets calibrated evidence and thresholds interpolated in
log(size).

>>> x = np.random.default_rng(0).exponential(1 / np.log(10), 20000)  # evidence of a uniform p
>>> tail = TailModel.fit(x)
>>> round(float(tail(np.array(3.0))), 1), round(float(tail(np.array(6.0))), 1)
(3.0, 6.1)
>>> round(exceedance_level(x, 1e-5), 1)
4.9
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drift.counts import Counts
from drift.family import Family

TAIL_FRACTION = 0.05
BODY_POINTS = 200
# A saved calibration is reused only by the code that would compute the same one: bump
# FORMAT_VERSION when ``to_dict``'s layout changes, CODE_VERSION when the bootstrap's results do.
FORMAT_VERSION = 1
CODE_VERSION = 1


class CalibrationFormatError(ValueError):
    """A saved calibration that is malformed or of another format version."""


def _tail(sorted_x: np.ndarray, tail_fraction: float) -> tuple[float, float, int]:
    """``(u, beta, k)``: the top k values, their threshold u and mean excess beta."""
    m = sorted_x.size
    k = max(10, int(m * tail_fraction))
    k = min(k, m - 1)
    u = float(sorted_x[-k - 1])
    beta = float((sorted_x[-k:] - u).mean())
    return u, beta, k


def exceedance_level(samples: np.ndarray, alpha: float, tail_fraction: float = TAIL_FRACTION):
    """The level ``samples``' distribution exceeds with probability ``alpha``: empirical when
    the sample resolves it, else an exponential tail fitted to the top ``tail_fraction``
    (peaks over threshold with shape 0: evidence of well-behaved tests has such tails)."""
    x = np.sort(np.asarray(samples, dtype=float))
    m = x.size
    if m * alpha >= 10:
        return float(np.quantile(x, 1 - alpha))
    u, beta, k = _tail(x, tail_fraction)
    if beta <= 0:
        return u
    return u + beta * math.log(k / (m * alpha))


@dataclass
class TailModel:
    """Maps one statistic's evidence to calibrated evidence at one window size."""

    body_x: list[float] = field(default_factory=list)  # increasing evidence values
    body_log10p: list[float] = field(default_factory=list)  # log10 P(X >= x) there
    u: float = 0.0
    beta: float = 0.0
    log10_pu: float = 0.0
    exact: bool = True  # no null spread: the asymptotic evidence is used as it is

    @classmethod
    def fit(cls, samples: np.ndarray, tail_fraction: float = TAIL_FRACTION) -> TailModel:
        x = np.sort(np.asarray(samples, dtype=float).ravel())
        m = x.size
        if m < 50:
            return cls()
        u, beta, k = _tail(x, tail_fraction)
        if beta <= 1e-9 or np.unique(x[-k - 1 :]).size < 5:
            return cls()  # (almost) no spread in the tail: nothing to calibrate against
        positions = np.unique(np.linspace(0, m - k - 1, BODY_POINTS).astype(int))
        p = (m - positions) / m  # P(X >= x[pos]), ties counted on the safe side
        xs, idx = np.unique(x[positions], return_index=True)
        return cls(
            body_x=xs.tolist(),
            body_log10p=np.log10(p[idx]).tolist(),
            u=u,
            beta=beta,
            log10_pu=math.log10(k / m),
            exact=False,
        )

    def __post_init__(self) -> None:
        self._x = np.asarray(self.body_x, dtype=float)
        self._y = np.asarray(self.body_log10p, dtype=float)

    def __call__(self, evidence: Any) -> np.ndarray:
        e = np.asarray(evidence, dtype=float)
        if self.exact:
            return e
        body = -np.interp(e, self._x, self._y, left=0.0, right=self.log10_pu)
        tail = -self.log10_pu + (e - self.u) / (self.beta * math.log(10))
        return np.maximum(np.where(e > self.u, tail, body), 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


EXACT = TailModel()  # the identity: exact evidence stays as it is


@dataclass
class SizePoint:
    """The calibration at one window size."""

    size: int
    tails: dict[str, TailModel]
    threshold: float  # family threshold (calibrated evidence), unlabelled windows
    threshold_labelled: float  # the same with the label statistics in the family
    bonferroni: float
    bonferroni_labelled: float
    exact: list[str]  # statistics with no null spread (kept exact)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["tails"] = {k: t.to_dict() for k, t in self.tails.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SizePoint:
        return cls(**{**d, "tails": {k: TailModel(**t) for k, t in d["tails"].items()}})


def size_grid(window_events: int, scales: Sequence[int], min_size: int) -> list[int]:
    """Window sizes to calibrate at: from the smallest tested window to the largest merge.

    >>> size_grid(500, (1, 2, 4), 50)
    [50, 125, 250, 500, 1000, 2000]
    """
    top = window_events * max(scales)
    sizes = {min_size, top}
    for f in (0.25, 0.5, 1, 2, 4, 8):
        s = int(round(f * window_events))
        if min_size <= s <= top:
            sizes.add(s)
    return sorted(sizes)


@dataclass
class Calibration:
    """Calibrated evidence and family thresholds for windows of any size in the grid."""

    points: list[SizePoint]
    alpha: float  # false-alarm probability per tested scale, for nine references in ten
    method: str  # "joint" (the maximum) or "bonferroni"
    meta: dict[str, Any] = field(default_factory=dict)

    # --- fitting -----------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        family: Family,
        codes: np.ndarray,
        confidence: np.ndarray,
        *,
        sizes: Iterable[int],
        alpha: float,
        n_windows: int = 2000,
        n_references: int = 40,
        reference_quantile: float = 0.9,
        tail_fraction: float = TAIL_FRACTION,
        method: str = "joint",
        seed: int = 42,
    ) -> Calibration:
        """``codes``/``confidence``: the reference rows, encoded by the family's layout."""
        if method not in ("joint", "bonferroni"):
            raise ValueError(f"method must be 'joint' or 'bonferroni', got {method!r}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
        layout = family.layout
        rng = np.random.default_rng(seed)
        n_rows = codes.shape[0]
        weights = rng.multinomial(n_rows, np.full(n_rows, 1 / n_rows), size=n_references)
        refs = Counts.weighted(codes, confidence, weights, layout)
        refs = _expand(refs, 1)  # (J, 1, slots): broadcast against (1, B, slots)
        points = []
        for size in sizes:
            windows = _windows(codes, confidence, size, n_windows, rng, layout)
            evidence = family.evidence(windows, refs)  # (J, B) per statistic
            points.append(
                _fit_point(family, size, evidence, alpha, reference_quantile, tail_fraction)
            )
        meta = {
            "n_windows": n_windows,
            "n_references": n_references,
            "reference_quantile": reference_quantile,
            "tail_fraction": tail_fraction,
            "seed": seed,
            "reference_rows": int(n_rows),
        }
        return cls(points, alpha, method, meta)

    # --- using -------------------------------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        return [p.size for p in self.points]

    def _around(self, n: float) -> tuple[SizePoint, SizePoint, float]:
        sizes = self.sizes
        n = min(max(n, sizes[0]), sizes[-1])
        i = int(np.searchsorted(sizes, n))
        if sizes[min(i, len(sizes) - 1)] == n or i == 0:
            p = self.points[min(i, len(sizes) - 1)]
            return p, p, 0.0
        lo, hi = self.points[i - 1], self.points[i]
        w = (math.log(n) - math.log(lo.size)) / (math.log(hi.size) - math.log(lo.size))
        return lo, hi, w

    def calibrated(self, evidence: dict[str, Any], n: Any) -> dict[str, Any]:
        """Calibrated evidence of windows of ``n`` events: ``evidence`` and ``n`` are scalars
        (one window) or arrays of the same length (each window at its own size). Statistics
        without a tail model (``quality.*``) keep their exact evidence."""
        sizes = np.atleast_1d(np.asarray(n, dtype=float))
        out = {}
        for name, e in evidence.items():
            values = np.broadcast_to(np.asarray(e, dtype=float), sizes.shape).copy()
            result = np.empty_like(values)
            for size in np.unique(sizes):
                at = sizes == size
                lo, hi, w = self._around(float(size))
                a = lo.tails.get(name, EXACT)(values[at])
                b = hi.tails.get(name, EXACT)(values[at])
                result[at] = (1 - w) * a + w * b
            out[name] = float(result[0]) if np.ndim(n) == 0 and np.ndim(e) == 0 else result
        return out

    def threshold(self, n: Any, labelled: Any = False, method: str | None = None) -> Any:
        """The family threshold for windows of ``n`` events (scalars or arrays), with the label
        statistics in the family where ``labelled``; ``method`` overrides the calibrated one."""
        base = "threshold" if (method or self.method) == "joint" else "bonferroni"
        sizes = np.atleast_1d(np.asarray(n, dtype=float))
        with_labels = np.broadcast_to(np.asarray(labelled, dtype=bool), sizes.shape)
        out = np.empty(sizes.shape)
        for i, (size, lab) in enumerate(zip(sizes.tolist(), with_labels.tolist(), strict=True)):
            lo, hi, w = self._around(size)
            key = base + ("_labelled" if lab else "")
            out[i] = (1 - w) * getattr(lo, key) + w * getattr(hi, key)
        return float(out[0]) if np.ndim(n) == 0 else out

    # --- JSON (stored with the model version, cached between runs) ---------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "points": [p.to_dict() for p in self.points],
            "alpha": self.alpha,
            "method": self.method,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Calibration:
        """The inverse of ``to_dict``; ``CalibrationFormatError`` for anything else (another
        format version, a truncated or hand-edited file), never a half-built calibration.

        >>> Calibration.from_dict({"points": []})
        Traceback (most recent call last):
        ...
        drift.calibration.CalibrationFormatError: calibration format None, expected 1
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT_VERSION:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise CalibrationFormatError(f"calibration format {found}, expected {FORMAT_VERSION}")
        try:
            points = [SizePoint.from_dict(p) for p in d["points"]]
            cal = cls(points, float(d["alpha"]), str(d["method"]), dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalibrationFormatError(f"malformed calibration: {exc!r}"[:200]) from None
        sizes = cal.sizes
        if not points or sizes != sorted(set(sizes)) or cal.method not in ("joint", "bonferroni"):
            raise CalibrationFormatError("malformed calibration: no or unordered size points")
        return cal


def _expand(c: Counts, axis: int) -> Counts:
    return Counts(
        np.expand_dims(c.counts, axis),
        np.expand_dims(np.asarray(c.confidence_sum), axis),
        np.expand_dims(np.asarray(c.confidence_squares), axis),
        {},
        c.layout,
    )


def _windows(codes, confidence, size, n_windows, rng, layout, chunk_events=2_000_000) -> Counts:
    """``n_windows`` windows of ``size`` rows drawn with replacement, stacked as (1, B, slots)."""
    per_chunk = max(1, chunk_events // max(size * codes.shape[1], 1))
    parts = []
    for start in range(0, n_windows, per_chunk):
        b = min(per_chunk, n_windows - start)
        index = rng.integers(0, codes.shape[0], size=(b, size))
        parts.append(Counts.sampled(codes, confidence, index, layout))
    stacked = Counts(
        np.concatenate([p.counts for p in parts]),
        np.concatenate([p.confidence_sum for p in parts]),
        np.concatenate([p.confidence_squares for p in parts]),
        {},
        layout,
    )
    return _expand(stacked, 0)


def _fit_point(family, size, evidence, alpha, reference_quantile, tail_fraction) -> SizePoint:
    tails = {name: TailModel.fit(e, tail_fraction) for name, e in evidence.items()}
    calibrated = {name: tails[name](e) for name, e in evidence.items()}
    exact = sorted(name for name, t in tails.items() if t.exact)

    def joint(names: Sequence[str]) -> float:
        family_max = np.max(np.stack([calibrated[n] for n in names]), axis=0)  # (J, B)
        levels = [exceedance_level(row, alpha, tail_fraction) for row in family_max]
        return float(np.quantile(levels, reference_quantile))

    def bonferroni(names: Sequence[str]) -> float:
        # Distinct statistics only: identical ones (the rate features' missing shares) once.
        distinct: list[np.ndarray] = []
        for n in names:
            if n not in exact and not any(np.array_equal(calibrated[n], d) for d in distinct):
                distinct.append(calibrated[n])
        if not distinct:
            return -math.log10(alpha)
        levels = [
            _union_level([d[j] for d in distinct], alpha, tail_fraction)
            for j in range(distinct[0].shape[0])
        ]
        return float(np.quantile(levels, reference_quantile))

    plain = family.names
    labelled = family.names + family.labelled_names
    return SizePoint(
        size=int(size),
        tails=tails,
        threshold=joint(plain),
        threshold_labelled=joint(labelled) if family.labelled_names else joint(plain),
        bonferroni=bonferroni(plain),
        bonferroni_labelled=bonferroni(labelled),
        exact=exact,
    )


def _union_level(samples: list[np.ndarray], alpha: float, tail_fraction: float) -> float:
    """The level x where the sum over statistics of P(X_s > x) is alpha (bisection)."""
    fits = []
    for x in samples:
        s = np.sort(x)
        u, beta, k = _tail(s, tail_fraction)
        fits.append((s, u, beta, k))

    def total(level: float) -> float:
        out = 0.0
        for s, u, beta, k in fits:
            if level <= u or beta <= 0:
                out += float((s > level).mean())
            else:
                out += k / s.size * math.exp(-(level - u) / beta)
        return out

    lo, hi = 0.0, 1.0
    while total(hi) > alpha and hi < 400:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) > alpha else (lo, mid)
    return hi
