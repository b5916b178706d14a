"""WS /v1/chat: the ClassifyChat contract over a WebSocket, for browsers (which cannot speak gRPC bidi streaming).

The socket's messages are fed to the gRPC servicer's own ClassifyChat as its request stream, so replies, their order
(arrival order), per-message errors, limits and back-pressure are exactly the gRPC stream's: when a client has
max_queue_size messages unanswered, ClassifyChat stops reading, the WebSocket's receive buffer fills and TCP flow
control slows the sender. In: `{"id", "conversation_id", "text", "top_k"?, "truncation"?}`. Out, per message:
`{"id", "conversation_id", "result": {...}}` or `{"id", "conversation_id", "error": {"code", "message"}}`. A frame
that is not a chat message at all (not JSON, wrong fields) is answered at once with an error carrying its id when it
has one; it has no place in the order. The socket stays open after any per-message error.

Auth (when the server has a token): the `Authorization: Bearer` header of the handshake, or, since browsers cannot
set headers on a WebSocket, a first message `{"type": "auth", "token": "..."}` (answered `{"type": "auth", "ok":
true}`). A wrong or missing token gets an UNAUTHENTICATED error frame and close code 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from fastapi import WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.server.http.context import CallAborted, HttpCallContext, HttpError
from gamjeong.server.http.convert import TRUNCATION, ChatMessageBody, chat_json
from gamjeong.server.http.routes import ServingState

AUTH_TIMEOUT_S = 10.0  # how long a socket may stay open without authenticating
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_INTERNAL, CLOSE_TRY_AGAIN = 1000, 1008, 1011, 1013
Send = Callable[[dict[str, Any]], Awaitable[bool]]


async def serve_chat(websocket: WebSocket, state: ServingState) -> None:
    await websocket.accept()
    lock = asyncio.Lock()  # replies (this task) and frame errors (the reader) must not interleave on the socket

    async def send(data: dict[str, Any]) -> bool:
        async with lock:
            try:
                await websocket.send_text(json.dumps(data, ensure_ascii=False))
            except (WebSocketDisconnect, RuntimeError, OSError):
                return False  # the client is gone
        return True

    if not await _authenticate(websocket, state, send):
        return
    context = HttpCallContext(headers=websocket.headers, http_route=("GET", "/v1/chat"))
    replies = state.servicer.ClassifyChat(_incoming(websocket, send), context)
    try:
        async for reply in replies:
            if not await send(chat_json(reply)):
                break  # closing the generator below counts the call CANCELLED, as a gRPC client that left
    except CallAborted as exc:  # the whole stream was refused (model loading, shutting down)
        await send(HttpError(exc.code, exc.message).body())
        await _close(websocket, CLOSE_TRY_AGAIN if exc.code == grpc.StatusCode.UNAVAILABLE else CLOSE_INTERNAL)
        return
    finally:
        await replies.aclose()
    await _close(websocket, CLOSE_NORMAL)


async def _close(websocket: WebSocket, code: int) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.close(code)


async def _authenticate(websocket: WebSocket, state: ServingState, send: Send) -> bool:
    if state.settings.auth_token is None:
        return True
    values = websocket.headers.getlist("authorization")
    by_message = not values
    if by_message:
        token = await _auth_message(websocket)
        values = [] if token is None else [f"Bearer {token}"]
    problem = state.auth_problem(values)
    if problem is None:
        if by_message:
            await send({"type": "auth", "ok": True})
        return True
    state.count("/v1/chat", problem.code)
    await send(problem.body())
    await _close(websocket, CLOSE_POLICY)
    return False


async def _auth_message(websocket: WebSocket) -> str | None:
    """The token of a first `{"type": "auth", "token": "..."}` message, or None."""
    try:
        frame = await asyncio.wait_for(websocket.receive(), AUTH_TIMEOUT_S)
    except (TimeoutError, WebSocketDisconnect, RuntimeError):
        return None
    try:
        data = json.loads(frame.get("text") or frame.get("bytes") or b"")
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("type") == "auth" and isinstance(data.get("token"), str):
        return data["token"]
    return None


async def _incoming(websocket: WebSocket, send: Send) -> AsyncIterator[pb.ChatMessage]:
    """The socket's chat messages as ClassifyChat's request stream; ends when the client closes the socket."""
    while True:
        try:
            frame = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if frame["type"] == "websocket.disconnect":
            return
        raw = frame.get("text") if frame.get("text") is not None else frame.get("bytes")
        message, problem = parse_message(raw or "")
        if message is not None:
            yield message
        elif problem is not None and not await send(problem):
            return


def parse_message(raw: str | bytes) -> tuple[pb.ChatMessage | None, dict[str, Any] | None]:
    """(message, None) for a chat message; (None, error reply) for anything else."""

    def refused(why: str, data: Any = None) -> tuple[None, dict[str, Any]]:
        fields = data if isinstance(data, dict) else {}
        reply = {
            key: fields.get(key) if isinstance(fields.get(key), str) else None for key in ("id", "conversation_id")
        }
        return None, reply | {"error": {"code": grpc.StatusCode.INVALID_ARGUMENT.name, "message": why}}

    try:
        data = json.loads(raw)
    except ValueError:
        return refused('The message is not JSON; send {"id": "...", "text": "..."}.')
    if isinstance(data, dict) and data.get("type") == "auth":
        return refused("Already authenticated (or this server needs no token); send chat messages.", data)
    try:
        body = ChatMessageBody.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors())
        return refused(f"Not a chat message ({problems}).", data)
    try:
        message = pb.ChatMessage(
            id=body.id,
            conversation_id=body.conversation_id,
            text=body.text,
            top_k=body.top_k,
            truncation=TRUNCATION[body.truncation],
        )
    except ValueError:  # a lone surrogate: valid JSON, not UTF-8
        return refused("The message is not valid Unicode; send UTF-8 text.", data)
    return message, None
