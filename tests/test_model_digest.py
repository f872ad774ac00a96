"""Only the model that was registered is unpickled: training tags each version with the digest
of its model directory and reference files; the worker recomputes them from the downloaded
files before deserialising anything, refuses a version that is untagged or whose files changed
in the artifact store, says why (log line, metrics) and keeps scoring with its current model.

Against the session's real MLflow server. The versions under test are copies of the session
champion registered by training's own ``log_run`` (no training), under their own model name,
so tampering with their files leaves the shared champion intact.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest

from stopdrift_common import registry
from stopdrift_common.schema import MODEL_FEATURES
from stopdrift_common.settings import Settings
from stream_app.metrics import WorkerMetrics
from stream_app.model_watch import ModelWatch
from stream_app.runtime import WorkerRuntime

# --- unit: what the digest covers ---------------------------------------------------------------


def test_the_tree_digest_changes_with_any_byte_name_or_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "MLmodel").write_text("pickled_model: model.pkl\n")
    (tmp_path / "model.pkl").write_bytes(b"model")
    original = registry.tree_sha256(tmp_path)
    assert registry.tree_sha256(tmp_path) == original  # deterministic
    variants = []
    (tmp_path / "model.pkl").write_bytes(b"modeL")
    variants.append(registry.tree_sha256(tmp_path))
    (tmp_path / "model.pkl").write_bytes(b"model")
    (tmp_path / "sub" / "code.py").write_text("import os\n")  # an added file (a code path)
    variants.append(registry.tree_sha256(tmp_path))
    (tmp_path / "sub" / "code.py").rename(tmp_path / "sub" / "other.py")
    variants.append(registry.tree_sha256(tmp_path))
    assert len({original, *variants}) == 4


# --- integration: registered, tampered, untagged ----------------------------------------------


class Evil:
    """Unpickling this creates ``marker``: the proof a refused file was never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@dataclass
class Versions:
    settings: Settings
    good: str  # registered by log_run
    tampered: str  # registered by log_run, then model.pkl rewritten in the artifact store
    untagged: str  # the good version's files, registered without the digest tags
    retagged: str  # the good version's files, registered with the good version's tags
    marker: Path


def set_champion(s: Settings, version: str) -> None:
    registry.client(s).set_registered_model_alias(s.model_name, s.model_alias, version)


@pytest.fixture(scope="module")
def versions(champion, session_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Versions:
    import mlflow

    from training.registration import log_run

    shared, _ = champion
    s = shared.replace(model_name="stopdrift-digest-test")
    champ = registry.load_champion(shared)

    def register() -> str:
        return log_run(
            s,
            run_name="digest-test",
            params={},
            metrics={},
            artifacts={},
            reference=champ.reference,
            reference_rows=champ.reference_rows,
            model=champ.model,
            input_example=champ.reference_rows[MODEL_FEATURES].head(3),
            tags={},
        ).version

    good, tampered = register(), register()
    marker = tmp_path_factory.mktemp("digest") / "unpickled"
    c = registry.client(s)
    stored = c.get_model_version_download_uri(s.model_name, tampered)
    assert stored.startswith("mlflow-artifacts:/"), stored
    pkl = session_dir / "mlflow" / "artifacts" / stored.split(":", 1)[1].lstrip("/") / "model.pkl"
    assert pkl.is_file(), pkl
    pkl.write_bytes(pickle.dumps(Evil(marker)))  # what a writer of the artifact store could do

    source = c.get_model_version(s.model_name, good)
    untagged = mlflow.register_model(source.source, s.model_name).version
    retagged = mlflow.register_model(source.source, s.model_name, tags=source.tags).version
    return Versions(s, good, tampered, str(untagged), str(retagged), marker)


@pytest.mark.integration
def test_train_tags_the_digests_of_the_files_it_registered(champion, tmp_path: Path) -> None:
    import mlflow.artifacts

    s, result = champion
    tags = registry.client(s).get_model_version(s.model_name, result.version).tags
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{s.model_name}/{result.version}", dst_path=str(tmp_path)
    )
    assert (Path(local) / "model.pkl").is_file() and (Path(local) / "MLmodel").is_file()
    assert tags[registry.MODEL_DIGEST_TAG] == registry.tree_sha256(Path(local))
    assert len(tags[registry.REFERENCE_DIGEST_TAG]) == 64


