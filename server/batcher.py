"""The dynamic batcher shared by all RPCs: gather queued texts, group them by length, run the model once per group.

Requests put already-tokenised texts in one queue and await one future per text. A single collector task takes the waiting
texts (up to `sort_window` of them) once `max_batch_size` are waiting or the oldest has waited `max_wait_ms`, sorts
them by length (so short texts are not padded to the longest one), splits them into model calls by a cost model
(server/grouping.py: a cut wherever the padding it saves is worth more than one more call; each call within
`max_batch_size` texts and `max_batch_tokens` padded tokens), and runs each group on the model in a one-thread
executor (so the event loop keeps serving while the model runs). `grouping="fill"` is the earlier fixed split: up to
`max_batch_size` texts in arrival order, cut only when a group is full.
Texts whose call was cancelled or whose deadline passed are dropped before the model sees them.

With several model instances (`gamjeong serve --instances N`, like Triton's instance groups) the one queue feeds N
inference sessions, each with its own one-thread executor and intra-op threads: the collector takes the next batch as
soon as any instance is idle, so N batches run at once. Batches still form only while every instance is busy, so one
instance behaves exactly as before. With a solo session (server/layout.py), a batch that would run alone on an idle
server (one group, every instance idle, nothing else queued) runs there instead, on all cores, and the collector waits
for it: the solo session and the instances never share the cores.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from gamjeong.predictor import EncodedText, Predictor
from gamjeong.server.grouping import CallCost, group_by_length, plan_groups
from gamjeong.server.metrics import ServerMetrics

if TYPE_CHECKING:
    from gamjeong.server.tracing import Tracing

__all__ = ["DynamicBatcher", "TextOutcome", "group_by_length", "instance_executors"]

Grouping = Literal["cost", "fill"]

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue holds max_queue_size texts already; the caller maps it to RESOURCE_EXHAUSTED."""


class BatcherStoppedError(Exception):
    """The server is shutting down and no longer runs the model; the caller maps it to UNAVAILABLE."""


class DeadlinePassedError(Exception):
    """The call's deadline passed while its text waited in the queue."""


class EngineUnavailableError(Exception):
    """A front-end process lost (or has not yet reached) the engine process that runs the model (--workers)."""


@dataclass(frozen=True)
class TextOutcome:
    """The model's answer for one text, with where its time went."""

    probabilities: np.ndarray  # float32 [7]
    queue_time_ns: int
    inference_time_ns: int
    batch_size: int
    model_version: str = ""  # ModelInfo.model_version of the model that ran it (a reload swaps models)


@dataclass(eq=False)
class _Queued:
    encoded: EncodedText
    future: asyncio.Future[TextOutcome]
    enqueued_ns: int
    deadline: float | None  # event-loop time, None for no deadline
    trace: object | None = None  # the calling request's span context, when traced (server/tracing.py)


