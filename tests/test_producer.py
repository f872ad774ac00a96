"""The producer's pure parts: scenarios are seeded and do what they say, event ids are stable,
every produced event satisfies the contract, arrays pack correctly, bad --batch is one line."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from producers import scenarios
from producers.events import check_batch, pack, to_events
from producers.replay import chunks, load_tables
from stopdrift.cli import main
from stopdrift_common.errors import UserError
from stopdrift_common.schema import MAX_ARRAY_EVENTS, NUMERIC_FEATURES, decode_message


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    from stopdrift_common.settings import PROJECT_ROOT, Settings

    return load_tables(Settings(data_dir=PROJECT_ROOT / "data"))


def replay(tables, scenario, source="state", loops=1, limit=None, chunk_events=700):
    parts = [c for _, c in chunks(tables, scenario, source, loops, limit, chunk_events)]
    return pd.concat(parts)


def test_the_none_scenario_is_a_seeded_shuffle_of_the_whole_table(tables):
    a = replay(tables, scenarios.build("none", seed=1))
    b = replay(tables, scenarios.build("none", seed=1))
    c = replay(tables, scenarios.build("none", seed=2))
    pd.testing.assert_frame_equal(a, b)
    assert not a["_row"].equals(c["_row"])
    assert sorted(a["_row"]) == list(range(len(tables["state"])))  # each row once per loop


def test_each_loop_has_its_own_order_and_its_own_event_ids(tables):
    rows = replay(tables, scenarios.build("none"), loops=2)
    first, second = rows[rows["_loop"] == 0], rows[rows["_loop"] == 1]
    assert len(first) == len(second) == len(tables["state"])
    assert not first["_row"].reset_index(drop=True).equals(second["_row"].reset_index(drop=True))
    ids = [e["event_id"] for e in to_events(rows, 0, 1.0)]
    assert len(set(ids)) == len(ids)


def test_event_ids_do_not_depend_on_the_seed_or_chunking(tables):
    a = to_events(replay(tables, scenarios.build("none", seed=1), chunk_events=100), 0, 1.0)
    b = to_events(replay(tables, scenarios.build("none", seed=9), chunk_events=999), 0, 1.0)
    by_id = {e["event_id"]: e for e in b}
    for event in a[:200]:
        twin = by_id[event["event_id"]]
        assert {k: v for k, v in twin.items() if k != "seq"} == {
            k: v for k, v in event.items() if k != "seq"
        }


def test_natural_replays_states_then_cities(tables):
    rows = replay(tables, scenarios.build("natural"))
    n_state = len(tables["state"])
    assert (rows["source"].iloc[:n_state] == "state").all()
    assert (rows["source"].iloc[n_state:] == "city").all()
    assert len(rows) == n_state + len(tables["city"])


def test_shift_multiplies_the_feature_from_the_given_event_on(tables):
    base = replay(tables, scenarios.build("none"), limit=1000)
    shifted = replay(tables, scenarios.build("shift", at=400, factor=2.0), limit=1000)
    before, after = slice(0, 400), slice(400, 1000)
    pd.testing.assert_frame_equal(base.iloc[before], shifted.iloc[before])
    np.testing.assert_allclose(
        shifted["stops_per_year"].iloc[after], 2.0 * base["stops_per_year"].iloc[after]
    )


def test_shift_of_a_rate_stays_in_its_valid_range(tables):
    shifted = replay(tables, scenarios.build("shift", feature="hit_rate", factor=50.0))
    assert shifted["hit_rate"].max() <= 1.0
    events = to_events(shifted, 0, 1.0)
    assert all(not decode_message(orjson.dumps(e)).rejects for e in events)


def test_gradual_ramps_the_multiplier_in_over_the_span(tables):
    base = replay(tables, scenarios.build("none"), limit=1000)
    drift = replay(tables, scenarios.build("gradual", at=100, factor=3.0, span=400), limit=1000)
    ratio = (drift["stops_per_year"] / base["stops_per_year"]).to_numpy()
    assert np.allclose(ratio[:101], 1.0)
    assert np.allclose(ratio[300], 2.0)
    assert np.allclose(ratio[500:], 3.0)
    assert np.all(np.diff(ratio) >= -1e-12)


def test_missing_raises_the_missing_share_from_the_given_event_on(tables):
    base = replay(tables, scenarios.build("none"))
    blanked = replay(tables, scenarios.build("missing", at=1000, share=0.8, span=1000))
    nums = NUMERIC_FEATURES
    pd.testing.assert_frame_equal(base.iloc[:1000], blanked.iloc[:1000])
    before = base[nums].iloc[2000:].isna().mean().mean()
    after = blanked[nums].iloc[2000:].isna().mean().mean()
    assert after > before + 0.05  # most rates are missing already; stops_per_year never is
    assert blanked["stops_per_year"].iloc[2000:].isna().mean() == pytest.approx(0.8, abs=0.05)
    assert blanked["stops_per_year"].iloc[:1000].notna().all()


def test_missing_does_not_depend_on_the_chunk_size(tables):
    a = replay(tables, scenarios.build("missing", seed=3), chunk_events=128)
    b = replay(tables, scenarios.build("missing", seed=3), chunk_events=1000)
    pd.testing.assert_frame_equal(a, b)


def test_limit_stops_the_replay_exactly(tables):
    assert len(replay(tables, scenarios.build("none"), loops=3, limit=5000)) == 5000


def test_every_replayed_event_of_both_tables_satisfies_the_contract(tables):
    events = to_events(replay(tables, scenarios.build("natural")), 0, 1.0)
    assert all(e[c] is None or e[c] == e[c] for e in events for c in NUMERIC_FEATURES)  # no NaN
    for key, value, n in pack(events, batch=MAX_ARRAY_EVENTS):
        decoded = decode_message(value)
        assert decoded.rejects == [] and len(decoded.valid) == n
        assert key == decoded.valid[0]["state"].encode()


def test_arrays_hold_batch_consecutive_events_in_replay_order(tables):
    events = to_events(replay(tables, scenarios.build("none"), limit=3050), 0, 1.0)
    messages = list(pack(events, batch=100))
    assert [n for _, _, n in messages] == [100] * 30 + [50]
    seqs = [e["seq"] for _, value, _ in messages for e in orjson.loads(value)]
    assert seqs == list(range(3050))


def test_single_event_messages_are_keyed_by_state(tables):
    events = to_events(replay(tables, scenarios.build("none"), limit=50), 0, 1.0)
    for (key, value, n), event in zip(pack(events, batch=1), events, strict=True):
        assert n == 1 and key == event["state"].encode() and orjson.loads(value) == event


def test_a_batch_over_the_contract_limit_is_a_user_error(capsys):
    with pytest.raises(UserError, match="--batch"):
        check_batch(MAX_ARRAY_EVENTS + 1)
    assert main(["produce", "--batch", str(MAX_ARRAY_EVENTS + 1)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch" in err


def test_an_unknown_feature_for_shift_is_a_user_error():
    with pytest.raises(UserError, match="state"):
        scenarios.build("shift", feature="state")


def test_no_broker_is_a_one_line_user_error(capsys):
    from stopdrift.servers import free_port

    code = main(["produce", "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "stopdrift broker" in err


def test_a_scenario_start_beyond_the_run_is_a_user_error(capsys):
    from stopdrift.servers import free_port

    args = ["produce", "--scenario", "shift", "--at", "5000", "--limit", "4000"]
    code = main([*args, "--bootstrap-servers", f"127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--at 5000 is never reached" in err


# --- disparity scenarios ----------------------------------------------------------------------


def overall_search_rate(rows: pd.DataFrame) -> float:
    """Searches / stops: each row's search rate weighted by its stops."""
    rated = rows.dropna(subset=["search_rate"])
    return float(
        (rated["search_rate"] * rated["stops_per_year"]).sum() / rated["stops_per_year"].sum()
    )


