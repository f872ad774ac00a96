"""Window statistics and a detector whose thresholds are calibrated on the reference itself.

``compute_statistics`` turns a window's counts (``windows.WindowPartial``, possibly stacked) into
the tested statistics, keyed ``(feature, statistic)``:

====================  ===============================================================
feature               statistics
====================  ===============================================================
each numeric feature  ``psi``, ``wasserstein`` (binned, normalised), ``missing``
                      (|missing share - reference's|), ``out_of_range`` (share)
each categorical      ``chi_square`` (known categories), ``unseen`` (share)
``prediction``        ``share_distance`` (JS distance of predicted-class shares)
``confidence``        ``drop`` (reference mean max-probability - window's, >= 0)
====================  ===============================================================

``CalibratedDetector`` sets one threshold per statistic from B windows of the same size drawn
(with replacement, seeded) from the reference rows, each compared with a resampled copy of the
reference (``null_statistics``: the reference is a sample too, and its own noise matters when
the stream brings new rows of the same population): the null distribution of each statistic for
"nothing changed". With m statistics and a target false-alarm rate ``alpha`` per window, each
threshold is the (1 - alpha/m) quantile (Bonferroni: P(any false alarm) <= alpha). Those
quantiles lie far beyond what B draws resolve (alpha/m is about 5e-5 for the defaults), so the
tail beyond the top 5% is extrapolated with an exponential fit to the exceedances (peaks over
threshold with a zero shape parameter; chi-square-like statistics such as PSI have such tails).
A statistic is exceeded when it is strictly above its threshold, so a statistic that is always 0
on the reference (out-of-range, unseen shares) fires on its first non-zero value.

Without reference rows, the bootstrap draws multinomial counts from the reference shares (the
confidence statistic is then not tested: its null distribution needs the probabilities).

>>> det = CalibratedDetector.from_thresholds({("stops_per_year", "psi"): 0.2}, persistence=2)
>>> det.update({("stops_per_year", "psi"): 0.5}).drift_detected
False
>>> det.update({("stops_per_year", "psi"): 0.4}).drift_detected
True
>>> det.drifted_features
['stops_per_year']
>>> det.verdict["stops_per_year"]["statistics"]["psi"]["ratio"]
2.0
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from stopdrift_common import statistics as st
from stream_app.windows import Layout, WindowPartial

Key = tuple[str, str]
DEFAULT_BOOTSTRAP = 10000
TAIL_FRACTION = 0.01  # share of bootstrap draws the exponential tail is fitted on
N_REFERENCES = 200  # resampled references the null windows are compared with


# --- statistics of windows ----------------------------------------------------------------------
def compute_statistics(
    partial: WindowPartial, layout: Layout, reference: WindowPartial | None = None
) -> dict[Key, Any]:
    """The tested statistics of one window (floats) or of stacked windows (arrays of W).

    ``reference``: counts to compare against instead of the layout's shares (the calibration
    passes one resampled reference per window, to include the reference's own sampling error).
    """
    out: dict[Key, Any] = {}
    n = np.asarray(partial.n, dtype=float)
    ref_n = None if reference is None else np.asarray(reference.n, dtype=float)
    for name, spec in layout.numeric.items():
        bins = partial.num_bins[name]
        present = bins.sum(axis=-1)
        props = spec.proportions if reference is None else reference.num_bins[name]
        ref_missing = (
            spec.missing_share
            if reference is None
            else st.missing_share(reference.num_missing[name], ref_n)
        )
        out[(name, "psi")] = st.psi(props, bins)
        out[(name, "wasserstein")] = st.wasserstein_binned(props, bins)
        out[(name, "missing")] = np.abs(
            st.missing_share(partial.num_missing[name], n) - ref_missing
        )
        out[(name, "out_of_range")] = st.out_of_range_share(partial.num_out_of_range[name], present)
    for name, spec in layout.categorical.items():
        counts = partial.cat_counts[name]
        known = counts[..., :-1]
        shares = spec.shares if reference is None else reference.cat_counts[name][..., :-1]
        out[(name, "chi_square")] = st.chi_square(shares, known)
        out[(name, "unseen")] = st.unseen_share(counts[..., -1], counts.sum(axis=-1))
    pred_ref = layout.prediction_shares if reference is None else reference.pred_counts
    out[("prediction", "share_distance")] = st.prediction_share_distance(
        pred_ref, partial.pred_counts
    )
    if layout.mean_confidence is not None:
        ref_conf = (
            float(layout.mean_confidence)
            if reference is None
            else st.estimated_accuracy(reference.sum_max_proba, ref_n)
        )
        out[("confidence", "drop")] = st.confidence_drop(ref_conf, partial.sum_max_proba, n)
    if np.ndim(n) == 0:
        return {k: float(v) for k, v in out.items()}
    return out


def _tile(partial: WindowPartial, reps: int, total: int) -> WindowPartial:
    """Repeat stacked partials along the window axis up to ``total`` windows."""

    def t(x: Any) -> Any:
        return np.concatenate([x] * reps, axis=0)[:total]

    return WindowPartial(
        n=t(partial.n),
        num_bins={k: t(v) for k, v in partial.num_bins.items()},
        num_missing={k: t(v) for k, v in partial.num_missing.items()},
        num_out_of_range={k: t(v) for k, v in partial.num_out_of_range.items()},
        cat_counts={k: t(v) for k, v in partial.cat_counts.items()},
        cat_missing={k: t(v) for k, v in partial.cat_missing.items()},
        pred_counts=t(partial.pred_counts),
        sum_max_proba=t(partial.sum_max_proba),
        labelled=t(partial.labelled),
        correct=t(partial.correct),
    )


def null_statistics(
    layout: Layout,
    reference_rows: pd.DataFrame | None,
    window_events: int,
    n_windows: int,
    seed: int,
    n_references: int = N_REFERENCES,
) -> dict[Key, np.ndarray]:
    """Statistics of ``n_windows`` windows under "nothing changed".

    The live statistic compares a window of the CURRENT population with a FIXED reference that
    is itself a sample of that population, so its null distribution has two sources of noise:
    the window's and the reference's. The bootstrap reproduces both: windows are drawn from the
    reference rows, and each is compared with one of ``n_references`` resampled references of
    the reference's size (not with the reference itself, which would leave out the second
    source and let a stream of new rows from the same population alarm too often).
    """
    rng = np.random.default_rng(seed)
    window_seed, ref_seed = (int(x) for x in rng.integers(0, 2**31, size=2))
    windows = bootstrap_windows(layout, reference_rows, window_events, n_windows, window_seed)
    size = len(reference_rows) if reference_rows is not None else (layout.n_rows or 0)
    if size <= 0 or n_references <= 0:
        return compute_statistics(windows, layout)
    n_refs = min(n_references, n_windows)
    refs = bootstrap_windows(layout, reference_rows, size, n_refs, ref_seed)
    refs = _tile(refs, -(-n_windows // n_refs), n_windows)
    return compute_statistics(windows, layout, refs)


def summarise(partial: WindowPartial, layout: Layout) -> dict[str, Any]:
    """Descriptive figures of one window (shares and accuracies), for metrics and alerts."""
    n = int(partial.n)
    pred = partial.pred_counts
    return {
        "n": n,
        "prediction_shares": {
            c: float(x) for c, x in zip(layout.classes, st._shares(pred), strict=True)
        },
        "reference_prediction_shares": {
            c: float(x) for c, x in zip(layout.classes, layout.prediction_shares, strict=True)
        },
        "estimated_accuracy": float(st.estimated_accuracy(partial.sum_max_proba, n)),
        "reference_accuracy": layout.accuracy,
        "reference_mean_confidence": layout.mean_confidence,
        "observed_accuracy": (
            float(partial.correct / partial.labelled) if partial.labelled else None
        ),
        "labelled": int(partial.labelled),
        "missing_share": {
            **{k: float(st.missing_share(v, n)) for k, v in partial.num_missing.items()},
            **{k: float(st.missing_share(v, n)) for k, v in partial.cat_missing.items()},
        },
        "out_of_range_share": {
            k: float(st.out_of_range_share(v, partial.num_bins[k].sum()))
            for k, v in partial.num_out_of_range.items()
        },
        "unseen_category_share": {
            k: float(st.unseen_share(v[-1], v.sum())) for k, v in partial.cat_counts.items()
        },
    }


# --- the bootstrap ------------------------------------------------------------------------------
def _counts(codes: np.ndarray, idx: np.ndarray, n_codes: int) -> np.ndarray:
    """Per-window counts of ``codes[idx]`` for an index matrix ``idx`` of shape (B, n)."""
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * n_codes + codes[idx]).ravel()
    return np.bincount(flat, minlength=b * n_codes).reshape(b, n_codes)


def bootstrap_windows(
    layout: Layout,
    reference_rows: pd.DataFrame | None,
    window_events: int,
    n_windows: int,
    seed: int,
    replace: bool = True,
) -> WindowPartial:
    """``n_windows`` stacked windows of ``window_events`` events drawn with replacement from the
    reference rows (or, without rows, multinomial counts from the reference shares). With
    ``replace=False`` each window is a random subset of distinct rows."""
    rng = np.random.default_rng(seed)
    b, n = n_windows, window_events
    if reference_rows is None or len(reference_rows) == 0:
        return _multinomial_windows(layout, b, n, rng)
    rows = reference_rows
    if replace:
        idx = rng.integers(0, len(rows), size=(b, n))
    else:
        if n > len(rows):
            raise ValueError(f"cannot draw {n} distinct rows from {len(rows)}")
        idx = np.argsort(rng.random((b, len(rows))), axis=1)[:, :n]
    classes = list(layout.classes)
    proba_cols = [f"proba_{c}" for c in classes]
    if all(c in rows for c in proba_cols):
        proba = rows[proba_cols].to_numpy(dtype=float)
    elif "predicted" in rows:  # no probabilities: a one-hot of the prediction
        pred = rows["predicted"].astype("string").to_numpy(dtype=object)
        proba = np.stack([(pred == c).astype(float) for c in classes], axis=1)
    else:
        raise ValueError("reference_rows need proba_<class> or predicted columns")
    # Each row gets one code per feature; counts are bincounts over the B x n index matrix.
    out = WindowPartial.empty(layout)
    out.n = np.full(b, n)
    for name, spec in layout.numeric.items():
        k = len(spec.edges) + 1
        values = pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float)
        codes = np.where(np.isnan(values), k, np.searchsorted(spec.edges, values, side="left"))
        counts = _counts(codes.astype(np.int64), idx, k + 1)
        out.num_bins[name] = counts[:, :k]
        out.num_missing[name] = counts[:, k]
        bad = np.zeros(len(values), dtype=bool)
        if spec.low is not None:
            bad |= values < spec.low
        if spec.high is not None:
            bad |= values > spec.high
        out.num_out_of_range[name] = bad.astype(np.int64)[idx].sum(axis=1)
    for name, spec in layout.categorical.items():
        k = len(spec.categories)
        if name not in rows:
            out.cat_counts[name] = np.zeros((b, k + 1), np.int64)
            out.cat_missing[name] = np.full(b, n)
            continue
        col = rows[name]
        codes = pd.Categorical(col.astype("string"), categories=list(spec.categories)).codes
        codes = np.where(col.isna().to_numpy(), k + 1, np.where(codes < 0, k, codes))
        counts = _counts(codes.astype(np.int64), idx, k + 2)
        out.cat_counts[name] = counts[:, : k + 1]
        out.cat_missing[name] = counts[:, k + 1]
    top = proba.argmax(axis=1)
    out.pred_counts = _counts(top.astype(np.int64), idx, len(classes))
    out.sum_max_proba = proba.max(axis=1)[idx].sum(axis=1)
    out.labelled = np.zeros(b, np.int64)
    out.correct = np.zeros(b, np.int64)
    return out


def _multinomial_windows(layout: Layout, b: int, n: int, rng: np.random.Generator):
    out = WindowPartial.empty(layout)
    out.n = np.full(b, n)
    for name, spec in layout.numeric.items():
        miss = spec.missing_share
        p = np.append(spec.proportions * (1 - miss), miss)
        counts = rng.multinomial(n, p / p.sum(), size=b)
        out.num_bins[name] = counts[:, :-1]
        out.num_missing[name] = counts[:, -1]
        out.num_out_of_range[name] = np.zeros(b, np.int64)
    for name, spec in layout.categorical.items():
        miss = spec.missing_share
        p = np.append(spec.shares * (1 - miss), miss)
        counts = rng.multinomial(n, p / p.sum(), size=b)
        out.cat_counts[name] = np.concatenate([counts[:, :-1], np.zeros((b, 1), np.int64)], axis=1)
        out.cat_missing[name] = counts[:, -1]
    ps = layout.prediction_shares
    out.pred_counts = rng.multinomial(n, ps / ps.sum(), size=b)
    mean_conf = layout.mean_confidence or 0.0
    out.sum_max_proba = np.full(b, n * mean_conf)
    out.labelled = np.zeros(b, np.int64)
    out.correct = np.zeros(b, np.int64)
    return out


def tail_quantile(samples: np.ndarray, p: float, tail_fraction: float | None = None) -> float:
    """The (1 - p) quantile of ``samples``' distribution, extrapolated when p is too small for
    the sample: above the top ``tail_fraction`` the tail is taken as exponential, fitted on the
    mean excess of the top k = tail_fraction * B values over the (k+1)-th largest, u:
    q = u + mean_excess * ln(k / (B p)). When B p >= 10 the empirical quantile is used.

    >>> x = np.random.default_rng(0).exponential(1.0, 20000)
    >>> round(tail_quantile(x, 1e-5), 1), round(-math.log(1e-5), 1)
    (11.6, 11.5)
    >>> tail_quantile(np.zeros(100), 1e-5)
    0.0
    """
    tail_fraction = TAIL_FRACTION if tail_fraction is None else tail_fraction
    x = np.sort(np.asarray(samples, dtype=float))
    b = x.size
    if b == 0:
        return math.inf
    if b * p >= 10:
        return float(np.quantile(x, 1 - p))
    k = max(int(b * tail_fraction), min(10, b - 1))
    if k < 1:
        return float(x[-1])
    u = x[-k - 1]
    beta = float((x[-k:] - u).mean())
    if beta <= 0:
        return float(u)
    return float(u + beta * math.log(k / (b * p)))


# --- the detector -------------------------------------------------------------------------------
class CalibratedDetector:
    """Per-statistic thresholds calibrated on the reference, a persistence rule, a verdict.

    Parameters
    ----------
    layout
        The reference, as ``windows.Layout``.
    reference_rows
        Rows to draw null windows from (raw features + ``proba_<class>``); None: multinomial.
    window_events
        Window size the thresholds hold for (statistics such as chi-square depend on it).
    false_alarm_rate
        Target probability that a window drawn from the reference raises any alarm.
    persistence
        A statistic must exceed its threshold in this many windows in a row to count.
    n_bootstrap, seed
        Number of null windows drawn, and the seed of the draw (recorded in ``calibration``).
    """

    def __init__(
        self,
        layout: Layout,
        reference_rows: pd.DataFrame | None = None,
        window_events: int = 500,
        false_alarm_rate: float = 0.001,
        persistence: int = 1,
        n_bootstrap: int = DEFAULT_BOOTSTRAP,
        seed: int = 42,
    ):
        if not 0 < false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate must be between 0 and 1, got {false_alarm_rate}")
        if persistence < 1:
            raise ValueError(f"persistence must be at least 1, got {persistence}")
        if n_bootstrap < 20:
            raise ValueError(f"n_bootstrap must be at least 20, got {n_bootstrap}")
        self.layout = layout
        self.window_events = window_events
        self.false_alarm_rate = false_alarm_rate
        self.persistence = persistence
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        stats = null_statistics(layout, reference_rows, window_events, n_bootstrap, seed)
        if reference_rows is None:  # no probabilities to draw: confidence not testable
            stats.pop(("confidence", "drop"), None)
        m = len(stats)
        self.per_test_rate = false_alarm_rate / m
        self._thresholds = {k: tail_quantile(v, self.per_test_rate) for k, v in stats.items()}
        self.calibration = {
            "method": "bootstrap" if reference_rows is not None else "multinomial",
            "n_bootstrap": n_bootstrap,
            "seed": seed,
            "window_events": window_events,
            "false_alarm_rate": false_alarm_rate,
            "n_tests": m,
            "per_test_rate": self.per_test_rate,
            "persistence": persistence,
        }
        self._reset()

    @classmethod
    def from_thresholds(cls, thresholds: dict[Key, float], persistence: int = 1):
        """A detector with given thresholds (tests, or thresholds saved from a calibration)."""
        self = cls.__new__(cls)
        self.layout = None
        self.persistence = persistence
        self._thresholds = dict(thresholds)
        self.calibration = {"method": "given", "persistence": persistence}
        self._reset()
        return self

    def _reset(self) -> None:
        self._runs = {k: 0 for k in self._thresholds}
        self._last: dict[Key, float] = {}
        self._drifted: set[Key] = set()

    def reset(self) -> None:
        """Forget the runs of exceedances (thresholds are kept)."""
        self._reset()

    @property
    def thresholds(self) -> dict[Key, float]:
        return dict(self._thresholds)

    def update(self, window_stats: dict[Key, float]) -> CalibratedDetector:
        """Take one window's statistics (from ``compute_statistics``)."""
        self._last = {k: float(window_stats[k]) for k in self._thresholds if k in window_stats}
        for k, threshold in self._thresholds.items():
            value = self._last.get(k)
            self._runs[k] = self._runs[k] + 1 if value is not None and value > threshold else 0
        self._drifted = {k for k, r in self._runs.items() if r >= self.persistence}
        return self

    @property
    def drift_detected(self) -> bool:
        return bool(self._drifted)

    @property
    def drifted_features(self) -> list[str]:
        return sorted({f for f, _ in self._drifted})

    @property
    def verdict(self) -> dict[str, dict[str, Any]]:
        """Per feature: drifted or not, and per statistic its value, threshold, value/threshold
        ratio and whether it counts as exceeded (after persistence)."""
        out: dict[str, dict[str, Any]] = {}
        for (f, s), threshold in self._thresholds.items():
            value = self._last.get((f, s))
            if value is None:
                continue
            ratio = value / threshold if threshold > 0 else (math.inf if value > 0 else 0.0)
            entry = out.setdefault(f, {"drifted": False, "statistics": {}})
            entry["statistics"][s] = {
                "value": value,
                "threshold": threshold,
                "ratio": ratio,
                "exceeded": (f, s) in self._drifted,
            }
            entry["drifted"] = entry["drifted"] or (f, s) in self._drifted
        return out

    def exceedances(self, stats: dict[Key, np.ndarray]) -> np.ndarray:
        """Vectorised, without persistence: for W stacked windows' statistics, a (W,) array of
        True where any statistic exceeded its threshold (benchmarks)."""
        first = next(iter(stats.values()))
        hit = np.zeros(np.shape(first), dtype=bool)
        for k, threshold in self._thresholds.items():
            if k in stats:
                hit |= np.asarray(stats[k]) > threshold
        return hit
