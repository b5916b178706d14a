"""The GPU through NVML (`nvidia-ml-py`, imported as pynvml): what the results' environment names (name, memory, driver,
CUDA), and utilisation and memory sampled in a thread while a load runs. NVML is optional: without the package, its
library or a GPU, every answer is "no GPU" with the reason, never an error."""

from __future__ import annotations

import threading
from typing import Any

NO_GPU = "no GPU"


def _nvml() -> tuple[Any, str | None]:
    """(pynvml initialised, None) or (None, why not)."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver library, no device, ...
        return None, f"NVML: {exc}"
    if pynvml.nvmlDeviceGetCount() == 0:
        pynvml.nvmlShutdown()
        return None, "NVML sees no device"
    return pynvml, None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older pynvml releases return bytes


def gpu_environment() -> dict[str, Any]:
    """{"gpus": [{index, name, memory_gb, ...}], "driver": ..., "cuda_driver": "13.0"} or {"gpus": "no GPU", "why": ...}."""
    nvml, why = _nvml()
    if nvml is None:
        return {"gpus": NO_GPU, "why": why}
    try:
        cuda = nvml.nvmlSystemGetCudaDriverVersion()  # e.g. 13000: the newest CUDA the driver supports
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                {
                    "index": index,
                    "name": _text(nvml.nvmlDeviceGetName(handle)),
                    "memory_gb": round(nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1),
                }
            )
        return {
            "gpus": gpus,
            "driver": _text(nvml.nvmlSystemGetDriverVersion()),
            "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
        }
    except nvml.NVMLError as exc:
        return {"gpus": NO_GPU, "why": f"NVML: {exc}"}
    finally:
        nvml.nvmlShutdown()


class GpuSampler:
    """Samples every GPU's utilisation (the share of the last sample period a kernel ran, as nvidia-smi shows it) and
    used memory every `interval_s` from a thread, between `with` entry and exit; `summary()` is then one dict per GPU
    (mean and max utilisation, max memory), or "no GPU"."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self._samples: dict[int, list[tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None

    def __enter__(self) -> GpuSampler:
        self._nvml, self.why = _nvml()
        if self._nvml is not None:
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self._nvml.nvmlDeviceGetCount())]
            self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        nvml = self._nvml
        while not self._stop.wait(self.interval_s):
            for index, handle in enumerate(self._handles):
                try:
                    busy = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                    used = nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                except nvml.NVMLError:
                    continue
                self._samples.setdefault(index, []).append((float(busy), used))

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._nvml.nvmlShutdown()

    def summary(self) -> list[dict[str, Any]] | str:
        if self._nvml is None:
            return NO_GPU
        out = []
        for index, samples in sorted(self._samples.items()):
            busy = [s[0] for s in samples]
            out.append(
                {
                    "index": index,
                    "samples": len(samples),
                    "util_mean_pct": round(sum(busy) / len(busy), 1),
                    "util_max_pct": max(busy),
                    "memory_max_mb": round(max(s[1] for s in samples), 1),
                }
            )
        return out or NO_GPU
