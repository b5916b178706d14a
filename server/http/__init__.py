"""gamjeong.server.http: HTTP/JSON, WebSocket and a web page beside gRPC, in the same process and event loop.

A thin transport over the one inference core: every route calls the gRPC servicer's own methods (validation, limits,
batcher submission, result building) through a small stand-in for the gRPC call context, so the two transports
cannot drift apart. Modules: context (the call-context stand-in and the error type), convert (protobuf -> JSON and
the request/response schemas of the OpenAPI document), routes (the FastAPI app: /v1/classify, /v1/info, /healthz,
/readyz, /, /openapi.json), websocket (WS /v1/chat, the ClassifyChat contract), server (uvicorn embedded in the
gRPC server's loop), static/ (the Korean web page).
"""

from gamjeong.server.http.server import HttpServer

__all__ = ["HttpServer"]
