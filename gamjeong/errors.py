"""The one exception type that reaches users as a single sentence instead of a traceback, and `flag_error`, which
turns a command's rejected settings into one.

Where a GamjeongError ends up:
- the CLI (gamjeong.cli) prints its message as one line on stderr and exits with code 2;
- the server raises it only while it starts (bad settings, an unreadable TLS file, a model directory it cannot load,
  a port it cannot listen on): `gamjeong serve` then exits with that sentence, before any call is answered. A call
  that fails is answered through the one table of server/status.py (request errors, a full queue, a passed deadline,
  a stopping server); anything that table does not list, a GamjeongError included, is INTERNAL with its kind only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class GamjeongError(Exception):
    """A problem the user can fix (bad input, missing file, offline hub...). The message must say what to do instead."""


class QualityGateError(GamjeongError):
    """An export whose answers drift too far from its PyTorch model (the export's gate); callers may fall back to a
    more precise export instead of stopping, so it has its own type rather than a message to match."""


def flag_error(exc: ValidationError, values: Mapping[str, object] | None = None, *, hint: str = "") -> GamjeongError:
    """One sentence naming the flag of every value a command's pydantic settings refused, e.g.
    "Invalid --target 'tpu': Input should be 'auto', 'avx2' or ...". `values` are the values given (quoted in the
    sentence when known); `hint` is appended (for example where else a setting can come from)."""
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        flag = "--" + "-".join(location).replace("_", "-")
        if not location:  # a check across settings (a model validator): its message names the flags itself
            problems.append(error["msg"].removeprefix("Value error, "))
        elif error["type"] == "missing":
            problems.append(f"{flag} is required")
        elif values is not None and values.get(location[0]) is not None:
            problems.append(f"Invalid {flag} {values[location[0]]!r}: {error['msg']}")
        else:
            problems.append(f"Invalid {flag}: {error['msg']}")
    sentence = "; ".join(problems) or "Invalid settings"
    return GamjeongError(sentence + "." + (f" {hint}" if hint else ""))
