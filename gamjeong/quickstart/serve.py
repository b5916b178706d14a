"""Stage 5: the gRPC server on the exported model, called through the Python client (Classify, stream, chat)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from gamjeong.quickstart.plan import UNTRAINED_MARK, TrainingBudget

if TYPE_CHECKING:
    from gamjeong.quickstart.display import StageDisplay
    from gamjeong.server.background import BackgroundServer

# Sentences sent to the server: one per emotion in everyday registers (none of them is in the sample set).
DEMO_TEXTS = (
    "드디어 합격했어요!! 너무 기뻐요 ㅎㅎ",
    "오늘 하루 종일 혼자라서 외롭고 슬프다 ㅠㅠ",
    "주문한 지 3주째인데 아직도 안 오네요. 정말 화가 납니다",
    "밤에 누가 현관문을 두드려서 너무 무서워",
    "헐 대박 이게 진짜야? 전혀 몰랐어",
    "식당 국에서 벌레가 나왔어 진짜 역겨워",
    "회의 자료는 공유 폴더에 올려 두었습니다",
)
# Their emotions, in order: the demo table says which answers are right.
DEMO_LABELS = ("joy", "sadness", "anger", "fear", "surprise", "disgust", "neutral")


def background_server(model_dir: Path) -> BackgroundServer:
    """The server on the exported model, on free local ports, in a thread of its own (the demo's client blocks)."""
    from gamjeong.server.background import BackgroundServer
    from gamjeong.server.settings import load_settings

    # The int8 model is served where it was made for: the CPU (even when onnxruntime-gpu is installed).
    settings = load_settings(
        model=model_dir,
        device="cpu",
        host="127.0.0.1",
        port=0,
        http_port=0,  # the web page and HTTP/JSON API beside gRPC, on a free port too
        metrics_port=-1,
        log_format="text",
        log_level="warning",
    )
    return BackgroundServer(settings)


def prediction_caveat(untrained: bool, budget: TrainingBudget) -> str | None:
    """What to print beside each prediction of a model that is not a real fine-tune."""
    if untrained:
        return UNTRAINED_MARK
    if budget.max_steps is not None:
        return f"briefly trained: {budget.max_steps} steps"
    return None


def call_server(target: str, caveat: str | None, ui: StageDisplay) -> dict[str, Any]:
    """Classify, ClassifyStream and ClassifyChat through the Python client, printing what comes back.

    `caveat` (e.g. "untrained model") is printed with every prediction when the model is not a real fine-tune.
    """
    from gamjeong.clients import ChatMessage, EmotionClient
    from gamjeong.samples import sample_texts

    mark = f" [yellow]({caveat})[/]" if caveat else ""
    with EmotionClient(target, timeout=60.0) as client:
        info = client.model_info()
        ui.say(
            f"server at {target}: {info.backend} on {info.execution_provider}, quantisation {info.quantization}, "
            f"max input {info.max_input_length} tokens"
        )
        results = client.classify(list(DEMO_TEXTS))
        title = "Classify (unary)" + (f": predictions of an {caveat}" if caveat == UNTRAINED_MARK else "")
        table = Table(title=title, title_justify="left")
        table.add_column("text", ratio=3)
        table.add_column("emotion", ratio=2)
        table.add_column("runner-up", ratio=1)
        table.add_column("expected", ratio=1, no_wrap=True)
        if caveat:
            table.add_column("model", no_wrap=True)
        for text, expected, result in zip(DEMO_TEXTS, DEMO_LABELS, results, strict=True):
            runner_up = sorted(result.scores.items(), key=lambda item: -item[1])[1:2]
            row = [
                escape(text),
                f"{result.label} {result.label_ko} {result.score:.2f}",
                " ".join(f"{name} {score:.2f}" for name, score in runner_up),
                ("[green]✓[/] " if result.label == expected else "[red]✗[/] ") + expected,
            ]
            table.add_row(*row, *([caveat] if caveat else []))
        ui.console.print(table)
        right = sum(r.label == e for r, e in zip(results, DEMO_LABELS, strict=True))
        ui.say(f"{right} of {len(DEMO_TEXTS)} demo sentences labelled as expected")

        bulk = sample_texts(100, seed=7)
        streamed = list(client.classify_stream(bulk))
        counts: dict[str, int] = {}
        for result in streamed:
            counts[result.label] = counts.get(result.label, 0) + 1
        spread = ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda c: -c[1]))
        ui.say(
            f"ClassifyStream (server streaming): {len(streamed)} of {len(bulk)} results back in order: {spread}{mark}"
        )

        feed = [ChatMessage(id=f"m{i}", text=text, conversation_id="demo") for i, text in enumerate(DEMO_TEXTS[:4])]
        ui.say("ClassifyChat (bidirectional streaming), replies as they arrive:")
        replies = []
        for reply in client.chat(feed):
            replies.append(reply)
            text = next(m.text for m in feed if m.id == reply.id)
            answer = (
                f"{reply.result.label} {reply.result.label_ko} {reply.result.score:.2f}"
                if reply.result is not None
                else f"error {reply.error_code}: {reply.error_message}"
            )
            ui.say(f"  {escape(f'[{reply.id}]')} {escape(text)} -> {escape(answer)}{mark}")
    return {
        "target": target,
        "model_info": {"backend": info.backend, "provider": info.execution_provider, "quantization": info.quantization},
        "classify": [
            {"text": t, "expected": e, "label": r.label, "score": round(r.score, 4), "caveat": caveat}
            for t, e, r in zip(DEMO_TEXTS, DEMO_LABELS, results, strict=True)
        ],
        "demo_right": right,
        "stream_results": len(streamed),
        "stream_texts": len(bulk),
        "chat_replies": [{"id": r.id, "ok": r.ok, "label": r.result.label if r.result else None} for r in replies],
    }
