"""How front-end processes hand texts to the engine process (`gamjeong serve --workers N`): one Unix socket.

Each front end tokenises its own calls and sends the token ids; the engine queues them in its one DynamicBatcher, so
the model sees batches made of every front end's texts, and sends back seven probabilities per text. Both sides
coalesce: everything submitted (or answered) during one turn of the event loop goes as one frame, so under load a
frame carries many texts and the engine's loop handles a few frames per batch, not one per text.

Frames are a 4-byte length and a pickle of a tuple of small numpy arrays. The socket lives in a directory only this
user can enter (server/workers.py), and only our own processes connect to it.

    front end -> engine   ("hello",)
                          ("reload",)                       ModelAdmin.ReloadModel, answered by "reloaded"
                          ("submit", ids int64[n], calls int32[m] (texts per call), lengths int32[n],
                                     token ids int32[sum(lengths)], seconds left per call float64[m] (nan: none)
                                     [, span context per call uint64[m, 4], when tracing: server/tracing.py])
                          ("cancel", ids int64[k])          texts whose call went away: the batcher drops them
    engine -> front end   ("model", ModelInfo bytes, max input length, model directory)   on hello, and after a reload
                          ("reloaded", ok, changed, previous version, message)
                          ("done", ids int64[k], probabilities float32[k, 7], timing int64[k, 3], model version)
                          ("error", ids int64[k], kind str, message str)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.errors import GamjeongError
from gamjeong.predictor import EncodedText, Predictor
from gamjeong.server.batcher import (
    BatcherStoppedError,
    DeadlinePassedError,
    DynamicBatcher,
    EngineUnavailableError,
    QueueFullError,
    TextOutcome,
)
from gamjeong.server.tracing import Tracing

if TYPE_CHECKING:
    from gamjeong.server.engine import Attachment
    from gamjeong.server.reload import ReloadOutcome

log = logging.getLogger(__name__)

_HEADER = 4
# Error kinds on the wire, and the exception a front end raises for each (server/status.py maps them to statuses).
_ERRORS: dict[str, type[Exception]] = {
    "queue_full": QueueFullError,
    "stopped": BatcherStoppedError,
    "deadline": DeadlinePassedError,
}


@dataclass(frozen=True)
class EngineModel:
    """What the engine announces: the model it serves, its max input length, and the directory it loaded (the front
    end takes its tokenizer from there, so a reload to another tokenizer tokenises for the right model)."""

    info: pb.ModelInfo
    max_length: int
    directory: Path


class ModelCallError(Exception):
    """The model call failed in the engine process (its log has the traceback); the calls in that batch fail."""


def _frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(_HEADER, "little") + body


class _Framed(asyncio.Protocol):
    """Length-prefixed pickled frames over a stream transport; subclasses handle one decoded message at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _HEADER:
            size = int.from_bytes(buffer[start : start + _HEADER], "little")
            end = start + _HEADER + size
            if len(buffer) < end:
                break
            self.handle(pickle.loads(memoryview(buffer)[start + _HEADER : end]))
            start = end
        del buffer[:start]

    def send(self, message: tuple[Any, ...]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(message))

    def handle(self, message: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def _schedule_flush(self) -> None:
        """One frame per turn of the loop: what was submitted (or answered, a batch at once) during it goes together."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        raise NotImplementedError


# --- the engine's side ------------------------------------------------------------------------------------------
class EngineEndpoint(_Framed):
    """One front end's connection, on the engine process: queue its texts, answer each as its batch finishes."""

    def __init__(self, server: EngineServer) -> None:
        super().__init__()
        self._server = server
        self._batcher = server.batcher
        self._in_flight: dict[int, asyncio.Future[TextOutcome]] = {}
        self._done: list[tuple[int, TextOutcome]] = []
        self._errors: list[tuple[int, str, str]] = []
        self._flush_scheduled = False
        self.on_close: Callable[[EngineEndpoint], None] | None = None

    def handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "submit":
            self._submit(*message[1:])
        elif kind == "cancel":
            for text_id in message[1].tolist():
                future = self._in_flight.pop(text_id, None)
                if future is not None:
                    future.cancel()  # the batcher skips a done future; _answer ignores a cancelled one
        elif kind == "hello":
            self.send(self._server.announcement)
        elif kind == "reload":
            task = asyncio.ensure_future(self._reload())
            self._server.tasks.add(task)
            task.add_done_callback(self._server.tasks.discard)

    def attach(self, batcher: DynamicBatcher) -> None:
        """After a reload: this front end's next texts go to the new model's batcher."""
        self._batcher = batcher
        self.send(self._server.announcement)

    async def _reload(self) -> None:
        from gamjeong.server.reload import ReloadInProgressError

        if self._server.reload is None:
            self.send(("reloaded", False, False, "", "This server cannot reload its model."))
            return
        try:
            outcome = await self._server.reload("admin")
        except ReloadInProgressError:
            self.send(("reloaded", False, False, "", "in progress"))
        except GamjeongError as exc:
            self.send(("reloaded", False, False, "", str(exc)))
        else:
            self.send(("reloaded", True, outcome.changed, outcome.previous_version, ""))

    def _submit(
        self,
        ids: np.ndarray,
        calls: np.ndarray,
        lengths: np.ndarray,
        tokens: np.ndarray,
        seconds_left: np.ndarray,
        traces: np.ndarray | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        first = 0
        for call, (count, left) in enumerate(zip(calls.tolist(), seconds_left.tolist(), strict=True)):
            call_ids = ids[first : first + count].tolist()
            encoded = [EncodedText(tokens[offsets[i] : offsets[i + 1]], False) for i in range(first, first + count)]
            first += count
            trace = None if traces is None else Tracing.from_wire(traces[call])
            try:
                futures = self._batcher.submit(encoded, None if left != left else now + left, trace)  # nan: none
            except (QueueFullError, BatcherStoppedError) as exc:
                kind = "queue_full" if isinstance(exc, QueueFullError) else "stopped"
                self._errors.extend((text_id, kind, "") for text_id in call_ids)
                self._schedule_flush()
                continue
            for text_id, future in zip(call_ids, futures, strict=True):
                self._in_flight[text_id] = future
                future.add_done_callback(lambda f, i=text_id: self._answer(i, f))

    def _answer(self, text_id: int, future: asyncio.Future[TextOutcome]) -> None:
        if future.cancelled() or self._in_flight.pop(text_id, None) is None:
            return
        exc = future.exception()
        if exc is None:
            self._done.append((text_id, future.result()))
        elif isinstance(exc, DeadlinePassedError | BatcherStoppedError):
            self._errors.append((text_id, "deadline" if isinstance(exc, DeadlinePassedError) else "stopped", ""))
        else:
            self._errors.append((text_id, "failed", exc.__class__.__name__))
        self._schedule_flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._done:
            done, self._done = self._done, []
            # One frame per model version: two only in the turn of the loop where a reload swapped the model.
            for version, answered in itertools.groupby(done, key=lambda item: item[1].model_version):
                group = list(answered)
                self.send(
                    (
                        "done",
                        np.fromiter((i for i, _ in group), dtype=np.int64, count=len(group)),
                        np.stack([o.probabilities for _, o in group]).astype(np.float32, copy=False),
                        np.array(
                            [(o.queue_time_ns, o.inference_time_ns, o.batch_size) for _, o in group], dtype=np.int64
                        ),
                        version,
                    )
                )
        if self._errors:
            errors, self._errors = self._errors, []
            for (kind, message), group in itertools.groupby(sorted(errors, key=lambda e: e[1:]), lambda e: e[1:]):
                self.send(("error", np.array([e[0] for e in group], dtype=np.int64), kind, message))

    def connection_lost(self, exc: Exception | None) -> None:
        # The front end is gone (stopped, or died): nobody waits for its texts any more.
        for future in self._in_flight.values():
            future.cancel()
        self._in_flight.clear()
        if self.on_close is not None:
            self.on_close(self)


class EngineServer:
    """The engine's listening socket, its front ends' connections, and what it announces to them."""

    def __init__(
        self,
        attachment: Attachment,
        model_dir: Path,
        reload: Callable[[str], Awaitable[ReloadOutcome]] | None = None,
    ) -> None:
        self.reload = reload
        self.tasks: set[asyncio.Future[None]] = set()
        self._server: asyncio.Server | None = None
        self.endpoints: set[EngineEndpoint] = set()
        self.swap(attachment, model_dir)

    def swap(self, attachment: Attachment, model_dir: Path) -> None:
        """Serve `attachment` from now on (start-up, and a reload): new texts go to its batcher, and every front end
        is told the new model (its description, and the directory to take the tokenizer from)."""
        assert isinstance(attachment.queue, DynamicBatcher)
        self.batcher = attachment.queue
        info = attachment.model_info.SerializeToString()
        self.announcement = ("model", info, attachment.predictor.max_length, str(model_dir))
        for endpoint in self.endpoints:
            endpoint.attach(self.batcher)

    def _endpoint(self) -> EngineEndpoint:
        endpoint = EngineEndpoint(self)
        endpoint.on_close = self.endpoints.discard
        self.endpoints.add(endpoint)
        return endpoint

    async def listen(self, path: str) -> None:
        self._server = await asyncio.get_running_loop().create_unix_server(self._endpoint, path)

    async def wait_for_front_ends(self, timeout_s: float) -> None:
        """Until every front end has closed its connection (they are draining), at most `timeout_s`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.endpoints and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    def close(self) -> None:
        """Stop listening and close every front end's connection (their calls in flight fail as UNAVAILABLE)."""
        if self._server is not None:
            self._server.close()
        for endpoint in list(self.endpoints):
            if endpoint.transport is not None:
                endpoint.transport.close()
        self.endpoints.clear()


async def serve_engine(
    path: str,
    attachment: Attachment,
    model_dir: Path,
    reload: Callable[[str], Awaitable[ReloadOutcome]] | None = None,
) -> EngineServer:
    """Listen on the Unix socket `path` for front ends."""
    server = EngineServer(attachment, model_dir, reload)
    await server.listen(path)
    return server


# --- a front end's side -----------------------------------------------------------------------------------------
class TokenizingPredictor(Predictor):
    """A front end's predictor: the model's tokenizer and Predictor's own encoding path (so the ids are the ones the
    engine would make), and no model: the texts' ids go to the engine process."""

    backend = "front-end"
    device = "cpu"

    @classmethod
    def from_dir(cls, model_dir: str | Path, max_length: int) -> TokenizingPredictor:
        from gamjeong.tokenization import load_serving_tokenizer

        return cls(load_serving_tokenizer(model_dir), max_length)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise RuntimeError("a front-end process runs no model; its texts go to the engine process")


class EngineLink(_Framed):
    """A front end's connection to the engine, with the batcher's `submit()`: the servicer uses it unchanged."""

    def __init__(self, on_lost: Callable[[], None], on_model: Callable[[EngineModel], None]) -> None:
        super().__init__()
        self._on_lost = on_lost
        self._on_model = on_model  # a reload: the engine serves another model from now on
        self._reloads: list[asyncio.Future[tuple[Any, ...]]] = []
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[TextOutcome]] = {}
        self._outgoing: list[tuple[list[int], Sequence[EncodedText], float, object | None]] = []
        self._cancelled: list[int] = []
        self._flush_scheduled = False
        self._welcome: asyncio.Future[EngineModel] = asyncio.get_running_loop().create_future()
        self.connected = False
        self.tracing: Tracing | None = None  # set by the front end when tracing: each call's span context goes along

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connected = True
        self.send(("hello",))

    async def welcome(self) -> EngineModel:
        """The model the engine serves, sent once it has accepted this front end."""
        return await self._welcome

    async def reload(self) -> tuple[bool, bool, str, str]:
        """Ask the engine to reload its model: (ok, changed, previous version, message)."""
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._reloads.append(future)
        self.send(("reload",))
        ok, changed, previous, message = await future
        return ok, changed, previous, message

    def submit(
        self, encoded: Sequence[EncodedText], deadline: float | None = None
    ) -> list[asyncio.Future[TextOutcome]]:
        """Queue one call's texts at the engine; outcomes (or its errors: queue full...) arrive as futures."""
        if not self.connected:
            raise EngineUnavailableError
        loop = asyncio.get_running_loop()
        ids = [next(self._ids) for _ in encoded]
        futures = []
        for text_id in ids:
            future: asyncio.Future[TextOutcome] = loop.create_future()
            future.add_done_callback(lambda f, i=text_id: self._local_done(i, f))
            self._pending[text_id] = future
            futures.append(future)
        seconds_left = float("nan") if deadline is None else deadline - loop.time()
        trace = None if self.tracing is None else self.tracing.current()
        self._outgoing.append((ids, encoded, seconds_left, trace))
        self._schedule_flush()
        return futures

    def _local_done(self, text_id: int, future: asyncio.Future[TextOutcome]) -> None:
        if future.cancelled() and self._pending.pop(text_id, None) is not None:
            self._cancelled.append(text_id)  # the call went away: tell the engine to drop the text
            self._schedule_flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._outgoing:
            calls, self._outgoing = self._outgoing, []
            ids = [i for call_ids, _, _, _ in calls for i in call_ids]
            texts = [np.asarray(e.input_ids, dtype=np.int32) for _, encoded, _, _ in calls for e in encoded]
            message = (
                "submit",
                np.array(ids, dtype=np.int64),
                np.array([len(call_ids) for call_ids, _, _, _ in calls], dtype=np.int32),
                np.array([len(t) for t in texts], dtype=np.int32),
                np.concatenate(texts),
                np.array([left for _, _, left, _ in calls], dtype=np.float64),
            )
            if self.tracing is not None:
                message += (Tracing.to_wire([trace for _, _, _, trace in calls]),)  # type: ignore[misc]
            self.send(message)
        if self._cancelled:
            cancelled, self._cancelled = self._cancelled, []
            self.send(("cancel", np.array(cancelled, dtype=np.int64)))

    def handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "done":
            _, ids, probabilities, timing, version = message
            for text_id, row, (queue_ns, inference_ns, batch_size) in zip(
                ids.tolist(), probabilities, timing.tolist(), strict=True
            ):
                future = self._pending.pop(text_id, None)
                if future is not None and not future.done():
                    future.set_result(TextOutcome(row, queue_ns, inference_ns, batch_size, version))
        elif kind == "error":
            _, ids, error, name = message
            for text_id in ids.tolist():
                future = self._pending.pop(text_id, None)
                if future is not None and not future.done():
                    exc_type = _ERRORS.get(error)
                    future.set_exception(exc_type() if exc_type else ModelCallError(name))
        elif kind == "model":
            model = EngineModel(pb.ModelInfo.FromString(message[1]), message[2], Path(message[3]))
            if not self._welcome.done():
                self._welcome.set_result(model)
            else:
                self._on_model(model)
        elif kind == "reloaded" and self._reloads:
            future = self._reloads.pop(0)
            if not future.done():
                future.set_result(message[1:])

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(EngineUnavailableError())
        if not self._welcome.done():
            self._welcome.set_exception(EngineUnavailableError())
        for future in self._reloads:
            if not future.done():
                future.set_exception(EngineUnavailableError())
        self._reloads.clear()
        self._on_lost()


async def connect_engine(
    path: str, on_lost: Callable[[], None], on_model: Callable[[EngineModel], None], retry_s: float = 0.1
) -> EngineLink:
    """Connect to the engine at `path`, waiting for it to listen (it starts listening once its model is warm)."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    while True:
        try:
            _, link = await loop.create_unix_connection(lambda: EngineLink(on_lost, on_model), path)
            return link
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() - started > 5 and int(time.monotonic() - started) % 30 == 0:
                log.debug("waiting for the engine process", extra={"socket": path})
            await asyncio.sleep(retry_s)
