"""The Open Inference Protocol's HTTP form (`/v2/...`, KServe v2 / Triton) on --http-port: the routes, the JSON tensors
and Triton's binary tensor extension, which tritonclient's HTTP client uses by default.

Binary extension: a request whose JSON is followed by raw tensor bytes says so with the `Inference-Header-Content-Length`
header (the JSON's length); each input sent that way has `"parameters": {"binary_data_size": n}` and no `data`, and
its bytes follow in input order (BYTES: each element a 4-byte little-endian length, then the bytes). Outputs are sent
the same way when the request asks for it (`"binary_data": true` on an output, or `"binary_data_output": true` for all).

The inference itself, and every check of the tensors, is server/oip.py's, shared with gRPC. Errors are the protocol's
`{"error": "<sentence>"}` with the HTTP status of the server's one status table.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gamjeong.server.http.context import HttpError, call_unary
from gamjeong.server.oip import (
    EXTENSIONS,
    MODEL_VERSION,
    SERVER_NAME,
    InferAnswer,
    InferCall,
    InputTensor,
    invalid,
    is_model_ready,
    metadata_for,
    model_infer,
    split_bytes,
)
from gamjeong.server.status import RequestError, http_status
from gamjeong.versions import gamjeong_version

if TYPE_CHECKING:
    from gamjeong.server.http.routes import ServingState

HEADER_LENGTH = "inference-header-content-length"


def _error(code: grpc.StatusCode, message: str, status: int | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status or http_status(code))


def _flatten(data: Any) -> list[Any]:
    """The protocol allows a tensor's data nested by its shape or flat; both become the flat row-major list."""
    if not isinstance(data, list):
        return [data]
    return [item for part in data for item in _flatten(part)]


def _as_bytes(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string (BYTES elements in JSON are strings), not {type(value).__name__}.")
    # surrogatepass: a lone surrogate (a valid JSON escape, not UTF-8) reaches the UTF-8 check and is refused there
    return value.encode("utf-8", errors="surrogatepass")


class HttpInferRequest:
    """Parses one POST .../infer body; remembers which outputs the caller wants as binary."""

    def __init__(self, body: bytes, header_length: str | None, model_name: str, model_version: str) -> None:
        self.body, self.header_length = body, header_length
        self.model_name, self.model_version = model_name, model_version
        self.binary_outputs: dict[str, bool] = {}
        self.binary_default = False

    def parse(self) -> InferCall:
        json_part, binary = self._split()
        try:
            request = json.loads(json_part)
        except (ValueError, UnicodeDecodeError):
            raise invalid("The request body is not JSON; send the protocol's inference request object.") from None
        if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
            raise invalid("The request needs an 'inputs' list; send the protocol's inference request object.")
        parameters = request.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise invalid("The request's 'parameters' must be an object.")
        self.binary_default = bool(parameters.pop("binary_data_output", False))
        outputs = request.get("outputs") or []
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o for o in outputs):
            raise invalid("The request's 'outputs' must be a list of objects with a 'name'.")
        for output in outputs:
            wanted = (output.get("parameters") or {}).get("binary_data")
            self.binary_outputs[str(output["name"])] = self.binary_default if wanted is None else bool(wanted)
        inputs, offset = [], 0
        for i, tensor in enumerate(request["inputs"]):
            if not isinstance(tensor, dict):
                raise invalid(f"inputs[{i}] must be an object with name, datatype, shape and data.")
            name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
                raise invalid(f"Input {name!r} needs a 'shape' list of integers.")
            size = (tensor.get("parameters") or {}).get("binary_data_size")
            items: list[bytes] = []
            if size is not None:
                if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                    raise invalid(f"Input {name!r} says binary_data_size {size!r}, more than the binary data sent.")
                chunk, offset = binary[offset : offset + size], offset + size
                if datatype == "BYTES":
                    items = split_bytes(chunk, f"the binary data of input {name!r}")
            elif datatype == "BYTES":
                items = [
                    _as_bytes(v, f"Input {name!r} element {j}") for j, v in enumerate(_flatten(tensor.get("data")))
                ]
            inputs.append(InputTensor(str(name), str(datatype or ""), shape, items))
        if offset != len(binary):
            raise invalid(
                f"The request has {len(binary)} bytes of binary data; its inputs' binary_data_size add to {offset}."
            )
        return InferCall(
            model_name=self.model_name,
            model_version=self.model_version,
            id=str(request.get("id", "")),
            inputs=inputs,
            outputs=[str(o["name"]) for o in outputs],
            parameters=parameters,
        )

    def _split(self) -> tuple[bytes, bytes]:
        if self.header_length is None:
            return self.body, b""
        if not self.header_length.isdigit() or int(self.header_length) > len(self.body):
            raise invalid(
                f"Inference-Header-Content-Length is {self.header_length!r}, not the length of the body's JSON part "
                f"(the body has {len(self.body)} bytes)."
            )
        length = int(self.header_length)
        return self.body[:length], self.body[length:]

    def response(self, answer: InferAnswer) -> Response:
        outputs, tails = [], []
        for name in answer.outputs:
            datatype, shape = answer.tensor(name)
            output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
            if self.binary_outputs.get(name, self.binary_default):
                raw = answer.raw(name)
                output["parameters"] = {"binary_data_size": len(raw)}
                tails.append(raw)
            else:
                output["data"] = answer.data(name)
            outputs.append(output)
        body: dict[str, Any] = {"model_name": answer.model_name, "model_version": MODEL_VERSION, "outputs": outputs}
        body["parameters"] = {"model_version": answer.model_version}  # which model answered
        if answer.id:
            body["id"] = answer.id
        if not tails:
            return JSONResponse(body)
        header = json.dumps(body, separators=(",", ":")).encode()
        return Response(
            header + b"".join(tails),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )


def oip_router(state: ServingState) -> APIRouter:
    """The /v2 routes over the app's servicer; health routes are open, the others under --auth-token."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe v2)"])
    servicer = state.servicer

    def refused(request: Request, method: str) -> JSONResponse | None:
        problem = state.auth_problem(request.headers.getlist("authorization"))
        if problem is None:
            return None
        state.metrics.requests.labels(method=method, code=problem.code.name).inc()
        response = _error(problem.code, problem.message)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def answer(work: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await work()
        except HttpError as exc:
            return _error(exc.code, exc.message, exc.status)
        except RequestError as exc:
            return _error(exc.code, exc.message)

    @router.get("/health/live", summary="Server liveness")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @router.get("/health/ready", summary="Server readiness: 503 while the model loads and while the server drains")
    async def ready() -> JSONResponse:
        is_ready = servicer.batcher is not None and not state.draining()
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @router.get("", summary="Server metadata")
    async def server_metadata(request: Request) -> Response:
        return refused(request, "ServerMetadata") or JSONResponse(
            {"name": SERVER_NAME, "version": gamjeong_version(), "extensions": list(EXTENSIONS)}
        )

    async def model_metadata(request: Request, name: str, version: str = "") -> Response:
        async def work() -> Response:
            meta = await call_unary(lambda _, context: metadata_for(servicer, name, version, context), None, None)
            return JSONResponse(meta)

        return refused(request, "ModelMetadata") or await answer(work)

    async def model_ready(request: Request, name: str, version: str = "") -> Response:
        async def work() -> Response:
            is_ready = is_model_ready(servicer, name, version) and not state.draining()
            return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)

        return refused(request, "ModelReady") or await answer(work)

    async def infer(request: Request, name: str, version: str = "") -> Response:
        refusal = refused(request, "ModelInfer")
        if refusal is not None:
            return refusal
        call = HttpInferRequest(await request.body(), request.headers.get(HEADER_LENGTH), name, version)

        async def work() -> Response:
            result = await call_unary(lambda _, context: model_infer(servicer, call.parse, context), None, None)
            return call.response(result)

        return await answer(work)

    path, version_path = "/models/{name}", "/models/{name}/versions/{version}"
    for prefix in (path, version_path):
        router.add_api_route(prefix, model_metadata, methods=["GET"], summary="Model metadata")
        router.add_api_route(f"{prefix}/ready", model_ready, methods=["GET"], summary="Model readiness")
        router.add_api_route(f"{prefix}/infer", infer, methods=["POST"], summary="Inference")
    return router