def black_white_gap_points(rows: pd.DataFrame) -> float:
    from drift.disparity import within_location_gaps

    return round(100 * float(within_location_gaps(rows, "search_rate", "black")["gap"].mean()), 4)


def test_gap_scales_one_groups_search_rate_from_the_given_event_on(tables):
    base = replay(tables, scenarios.build("none"), limit=2000)
    gap = replay(tables, scenarios.build("gap-black", at=700, factor=1.5), limit=2000)
    pd.testing.assert_frame_equal(base.iloc[:700], gap.iloc[:700])
    after_b, after_g = base.iloc[700:], gap.iloc[700:]
    black = (after_b["subject_race"] == "black").to_numpy()
    np.testing.assert_allclose(
        after_g["search_rate"].to_numpy()[black], 1.5 * after_b["search_rate"].to_numpy()[black]
    )
    # every other row, and every other column of every row, is untouched
    pd.testing.assert_frame_equal(after_b[~black], after_g[~black])
    others = [c for c in base.columns if c != "search_rate"]
    pd.testing.assert_frame_equal(after_b[others], after_g[others])


def test_gap_flat_moves_two_groups_apart_and_keeps_the_overall_rate(tables):
    base = replay(tables, scenarios.build("none"))
    scenario = scenarios.build("gap-flat-black", at=0, factor=1.25)
    moved = replay(tables, scenario)
    assert round(scenario.white_factor, 4) == 0.8704  # black +25%, white -13%
    race = base["subject_race"].to_numpy()
    for group, factor in (("black", 1.25), ("white", scenario.white_factor), ("hispanic", 1.0)):
        at = race == group
        np.testing.assert_allclose(
            moved["search_rate"].to_numpy()[at], factor * base["search_rate"].to_numpy()[at]
        )
    # the overall search rate (searches / stops) is unchanged; the gap is not
    assert overall_search_rate(moved) == pytest.approx(overall_search_rate(base), rel=1e-12)
    assert round(overall_search_rate(base), 4) == 0.0232
    assert (black_white_gap_points(base), black_white_gap_points(moved)) == (1.9149, 3.0711)
    assert moved["search_rate"].mean() < 1.08 * base["search_rate"].mean()  # row mean: +7%
    events = to_events(moved, 0, 1.0)
    assert all(not decode_message(orjson.dumps(e)).rejects for e in events)


