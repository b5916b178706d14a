"""`gamjeong serve --workers N`: N front-end processes and one engine process, under one supervisor.

One Python process cannot keep a GPU busy: its event loop is full (gRPC, protobuf, tokenising, HTTP) long before the
model is (issue 20: 1.8 of 16 cores, the GPU 17% busy). Separate model processes would not help either: kernels of
different processes do not overlap on one GPU, and each would get small batches. So, like Triton (many front-end
threads, one dynamic batcher per model instance):

    supervisor (this module)  -- reserves the ports, serves /metrics for all, restarts a process that dies,
      |                          turns SIGTERM into a drain of every front end, then stops the engine
      +-- engine process       -- the model instances and the one DynamicBatcher (server/engine.py), behind a Unix
      |                          socket (server/engine_link.py); starts listening once the model is warm
      +-- front end 1..N       -- a whole GamjeongServer (gRPC, HTTP, auth, limits, cache, health) that tokenises
                                 and hands the ids to the engine; all N listen on the same ports (SO_REUSEPORT)

Prometheus' multiprocess mode (each process writes its metrics to files in one directory, the supervisor's
/metrics adds them up) makes one endpoint cover every process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for_processes
from pathlib import Path
from typing import Any

from gamjeong.errors import GamjeongError
from gamjeong.server.layout import runs_onnx_on_cpu, usable_cpus
from gamjeong.server.settings import ServerSettings

log = logging.getLogger(__name__)

# Front ends picked by `--workers 0` on a GPU: enough request handling to feed it, a core or more left to the engine.
MAX_AUTO_WORKERS = 8
# A process that keeps dying is not restarted for ever: more than this many exits in a minute stops the server.
_MAX_RESTARTS_PER_MINUTE = 5
_STOP_ENGINE_S = 5.0


def serves_on_cuda(settings: ServerSettings) -> bool:
    """Whether the model will run on a GPU (the case `--workers 0` gives several front ends)."""
    if settings.device == "cuda":
        return True
    if settings.device == "cpu":
        return False
    return not runs_onnx_on_cpu(settings) and settings.backend != "pytorch" and _onnx_cuda_available()


def _onnx_cuda_available() -> bool:
    from gamjeong.onnx_runtime import cuda_available

    return cuda_available()


def resolve_workers(settings: ServerSettings, cpus: int | None = None) -> int:
    """`--workers`, or for 0: half the CPUs (2 to 8) on a GPU, 1 on a CPU (the cores are the model's there)."""
    if settings.workers:
        return settings.workers
    if not serves_on_cuda(settings):
        return 1
    return max(2, min(MAX_AUTO_WORKERS, (cpus or usable_cpus()) // 2))


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket: port 0 becomes a real port every front end then listens on, and the
    port stays ours while front ends restart (a server without SO_REUSEPORT cannot take it meanwhile)."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and address in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as gRPC's [::] listener: IPv4 too
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise GamjeongError(
            f"Cannot listen on {host}:{port} ({exc.strerror}); is the port taken? Choose another port."
        ) from exc
    return sock, int(sock.getsockname()[1])


# --- the child processes ----------------------------------------------------------------------------------------
def _child_setup(parent: int) -> None:
    """A child ignores the terminal's Ctrl-C (the supervisor turns it into an ordered stop) and ends itself if the
    supervisor dies without stopping it (SIGKILL, a crash)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # N front ends tokenising at once: one tokenizer thread each, not a pool of one thread per core in every process.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gamjeong-parent-watch", daemon=True).start()


def _run_engine(settings: ServerSettings, socket_path: str, parent: int, events: Connection) -> None:
    from gamjeong.server.app import run_event_loop
    from gamjeong.server.logs import structured_logging

    _child_setup(parent)
    code = 0
    with structured_logging(settings.log_format, settings.log_level):
        try:
            run_event_loop(_engine_main(settings, socket_path, events), settings.event_loop)
        except GamjeongError as exc:
            events.send(("error", str(exc)))
            code = 2
        except Exception:
            log.exception("the engine process failed")
            code = 1
    os._exit(code)


async def _engine_main(settings: ServerSettings, socket_path: str, events: Connection) -> None:
    from gamjeong.server.engine import Attachment, InferenceEngine
    from gamjeong.server.engine_link import EngineServer, serve_engine
    from gamjeong.server.metrics import ServerMetrics
    from gamjeong.server.reload import ModelReloader
    from gamjeong.server.tracing import start_tracing

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tracing = start_tracing(settings, role="engine")  # the queue and model spans are written here
    engine = InferenceEngine(settings, ServerMetrics(), tracing=tracing)
    load = asyncio.ensure_future(engine.load())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not load.done():
        load.cancel()
        await engine.stop()
        return
    attachment = load.result()
    Path(socket_path).unlink(missing_ok=True)  # the socket of an engine process that died
    model_dir = Path(settings.model).expanduser().resolve()
    server: EngineServer | None = None

    def swapped(new: Attachment, directory: Path) -> None:
        assert server is not None
        server.swap(new, directory)  # every front end is told, and follows

    reloader = ModelReloader(settings, engine.metrics, engine, swapped)
    server = await serve_engine(socket_path, attachment, model_dir, reloader.reload)
    loop.add_signal_handler(signal.SIGHUP, reloader.reload_in_background, "SIGHUP")
    reloader.start_watching()
    events.send(("ready", ""))
    await stopped
    # Stopped first (the supervisor's order), or together with the front ends (a service manager that signals every
    # process of the group): either way the model serves until the last front end has drained and gone.
    await server.wait_for_front_ends(settings.grace_s + 1.0)
    server.close()
    await reloader.stop()
    await reloader.engine.stop()
    if tracing is not None:
        await loop.run_in_executor(None, tracing.close().join, 2.0)
    log.info("engine stopped")


def _run_front_end(settings: ServerSettings, socket_path: str, parent: int, events: Connection) -> None:
    from gamjeong.server.app import GamjeongServer, run_event_loop
    from gamjeong.server.logs import structured_logging

    _child_setup(parent)
    code = 0
    with structured_logging(settings.log_format, settings.log_level):
        server = GamjeongServer(settings, engine_socket=socket_path, shared_port=True)
        try:
            run_event_loop(
                server.serve_until_signalled(signals=(signal.SIGTERM,), on_ready=lambda: events.send(("ready", ""))),
                settings.event_loop,
            )
        except GamjeongError as exc:
            events.send(("error", str(exc)))
            code = 2
        except Exception:
            log.exception("a front-end process failed")
            code = 1
    os._exit(code)


# --- the supervisor ---------------------------------------------------------------------------------------------
@dataclass
class _Child:
    name: str
    target: Callable[..., None]
    args: tuple[Any, ...]
    process: Any = None
    events: Connection | None = None  # what the child says: ("ready", "") or ("error", sentence)
    ready: bool = False
    exits: list[float] = field(default_factory=list)


class Supervisor:
    """Starts the engine and the front ends, restarts what dies, and stops them in order."""

    def __init__(self, settings: ServerSettings, workers: int, runtime_dir: Path) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")  # no fork: the parent holds threads and sockets
        self._signals = 0
        self._metrics_server: Any = None
        self._reserved: list[socket.socket] = []
        self.metrics_dir = runtime_dir / "metrics"
        self.metrics_dir.mkdir()
        # Set before any child starts: each child's prometheus_client reads it when imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        socket_path = str(runtime_dir / "engine.sock")
        grpc_socket, self.port = reserve_port(settings.host, settings.port)
        self._reserved.append(grpc_socket)
        self.http_port = None
        if settings.http_port is not None:
            http_socket, self.http_port = reserve_port(settings.host, settings.http_port)
            self._reserved.append(http_socket)
        parent = os.getpid()
        engine_settings = settings.model_copy(update={"metrics_port": -1, "http_port": None})
        front_settings = settings.model_copy(
            update={"port": self.port, "http_port": self.http_port, "metrics_port": -1}
        )
        self.engine = _Child("engine", _run_engine, (engine_settings, socket_path, parent))
        self.front_ends = [
            _Child(f"front-end-{i}", _run_front_end, (front_settings, socket_path, parent))
            for i in range(1, workers + 1)
        ]

    @property
    def children(self) -> list[_Child]:
        return [self.engine, *self.front_ends]

    def pids(self) -> list[int]:
        return [os.getpid(), *(c.process.pid for c in self.children if c.process is not None and c.process.pid)]

    def _start(self, child: _Child) -> None:
        child.ready = False
        if child.events is not None:
            child.events.close()
        # A pipe per child (no multiprocessing.Queue: its semaphores and feeder thread do not suit os._exit).
        child.events, writer = self._context.Pipe(duplex=False)
        child.process = self._context.Process(
            target=child.target, args=(*child.args, writer), name=f"gamjeong-{child.name}"
        )
        child.process.start()
        writer.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        if self._signals > 1:  # a second signal: the front ends skip what is left of their grace period
            self._terminate(self.front_ends)

    def _on_reload_signal(self, signum: int, frame: Any) -> None:
        """SIGHUP: the engine reloads the model, and tells every front end."""
        log.info("signal received", extra={"signal": "SIGHUP"})
        if self.engine.process is not None and self.engine.process.is_alive():
            os.kill(self.engine.process.pid, signal.SIGHUP)

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        self._serve_metrics()
        log.info(
            "listening",
            extra={"port": self.port, "http_port": self.http_port, "workers": len(self.front_ends)},
        )
        try:
            self._start(self.engine)
            for child in self.front_ends:
                self._start(child)
            all_ready = False
            while not self._signals:
                self._read_events()
                if not all_ready and all(c.ready for c in self.children):
                    all_ready = True
                    log.info("model ready", extra={"port": self.port, "workers": len(self.front_ends)})
                self._restart_the_dead()
                wait_for_processes(
                    [c.process.sentinel for c in self.children] + [c.events for c in self.children if c.events],
                    timeout=0.2,
                )
        finally:
            self._stop()
        return 0

    def _read_events(self) -> None:
        for child in self.children:
            while child.events is not None and child.events.poll():
                try:
                    kind, message = child.events.recv()
                except EOFError:  # the child is gone; _restart_the_dead sees to it
                    child.events.close()
                    child.events = None
                    break
                if kind == "ready":
                    child.ready = True
                    if child.exits:
                        log.info("worker serving again", extra={"worker": child.name})
                elif kind == "error":
                    raise GamjeongError(message)  # a model or a port that cannot work: restarting would not help

    def _restart_the_dead(self) -> None:
        from prometheus_client import multiprocess

        for child in self.children:
            process = child.process
            if process.is_alive():
                continue
            self._read_events()  # its last words (an error) first
            multiprocess.mark_process_dead(process.pid, str(self.metrics_dir))
            now = time.monotonic()
            child.exits = [t for t in child.exits if now - t < 60] + [now]
            if child is self.engine and not child.ready:
                raise GamjeongError(f"The engine process exited with code {process.exitcode} while loading the model.")
            if len(child.exits) > _MAX_RESTARTS_PER_MINUTE:
                raise GamjeongError(f"{child.name} exited {len(child.exits)} times in a minute; stopping the server.")
            log.warning("worker exited; restarting", extra={"worker": child.name, "exit_code": process.exitcode})
            self._start(child)

    def _serve_metrics(self) -> None:
        settings = self.settings
        if settings.metrics_port < 0:
            return
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        from gamjeong.server.metrics import ProcessTreeCollector, serve_registry

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))
        registry.register(ProcessTreeCollector(self.pids))
        try:
            self._metrics_server = serve_registry(
                registry, settings.metrics_address, settings.metrics_port, settings.auth_token
            )
        except OSError as exc:
            raise GamjeongError(
                f"Cannot serve metrics on port {settings.metrics_port} ({exc.strerror}); "
                "choose another --metrics-port or -1 to turn metrics off."
            ) from exc

    @staticmethod
    def _terminate(children: Iterable[_Child]) -> None:
        for child in children:
            if child.process is not None and child.process.is_alive():
                child.process.terminate()  # SIGTERM

    def _stop(self) -> None:
        """Drain every front end at once (each within --grace-s), then stop the engine they fed."""
        log.info("shutting down", extra={"grace_s": self.settings.grace_s, "drain_s": self.settings.drain_s})
        started = [c for c in self.children if c.process is not None]
        self._terminate(c for c in started if c is not self.engine)
        deadline = time.monotonic() + self.settings.grace_s + 1.0
        for child in started:
            if child is not self.engine:
                child.process.join(max(0.0, deadline - time.monotonic()))
                if child.process.is_alive():
                    child.process.kill()
        if self.engine.process is not None:
            self._terminate([self.engine])
            self.engine.process.join(_STOP_ENGINE_S)
            if self.engine.process.is_alive():
                self.engine.process.kill()
        for child in started:
            child.process.join(1.0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        for sock in self._reserved:
            sock.close()
        log.info("stopped")


def serve_with_workers(settings: ServerSettings, workers: int) -> int:
    """Run the supervisor of `workers` front ends and one engine until SIGTERM/SIGINT; returns the exit code."""
    runtime_dir = Path(tempfile.mkdtemp(prefix="gamjeong-serve-"))  # 0700: only this user reaches the socket
    try:
        return Supervisor(settings, workers, runtime_dir).run()
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(runtime_dir, ignore_errors=True)
