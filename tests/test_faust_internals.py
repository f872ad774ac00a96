"""The Faust internals stream_app relies on (``stream_app/faust_internals.py``) still behave as
it assumes: a held partition leaves the fetch, stays out of it when Faust's flow control would
bring it back, and returns when released. An upgrade of Faust that changes them fails here.
"""

from __future__ import annotations

import faust
from faust.types import TP

from stream_app.faust_internals import hold_partitions


def test_a_held_partition_stays_out_of_the_fetch_until_released(tmp_path):
    app = faust.App("internals-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
    consumer = app.consumer  # built, never started: nothing connects
    tps = [TP("stops.raw", p) for p in range(3)]
    consumer._set_active_tps(set(tps))

    hold_partitions(consumer, {tps[0]}, tps)
    assert consumer._get_active_partitions() == {tps[1], tps[2]}
    # Records of a fetch under way are still delivered for a buffered partition.
    assert tps[0] in consumer._buffered_partitions

    consumer.on_buffer_drop(tps[0])  # Faust's flow control, once the stream buffer drains
    assert tps[0] not in consumer._get_active_partitions()
    consumer.on_buffer_full(tps[1])  # flow control still works for the others
    consumer.on_buffer_drop(tps[1])
    assert tps[1] in consumer._get_active_partitions()

    hold_partitions(consumer, set(), tps)
    assert consumer._get_active_partitions() == set(tps)
    assert tps[0] not in consumer._buffered_partitions
