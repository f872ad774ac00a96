"""``stopdrift analyze``: ydata profiles of the state and city tables, the top 10 locations by
number of stops, and the disparities within locations (``training/disparities.py``). One code
path serves both tables, parametrised by source.

>>> import pandas as pd
>>> df = pd.DataFrame({"city": ["A", "A", "B", "A"], "state": ["X", "X", "Y", "Z"],
...                    "stops_per_year": [1.0, 2.0, 2.5, 0.5]})
>>> top_locations(df, "city", n=2).values.tolist()
[[1, 'A', 'X', 3.0], [2, 'B', 'Y', 2.5]]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from stopdrift_common.data import load_source
from stopdrift_common.schema import SOURCES
from stopdrift_common.settings import Settings
from training import disparities


@dataclass(frozen=True)
class SourceSpec:
    """How one table is grouped into locations and named in outputs."""

    source: str
    keys: tuple[str, ...]  # a city is only unique within its state
    plural: str
    title: str


SPECS = {
    "state": SourceSpec("state", ("state",), "states", "State Level Profiling Report"),
    "city": SourceSpec("city", ("city", "state"), "cities", "City Level Profiling Report"),
}

STOPS_MEANING = (
    "stops = average annual number of traffic stops (stops_per_year), summed over the race "
    "groups and sub-areas of that location, from the Stanford Open Policing Project summary tables"
)


def top_locations(df: pd.DataFrame, source: str, n: int = 10) -> pd.DataFrame:
    """The ``n`` locations with the most stops (sum of ``stops_per_year`` over their rows)."""
    keys = list(SPECS[source].keys)
    totals = (
        df.groupby(keys, dropna=False)["stops_per_year"]
        .sum()
        .reset_index()
        .rename(columns={"stops_per_year": "stops"})
        # Ties broken by name so the ranking is reproducible.
        .sort_values(["stops", *keys], ascending=[False] + [True] * len(keys), kind="stable")
        .head(n)
        .reset_index(drop=True)
    )
    totals.insert(0, "rank", range(1, len(totals) + 1))
    return totals


def format_top(top: pd.DataFrame, source: str) -> str:
    shown = top.copy()
    shown["stops"] = shown["stops"].map(lambda v: f"{v:,.0f}")
    table = shown.to_string(index=False)
    return f"Top {len(top)} {SPECS[source].plural} by number of stops\n{table}"


def write_top(top: pd.DataFrame, source: str, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"top10_{SPECS[source].plural}"
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    top.to_csv(csv_path, index=False)
    payload = {"source": source, "meaning": STOPS_MEANING, "rows": top.to_dict("records")}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return [csv_path, json_path]


def profile(df: pd.DataFrame, title: str, path: Path, minimal: bool = True) -> Path:
    """Write a ydata-profiling HTML report of ``df`` (the constant ``source`` column dropped)."""
    import contextlib
    import io
    import warnings

    from ydata_profiling import ProfileReport

    path.parent.mkdir(parents=True, exist_ok=True)
    data = df.drop(columns=["source"], errors="ignore")
    # ydata 4.18 draws one progress bar even with progress_bar=False; keep the terminal readable.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # ydata's own deprecation chatter, not user facing
        report = ProfileReport(data, title=title, minimal=minimal, progress_bar=False)
        report.to_file(path, silent=True)
    return path


def analyze_source(
    settings: Settings, source: str, out_dir: Path, make_profile: bool, minimal: bool
) -> tuple[pd.DataFrame, list[Path]]:
    spec = SPECS[source]
    df = load_source(settings.data_dir, source)
    top = top_locations(df, source)
    files = write_top(top, source, out_dir)
    if make_profile:
        files.append(profile(df, spec.title, out_dir / f"profile_{source}.html", minimal=minimal))
    return top, files


def analyze_disparities(settings: Settings, out_dir: Path, n_boot: int) -> list[Path]:
    """Within-location gaps of both tables: printed, and written as CSV, markdown and PNG."""
    tables, geos = [], []
    for source in SOURCES:
        df = load_source(settings.data_dir, source)
        tables.append(disparities.disparity_table(df, source, n_boot=n_boot, seed=settings.seed))
        geos.append(disparities.geographies(df, source))
    table = pd.concat(tables, ignore_index=True)
    print(disparities.format_table(table))
    print()
    return disparities.write(table, pd.concat(geos, ignore_index=True), out_dir)


def run(args: argparse.Namespace, settings: Settings) -> int:
    out_dir = settings.runs_dir / "analyze"
    make_profile = not getattr(args, "no_profile", False)
    minimal = not getattr(args, "full_profile", False)
    written: list[Path] = []
    for source in SOURCES:
        top, files = analyze_source(settings, source, out_dir, make_profile, minimal)
        print(format_top(top, source))
        print()
        written += files
    print(STOPS_MEANING)
    print()
    written += analyze_disparities(settings, out_dir, getattr(args, "bootstrap", None) or 2000)
    print("written:")
    for path in written:
        print(f"  {path}")
    return 0
