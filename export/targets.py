"""Which hardware an export is for, and the Optimum quantisation settings that suit it.

`--target auto` looks at the machine doing the export: the CUDA execution provider of onnxruntime-gpu, else the CPU
architecture (arm64) and instruction set flags (AVX512-VNNI, AVX2) in /proc/cpuinfo.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gamjeong.errors import GamjeongError

Target = Literal["auto", "avx512_vnni", "avx2", "arm64", "cuda"]
TARGETS: tuple[str, ...] = ("auto", "avx512_vnni", "avx2", "arm64", "cuda")
CPU_TARGETS: tuple[str, ...] = ("avx512_vnni", "avx2", "arm64")
STATIC_OPERATORS: tuple[str, ...] = ("MatMul", "Gather")


@dataclass(frozen=True)
class ResolvedTarget:
    """The concrete target an export is built for, and why it was chosen."""

    name: str  # one of CPU_TARGETS or "cuda"
    requested: str
    reason: str

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags of the first CPU listed in /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 says flags, ARM says Features
            return set(value.split())
    return set()


def detect_target(
    *, cuda_present: bool | None = None, machine: str | None = None, cpu_flags: set[str] | None = None
) -> ResolvedTarget:
    """What `--target auto` means on this machine (the arguments exist so tests can describe other machines)."""
    if cuda_present is None:
        from gamjeong.onnx_runtime import cuda_available

        cuda_present = cuda_available()
    if cuda_present:
        return ResolvedTarget("cuda", "auto", "onnxruntime offers the CUDA execution provider")
    machine = (machine or platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return ResolvedTarget("arm64", "auto", f"the CPU architecture is {machine}")
    flags = read_cpu_flags() if cpu_flags is None else cpu_flags
    if "avx512_vnni" in flags:
        return ResolvedTarget("avx512_vnni", "auto", "the CPU flags include avx512_vnni")
    if "avx2" in flags:
        return ResolvedTarget("avx2", "auto", "the CPU flags include avx2 but not avx512_vnni")
    return ResolvedTarget("avx2", "auto", f"no AVX2/AVX512-VNNI flags found on this {machine} CPU; avx2 is the default")


def resolve_target(requested: str, *, quantize: str | None) -> ResolvedTarget:
    """The concrete target for `--target` (and `--quantize`, since fp16 only makes sense on a CUDA GPU)."""
    if requested not in TARGETS:
        raise GamjeongError(f"Unknown target '{requested}'; choose one of {', '.join(TARGETS)}.")
    if requested != "auto":
        return ResolvedTarget(requested, requested, "requested with --target")
    if quantize == "fp16":
        return ResolvedTarget("cuda", "auto", "fp16 models are meant for CUDA GPUs")
    return detect_target()


def int8_quantization_config(
    target: str, *, is_static: bool, per_channel: bool, nodes_to_exclude: list[str] | None = None
):
    """Optimum's AutoQuantizationConfig preset for a CPU target (u8 activations; s8 or u8 weights per target).

    `nodes_to_exclude` keeps those nodes in fp32 (the accuracy search's fallbacks).
    """
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    presets = {
        "avx512_vnni": AutoQuantizationConfig.avx512_vnni,
        "avx2": AutoQuantizationConfig.avx2,
        "arm64": AutoQuantizationConfig.arm64,
    }
    if target not in presets:
        raise GamjeongError(
            f"int8 quantisation is for CPU targets ({', '.join(CPU_TARGETS)}), not '{target}'; "
            "use --quantize fp16 or none for a CUDA GPU."
        )
    # Static (QDQ) quantisation of every operator Optimum lists fails on ONNX Runtime's fused transformer ops
    # (EmbedLayerNormalization, SkipLayerNormalization: "Unable to get valid quantization scale"); the weight-heavy
    # MatMul and embedding Gather carry nearly all of the size and time, so static mode quantises those.
    operators = list(STATIC_OPERATORS) if is_static else None
    return presets[target](
        is_static=is_static,
        per_channel=per_channel,
        operators_to_quantize=operators,
        nodes_to_exclude=nodes_to_exclude or None,
    )
