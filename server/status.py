"""The one table from what can go wrong in a call to the status code and sentence the caller gets.

The gRPC servicer uses it, and the HTTP/WebSocket transport reuses it unchanged: `status_of(exc)` gives the gRPC code
and the message, `http_status(code)` the HTTP status for that code, so both protocols tell a caller the same thing for
the same problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from gamjeong.server.batcher import BatcherStoppedError, DeadlinePassedError, EngineUnavailableError, QueueFullError


class RequestError(Exception):
    """A call (or one chat message) that fails with this gRPC status code and one-sentence message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class UndecodableRequest:
    """What the server's request deserializers return for bytes that are not a valid message.

    grpc.aio deserialises a request before the handler runs, and an exception raised there becomes UNKNOWN with a
    Python class name, counted nowhere. A value instead reaches the handler, which refuses it through this table.
    """

    message_type: str  # full proto name, e.g. "gamjeong.v1.ClassifyRequest"


class UndecodableRequestError(Exception):
    """Raised by a handler that was given an UndecodableRequest."""

    def __init__(self, request: UndecodableRequest) -> None:
        super().__init__(request.message_type)
        self.message_type = request.message_type


# Exception type -> (code, message template). Templates may name `max_queue_size` and `message_type`.
EXCEPTION_STATUS: dict[type[Exception], tuple[grpc.StatusCode, str]] = {
    UndecodableRequestError: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "The request is not a valid {message_type} message (malformed bytes or a string that is not UTF-8); "
        "send it with a protobuf library built from the service's .proto (protos/ in gamjeong's source).",
    ),
    QueueFullError: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "The server's queue is full ({max_queue_size} texts waiting); retry with backoff.",
    ),
    DeadlinePassedError: (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "The deadline passed while the texts waited in the queue.",
    ),
    BatcherStoppedError: (grpc.StatusCode.UNAVAILABLE, "The server is shutting down; retry elsewhere."),
    EngineUnavailableError: (
        grpc.StatusCode.UNAVAILABLE,
        "The server's model process is not reachable (restarting); retry shortly.",
    ),
}

# The HTTP status of each gRPC status code, for the HTTP/JSON and WebSocket transport (gamjeong.server.http): one
# table beside the codes the service raises, so both transports refuse the same request the same way. (The one
# HTTP-only refusal, a body over --max-message-bytes, is 413; gRPC says RESOURCE_EXHAUSTED for that message.)
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,  # the client went away (nginx's code; nobody reads the answer)
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status for a gRPC status code (500 for INTERNAL, UNKNOWN and anything unlisted)."""
    return HTTP_STATUS.get(code, 500)


def status_of(exc: Exception, *, max_queue_size: int = 0) -> tuple[grpc.StatusCode, str] | None:
    """(code, message) for an expected failure; None for an unexpected one (a bug or a failed model call)."""
    if isinstance(exc, RequestError):
        return exc.code, exc.message
    for kind, (code, template) in EXCEPTION_STATUS.items():
        if isinstance(exc, kind):
            return code, template.format(
                max_queue_size=max_queue_size, message_type=getattr(exc, "message_type", "request")
            )
    return None


def internal_error(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """What the caller learns about an unexpected failure: its kind, never its message (which may hold paths)."""
    return grpc.StatusCode.INTERNAL, f"Internal error ({exc.__class__.__name__}); see server log."
