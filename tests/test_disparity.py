"""The disparity statistics of the drift core: gaps from the recorded race within locations,
state that survives a restart and counts each event once, calibrated thresholds that hold on a
null replay and on held-out locations, a +50% gap change caught, a state-mix change and city
rows (new places) not read as a gap change."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from drift import disparity as dp
from stopdrift_common.settings import PROJECT_ROOT

DATA = PROJECT_ROOT / "data"
SEARCH_BW = "search_rate.black-white"
W = 500


@pytest.fixture(scope="module")
def state() -> pd.DataFrame:
    return pd.read_csv(DATA / "opp-stops_state.csv")


@pytest.fixture(scope="module")
def reference(state) -> dp.DisparityReference:
    return dp.DisparityReference(state)


@pytest.fixture(scope="module")
def calibration(reference) -> dp.DisparityCalibration:
    return dp.calibrate(reference, window_events=W, seed=42)


def replay(table: pd.DataFrame, loops: int, seed: int, first_seq: int = 0) -> pd.DataFrame:
    """Seeded shuffles of the table, one per loop, as ``stopdrift produce`` replays it."""
    parts = [
        table.sample(frac=1, random_state=np.random.default_rng([seed, loop]))
        for loop in range(loops)
    ]
    feed = pd.concat(parts, ignore_index=True)
    return feed.assign(seq=np.arange(first_seq, first_seq + len(feed)))


def widen_gap(feed: pd.DataFrame, table: pd.DataFrame, at: int, factor: float) -> pd.DataFrame:
    """From event ``at`` on, each location's black search rate moves so that its black-white
    gap is ``factor`` times the table's: black = white + factor * (black - white)."""
    white = dp.within_location_gaps(table, "search_rate", "black").set_index(list(dp.LOCATION))
    keys = pd.MultiIndex.from_frame(feed[list(dp.LOCATION)].map(dp._text))
    w = white["white"].reindex(keys).to_numpy()
    change = (feed["subject_race"] == "black").to_numpy() & (feed["seq"] >= at).to_numpy()
    change &= ~np.isnan(w)
    out = feed.copy()
    s = out["search_rate"].to_numpy().copy()
    s[change] = w[change] + factor * (s[change] - w[change])
    out["search_rate"] = s
    return out


