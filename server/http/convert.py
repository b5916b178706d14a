"""JSON shapes of the HTTP API: request schemas (validated by FastAPI, published in /openapi.json), response schemas
(for the OpenAPI document only: answers are built as plain dicts, which is cheaper than validating them again), and
the conversions from the servicer's protobuf messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.artifacts import PARITY_FILE, evaluated_dirs, find_manifest, read_metrics
from gamjeong.labels import NUM_LABELS

TRUNCATION: dict[str | None, int] = {
    None: pb.TRUNCATION_UNSPECIFIED,
    "truncate": pb.TRUNCATION_TRUNCATE,
    "refuse": pb.TRUNCATION_REFUSE,
}
CODE_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}
# Macro-F1 at or below this on the model's own evaluation means it has not learnt the task: chance level for seven
# classes is about 0.14, and a quickstart run on a random base (offline) lands there.
UNTRAINED_MACRO_F1 = 0.2


# --- requests ---------------------------------------------------------------------------------------------------
class ClassifyBody(BaseModel):
    """POST /v1/classify: the fields of the proto's ClassifyRequest."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(description="Texts to classify; at least one, at most the server's max_texts_per_request.")
    truncation: Literal["truncate", "refuse"] | None = Field(
        None, description="Texts over the model's token limit: truncate (and say so) or refuse; default: the server's."
    )
    top_k: int = Field(0, ge=0, le=NUM_LABELS, description="How many scores each result lists; 0: all seven.")


class ChatMessageBody(BaseModel):
    """One message on WS /v1/chat: the fields of the proto's ChatMessage."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Client-chosen id, echoed in the reply.")
    conversation_id: str = ""
    text: str
    top_k: int = Field(0, ge=0, le=NUM_LABELS)
    truncation: Literal["truncate", "refuse"] | None = None


# --- responses (documentation) ----------------------------------------------------------------------------------
class TimingJson(BaseModel):
    tokenization_ms: float
    queue_ms: float
    inference_ms: float
    num_tokens: int
    batch_size: int


class ResultJson(BaseModel):
    label: str = Field(description="English name of the most likely emotion.")
    label_ko: str = Field(description="Korean name of the most likely emotion.")
    label_id: int
    score: float
    scores: dict[str, float] = Field(description="Probability per emotion (English name), highest first.")
    truncated: bool
    timing: TimingJson
    model_version: str = Field(description="Which model answered (GET /v1/info's model_version).")


class ClassifyJson(BaseModel):
    results: list[ResultJson]
    model: str
    timing: dict[str, float] = Field(description="total_ms: arrival to answer, on the server.")


class ErrorJson(BaseModel):
    class Detail(BaseModel):
        code: str = Field(description="The gRPC status name the same problem gets over gRPC.")
        message: str

    error: Detail


# --- protobuf -> JSON -------------------------------------------------------------------------------------------
def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)


def result_json(result: pb.EmotionResult) -> dict[str, Any]:
    timing = result.timing
    return {
        "label": result.label,
        "label_ko": result.label_ko,
        "label_id": result.label_id,
        "score": result.score,
        "scores": {s.label: s.score for s in result.scores},
        "truncated": result.truncated,
        "timing": {
            "tokenization_ms": _ms(timing.tokenization_time_ns),
            "queue_ms": _ms(timing.queue_time_ns),
            "inference_ms": _ms(timing.inference_time_ns),
            "num_tokens": timing.num_tokens,
            "batch_size": timing.batch_size,
        },
        "model_version": result.model_version,
    }


def chat_json(reply: pb.ChatResult) -> dict[str, Any]:
    answer: dict[str, Any] = {"id": reply.id, "conversation_id": reply.conversation_id}
    if reply.HasField("result"):
        answer["result"] = result_json(reply.result)
    else:
        answer["error"] = {"code": CODE_NAMES.get(reply.error.code, "UNKNOWN"), "message": reply.error.message}
    return answer


def info_json(info: pb.ModelInfo, quality: dict[str, Any]) -> dict[str, Any]:
    from google.protobuf import json_format

    data = json_format.MessageToDict(info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return data | quality


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _scores(record: dict[str, Any], untrained_mark: object, source: str) -> dict[str, Any] | None:
    macro_f1, accuracy = record.get("macro_f1"), record.get("accuracy")
    if not isinstance(macro_f1, int | float):
        return None
    # Which model scored it and on which set, when the record says (the web page shows them beside the figure).
    said = {key: record[key] for key in ("backend", "evaluated_on", "heldout") if record.get(key)}
    return {
        "macro_f1": round(float(macro_f1), 4),
        "accuracy": round(float(accuracy), 4) if isinstance(accuracy, int | float) else None,
        "untrained": bool(untrained_mark) or macro_f1 <= UNTRAINED_MACRO_F1,
        "quality_source": source,
    } | {f"quality_{key}": value for key, value in said.items()}


def model_quality(model_dir: Path) -> dict[str, Any]:
    """What the model's own evaluation says: accuracy, macro-F1 and whether the model is untrained (marked so, or
    macro-F1 at chance level), so the web page can warn that its answers mean nothing. Read from metrics.json (of the
    served directory, or of the trained directory an export's manifest names), else from the export's parity.json
    (the served ONNX model scored on the parity texts). With no evaluation on record `untrained` is None: unknown,
    and the page says so rather than guessing."""
    for directory in evaluated_dirs(model_dir, find_manifest(model_dir)):
        metrics = read_metrics(directory)
        found = _scores(metrics, metrics.get("untrained"), "metrics.json")
        if found is not None:
            return found
    parity = _read_json(model_dir / PARITY_FILE).get("candidate")
    found = _scores(parity, False, "parity.json") if isinstance(parity, dict) else None
    return found or {"macro_f1": None, "accuracy": None, "untrained": None, "quality_source": None}
