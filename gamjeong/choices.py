"""The fixed choices of the command line, as str Enums: typer lists them in --help and refuses anything else with the
choices named. The typed settings behind the commands (pydantic) read them as their plain string values.

`Runtime` is the choice of what runs a model directory (`--backend auto|pytorch|onnx`, gamjeong.predictor's
`load_predictor(backend=...)`); a loaded predictor then says what it runs as `precision` and `device`.
"""

from __future__ import annotations

from enum import Enum


class Runtime(str, Enum):
    """auto: ONNX Runtime for an exported directory, PyTorch for a trained one."""

    auto = "auto"
    pytorch = "pytorch"
    onnx = "onnx"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class TrainingPrecision(str, Enum):
    """auto: bf16 (or fp16) mixed precision on a GPU, fp32 on a CPU."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ClassWeights(str, Enum):
    """auto: the loss weighted by inverse class frequency; none: plain cross-entropy."""

    auto = "auto"
    none = "none"


class Truncation(str, Enum):
    truncate = "truncate"
    refuse = "refuse"


class LogFormat(str, Enum):
    json = "json"
    text = "text"


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class Isolation(str, Enum):
    """subprocess: each benchmarked backend in its own process (clean memory and load time); inprocess: one process."""

    subprocess = "subprocess"
    inprocess = "inprocess"


class EventLoop(str, Enum):
    """auto: uvloop where it is installed (Linux, macOS), else asyncio's own loop."""

    auto = "auto"
    asyncio = "asyncio"
    uvloop = "uvloop"
