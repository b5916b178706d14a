"""gamjeong.clients: friendly Python clients of the gRPC server (EmotionClient, AsyncEmotionClient), `gamjeong chat`
and the remote side of `gamjeong classify --server`.

The stubs they use are gamjeong.api.v1, generated from protos/ and shared with the server; gamjeong.clients.v1 is kept
as an alias of it for code written against the old place.
"""

from gamjeong.clients.client import (
    AsyncEmotionClient,
    ChatMessage,
    ChatReply,
    EmotionClient,
    EmotionResult,
    LoadBalancing,
    ModelInfo,
    Timing,
)

__all__ = [
    "AsyncEmotionClient",
    "ChatMessage",
    "ChatReply",
    "EmotionClient",
    "EmotionResult",
    "LoadBalancing",
    "ModelInfo",
    "Timing",
]
