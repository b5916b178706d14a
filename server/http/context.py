"""The stand-in for a gRPC call context that lets HTTP and WebSocket requests run through the gRPC servicer itself.

The servicer needs three things from its context: the time left before the deadline (so the batcher drops texts
whose caller has given up), `abort` (how its observer ends a failed call) and `code()` (read back for metrics). An
HTTP request provides them here, so a request over HTTP takes exactly the gRPC path: readiness check, validation,
limits, batcher, result building, metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc

from gamjeong.server.status import http_status

T = TypeVar("T")


class HttpError(Exception):
    """A request that fails with this gRPC status code; the HTTP status comes from the service's one table."""

    def __init__(self, code: grpc.StatusCode, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = http_status(code) if status is None else status

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code.name, "message": self.message}}


class CallAborted(grpc.aio.AbortError):
    """Raised by HttpCallContext.abort. A subclass of grpc's own AbortError, so the servicer's observer treats it as
    the end of an aborted call (code read back from the context) rather than as an unexpected exception."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HttpCallContext:
    """The part of grpc.aio.ServicerContext the servicer uses, for one HTTP request or one WebSocket."""

    def __init__(
        self,
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        http_route: tuple[str, str] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = None if timeout_s is None else self._loop.time() + timeout_s
        self._code: grpc.StatusCode | None = None
        # Read only when tracing (server/tracing.py): the caller's traceparent, and (method, route) to name the span.
        self._headers = headers
        self.http_route = http_route

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self._headers is None else tuple(self._headers.items())

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - self._loop.time())

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: object) -> NoReturn:
        self._code = code
        raise CallAborted(code, details)

    def code(self) -> grpc.StatusCode | None:
        return self._code


async def call_unary(
    method: Callable[[Any, Any], Awaitable[T]],
    request: Any,
    timeout_s: float | None,
    headers: Mapping[str, str] | None = None,
    http_route: tuple[str, str] | None = None,
) -> T:
    """Run one unary RPC method of the servicer for an HTTP request; a failure becomes HttpError.

    With a timeout the call is cancelled when it passes, as gRPC cancels a handler at its deadline; the servicer's
    observer then counts it DEADLINE_EXCEEDED and the batcher drops its texts.
    """
    context = HttpCallContext(timeout_s, headers, http_route)
    try:
        if timeout_s is None:
            return await method(request, context)
        return await asyncio.wait_for(method(request, context), timeout_s)
    except CallAborted as exc:
        raise HttpError(exc.code, exc.message) from None
    except TimeoutError:
        raise HttpError(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"The request's timeout of {timeout_s:g} s passed before its answer."
        ) from None
