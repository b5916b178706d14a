"""gamjeong.api: the gRPC API as Python code, generated from protos/ (the API reference) and shared by the server
(gamjeong.server) and the clients (gamjeong.clients), neither of which imports the other. `v1/` holds the stubs of
proto package gamjeong.v1; `make protos` regenerates them (gamjeong.api.codegen)."""
