"""The event contract: every kind of malformed message is rejected with the right reason."""

from __future__ import annotations

import pytest

from stopdrift_common.schema import (
    MAX_ARRAY_EVENTS,
    MAX_MESSAGE_BYTES,
    decode_message,
    dumps,
    make_event,
)


def good(**changes) -> dict:
    event = make_event(
        {
            "state": "AZ",
            "city": "Statewide",
            "geography": "AZ",
            "subgeography": "Apache County",
            "subject_race": "white",
            "search_rate": 0.01,
            "stop_rate": 0.07,
            "hit_rate": None,
            "inferred_threshold": None,
            "stops_per_year": 7064.9,
            "stop_rate_n": 293234.0,
        },
        source="state",
        row=0,
        loop=0,
        seq=0,
        produced_at=1700000000.0,
    )
    event.update(changes)
    return event


def reasons(raw: bytes) -> list[str]:
    return [r.reason for r in decode_message(raw).rejects]


def test_a_valid_event_passes_with_its_envelope():
    decoded = decode_message(dumps(good()))
    assert decoded.rejects == [] and not decoded.is_array
    assert decoded.valid[0]["event_id"] == "state-0-0"


def test_unknown_extra_fields_are_dropped_not_rejected():
    decoded = decode_message(dumps({**good(), "extra": 1}))
    assert decoded.rejects == [] and "extra" not in decoded.valid[0]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty_message"),
        (None, "empty_message"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), "oversize"),
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"state": "AZ"', "invalid_json"),
        (b"not json", "invalid_json"),
        (b"[]", "empty_array"),
        (b"42", "not_object"),
        (b'"AZ"', "not_object"),
    ],
)
def test_a_message_that_is_not_an_event_gets_one_reject(raw, reason):
    assert reasons(raw) == [reason]


def test_an_array_longer_than_the_limit_is_rejected_whole():
    assert reasons(dumps([good()] * (MAX_ARRAY_EVENTS + 1))) == ["array_too_long"]


def drop(field: str) -> dict:
    event = good()
    del event[field]
    return event


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (drop("state"), "missing_field:state"),
        (drop("produced_at"), "missing_field:produced_at"),
        (drop("stops_per_year"), "missing_field:stops_per_year"),
        (good(event_id=""), "wrong_type:event_id"),
        (good(event_id=5), "wrong_type:event_id"),
        (good(source="county"), "unknown_category:source"),
        (good(seq=-1), "out_of_range:seq"),
        (good(seq=1.5), "wrong_type:seq"),
        (good(seq=True), "wrong_type:seq"),
        (good(produced_at=None), "wrong_type:produced_at"),
        (good(produced_at="now"), "wrong_type:produced_at"),
        (good(state=None), "wrong_type:state"),
        (good(state=12), "wrong_type:state"),
        (good(state="ZZ"), "unknown_category:state"),
        (good(subject_race="martian"), "unknown_category:subject_race"),
        (good(city=3), "wrong_type:city"),
        (good(stops_per_year="many"), "wrong_type:stops_per_year"),
        (good(stops_per_year=True), "wrong_type:stops_per_year"),
        (good(stops_per_year=-1.0), "out_of_range:stops_per_year"),
        (good(hit_rate=1.5), "out_of_range:hit_rate"),
        (good(search_rate=-0.1), "out_of_range:search_rate"),
    ],
)
def test_each_bad_field_is_named_in_the_reason(event, reason):
    assert reasons(dumps(event)) == [reason]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected_as_not_finite(literal):
    # Python's json.dumps writes these non-standard literals for float('nan') / float('inf').
    raw = dumps(good()).replace(b'"stops_per_year":7064.9', f'"stops_per_year":{literal}'.encode())
    assert reasons(raw) == ["not_finite:stops_per_year"]


@pytest.mark.parametrize(
    ("field", "literal", "reason"),
    [
        ("stops_per_year", "9" * 400, "out_of_range:stops_per_year"),
        ("stops_per_year", "-" + "9" * 400, "out_of_range:stops_per_year"),
        ("seq", str(2**63), "out_of_range:seq"),
        ("seq", str(2**64), "wrong_type:seq"),  # orjson reads integers past 64 bits as floats
        ("seq", "9" * 400, "out_of_range:seq"),
        ("hit_rate", "1e400", "not_finite:hit_rate"),
    ],
)
def test_numbers_beyond_64_bits_or_float_range_are_rejects_not_errors(field, literal, reason):
    # orjson refuses the longest; the lenient decoder reads them as ints of any size (or inf).
    zero, value = f'"{field}":0'.encode(), f'"{field}":{literal}'.encode()
    raw = dumps(good(**{field: 0})).replace(zero, value)
    assert reasons(raw) == [reason]


def test_the_largest_64_bit_seq_is_valid():
    assert reasons(dumps(good(seq=2**63 - 1))) == []


def test_nullable_fields_may_be_null():
    event = good(subject_race=None, subgeography=None, search_rate=None, stop_rate=None)
    assert reasons(dumps(event)) == []


def test_array_keeps_valid_elements_and_rejects_bad_ones_with_index_and_element():
    bad = good(state="ZZ")
    decoded = decode_message(dumps([good(event_id="a"), bad, "x", good(event_id="b")]))
    assert decoded.is_array
    assert [e["event_id"] for e in decoded.valid] == ["a", "b"]
    assert [(r.reason, r.index) for r in decoded.rejects] == [
        ("unknown_category:state", 1),
        ("not_object", 2),
    ]
    assert decoded.rejects[0].element == bad
