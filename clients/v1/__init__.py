"""Generated from protos/gamjeong/v1 by `make protos`."""
