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
