"""One predictor interface with PyTorch and ONNX Runtime implementations.

Evaluation, classification, the export parity gate, the gRPC server and the benchmarks all run models through this
interface, so a number measured here is the number the server will see.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from gamjeong.artifacts import (
    CONFIG_FILE,
    ONNX_MODEL_FILE,
    Manifest,
    is_exported_dir,
    require_tokenizer,
    verify_manifest,
)
from gamjeong.errors import GamjeongError
from gamjeong.tokenization import EncodedText, ServingTokenizer, pad_rows

if TYPE_CHECKING:  # imported where they are used: a serving install has no torch or transformers
    import onnxruntime
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    Tokenizer = PreTrainedTokenizerBase | ServingTokenizer

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 128
__all__ = ["DEFAULT_MAX_LENGTH", "EncodedText", "OnnxPredictor", "Predictor", "TorchPredictor", "load_predictor"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


class Predictor(ABC):
    """Tokenises texts and returns the probabilities of the seven classes."""

    backend: str  # a label for logs and results: "pytorch-fp32", "onnx-int8", ... (with "-cuda" on a GPU)
    device: str  # "cpu" or "cuda"
    precision: str = "fp32"  # "fp32", "bf16", "fp16" or "int8": read this, never parse `backend`
    manifest: Manifest | None = None  # an exported directory's verified manifest.json

    def __init__(self, tokenizer: Tokenizer, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        limit = getattr(tokenizer, "model_max_length", None) or DEFAULT_MAX_LENGTH
        if limit > 100_000:  # transformers' "no limit" sentinel
            limit = DEFAULT_MAX_LENGTH
        self.max_length = int(max_length or min(limit, 512))
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # --- tokenisation -------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Fast-tokenizer encoding; a text longer than max_length is cut and flagged as truncated."""
        if not texts:
            return []
        if isinstance(self.tokenizer, ServingTokenizer):  # tokenizer.json alone (serving: no transformers)
            return self.tokenizer.encode_truncated(texts, self.max_length)
        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            return_overflowing_tokens=True,  # an overflow row means the text did not fit
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        mapping = enc["overflow_to_sample_mapping"]
        result: list[EncodedText | None] = [None] * len(texts)
        overflowed = [False] * len(texts)
        for row, sample in enumerate(mapping):
            if result[sample] is None:
                result[sample] = EncodedText(enc["input_ids"][row], False)
            else:
                overflowed[sample] = True
        return [EncodedText(r.input_ids, o) for r, o in zip(result, overflowed, strict=True)]  # type: ignore[union-attr]

    def pad(self, encoded: Sequence[EncodedText]) -> tuple[np.ndarray, np.ndarray]:
        """Dynamic padding to the longest text of the batch (vectorised: gamjeong.tokenization.pad_rows)."""
        return pad_rows([e.input_ids for e in encoded], self.pad_token_id)

    # --- inference ----------------------------------------------------------------------------------------------
    @abstractmethod
    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Raw class logits, float32 [batch, 7]."""

    def predict_encoded(self, encoded: Sequence[EncodedText]) -> np.ndarray:
        """Probabilities [batch, 7] of already-encoded texts run as one padded batch."""
        if not encoded:
            return np.zeros((0, 7), dtype=np.float32)
        input_ids, attention_mask = self.pad(encoded)
        return softmax(self.logits(input_ids, attention_mask).astype(np.float32))

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Probabilities [len(texts), 7]; texts are batched by length to limit padding, results in input order."""
        encoded = self.encode(texts)
        lengths = np.fromiter((len(e.input_ids) for e in encoded), dtype=np.intp, count=len(encoded))
        order = np.argsort(lengths, kind="stable").tolist()
        probs = np.zeros((len(encoded), 7), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            probs[idx] = self.predict_encoded([encoded[i] for i in idx])
        return probs

    def info(self) -> dict[str, object]:
        return {"backend": self.backend, "device": self.device, "max_length": self.max_length}

    def another_session(self, intra_op_threads: int | None, intra_op_spinning: bool | None) -> Predictor | None:
        """A second predictor of the same model with its own threads, sharing this one's tokenizer (the server's
        model instances); None where the backend cannot open one (PyTorch's threads are per process)."""
        return None


class TorchPredictor(Predictor):
    """A transformers model in PyTorch, fp32 or (autocast) bf16/fp16."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        dtype: Literal["fp32", "bf16", "fp16"] = "fp32",
        device: str = "auto",
        max_length: int | None = None,
    ) -> None:
        import torch

        super().__init__(tokenizer, max_length)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "fp16" and self.device != "cuda":
            raise GamjeongError("PyTorch fp16 inference needs a CUDA GPU; use fp32 or bf16 on a CPU.")
        self.model = model.to(self.device).eval()
        self.dtype = dtype
        self.precision = dtype
        self.backend = f"pytorch-{dtype}" + ("-cuda" if self.device == "cuda" else "")

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)
        with (
            torch.inference_mode(),
            torch.autocast(self.device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None),
        ):
            out = self.model(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                attention_mask=torch.from_numpy(attention_mask).to(self.device),
            )
        return out.logits.float().cpu().numpy()


_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxPredictor(Predictor):
    """An ONNX model on ONNX Runtime (CUDA execution provider when available, else CPU).

    `io_binding` (default: on for CUDA only) runs each call through an IOBinding: the padded int64 arrays are bound
    where they lie (ONNX Runtime copies them to the GPU once, inside the run) and the logits are written by the
    device-to-host copy straight into an array allocated here, instead of an ONNX Runtime buffer that `run` then
    converts. The answers are the same either way (tests run both on the CPU provider, where the binding also works).
    """

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        tokenizer: Tokenizer,
        *,
        precision: str = "fp32",
        max_length: int | None = None,
        manifest: Manifest | None = None,
        model_path: Path | None = None,
        io_binding: bool | None = None,
    ) -> None:
        super().__init__(tokenizer, max_length)
        self.session = session
        self.model_path = model_path
        self.input_names = {i.name for i in session.get_inputs()}
        provider = session.get_providers()[0]
        self.device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self.provider = provider
        self.precision = precision
        self.manifest = manifest
        self.backend = f"onnx-{precision}" + ("-cuda" if self.device == "cuda" else "")
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        logits = session.get_outputs()[0]
        self._logits_name: str = logits.name
        width = logits.shape[-1] if logits.shape else None
        # Where the logits' type and class count are fixed in the graph (every export), the bound output is an array
        # allocated here; otherwise ONNX Runtime allocates it and it is copied out.
        self._logits_dtype = _ONNX_FLOAT_TYPES.get(logits.type)
        self._logits_width = width if isinstance(width, int) and self._logits_dtype is not None else None

    def _feed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return {k: v for k, v in feed.items() if k in self.input_names}

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = self._feed(input_ids, attention_mask)
        if not self.io_binding:
            return self.session.run([self._logits_name], feed)[0]
        # A binding per call: one predictor may be called from several threads (it is cheap: microseconds)
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        if self._logits_width is None:
            binding.bind_output(self._logits_name, "cpu")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        out = np.empty((len(input_ids), self._logits_width), dtype=self._logits_dtype)
        binding.bind_output(self._logits_name, "cpu", 0, out.dtype, out.shape, out.ctypes.data)
        self.session.run_with_iobinding(binding)
        return out

    def info(self) -> dict[str, object]:
        return {**super().info(), "provider": self.provider, "io_binding": self.io_binding}

    def another_session(self, intra_op_threads: int | None, intra_op_spinning: bool | None) -> OnnxPredictor | None:
        # The tokenizer is shared: only the server's first instance tokenises, and an XLM-R tokenizer alone holds
        # ~290 MiB, twice what an int8 e5-small session does (docs/benchmarks.md).
        if self.model_path is None:
            return None
        from gamjeong.onnx_runtime import create_session

        session = create_session(
            self.model_path,
            provider="cuda" if self.device == "cuda" else "cpu",
            intra_op_threads=intra_op_threads,
            intra_op_spinning=intra_op_spinning,
        )
        return OnnxPredictor(
            session,
            self.tokenizer,
            precision=self.precision,
            max_length=self.max_length,
            manifest=self.manifest,
            model_path=self.model_path,
            io_binding=self.io_binding,
        )


def _onnx_precision(model_dir: Path, manifest: Manifest | None = None) -> str:
    """The precision ("fp32", "int8" or "fp16") of an exported directory's model.onnx, read from the graph itself
    (gamjeong.onnx_runtime.graph_precision): the manifest's own description is not covered by its checksums.
    `manifest` is accepted for older callers and not read."""
    from gamjeong.onnx_runtime import graph_precision

    return graph_precision(Path(model_dir) / ONNX_MODEL_FILE)


def load_predictor(
    model_dir: str | Path,
    *,
    backend: Literal["auto", "pytorch", "onnx"] = "auto",
    device: str = "auto",
    torch_dtype: Literal["fp32", "bf16", "fp16"] = "fp32",
    intra_op_threads: int | None = None,
    max_length: int | None = None,
    verify: bool = True,
    intra_op_spinning: bool | None = None,
    io_binding: bool | None = None,
) -> Predictor:
    """The predictor for a trained (PyTorch) or exported (ONNX) directory, chosen by what the directory holds.

    An exported directory is first checked against its manifest.json (sizes and sha256; `verify=False` skips this
    for callers that already did it), so a truncated or edited model is refused with one sentence. An exported
    directory is served without transformers or torch: its tokenizer.json is read by the `tokenizers` library alone
    (gamjeong.tokenization), so a serving install needs neither. `io_binding` is OnnxPredictor's (None: on for CUDA).
    """
    path = Path(model_dir).expanduser()
    if not (path / CONFIG_FILE).is_file() and not is_exported_dir(path):
        raise GamjeongError(f"'{path}' is neither a trained nor an exported gamjeong model directory.")
    if (path / CONFIG_FILE).is_file():
        from gamjeong.modeling import check_trained_model_dir

        check_trained_model_dir(path)  # our seven labels: a foreign model is refused before anything else
    require_tokenizer(path)  # before the (slow) model load: a missing tokenizer is one sentence, not a traceback
    use_onnx = backend == "onnx" or (backend == "auto" and is_exported_dir(path))
    if use_onnx:
        from gamjeong.onnx_runtime import create_session

        if not is_exported_dir(path):
            raise GamjeongError(f"'{path}' has no {ONNX_MODEL_FILE}; run `gamjeong export` on it first.")
        manifest = verify_manifest(path) if verify else None
        provider = "auto" if device == "auto" else device
        session = create_session(
            path / ONNX_MODEL_FILE,
            provider=provider,
            intra_op_threads=intra_op_threads,
            intra_op_spinning=intra_op_spinning,
        )
        from gamjeong.tokenization import load_serving_tokenizer

        return OnnxPredictor(
            session,
            load_serving_tokenizer(path),
            precision=_onnx_precision(path, manifest),
            max_length=max_length,
            manifest=manifest,
            model_path=path / ONNX_MODEL_FILE,
            io_binding=io_binding,
        )
    from gamjeong.modeling import load_trained_model  # transformers and torch: the training install only

    model, tokenizer = load_trained_model(path)
    if intra_op_threads:
        import torch

        torch.set_num_threads(intra_op_threads)
    return TorchPredictor(model, tokenizer, dtype=torch_dtype, device=device, max_length=max_length)
