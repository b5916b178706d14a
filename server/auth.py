"""Optional bearer-token auth: a server interceptor that checks `authorization: Bearer <token>` metadata.

The same check guards the Prometheus endpoint (server/metrics.py) when a token is set.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from gamjeong.server.metrics import ServerMetrics

# Health probes (load balancers, Kubernetes) carry no credentials; they learn nothing but SERVING/NOT_SERVING. The Open
# Inference Protocol's server liveness and readiness are the same probes in that protocol (server/oip.py).
UNAUTHENTICATED_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)


def bearer_problem(values: Sequence[str | bytes], token: str) -> str | None:
    """None when `values` (every authorization header of the request) is exactly one `Bearer <token>`; else why not.

    The scheme is case-insensitive and may be followed by several spaces (RFC 7235 section 2.1). Two headers are
    refused rather than one of them picked: proxies and frameworks disagree on which one wins, and a check that reads
    a different header than the one a proxy logged or rewrote is a way around it.
    """
    if not values:
        return "This server needs a bearer token; send metadata 'authorization: Bearer <token>'."
    if len(values) > 1:
        return "Send exactly one 'authorization' header; this request has several."
    value = values[0]
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    scheme, _, credentials = text.partition(" ")
    given = credentials.lstrip(" ").encode("latin-1", errors="replace")
    # compare_digest runs in constant time (no timing oracle on the token); the scheme check is not secret.
    if scheme.lower() == "bearer" and hmac.compare_digest(given, token.encode()):
        return None
    return "Missing or wrong bearer token; send metadata 'authorization: Bearer <token>'."


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without the right bearer token with UNAUTHENTICATED (health checks excepted)."""

    def __init__(self, token: str, metrics: ServerMetrics | None = None) -> None:
        self._token = token
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
        given = [v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]
        problem = bearer_problem(given, self._token)
        if problem is None:
            return handler
        if self._metrics is not None:
            self._metrics.requests.labels(method=method.rsplit("/", 1)[-1], code="UNAUTHENTICATED").inc()
        return _refusing(handler, problem)


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
