"""Input checks that hold for every transport: what counts as an empty text, a known truncation value, a chat id."""

from __future__ import annotations

import unicodedata

import grpc

from gamjeong.api.v1 import emotion_pb2 as pb
from gamjeong.server.status import RequestError

# Longest chat id and conversation id, in UTF-8 bytes: both are echoed in every result, so an unbounded one would let
# a caller make the server send it back (a 5 MB id overflows a default client's 4 MB receive limit).
MAX_CHAT_ID_BYTES = 256

# Unicode categories that draw nothing: controls, format characters (zero-width space U+200B, BOM U+FEFF, word joiner
# U+2060, direction marks...), separators, surrogates.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Cs"})
# Letters or marks that render as nothing: the Hangul fillers (often used to post "blank" Korean text), the combining
# grapheme joiner and the variation selectors.
_INVISIBLE_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u034f" + "".join(chr(c) for c in range(0xFE00, 0xFE10)))
_KNOWN_TRUNCATION = frozenset(pb.Truncation.values())


def is_blank(text: str) -> bool:
    """True when the text shows nothing: empty, whitespace, or only invisible characters."""
    return all(
        ch.isspace() or ch in _INVISIBLE_CHARACTERS or unicodedata.category(ch) in _INVISIBLE_CATEGORIES for ch in text
    )


def check_truncation_value(value: int) -> None:
    """proto3 enums are open: an unknown number arrives as is, and must not silently mean "truncate"."""
    if value not in _KNOWN_TRUNCATION:
        names = ", ".join(f"{pb.Truncation.Name(v)} ({v})" for v in sorted(_KNOWN_TRUNCATION))
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"Unknown truncation value {value}; use one of {names}.")


def check_chat_ids(message: pb.ChatMessage) -> None:
    for field in ("id", "conversation_id"):
        size = len(getattr(message, field).encode("utf-8"))
        if size > MAX_CHAT_ID_BYTES:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"The message's {field} has {size} bytes, over the limit of {MAX_CHAT_ID_BYTES} bytes; "
                "use a shorter id (it is echoed in every result).",
            )
