from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Truncation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_UNSPECIFIED: _ClassVar[Truncation]
    TRUNCATION_TRUNCATE: _ClassVar[Truncation]
    TRUNCATION_REFUSE: _ClassVar[Truncation]
TRUNCATION_UNSPECIFIED: Truncation
TRUNCATION_TRUNCATE: Truncation
TRUNCATION_REFUSE: Truncation

class ReloadModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadModelResponse(_message.Message):
    __slots__ = ("model", "changed", "previous_model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    changed: bool
    previous_model_version: str
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., changed: bool = ..., previous_model_version: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("texts", "top_k", "truncation")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    truncation: Truncation
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., truncation: _Optional[_Union[Truncation, str]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EmotionResult]
    def __init__(self, results: _Optional[_Iterable[_Union[EmotionResult, _Mapping]]] = ...) -> None: ...

class ClassifyStreamRequest(_message.Message):
    __slots__ = ("texts", "top_k", "truncation")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    truncation: Truncation
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., truncation: _Optional[_Union[Truncation, str]] = ...) -> None: ...

class ClassifyStreamResponse(_message.Message):
    __slots__ = ("offset", "results")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    offset: int
    results: _containers.RepeatedCompositeFieldContainer[EmotionResult]
    def __init__(self, offset: _Optional[int] = ..., results: _Optional[_Iterable[_Union[EmotionResult, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("id", "conversation_id", "text", "top_k", "truncation")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    conversation_id: str
    text: str
    top_k: int
    truncation: Truncation
    def __init__(self, id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., text: _Optional[str] = ..., top_k: _Optional[int] = ..., truncation: _Optional[_Union[Truncation, str]] = ...) -> None: ...

class ChatResult(_message.Message):
    __slots__ = ("id", "conversation_id", "result", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    conversation_id: str
    result: EmotionResult
    error: Error
    def __init__(self, id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., result: _Optional[_Union[EmotionResult, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class EmotionResult(_message.Message):
    __slots__ = ("label_id", "label", "label_ko", "score", "scores", "truncated", "timing", "model_version")
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_KO_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    label_id: int
    label: str
    label_ko: str
    score: float
    scores: _containers.RepeatedCompositeFieldContainer[LabelScore]
    truncated: bool
    timing: Timing
    model_version: str
    def __init__(self, label_id: _Optional[int] = ..., label: _Optional[str] = ..., label_ko: _Optional[str] = ..., score: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., truncated: bool = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label_id", "label", "label_ko", "score")
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_KO_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label_id: int
    label: str
    label_ko: str
    score: float
    def __init__(self, label_id: _Optional[int] = ..., label: _Optional[str] = ..., label_ko: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("tokenization_time_ns", "queue_time_ns", "inference_time_ns", "num_tokens", "batch_size", "cache_hit")
    TOKENIZATION_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    tokenization_time_ns: int
    queue_time_ns: int
    inference_time_ns: int
    num_tokens: int
    batch_size: int
    cache_hit: bool
    def __init__(self, tokenization_time_ns: _Optional[int] = ..., queue_time_ns: _Optional[int] = ..., inference_time_ns: _Optional[int] = ..., num_tokens: _Optional[int] = ..., batch_size: _Optional[int] = ..., cache_hit: bool = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_name", "base_model", "labels", "quantization", "backend", "execution_provider", "max_input_length", "limits", "version", "model_version", "exported_at")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    base_model: str
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    quantization: str
    backend: str
    execution_provider: str
    max_input_length: int
    limits: Limits
    version: str
    model_version: str
    exported_at: str
    def __init__(self, model_name: _Optional[str] = ..., base_model: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., quantization: _Optional[str] = ..., backend: _Optional[str] = ..., execution_provider: _Optional[str] = ..., max_input_length: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., version: _Optional[str] = ..., model_version: _Optional[str] = ..., exported_at: _Optional[str] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("id", "name", "name_ko")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_KO_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    name_ko: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., name_ko: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_batch_size", "max_batch_tokens", "max_wait_ms", "max_texts_per_request", "max_stream_texts", "max_queue_size", "max_text_chars", "default_truncation", "max_message_bytes")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_TEXTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_batch_tokens: int
    max_wait_ms: float
    max_texts_per_request: int
    max_stream_texts: int
    max_queue_size: int
    max_text_chars: int
    default_truncation: Truncation
    max_message_bytes: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_wait_ms: _Optional[float] = ..., max_texts_per_request: _Optional[int] = ..., max_stream_texts: _Optional[int] = ..., max_queue_size: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., default_truncation: _Optional[_Union[Truncation, str]] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...
