"""Friendly Python clients of the gamjeong gRPC service: `EmotionClient` (blocking) and `AsyncEmotionClient` (asyncio).

    with EmotionClient("localhost:50051") as client:
        for result in client.classify(["오늘 정말 행복해요", "너무 무서워요"]):
            print(result.label, result.label_ko, result.score, result.scores["fear"])

Calls fail with `grpc.RpcError` (its `.code()` and `.details()` say why). UNAVAILABLE is retried with backoff by gRPC's
own retry policy (channel service config), so a server that restarts or is still loading its model is waited for.

Several servers: gRPC keeps one HTTP/2 connection per channel, so behind a Kubernetes ClusterIP service one client
talks to one pod. With `load_balancing="round_robin"` the channel connects to every address its target resolves to
and spreads calls over them: pass "dns:///gamjeong-headless.NAMESPACE.svc.cluster.local:50051" (a headless service
resolves to every ready pod), or several "host:port" addresses (IP literals) as a list or comma-separated.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.clients.balancing import SERVICE_NAME, LoadBalancing, channel_target, retry_service_config, service_config

__all__ = [
    "SERVICE_NAME",
    "AsyncEmotionClient",
    "ChatMessage",
    "ChatReply",
    "EmotionClient",
    "EmotionResult",
    "LoadBalancing",
    "ModelInfo",
    "Timing",
    "channel_target",
    "retry_service_config",
    "service_config",
]
DEFAULT_TIMEOUT_S = 30.0
Truncation = Literal["truncate", "refuse"]

_TRUNCATION = {None: pb.TRUNCATION_UNSPECIFIED, "truncate": pb.TRUNCATION_TRUNCATE, "refuse": pb.TRUNCATION_REFUSE}


@dataclass(frozen=True)
class Timing:
    """Where the server spent the time for one text (nanoseconds), and the size of the model batch it ran in."""

    tokenization_ns: int
    queue_ns: int
    inference_ns: int
    num_tokens: int
    batch_size: int
    cache_hit: bool = False  # answered by the server's result cache: not queued, not run through the model


@dataclass(frozen=True)
class EmotionResult:
    """The emotion of one text."""

    label_id: int
    label: str  # English name, e.g. "joy"
    label_ko: str  # Korean name, e.g. "기쁨"
    score: float  # probability of `label`
    scores: dict[str, float]  # English name -> probability; all seven unless top_k was asked for
    truncated: bool  # the text was longer than the model's input and only its start was classified
    timing: Timing
    model_version: str = ""  # which model answered (ModelInfo.model_version): it changes when the server reloads

    @classmethod
    def from_proto(cls, message: pb.EmotionResult) -> EmotionResult:
        t = message.timing
        return cls(
            label_id=message.label_id,
            label=message.label,
            label_ko=message.label_ko,
            score=message.score,
            scores={s.label: s.score for s in message.scores},
            truncated=message.truncated,
            timing=Timing(
                t.tokenization_time_ns, t.queue_time_ns, t.inference_time_ns, t.num_tokens, t.batch_size, t.cache_hit
            ),
            model_version=message.model_version,
        )


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat feed; `id` comes back on its reply."""

    id: str
    text: str
    conversation_id: str = ""


@dataclass(frozen=True)
class ChatReply:
    """The answer to one chat message: `result`, or `error` (a gRPC status code and why) when it was refused."""

    id: str
    conversation_id: str
    result: EmotionResult | None
    error_code: grpc.StatusCode | None = None
    error_message: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None

    @classmethod
    def from_proto(cls, message: pb.ChatResult) -> ChatReply:
        if message.WhichOneof("outcome") == "result":
            return cls(message.id, message.conversation_id, EmotionResult.from_proto(message.result))
        code = next((c for c in grpc.StatusCode if c.value[0] == message.error.code), grpc.StatusCode.UNKNOWN)
        return cls(message.id, message.conversation_id, None, code, message.error.message)


