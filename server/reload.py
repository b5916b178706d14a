"""A new model without downtime: load the model path again, beside the serving model, and swap.

Three things ask for it: the `ModelAdmin.ReloadModel` call, SIGHUP, and a change seen at the model path (polled every
`--reload-watch-s`; a deployment points a symlink at a new export, as Kubernetes does for a mounted ConfigMap). The
path is resolved once, so a symlink that moves again meanwhile cannot mix two exports. The new directory is verified
(manifest, sha256: `load_predictor`), loaded and warmed up in a new InferenceEngine while the old one serves; then
the front end attaches the new one (new calls and new batches go to it), the old batcher finishes what it had queued
and running, and the old engine is stopped and dropped, so memory returns to one model's. A directory that fails
changes nothing: the old model keeps serving and the reason is logged and returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gamjeong.artifacts import MANIFEST_FILE
from gamjeong.errors import GamjeongError
from gamjeong.server.engine import Attachment, InferenceEngine
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.settings import ServerSettings

if TYPE_CHECKING:
    from gamjeong.api.v1 import emotion_pb2 as pb
    from gamjeong.predictor import Predictor

log = logging.getLogger(__name__)

# How long the old model may take to finish what it had queued and running before it is stopped anyway.
_RETIRE_S = 30.0


class ReloadFailedError(GamjeongError):
    """The model path could not be verified or loaded; the serving model is unchanged (FAILED_PRECONDITION)."""


class ReloadInProgressError(Exception):
    """Another reload is under way (ABORTED)."""


@dataclass(frozen=True)
class ReloadOutcome:
    model_info: pb.ModelInfo
    changed: bool
    previous_version: str


def release_memory() -> None:
    """Free the old model's memory now: collect it, then ask glibc to hand freed pages back to the system (without
    malloc_trim, a reloaded server measured 227 MiB above one model's RSS; docs/workers.md)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # musl and other libcs have no malloc_trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def path_signature(model: Path) -> tuple[str, int, int] | None:
    """What the watcher compares: where the model path leads and its manifest's (or config's) change time and size;
    None while the path does not lead to a model (a symlink being replaced)."""
    target = Path(model).expanduser().resolve()
    for name in (MANIFEST_FILE, "config.json"):
        try:
            stat = (target / name).stat()
        except OSError:
            continue
        return str(target), stat.st_mtime_ns, stat.st_size
    return None


class ModelReloader:
    """Swaps the InferenceEngine a server runs on, one reload at a time."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics: ServerMetrics,
        engine: InferenceEngine,
        on_swap: Callable[[Attachment, Path], None],
        predictor_factory: Callable[[], Predictor] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine
        self._on_swap = on_swap
        self._predictor_factory = predictor_factory
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()  # background reloads, referenced until done

    @property
    def serving_version(self) -> str:
        return self.engine.model_info.model_version if self.engine.model_info is not None else ""

    async def reload(self, trigger: str) -> ReloadOutcome:
        """Load the model path again and swap to it; ReloadFailedError (nothing changed) or ReloadInProgressError."""
        if self._lock.locked():
            raise ReloadInProgressError
        async with self._lock:
            return await self._reload(trigger)

    async def _reload(self, trigger: str) -> ReloadOutcome:
        previous = self.engine.model_info
        assert previous is not None
        target = Path(self.settings.model).expanduser().resolve()
        log.info("reloading the model", extra={"trigger": trigger, "path": str(target)})
        engine = InferenceEngine(
            self.settings.model_copy(update={"model": target}),
            self.metrics,
            self._predictor_factory,
            tracing=self.engine.tracing,  # the new model's queue and model spans go where the old one's went
        )
        try:
            attachment = await engine.load()
        except Exception as exc:
            await engine.stop()
            reason = str(exc) if isinstance(exc, GamjeongError) else f"{exc.__class__.__name__}: {exc}"
            log.error(
                "reload failed; the serving model is unchanged",
                extra={
                    "trigger": trigger,
                    "path": str(target),
                    "reason": reason,
                    "model_version": previous.model_version,
                },
            )
            raise ReloadFailedError(
                f"The model at '{target}' was not loaded ({reason}); still serving the old one."
            ) from exc
        info = attachment.model_info
        if info.model_version and info.model_version == previous.model_version:
            await engine.stop()  # the same export: keep the warm one
            log.info("reload found the same model", extra={"trigger": trigger, "model_version": info.model_version})
            return ReloadOutcome(previous, False, previous.model_version)
        old, self.engine = self.engine, engine
        self._on_swap(attachment, target)
        log.info(
            "model reloaded",
            extra={
                "trigger": trigger,
                "path": str(target),
                "model_version": info.model_version,
                "previous_model_version": previous.model_version,
            },
        )
        await old.retire(_RETIRE_S)
        del old
        release_memory()
        return ReloadOutcome(info, True, previous.model_version)

    # --- triggers -----------------------------------------------------------------------------------------------
    def reload_in_background(self, trigger: str) -> None:
        """SIGHUP and the watcher: start a reload; its outcome is logged."""
        task = asyncio.ensure_future(self._logged(trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _logged(self, trigger: str) -> None:
        try:
            await self.reload(trigger)
        except ReloadInProgressError:
            log.info("a reload is already under way", extra={"trigger": trigger})
        except ReloadFailedError:
            pass  # logged where it failed

    def start_watching(self) -> None:
        """Poll the model path every --reload-watch-s and reload when it leads somewhere new (0: never)."""
        if self.settings.reload_watch_s > 0 and self._watcher is None:
            seen = path_signature(self.settings.model)  # now: what was just loaded
            self._watcher = asyncio.ensure_future(self._watch(self.settings.reload_watch_s, seen))

    async def _watch(self, every_s: float, seen: tuple[str, int, int] | None) -> None:
        while True:
            await asyncio.sleep(every_s)
            now = path_signature(self.settings.model)
            if now is None or now == seen:
                continue
            seen = now  # a path that fails is not retried until it changes again
            await self._logged("watch")

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._watcher] if self._watcher else [])]:
            task.cancel()
        self._watcher = None
