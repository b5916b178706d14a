"""gamjeong.training: data loading, fine-tuning and evaluation. Writes the trained model directory."""
