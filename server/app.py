"""The server's life cycle: listen, load and warm up the model, serve, and shut down gracefully.

Health goes through NOT_SERVING (listening, model loading) -> SERVING (model loaded and warmed up) -> NOT_SERVING
(shutting down: new calls refused, in-flight calls get `grace_s` to finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gamjeong.api.v1 import emotion_pb2_grpc as pb_grpc
from gamjeong.choices import EventLoop
from gamjeong.errors import GamjeongError
from gamjeong.predictor import Predictor
from gamjeong.server.admin import ADMIN_SERVICE_NAME, ModelAdminServicer
from gamjeong.server.auth import BearerTokenInterceptor
from gamjeong.server.cache import ResultCache
from gamjeong.server.engine import Attachment, InferenceEngine, default_predictor_factory
from gamjeong.server.engine_link import EngineLink, EngineModel, TokenizingPredictor, connect_engine
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.oip import SERVICE_NAME as OIP_SERVICE_NAME
from gamjeong.server.oip import add_oip_to_server, reflection_pool
from gamjeong.server.reload import ModelReloader, ReloadFailedError, ReloadInProgressError, ReloadOutcome
from gamjeong.server.service import SERVICE_NAME, EmotionClassifierServicer, add_to_server
from gamjeong.server.settings import ServerSettings
from gamjeong.server.tracing import start_tracing

if TYPE_CHECKING:
    from gamjeong.server.batcher import DynamicBatcher
    from gamjeong.server.http import HttpServer
    from gamjeong.server.layout import InstanceLayout

log = logging.getLogger(__name__)

# Time kept from the grace period for what follows the gRPC server's own stop (batcher, metrics, thread pools).
_STOP_MARGIN_S = 0.2
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
__all__ = ["GamjeongServer", "default_predictor_factory", "run_event_loop"]


class GamjeongServer:
    """One grpc.aio server with the classifier, health, reflection and a Prometheus endpoint.

    It runs its texts on an InferenceEngine of its own (server/engine.py), or, as one front-end process of
    `gamjeong serve --workers N`, on the engine process listening at `engine_socket` (server/workers.py); then
    `shared_port` lets the N front ends listen on the same gRPC and HTTP ports (SO_REUSEPORT).
    """

    def __init__(
        self,
        settings: ServerSettings,
        predictor_factory: Callable[[], Predictor] | None = None,
        *,
        engine_socket: str | None = None,
        shared_port: bool = False,
    ) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.tracing = start_tracing(settings)  # None unless --otel or OTEL_* (server/tracing.py)
        self.engine = (
            None if engine_socket else InferenceEngine(settings, self.metrics, predictor_factory, self.tracing)
        )
        self._engine_socket = engine_socket
        self._shared_port = shared_port
        self._predictor_factory = predictor_factory
        self.reloader: ModelReloader | None = None  # the in-process engine's (a front end asks the engine process)
        self._link: EngineLink | None = None
        self._tokenizing: TokenizingPredictor | None = None
        self._tokenizer_dir: Path | None = None
        self._background: set[asyncio.Future[None]] = set()
        # One thread: a fast tokenizer instance must not be used from two threads at once (tokenizers raises
        # "Already borrowed"); it is fast enough, and the model thread is where the time goes.
        self._tokenizer_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gamjeong-tokenizer")
        self.servicer = EmotionClassifierServicer(settings, self.metrics, self._tokenizer_executor)
        self.servicer.tracing = self.tracing
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping = False
        self._hurry = asyncio.Event()  # a second signal: skip what is left of the drain and the grace period
        self.http: HttpServer | None = None  # HTTP/JSON + WebSocket beside gRPC (--http-port), same servicer
        self.http_port: int | None = None

    @property
    def batcher(self) -> DynamicBatcher | None:
        """The in-process engine's batcher (None before the model is loaded, and in a front-end process)."""
        return None if self.engine is None else self.engine.batcher

    @property
    def layout(self) -> InstanceLayout | None:
        return None if self.engine is None else self.engine.layout

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
                # A second server on the same port must fail, not share it; only front ends of one server share it.
                ("grpc.so_reuseport", 1 if self._shared_port else 0),
                *self._connection_age_options(),
            ],
        )
        add_to_server(self.servicer, server)  # its deserializers turn malformed bytes into INVALID_ARGUMENT
        pb_grpc.add_ModelAdminServicer_to_server(ModelAdminServicer(self.reload_model, self.metrics), server)
        add_oip_to_server(self.servicer, server, draining=lambda: self._stopping)  # KServe v2, the same port
        # The health servicer starts with "" SERVING; nothing is served before the model is warm (a front end of
        # --workers reaches the engine before it listens: it is SERVING from its first connection on).
        if self.servicer.batcher is None:
            for service in ("", SERVICE_NAME):
                await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        names = (SERVICE_NAME, ADMIN_SERVICE_NAME, OIP_SERVICE_NAME, health_name, reflection.SERVICE_NAME)
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

        self.http = HttpServer(
            self.settings,
            self.servicer,
            self.metrics,
            draining=lambda: self._stopping,
            reuse_port=self._shared_port,
        )
        await self.http.start()
        self.http_port = self.http.port

    async def load_model(self) -> None:
        """Load the model (or, in a front-end process, reach the engine process), then report SERVING."""
        if self.engine is not None:
            attachment = await self.engine.load()
            self.reloader = ModelReloader(
                self.settings, self.metrics, self.engine, self._swapped, self._predictor_factory
            )
            self.reloader.start_watching()
        else:
            attachment = await self._reach_engine()
        self._attach(attachment)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "model ready" if self.engine is not None else "front end ready",
            extra={
                "model": str(self.settings.model),
                "backend": attachment.model_info.backend,
                "execution_provider": attachment.model_info.execution_provider,
                "max_input_length": attachment.predictor.max_length,
                "engine": "in-process" if self.engine is not None else "engine process",
                "cache_size": self.settings.cache_size,
            },
        )

    def _attach(self, attachment: Attachment) -> None:
        predictor = attachment.predictor
        cache = (
            ResultCache(self.settings.cache_size, predictor.tokenizer, predictor.max_length, self.metrics)
            if self.settings.cache_size > 0
            else None
        )
        self.servicer.attach(predictor, attachment.queue, attachment.model_info, cache)
        self.metrics.set_model(attachment.model_info.model_version, attachment.model_info.exported_at)

    # --- a new model without downtime (server/reload.py) ------------------------------------------------------
    def _swapped(self, attachment: Attachment, model_dir: Path) -> None:
        """The reloader loaded a new model: new calls and batches go to it from now on."""
        assert self.reloader is not None
        self.engine = self.reloader.engine
        self._attach(attachment)

    async def reload_model(self, trigger: str = "admin") -> ReloadOutcome:
        """Load the model path again and swap to it (ModelAdmin.ReloadModel, SIGHUP); in a front-end process, the
        engine process does it and tells every front end."""
        if self.reloader is not None:
            return await self.reloader.reload(trigger)
        if self._link is None or not self._link.connected:
            raise ReloadFailedError("The model process is not reachable; retry shortly.")
        ok, changed, previous, message = await self._link.reload()
        if not ok:
            if message == "in progress":
                raise ReloadInProgressError
            raise ReloadFailedError(message)
        if changed:  # the engine announced the new model on this link before answering: it is attached already
            assert self.servicer.model_info is not None
        return ReloadOutcome(self.servicer.model_info, changed, previous)  # type: ignore[arg-type]

    # --- a front-end process (--workers): the model runs in the engine process -------------------------------
    async def _reach_engine(self) -> Attachment:
        """Connect to the engine process and take its model's description; tokenise with the model's tokenizer."""
        assert self._engine_socket is not None
        link = await connect_engine(self._engine_socket, on_lost=self._engine_lost, on_model=self._engine_model)
        link.tracing = self.tracing
        self._link = link
        return self._engine_attachment(await link.welcome())

    def _engine_attachment(self, model: EngineModel) -> Attachment:
        """Tokenise with the tokenizer of the directory the engine loaded (a reload may bring another one)."""
        tokenizing = self._tokenizing
        if tokenizing is None or tokenizing.max_length != model.max_length or self._tokenizer_dir != model.directory:
            tokenizing = TokenizingPredictor.from_dir(model.directory, model.max_length)
            self._tokenizing, self._tokenizer_dir = tokenizing, model.directory
        assert self._link is not None
        return Attachment(tokenizing, self._link, model.info)

    def _engine_model(self, model: EngineModel) -> None:
        """The engine process reloaded its model: attach the new one."""
        self._attach(self._engine_attachment(model))
        log.info("front end follows the reloaded model", extra={"model_version": model.info.model_version})

    def _engine_lost(self) -> None:
        """The engine process went away (it is being restarted): NOT_SERVING, calls get UNAVAILABLE, reconnect."""
        if self._stopping:
            return
        log.warning("lost the engine process; reconnecting", extra={"socket": self._engine_socket})
        task = asyncio.ensure_future(self._reattach())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reattach(self) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        attachment = await self._reach_engine()
        if self._stopping:
            return
        self._attach(attachment)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("engine process reached again", extra={"socket": self._engine_socket})

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
        if self.servicer.batcher is None:
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
        for task in self._background:
            task.cancel()
        if self.reloader is not None:
            await self.reloader.stop()
        if self.engine is not None:
            await self.engine.stop()
        if self._link is not None and self._link.transport is not None:
            self._link.transport.close()
        self.metrics.stop_http()
        self._tokenizer_executor.shutdown(wait=False, cancel_futures=True)
        if self.tracing is not None:  # the last spans, within what is left of the grace period (2 s at most)
            await loop.run_in_executor(None, self.tracing.close().join, min(2.0, max(0.1, deadline - loop.time())))
        log.info("stopped")

    def _reload_on_signal(self) -> None:
        log.info("signal received", extra={"signal": "SIGHUP"})
        if self.reloader is not None:
            self.reloader.reload_in_background("SIGHUP")

    async def serve_until_signalled(
        self, signals: tuple[signal.Signals, ...] = _SIGNALS, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully (a second signal skips the grace period). A
        front-end process of `--workers` answers SIGTERM only (its supervisor sends it), reaches the engine before it
        listens (so it never takes a call it cannot serve), and tells the supervisor through `on_ready`."""
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

        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)
        if self.engine is not None:  # SIGHUP: reload the model (a front end's supervisor sends it to the engine)
            loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        try:
            if self.engine is not None:
                await self.listen()
            load = asyncio.ensure_future(self.load_model())
            await asyncio.wait({load, asyncio.ensure_future(signalled.wait())}, return_when=asyncio.FIRST_COMPLETED)
            if load.done():
                load.result()  # a model that fails to load ends the server with its error
                if self.engine is None:
                    await self.listen()
                if on_ready is not None:
                    on_ready()
                await signalled.wait()
            else:
                load.cancel()
        finally:
            await self.stop()
            for signum in (*signals, signal.SIGHUP):
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
