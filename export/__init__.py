"""gamjeong.export: trained model directory -> optimised, quantised ONNX directory with a parity gate.

`gamjeong export --model DIR --output DIR` (or `export_model(ExportConfig(...))`) runs every step through Hugging
Face Optimum: `main_export` (text-classification, dynamic batch/sequence axes), `ORTOptimizer` with
`AutoOptimizationConfig` O1..O4, `ORTQuantizer` with the `AutoQuantizationConfig` preset of the target CPU.

Decisions worth knowing:
- `--quantize` defaults to int8 for CPU targets and fp16 for `--target cuda`. int8 is dynamic unless
  `--calibration-data` is given; static int8 (QDQ, min-max calibration) quantises MatMul and Gather only, because
  Optimum's full static operator list fails on ONNX Runtime's fused transformer ops after O2/O3.
- fp16 is Optimum's fp16 conversion (inputs/outputs stay fp32) and is meant for CUDA GPUs. It may be exported on a
  machine without a GPU: the parity gate then runs the fp16 model on the CPU execution provider (slower, same maths).
  `--optimize O4` (fp16 plus GPU-only fusions) is refused without CUDA.
- The parity gate compares PyTorch and ONNX through the same `gamjeong.predictor` interface on `--parity-data`, the
  trained directory's splits/validation.csv, or the built-in sample set; it fails below 99.5 % argmax agreement
  (fp32/fp16) or 98 % (int8) unless `--force`, which publishes and records `"forced": true` in manifest.json.
  A model with random weights has near-uniform probabilities, so its int8 argmax can flip: benchmarks of random
  real-size models pass `force=True` (or `parity_threshold=0`).
- Everything is written to a temporary directory next to the output and renamed into place at the end; any error
  (a full disk included) removes it, so an output directory either is complete or does not exist.
- manifest.json lists every file's sha256 and size; `gamjeong.artifacts.verify_manifest` (called by `load_predictor`
  and the server) refuses a directory that no longer matches it.
"""
