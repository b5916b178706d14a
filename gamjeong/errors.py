"""The one exception type that reaches users as a single sentence instead of a traceback."""


class GamjeongError(Exception):
    """A problem the user can fix (bad input, missing file, offline hub...).

    The CLI prints the message as one sentence and exits with a non-zero code; the server maps it to
    INVALID_ARGUMENT or FAILED_PRECONDITION. The message must say what to do instead.
    """


class QualityGateError(GamjeongError):
    """An export whose answers drift too far from its PyTorch model (the export's gate); callers may fall back to a
    more precise export instead of stopping, so it has its own type rather than a message to match."""
