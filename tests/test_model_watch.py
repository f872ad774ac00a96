"""The worker's model: waits (without crashing) for a champion, swaps to a new version, keeps
scoring with the current one when the registry goes away."""

from __future__ import annotations

import asyncio
import logging

from stopdrift_common.registry import Champion
from stopdrift_common.settings import Settings
from stream_app.model_watch import ModelWatch


class FakeRegistry:
    def __init__(self) -> None:
        self.version: str | None = None
        self.up = True
        self.loads: list[str] = []

    def version_of(self, settings: Settings) -> str | None:
        if not self.up:
            raise ConnectionError("connection refused")
        return self.version

    def load(self, settings: Settings, version: str | None) -> Champion:
        if not self.up:
            raise ConnectionError("connection refused")
        version = version or self.version
        if version is None:
            raise LookupError("no champion")
        self.loads.append(version)
        return Champion("m", version, "run", object(), {"classes": ["a", "b"]}, None)


def watch(registry: FakeRegistry) -> ModelWatch:
    return ModelWatch(Settings(), registry.load, registry.version_of, retry_seconds=0.01)


def test_the_worker_waits_for_a_champion_and_logs_why(caplog):
    registry = FakeRegistry()
    registry.up = False
    w = watch(registry)

    async def scenario():
        task = asyncio.create_task(w.load_initial())
        await asyncio.sleep(0.05)
        assert not task.done() and w.current is None
        registry.up = True
        await asyncio.sleep(0.05)
        assert not task.done()  # up, but no champion yet
        registry.version = "1"
        return await asyncio.wait_for(task, 5)

    with caplog.at_level(logging.WARNING, logger="stopdrift.worker"):
        champion = asyncio.run(scenario())
    assert champion.version == "1" and w.ready.is_set()
    assert "connection refused" in caplog.text and "no champion" in caplog.text


def test_a_new_version_is_swapped_in_and_an_outage_keeps_the_current_model(caplog):
    registry = FakeRegistry()
    registry.version = "1"
    w = watch(registry)

    async def scenario():
        await w.load_initial()
        assert await w.poll() is None  # unchanged
        registry.version = "2"
        swapped = await w.poll()
        registry.up = False
        with caplog.at_level(logging.WARNING, logger="stopdrift.worker"):
            outages = [await w.poll(), await w.poll()]
        return swapped, outages

    swapped, outages = asyncio.run(scenario())
    assert swapped.version == "2" and w.current.version == "2"
    assert outages == [None, None] and w.current.version == "2"
    assert registry.loads == ["1", "2"]
    assert caplog.text.count("registry unreachable") == 1  # once per outage, not per poll


def test_a_champion_that_cannot_score_its_reference_is_refused_once(caplog):
    import numpy as np
    import pandas as pd

    from stream_app.model_watch import ChampionRejected, smoke_test

    class Broken:
        def predict_proba(self, frame):
            raise ValueError("model broken")

    rows = pd.DataFrame(
        {
            "state": ["AZ"],
            "search_rate": [None],
            "hit_rate": [None],
            "inferred_threshold": [None],
            "stops_per_year": [1.0],
        }
    )
    broken = Champion("m", "3", "run", Broken(), {"classes": ["a", "b"]}, rows)
    try:
        smoke_test(broken)
        raise AssertionError("a broken model passed the smoke test")
    except ChampionRejected as exc:
        assert "version 3 cannot score its own reference rows" in str(exc)

    class Fine:
        def predict_proba(self, frame):
            return np.full((len(frame), 2), 0.5)

    smoke_test(Champion("m", "1", "run", Fine(), {"classes": ["a", "b"]}, rows))

    registry = FakeRegistry()
    registry.version = "1"
    real_load = registry.load

    def load(settings, version):
        if (version or registry.version) == "3":
            registry.loads.append("3")
            smoke_test(broken)
        return real_load(settings, version)

    w = ModelWatch(Settings(), load, registry.version_of, retry_seconds=0.01)

    async def scenario():
        await w.load_initial()
        registry.version = "3"
        with caplog.at_level(logging.ERROR, logger="stopdrift.worker"):
            return [await w.poll(), await w.poll(), await w.poll()]

    assert asyncio.run(scenario()) == [None, None, None]
    assert w.current.version == "1" and w.rejected == "3"
    assert registry.loads == ["1", "3"]  # tried once, not at every poll
    assert caplog.text.count("cannot score its own reference rows") == 1
