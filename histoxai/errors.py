"""The one exception type for user-facing failures (bad input, bad config, unreachable storage)."""


class InputError(Exception):
    """A problem with what the user gave us; the message names the input and what was expected.

    The CLI prints it as one line and exits non-zero; anything else is a bug and keeps its traceback.
    """