def monitor_run(reference, calibration, feed: pd.DataFrame) -> list[dp.DisparityVerdict]:
    monitor = dp.DisparityMonitor(reference, calibration, window_events=W)
    verdicts = []
    for k in range(len(feed) // W):
        monitor.update(feed.iloc[k * W : (k + 1) * W])
        verdicts.append(monitor.close(k))
    return verdicts


def alerts(verdicts) -> list[tuple[int, str, str]]:
    return [(v.window, a.metric, a.pair) for v in verdicts for a in v.alerts]


# --- golden values on tiny tables ------------------------------------------------------------


def tiny(**columns) -> pd.DataFrame:
    base = {
        "state": "AA",
        "city": "Statewide",
        "geography": "AA",
        "hit_rate": np.nan,
        "inferred_threshold": np.nan,
    }
    return pd.DataFrame({**base, **columns})


def test_gaps_come_from_the_recorded_race_within_each_location() -> None:
    rows = tiny(
        subgeography=["x", "x", "x", "y", "y", "z"],
        subject_race=["black", "white", "hispanic", "black", "white", "black"],
        # the model's prediction is present and wrong: it must not matter
        predicted=["white", "black", "white", "white", "black", "white"],
        search_rate=[0.06, 0.02, 0.03, 0.05, np.nan, 0.04],
    )
    bw = dp.within_location_gaps(rows, "search_rate", "black")
    assert bw[["subgeography", "black", "white"]].values.tolist() == [["x", 0.06, 0.02]]
    assert bw["gap"].round(12).tolist() == [0.04]  # y has no white rate, z no white row
    hw = dp.within_location_gaps(rows, "search_rate", "hispanic")
    assert hw["gap"].round(12).tolist() == [0.01]


def test_the_stratified_rank_statistic_by_hand() -> None:
    # stratum A: reference gaps 1, 2, 3, 4, 5 points; stratum B: 10, 20, 30, 40, 50 points
    ref = dp.StatisticReference.of(
        pd.DataFrame(
            {
                "state": ["A"] * 5 + ["B"] * 5 + ["C"],
                "city": "Statewide",
                "geography": ["A"] * 5 + ["B"] * 5 + ["C"],
                "subgeography": [str(i) for i in range(11)],
                "gap": [0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9],
            }
        )
    )
    assert ref.strata == [("A", "Statewide", "A"), ("B", "Statewide", "B")]
    assert ref.sparse == {("C", "Statewide", "C")}
    gaps = {
        ("A", "Statewide", "A", "0"): 0.06,  # above all five: F = 1, score sqrt(3)
        ("A", "Statewide", "A", "9"): 0.03,  # ties the middle: F = 1/2, score 0
        ("B", "Statewide", "B", "q"): 0.25,  # above two of five: F = 0.4
        ("C", "Statewide", "C", "r"): 0.0,  # sparse geography: not tested
        ("D", "Statewide", "D", "s"): 0.0,  # never seen: a new place
    }
    z, tested, sparse, new = dp.gap_statistic(ref, gaps)
    # sum of scores (0.5 + 0 - 0.1) * sqrt(12); variance 2 (1 + 3/5) + 1 (1 + 2/5) = 4.6
    assert z == pytest.approx(0.4 * np.sqrt(12) / np.sqrt(4.6), abs=1e-12)
    assert round(z, 6) == 0.646058
    assert (len(tested), sparse, new) == (
        3,
        [("C", "Statewide", "C", "r")],
        [("D", "Statewide", "D", "s")],
    )


def test_the_state_reference_counts_locations_and_gaps(reference, state) -> None:
    ref = reference[SEARCH_BW]
    # independent count: locations with a black and a white search rate
    rated = state.dropna(subset=["search_rate"])
    keys = rated.assign(sub=rated["subgeography"].fillna(""))
    both = keys.groupby(["state", "sub"])["subject_race"].agg(set)
    assert len(ref.locations) == int(both.map(lambda s: {"black", "white"} <= s).sum()) == 225
    assert [g[0] for g in ref.strata] == ["CT", "IL", "NC", "SC", "TX", "WA"]
    assert sorted(g[0] for g in ref.sparse) == ["RI", "WI"]
    assert ref.n_locations == 217
    assert round(100 * float(ref.gaps.mean()), 4) == 1.9149


# --- the book: state across windows, each event once, restart ------------------------------


def test_a_row_touches_its_pair_when_the_partner_is_known_and_fresh() -> None:
    book = dp.GapBook(window_events=10, max_age=5)
    rows = tiny(
        subgeography=["x", "x", "y", "y", "x"],
        subject_race=["white", "black", "white", "black", "white"],
        search_rate=[0.02, 0.05, 0.01, 0.04, 0.03],
        seq=[0, 1, 2, 9, 12],
    )
    book.update(rows)
    first = book.close(0)
    x = ("AA", "Statewide", "AA", "x")
    # x touched at seq 1; y's black row at seq 9 finds its white partner 7 events old: stale
    assert {k: round(v, 6) for k, v in first.gaps(SEARCH_BW).items()} == {x: 0.03}
    assert first.stale == {SEARCH_BW: 1}
    second = book.close(1)  # x's new white value (seq 12) against black's (seq 1): 11 > 5
    assert second.gaps(SEARCH_BW) == {} and second.stale == {SEARCH_BW: 1}
    assert second.gaps(SEARCH_BW, scale=2) == first.gaps(SEARCH_BW)


def test_events_read_twice_count_once_and_late_rows_touch_nothing() -> None:
    book = dp.GapBook(window_events=4)
    rows = tiny(
        subgeography=["x", "x", "y", "y"],
        subject_race=["white", "black", "white", "black"],
        search_rate=[0.02, 0.05, 0.01, 0.04],
        seq=[0, 1, 2, 3],
    )
    book.update(rows, partition=[0, 0, 1, 1], position=[10, 11, 10, 11])
    book.update(rows, partition=[0, 0, 1, 1], position=[10, 11, 10, 11])  # re-read batch
    assert book.duplicates == 4
    assert len(book.close(0).gaps(SEARCH_BW)) == 2
    book.update(rows.iloc[:2], partition=[0, 0], position=[12, 13])  # new positions, seq of 0
    assert book.late == 2
    assert book.close(1).gaps(SEARCH_BW) == {}


def test_a_restart_in_the_middle_loses_no_state_and_counts_nothing_twice(
    reference, calibration, state
) -> None:
    feed = widen_gap(replay(state, 3, seed=5), state, at=5000, factor=1.5)
    partition = feed["state"].map(lambda s: hash(s) % 4).to_numpy()  # keyed by state
    position = np.arange(len(feed))

    def run(restart_after: int | None) -> list[dict]:
        monitor = dp.DisparityMonitor(reference, calibration, window_events=W)
        out = []
        for k in range(len(feed) // W):
            batch = slice(k * W, (k + 1) * W)
            monitor.update(feed.iloc[batch], partition[batch], position[batch])
            if k == restart_after:
                saved = json.loads(json.dumps(monitor.to_records()))
                monitor = dp.DisparityMonitor(reference, calibration, window_events=W)
                monitor.restore(saved)
                # the batch whose offsets were not committed comes again
                monitor.update(feed.iloc[batch], partition[batch], position[batch])
                assert monitor.book.duplicates == W
            out.append(monitor.close(k).to_dict())
        return out

    straight, restarted = run(None), run(9)
    assert restarted == straight
    assert any(v["alerts"] for v in straight)  # the run has alerts to compare


# --- calibration ------------------------------------------------------------------------------


def test_the_budget_is_split_over_scales_statistics_and_the_margin(calibration) -> None:
    # 1 per million events, windows of 500: 5e-4 per window, over 4 scales, 6 statistics, x2
    assert calibration.alpha == pytest.approx(5e-4 / (4 * 6 * 2))
    assert sorted(calibration.points) == sorted(dp.STATISTICS)
    assert [p.n for p in calibration.points[SEARCH_BW]] == [10, 20, 40, 80, 160, 217]
    floor = -np.log10(calibration.alpha)
    for name in dp.STATISTICS:
        assert all(floor <= p.threshold < floor + 1.5 for p in calibration.points[name])
    again = dp.DisparityCalibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert again.threshold(SEARCH_BW, 57) == calibration.threshold(SEARCH_BW, 57)
    assert again.calibrated(SEARCH_BW, 4.0, 57) == calibration.calibrated(SEARCH_BW, 4.0, 57)


def test_calibration_is_seeded(reference) -> None:
    a = dp.calibrate(reference, n_references=8, n_windows=300, seed=3).to_dict()
    b = dp.calibrate(reference, n_references=8, n_windows=300, seed=3).to_dict()
    assert a == b


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"false_alarms_per_million": 0}, "false_alarms_per_million"),
        ({"margin": 0.5}, "margin"),
    ],
)
def test_bad_calibration_arguments_name_the_value(reference, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        dp.calibrate(reference, **kwargs)


def test_bad_book_arguments_and_reference_columns_name_the_value() -> None:
    with pytest.raises(ValueError, match="window_events"):
        dp.GapBook(window_events=0)
    with pytest.raises(ValueError, match="give one of each per row"):
        rows = tiny(subgeography="x", subject_race="white", search_rate=[0.1, 0.2], seq=[0, 1])
        dp.GapBook().update(rows, partition=[0, 0], position=[1])
    with pytest.raises(ValueError, match="subject_race"):
        dp.DisparityReference(pd.DataFrame({c: [] for c in dp.LOCATION}))


# --- the null, a change, a state mix, new places ----------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_null_replay_raises_no_disparity_alert(reference, calibration, state, seed) -> None:
    verdicts = monitor_run(reference, calibration, replay(state, 4, seed))
    assert len(verdicts) == 32
    assert alerts(verdicts) == []
    assert sum(t.tested for v in verdicts for t in v.tests) > 600  # it did test


def test_held_out_locations_raise_no_disparity_alert(state) -> None:
    """Reference: a random half of the locations; stream: the other half (new subgeographies
    of known geographies, tested against them)."""
    keys = state[list(dp.LOCATION)].map(dp._text).apply(tuple, axis=1)
    locations = sorted(set(keys))
    chosen = np.random.default_rng(2).permutation(len(locations))[: len(locations) // 2]
    in_reference = keys.isin({locations[i] for i in chosen}).to_numpy()
    reference = dp.DisparityReference(state[in_reference])
    calibration = dp.calibrate(reference, window_events=W, seed=2)
    verdicts = monitor_run(reference, calibration, replay(state[~in_reference], 6, seed=2))
    assert alerts(verdicts) == []
    assert sum(t.tested for v in verdicts for t in v.tests) > 300


def test_a_50_percent_wider_black_white_search_gap_is_caught(reference, calibration, state) -> None:
    feed = widen_gap(replay(state, 4, seed=100), state, at=6250, factor=1.5)
    verdicts = monitor_run(reference, calibration, feed)
    found = alerts(verdicts)
    assert found[0] == (14, "search_rate", "black-white")  # 1,250 events after the change
    assert {(m, p) for _, m, p in found} == {("search_rate", "black-white")}
    assert all(w >= 12 for w, _, _ in found)  # nothing before the change
    alert = verdicts[-1].alerts[0].to_dict()
    assert alert["type"] == "disparity_alert"
    assert (alert["scale"], alert["n_locations"]) == (8, 217)
    assert alert["window_gap_points"] == pytest.approx(1.5 * alert["reference_gap_points"])
    assert alert["change_percent"] == pytest.approx(50.0)
    assert alert["top_geographies"][0]["geography"] == "TX statewide"
    assert alert["top_locations"][0]["location"] == "IL statewide / 14"
    assert alert["sparse_places"] == ["RI statewide", "WI statewide"]
    text = " ".join(alert["caveats"])
    for phrase in (
        "not evidence of discrimination, nor of its absence",
        "infra-marginality",
        "model estimates",
        "not individual stops",
        "Check label, quality and state-mix alerts first",
    ):
        assert phrase in text
    assert "discrimination detected" not in alert["summary"]


def test_a_state_mix_change_raises_no_disparity_alert(reference, calibration, state) -> None:
    """After one pass, only Illinois's rows arrive (and those of states without rates): the
    widest black-white search gaps of the table, 3 points above the reference's mean gap;
    within Illinois nothing moved."""
    ref = reference[SEARCH_BW]
    first = replay(state, 1, seed=7)
    only = state[state["state"].isin(["IL", "AZ", "CA"])]
    mix = replay(only, 20, seed=8, first_seq=len(first))
    feed = pd.concat([first, mix], ignore_index=True)
    verdicts = monitor_run(reference, calibration, feed)
    assert len(verdicts) == 8 + 20 * len(only) // W
    assert alerts(verdicts) == []
    late = [t for v in verdicts[9:] for t in v.tests if t.statistic == SEARCH_BW]
    assert {(t.n_locations, t.tested) for t in late if t.scale == 1} == {(20, True)}
    # an unstratified comparison would have seen a change of 3 points (+158%)
    mixed_gap = dp.within_location_gaps(mix, "search_rate", "black")["gap"].mean()
    assert round(100 * (mixed_gap - ref.gaps.mean()), 2) == 3.02


def test_city_rows_are_new_places_not_a_gap_change(reference, calibration, state) -> None:
    city = pd.read_csv(DATA / "opp-stops_city.csv")
    first = replay(state, 1, seed=1)
    feed = pd.concat([first, replay(city, 1, seed=1, first_seq=len(first))], ignore_index=True)
    verdicts = monitor_run(reference, calibration, feed)
    assert alerts(verdicts) == []
    named = {p for v in verdicts for p in v.new_places}
    assert {"Philadelphia, PA", "San Diego, CA", "Nashville, TN"} <= named
    assert not any(p.endswith("statewide") for p in named)
