"""uvicorn embedded in the gRPC server's event loop: same process, same servicer, batcher, limits, auth and metrics.

uvicorn's own `serve()` installs signal handlers and owns the process; here the gRPC server's life cycle owns both,
so only uvicorn's start-up (listen) and shutdown (stop accepting, let open requests finish) are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

import uvicorn

from gamjeong.errors import GamjeongError
from gamjeong.server.http.routes import ServingState, create_app
from gamjeong.server.metrics import ServerMetrics
from gamjeong.server.service import EmotionClassifierServicer
from gamjeong.server.settings import ServerSettings

log = logging.getLogger(__name__)


class HttpServer:
    """The HTTP/JSON + WebSocket front of one GamjeongServer."""

    def __init__(
        self,
        settings: ServerSettings,
        servicer: EmotionClassifierServicer,
        metrics: ServerMetrics,
        draining: Callable[[], bool],
        reuse_port: bool = False,
    ) -> None:
        assert settings.http_port is not None
        self.settings = settings
        self._reuse_port = reuse_port  # the front ends of `--workers N` all listen on the one HTTP port
        self.app = create_app(ServingState(settings, servicer, metrics, draining))
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    def _config(self) -> uvicorn.Config:
        settings = self.settings
        tls: dict[str, object] = {}
        if settings.tls_enabled:  # the same certificate (and client CA for mutual TLS) as the gRPC port
            tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
            if settings.tls_client_ca is not None:
                tls |= {"ssl_ca_certs": str(settings.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,  # the gamjeong loggers and their JSON lines stay as they are
            access_log=False,
            server_header=False,
            proxy_headers=False,
            http="auto",  # httptools (a dependency; a C parser: measured 1.4 -> 1.0 ms a call) or else h11
            ws="websockets-sansio",  # pauses reading until the app takes each message: TCP back-pressure
            ws_max_size=settings.max_message_bytes,
            timeout_graceful_shutdown=max(settings.grace_s, 0.1),
            **tls,  # type: ignore[arg-type]
        )

    async def start(self) -> None:
        settings = self.settings
        host = settings.host.strip("[]")  # gRPC writes IPv6 as [::]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP,
        # and with Nagle on, a response written in two parts waits for the client's delayed ACK (+40 ms a call).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            # A restart may rebind while the last run's connections sit in TIME_WAIT; a live listener still refuses.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and host in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # [::] takes IPv4 too, as gRPC's does
            sock.bind((host, settings.http_port))
            sock.listen(2048)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise GamjeongError(
                f"Cannot serve HTTP on {settings.host}:{settings.http_port} ({exc.strerror}); "
                "choose another --http-port."
            ) from exc
        self.port = int(sock.getsockname()[1])
        try:
            config = self._config()
            config.load()
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise GamjeongError(
                f"Cannot set up HTTP TLS ({exc}); check --tls-cert, --tls-key and --tls-client-ca."
            ) from exc
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        # uvicorn's tick refreshes its cached Date header and notices should_exit; cheap (every 0.1 s).
        self._ticker = asyncio.ensure_future(server.main_loop())
        log.info("http listening", extra={"host": host, "http_port": self.port, "tls": settings.tls_enabled})

    async def stop(self, grace_s: float) -> None:
        """Stop accepting connections; open requests get up to `grace_s` to finish (then they are cancelled)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.config.timeout_graceful_shutdown = max(grace_s, 0.01)
        server.should_exit = True
        if self._ticker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await server.shutdown()
