"""The Open Inference Protocol (KServe v2, Triton's protocol) beside gamjeong's own API, on the same servicer.

The gRPC service `inference.GRPCInferenceService` (protos/inference) is served on gamjeong's gRPC port; the same
protocol over HTTP (`/v2/...`) is in server/http/oip.py. Both take their tensors apart into a transport-neutral
InferCall and run it through `model_infer` here, which calls the EmotionClassifierServicer's own validation and
classify path: the same readiness check, limits, result cache, batcher, metrics (method "ModelInfer") and status table
as Classify. Auth is the server's interceptor (gRPC) or the HTTP app's bearer check.

The model, as the protocol sees it: input `text`, BYTES, shape [N] (UTF-8 texts); outputs `probabilities`, FP32,
[N, 7] (label-id order) and `label`, BYTES, [N] (English label names). Its name is GetModelInfo's model_name.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from gamjeong.api.inference import open_inference_grpc_pb2 as oip
from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.labels import EMOTIONS, NUM_LABELS
from gamjeong.server.service import EmotionClassifierServicer, observed, tolerant
from gamjeong.server.status import RequestError, UndecodableRequest
from gamjeong.versions import gamjeong_version

SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name  # "inference.GRPCInferenceService"
SERVER_NAME = "gamjeong"
MODEL_VERSION = "1"  # one model per server, one version
INPUT = "text"
PROBABILITIES, LABEL = "probabilities", "label"
OUTPUTS = (PROBABILITIES, LABEL)
# Triton's HTTP binary tensor extension (server/http/oip.py); tritonclient's HTTP client uses it by default.
EXTENSIONS = ("binary_tensor_data",)
_EXPECTED_INPUT = f"one input, '{INPUT}' (BYTES, shape [N]: UTF-8 texts)"
_EXPECTED_OUTPUTS = f"'{PROBABILITIES}' (FP32, [N, {NUM_LABELS}]) and '{LABEL}' (BYTES, [N])"
_TRUNCATION = {None: pb.TRUNCATION_UNSPECIFIED, "truncate": pb.TRUNCATION_TRUNCATE, "refuse": pb.TRUNCATION_REFUSE}


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    items: list[bytes]  # the BYTES elements, in order (empty for other datatypes: refused before they are read)


@dataclass
class InferCall:
    """One inference request, whichever transport it came by."""

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # the requested outputs; empty: all of them
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferAnswer:
    model_name: str
    id: str
    outputs: list[str]  # in the order to answer them
    probabilities: np.ndarray  # float32 [N, 7]
    labels: list[str]
    model_version: str = ""  # which model answered (ModelInfo.model_version; two, comma-separated, across a reload)

    def tensor(self, name: str) -> tuple[str, list[int]]:
        """(datatype, shape) of one output."""
        n = len(self.labels)
        return ("FP32", [n, NUM_LABELS]) if name == PROBABILITIES else ("BYTES", [n])

    def raw(self, name: str) -> bytes:
        """One output in the protocol's raw layout: little-endian row-major FP32, or length-prefixed BYTES."""
        if name == PROBABILITIES:
            return np.ascontiguousarray(self.probabilities, dtype="<f4").tobytes()
        return join_bytes([label.encode() for label in self.labels])

    def data(self, name: str) -> list[Any]:
        """One output as the flat JSON list of the protocol's HTTP form."""
        return self.probabilities.reshape(-1).tolist() if name == PROBABILITIES else list(self.labels)


# --- BYTES tensors: each element a 4-byte little-endian length, then its bytes (Triton's layout) ------------------
def split_bytes(raw: bytes, where: str) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise invalid(f"{where} ends inside an element's 4-byte length; send BYTES elements length-prefixed.")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise invalid(f"{where}: an element says {size} bytes but only {len(raw) - offset} are left.")
        items.append(raw[offset : offset + size])
        offset += size
    return items


def join_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# --- the model as the protocol describes it ---------------------------------------------------------------------
def model_name(classifier: EmotionClassifierServicer) -> str | None:
    return None if classifier.model_info is None else classifier.model_info.model_name


def check_model(classifier: EmotionClassifierServicer, name: str, version: str) -> None:
    """NOT_FOUND for a model or version this server does not serve (after the readiness check)."""
    served = model_name(classifier)
    if name != served:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"Unknown model {name!r}; this server serves {served!r}.")
    if version not in ("", MODEL_VERSION):
        raise RequestError(
            grpc.StatusCode.NOT_FOUND, f"Model {served!r} has no version {version!r}; it has version {MODEL_VERSION}."
        )


