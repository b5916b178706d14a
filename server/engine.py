"""The inference engine: the model instances, their threads and the one dynamic batcher that feeds them.

A server runs texts on exactly one engine. With one process (`--workers 1`, the default on a CPU) the engine lives in
the server's own process. With `--workers N` it lives in a process of its own (server/workers.py) and the N front-end
processes reach it through server/engine_link.py; either way a front end sees the same three things, an `Attachment`:
a predictor to tokenise with, something to `submit()` encoded texts to, and the GetModelInfo answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gamjeong.predictor import EncodedText, Predictor, load_predictor
from gamjeong.server.batcher import DynamicBatcher, TextOutcome, instance_executors
from gamjeong.server.grouping import CallCost, measure_predictor_cost
from gamjeong.server.layout import plan_layout
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.model_info import describe_model
from gamjeong.server.settings import ServerSettings

if TYPE_CHECKING:
    from gamjeong.api.v1 import emotion_pb2 as pb
    from gamjeong.server.tracing import Tracing

log = logging.getLogger(__name__)

# Warm-up inputs: a short message and one that fills the model's whole input length.
_WARMUP_TEXTS = ("오늘 정말 행복해요", "가나다라마바사 " * 400)


class TextQueue(Protocol):
    """What the servicer submits encoded texts to: the DynamicBatcher itself, or a front end's link to it."""

    def submit(self, encoded: Sequence[EncodedText], deadline: float | None = None) -> list[Awaitable[TextOutcome]]:
        """Queue the texts of one call (all or none); one awaitable outcome per text."""
        ...


@dataclass(frozen=True)
class Attachment:
    """What a front end serves with: a predictor that tokenises (in a front-end process it runs no model), the queue
    its encoded texts go to, and the model's GetModelInfo answer."""

    predictor: Predictor
    queue: TextQueue
    model_info: pb.ModelInfo


def default_predictor_factory(settings: ServerSettings, threads: int | None = None) -> Callable[[], Predictor]:
    """Loads the first model instance, with `threads` intra-op threads (the layout's, server/layout.py)."""

    def load() -> Predictor:
        return load_predictor(
            settings.model,
            backend=settings.backend,
            device=settings.device,
            intra_op_threads=threads,
            max_length=settings.max_length,
            intra_op_spinning=settings.intra_op_spinning,
        )

    return load