def test_gap_flat_on_both_tables_keeps_their_joint_overall_rate(tables):
    scenario = scenarios.build("gap-flat-hispanic", at=0, factor=1.2)
    base = replay(tables, scenarios.build("none"), source="both")
    moved = replay(tables, scenario, source="both")
    assert overall_search_rate(moved) == pytest.approx(overall_search_rate(base), rel=1e-12)
    assert 0 < scenario.white_factor < 1


def test_gap_scenarios_do_not_depend_on_the_chunk_size(tables):
    a = replay(tables, scenarios.build("gap-flat-black", at=1234, factor=1.3), chunk_events=97)
    b = replay(tables, scenarios.build("gap-flat-black", at=1234, factor=1.3), chunk_events=2000)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    "name,factor,message",
    [
        ("gap-flat-black", 3.0, "--factor 3 is too large for gap-flat-black"),
        ("gap-flat-white", 1.2, "unknown scenario"),
    ],
)
def test_impossible_gap_scenarios_are_user_errors(tables, name, factor, message):
    with pytest.raises(UserError, match=message):
        scenario = scenarios.build(name, factor=factor)
        scenario.rows(tables, "state", 0)


def test_an_impossible_gap_scenario_is_one_line_before_any_broker(capsys):
    from stopdrift.servers import free_port

    args = ["produce", "--scenario", "gap-flat-black", "--factor", "3", "--limit", "10"]
    code = main([*args, "--bootstrap-servers", f"127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "try --factor 1.25" in err