def is_model_ready(classifier: EmotionClassifierServicer, name: str, version: str) -> bool:
    """False while the model loads; NOT_FOUND (RequestError) for another model's name once it is loaded."""
    if classifier.batcher is None:
        return False
    check_model(classifier, name, version)
    return True


def model_metadata(classifier: EmotionClassifierServicer) -> dict[str, Any]:
    """ModelMetadata as the HTTP form's JSON; the gRPC form is built from it. The parameters name the labels (by id:
    column i of `probabilities` is labels[i]) and the limits a caller must respect."""
    info = classifier.model_info
    assert info is not None  # the caller passed the readiness check
    platform = "onnxruntime_onnx" if info.backend.startswith("onnx") else "pytorch"
    return {
        "name": info.model_name,
        "versions": [MODEL_VERSION],
        "platform": platform,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, NUM_LABELS]},
            {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {
            "labels": ",".join(e.name for e in EMOTIONS),
            "labels_ko": ",".join(e.name_ko for e in EMOTIONS),
            "max_texts_per_request": info.limits.max_texts_per_request,
            "max_text_chars": info.limits.max_text_chars,
            "max_input_tokens": info.max_input_length,
            "backend": info.backend,
            "gamjeong_version": info.version,
            # The serving model's own version (manifest sha256, export time): the protocol's version stays "1", the
            # one version a Triton client asks for, while a reload swaps what answers under it.
            "model_version": info.model_version,
            "exported_at": info.exported_at,
        },
    }


# --- inference: the checks, then the classifier's own path ------------------------------------------------------
def _texts(call: InferCall) -> list[str]:
    if len(call.inputs) != 1 or call.inputs[0].name != INPUT:
        got = ", ".join(repr(t.name) for t in call.inputs) or "none"
        raise invalid(f"The model takes {_EXPECTED_INPUT}; got {got}.")
    tensor = call.inputs[0]
    if tensor.datatype != "BYTES":
        raise invalid(f"Input '{INPUT}' must be BYTES (UTF-8 texts), not {tensor.datatype or 'no datatype'}.")
    if len(tensor.shape) != 1:
        raise invalid(f"Input '{INPUT}' must have shape [N] (one dimension), not {list(tensor.shape)}.")
    if tensor.shape[0] != len(tensor.items):
        raise invalid(f"Input '{INPUT}' has shape {list(tensor.shape)} but {len(tensor.items)} elements.")
    texts = []
    for i, item in enumerate(tensor.items):
        try:
            texts.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            raise invalid(f"{INPUT}[{i}] is not valid UTF-8; send each text as UTF-8 bytes.") from None
    return texts


def _outputs(call: InferCall) -> list[str]:
    for name in call.outputs:
        if name not in OUTPUTS:
            raise invalid(f"Unknown output {name!r}; the model's outputs are {_EXPECTED_OUTPUTS}.")
    return list(dict.fromkeys(call.outputs)) or list(OUTPUTS)


def _truncation(call: InferCall) -> int:
    value = call.parameters.get("truncation")
    if value not in _TRUNCATION:
        raise invalid(f"Parameter 'truncation' must be 'truncate' or 'refuse', not {value!r}.")
    return _TRUNCATION[value]


@observed("ModelInfer")
async def model_infer(
    classifier: EmotionClassifierServicer, parse: Callable[[], InferCall], context: Any
) -> InferAnswer:
    """The one inference path of both transports. `parse` takes the request apart inside the observed call, so a
    malformed request is counted and answered like every other refusal."""
    call = parse()
    check_model(classifier, call.model_name, call.model_version)
    texts, outputs = _texts(call), _outputs(call)
    settings = classifier.settings
    classifier.check_count(texts, settings.max_texts_per_request, "ModelInfer", "split them into several requests.")
    for i, text in enumerate(texts):
        classifier.check_text(text, f"{INPUT}[{i}]")
    options = classifier.request_options(0, _truncation(call))
    results = await classifier.classify(texts, options, context, lambda i: f"{INPUT}[{i}]")
    probabilities = np.zeros((len(results), NUM_LABELS), dtype=np.float32)
    for row, result in zip(probabilities, results, strict=True):
        for score in result.scores:  # all seven (top_k 0), highest first: put back in label-id order
            row[score.label_id] = score.score
    versions = ",".join(dict.fromkeys(r.model_version for r in results if r.model_version))
    return InferAnswer(call.model_name, call.id, outputs, probabilities, [r.label for r in results], versions)


