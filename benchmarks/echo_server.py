"""A gRPC server that runs no model: every call of gamjeong's API answered at once with a fixed result per text, in
`processes` processes sharing one port (SO_REUSEPORT). `gamjeong bench server --echo` drives it to measure the load
generator alone: what it can push when the server costs next to nothing, against what a real server takes.

Run: `python -m gamjeong.benchmarks.echo_server --port PORT [--processes N]`; SIGTERM stops every process.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
from collections.abc import AsyncIterator
from typing import Any

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.labels import EMOTIONS

HEALTH_SERVICE = "gamjeong.v1.EmotionClassifier"


def _result() -> pb.EmotionResult:
    """The answer to every text: neutral, with all seven scores, as a real server's full result."""
    scores = [pb.LabelScore(label_id=e.id, label=e.name, label_ko=e.name_ko, score=0.1) for e in EMOTIONS]
    scores[-1].score = 0.4
    neutral = EMOTIONS[-1]
    return pb.EmotionResult(label_id=neutral.id, label=neutral.name, label_ko=neutral.name_ko, score=0.4, scores=scores)


class EchoServicer(pb_grpc.EmotionClassifierServicer):
    def __init__(self) -> None:
        self.result = _result()

    async def Classify(self, request: pb.ClassifyRequest, context: Any) -> pb.ClassifyResponse:
        return pb.ClassifyResponse(results=[self.result] * len(request.texts))

    async def ClassifyStream(
        self, request: pb.ClassifyStreamRequest, context: Any
    ) -> AsyncIterator[pb.ClassifyStreamResponse]:
        for offset in range(0, len(request.texts), 32):  # chunks as a batcher's batches of 32 would come
            count = min(32, len(request.texts) - offset)
            yield pb.ClassifyStreamResponse(offset=offset, results=[self.result] * count)

    async def ClassifyChat(self, request_iterator: AsyncIterator[pb.ChatMessage], context: Any):
        async for message in request_iterator:
            yield pb.ChatResult(id=message.id, conversation_id=message.conversation_id, result=self.result)

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Any) -> pb.ModelInfo:
        labels = [pb.Label(id=e.id, name=e.name, name_ko=e.name_ko) for e in EMOTIONS]
        return pb.ModelInfo(
            model_name="echo", backend="echo", execution_provider="none (no model)", labels=labels, version="echo"
        )


async def _serve(port: int) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    pb_grpc.add_EmotionClassifierServicer_to_server(EchoServicer(), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checker.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


def serve(port: int) -> None:
    """One echo process, on uvloop when it is installed (as `gamjeong serve` runs)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(port))
    else:
        uvloop.run(_serve(port))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)
    if args.processes == 1:
        serve(args.port)
        return
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=serve, args=(args.port,), daemon=True) for _ in range(args.processes)]
    for child in children:
        child.start()
    # blocked only now: the children would inherit the mask and never see their SIGTERM
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for child in children:
        child.terminate()  # SIGTERM: each stops its server
    for child in children:
        child.join(timeout=10)


if __name__ == "__main__":
    main()
