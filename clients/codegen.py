"""Moved to gamjeong.api.codegen, beside the stubs it writes (gamjeong/api/v1); `python -m gamjeong.clients.codegen`
still runs it."""

import sys

from gamjeong.api.codegen import GENERATED_SUFFIXES, PROTO_ROOT, STUBS_DIR, generate, main, proto_files, rewrite_imports

__all__ = ["GENERATED_SUFFIXES", "PROTO_ROOT", "STUBS_DIR", "generate", "main", "proto_files", "rewrite_imports"]

if __name__ == "__main__":
    sys.exit(main())
