"""gamjeong.server: the grpc.aio server that serves an exported directory.

    gamjeong serve --model runs/exported            # ONNX Runtime (CUDA provider when available), port 50051
    gamjeong serve --model runs/trained --backend pytorch
    GAMJEONG_AUTH_TOKEN=... gamjeong serve --model DIR --tls-cert cert.pem --tls-key key.pem

Modules: settings (the one ServerSettings object: flags and GAMJEONG_* variables), batcher (the dynamic batcher the
three classifying RPCs share), service (the EmotionClassifier servicer: validation, limits, status codes), auth
(bearer-token interceptor), metrics (Prometheus, on its own port), app (life cycle: listen -> load and warm up ->
SERVING -> graceful shutdown on SIGTERM/SIGINT), logs (JSON log lines), cli (`gamjeong serve`).
The API reference is protos/gamjeong/v1/emotion.proto; the stubs are gamjeong.api.v1 (the server does not import
gamjeong.clients, the Python clients).
"""
