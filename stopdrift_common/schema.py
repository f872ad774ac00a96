"""The event contract: what a message on ``stops.raw`` may hold, and its validation.

A message is one flat JSON object (a CSV row's columns plus the envelope fields) or a JSON array
of 1..MAX_ARRAY_EVENTS such objects. ``decode_message`` turns raw bytes into valid rows and
rejects, each reject with a machine-readable reason (``code`` or ``code:field``).

>>> ok = make_event({"state": "AZ", "city": "Statewide", "geography": "AZ",
...     "subgeography": "Apache County", "subject_race": "white", "search_rate": None,
...     "stop_rate": 0.07, "hit_rate": None, "inferred_threshold": None,
...     "stops_per_year": 7064.9, "stop_rate_n": 293234.0}, source="state", row=0, loop=0, seq=0,
...     produced_at=1.0)
>>> ok["event_id"]
'state-0-0'
>>> d = decode_message(dumps(ok))
>>> len(d.valid), d.rejects
(1, [])
>>> decode_message(b'{"state": 1}').rejects[0].reason
'missing_field:city'
>>> decode_message(b'[]').rejects[0].reason
'empty_array'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

# --- columns -------------------------------------------------------------------------------------
NUMERIC_COLUMNS = [
    "search_rate",
    "stop_rate",
    "hit_rate",
    "inferred_threshold",
    "stops_per_year",
    "stop_rate_n",
]
TEXT_COLUMNS = ["state", "city", "geography", "subgeography", "subject_race"]
CSV_COLUMNS = TEXT_COLUMNS + NUMERIC_COLUMNS
ENVELOPE_FIELDS = ["event_id", "source", "seq", "produced_at"]
EVENT_FIELDS = CSV_COLUMNS + ENVELOPE_FIELDS

TARGET = "subject_race"
CLASSES = ["black", "hispanic", "white"]
SOURCES = ["state", "city"]

# Model inputs, and the columns left out of the model with the reason why.
MODEL_FEATURES = ["state", "search_rate", "hit_rate", "inferred_threshold", "stops_per_year"]
NUMERIC_FEATURES = ["search_rate", "hit_rate", "inferred_threshold", "stops_per_year"]
CATEGORICAL_FEATURES = ["state"]
EXCLUDED_COLUMNS = {
    "stop_rate": "leaks the target: stops / population of that race, so with the location it "
    "identifies the race group almost exactly",
    "stop_rate_n": "leaks the target: the population of that race group at that location",
    "subgeography": "identifier: lets the model memorise locations (county/district names)",
    "city": "identifier: free-text location name",
    "geography": "identifier: free-text location name",
}

# Known values. A state outside US_STATES is invalid (DLQ); a valid state that the model never
# saw is a drift signal (the unseen-category share), not an error.
US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH "  # noqa: SIM905
    "NJ NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR".split()
)
# Valid ranges of the numeric columns (inclusive); None means unbounded.
RANGES: dict[str, tuple[float, float | None]] = {
    "search_rate": (0.0, 1.0),
    "stop_rate": (0.0, None),
    "hit_rate": (0.0, 1.0),
    "inferred_threshold": (0.0, 1.0),
    "stops_per_year": (0.0, None),
    "stop_rate_n": (0.0, None),
}
NULLABLE_TEXT = {"subgeography", "subject_race", "city", "geography"}
MAX_ARRAY_EVENTS = 1000
MAX_MESSAGE_BYTES = 1_000_000
# Numbers are range-checked as they are decoded: integers must fit in 64 bits (a seq in
# [0, 2^63)), floats must be finite. Python's json (the fallback decoder) accepts integers of
# any length, and float(10**400) raises; such a value is a reject, never an exception.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# --- building events -----------------------------------------------------------------------------
def event_id(source: str, row: int, loop: int) -> str:
    """Stable id: the same CSV row replayed in the same loop always gets the same id."""
    return f"{source}-{loop}-{row}"


def make_event(
    values: dict[str, Any], *, source: str, row: int, loop: int, seq: int, produced_at: float
) -> dict[str, Any]:
    """A CSV row (NaN already turned into None) plus the envelope fields."""
    event = {col: values.get(col) for col in CSV_COLUMNS}
    event.update(
        event_id=event_id(source, row, loop), source=source, seq=seq, produced_at=produced_at
    )
    return event


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


# --- validation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reject:
    reason: str
    index: int | None = None  # position in an array message
    element: Any = None  # the offending element of an array message
    seq: int = -1  # the rejected event's seq, when it could be read (drift windows)


@dataclass
class Decoded:
    valid: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    is_array: bool = False
    valid_index: list[int] = field(default_factory=list)  # each valid event's array index


def validate_event(obj: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Return ``(event, None)`` when ``obj`` follows the contract, else ``(None, reason)``.

    Unknown extra fields are ignored (dropped) so producers can add fields without breaking
    older workers.

    >>> validate_event({**{c: None for c in EVENT_FIELDS}, "state": "ZZ"})[1]
    'wrong_type:event_id'
    """
    if _plainly_valid(obj):  # the common case, decided in a fraction of the checks' time
        return {name: obj[name] for name in EVENT_FIELDS}, None
    if not isinstance(obj, dict):
        return None, "not_object"
    for name in EVENT_FIELDS:
        if name not in obj:
            return None, f"missing_field:{name}"
    if not isinstance(obj["event_id"], str) or not obj["event_id"]:
        return None, "wrong_type:event_id"
    if obj["source"] not in SOURCES:
        return None, "unknown_category:source"
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None, "wrong_type:seq"
    if not 0 <= seq <= INT64_MAX:
        return None, "out_of_range:seq"
    reason = _check_number("produced_at", obj["produced_at"], (0.0, None), nullable=False)
    if reason:
        return None, reason
    for name in TEXT_COLUMNS:
        value = obj[name]
        if value is None and name in NULLABLE_TEXT:
            continue
        if not isinstance(value, str):
            return None, f"wrong_type:{name}"
    if obj["state"] not in US_STATES:
        return None, "unknown_category:state"
    if obj["subject_race"] is not None and obj["subject_race"] not in CLASSES:
        return None, "unknown_category:subject_race"
    for name in NUMERIC_COLUMNS:
        reason = _check_number(name, obj[name], RANGES[name], nullable=True)
        if reason:
            return None, reason
    return {name: obj[name] for name in EVENT_FIELDS}, None


