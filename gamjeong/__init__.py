"""gamjeong (감정): Korean emotion classification, from fine-tuning to a gRPC service."""

__version__ = "0.1.0"
