"""gamjeong.benchmarks: PyTorch vs ONNX model benchmarks and end-to-end server benchmarks."""
