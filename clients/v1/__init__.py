"""Compatibility: the stubs moved to gamjeong.api.v1, which the server and the clients both import. Code that imports
`gamjeong.clients.v1.emotion_pb2` (or `from gamjeong.clients.v1 import emotion_pb2_grpc`) gets the same modules."""

import sys

from gamjeong.api.v1 import emotion_pb2, emotion_pb2_grpc

sys.modules[f"{__name__}.emotion_pb2"] = emotion_pb2
sys.modules[f"{__name__}.emotion_pb2_grpc"] = emotion_pb2_grpc

__all__ = ["emotion_pb2", "emotion_pb2_grpc"]
