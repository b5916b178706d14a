"""gamjeong.clients: generated gRPC stubs (v1/) and friendly Python clients."""

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
