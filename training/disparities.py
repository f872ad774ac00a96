"""Disparities in the OPP tables, for ``stopdrift analyze``: per table, metric and pair, the gap
between groups WITHIN locations (minority minus white, from the recorded race), averaged over
locations unweighted as OPP does, with a location-bootstrap interval, and the geographies with
the widest gaps. The gap of one location is computed by the drift core
(``drift.disparity.within_location_gaps``), so the batch report and the stream agree on it.

Gaps are in points (percentage points of the rate). A location counts once whatever its number
of stops: pooling by stops answers another question (the state black-white hit-rate gap is
-0.46 points unweighted, +1.24 pooled by stops).

>>> import pandas as pd
>>> rows = pd.DataFrame({"state": ["A"] * 4 + ["B"] * 2, "city": "Statewide",
...     "geography": ["A"] * 4 + ["B"] * 2, "subgeography": ["x", "x", "y", "y", "z", "z"],
...     "subject_race": ["black", "white"] * 3, "search_rate": [.05, .02, .04, .03, .09, .03],
...     "hit_rate": float("nan"), "inferred_threshold": float("nan")})
>>> table = disparity_table(rows, "state", n_boot=200, seed=1)
>>> table.loc[0, ["metric", "pair", "n_locations", "gap_points"]].tolist()
['search_rate', 'black-white', 3, 3.3333]
>>> geographies(rows, "state").loc[:, ["geography", "n_locations", "gap_points"]].values.tolist()
[['B statewide', 1, 6.0], ['A statewide', 2, 2.0]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from drift.disparity import (
    CAVEATS,
    GEOGRAPHY,
    METRICS,
    MINORITIES,
    geography_label,
    pair_name,
    within_location_gaps,
)

N_BOOT = 2000
LEVEL = 0.95
TOP = 5
COLUMNS = [
    "source",
    "metric",
    "pair",
    "n_locations",
    "n_geographies",
    "minority_points",
    "white_points",
    "gap_points",
    "ci_low_points",
    "ci_high_points",
    "n_boot",
    "seed",
]


def _points(x: float) -> float:
    return round(100 * float(x), 4)


def location_bootstrap(gaps: np.ndarray, n_boot: int, seed: int, level: float = LEVEL):
    """Percentile interval of the mean gap from resampling LOCATIONS with replacement.

    >>> location_bootstrap(np.array([1.0, 2.0, 3.0]), 1000, seed=0)  # (1, 1, 1): p = 1/27
    (1.0, 3.0)
    >>> [round(x, 3) for x in location_bootstrap(np.arange(20.0), 1000, seed=0)]  # 9.5 +- 2 se
    [6.95, 11.9]
    """
    if gaps.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = gaps[rng.integers(0, gaps.size, size=(n_boot, gaps.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def disparity_table(
    rows: pd.DataFrame, source: str, n_boot: int = N_BOOT, seed: int = 42
) -> pd.DataFrame:
    """One row per metric and pair (six): the within-location gap, its interval, the groups'
    own means over the same locations, how many locations and geographies it rests on."""
    out = []
    for metric in METRICS:
        for minority in MINORITIES:
            gaps = within_location_gaps(rows, metric, minority)
            d = gaps["gap"].to_numpy(float)
            low, high = location_bootstrap(d, n_boot, seed)
            n = len(gaps)
            out.append(
                {
                    "source": source,
                    "metric": metric,
                    "pair": pair_name(minority),
                    "n_locations": n,
                    "n_geographies": int(gaps[list(GEOGRAPHY)].drop_duplicates().shape[0]),
                    "minority_points": _points(gaps[minority].mean()) if n else np.nan,
                    "white_points": _points(gaps["white"].mean()) if n else np.nan,
                    "gap_points": _points(d.mean()) if n else np.nan,
                    "ci_low_points": _points(low) if n else np.nan,
                    "ci_high_points": _points(high) if n else np.nan,
                    "n_boot": n_boot,
                    "seed": seed,
                }
            )
    return pd.DataFrame(out, columns=COLUMNS)


def geographies(rows: pd.DataFrame, source: str, top: int = TOP) -> pd.DataFrame:
    """Per metric and pair, the ``top`` geographies with the widest mean gap (either sign),
    ties by name."""
    out = []
    for metric in METRICS:
        for minority in MINORITIES:
            gaps = within_location_gaps(rows, metric, minority)
            if gaps.empty:
                continue
            by = gaps.groupby(list(GEOGRAPHY), sort=True)["gap"].agg(["size", "mean"])
            by = by.reset_index()
            by["geography"] = [geography_label(g) for g in by[list(GEOGRAPHY)].itertuples(False)]
            by["order"] = -by["mean"].abs()
            by = by.sort_values(["order", "geography"], kind="stable").head(top)
            for rank, r in enumerate(by.itertuples(index=False), start=1):
                out.append(
                    {
                        "source": source,
                        "metric": metric,
                        "pair": pair_name(minority),
                        "rank": rank,
                        "geography": r.geography,
                        "n_locations": int(r.size),
                        "gap_points": _points(r.mean),
                    }
                )
    return pd.DataFrame(
        out, columns=["source", "metric", "pair", "rank", "geography", "n_locations", "gap_points"]
    )


def format_table(table: pd.DataFrame) -> str:
    """The summary as printed: one line per table, metric and pair."""
    shown = table.assign(
        interval=[
            f"[{lo:+.2f}, {hi:+.2f}]"
            for lo, hi in zip(table.ci_low_points, table.ci_high_points, strict=True)
        ],
        gap=[f"{g:+.2f}" for g in table.gap_points],
    )[["source", "metric", "pair", "n_locations", "gap", "interval"]]
    level = int(LEVEL * 100)
    return (
        "Within-location gaps (minority minus white, points; mean over locations, unweighted; "
        f"{level}% location-bootstrap interval)\n" + shown.to_string(index=False)
    )


def markdown(table: pd.DataFrame, geos: pd.DataFrame) -> str:
    def md(df: pd.DataFrame) -> str:
        head = "| " + " | ".join(df.columns) + " |"
        rule = "|" + "---|" * len(df.columns)
        body = ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
        return "\n".join([head, rule, *body])

    seed, n_boot = int(table["seed"].iloc[0]), int(table["n_boot"].iloc[0])
    lines = [
        "# Disparities within locations",
        "",
        "Gap = the minority group's rate minus the white group's rate in the same location "
        "(state x city x geography x subgeography), from the recorded race; in points; the "
        "mean over locations, each location counted once (as OPP does); interval: "
        f"{int(LEVEL * 100)}% percentile interval of {n_boot} location-bootstrap resamples "
        f"(seed {seed}).",
        "",
        md(table.drop(columns=["n_boot", "seed"])),
        "",
        f"## Top {TOP} geographies by the size of their mean gap",
        "",
        md(geos),
        "",
        "## Read with care",
        "",
        *[f"- {c}" for c in CAVEATS],
        "- The tables cannot support the veil-of-darkness test (no stop times).",
        "",
    ]
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path) -> Path:
    """One panel per metric: each table's and pair's gap with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.family": "DejaVu Sans"}):
        fig, axes = plt.subplots(1, len(METRICS), figsize=(12, 3.2), sharey=True)
        labels = []
        for ax, metric in zip(axes, METRICS, strict=True):
            part = table[table.metric == metric].reset_index(drop=True)
            labels = [f"{s} {p}" for s, p in zip(part.source, part.pair, strict=True)]
            y = np.arange(len(part))
            err = np.vstack(
                [part.gap_points - part.ci_low_points, part.ci_high_points - part.gap_points]
            )
            ax.errorbar(part.gap_points, y, xerr=err, fmt="o", color="#1f4e79", capsize=3)
            ax.axvline(0, color="grey", lw=0.8)
            ax.set_title(metric.replace("_", " "))
            ax.set_xlabel("gap, points (minority - white)")
            ax.set_yticks(y, labels)
        axes[0].invert_yaxis()
        fig.suptitle("Within-location gaps, mean over locations, 95% location bootstrap", y=1.02)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return path


def write(table: pd.DataFrame, geos: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "disparities.csv", out_dir / "disparities_geographies.csv"]
    table.to_csv(files[0], index=False)
    geos.to_csv(files[1], index=False)
    md = out_dir / "disparities.md"
    md.write_text(markdown(table, geos))
    return [*files, md, plot(table, out_dir / "disparities.png")]
