"""The closed-loop clients of `gamjeong bench server`: at concurrency C, C clients each send a request, wait for its
answer and send the next until a deadline, counting latencies, texts and refused calls.

gRPC modes go through the async Python client over one channel (or several: `channels`); `http` uses a minimal keep-alive HTTP/1.1 client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gamjeong.errors import GamjeongError

# A refused call (e.g. RESOURCE_EXHAUSTED from a full queue) is counted, and its client waits this long before the next
# one, as a real client backs off: an instant retry loop would only burn the CPU the server needs.
ERROR_BACKOFF_S = 0.1


class _Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.texts = 0
        self.errors: dict[str, int] = {}

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


async def _unary_client(client, texts: list[str], offset: int, stop_at: float, tally: _Tally) -> None:
    import grpc

    i = offset
    while time.perf_counter() < stop_at:
        text = texts[i % len(texts)]
        i += 1
        t0 = time.perf_counter()
        try:
            await client.classify([text])
        except grpc.aio.AioRpcError as exc:
            tally.error(exc.code().name)
            await asyncio.sleep(ERROR_BACKOFF_S)
            continue
        tally.latencies.append(time.perf_counter() - t0)
        tally.texts += 1


class _HttpConnection:
    """A minimal keep-alive HTTP/1.1 client for JSON POSTs (POST /v1/classify): one connection per benchmark client.

    Not httpx: on 2 cores its connection pool was the bottleneck (about 70 requests/s at 64 clients against a server
    that answers 600+ to this loop), and the benchmark is about the server; gRPC's side uses grpc's C-core client.
    """

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        import json

        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        body = json.dumps(payload, ensure_ascii=False).encode()
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, json.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass(frozen=True)
class HttpApi:
    """What one HTTP classification call looks like: the path, the JSON body for one text, and how many texts an
    answer holds (gamjeong's POST /v1/classify by default; `gamjeong bench peers` gives infinity-emb's /classify)."""

    path: str = "/v1/classify"
    body: Callable[[str], dict[str, Any]] = lambda text: {"texts": [text]}
    answered: Callable[[dict[str, Any]], int] = lambda answer: len(answer["results"])


def _error_code(answer: Any, status: int) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    return str(error.get("code", status)) if isinstance(error, dict) else str(status)


async def _http_client(
    http: str, texts: list[str], offset: int, stop_at: float, tally: _Tally, api: HttpApi = HttpApi()
) -> None:
    """`unary` over HTTP/JSON: one text per POST (`api.path`) on a keep-alive connection, the JSON parsed."""
    connection = _HttpConnection(http)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            text = texts[i % len(texts)]
            i += 1
            t0 = time.perf_counter()
            try:
                status, answer = await connection.post(api.path, api.body(text))
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                tally.error(type(exc).__name__)
                connection.close()
                connection = _HttpConnection(http)
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            if status != 200:
                tally.error(_error_code(answer, status))
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            tally.latencies.append(time.perf_counter() - t0)
            tally.texts += api.answered(answer)
    finally:
        connection.close()


async def run_http_load(
    http: str, concurrency: int, seconds: float, texts: list[str], api: HttpApi = HttpApi()
) -> _Tally:
    """Closed-loop HTTP load: `concurrency` keep-alive clients, one text per request, for `seconds`."""
    tally = _Tally()
    stop_at = time.perf_counter() + seconds
    offsets = [(k * 7919) % len(texts) for k in range(concurrency)]
    started = time.perf_counter()
    await asyncio.gather(*[_http_client(http, texts, o, stop_at, tally, api) for o in offsets])
    tally.elapsed = time.perf_counter() - started  # type: ignore[attr-defined]
    return tally


async def _stream_client(client, texts: list[str], offset: int, stop_at: float, tally: _Tally, size: int) -> None:
    import grpc

    i = offset
    while time.perf_counter() < stop_at:
        batch = [texts[(i + j) % len(texts)] for j in range(size)]
        i += size
        t0 = time.perf_counter()
        try:
            received = 0
            async for _ in client.classify_stream(batch):
                received += 1
        except grpc.aio.AioRpcError as exc:
            tally.error(exc.code().name)
            await asyncio.sleep(ERROR_BACKOFF_S)
            continue
        tally.latencies.append(time.perf_counter() - t0)
        tally.texts += received


async def _chat_client(client, texts: list[str], offset: int, stop_at: float, tally: _Tally) -> None:
    """One open ClassifyChat stream; the next message goes out when the previous reply has come back."""
    import grpc

    from gamjeong.clients import ChatMessage

    outbox: asyncio.Queue[ChatMessage | None] = asyncio.Queue()

    async def messages():
        while (message := await outbox.get()) is not None:
            yield message

    sent = 0

    def send() -> None:
        nonlocal sent
        outbox.put_nowait(ChatMessage(id=str(sent), text=texts[(offset + sent) % len(texts)]))
        sent += 1

    send()
    t0 = time.perf_counter()
    try:
        async for reply in client.chat(messages(), timeout=None):
            now = time.perf_counter()
            if reply.ok:
                tally.latencies.append(now - t0)
                tally.texts += 1
            else:
                tally.error(reply.error_code.name if reply.error_code else "UNKNOWN")
            if now >= stop_at:
                outbox.put_nowait(None)  # half-close: the server ends the stream after the last reply
            else:
                t0 = time.perf_counter()
                send()
    except grpc.aio.AioRpcError as exc:
        tally.error(exc.code().name)


async def _open_clients(target: str, channels: int) -> list[Any]:
    """`channels` async clients. Channels with the same target and arguments share one TCP connection through gRPC's
    global subchannel pool, so with more than one each gets a local pool: its own connection (which a server's
    SO_REUSEPORT workers can each take)."""
    import grpc

    from gamjeong.api.v1 import emotion_pb2_grpc
    from gamjeong.clients import AsyncEmotionClient

    # a generous deadline: at high concurrency a bulk stream waits behind many others on a 2-core CPU
    clients = [AsyncEmotionClient(target, timeout=600.0) for _ in range(channels)]
    if channels > 1:
        for client in clients:
            await client.channel.close()  # not connected yet: channels connect on their first call
            options = [*client._options, ("grpc.use_local_subchannel_pool", 1)]
            client.channel = grpc.aio.insecure_channel(client.target, options=options)
            client.stub = emotion_pb2_grpc.EmotionClassifierStub(client.channel)
    return clients


async def run_load(
    target: str,
    mode: str,
    concurrency: int,
    seconds: float,
    texts: list[str],
    stream_texts: int,
    http: str | None = None,
    *,
    channels: int = 1,
    first_client: int = 0,
    start_in: float = 0.0,
) -> _Tally:
    """Closed-loop load of `concurrency` clients spread round-robin over `channels` gRPC channels, for `seconds` after
    `start_in` seconds (so that several processes start together). `first_client` numbers this process's clients
    among all processes', so that each walks the texts from its own place."""
    if mode == "http":
        if http is None:
            raise GamjeongError("The http mode needs the server's HTTP address (--http HOST:PORT with --target).")
        await asyncio.sleep(start_in)
        return await run_http_load(http, concurrency, seconds, texts)
    tally = _Tally()
    clients = await _open_clients(target, min(channels, concurrency))
    try:
        await asyncio.sleep(start_in)
        stop_at = time.perf_counter() + seconds
        # clients walk the texts from different places
        offsets = [(k * 7919) % len(texts) for k in range(first_client, first_client + concurrency)]
        pick = [clients[k % len(clients)] for k in range(concurrency)]
        if mode == "unary":
            workers = [_unary_client(c, texts, o, stop_at, tally) for c, o in zip(pick, offsets, strict=True)]
        elif mode == "stream":
            workers = [
                _stream_client(c, texts, o, stop_at, tally, stream_texts) for c, o in zip(pick, offsets, strict=True)
            ]
        else:
            workers = [_chat_client(c, texts, o, stop_at, tally) for c, o in zip(pick, offsets, strict=True)]
        started = time.perf_counter()
        await asyncio.gather(*workers)
        tally.elapsed = time.perf_counter() - started  # type: ignore[attr-defined]
    finally:
        for client in clients:
            await client.close()
    return tally