@observed("ModelMetadata")
async def _model_metadata(classifier: EmotionClassifierServicer, request: Any, context: Any) -> dict[str, Any]:
    check_model(classifier, request.name, request.version)
    return model_metadata(classifier)


async def metadata_for(classifier: EmotionClassifierServicer, name: str, version: str, context: Any) -> dict[str, Any]:
    """ModelMetadata of the HTTP form (readiness, NOT_FOUND and metrics as over gRPC)."""
    return await _model_metadata(classifier, oip.ModelMetadataRequest(name=name, version=version), context)


# --- gRPC -------------------------------------------------------------------------------------------------------
def _parameter(value: oip.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def call_from_grpc(request: oip.ModelInferRequest) -> InferCall:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise invalid(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input."
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        if raw and tensor.HasField("contents"):
            raise invalid(f"Input {tensor.name!r} has both contents and raw_input_contents; send one of them.")
        if tensor.datatype != "BYTES":
            items = []  # refused by the datatype check, before anything would read it
        elif raw:
            items = split_bytes(raw[i], f"raw_input_contents[{i}]")
        else:
            items = list(tensor.contents.bytes_contents)
        inputs.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape), items))
    return InferCall(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=[o.name for o in request.outputs],
        parameters={k: _parameter(v) for k, v in request.parameters.items()},
    )


class InferenceServicer:
    """inference.GRPCInferenceService over an EmotionClassifierServicer."""

    def __init__(self, classifier: EmotionClassifierServicer, draining: Callable[[], bool] = lambda: False) -> None:
        self.classifier, self.draining = classifier, draining

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self.classifier.batcher is not None and not self.draining())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> oip.ModelReadyResponse:
        if isinstance(request, UndecodableRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "The request is not a valid ModelReadyRequest.")
        try:
            ready = is_model_ready(self.classifier, request.name, request.version) and not self.draining()
            return oip.ModelReadyResponse(ready=ready)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
            raise  # not reached: abort raises

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=gamjeong_version(), extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> oip.ModelMetadataResponse:
        meta = await _model_metadata(self.classifier, request, context)
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
            properties={k: str(v) for k, v in meta["parameters"].items()},
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> oip.ModelInferResponse:
        # An undecodable request goes in as it is: the observer refuses it with INVALID_ARGUMENT.
        parse = request if isinstance(request, UndecodableRequest) else (lambda: call_from_grpc(request))
        answer = await model_infer(self.classifier, parse, context)
        response = oip.ModelInferResponse(model_name=answer.model_name, model_version=MODEL_VERSION, id=answer.id)
        response.parameters["model_version"].string_param = answer.model_version  # which model answered
        for name in answer.outputs:  # raw_output_contents, as Triton answers (tritonclient reads them)
            datatype, shape = answer.tensor(name)
            response.outputs.add(name=name, datatype=datatype, shape=shape)
            response.raw_output_contents.append(answer.raw(name))
        return response


def add_oip_to_server(
    classifier: EmotionClassifierServicer, server: grpc.aio.Server, draining: Callable[[], bool] = lambda: False
) -> InferenceServicer:
    """Serve inference.GRPCInferenceService on `server`, with deserializers that never raise (as add_to_server).
    `draining` tells readiness that the server is shutting down (as health's NOT_SERVING does)."""
    servicer = InferenceServicer(classifier, draining)
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=tolerant(getattr(oip, method.input_type.name)),
            response_serializer=getattr(oip, method.output_type.name).SerializeToString,
        )
        for method in oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    return servicer


def reflection_pool(service_names: Sequence[str]) -> Any:
    """A descriptor pool for server reflection holding the files of every served service: the OIP stubs live in a pool
    of their own (gamjeong/api/codegen.py), which reflection's default pool cannot see."""
    from google.protobuf import descriptor_pool
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    pool, added = descriptor_pool.DescriptorPool(), set()

    def add(file: Any) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = FileDescriptorProto()
        file.CopyToProto(proto)
        pool.AddSerializedFile(proto.SerializeToString())
        added.add(file.name)

    for name in service_names:
        source = oip.DESCRIPTOR.pool if name == SERVICE_NAME else descriptor_pool.Default()
        add(source.FindFileContainingSymbol(name))
    return pool
