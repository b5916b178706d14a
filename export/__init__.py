"""gamjeong.export: trained model directory -> optimised, quantised ONNX directory with a parity gate.

`gamjeong export --model DIR --output DIR` (or `export_model(ExportConfig(...))`) runs every step through Hugging
Face Optimum: `main_export` (text-classification, dynamic batch/sequence axes), `ORTOptimizer` with
`AutoOptimizationConfig` O1..O4, `ORTQuantizer` with the `AutoQuantizationConfig` preset of the target CPU.

Decisions worth knowing:
- `--quantize` defaults to int8 for CPU targets and fp16 for `--target cuda`. int8 is dynamic per-channel unless
  `--calibration-data` is given; static int8 (QDQ, min-max calibration) quantises MatMul and Gather only, because
  Optimum's full static operator list fails on ONNX Runtime's fused transformer ops after O2/O3.
- fp16 is Optimum's fp16 conversion (inputs/outputs stay fp32) and is meant for CUDA GPUs; a cuda export defaults to
  `--optimize O4` (fp16 plus the fused Attention/SkipLayerNorm/FastGelu, which also remove most of the int64 shape
  arithmetic ONNX Runtime would run on the CPU between GPU kernels). It may be exported on a machine without a GPU:
  Optimum's fusions are graph rewrites, ONNX Runtime's CUDA-level pass runs when a CUDA session loads the model, and
  the parity gate runs the fp16 model on the CPU execution provider (slower, same maths).
- The parity gate (export/gate.py) compares PyTorch and ONNX through the same `gamjeong.predictor` interface on
  `--parity-data`, the trained directory's splits/validation.csv, or the built-in sample set. fp32/fp16 need 99.5 %
  argmax agreement; int8 is judged on what users care about: accuracy and macro-F1 within 1 point of PyTorch's (with
  labels) and 99 % agreement where PyTorch is confident (top-two margin >= 0.2). `--force` publishes a failed export
  and records `"forced": true` in manifest.json.
- int8 is searched for (export/search.py): per-channel first, then the most int8-sensitive encoder layers kept in
  fp32, until the gate passes or the candidate budget is spent; `--no-search` exports exactly the preset asked for.
- Everything is written to a temporary directory next to the output and renamed into place at the end; any error
  (a full disk included) removes it, so an output directory either is complete or does not exist.
- manifest.json lists every file's sha256 and size; `gamjeong.artifacts.verify_manifest` (called by `load_predictor`
  and the server) refuses a directory that no longer matches it.
"""
