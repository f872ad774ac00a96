"""The model the worker scores with: the registry's champion, loaded at start and swapped when the
alias moves, without a restart.

- At start: retry every ``retry_seconds`` (with one log line each time) while MLflow is down or
  there is no champion yet; the worker waits instead of crashing.
- On a timer: ask for the champion's version; load and swap when it changed.
- A champion is refused (``ChampionRejected``, with a reason) when its files do not hash to the
  digest tags training registered (checked before unpickling, in ``load_champion``) or when it
  cannot score its own reference rows. The worker keeps its model (or, at start, keeps waiting)
  and tries that version only once: a new version must take the alias.
- When MLflow goes away later: keep scoring with the current model and log a warning (once per
  outage, not once per poll).

Loading is blocking (MLflow client, unpickling): it runs in a thread so the event loop keeps
heartbeating the consumer group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from stopdrift_common.registry import (
    Champion,
    UnverifiedArtifacts,
    champion_version,
    load_champion,
    require_mlflow,
)
from stopdrift_common.settings import Settings

log = logging.getLogger("stopdrift.worker")


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"


# Why a champion was refused (bounded: a metric label). digest_*: its files are not the ones
# registered (never unpickled); smoke_test: it failed on its own reference rows.
REJECTION_REASONS = ("digest_missing", "digest_mismatch", "smoke_test")


class ChampionRejected(Exception):
    """A registered champion the worker will not score with (``reason``: REJECTION_REASONS)."""

    def __init__(self, message: str, *, version: str, reason: str) -> None:
        super().__init__(message)
        self.version = version
        self.reason = reason


def checked_load(settings: Settings, version: str | None) -> Champion:
    """``load_champion`` (which verifies the digests before unpickling) after a 3 s health
    check (the MLflow client itself retries a refused connection with backoff for about two
    minutes before it raises), then a smoke test: the model must score rows of its own
    reference."""
    require_mlflow(settings)
    try:
        champion = load_champion(settings, version)
    except UnverifiedArtifacts as exc:
        raise ChampionRejected(str(exc), version=exc.version, reason=exc.reason) from None
    smoke_test(champion)
    return champion


def smoke_test(champion: Champion, rows: int = 50) -> None:
    """Raise ``ChampionRejected`` unless the model gives finite probabilities, one column per
    class, for the first ``rows`` reference rows."""
    import numpy as np

    from stream_app.scoring import features_frame, score

    sample = champion.reference_rows.head(rows).astype(object)
    sample = sample.where(sample.notna(), None).to_dict("records")
    try:
        proba = score(champion.model, champion.classes, features_frame(sample)).proba
        if not np.isfinite(proba).all():
            raise ValueError("non-finite probabilities")
    except Exception as exc:
        raise ChampionRejected(
            f"{champion.name} version {champion.version} cannot score its own reference rows "
            f"({_why(exc)})",
            version=str(champion.version),
            reason="smoke_test",
        ) from None


def checked_version(settings: Settings) -> str | None:
    require_mlflow(settings)
    return champion_version(settings)


class ModelWatch:
    def __init__(
        self,
        settings: Settings,
        load: Callable[[Settings, str | None], Champion] = checked_load,
        version_of: Callable[[Settings], str | None] = checked_version,
        retry_seconds: float = 3.0,
        on_reject: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._load = load
        self._version_of = version_of
        self.retry_seconds = retry_seconds
        self._on_reject = on_reject  # (version, reason), once per refused version
        self.current: Champion | None = None
        self.rejected: str | None = None  # the last champion version refused
        self.rejected_reason: str | None = None
        self._ready: asyncio.Event | None = None
        self._registry_down = False

    @property
    def ready(self) -> asyncio.Event:
        if self._ready is None:
            self._ready = asyncio.Event()
        return self._ready

    async def load_initial(self) -> Champion:
        """Load the champion, retrying until there is one."""
        s = self.settings
        while self.current is None:
            try:
                champion = await asyncio.to_thread(self._load, s, None)
            except Exception as exc:
                if isinstance(exc, ChampionRejected) and exc.version != self.rejected:
                    self._reject(exc, "no model to score with yet")
                log.warning(
                    "no champion %s@%s from %s yet (%s); retrying in %.0f s",
                    s.model_name,
                    s.model_alias,
                    s.mlflow_tracking_uri,
                    _why(exc),
                    self.retry_seconds,
                )
                await asyncio.sleep(self.retry_seconds)
                continue
            self.current = champion
            log.warning("scoring with %s version %s", champion.name, champion.version)
        self.ready.set()
        return self.current

    async def poll(self) -> Champion | None:
        """Return the new champion when the alias moved (and swap to it), else None."""
        if self.current is None:
            return None  # load_initial is still trying
        try:
            version = await asyncio.to_thread(self._version_of, self.settings)
            if version is None or version in (self.current.version, self.rejected):
                self._registry_up()
                return None
            champion = await asyncio.to_thread(self._load, self.settings, version)
        except ChampionRejected as exc:
            self._reject(exc, f"still scoring with version {self.current.version}")
            return None
        except Exception as exc:
            if not self._registry_down:
                log.warning(
                    "model registry unreachable (%s): still scoring with %s version %s",
                    _why(exc),
                    self.current.name,
                    self.current.version,
                )
            self._registry_down = True
            return None
        self._registry_up()
        old = self.current.version
        self.current = champion
        log.warning("new champion: %s version %s -> %s", champion.name, old, champion.version)
        return champion

    def _reject(self, exc: ChampionRejected, consequence: str) -> None:
        self.rejected, self.rejected_reason = exc.version, exc.reason
        log.error("champion refused (%s): %s: %s", exc.reason, exc, consequence)
        if self._on_reject is not None:
            self._on_reject(exc.version, exc.reason)

    def _registry_up(self) -> None:
        if self._registry_down:
            log.warning("model registry reachable again")
        self._registry_down = False