def rejections(m: WorkerMetrics, reason: str) -> float | None:
    return m.registry.get_sample_value("stopdrift_champion_rejections_total", {"reason": reason})


def rejected_version(m: WorkerMetrics) -> float | None:
    return m.registry.get_sample_value("stopdrift_champion_rejected_version")


@pytest.mark.integration
def test_a_champion_not_as_registered_is_refused_unread_and_the_model_kept(
    versions: Versions, caplog
) -> None:
    v = versions
    metrics = WorkerMetrics()

    async def scenario() -> list:
        watch = ModelWatch(v.settings, retry_seconds=0.2, on_reject=metrics.record_rejection)
        runtime = WorkerRuntime(v.settings, metrics, watch)
        set_champion(v.settings, v.good)
        await runtime.start()
        seen = [(watch.current.version, rejected_version(metrics))]
        for version in (v.tampered, v.untagged):
            set_champion(v.settings, version)
            await runtime.poll_model()
            seen.append((watch.current.version, rejected_version(metrics)))
        set_champion(v.settings, v.retagged)  # the same files, properly tagged: accepted
        await runtime.poll_model()
        seen.append((watch.current.version, rejected_version(metrics)))
        return seen

    with caplog.at_level(logging.ERROR, logger="stopdrift.worker"):
        seen = asyncio.run(scenario())
    tampered, untagged = float(v.tampered), float(v.untagged)
    assert seen == [
        (v.good, 0.0),
        (v.good, tampered),  # refused: the previous champion keeps scoring
        (v.good, untagged),
        (v.retagged, untagged),
    ]
    assert not v.marker.exists(), "the tampered model.pkl was unpickled"
    assert rejections(metrics, "digest_mismatch") == 1
    assert rejections(metrics, "digest_missing") == 1
    assert rejections(metrics, "smoke_test") == 0
    assert f"version {v.tampered} is not what was registered" in caplog.text
    assert f"version {v.untagged} has no {registry.MODEL_DIGEST_TAG} tag" in caplog.text


@pytest.mark.integration
def test_at_start_an_unverified_champion_is_waited_out(versions: Versions, caplog) -> None:
    v = versions
    metrics = WorkerMetrics()

    async def scenario() -> tuple[bool, str | None, str]:
        watch = ModelWatch(v.settings, retry_seconds=0.2, on_reject=metrics.record_rejection)
        runtime = WorkerRuntime(v.settings, metrics, watch)
        set_champion(v.settings, v.tampered)
        task = asyncio.create_task(runtime.start())
        for _ in range(100):  # until the first attempt is refused (MLflow answers in ~1 s)
            await asyncio.sleep(0.1)
            if watch.rejected:
                break
        await asyncio.sleep(0.5)  # a few retries
        waiting = not task.done() and watch.current is None
        await runtime.poll_model()  # the timer runs while start() waits: it shows the refusal
        set_champion(v.settings, v.good)
        await asyncio.wait_for(task, 60)
        return waiting, watch.rejected, watch.current.version

    with caplog.at_level(logging.WARNING, logger="stopdrift.worker"):
        waiting, rejected, current = asyncio.run(scenario())
    assert waiting and rejected == v.tampered and current == v.good
    assert not v.marker.exists()
    assert rejections(metrics, "digest_mismatch") == 1  # once, not once per retry
    assert rejected_version(metrics) == float(v.tampered)
    assert caplog.text.count("champion refused (digest_mismatch)") == 1
    assert "retrying in" in caplog.text