_SOURCE_SET = frozenset(SOURCES)
_CLASS_SET = frozenset(CLASSES)
_FLOAT_MAX = 1.7976931348623157e308  # a finite upper bound: inf and NaN fail the fast check
# (name, nullable) of the text columns, and (name, low, high) of the numeric ones
_TEXT_CHECKS = tuple((name, name in NULLABLE_TEXT) for name in TEXT_COLUMNS)
_NUMBER_CHECKS = tuple(
    (name, RANGES[name][0], _FLOAT_MAX if RANGES[name][1] is None else RANGES[name][1])
    for name in NUMERIC_COLUMNS
)


def _plainly_valid(obj: Any) -> bool:
    """True only for an event that ``validate_event``'s checks all accept, with exact types
    (str, int, float, None) and no edge case: about a third of their cost per event, the worker's
    largest per-event Python cost. False means "run the full checks" (which give the reason),
    never "invalid", so the contract is decided by the checks alone.

    >>> ok = make_event({"state": "AZ", "stops_per_year": 1.5}, source="city", row=0, loop=0,
    ...                 seq=0, produced_at=1.0)
    >>> _plainly_valid(ok), _plainly_valid({**ok, "hit_rate": float("nan")})
    (True, False)
    >>> _plainly_valid({**ok, "seq": True}), _plainly_valid({**ok, "stop_rate": 10**400})
    (False, False)
    """
    if type(obj) is not dict:
        return False
    try:
        event_id_ = obj["event_id"]
        source = obj["source"]
        seq = obj["seq"]
        produced_at = obj["produced_at"]
        if not (
            type(event_id_) is str
            and event_id_
            and type(source) is str
            and source in _SOURCE_SET
            and type(seq) is int
            and 0 <= seq <= INT64_MAX
            and type(produced_at) in (float, int)
            and 0.0 <= produced_at <= _FLOAT_MAX
        ):
            return False
        for name, nullable in _TEXT_CHECKS:
            value = obj[name]
            if type(value) is not str and not (value is None and nullable):
                return False
        if obj["state"] not in US_STATES:
            return False
        race = obj["subject_race"]
        if race is not None and race not in _CLASS_SET:
            return False
        for name, low, high in _NUMBER_CHECKS:
            value = obj[name]
            if value is not None and not (type(value) in (float, int) and low <= value <= high):
                return False
            if type(value) is int and value > INT64_MAX:  # an int beyond 64 bits
                return False
    except KeyError:  # a missing field: the checks name it
        return False
    return True


