"""The serving install (issue 14): `gamjeong serve` and `gamjeong classify --model EXPORTED_DIR` run without torch,
transformers, Optimum or pandas, and tokenise exactly as the transformers fast tokenizer did.

The processes below run with an import hook that refuses those packages (and writes down every attempt), which is
what a venv with only the base install looks like to the code, without building one in CI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MBERT_TOKENIZER_DIR

# What only the train/export extras install (pyproject.toml).
TRAINING_ONLY = ("torch", "transformers", "optimum", "pandas", "datasets", "sklearn", "matplotlib", "accelerate")
# The XLM-R SentencePiece tokenizer of multilingual-e5-small, where `gamjeong base-models` built it on this machine.
E5_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gamjeong/base-models/multilingual-e5-small"

_BLOCKER = """
import importlib.abc, sys
BLOCKED, LOG = {blocked!r}, {log!r}
class _TrainingOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            with open(LOG, "a") as f:
                f.write(name + "\\n")
            raise ImportError(f"{{name}} is not part of the serving install")
        return None
sys.meta_path.insert(0, _TrainingOnly())
sys.argv = ["gamjeong", *{argv!r}]
from gamjeong.cli import main
main()
"""


def _without_training_packages(argv: list[str], log: Path) -> list[str]:
    return [sys.executable, "-c", _BLOCKER.format(blocked=TRAINING_ONLY, log=str(log), argv=argv)]


def _texts() -> list[str]:
    from gamjeong.samples import sample_texts

    # The sample set, plus the cases where tokenizers differ first: truncation, odd spacing, accents, emoji, jamo.
    return [*sample_texts(), "가나다라마바사 " * 300, "  hello   WORLD  Café ", "ㅋㅋㅋ 😂😂", "ᄒᆞᆫ글", "[SEP] 안녕"]


def _tokenizer_dirs(tiny_int8_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    dirs = [tiny_int8_dir]  # the tiny models' WordPiece, as exported
    if MBERT_TOKENIZER_DIR.is_dir():  # the real mBERT WordPiece (vocab.txt), saved as transformers saves it on export
        from gamjeong.modeling import load_tokenizer

        saved = tmp_path_factory.mktemp("mbert-tokenizer")
        load_tokenizer(MBERT_TOKENIZER_DIR).save_pretrained(str(saved))
        dirs.append(saved)
    dirs.append(_local_xlmr_tokenizer(tmp_path_factory.mktemp("xlmr-tokenizer")))
    if E5_DIR.is_dir():  # the real one, where it was built on this machine
        dirs.append(E5_DIR)
    return dirs


def _local_xlmr_tokenizer(directory: Path) -> Path:
    """An XLM-R-style tokenizer built here (SentencePiece Unigram, NFKC, Metaspace, <s> ... </s>, pad id 1) and saved
    the way transformers saves XLMRobertaTokenizerFast, so CI checks the SentencePiece path without any download."""
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import XLMRobertaTokenizerFast

    from gamjeong.samples import sample_texts

    trainer = SentencePieceUnigramTokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer.train_from_iterator(
        list(sample_texts()), vocab_size=2000, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    tokenizer = trainer._tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    XLMRobertaTokenizerFast(tokenizer_object=tokenizer, model_max_length=64).save_pretrained(str(directory))
    return directory


def test_the_serving_tokenizer_gives_the_ids_transformers_gave(tiny_int8_dir: Path, tmp_path_factory) -> None:
    from gamjeong.modeling import load_tokenizer
    from gamjeong.predictor import Predictor
    from gamjeong.tokenization import load_serving_tokenizer

    class Encoder(Predictor):
        def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
            raise NotImplementedError

    texts = _texts()
    checked: list[str] = []
    for directory in _tokenizer_dirs(tiny_int8_dir, tmp_path_factory):
        before, after = load_tokenizer(directory), load_serving_tokenizer(directory)
        for max_length in (None, 8):
            old, new = Encoder(before, max_length), Encoder(after, max_length)
            assert (new.max_length, new.pad_token_id) == (old.max_length, old.pad_token_id), directory
            old_encoded, new_encoded = old.encode(texts), new.encode(texts)
            assert new_encoded == old_encoded, directory  # ids and truncation flags, text by text
            assert any(e.truncated for e in new_encoded) and not all(e.truncated for e in new_encoded)
            # ...and so the padded batch (input ids and attention mask) the model sees
            for a, b in zip(old.pad(old_encoded[:16]), new.pad(new_encoded[:16]), strict=True):
                np.testing.assert_array_equal(a, b)
        assert after.unk_token_id == before.unk_token_id
        checked.append(type(before).__name__)
    assert "XLMRobertaTokenizerFast" in checked and "PreTrainedTokenizerFast" in checked, checked


def test_classify_on_an_exported_dir_never_imports_torch_or_transformers(tiny_int8_dir: Path, tmp_path) -> None:
    from gamjeong.modeling import load_tokenizer
    from gamjeong.predictor import load_predictor

    texts = ["오늘 정말 행복해요", "헐", "가나다라마바사 " * 100]
    log = tmp_path / "imports.txt"
    command = _without_training_packages(["classify", "--json", "--model", str(tiny_int8_dir), *texts], log)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not log.exists(), f"the serving path imported {log.read_text().split()}"
    served = np.array([[r["probabilities"][k] for k in sorted(r["probabilities"])] for r in json.loads(result.stdout)])
    # Today's path: the same ONNX model fed by the transformers tokenizer.
    predictor = load_predictor(tiny_int8_dir)
    predictor.tokenizer = load_tokenizer(tiny_int8_dir)
    probabilities = predictor.predict_proba(texts)
    names = sorted(json.loads(result.stdout)[0]["probabilities"])
    from gamjeong.labels import LABEL_NAMES

    expected = probabilities[:, [LABEL_NAMES.index(n) for n in names]]
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def test_serve_runs_without_torch_or_transformers(tiny_int8_dir: Path, tmp_path) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from gamjeong.clients import EmotionClient

    log = tmp_path / "imports.txt"
    port = _free_port()
    argv = ["serve", "--model", str(tiny_int8_dir), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--metrics-port", "-1", "--http-port", "0", "--drain-s", "0", "--cache-size", "16", "--instances", "2"]
    process = subprocess.Popen(_without_training_packages(argv, log), stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "the server never reported SERVING"
                time.sleep(0.05)
        with EmotionClient(f"127.0.0.1:{port}") as client:
            (result,) = client.classify(["오늘 정말 행복해요"])
            assert abs(sum(result.scores.values()) - 1) < 1e-4
    finally:
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 0, stderr
    assert not log.exists(), f"serving imported {log.read_text().split()}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
