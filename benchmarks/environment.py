"""What the numbers were measured on (CPU, thread counts, library versions, date), recorded with every result; and the
process memory the model benchmark reads."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

_LIBRARIES = ("torch", "transformers", "onnxruntime", "optimum", "optimum-onnx", "tokenizers", "numpy", "grpcio")


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether bf16 autocast on this CPU runs on native bf16 instructions (AVX512-BF16 or AMX), and why not."""
    flags = cpu_flags()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if native:
        return True, f"CPU has {', '.join(native)}"
    return False, "CPU has no avx512_bf16/amx_bf16 instructions: bf16 autocast would be emulated and slower than fp32"


def library_versions() -> dict[str, str | None]:
    """The benchmarked libraries' versions (None: not installed). onnxruntime's is the imported module's: package
    metadata can name another build than the one that runs (the CPU package's 1.30.0 while onnxruntime-gpu 1.31.1,
    first on PYTHONPATH, ran); so is any other library already imported (torch, numpy, ...)."""
    import sys

    from gamjeong.versions import library_versions as installed_versions

    versions = installed_versions(_LIBRARIES, python=False, keep_missing=True)
    onnxruntime_module()  # imports it
    for name in versions:
        module = sys.modules.get(name.replace("-", "_"))
        if module is not None and isinstance(getattr(module, "__version__", None), str):
            versions[name] = module.__version__
    return versions


def onnxruntime_module() -> dict[str, object]:
    """The onnxruntime that `import onnxruntime` gives this process: version, build (CPU or GPU), the execution
    providers it offers and where it was loaded from."""
    try:
        import onnxruntime
    except ImportError as exc:
        return {"version": None, "why": str(exc)}
    return {
        "version": onnxruntime.__version__,
        "build": onnxruntime.get_device(),
        "providers": onnxruntime.get_available_providers(),
        "path": str(Path(onnxruntime.__file__).parent),
    }


def rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float | None:
    """VmHWM: this process's peak resident memory. (ru_maxrss is not used: it keeps the parent's peak across exec.)"""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def environment(threads: int | None) -> dict[str, object]:
    import psutil

    from .gpu_monitor import gpu_environment

    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_bf16": cpu_bf16_support()[0],
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "threads_requested": threads,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": library_versions(),
        "onnxruntime": onnxruntime_module(),
        "gpu": gpu_environment(),
    }
