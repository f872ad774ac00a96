"""From table rows to event messages: the pure part of the producer.

>>> import pandas as pd
>>> rows = pd.DataFrame({c: [None] for c in CSV_COLUMNS})
>>> rows = rows.assign(state="AZ", stops_per_year=float("nan"), source="state", _row=7, _loop=0)
>>> [e] = to_events(rows, first_seq=3, produced_at=1.5)
>>> e["event_id"], e["seq"], e["stops_per_year"]
('state-0-7', 3, None)
>>> [(k, len(orjson.loads(v)), n) for k, v, n in pack([e, e, e], batch=2)]
[(b'AZ', 2, 2), (b'AZ', 1, 1)]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pandas as pd

from stopdrift_common.errors import UserError
from stopdrift_common.schema import CSV_COLUMNS, MAX_ARRAY_EVENTS, event_id


def check_batch(batch: int) -> int:
    if not 1 <= batch <= MAX_ARRAY_EVENTS:
        raise UserError(
            f"--batch {batch}: an array message holds 1 to {MAX_ARRAY_EVENTS} events "
            f"(the event contract's MAX_ARRAY_EVENTS); choose a smaller --batch"
        )
    return batch


def to_events(rows: pd.DataFrame, first_seq: int, produced_at: float) -> list[dict[str, Any]]:
    """Rows with CSV_COLUMNS, ``source``, ``_row`` (row number in its table) and ``_loop``
    -> events of the contract, NaN turned into null, ``seq`` counting from ``first_seq``."""
    values = rows[CSV_COLUMNS].astype(object)
    values = values.where(values.notna(), None)
    records = values.to_dict("records")
    sources = rows["source"].tolist()
    row_numbers = rows["_row"].tolist()
    loops = rows["_loop"].tolist()
    for i, record in enumerate(records):
        record["event_id"] = event_id(sources[i], int(row_numbers[i]), int(loops[i]))
        record["source"] = sources[i]
        record["seq"] = first_seq + i
        record["produced_at"] = produced_at
    return records


def _key(event: dict[str, Any]) -> bytes:
    return (event.get("state") or "").encode()


def pack(events: list[dict[str, Any]], batch: int) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, value, number of events) messages, in replay order.

    ``batch == 1``: one JSON object per message keyed by its state, so a location's events stay
    in one partition, in order. ``batch > 1``: JSON arrays of ``batch`` consecutive events keyed
    by the first event's state. Arrays are not grouped by state on purpose: a drift window would
    then hold one state at a time and the monitor would rightly call that drift.
    """
    if batch == 1:
        for event in events:
            yield _key(event), orjson.dumps(event), 1
        return
    for i in range(0, len(events), batch):
        part = events[i : i + batch]
        yield _key(part[0]), orjson.dumps(part), len(part)


def count_events(n_rows: int, loops: int, limit: int | None) -> int:
    total = n_rows * loops
    return min(total, limit) if limit else total
