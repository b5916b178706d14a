"""`gamjeong classify`: the emotion of each text with all seven probabilities.

`Classification` (gamjeong.classification, re-exported here) is the one result shape the command prints, whatever
produced it: a local model directory through `gamjeong.predictor`, or a running server (gamjeong.clients.cli).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gamjeong.classification import Classification
from gamjeong.errors import GamjeongError
from gamjeong.labels import EMOTIONS

__all__ = ["Classification", "ClassifyConfig", "classifications_json", "classify_with_model", "render_classifications"]


class ClassifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1)
    model: Path | None = None
    batch_size: int = Field(32, ge=1)
    backend: Literal["auto", "pytorch", "onnx"] = "auto"
    device: str = "auto"


def classify_with_model(config: ClassifyConfig) -> list[Classification]:
    """Classify with a trained or exported model directory."""
    from gamjeong.predictor import load_predictor

    if config.model is None:
        raise GamjeongError("Say which model to use with --model DIR (a trained or exported model directory).")
    texts = [t.strip() for t in config.texts]
    if not all(texts):
        raise GamjeongError("Every text to classify must hold something other than whitespace.")
    predictor = load_predictor(config.model, backend=config.backend, device=config.device)
    probs = predictor.predict_proba(texts, batch_size=config.batch_size)
    return [Classification.from_probabilities(text, row) for text, row in zip(texts, probs, strict=True)]


def classifications_json(results: Sequence[Classification]) -> str:
    return json.dumps([asdict(r) for r in results], ensure_ascii=False, indent=2)


def render_classifications(results: Sequence[Classification], console) -> None:
    """Per text: its emotion (English and Korean) and below it all seven probabilities, the winner in bold."""
    from rich.text import Text

    for result in results:
        # Text objects: user text such as GoEmotions' "[NAME]" must not be read as rich markup.
        headline = Text(result.text)
        headline.append(f"  →  {result.label} {result.label_ko} ({result.score:.3f})", style="bold")
        console.print(headline)
        probabilities = Text("   ")
        for emotion in EMOTIONS:
            share = result.probabilities[emotion.name]
            style = "bold" if emotion.name == result.label else ""
            probabilities.append(f"{emotion.name} {emotion.name_ko} {share:.3f}", style=style)
            probabilities.append("  ")
        console.print(probabilities)
