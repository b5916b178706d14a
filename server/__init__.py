"""gamjeong.server: the grpc.aio server that serves an exported directory."""
