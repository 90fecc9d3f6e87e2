"""The one exception type that reaches the user as a one-line message, and the wording of counts in
messages (:func:`plural`)."""


class QnnrunError(Exception):
    """A user-facing error: bad input, missing data, unreadable checkpoint.

    The message is a single line that names the bad value and what is valid. The CLI prints it
    without a traceback (set ``HYDRA_FULL_ERROR=1`` to see one) and exits non-zero.
    """


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 run"``, ``"2 runs"``: ``count`` and ``noun``, or its plural ``nouns`` (default ``noun + "s"``)
    for any count but 1."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


class Interrupted(QnnrunError):
    """A run stopped by SIGINT/SIGTERM after writing its checkpoint; ``resume=true`` continues it.

    The CLI exits with ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), as a shell does.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