@dataclass(frozen=True)
class ModelInfo:
    """What the server serves (GetModelInfo)."""

    model_name: str
    base_model: str
    labels: list[tuple[int, str, str]]  # (id, English name, Korean name) in id order
    quantization: str
    backend: str
    execution_provider: str
    max_input_length: int
    limits: dict[str, Any] = field(default_factory=dict)
    version: str = ""  # gamjeong's
    model_version: str = ""  # the serving model's: its manifest's sha256 (16 hex digits); changes with a reload
    exported_at: str = ""

    @classmethod
    def from_proto(cls, message: pb.ModelInfo) -> ModelInfo:
        limits = {f.name: getattr(message.limits, f.name) for f in message.limits.DESCRIPTOR.fields}
        limits["default_truncation"] = "refuse" if limits["default_truncation"] == pb.TRUNCATION_REFUSE else "truncate"
        return cls(
            model_name=message.model_name,
            base_model=message.base_model,
            labels=[(label.id, label.name, label.name_ko) for label in message.labels],
            quantization=message.quantization,
            backend=message.backend,
            execution_provider=message.execution_provider,
            max_input_length=message.max_input_length,
            limits=limits,
            version=message.version,
            model_version=message.model_version,
            exported_at=message.exported_at,
        )


def _as_messages(messages: Iterable[ChatMessage | str]) -> Iterator[pb.ChatMessage]:
    for index, message in enumerate(messages):
        if isinstance(message, str):
            message = ChatMessage(id=str(index), text=message)
        yield pb.ChatMessage(id=message.id, conversation_id=message.conversation_id, text=message.text)


def _classify_request(texts: str | Sequence[str], top_k: int, truncation: Truncation | None) -> pb.ClassifyRequest:
    """The request both clients send for `classify` (a single string is one text)."""
    return pb.ClassifyRequest(
        texts=[texts] if isinstance(texts, str) else list(texts), top_k=top_k, truncation=_TRUNCATION[truncation]
    )


def _read(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).expanduser().read_bytes()


class _ClientBase:
    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | str | Path | None = None,
        client_certificate: bytes | str | Path | None = None,
        client_key: bytes | str | Path | None = None,
        server_name_override: str | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
        max_attempts: int = 5,
        load_balancing: LoadBalancing | str | None = None,
    ) -> None:
        """target: "host:port", "dns:///name:port", or several IP "host:port" addresses (a list or comma-separated;
        see channel_target). load_balancing: "round_robin" spreads calls over every address the target resolves to
        (default: gRPC's pick_first, one server). TLS is used when `tls` is set or any certificate is given (root_certificates: PEM
        CA of the server, else the system's; client_certificate/client_key: for mutual TLS). token: bearer token.
        timeout: default deadline of unary calls in seconds (None: no deadline); streams have none unless asked. max_attempts: tries of a call that
        gets UNAVAILABLE (1: no retries)."""
        self.target = channel_target(target)
        self.load_balancing = LoadBalancing(load_balancing) if load_balancing is not None else None
        self.timeout = timeout
        if token is not None and not (token.isascii() and token.isprintable()):
            raise ValueError("The token must be printable ASCII (it travels in an HTTP/2 header).")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        # gRPC wants at least 2 attempts in a retry policy; 1 means "no retries"
        self._options.append(("grpc.enable_retries", 1 if max_attempts > 1 else 0))
        config = service_config(max_attempts, self.load_balancing)
        if config is not None:
            self._options.append(("grpc.service_config", config))
        if server_name_override:
            self._options.append(("grpc.ssl_target_name_override", server_name_override))
        self._credentials = None
        if tls or root_certificates or client_certificate:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(root_certificates),
                private_key=_read(client_key),
                certificate_chain=_read(client_certificate),
            )

    def _call_options(self, timeout: float | None, *, streaming: bool = False) -> dict[str, Any]:
        """Per-call options. The client's default deadline applies to unary calls; a stream (a bulk job, a chat
        feed) runs as long as it takes unless this call passes its own timeout."""
        if timeout is None and not streaming:
            timeout = self.timeout
        return {"timeout": timeout, "metadata": self._metadata}


