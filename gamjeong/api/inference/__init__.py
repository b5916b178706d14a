"""Generated from protos/inference (the Open Inference Protocol, KServe v2) by `make protos` (gamjeong.api.codegen);
do not edit the *_pb2* files. Its messages live in a descriptor pool of their own, so this package and tritonclient
(which registers the same `inference.*` names in protobuf's default pool) can be imported in one process."""
