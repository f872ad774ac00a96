"""One batch of raw messages -> its outcomes: scored outputs and dead letters. No Kafka here.

Every event gets exactly one outcome: a scored result on ``stops.scored`` or a dead letter on
``stops.dlq``. A single-event message gives one output message; an array message gives ONE array
output holding its valid elements' results in input order, and one dead letter per bad element.
A message rejected as a whole (bad JSON, oversize, empty array...) gives one dead letter.

>>> import numpy as np
>>> class Const:
...     def predict_proba(self, X):
...         return np.tile([0.1, 0.2, 0.7], (len(X), 1))
>>> from stopdrift_common.schema import make_event, dumps
>>> e = make_event({"state": "AZ", "stops_per_year": 10.0}, source="state", row=1, loop=0,
...                seq=1, produced_at=1.0)
>>> msgs = [InMessage(dumps(e), b"AZ", "stops.raw", 0, 5), InMessage(b"{", None, "stops.raw", 0, 6)]
>>> out = process_batch(msgs, Const(), ["black", "hispanic", "white"], "m", "3", "w1", now=2.0)
>>> out.n_scored, out.n_dlq, dict(out.dlq_reasons)
(1, 1, {'invalid_json': 1})
>>> orjson.loads(out.scored[0][1])["predicted"], orjson.loads(out.dlq[0][1])["offset"]
('white', 6)
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from stopdrift_common.schema import Reject, decode_message
from stream_app.scoring import Scores, features_frame, score

DLQ_RAW_LIMIT = 10_000  # bytes of the original message kept in a dead letter


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
    n_scored: int = 0
    n_dlq: int = 0
    dlq_reasons: Counter = field(default_factory=Counter)  # reason code (no field) -> events
    events: list[dict[str, Any]] = field(default_factory=list)  # the valid events, in order
    features: pd.DataFrame | None = None
    scores: Scores | None = None

    @property
    def produced_at(self) -> np.ndarray:
        return np.fromiter((e["produced_at"] for e in self.events), float, len(self.events))

    @property
    def seqs(self) -> np.ndarray:
        return np.fromiter((e["seq"] for e in self.events), np.int64, len(self.events))

    @property
    def labels(self) -> pd.Series:
        return pd.Series([e["subject_race"] for e in self.events], dtype=object)


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


def dead_letter(
    reject: Reject, message: InMessage, worker_id: str, now: float, whole_message: bool
) -> bytes:
    """The DLQ record: why, where from, and the original (text if UTF-8, else base64)."""
    record: dict[str, Any] = {
        "reason": reject.reason,
        "code": reason_code(reject.reason),
        "source_topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "worker_id": worker_id,
        "failed_at": now,
    }
    if reject.index is not None:
        record["index"] = reject.index
        record["element"] = reject.element
    if whole_message:
        raw = message.value or b""
        kept = raw[:DLQ_RAW_LIMIT]
        record["original_size"] = len(raw)
        record["original_truncated"] = len(raw) > len(kept)
        try:
            record["original_text"] = kept.decode("utf-8")
        except UnicodeDecodeError:
            record["original_base64"] = base64.b64encode(kept).decode("ascii")
    return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS, default=repr)


def process_batch(
    messages: Sequence[InMessage],
    model: Any,
    classes: Sequence[str],
    model_name: str,
    model_version: str,
    worker_id: str,
    now: float,
) -> BatchOutcome:
    """Decode every message, score all valid events in one call, build the output messages."""
    out = BatchOutcome()
    decoded = []
    for message in messages:
        d = decode_message(message.value)
        for reject in d.rejects:
            _dead_letter(out, reject, message, worker_id, now)
        decoded.append((message, d))
    events = [e for _, d in decoded for e in d.valid]
    frame = features_frame(events)
    try:
        scores = score(model, classes, frame)
        ok = np.ones(len(events), dtype=bool)
    except Exception as exc:  # one poisonous row must not stop the stream: find it
        scores, ok = _score_one_by_one(model, classes, frame, exc)
    results = _results(events, scores, ok, model_name, model_version, now)
    position = 0
    for message, d in decoded:
        mine = results[position : position + len(d.valid)]
        for j, event in enumerate(d.valid):
            if not ok[position + j]:
                reject = Reject(f"scoring_failed:{scores.errors.get(position + j, '?')}")
                if d.is_array:
                    reject = Reject(reject.reason, index=None, element=event)
                _dead_letter(out, reject, message, worker_id, now)
        position += len(d.valid)
        good = [r for r in mine if r is not None]
        if not good:
            continue
        if d.is_array:
            out.scored.append((message.key, orjson.dumps(good)))
        else:
            out.scored.append((message.key, orjson.dumps(good[0])))
    out.events = [e for e, keep in zip(events, ok, strict=True) if keep]
    out.features = frame[ok].reset_index(drop=True) if not ok.all() else frame
    out.scores = Scores(scores.proba[ok], list(classes))
    out.n_scored = len(out.events)
    out.n_dlq = len(out.dlq)
    return out


def _dead_letter(
    out: BatchOutcome, reject: Reject, message: InMessage, worker_id: str, now: float
) -> None:
    whole = reject.index is None and reject.element is None
    out.dlq.append((message.key, dead_letter(reject, message, worker_id, now, whole)))
    out.dlq_reasons[reason_code(reject.reason)] += 1


def _score_one_by_one(
    model: Any, classes: Sequence[str], frame: pd.DataFrame, first_error: Exception
) -> tuple[Scores, np.ndarray]:
    proba = np.full((len(frame), len(classes)), np.nan)
    ok = np.zeros(len(frame), dtype=bool)
    errors: dict[int, str] = {}
    for i in range(len(frame)):
        try:
            proba[i] = score(model, classes, frame.iloc[i : i + 1]).proba[0]
            ok[i] = True
        except Exception as exc:
            errors[i] = type(exc).__name__
    return Scores(proba, list(classes), errors), ok


def _results(
    events: list[dict[str, Any]],
    scores: Scores,
    ok: np.ndarray,
    model_name: str,
    model_version: str,
    now: float,
) -> list[dict[str, Any] | None]:
    """One result per event (None where scoring failed)."""
    proba = np.where(ok[:, None], scores.proba, 0.0) if len(events) else scores.proba
    tidy = Scores(proba, scores.classes)
    classes = tidy.classes
    # the same values as Scores.probabilities, in one pass (this runs once per event)
    rounded = np.round(tidy.proba, 6).tolist()
    return [
        {
            "event_id": e["event_id"],
            "predicted": predicted,
            "probabilities": dict(zip(classes, row, strict=True)),
            "model_name": model_name,
            "model_version": model_version,
            "source": e["source"],
            "seq": e["seq"],
            "produced_at": e["produced_at"],
            "scored_at": now,
        }
        if keep
        else None
        for e, predicted, row, keep in zip(
            events, tidy.predicted, rounded, ok.tolist(), strict=True
        )
    ]