class EmotionClient(_ClientBase):
    """Blocking client. Use as a context manager, or call close()."""

    def __init__(self, target: str | Sequence[str], **options: Any) -> None:
        super().__init__(target, **options)
        if self._credentials is not None:
            self.channel = grpc.secure_channel(self.target, self._credentials, options=self._options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=self._options)
        self.stub = pb_grpc.EmotionClassifierStub(self.channel)

    def classify(
        self,
        texts: str | Sequence[str],
        *,
        top_k: int = 0,
        truncation: Truncation | None = None,
        timeout: float | None = None,
    ) -> list[EmotionResult]:
        """One result per text, in order (a single string is one text)."""
        request = _classify_request(texts, top_k, truncation)
        response = self.stub.Classify(request, **self._call_options(timeout))
        return [EmotionResult.from_proto(r) for r in response.results]

    def classify_stream(
        self,
        texts: Sequence[str],
        *,
        top_k: int = 0,
        truncation: Truncation | None = None,
        timeout: float | None = None,
    ) -> Iterator[EmotionResult]:
        """Results of a bulk job in order, as the server's batches finish."""
        request = pb.ClassifyStreamRequest(texts=list(texts), top_k=top_k, truncation=_TRUNCATION[truncation])
        for chunk in self.stub.ClassifyStream(request, **self._call_options(timeout, streaming=True)):
            for result in chunk.results:
                yield EmotionResult.from_proto(result)

    def chat(self, messages: Iterable[ChatMessage | str], *, timeout: float | None = None) -> Iterator[ChatReply]:
        """Replies in message order as they arrive; plain strings get ids "0", "1", ... No deadline unless `timeout`
        is given (it would cover the whole conversation)."""
        for reply in self.stub.ClassifyChat(_as_messages(messages), **self._call_options(timeout, streaming=True)):
            yield ChatReply.from_proto(reply)

    def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        return ModelInfo.from_proto(self.stub.GetModelInfo(pb.GetModelInfoRequest(), **self._call_options(timeout)))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EmotionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncEmotionClient(_ClientBase):
    """asyncio client (grpc.aio). Use as an async context manager, or await close()."""

    def __init__(self, target: str | Sequence[str], **options: Any) -> None:
        super().__init__(target, **options)
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
        else:
            self.channel = grpc.aio.insecure_channel(self.target, options=self._options)
        self.stub = pb_grpc.EmotionClassifierStub(self.channel)

    async def classify(
        self,
        texts: str | Sequence[str],
        *,
        top_k: int = 0,
        truncation: Truncation | None = None,
        timeout: float | None = None,
    ) -> list[EmotionResult]:
        """One result per text, in order (a single string is one text)."""
        request = _classify_request(texts, top_k, truncation)
        response = await self.stub.Classify(request, **self._call_options(timeout))
        return [EmotionResult.from_proto(r) for r in response.results]

    async def classify_stream(
        self,
        texts: Sequence[str],
        *,
        top_k: int = 0,
        truncation: Truncation | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[EmotionResult]:
        """Results of a bulk job in order, as the server's batches finish."""
        request = pb.ClassifyStreamRequest(texts=list(texts), top_k=top_k, truncation=_TRUNCATION[truncation])
        async for chunk in self.stub.ClassifyStream(request, **self._call_options(timeout, streaming=True)):
            for result in chunk.results:
                yield EmotionResult.from_proto(result)

    async def chat(
        self, messages: Iterable[ChatMessage | str] | AsyncIterable[ChatMessage | str], *, timeout: float | None = None
    ) -> AsyncIterator[ChatReply]:
        """Replies in message order as they arrive; messages may be an async iterable fed while replies come back."""
        if isinstance(messages, AsyncIterable):

            async def requests() -> AsyncIterator[pb.ChatMessage]:
                index = 0
                async for message in messages:
                    for request in _as_messages([message]):
                        if isinstance(message, str):
                            request.id = str(index)
                        yield request
                    index += 1

            call = self.stub.ClassifyChat(requests(), **self._call_options(timeout, streaming=True))
        else:
            call = self.stub.ClassifyChat(_as_messages(messages), **self._call_options(timeout, streaming=True))
        async for reply in call:
            yield ChatReply.from_proto(reply)

    async def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        message = await self.stub.GetModelInfo(pb.GetModelInfoRequest(), **self._call_options(timeout))
        return ModelInfo.from_proto(message)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncEmotionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
