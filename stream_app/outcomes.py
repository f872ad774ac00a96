"""One batch of raw messages -> exactly one outcome per event, whatever the bytes hold.

Every event gets one outcome: a scored result on ``stops.scored`` or a dead letter on
``stops.dlq`` with its reason. A single-event message gives one output message; an array
message gives ONE array output holding its valid elements' results in input order, and one
dead letter per bad element; a message rejected whole (bad JSON, oversize...) gives one dead
letter. Nothing here raises: an exception while decoding, validating, scoring or encoding an
event dead-letters that event (a failing scoring call is split in halves until the events it
cannot score are found: a few calls, not one per event). No Kafka here.

Outputs are bounded, so that no message can make the broker refuse an output (the worker exits
on such a failure, re-reads the batch, exits again): a key longer than ``MAX_KEY_BYTES`` rejects
its message whole and every output carries the key cut; a dead letter keeps a cut original or a
cut element (``dead_letter``); a scored output that would pass ``MAX_OUTPUT_BYTES`` gives up its
largest results as dead letters (``fit_output``).

The batch also yields its drift columns (``BatchOutcome.drift``): per valid event its position
in its partition, its seq, its features, prediction, confidence and label, and per dead letter
its position, seq (when readable) and the field and reason it was rejected for, which the
drift monitor turns into data-quality statistics.

>>> import numpy as np
>>> class Const:
...     def predict_proba(self, X):
...         return np.tile([0.1, 0.2, 0.7], (len(X), 1))
>>> from stopdrift_common.schema import make_event, dumps
>>> e = make_event({"state": "AZ", "stops_per_year": 10.0}, source="state", row=1, loop=0,
...                seq=1, produced_at=1.0)
>>> msgs = [InMessage(dumps(e), b"AZ", "stops.raw", 0, 5), InMessage(b"{", None, "stops.raw", 0, 6)]
>>> out = process_batch(msgs, Const(), ["black", "hispanic", "white"], "m", "3", "w1", now=2.0)
>>> out.per_message, dict(out.dlq_reasons)
([(1, 0), (0, 1)], {'invalid_json': 1})
>>> orjson.loads(out.scored[0][1])["predicted"], orjson.loads(out.dlq[0][1])["offset"]
('white', 6)
>>> out.drift["rejects"]["seq"], out.drift["rejects"]["field"]
([-1], ['message'])
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from stopdrift_common.schema import (
    MODEL_FEATURES,
    TARGET,
    Decoded,
    Reject,
    decode_message,
    reject_field,
)
from stream_app.scoring import features_frame, score

log = logging.getLogger("stopdrift.worker")

DLQ_RAW_LIMIT = 10_000  # bytes of the original message kept in a dead letter
# Bytes of a rejected array element's JSON kept in its dead letter (an event is about 400): an
# array of 1,000 elements gives up to 1,000 dead letters, each must stay small.
DLQ_ELEMENT_LIMIT = 1_000
MAX_KEY_BYTES = 256  # a key is a state code: a longer one is a whole-message reject
# Key + value of one output message. Under the producer's max request (2 MB, app.py) and Kafka's
# default broker message.max.bytes (about 1 MB): a refused output would be a deterministic
# write failure, and the worker exits on those, so it must never be produced.
MAX_OUTPUT_BYTES = 900_000
POSITION_BITS = 10  # an event's position: (offset << 10) | its index in an array message


@dataclass(frozen=True)
class InMessage:
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass
class BatchOutcome:
    scored: list[tuple[bytes | None, bytes]] = field(default_factory=list)  # (key, value)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    per_message: list[tuple[int, int]] = field(default_factory=list)  # (scored, dead letters)
    dlq_reasons: Counter = field(default_factory=Counter)  # reason code (no field) -> events
    produced_at: np.ndarray = field(default_factory=lambda: np.zeros(0))  # of scored events
    drift: dict[str, Any] = field(default_factory=dict)  # columns for the drift monitor

    @property
    def n_scored(self) -> int:
        return sum(s for s, _ in self.per_message)

    @property
    def n_dlq(self) -> int:
        return sum(d for _, d in self.per_message)


def split_by_size(messages: Sequence[InMessage], max_bytes: int) -> list[list[InMessage]]:
    """Consecutive groups of messages of at most ``max_bytes`` of values each (a larger message
    gets a group of its own). A take of 2,000 array messages can hold a million events: handled
    in groups, a batch's memory stays bounded and outputs start flowing sooner.

    >>> [len(g) for g in split_by_size([InMessage(b"x" * n, None, "t", 0, 0)
    ...                                   for n in (3, 3, 3, 9, 1)], max_bytes=6)]
    [2, 1, 1, 1]
    """
    groups: list[list[InMessage]] = []
    current: list[InMessage] = []
    size = 0
    for message in messages:
        n = len(message.value or b"")
        if current and size + n > max_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(message)
        size += n
    if current:
        groups.append(current)
    return groups


def reason_code(reason: str) -> str:
    """``out_of_range:hit_rate`` -> ``out_of_range`` (a bounded set, fit for a metric label)."""
    return reason.split(":", 1)[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cut_key(key: bytes | None) -> bytes | None:
    """The Kafka key every output of a message carries: at most ``MAX_KEY_BYTES`` of it (an
    array's dead letters each repeat it: a 200 kB key once made 200 MB of dead letters).

    >>> cut_key(b"AZ"), cut_key(None), len(cut_key(b"k" * 5000))
    (b'AZ', None, 256)
    """
    return key if key is None or len(key) <= MAX_KEY_BYTES else key[:MAX_KEY_BYTES]


def escaped_prefix(data: bytes, limit: int) -> str:
    r"""A prefix of UTF-8 ``data`` whose JSON string holds at most ``limit`` bytes between its
    quotes: escaping (``"`` and ``\`` double, a control character takes 6 bytes) counts.

    >>> escaped_prefix(b'{"a":1}', 5), escaped_prefix("été".encode(), 4), escaped_prefix(b"\0", 5)
    ('{"a', 'ét', '')
    """
    text = data[:limit].decode("utf-8", "ignore")  # "ignore": a character cut in the middle
    while (over := len(orjson.dumps(text)) - 2 - limit) > 0:
        text = text[:-over]  # each character costs at least one byte: fits after one cut
    return text


def original_fields(raw: bytes) -> dict[str, Any]:
    r"""The original message in its dead letter: its size and sha256, and its first
    ``DLQ_RAW_LIMIT`` bytes as text when UTF-8 that escaping at most doubles, else base64.

    >>> f = original_fields(b"\x00" * 20000)
    >>> f["original_size"], f["original_truncated"], len(f["original_base64"])
    (20000, True, 13336)
    >>> original_fields(b'{"a": 1')["original_text"]
    '{"a": 1'
    """
    kept = raw[:DLQ_RAW_LIMIT]
    fields: dict[str, Any] = {
        "original_size": len(raw),
        "original_sha256": sha256(raw),
        "original_truncated": len(raw) > len(kept),
    }
    try:
        text = kept.decode("utf-8")
        if len(orjson.dumps(text)) <= 2 * len(kept) + 2:
            fields["original_text"] = text
            return fields
    except UnicodeDecodeError:
        pass
    fields["original_base64"] = base64.b64encode(kept).decode("ascii")  # 4/3 of the bytes
    return fields


def element_fields(element: Any) -> dict[str, Any]:
    """A rejected array element in its dead letter: ``element`` (as JSON) when its encoding
    holds in ``DLQ_ELEMENT_LIMIT`` bytes, else a prefix of that encoding (``element_text``)
    with the encoding's size and sha256. An element orjson cannot write (an integer beyond 64
    bits, a lone surrogate, deep nesting) is kept as its ``repr`` (``element_repr``), cut the
    same way. Re-encoding grows numbers (``9e15`` is written ``9000000000000000.0``): the cut
    applies to the encoding, not to the input.

    >>> orjson.dumps(element_fields({"state": "ZZ"}))
    b'{"element":{"state":"ZZ"}}'
    >>> f = element_fields([9e15] * 1000)
    >>> f["element_size"], f["element_truncated"], len(f["element_text"]) <= DLQ_ELEMENT_LIMIT
    (19001, True, True)
    >>> sorted(element_fields(2**70))
    ['element_repr']
    """
    try:
        encoded = orjson.dumps(element, option=orjson.OPT_NON_STR_KEYS)
        name = "element_text"
    except (TypeError, orjson.JSONEncodeError):
        try:
            encoded = repr(element).encode("utf-8", "backslashreplace")
        except Exception:  # RecursionError, or a digit limit: the type still says something
            encoded = f"<{type(element).__name__}>".encode()
        name = "element_repr"
    if name == "element_text" and len(encoded) <= DLQ_ELEMENT_LIMIT:
        return {"element": orjson.Fragment(encoded)}  # written as is: no second encoding
    text = escaped_prefix(encoded, DLQ_ELEMENT_LIMIT)
    if len(text.encode()) == len(encoded):
        return {name: text}
    return {
        name: text,
        "element_size": len(encoded),
        "element_sha256": sha256(encoded),
        "element_truncated": True,
    }


def dead_letter(reject: Reject, message: InMessage, worker_id: str, now: float) -> bytes:
    """The DLQ record: why, where from, the bad element of an array (``element_fields``) or
    the original message (``original_fields``), and the key's size and sha256 when the output
    carries it cut. Always encodable, and bounded: under 25 kB with a worker id and topic of
    ordinary length, whatever the message holds."""
    record: dict[str, Any] = {
        "reason": reject.reason,
        "code": reason_code(reject.reason),
        "source_topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "worker_id": worker_id,
        "failed_at": now,
    }
    if message.key is not None and len(message.key) > MAX_KEY_BYTES:
        record.update(key_size=len(message.key), key_sha256=sha256(message.key), key_truncated=True)
    if reject.index is not None:
        record["index"] = reject.index
    if reject.element is not None:
        record.update(element_fields(reject.element))
    if reject.index is None:  # the whole message: keep the original
        record.update(original_fields(message.value or b""))
    return orjson.dumps(record)


def fit_output(results: Sequence[bytes], limit: int, array: bool) -> list[int]:
    """Which results to leave out of a message's scored output (largest first) so that it
    holds in ``limit`` bytes: as an array ``[r,r,...]``, else the single result. Their events
    are dead-lettered (``output_too_large``) rather than refused by the broker.

    >>> fit_output([b"aa", b"b", b"cccc"], 11, True), fit_output([b"aa", b"b", b"cccc"], 8, True)
    ([], [2])
    >>> fit_output([b"x" * 10], 9, False)
    [0]
    """
    sep = 1 if array else 0  # a comma per result (and the brackets)
    size = sum(len(r) + sep for r in results) + sep
    if size <= limit:  # nearly always: nothing to sort
        return []
    out = []
    for j in sorted(range(len(results)), key=lambda j: -len(results[j])):
        if size <= limit:
            break
        size -= len(results[j]) + sep
        out.append(j)
    return sorted(out)


@dataclass
class _Event:
    message: int  # index of its message in the batch
    index: int  # index in its message (0 for a single event)
    event: dict[str, Any]


def process_batch(
    messages: Sequence[InMessage],
    model: Any,
    classes: Sequence[str],
    model_name: str,
    model_version: str,
    worker_id: str,
    now: float,
) -> BatchOutcome:
    """Decode every message, score all valid events in one call (bisecting a failing call),
    build the output messages and the drift columns."""
    decoded = [_decode(m) for m in messages]
    events = [
        _Event(i, j if d.is_array else 0, e)
        for i, d in enumerate(decoded)
        for j, e in _indexed_valid(d)
    ]
    frame = features_frame([e.event for e in events])
    proba, errors = _score_bisect(model, classes, frame)

    out = BatchOutcome()
    results: list[list[tuple[int, bytes, int]]] = [[] for _ in messages]  # (index, result, row)
    rejects: list[list[Reject]] = [list(d.rejects) for d in decoded]
    rounded = np.round(proba, 6).tolist()
    top = np.nan_to_num(proba, nan=-1.0).argmax(axis=1) if len(events) else np.zeros(0, int)
    predicted = np.asarray(classes, dtype=object)[top].tolist()
    for row, ev in enumerate(events):
        if row in errors:
            rejects[ev.message].append(_scoring_reject(errors[row], ev, decoded[ev.message]))
            continue
        result = {
            "event_id": ev.event["event_id"],
            "predicted": predicted[row],
            "probabilities": dict(zip(classes, rounded[row], strict=True)),
            "model_name": model_name,
            "model_version": model_version,
            "source": ev.event["source"],
            "seq": ev.event["seq"],
            "produced_at": ev.event["produced_at"],
            "scored_at": now,
        }
        try:
            encoded = orjson.dumps(result)
        except (TypeError, orjson.JSONEncodeError) as exc:  # e.g. a lone surrogate in event_id
            rejects[ev.message].append(
                _as_element(
                    Reject(f"encoding_failed:{type(exc).__name__}"), ev, decoded[ev.message]
                )
            )
            continue
        results[ev.message].append((ev.index, encoded, row))

    scored_rows: list[int] = []
    for i, message in enumerate(messages):
        key = cut_key(message.key)
        good = results[i]
        array = decoded[i].is_array
        too_large = fit_output([v for _, v, _ in good], MAX_OUTPUT_BYTES - len(key or b""), array)
        for j in too_large:  # the broker would refuse the output: these events' dead letters
            ev = events[good[j][2]]
            rejects[i].append(_as_element(Reject("output_too_large"), ev, decoded[i]))
        if too_large:
            dropped = set(too_large)
            good = [g for j, g in enumerate(good) if j not in dropped]
        if good:
            value = b"[" + b",".join(v for _, v, _ in good) + b"]" if array else good[0][1]
            out.scored.append((key, value))
            scored_rows += [row for _, _, row in good]
        for reject in rejects[i]:
            out.dlq.append((key, dead_letter(reject, message, worker_id, now)))
            out.dlq_reasons[reason_code(reject.reason)] += 1
        out.per_message.append((len(good), len(rejects[i])))

    scored_rows.sort()  # rows of the frame and of proba, in order
    kept = [events[r] for r in scored_rows]
    out.produced_at = np.fromiter((e.event["produced_at"] for e in kept), float, len(kept))
    out.drift = _drift_columns(
        messages, rejects, kept, frame.iloc[scored_rows], proba[scored_rows], classes
    )
    return out


def _decode(message: InMessage) -> Decoded:
    if message.key is not None and len(message.key) > MAX_KEY_BYTES:
        return Decoded(rejects=[Reject("key_too_long")])  # not read: one dead letter
    try:
        return decode_message(message.value)
    except Exception as exc:  # the contract says it never raises: keep the promise anyway
        log.exception("decoding a message raised")
        return Decoded(rejects=[Reject(f"decoding_failed:{type(exc).__name__}")])


def _indexed_valid(d: Decoded) -> list[tuple[int, dict[str, Any]]]:
    """(index in the message, event) of each valid event."""
    if not d.is_array:
        return [(0, e) for e in d.valid]
    return list(zip(d.valid_index, d.valid, strict=True))


def _as_element(reject: Reject, ev: _Event, d: Decoded) -> Reject:
    seq = ev.event["seq"]
    if d.is_array:
        return Reject(reject.reason, index=ev.index, element=ev.event, seq=seq)
    return Reject(reject.reason, seq=seq)


def _scoring_reject(error: str, ev: _Event, d: Decoded) -> Reject:
    return _as_element(Reject(f"scoring_failed:{error}"), ev, d)


def _score_bisect(
    model: Any, classes: Sequence[str], frame: pd.DataFrame
) -> tuple[np.ndarray, dict[int, str]]:
    """Probabilities of every row, and the rows the model could not score (row -> error).
    One call when the whole frame scores; otherwise each failing half is split again."""
    proba = np.full((len(frame), len(classes)), np.nan)
    errors: dict[int, str] = {}

    def run(lo: int, hi: int) -> None:
        if lo >= hi:
            return
        try:
            p = score(model, classes, frame.iloc[lo:hi]).proba
            if not np.isfinite(p).all():
                raise ValueError("non-finite probabilities")
            proba[lo:hi] = p
        except Exception as exc:
            if hi - lo == 1:
                errors[lo] = type(exc).__name__
                return
            mid = (lo + hi) // 2
            run(lo, mid)
            run(mid, hi)

    run(0, len(frame))
    return proba, errors


def _drift_columns(
    messages: Sequence[InMessage],
    rejects: list[list[Reject]],
    kept: list[_Event],
    frame: pd.DataFrame,
    proba: np.ndarray,
    classes: Sequence[str],
) -> dict[str, Any]:
    """The drift monitor's columns (see ``drift.monitor``): scored events and rejects, each
    with its partition, position and seq."""
    partition = [messages[e.message].partition for e in kept]
    events: dict[str, Any] = {
        "partition": partition,
        "position": [(messages[e.message].offset << POSITION_BITS) | e.index for e in kept],
        "seq": [e.event["seq"] for e in kept],
    }
    for col in MODEL_FEATURES:
        events[col] = frame[col].tolist() if col in frame else []
    events["predicted"] = (
        np.asarray(classes, dtype=object)[proba.argmax(axis=1)].tolist() if len(kept) else []
    )
    events["confidence"] = proba.max(axis=1).tolist() if len(kept) else []
    events["label"] = [e.event.get(TARGET) for e in kept]

    # Rejects are windowed by their own seq when it can be read (-1: in no window; a message
    # that is not JSON has none, and guessing one would split a window across workers).
    rej: dict[str, list] = {"partition": [], "position": [], "seq": [], "field": [], "reason": []}
    for i, message in enumerate(messages):
        for reject in rejects[i]:
            index = reject.index if reject.index is not None else 0
            rej["partition"].append(message.partition)
            rej["position"].append((message.offset << POSITION_BITS) | min(index, 1023))
            rej["seq"].append(reject.seq)
            rej["field"].append(reject_field(reject.reason))
            rej["reason"].append(reason_code(reject.reason))
    return {"events": events, "rejects": rej}
