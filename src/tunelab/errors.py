"""The one exception type for mistakes a user can fix (bad config, bad data, missing file).

The command line turns it into a single line on stderr and exit code 2; anything else that
escapes is our bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in what the user gave us, explained in one line."""

    exit_code = 2


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
