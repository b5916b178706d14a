"""`gamjeong chat`: a chat feed from stdin to a running server; and the remote side of `gamjeong classify --server`."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict

from gamjeong.clients.balancing import LoadBalancing
from gamjeong.errors import GamjeongError

LB_HELP = (
    "Client-side load balancing: round_robin spreads calls over every address --server resolves to "
    "(dns:///NAME:PORT of a headless service, or IP:PORT,IP:PORT); default: one server (pick_first)."
)


class ConnectionOptions(BaseModel):
    """How to reach a server: address, TLS files, bearer token, deadline."""

    model_config = ConfigDict(frozen=True)

    server: str
    token: str | None = None
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout: float | None = 30.0
    load_balancing: LoadBalancing | None = None

    def client(self):
        from gamjeong.clients import EmotionClient

        if (self.cert is None) != (self.key is None):
            raise GamjeongError("Mutual TLS needs both --cert and --key.")
        for path in (self.ca, self.cert, self.key):
            if path is not None and not path.expanduser().is_file():
                raise GamjeongError(f"TLS file '{path}' does not exist.")
        return EmotionClient(
            self.server,
            timeout=self.timeout,
            token=self.token,
            tls=self.tls,
            root_certificates=self.ca,
            client_certificate=self.cert,
            client_key=self.key,
            load_balancing=self.load_balancing,
        )


def _rpc_failure(server: str, exc: Exception) -> GamjeongError:
    import grpc

    if isinstance(exc, grpc.RpcError):
        code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            return GamjeongError(
                f"Cannot reach a gamjeong server at {server} ({details}); is `gamjeong serve` running?"
            )
        return GamjeongError(f"The server at {server} refused the call: {code.name}: {details}")
    return GamjeongError(f"Calling {server} failed: {exc}")


def format_result(result) -> str:
    """One line: label, Korean label, score, and a note when the text was truncated."""
    note = " (truncated)" if result.truncated else ""
    return f"{result.label}\t{result.label_ko}\t{result.score:.3f}{note}"


def classify_on_server(
    server: str, texts: Sequence[str], *, token: str | None = None, load_balancing: LoadBalancing | None = None
) -> list:
    """`gamjeong classify --server`: the texts classified by a running server, as the command's Classification
    objects (all seven probabilities in id order). The token defaults to GAMJEONG_AUTH_TOKEN."""
    import os

    import grpc

    from gamjeong.classification import Classification
    from gamjeong.labels import LABEL_NAMES

    options = ConnectionOptions(
        server=server, token=token or os.environ.get("GAMJEONG_AUTH_TOKEN") or None, load_balancing=load_balancing
    )
    with options.client() as client:
        try:
            results = client.classify(list(texts))
        except grpc.RpcError as exc:
            raise _rpc_failure(server, exc) from None
    return [
        Classification.from_probabilities(text, [result.scores[name] for name in LABEL_NAMES])
        for text, result in zip(texts, results, strict=True)
    ]


def _stdin_messages(conversation_id: str) -> Iterator[object]:
    from gamjeong.clients import ChatMessage

    for number, line in enumerate(sys.stdin, start=1):
        text = line.rstrip("\n")
        if text.strip():  # blank lines are not messages
            yield ChatMessage(id=str(number), text=text, conversation_id=conversation_id)


def chat(
    server: str = typer.Option("localhost:50051", "--server", "-s", help="HOST:PORT of `gamjeong serve`."),
    token: str = typer.Option(None, envvar="GAMJEONG_AUTH_TOKEN", help="Bearer token the server asks for."),
    tls: bool = typer.Option(False, help="Use TLS (system CAs unless --ca)."),
    ca: Path = typer.Option(None, help="PEM CA of the server certificate (implies TLS)."),
    cert: Path = typer.Option(None, help="PEM client certificate for mutual TLS."),
    key: Path = typer.Option(None, help="PEM key of the client certificate."),
    conversation: str = typer.Option("", help="Conversation id sent with every message."),
    lb: LoadBalancing | None = typer.Option(None, "--lb", help=LB_HELP),
) -> None:
    """Read messages from stdin, one per line, and print each one's emotion as it arrives (line number first)."""
    import grpc

    options = ConnectionOptions(
        server=server, token=token, tls=tls, ca=ca, cert=cert, key=key, timeout=None, load_balancing=lb
    )
    with options.client() as client:
        try:
            for reply in client.chat(_stdin_messages(conversation)):
                if reply.ok:
                    typer.echo(f"{reply.id}\t{format_result(reply.result)}", nl=True)
                else:
                    typer.echo(f"{reply.id}\terror: {reply.error_message}", err=True)
                sys.stdout.flush()
        except grpc.RpcError as exc:
            raise _rpc_failure(server, exc) from None


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
