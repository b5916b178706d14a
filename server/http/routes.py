"""The FastAPI app: POST /v1/classify, GET /v1/info, GET /healthz, GET /readyz, WS /v1/chat, the page at /, and the
OpenAPI document at /openapi.json. No interactive docs page: FastAPI's loads Swagger UI from a CDN, and the server
must work offline."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.server.auth import bearer_problem
from gamjeong.server.http.context import HttpError, call_unary
from gamjeong.server.http.convert import TRUNCATION, ClassifyBody, ClassifyJson, ErrorJson, info_json, model_quality
from gamjeong.server.http.convert import result_json as to_json
from gamjeong.server.http.oip import oip_router
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.service import EmotionClassifierServicer
from gamjeong.server.settings import ServerSettings
from gamjeong.versions import gamjeong_version

STATIC_DIR = Path(__file__).parent / "static"
TIMEOUT_HEADER = "x-request-timeout"  # seconds; the HTTP counterpart of a gRPC deadline
# Metrics count HTTP calls under the RPC they map to, so one dashboard shows both transports.
METHOD_OF_PATH = {"/v1/classify": "Classify", "/v1/info": "GetModelInfo", "/v1/chat": "ClassifyChat"}
_ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorJson} for status in (400, 401, 413, 429, 503, 504)}


class ServingState:
    """What the routes need from the server: its settings, servicer and metrics, and whether it is draining."""

    def __init__(
        self,
        settings: ServerSettings,
        servicer: EmotionClassifierServicer,
        metrics: ServerMetrics,
        draining: Callable[[], bool],
    ) -> None:
        self.settings, self.servicer, self.metrics, self.draining = settings, servicer, metrics, draining
        self._quality: tuple[str, dict[str, Any]] | None = None

    def count(self, path: str, code: grpc.StatusCode) -> None:
        """Count a call refused before it reached the servicer (which counts all others itself)."""
        method = METHOD_OF_PATH.get(path)
        if method is not None:
            self.metrics.requests.labels(method=method, code=code.name).inc()

    def auth_problem(self, values: list[str]) -> HttpError | None:
        """None when the request may go on; else UNAUTHENTICATED. The gRPC interceptor's own check (exactly one
        `Authorization: Bearer <token>`, scheme in any case, constant-time comparison), with HTTP wording."""
        if self.settings.auth_token is None:
            return None
        problem = bearer_problem(values, self.settings.auth_token)
        if problem is None:
            return None
        return HttpError(grpc.StatusCode.UNAUTHENTICATED, problem.replace("send metadata", "send the header"))

    def quality(self, model_version: str) -> dict[str, Any]:
        """The served model's own evaluation, read again when a reload has changed the model."""
        if self._quality is None or self._quality[0] != model_version:
            self._quality = (model_version, model_quality(Path(self.settings.model)))
        return self._quality[1]


def _timeout_of(request: Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 86_400:
        raise HttpError(
            grpc.StatusCode.INVALID_ARGUMENT, f"{TIMEOUT_HEADER} must be seconds in (0, 86400), not {raw!r}."
        )
    return value


class BodyLimit:
    """413 for a request body over --max-message-bytes (gRPC's limit on one message), whether it announces its
    length or arrives chunked; without it a client could make the server buffer any amount of JSON."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, send, int(length))
            return
        received, too_large = 0, False

        async def counting() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    too_large = True
                    return {"type": "http.disconnect"}  # stop reading; the app's answer is replaced below
            return message

        async def replacing(message: Message) -> None:
            if not too_large:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(scope, send, received)

        await self.app(scope, counting, replacing)

    async def _refuse(self, scope: Scope, send: Send, size: int) -> None:
        error = HttpError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"The request body has {size} bytes or more, over the limit of {self.limit}; send fewer texts per call.",
            status=413,
        )
        await JSONResponse(error.body(), status_code=error.status)(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(state: ServingState) -> FastAPI:
    settings, servicer = state.settings, state.servicer
    app = FastAPI(
        title="gamjeong (감정) HTTP API",
        summary="Korean text -> one of seven emotions; the same service as gamjeong.v1.EmotionClassifier over gRPC.",
        version=gamjeong_version(),
        docs_url=None,
        redoc_url=None,
    )
    app.state.serving = state

    async def require_token(request: Request) -> None:
        problem = state.auth_problem(request.headers.getlist("authorization"))
        if problem is not None:
            state.count(request.url.path, problem.code)
            raise problem

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {err['msg']}" for err in exc.errors()
        )
        state.count(request.url.path, grpc.StatusCode.INVALID_ARGUMENT)
        error = HttpError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid request ({problems}).")
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}.get(
            exc.status_code, grpc.StatusCode.INVALID_ARGUMENT
        )
        return JSONResponse({"error": {"code": code.name, "message": str(exc.detail)}}, status_code=exc.status_code)

    @app.post(
        "/v1/classify",
        response_model=None,
        responses={200: {"model": ClassifyJson}, **_ERRORS},
        dependencies=[Depends(require_token)],
        summary="Classify texts (gRPC: Classify)",
    )
    async def classify(body: ClassifyBody, request: Request) -> JSONResponse:
        started = time.perf_counter_ns()
        try:
            message = pb.ClassifyRequest(texts=body.texts, top_k=body.top_k, truncation=TRUNCATION[body.truncation])
        except ValueError:  # a lone surrogate (valid JSON escape, not UTF-8): what gRPC refuses as undecodable
            state.count(request.url.path, grpc.StatusCode.INVALID_ARGUMENT)
            raise HttpError(grpc.StatusCode.INVALID_ARGUMENT, "A text is not valid Unicode; send UTF-8 text.") from None
        response = await call_unary(
            servicer.Classify, message, _timeout_of(request), request.headers, ("POST", "/v1/classify")
        )
        assert servicer.model_info is not None  # Classify succeeded, so the model is loaded
        return JSONResponse(
            {
                "results": [to_json(r) for r in response.results],
                "model": servicer.model_info.model_name,
                "timing": {"total_ms": round((time.perf_counter_ns() - started) / 1e6, 3)},
            }
        )

    @app.get("/v1/info", dependencies=[Depends(require_token)], summary="What is served (gRPC: GetModelInfo)")
    async def info(request: Request) -> JSONResponse:
        answer = await call_unary(
            servicer.GetModelInfo, pb.GetModelInfoRequest(), _timeout_of(request), request.headers, ("GET", "/v1/info")
        )
        return JSONResponse(info_json(answer, state.quality(answer.model_version)))

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/readyz", summary="Readiness: 503 while the model loads and while the server drains")
    async def readyz() -> JSONResponse:
        if servicer.batcher is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        if state.draining():
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.websocket("/v1/chat")
    async def chat(websocket: WebSocket) -> None:
        from gamjeong.server.http.websocket import serve_chat

        await serve_chat(websocket, state)

    app.include_router(oip_router(state))  # the Open Inference Protocol (KServe v2) under /v2

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_message_bytes)
    origins = [o.strip() for o in (settings.cors_origin or "").split(",") if o.strip()]
    if origins:  # off by default: a page from another origin cannot call the API unless the operator says so
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", TIMEOUT_HEADER],
        )
    return app
