"""`stopdrift analyze`: the top 10 against an independent computation, the profiles, and one clear
line for each kind of bad input file."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest

from stopdrift import cli
from stopdrift_common.settings import PROJECT_ROOT

DATA_DIR = PROJECT_ROOT / "data"
FILES = {"state": "opp-stops_state.csv", "city": "opp-stops_city.csv"}


def csv_top10(source: str) -> list[tuple[tuple[str, ...], float]]:
    """Top 10 by summed stops_per_year with the csv module only (no pandas)."""
    keys = ("state",) if source == "state" else ("city", "state")
    totals: dict[tuple[str, ...], float] = defaultdict(float)
    with open(DATA_DIR / FILES[source], newline="") as f:
        for row in csv.DictReader(f):
            if row["stops_per_year"] not in ("", "NA"):
                totals[tuple(row[k] for k in keys)] += float(row["stops_per_year"])
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:10]


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    runs = tmp_path_factory.mktemp("analyze")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["analyze", "--runs-dir", str(runs)])
    assert code == 0
    return runs / "analyze", out.getvalue()


@pytest.mark.parametrize("source,plural", [("state", "states"), ("city", "cities")])
def test_top10_matches_an_independent_computation(analyzed, source: str, plural: str) -> None:
    out_dir, _ = analyzed
    expected = csv_top10(source)
    payload = json.loads((out_dir / f"top10_{plural}.json").read_text())
    keys = ("state",) if source == "state" else ("city", "state")
    got = [(tuple(r[k] for k in keys), r["stops"]) for r in payload["rows"]]
    assert [k for k, _ in got] == [k for k, _ in expected]
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-9)
    with open(out_dir / f"top10_{plural}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == list(range(1, 11))
    assert [tuple(r[k] for k in keys) for r in rows] == [k for k, _ in expected]


def test_printed_tables_say_what_stops_means(analyzed) -> None:
    _, printed = analyzed
    assert "Top 10 states by number of stops" in printed
    assert "Top 10 cities by number of stops" in printed
    assert "average annual number of traffic stops" in printed
    assert "Los Angeles" in printed and "CA" in printed


def test_profiles_are_titled_html_reports(analyzed) -> None:
    out_dir, _ = analyzed
    assert "State Level Profiling Report" in (out_dir / "profile_state.html").read_text()
    assert "City Level Profiling Report" in (out_dir / "profile_city.html").read_text()


def test_no_profile_skips_the_reports(tmp_path: Path, capsys) -> None:
    assert cli.main(["analyze", "--no-profile", "--runs-dir", str(tmp_path)]) == 0
    assert not list((tmp_path / "analyze").glob("*.html"))
    assert (tmp_path / "analyze" / "top10_cities.json").is_file()


def _header() -> str:
    return (DATA_DIR / FILES["state"]).read_text().splitlines()[0]


def _rows(n: int = 5) -> list[str]:
    return (DATA_DIR / FILES["state"]).read_text().splitlines()[1 : n + 1]


BAD_FILES = {
    "missing column": (
        lambda: "\n".join(
            [",".join(c for c in _header().split(",") if c != "hit_rate")]
            + [",".join(v for i, v in enumerate(r.split(",")) if i != 7) for r in _rows()]
        ),
        "missing column(s) hit_rate",
    ),
    "renamed column": (
        lambda: "\n".join([_header().replace("stops_per_year", "stops_year"), *_rows()]),
        "missing column(s) stops_per_year",
    ),
    "empty file": (lambda: "", "the file is empty"),
    "text in a numeric column": (
        lambda: "\n".join([_header(), *_rows(2), _rows(3)[2].replace(",NA,", ",many,", 1)]),
        "column search_rate must be numeric, found text 'many'",
    ),
}


@pytest.mark.parametrize("command", [["analyze", "--no-profile"], ["train", "--source", "state"]])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_gives_one_line_and_exit_1(tmp_path: Path, capsys, case, command) -> None:
    content, message = BAD_FILES[case]
    data = tmp_path / "data"
    data.mkdir()
    (data / FILES["state"]).write_text(content())
    (data / FILES["city"]).write_text((DATA_DIR / FILES["city"]).read_text())
    # An MLflow URI where nothing listens: the data must be rejected before the server is asked.
    code = cli.main(
        [
            *command,
            "--data-dir",
            str(data),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--mlflow-uri",
            "http://127.0.0.1:9",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1, err
    assert message in err[0] and FILES["state"] in err[0]


# --- disparities ------------------------------------------------------------------------------


def small_table():
    import pandas as pd

    # A: two locations, gaps 3 and 1 points; B: one location, gap 6 points; C: no white rate
    return pd.DataFrame(
        {
            "state": ["A"] * 4 + ["B"] * 3 + ["C"] * 2,
            "city": "Statewide",
            "geography": ["A"] * 4 + ["B"] * 3 + ["C"] * 2,
            "subgeography": ["x", "x", "y", "y", "z", "z", "z", "w", "w"],
            "subject_race": ["black", "white"] * 2
            + ["black", "white", "hispanic"]
            + ["black", "white"],
            "search_rate": [0.05, 0.02, 0.04, 0.03, 0.09, 0.03, 0.05, 0.04, None],
            "hit_rate": None,
            "inferred_threshold": None,
        }
    )


def test_disparities_of_a_small_table_exactly() -> None:
    from training import disparities

    table = disparities.disparity_table(small_table(), "state", n_boot=1000, seed=7)
    row = table[(table.metric == "search_rate") & (table.pair == "black-white")].iloc[0]
    assert (row.n_locations, row.n_geographies) == (3, 2)
    assert (row.minority_points, row.white_points, row.gap_points) == (6.0, 2.6667, 3.3333)
    # three locations: a resample of one gap three times has probability 1/27 > 2.5%, so the
    # 95% interval runs from the smallest gap (1) to the largest (6)
    assert (row.ci_low_points, row.ci_high_points) == (1.0, 6.0)
    hw = table[(table.metric == "search_rate") & (table.pair == "hispanic-white")].iloc[0]
    assert (hw.n_locations, hw.gap_points) == (1, 2.0)
    assert table[table.metric == "hit_rate"].n_locations.tolist() == [0, 0]
    geos = disparities.geographies(small_table(), "state")
    assert geos[["pair", "rank", "geography", "n_locations", "gap_points"]].values.tolist() == [
        ["black-white", 1, "B statewide", 1, 6.0],
        ["black-white", 2, "A statewide", 2, 2.0],
        ["hispanic-white", 1, "B statewide", 1, 2.0],
    ]


def csv_mean_gap(source: str, metric: str, minority: str) -> tuple[int, float]:
    """Locations with both rates, and their mean gap in points, with the csv module only."""
    values: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    with open(DATA_DIR / FILES[source], newline="") as f:
        for row in csv.DictReader(f):
            if row[metric] not in ("", "NA"):
                key = tuple(row[k] for k in ("state", "city", "geography", "subgeography"))
                values[key][row["subject_race"]] = float(row[metric])
    gaps = [v[minority] - v["white"] for v in values.values() if minority in v and "white" in v]
    return len(gaps), 100 * sum(gaps) / len(gaps)


def test_analyze_reports_disparities_of_both_tables(tmp_path: Path, capsys) -> None:
    args = ["analyze", "--no-profile", "--bootstrap", "300", "--runs-dir", str(tmp_path)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "Within-location gaps" in printed
    out = tmp_path / "analyze"
    with open(out / "disparities.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["metric"], r["pair"]) for r in rows][:2] == [
        ("state", "search_rate", "black-white"),
        ("state", "search_rate", "hispanic-white"),
    ]
    assert len(rows) == 12 and {r["seed"] for r in rows} == {"42"}
    for r in rows:
        n, gap = csv_mean_gap(r["source"], r["metric"], r["pair"].split("-")[0])
        assert int(r["n_locations"]) == n
        assert float(r["gap_points"]) == pytest.approx(gap, abs=1e-4)
        assert float(r["ci_low_points"]) < float(r["gap_points"]) < float(r["ci_high_points"])
    assert [int(r["n_locations"]) for r in rows] == [225] * 6 + [58] * 6
    # the sign OPP reports for the state black-white hit rate, unweighted over locations
    assert float(rows[2]["gap_points"]) == -0.4556
    with open(out / "disparities_geographies.csv", newline="") as f:
        geos = list(csv.DictReader(f))
    assert geos[0]["geography"] == "WI statewide" and geos[0]["gap_points"] == "5.1468"
    md = (out / "disparities.md").read_text()
    assert "not evidence of discrimination, nor of its absence" in md
    assert "infra-marginality" in md and "300 location-bootstrap resamples (seed 42)" in md
    assert (out / "disparities.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
