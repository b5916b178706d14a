"""Generated from protos/gamjeong/v1 by `make protos` (gamjeong.api.codegen); do not edit the *_pb2* files."""
