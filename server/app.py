"""The server's life cycle: listen, load and warm up the model, serve, and shut down gracefully.

Health goes through NOT_SERVING (listening, model loading) -> SERVING (model loaded and warmed up) -> NOT_SERVING
(shutting down: new calls refused, in-flight calls get `grace_s` to finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gamjeong.choices import EventLoop
from gamjeong.errors import GamjeongError
from gamjeong.predictor import Predictor, load_predictor
from gamjeong.server.auth import BearerTokenInterceptor
from gamjeong.server.batcher import DynamicBatcher, instance_executors
from gamjeong.server.cache import ResultCache
from gamjeong.server.grouping import CallCost, measure_predictor_cost
from gamjeong.server.layout import plan_layout
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.oip import SERVICE_NAME as OIP_SERVICE_NAME
from gamjeong.server.oip import add_oip_to_server, reflection_pool
from gamjeong.server.service import SERVICE_NAME, EmotionClassifierServicer, add_to_server, describe_model
from gamjeong.server.settings import ServerSettings

if TYPE_CHECKING:
    from gamjeong.server.http import HttpServer

log = logging.getLogger(__name__)

# Time kept from the grace period for what follows the gRPC server's own stop (batcher, metrics, thread pools).
_STOP_MARGIN_S = 0.2
# Warm-up inputs: a short message and one that fills the model's whole input length.
_WARMUP_TEXTS = ("오늘 정말 행복해요", "가나다라마바사 " * 400)


def default_predictor_factory(settings: ServerSettings, threads: int | None = None) -> Callable[[], Predictor]:
    """Loads the first model instance, with `threads` intra-op threads (the layout's, server/layout.py)."""

    def load() -> Predictor:
        return load_predictor(
            settings.model,
            backend=settings.backend,
            device=settings.device,
            intra_op_threads=threads,
            max_length=settings.max_length,
            intra_op_spinning=settings.intra_op_spinning,
        )

    return load


class GamjeongServer:
    """One grpc.aio server with the classifier, health, reflection and a Prometheus endpoint."""

    def __init__(self, settings: ServerSettings, predictor_factory: Callable[[], Predictor] | None = None) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        # A given factory (tests, embedding) makes its own predictors: the automatic layout is for the default one.
        self.layout = plan_layout(settings, onnx_on_cpu=None if predictor_factory is None else False)
        self._predictor_factory = predictor_factory or default_predictor_factory(settings, self.layout.threads)
        self._model_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gamjeong-model")
        # Instances 2..N (--instances): each its own session and its own thread; instance 1 uses _model_executor.
        self._instance_executors = instance_executors(self.layout.instances - 1)
        self._solo_executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="gamjeong-solo") if self.layout.solo else None
        )
        # One thread: a fast tokenizer instance must not be used from two threads at once (tokenizers raises
        # "Already borrowed"); it is fast enough, and the model thread is where the time goes.
        self._tokenizer_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gamjeong-tokenizer")
        self.servicer = EmotionClassifierServicer(settings, self.metrics, self._tokenizer_executor)
        self.health = health.aio.HealthServicer()
        self.batcher: DynamicBatcher | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping = False
        self._hurry = asyncio.Event()  # a second signal: skip what is left of the drain and the grace period
        self.http: HttpServer | None = None  # HTTP/JSON + WebSocket beside gRPC (--http-port), same servicer
        self.http_port: int | None = None

    # --- start-up ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen (health NOT_SERVING), load and warm up the model, then report SERVING."""
        await self.listen()
        await self.load_model()

    async def listen(self) -> None:
        settings = self.settings
        interceptors = [BearerTokenInterceptor(settings.auth_token, self.metrics)] if settings.auth_token else []
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
                *self._connection_age_options(),
            ],
        )
        add_to_server(self.servicer, server)  # its deserializers turn malformed bytes into INVALID_ARGUMENT
        add_oip_to_server(self.servicer, server, draining=lambda: self._stopping)  # KServe v2, the same port
        # The health servicer starts with "" SERVING; nothing is served before the model is warm.
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        names = (SERVICE_NAME, OIP_SERVICE_NAME, health_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server, pool=reflection_pool(names))
        address = f"{settings.host}:{settings.port}"
        try:
            if settings.tls_enabled:
                cert, key, client_ca = settings.read_tls_files()
                credentials = grpc.ssl_server_credentials(
                    [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
                )
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise GamjeongError(
                f"Cannot listen on {address} ({exc}); is the port taken? Choose another --port."
            ) from exc
        if not self.port:
            raise GamjeongError(f"Cannot listen on {address}; is the port taken? Choose another --port.")
        await server.start()
        self._server = server
        if settings.metrics_port >= 0:
            try:
                self.metrics_port = self.metrics.serve_http(
                    settings.metrics_address, settings.metrics_port, token=settings.auth_token
                )
            except OSError as exc:
                await server.stop(0)
                raise GamjeongError(
                    f"Cannot serve metrics on port {settings.metrics_port} ({exc.strerror}); "
                    "choose another --metrics-port or -1 to turn metrics off."
                ) from exc
        if settings.http_port is not None:
            try:
                await self._start_http()
            except GamjeongError:
                await server.stop(0)
                self.metrics.stop_http()
                raise
        log.info(
            "listening",
            extra={
                "address": address,
                "port": self.port,
                "tls": settings.tls_enabled,
                "mutual_tls": settings.tls_client_ca is not None,
                "auth": bool(settings.auth_token),
                "metrics_port": self.metrics_port,
            },
        )

    def _connection_age_options(self) -> list[tuple[str, int]]:
        if self.settings.max_connection_age_s is None:
            return []
        return [
            ("grpc.max_connection_age_ms", int(self.settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(self.settings.max_connection_age_grace_s * 1000)),
        ]

    async def _start_http(self) -> None:
        from gamjeong.server.http import HttpServer  # FastAPI and uvicorn are imported only when HTTP is on

        self.http = HttpServer(self.settings, self.servicer, self.metrics, draining=lambda: self._stopping)
        await self.http.start()
        self.http_port = self.http.port

    async def load_model(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        # The first instance loads the model and its tokenizer; the others (and the solo session) are more sessions
        # of it, each opened and warmed up in its own thread, at the same time.
        predictor = await loop.run_in_executor(self._model_executor, self._predictor_factory)
        predictors = [
            predictor,
            *await asyncio.gather(
                *(
                    loop.run_in_executor(e, self._another, predictor, self.layout.threads)
                    for e in self._instance_executors
                )
            ),
        ]
        solo = None
        if self._solo_executor is not None:
            solo = await loop.run_in_executor(
                self._solo_executor, predictor.another_session, None, self.settings.intra_op_spinning
            )
        executors = [self._model_executor, *self._instance_executors]
        loaded = time.perf_counter()
        warm = [*zip(executors, predictors, strict=True), *([(self._solo_executor, solo)] if solo else [])]
        await asyncio.gather(*(loop.run_in_executor(e, self._warm_up, p) for e, p in warm))
        call_cost = None
        if self.settings.grouping == "cost":
            # Every instance at once, as they will run when serving (and as they warmed up): the cores they share
            # are part of what a call costs. The mean of their lines is the batcher's one cost line.
            lines = await asyncio.gather(
                *(loop.run_in_executor(e, self._call_cost, p) for e, p in zip(executors, predictors, strict=True))
            )
            call_cost = CallCost(
                sum(c.per_call_s for c in lines) / len(lines), sum(c.per_token_s for c in lines) / len(lines)
            )
            self.metrics.call_cost.labels(part="call").set(call_cost.per_call_s)
            self.metrics.call_cost.labels(part="token").set(call_cost.per_token_s)
        batcher = DynamicBatcher(
            predictor,
            max_batch_size=self.settings.max_batch_size,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue_size=self.settings.max_queue_size,
            executor=self._model_executor,
            metrics=self.metrics,
            more_instances=list(zip(predictors[1:], self._instance_executors, strict=True)),
            grouping=self.settings.grouping,
            call_cost=call_cost,
            sort_window=self.settings.sort_window,
            solo=None if solo is None or self._solo_executor is None else (solo, self._solo_executor),
        )
        batcher.start()
        self.batcher = batcher
        self.metrics.model_instances.set(len(predictors))
        model_info = describe_model(Path(self.settings.model), predictor, self.settings)
        cache = (
            ResultCache(self.settings.cache_size, predictor.tokenizer, predictor.max_length, self.metrics)
            if self.settings.cache_size > 0
            else None
        )
        self.servicer.attach(predictor, batcher, model_info, cache)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "model ready",
            extra={
                "model": str(self.settings.model),
                "backend": predictor.backend,
                "execution_provider": model_info.execution_provider,
                "max_input_length": predictor.max_length,
                "instances": len(predictors),
                "threads_per_instance": self.layout.threads,
                "solo_session": solo is not None,
                "cache_size": self.settings.cache_size,
                "load_s": round(loaded - started, 3),
                "warmup_s": round(time.perf_counter() - loaded, 3),
                "grouping": batcher.grouping,
                "call_cost_ms": None if call_cost is None else round(call_cost.per_call_s * 1e3, 3),
                "token_cost_us": None if call_cost is None else round(call_cost.per_token_s * 1e6, 3),
            },
        )

    def _another(self, first: Predictor, threads: int | None) -> Predictor:
        """One more instance: another session of the first one's model (sharing its tokenizer), or, where its
        backend has none (PyTorch, a test's predictor), what the factory makes."""
        return first.another_session(threads, self.settings.intra_op_spinning) or self._predictor_factory()

    def _call_cost(self, predictor: Predictor) -> CallCost:
        """The cost line of --grouping cost: given by --call-cost-ms/--token-cost-us, else timed on this model."""
        if self.settings.call_cost_ms is not None and self.settings.token_cost_us is not None:
            return CallCost(self.settings.call_cost_ms / 1e3, self.settings.token_cost_us / 1e6)
        return measure_predictor_cost(predictor)

    @staticmethod
    def _warm_up(predictor: Predictor) -> None:
        """One model call per warm-up text, so the first real call does not pay for lazy initialisation."""
        for encoded in predictor.encode(list(_WARMUP_TEXTS)):
            predictor.predict_encoded([encoded])

    # --- shut-down --------------------------------------------------------------------------------------------
    async def stop(self, grace_s: float | None = None, drain_s: float | None = None) -> None:
        """Drain, then stop, all within `grace_s` of the call.

        1. Drain (`drain_s`, at most the grace period): health says NOT_SERVING to every new probe, and everything
           is still served, so load balancers and readiness probes see the change and move traffic away first.
        2. New calls are refused (the listener closes); in-flight calls get what is left of the grace period.
        3. The batcher, the metrics endpoint and the thread pools stop; the process can exit within the grace period.
        """
        if self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        grace = self.settings.grace_s if grace_s is None else grace_s
        deadline = loop.time() + grace
        drain = min(self.settings.drain_s if drain_s is None else drain_s, grace)
        if self.batcher is None:
            drain = 0.0  # never SERVING: no load balancer sends traffic here, so there is nothing to move away
        log.info("shutting down", extra={"grace_s": grace, "drain_s": drain})
        await self.health.enter_graceful_shutdown()  # NOT_SERVING for "" and every service, for good
        if drain > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), drain)
        # What is left, less a margin for the steps after the listener is closed (measured: well under 0.1 s).
        remaining = 0.0 if self._hurry.is_set() else max(0.0, deadline - loop.time() - _STOP_MARGIN_S)
        log.info("refusing new calls", extra={"grace_left_s": round(remaining, 3)})
        stopping = [self._server.stop(remaining)] if self._server is not None else []
        if self.http is not None:
            stopping.append(self.http.stop(remaining))  # open HTTP requests and WebSockets get the same grace period
        await asyncio.gather(*stopping)  # the batcher keeps running: in-flight calls still need the model
        if self.batcher is not None:
            await self.batcher.stop()
        self.metrics.stop_http()
        self._model_executor.shutdown(wait=False, cancel_futures=True)
        for executor in [*self._instance_executors, *([self._solo_executor] if self._solo_executor else [])]:
            executor.shutdown(wait=False, cancel_futures=True)
        self._tokenizer_executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully (a second signal skips the grace period)."""
        loop = asyncio.get_running_loop()
        signalled = asyncio.Event()
        signals_seen = 0
        background: set[asyncio.Future[None]] = set()

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            if signals_seen > 1:
                self._hurry.set()
                if self._server is not None:
                    background.add(asyncio.ensure_future(self._server.stop(0)))
            signalled.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await self.listen()
            load = asyncio.ensure_future(self.load_model())
            await asyncio.wait({load, asyncio.ensure_future(signalled.wait())}, return_when=asyncio.FIRST_COMPLETED)
            if load.done():
                load.result()  # a model that fails to load ends the server with its error
                await signalled.wait()
            else:
                load.cancel()
        finally:
            await self.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


def run_event_loop(main: Coroutine[Any, Any, None], choice: EventLoop | str = EventLoop.auto) -> None:
    """Run the server's main coroutine to the end on the chosen event loop. uvloop runs the same asyncio code on a
    faster loop (libuv): about 0.2-0.4 ms less per call at one client here (docs/benchmarks.md); `auto` uses it where
    it is installed and falls back to asyncio's own loop."""
    choice = EventLoop(choice)
    if choice is not EventLoop.asyncio:
        try:
            import uvloop
        except ImportError:
            if choice is EventLoop.uvloop:
                main.close()
                raise GamjeongError("--event-loop uvloop needs the uvloop package: pip install uvloop.") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
