"""gamjeong.export: trained model directory -> optimised, quantised ONNX directory with a parity gate."""
