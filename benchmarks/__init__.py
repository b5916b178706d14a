"""gamjeong.benchmarks: PyTorch vs ONNX model benchmarks and end-to-end server benchmarks (`gamjeong bench`).

model_bench.py (the backend grid; backend_worker.py measures one backend), load.py (the closed-loop clients of bench server), random_models.py (the random-weight model and its exports when none is given),
server_bench.py (closed-loop load on a server), load_processes.py (the clients spread over processes; both sides' CPU),
gpu_monitor.py (NVML), echo_server.py (a server without a model), gpu_check.py (`bench gpu`, the whole GPU check),
server_process.py (a `gamjeong serve` subprocess and its metrics),
texts.py (real Korean inputs of exact token lengths), environment.py, report.py (results.json/md and charts), cli.py.
Everything runs through gamjeong.predictor and gamjeong.clients, the same code the server and its users run.
"""
