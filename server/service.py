"""The EmotionClassifier servicer: request validation, tokenisation off the event loop, and the three classifying RPCs
on top of the shared dynamic batcher."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.classification import ranked_ids
from gamjeong.labels import EMOTIONS, NUM_LABELS
from gamjeong.predictor import EncodedText, Predictor
from gamjeong.server.batcher import TextOutcome
from gamjeong.server.cache import ResultCache
from gamjeong.server.engine import TextQueue
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.model_info import describe_model
from gamjeong.server.settings import ServerSettings
from gamjeong.server.status import (
    HTTP_STATUS,
    RequestError,
    UndecodableRequest,
    UndecodableRequestError,
    http_status,
    internal_error,
    status_of,
)
from gamjeong.server.validation import check_chat_ids, check_truncation_value, is_blank

if TYPE_CHECKING:
    from gamjeong.server.tracing import Tracing

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmotionClassifier"].full_name  # "gamjeong.v1.EmotionClassifier"
# How many chunks (of max_batch_size texts) of a ClassifyStream call are queued at once, at most: enough to keep the
# model busy while results are sent, few enough to leave room in the queue for everybody else.
STREAM_CHUNKS_IN_FLIGHT = 4
# Up to this many characters per request are tokenised on the event loop (~150 µs at most), the rest in a thread.
INLINE_TOKENIZE_CHARS = 1000
# Re-exported: the HTTP transport and older callers import these from here.
__all__ = [
    "HTTP_STATUS",
    "SERVICE_NAME",
    "EmotionClassifierServicer",
    "RequestError",
    "add_to_server",
    "describe_model",
    "emotion_result",
    "http_status",
]


@dataclass(frozen=True)
class RequestOptions:
    """Per-request options shared by the three classifying RPCs."""

    top_k: int
    refuse_truncation: bool


def emotion_result(outcome: TextOutcome, encoded: EncodedText, tokenization_ns: int, top_k: int) -> pb.EmotionResult:
    return _result(
        outcome.probabilities,
        encoded.truncated,
        top_k,
        pb.Timing(
            tokenization_time_ns=tokenization_ns,
            queue_time_ns=max(outcome.queue_time_ns, 0),
            inference_time_ns=outcome.inference_time_ns,
            num_tokens=len(encoded.input_ids),
            batch_size=outcome.batch_size,
        ),
        outcome.model_version,
    )


def _result(
    probabilities: np.ndarray, truncated: bool, top_k: int, timing: pb.Timing, model_version: str
) -> pb.EmotionResult:
    ranked = ranked_ids(probabilities)  # the order `gamjeong classify` picks its label by
    if 0 < top_k < NUM_LABELS:
        ranked = ranked[:top_k]
    best = EMOTIONS[ranked[0]]
    return pb.EmotionResult(
        label_id=best.id,
        label=best.name,
        label_ko=best.name_ko,
        score=float(probabilities[best.id]),
        scores=[
            pb.LabelScore(
                label_id=EMOTIONS[i].id,
                label=EMOTIONS[i].name,
                label_ko=EMOTIONS[i].name_ko,
                score=float(probabilities[i]),
            )
            for i in ranked
        ],
        truncated=truncated,
        timing=timing,
        model_version=model_version,
    )


def _status_of_cancelled(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    remaining = context.time_remaining()
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, UndecodableRequest):
        raise UndecodableRequestError(request)


def observed(method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Counts the RPC by status code and times it; turns RequestError into the matching gRPC status."""

    @contextlib.asynccontextmanager
    async def observing(self: EmotionClassifierServicer, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """One place for both call shapes: readiness check, status code of every way a call can end, metrics."""
        started, code = time.perf_counter(), grpc.StatusCode.OK
        traced = None if self.tracing is None else self.tracing.start_request(SERVICE_NAME, method, context)
        try:
            self.check_ready()
            yield
        except asyncio.CancelledError:
            code = _status_of_cancelled(context)
            raise
        except GeneratorExit:  # a stream ended while a response was pending (client gone)
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            known = status_of(exc, max_queue_size=self.settings.max_queue_size)
            if known is None:
                log.exception("unexpected error in %s", method)
            code, message = known or internal_error(exc)
            await context.abort(code, message)
        finally:
            if traced is not None:
                traced.end(code)
            self.metrics.requests.labels(method=method, code=code.name).inc()
            self.metrics.request_latency.labels(method=method).observe(time.perf_counter() - started)

    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(handler):

            @functools.wraps(handler)
            async def streaming(self: EmotionClassifierServicer, request: Any, context: Any) -> AsyncIterator[Any]:
                async with observing(self, context):
                    _refuse_undecodable(request)
                    # aclosing: when this stream ends early (client gone, server stopping), the handler's own cleanup
                    # (cancelling its tasks) runs now, not whenever the garbage collector finds the generator.
                    async with contextlib.aclosing(handler(self, request, context)) as responses:
                        async for response in responses:
                            yield response

            return streaming

        @functools.wraps(handler)
        async def unary(self: EmotionClassifierServicer, request: Any, context: Any) -> Any:
            async with observing(self, context):
                _refuse_undecodable(request)
                return await handler(self, request, context)

        return unary

    return decorate


class EmotionClassifierServicer(pb_grpc.EmotionClassifierServicer):
    """The four RPCs of gamjeong.v1.EmotionClassifier."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics, tokenizer_executor: Executor) -> None:
        self.settings = settings
        self.metrics = metrics
        self._tokenizer_executor = tokenizer_executor
        self.predictor: Predictor | None = None
        self.batcher: TextQueue | None = None  # the DynamicBatcher, or a front end's link to the engine process
        self.model_info: pb.ModelInfo | None = None
        self.cache: ResultCache | None = None
        self.tracing: Tracing | None = None  # OpenTelemetry spans of each call (server/tracing.py), when on

    def attach(
        self,
        predictor: Predictor,
        batcher: TextQueue,
        model_info: pb.ModelInfo,
        cache: ResultCache | None = None,
    ) -> None:
        """Called once the model is loaded and warmed up; until then every call gets UNAVAILABLE. The cache, when
        there is one, was made for this predictor (its tokenizer's normaliser and max length are in every key)."""
        self.predictor, self.batcher, self.model_info, self.cache = predictor, batcher, model_info, cache

    def check_ready(self) -> None:
        if self.batcher is None:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, "The model is still loading; retry once health reports SERVING."
            )

    # --- validation and the shared classify path --------------------------------------------------------------
    def request_options(self, top_k: int, truncation: int) -> RequestOptions:
        check_truncation_value(truncation)
        if truncation == pb.TRUNCATION_UNSPECIFIED:
            refuse = self.settings.truncation == "refuse"
        else:
            refuse = truncation == pb.TRUNCATION_REFUSE
        return RequestOptions(top_k=int(top_k), refuse_truncation=refuse)

    def check_count(self, texts: Sequence[str], limit: int, method: str, hint: str) -> None:
        if not texts:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{method} needs at least one text.")
        if len(texts) > limit:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method} takes at most {limit} texts per request (got {len(texts)}); {hint}",
            )

    def check_text(self, text: str, where: str) -> None:
        if is_blank(text):  # whitespace, or invisible characters only (U+200B, U+FEFF, Hangul fillers...)
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{where} is empty; send non-blank text.")
        if len(text) > self.settings.max_text_chars:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where} has {len(text)} characters, over the limit of {self.settings.max_text_chars}; "
                "split it or shorten it.",
            )

    async def _encode(self, texts: Sequence[str], predictor: Predictor) -> tuple[list[EncodedText], int]:
        """Tokenise; returns (encoded, ns). A small request is tokenised right here on the event loop: a short text
        takes ~10 µs, far less than the two thread switches of the tokenizer pool. Larger ones go to that pool (the
        fast tokenizer releases the GIL), so a bulk request never holds up the loop."""
        started = time.perf_counter_ns()
        if sum(len(text) for text in texts) <= INLINE_TOKENIZE_CHARS:
            encoded = predictor.encode(list(texts))
        else:
            encoded = await asyncio.get_running_loop().run_in_executor(
                self._tokenizer_executor, predictor.encode, list(texts)
            )
        ended = time.perf_counter_ns()
        if self.tracing is not None:
            self.tracing.record_tokenize(started, ended, len(texts))
        return encoded, ended - started

    def _check_truncation(
        self, encoded: Sequence[EncodedText], options: RequestOptions, where: Callable[[int], str], max_length: int
    ) -> None:
        if not options.refuse_truncation:
            return
        for i, e in enumerate(encoded):
            if e.truncated:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{where(i)} is longer than the model's maximum input of {max_length} tokens "
                    "and truncation was refused; shorten it or allow truncation.",
                )

    @staticmethod
    def _submit(
        encoded: Sequence[EncodedText], context: grpc.aio.ServicerContext, batcher: TextQueue
    ) -> list[Awaitable[TextOutcome]]:
        remaining = context.time_remaining()
        deadline = None if remaining is None else asyncio.get_running_loop().time() + remaining
        return batcher.submit(encoded, deadline)  # QueueFullError, BatcherStoppedError: see server/status.py

    async def classify(
        self,
        texts: Sequence[str],
        options: RequestOptions,
        context: grpc.aio.ServicerContext,
        where: Callable[[int], str],
    ) -> list[pb.EmotionResult]:
        """One result per text, in order: repeated texts from the result cache (no tokenising, no queueing), the
        others through the model."""
        cache = self.cache
        if cache is None:
            return [result for result, _ in await self._classify_on_model(texts, options, context, where)]
        keys = [cache.key(text, options.refuse_truncation) for text in texts]
        cached = [cache.get(key) for key in keys]
        misses = [i for i, hit in enumerate(cached) if hit is None]
        fresh = (
            await self._classify_on_model([texts[i] for i in misses], options, context, lambda j: where(misses[j]))
            if misses
            else []
        )
        results: list[pb.EmotionResult] = []
        answers = iter(fresh)
        for key, hit in zip(keys, cached, strict=True):
            if hit is None:
                result, outcome = next(answers)
                cache.put(key, outcome.probabilities, result.timing.num_tokens, result.truncated, outcome.model_version)
                results.append(result)
            else:
                timing = pb.Timing(num_tokens=hit.num_tokens, cache_hit=True)
                results.append(_result(hit.probabilities, hit.truncated, options.top_k, timing, hit.model_version))
        return results

    async def _classify_on_model(
        self,
        texts: Sequence[str],
        options: RequestOptions,
        context: grpc.aio.ServicerContext,
        where: Callable[[int], str],
    ) -> list[tuple[pb.EmotionResult, TextOutcome]]:
        """Tokenise, check truncation, queue, await: one (result, probabilities) per text, in order. The predictor
        that tokenises and the queue the ids go to are taken together: a reload may swap both meanwhile."""
        predictor, batcher = self.predictor, self.batcher
        assert predictor is not None and batcher is not None
        encoded, tokenization_ns = await self._encode(texts, predictor)
        self._check_truncation(encoded, options, where, predictor.max_length)
        futures = self._submit(encoded, context, batcher)
        try:
            outcomes = await asyncio.gather(*futures)
        except asyncio.CancelledError:
            for future in futures:  # gather cancels them too; be explicit: the batcher must drop these texts
                future.cancel()  # type: ignore[attr-defined]
            raise
        return [
            (emotion_result(o, e, tokenization_ns, options.top_k), o) for o, e in zip(outcomes, encoded, strict=True)
        ]

    # --- RPCs ---------------------------------------------------------------------------------------------------
    @observed("Classify")
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        texts = list(request.texts)
        self.check_count(
            texts, self.settings.max_texts_per_request, "Classify", "split them or use ClassifyStream for bulk jobs."
        )
        for i, text in enumerate(texts):
            self.check_text(text, f"texts[{i}]")
        options = self.request_options(request.top_k, request.truncation)
        results = await self.classify(texts, options, context, lambda i: f"texts[{i}]")
        return pb.ClassifyResponse(results=results)

    @observed("ClassifyStream")
    async def ClassifyStream(
        self, request: pb.ClassifyStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        texts = list(request.texts)
        self.check_count(texts, self.settings.max_stream_texts, "ClassifyStream", "split the job into several calls.")
        for i, text in enumerate(texts):
            self.check_text(text, f"texts[{i}]")
        options = self.request_options(request.top_k, request.truncation)
        chunk = self.settings.max_batch_size
        # Never let a stream fill more than half the queue by itself: the rest is for other callers.
        chunks_in_flight = max(1, min(STREAM_CHUNKS_IN_FLIGHT, self.settings.max_queue_size // (2 * chunk)))
        in_flight: deque[tuple[int, asyncio.Task[list[pb.EmotionResult]]]] = deque()
        next_offset = 0
        try:
            while next_offset < len(texts) or in_flight:
                # Keep a few chunks queued so the batcher always has the next one while this one is sent.
                while next_offset < len(texts) and len(in_flight) < chunks_in_flight:
                    offset = next_offset
                    job = asyncio.ensure_future(
                        self.classify(
                            texts[offset : offset + chunk], options, context, lambda i, o=offset: f"texts[{o + i}]"
                        )
                    )
                    in_flight.append((offset, job))
                    next_offset += chunk
                offset, job = in_flight.popleft()
                yield pb.ClassifyStreamResponse(offset=offset, results=await job)
        finally:
            for _, job in in_flight:
                job.cancel()

    @observed("ClassifyChat")
    async def ClassifyChat(
        self, request_iterator: AsyncIterator[pb.ChatMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatResult]:
        # A reader task takes messages as they arrive and starts one job per message; this generator answers the jobs
        # in arrival order. A semaphore bounds the jobs of one stream, so a fast sender is slowed by flow control.
        jobs: asyncio.Queue[asyncio.Task[pb.ChatResult]] = asyncio.Queue()
        slots = asyncio.Semaphore(self.settings.max_queue_size)

        async def read() -> None:
            async for message in request_iterator:
                _refuse_undecodable(message)  # no id to answer: the stream ends with INVALID_ARGUMENT
                await slots.acquire()
                job = asyncio.ensure_future(self._chat_one(message, context))
                job.add_done_callback(lambda _: slots.release())
                jobs.put_nowait(job)

        reader = asyncio.ensure_future(read())
        getter: asyncio.Future[asyncio.Task[pb.ChatResult]] | None = None
        try:
            while True:
                if not jobs.empty():
                    yield await jobs.get_nowait()
                    continue
                if reader.done():
                    reader.result()  # re-raise a failed read
                    return
                getter = asyncio.ensure_future(jobs.get())
                await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield await getter.result()
                else:
                    getter.cancel()
        finally:
            # Cancel and wait for the reader, so no task of this call outlives it ("Task was destroyed but it is
            # pending" at exit), and retrieve its outcome so asyncio does not log it as never retrieved.
            for task in (reader, getter):
                if task is not None:
                    task.cancel()
            await asyncio.wait({reader})
            if not reader.cancelled():
                reader.exception()
            while not jobs.empty():
                jobs.get_nowait().cancel()

    async def _chat_one(self, message: pb.ChatMessage, context: grpc.aio.ServicerContext) -> pb.ChatResult:
        """The result of one chat message; a problem with it becomes an error result, never a failed stream."""
        answer = pb.ChatResult()
        where = "the message"
        try:
            check_chat_ids(message)  # before echoing them
            answer.id, answer.conversation_id = message.id, message.conversation_id
            where = f"message {message.id!r}"
            self.check_text(message.text, where)
            options = self.request_options(message.top_k, message.truncation)
            (result,) = await self.classify([message.text], options, context, lambda _: where)
            answer.result.CopyFrom(result)
        except Exception as exc:  # e.g. the model call failed: this message fails, the conversation goes on
            known = status_of(exc, max_queue_size=self.settings.max_queue_size)
            if known is None:
                log.exception("chat message failed", extra={"message_id": answer.id})
            code, text = known or internal_error(exc)
            answer.error.CopyFrom(pb.Error(code=code.value[0], message=text))
        return answer

    @observed("GetModelInfo")
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        assert self.model_info is not None  # check_ready() passed
        return self.model_info


def tolerant(message_class: Any) -> Callable[[bytes], Any]:
    """A request deserializer that returns UndecodableRequest instead of raising (see server/status.py)."""
    full_name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:  # malformed wire format, or a string field that is not UTF-8
            return UndecodableRequest(full_name)

    return parse


def add_to_server(servicer: EmotionClassifierServicer, server: grpc.aio.Server) -> None:
    """What the generated add_EmotionClassifierServicer_to_server does, with deserializers that never raise."""
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {
        method.name: factories[(method.client_streaming, method.server_streaming)](
            getattr(servicer, method.name),
            request_deserializer=tolerant(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in pb.DESCRIPTOR.services_by_name["EmotionClassifier"].methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
