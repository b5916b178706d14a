"""Optional bearer-token auth: a server interceptor that checks `authorization: Bearer <token>` metadata."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gamjeong.server.metrics import ServerMetrics

# Health probes (load balancers, Kubernetes) carry no credentials; they learn nothing but SERVING/NOT_SERVING.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without the right bearer token with UNAUTHENTICATED (health checks excepted)."""

    def __init__(self, token: str, metrics: ServerMetrics | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else bytes(given)
        if hmac.compare_digest(given_bytes, self._expected):  # constant time: no timing oracle on the token
            return handler
        if self._metrics is not None:
            self._metrics.requests.labels(method=method.rsplit("/", 1)[-1], code="UNAUTHENTICATED").inc()
        message = (
            "Missing or wrong bearer token; send metadata 'authorization: Bearer <token>'."
            if given
            else "This server needs a bearer token; send metadata 'authorization: Bearer <token>'."
        )
        return _refusing(handler, message)


def _refusing(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that fails with UNAUTHENTICATED."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codecs)
    return grpc.unary_unary_rpc_method_handler(refuse, **codecs)
