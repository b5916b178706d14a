"""gamjeong.api: the gRPC API as Python code, generated from protos/ (the API reference) and shared by the server
(gamjeong.server) and the clients (gamjeong.clients), neither of which imports the other. `v1/` holds the stubs of
proto package gamjeong.v1 (gamjeong's own API), `inference/` those of the Open Inference Protocol (KServe v2) that the
server also speaks; `make protos` regenerates both (gamjeong.api.codegen)."""