def instance_executors(count: int) -> list[ThreadPoolExecutor]:
    """One single-thread executor per model instance: a session runs one batch at a time, its intra-op threads do
    the parallel work inside it."""
    return [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gamjeong-model-{i}") for i in range(count)]


class DynamicBatcher:
    """Gathers texts from concurrent calls into model batches; one per server, feeding one or more model instances."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_ms: float,
        max_queue_size: int,
        executor: Executor,
        metrics: ServerMetrics,
        more_instances: Sequence[tuple[Predictor, Executor]] = (),
        grouping: Grouping = "fill",
        call_cost: CallCost | None = None,
        sort_window: int = 128,
        solo: tuple[Predictor, Executor] | None = None,
        model_version: str = "",
        tracing: Tracing | None = None,
    ) -> None:
        # Instance 0 is (predictor, executor); `more_instances` are the others, each its own session and thread.
        self._predictors: list[Predictor] = [predictor, *(p for p, _ in more_instances)]
        self._executors: list[Executor] = [executor, *(e for _, e in more_instances)]
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        # "cost" needs the model's cost line; without one the fixed split is the only honest choice.
        self.grouping: Grouping = grouping if call_cost is not None else "fill"
        self.call_cost = call_cost
        # How many waiting texts are sorted together: more than one batch, so that a deep queue can be cut into calls
        # of similar lengths (the measurement: sorting windows of 64 beat arrival-order batches of 32 by 1.7x).
        self.sort_window = max(sort_window, max_batch_size) if self.grouping == "cost" else max_batch_size
        self._solo = solo
        self.model_version = model_version
        self._tracing = tracing
        self._metrics = metrics
        self._queue: collections.deque[_Queued] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._idle: asyncio.Queue[int] | None = None  # indices of idle instances (made on the loop, in start())
        self._running: set[asyncio.Task[None]] = set()

    @property
    def predictor(self) -> Predictor:
        """Instance 0's predictor (the one that also tokenises); tests may swap it."""
        return self._predictors[0]

    @predictor.setter
    def predictor(self, value: Predictor) -> None:
        self._predictors[0] = value

    @property
    def instances(self) -> int:
        return len(self._predictors)

    # --- the request side -------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Texts waiting (dropped ones included until the collector skips them)."""
        return len(self._queue)

    def submit(
        self, encoded: Sequence[EncodedText], deadline: float | None = None, trace: object | None = None
    ) -> list[asyncio.Future[TextOutcome]]:
        """Queue the texts of one call; all or none. Raises QueueFullError or BatcherStoppedError. `trace`: the
        call's span context when it comes from another process (else, when tracing, the current one is taken)."""
        if self._stopped:
            raise BatcherStoppedError
        if len(self._queue) + len(encoded) > self.max_queue_size:
            self._purge_dead()
            if len(self._queue) + len(encoded) > self.max_queue_size:
                raise QueueFullError
        loop = asyncio.get_running_loop()
        now = time.perf_counter_ns()
        if self._tracing is not None and trace is None:
            trace = self._tracing.current()
        futures = []
        for item in encoded:
            future: asyncio.Future[TextOutcome] = loop.create_future()
            self._queue.append(_Queued(item, future, now, deadline, trace))
            futures.append(future)
        self._metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        return futures

    # --- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for index in range(len(self._predictors)):
                self._idle.put_nowait(index)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect_forever(), name="gamjeong-batcher")

    async def drain(self, timeout_s: float) -> None:
        """Until nothing is queued or running, at most `timeout_s` (a reload retires this batcher: no new texts)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (self._queue or self._running) and loop.time() < end:
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop collecting; texts still queued fail with BatcherStoppedError (call after in-flight calls finished)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._running):  # batches still running (none after a drain): their callers are gone
            task.cancel()
        if self._running:
            await asyncio.wait(self._running)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherStoppedError())
        self._metrics.queue_depth.set(0)

    # --- the collector ----------------------------------------------------------------------------------------
    def _purge_dead(self) -> None:
        self._queue = collections.deque(q for q in self._queue if not q.future.done())
        self._metrics.queue_depth.set(len(self._queue))

    def _is_live(self, item: _Queued, now: float) -> bool:
        """False (and the text counted as dropped) for a cancelled call or a passed deadline."""
        if item.future.done():  # the call was cancelled (client gone, deadline hit server-side)
            self._metrics.texts_dropped.labels(reason="cancelled").inc()
            return False
        if item.deadline is not None and now >= item.deadline:
            item.future.set_exception(DeadlinePassedError())
            self._metrics.texts_dropped.labels(reason="deadline").inc()
            return False
        return True

    async def _wait_for_batch(self) -> None:
        """Return once max_batch_size texts are queued or the oldest has waited max_wait_ms."""
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        if len(self._queue) == 1:
            # One turn of the loop: calls whose handlers are already scheduled (e.g. read while the model ran) queue
            # their texts too, instead of each running alone.
            await asyncio.sleep(0)
        oldest_ns = self._queue[0].enqueued_ns
        while len(self._queue) < self.max_batch_size:
            remaining = self.max_wait_s - (time.perf_counter_ns() - oldest_ns) / 1e9
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Queued]:
        loop_now = asyncio.get_running_loop().time()
        taken: list[_Queued] = []
        while self._queue and len(taken) < self.sort_window:
            item = self._queue.popleft()
            if self._is_live(item, loop_now):
                taken.append(item)
        self._metrics.queue_depth.set(len(self._queue))
        return taken

    def _groups(self, lengths: list[int]) -> list[list[int]]:
        if self.grouping == "cost" and self.call_cost is not None:
            return plan_groups(lengths, self.call_cost, self.max_batch_size, self.max_batch_tokens)
        return group_by_length(lengths, self.max_batch_size, self.max_batch_tokens)

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        idle = self._idle
        assert idle is not None
        while True:
            # An idle instance first, then the batch: while every instance is busy, texts keep piling up in the queue
            # and form the next (larger) batch, as they did with one model.
            instance: int | None = await idle.get()
            try:
                await self._wait_for_batch()
            except asyncio.CancelledError:
                idle.put_nowait(instance)
                raise
            taken = self._take()
            groups = self._groups([len(t.encoded.input_ids) for t in taken])
            if self._solo is not None and len(groups) == 1 and self._alone(idle):
                # The only work on an idle server: the solo session, on all cores.
                group = [taken[i] for i in groups[0] if self._is_live(taken[i], loop.time())]
                idle.put_nowait(instance)
                if group:
                    await self._run_solo(loop, group)
                continue
            for indices in groups:
                if instance is None:
                    instance = await idle.get()
                # Earlier groups took time: check again just before this one runs.
                now = loop.time()
                group = [taken[i] for i in indices if self._is_live(taken[i], now)]
                if group:
                    task = loop.create_task(self._run_group(loop, group, instance))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                    instance = None
            if instance is not None:
                idle.put_nowait(instance)

    def _alone(self, idle: asyncio.Queue[int]) -> bool:
        """Nothing else queued and every instance idle (the collector holds one of them)."""
        return not self._queue and idle.qsize() == self.instances - 1

    async def _run_solo(self, loop: asyncio.AbstractEventLoop, group: list[_Queued]) -> None:
        """Run the group on the solo session and wait for it (a task, so that stop() can cancel it like the others):
        no instance starts meanwhile, and texts arriving form the next batch."""
        assert self._solo is not None
        predictor, executor = self._solo
        task = loop.create_task(self._run_on(loop, group, predictor, executor, "solo"))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        await asyncio.wait({task})

    async def _run_group(self, loop: asyncio.AbstractEventLoop, group: list[_Queued], instance: int = 0) -> None:
        try:
            await self._run_on(loop, group, self._predictors[instance], self._executors[instance], instance)
        finally:
            if self._idle is not None:
                self._idle.put_nowait(instance)

    async def _run_on(
        self,
        loop: asyncio.AbstractEventLoop,
        group: list[_Queued],
        predictor: Predictor,
        executor: Executor,
        instance: int | str,
    ) -> None:
        started_ns = time.perf_counter_ns()
        encoded = [item.encoded for item in group]
        try:
            probabilities = await loop.run_in_executor(executor, predictor.predict_encoded, encoded)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._tracing is not None:
                self._trace(group, started_ns, instance, exc)
            self._fail(group, exc, instance)
            return
        if self._tracing is not None:
            self._trace(group, started_ns, instance)
        self._deliver(group, probabilities, started_ns)

    def _trace(self, group: list[_Queued], started_ns: int, instance: int | str, exc: Exception | None = None) -> None:
        """The model call's span and its requests' queue spans (server/tracing.py)."""
        assert self._tracing is not None
        lengths = [len(item.encoded.input_ids) for item in group]
        self._tracing.record_batch(
            [(item.trace, item.enqueued_ns) for item in group],  # type: ignore[misc]
            started_ns,
            time.perf_counter_ns(),
            batch_size=len(group),
            padded_tokens=len(group) * max(lengths),
            real_tokens=sum(lengths),
            instance=instance,
            error=exc,
        )

    @staticmethod
    def _fail(group: list[_Queued], exc: Exception, instance: int | str) -> None:
        """A model failure fails this group's calls, not the server."""
        log.exception("model call failed", exc_info=exc, extra={"batch_size": len(group), "instance": instance})
        for item in group:
            if not item.future.done():
                item.future.set_exception(exc)

    def _deliver(self, group: list[_Queued], probabilities: np.ndarray, started_ns: int) -> None:
        inference_ns = time.perf_counter_ns() - started_ns
        encoded = [item.encoded for item in group]
        width = max(len(e.input_ids) for e in encoded)
        self._metrics.batch_size.observe(len(group))
        self._metrics.batch_tokens.observe(len(group) * width)
        self._metrics.batch_real_tokens.observe(sum(len(e.input_ids) for e in encoded))
        self._metrics.inference_latency.observe(inference_ns / 1e9)
        self._metrics.texts_classified.inc(len(group))
        for item, row in zip(group, probabilities, strict=True):
            queue_ns = started_ns - item.enqueued_ns
            self._metrics.queue_time.observe(queue_ns / 1e9)
            if not item.future.done():  # cancelled while the model ran: nothing to deliver
                item.future.set_result(TextOutcome(row, queue_ns, inference_ns, len(group), self.model_version))