def readable_seq(obj: Any) -> int:
    """The ``seq`` of a decoded element if it is a valid one, else -1: a rejected event still
    belongs to its drift window when its seq can be read.

    >>> readable_seq({"seq": 12, "hit_rate": 7}), readable_seq({"seq": 2**64}), readable_seq(3)
    (12, -1, -1)
    """
    if isinstance(obj, dict):
        seq = obj.get("seq")
        if type(seq) is int and 0 <= seq <= INT64_MAX:
            return seq
    return -1


def reject_field(reason: str) -> str:
    """The field a reject names (``out_of_range:hit_rate`` -> ``hit_rate``), or ``message``
    when the message as a whole was rejected.

    >>> reject_field("out_of_range:hit_rate"), reject_field("invalid_json")
    ('hit_rate', 'message')
    """
    code, _, name = reason.partition(":")
    return name if name in EVENT_FIELDS else "message"


def _check_number(
    name: str, value: Any, bounds: tuple[float, float | None], *, nullable: bool
) -> str | None:
    if value is None:
        return None if nullable else f"wrong_type:{name}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"wrong_type:{name}"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return f"out_of_range:{name}"
    elif not math.isfinite(value):
        return f"not_finite:{name}"
    low, high = bounds
    if value < low or (high is not None and value > high):
        return f"out_of_range:{name}"
    return None


_INVALID = object()


def _lenient_loads(text: str) -> Any:
    """Second chance for what orjson refuses: Python's ``json.dumps`` writes NaN/Infinity
    literals (and integers beyond 64 bits), so such a producer gets the precise reason
    (``not_finite:<field>``) instead of ``invalid_json``. Only on the error path: no cost for
    valid messages.

    >>> _lenient_loads('{"x": NaN}')
    {'x': nan}
    >>> _lenient_loads('{"x": ') is _INVALID
    True
    """
    import json

    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _INVALID


def decode_message(raw: bytes | None) -> Decoded:
    """Decode one Kafka message value into valid events and rejects (never raises)."""
    out = Decoded()
    if raw is None or len(raw) == 0:
        out.rejects.append(Reject("empty_message"))
        return out
    if len(raw) > MAX_MESSAGE_BYTES:
        out.rejects.append(Reject("oversize"))
        return out
    try:
        obj = orjson.loads(raw)  # valid UTF-8 and JSON (nearly always): no str copy needed
    except orjson.JSONDecodeError:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            out.rejects.append(Reject("not_utf8"))
            return out
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            obj = _lenient_loads(text)
            if obj is _INVALID:
                out.rejects.append(Reject("invalid_json"))
                return out
    if isinstance(obj, list):
        out.is_array = True
        if not obj:
            out.rejects.append(Reject("empty_array"))
        elif len(obj) > MAX_ARRAY_EVENTS:
            out.rejects.append(Reject("array_too_long"))
        else:
            for i, element in enumerate(obj):
                event, reason = validate_event(element)
                if event is None:
                    out.rejects.append(
                        Reject(reason or "invalid", i, element, readable_seq(element))
                    )
                else:
                    out.valid.append(event)
                    out.valid_index.append(i)
        return out
    event, reason = validate_event(obj)
    if event is None:
        out.rejects.append(Reject(reason or "invalid", seq=readable_seq(obj)))
    else:
        out.valid.append(event)
        out.valid_index.append(0)
    return out
