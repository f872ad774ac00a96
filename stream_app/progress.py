"""What a worker tells the drift coordinator about its input partitions, and which of them it
pauses so that no partition runs far ahead of the others (watermark alignment).

Windows close on event progress, never on the wall clock while data waits on the broker
(``drift.monitor``). For that the coordinator needs, per partition of ``stops.raw``, the next
offset whose outcome is written (``read``) and the log end seen then (``end``): a partition with
``read < end`` still holds the watermark, however long it has been quiet. On a backlog a worker
reads its partitions unevenly, so the windows ahead of the slowest partition would pile up;
instead, a partition whose latest seq runs more than ``max_skew`` seqs past the slowest pending
partition (or past the coordinator's horizon, when this worker coordinates) is paused until the
others catch up, as Flink's watermark alignment does. Memory stays bounded without closing a
window early.

>>> t = PartitionProgress(max_skew=1000)
>>> t.written({0: 10, 1: 10}, {0: 100, 1: 100}, seqs={0: 5000, 1: 200})
>>> t.report()
{'0': [10, 100], '1': [10, 100]}
>>> t.to_pause()  # partition 0 is 4,800 seqs ahead of partition 1, which still has data
{0}
>>> t.written({1: 100}, {1: 100}, seqs={1: 4500})  # partition 1 caught up with its log end
>>> t.to_pause()
set()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def latest_seqs(drift: Mapping[str, Any]) -> dict[int, int]:
    """Per partition, the highest seq among a batch's drift columns (events and rejects).

    >>> latest_seqs({"events": {"partition": [0, 0, 1], "seq": [4, 9, 2]},
    ...              "rejects": {"partition": [1, 2], "seq": [7, -1]}})
    {0: 9, 1: 7}
    """
    out: dict[int, int] = {}
    for part in ("events", "rejects"):
        columns = drift.get(part) or {}
        for p, s in zip(columns.get("partition", []), columns.get("seq", []), strict=True):
            if s >= 0 and s > out.get(p, -1):
                out[p] = s
    return out


class PartitionProgress:
    """Per input partition of one worker: offsets written, log ends, latest seqs.

    Parameters
    ----------
    max_skew
        Seqs a partition may run ahead of the slowest partition with data still waiting.
    lookahead
        Messages of a partition that may still arrive after it is paused (fetched or buffered
        already). A partition pauses once its latest seq plus that many messages' worth of seqs
        (at the partition's own density: a partition holding few keys advances many seqs per
        message) would pass the limit.
    window
        Seqs per window: a partition within one window of the floor is never paused (it may
        hold the lowest open window's last events: pausing it could stall every window).
    density
        Seqs per message assumed for a partition until its own is measured.
    """

    def __init__(
        self, max_skew: int, lookahead: int = 0, window: int = 1, density: float = 1.0
    ) -> None:
        if max_skew < 1 or lookahead < 0 or window < 1:
            raise ValueError(
                f"need max_skew >= 1, lookahead >= 0, window >= 1: {max_skew}, {lookahead}, "
                f"{window}"
            )
        self.max_skew = max_skew
        self.lookahead = lookahead
        self.window = window
        self.density = density  # seqs per message assumed until a partition's own is measured
        self.read: dict[int, int] = {}  # next offset whose outcome is written
        self.end: dict[int, int] = {}  # log end (high-water mark) when last seen
        self.seq: dict[int, int] = {}  # latest seq read
        self.first: dict[int, tuple[int, int]] = {}  # (offset, seq) first seen: the density
        self._reported: dict[str, list[int]] = {}

    def written(
        self, read: Mapping[int, int], end: Mapping[int, int], seqs: Mapping[int, int]
    ) -> None:
        """After a batch's outputs are written: per partition, the next offset to read, the log
        end seen, and the highest seq of the batch."""
        for p, offset in read.items():
            self.read[p] = max(self.read.get(p, -1), offset)
        self.seen(end)
        for p, s in seqs.items():
            self.seq[p] = max(self.seq.get(p, -1), s)
            self.first.setdefault(p, (self.read[p], s))

    def started(self, read: Mapping[int, int]) -> None:
        """Partitions assigned to this worker, each with the offset it starts reading at."""
        for p, offset in read.items():
            self.read[p] = offset
            self.seq.pop(p, None)
            self.first.pop(p, None)
        self._reported = {}

    def seen(self, end: Mapping[int, int]) -> None:
        """Log ends seen by the consumer (also for partitions with nothing read yet)."""
        for p, offset in end.items():
            if offset >= 0:
                self.end[p] = offset

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker no longer reads (revoked): another worker reports them."""
        for p in partitions:
            for book in (self.read, self.end, self.seq, self.first):
                book.pop(p, None)
        self._reported = {}

    def resend(self) -> None:
        """The last report did not reach the broker: ``changed_report`` returns it again."""
        self._reported = {}

    def pending(self, p: int) -> bool:
        return p in self.read and p in self.end and self.read[p] < self.end[p]

    def report(self) -> dict[str, list[int]]:
        """``progress`` for a partial: ``{partition: [read, end]}`` of every partition read."""
        return {str(p): [r, self.end[p]] for p, r in sorted(self.read.items()) if p in self.end}

    def changed_report(self) -> dict[str, list[int]] | None:
        """The report, or None when it says nothing new since the last call."""
        report = self.report()
        if report == self._reported:
            return None
        self._reported = report
        return report

    def to_pause(self, horizon: int | None = None) -> set[int]:
        """Partitions to pause now: those that would run more than ``max_skew`` seqs past the
        slowest partition that still has data waiting (or past ``horizon``, the first seq of
        the coordinator's lowest open window). None within a window of that floor is paused."""
        floors = [self.seq[p] for p in self.seq if self.pending(p)]
        if horizon is not None:
            floors.append(horizon)
        if not floors:
            return set()
        floor = min(floors)
        return {
            p
            for p, s in self.seq.items()
            if self.pending(p)
            and s > floor + self.window
            and self._reach(p) > floor + self.max_skew
        }

    def _reach(self, p: int) -> float:
        """The seq partition ``p`` may reach once what is fetched or buffered has arrived."""
        offset, seq = self.first.get(p, (self.read[p], self.seq[p]))
        messages = self.read[p] - offset
        # Seqs per message, from what was read since the partition was first seen; until a
        # few batches were, the assumed one (a partition that runs ahead at start is no less
        # dangerous for being new).
        density = (self.seq[p] - seq) / messages if messages >= 1000 else self.density
        return self.seq[p] + self.lookahead * density
