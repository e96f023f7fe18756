"""The one exception type for user-facing failures (bad input, bad config, unreachable storage)."""


class InputError(Exception):
    """A problem with what the user gave us; the message names the input and what was expected.

    The CLI prints it as one line and exits non-zero; anything else is a bug and keeps its traceback.
    """


def did_you_mean(given: str, known) -> str:
    """' (did you mean X?)' when `given` is close to one of `known` (or is the tail of exactly one, as
    --space is of --search-space), else ''."""
    import difflib

    given, known = str(given), [str(k) for k in known]
    word = given.lstrip("-")
    tails = [k for k in known if word and k.lstrip("-").endswith(("-" + word, "_" + word))]
    close = tails if len(tails) == 1 else difflib.get_close_matches(given, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