class InferenceEngine:
    """Loads, warms up and runs the model instances behind one DynamicBatcher (Triton's instance group)."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics: ServerMetrics,
        predictor_factory: Callable[[], Predictor] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        # A given factory (tests, embedding) makes its own predictors: the automatic layout is for the default one.
        self.layout = plan_layout(settings, onnx_on_cpu=None if predictor_factory is None else False)
        self._predictor_factory = predictor_factory or default_predictor_factory(settings, self.layout.threads)
        self._model_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gamjeong-model")
        # Instances 2..N (--instances): each its own session and its own thread; instance 1 uses _model_executor.
        self._instance_executors = instance_executors(self.layout.instances - 1)
        self._solo_executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="gamjeong-solo") if self.layout.solo else None
        )
        self.predictor: Predictor | None = None
        self.batcher: DynamicBatcher | None = None
        self.model_info: pb.ModelInfo | None = None

    async def load(self) -> Attachment:
        """Load every instance, warm them up, measure the cost line, start the batcher."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        # The first instance loads the model and its tokenizer; the others (and the solo session) are more sessions
        # of it, each opened and warmed up in its own thread, at the same time.
        predictor = await loop.run_in_executor(self._model_executor, self._predictor_factory)
        predictors = [
            predictor,
            *await asyncio.gather(
                *(
                    loop.run_in_executor(e, self._another, predictor, self.layout.threads)
                    for e in self._instance_executors
                )
            ),
        ]
        solo = None
        if self._solo_executor is not None:
            solo = await loop.run_in_executor(
                self._solo_executor, predictor.another_session, None, self.settings.intra_op_spinning
            )
        executors = [self._model_executor, *self._instance_executors]
        loaded = time.perf_counter()
        warm = [*zip(executors, predictors, strict=True), *([(self._solo_executor, solo)] if solo else [])]
        await asyncio.gather(*(loop.run_in_executor(e, self._warm_up, p) for e, p in warm))
        call_cost = None
        if self.settings.grouping == "cost":
            # Every instance at once, as they will run when serving (and as they warmed up): the cores they share
            # are part of what a call costs. The mean of their lines is the batcher's one cost line.
            lines = await asyncio.gather(
                *(loop.run_in_executor(e, self._call_cost, p) for e, p in zip(executors, predictors, strict=True))
            )
            call_cost = CallCost(
                sum(c.per_call_s for c in lines) / len(lines), sum(c.per_token_s for c in lines) / len(lines)
            )
            self.metrics.call_cost.labels(part="call").set(call_cost.per_call_s)
            self.metrics.call_cost.labels(part="token").set(call_cost.per_token_s)
        model_info = describe_model(Path(self.settings.model), predictor, self.settings)
        batcher = DynamicBatcher(
            predictor,
            max_batch_size=self.settings.max_batch_size,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue_size=self.settings.max_queue_size,
            executor=self._model_executor,
            metrics=self.metrics,
            more_instances=list(zip(predictors[1:], self._instance_executors, strict=True)),
            grouping=self.settings.grouping,
            call_cost=call_cost,
            sort_window=self.settings.sort_window,
            solo=None if solo is None or self._solo_executor is None else (solo, self._solo_executor),
            model_version=model_info.model_version,
            tracing=self.tracing,
        )
        batcher.start()
        self.predictor, self.batcher = predictor, batcher
        self.metrics.model_instances.set(len(predictors))
        self.model_info = model_info
        log.info(
            "model loaded",
            extra={
                "model": str(self.settings.model),
                "backend": predictor.backend,
                "execution_provider": self.model_info.execution_provider,
                "max_input_length": predictor.max_length,
                "instances": len(predictors),
                "threads_per_instance": self.layout.threads,
                "solo_session": solo is not None,
                "load_s": round(loaded - started, 3),
                "warmup_s": round(time.perf_counter() - loaded, 3),
                "grouping": batcher.grouping,
                "call_cost_ms": None if call_cost is None else round(call_cost.per_call_s * 1e3, 3),
                "token_cost_us": None if call_cost is None else round(call_cost.per_token_s * 1e6, 3),
            },
        )
        return Attachment(predictor, batcher, self.model_info)

    def _another(self, first: Predictor, threads: int | None) -> Predictor:
        """One more instance: another session of the first one's model (sharing its tokenizer), or, where its
        backend has none (PyTorch, a test's predictor), what the factory makes."""
        return first.another_session(threads, self.settings.intra_op_spinning) or self._predictor_factory()

    def _call_cost(self, predictor: Predictor) -> CallCost:
        """The cost line of --grouping cost: given by --call-cost-ms/--token-cost-us, else timed on this model."""
        if self.settings.call_cost_ms is not None and self.settings.token_cost_us is not None:
            return CallCost(self.settings.call_cost_ms / 1e3, self.settings.token_cost_us / 1e6)
        return measure_predictor_cost(predictor)

    @staticmethod
    def _warm_up(predictor: Predictor) -> None:
        """One model call per warm-up text, so the first real call does not pay for lazy initialisation."""
        for encoded in predictor.encode(list(_WARMUP_TEXTS)):
            predictor.predict_encoded([encoded])

    async def retire(self, timeout_s: float) -> None:
        """After a reload: let the batcher finish what it has queued and running (nothing new reaches it), then stop
        and drop the model instances."""
        if self.batcher is not None:
            await self.batcher.drain(timeout_s)
        await self.stop()
        self.predictor = self.batcher = None

    async def stop(self) -> None:
        """Stop the batcher (texts still queued fail with BatcherStoppedError) and the model threads."""
        if self.batcher is not None:
            await self.batcher.stop()
        self._model_executor.shutdown(wait=False, cancel_futures=True)
        for executor in [*self._instance_executors, *([self._solo_executor] if self._solo_executor else [])]:
            executor.shutdown(wait=False, cancel_futures=True)
