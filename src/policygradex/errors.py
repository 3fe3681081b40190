"""Errors the user can act on.

A :class:`UserError` is a mistake in the user's input (an option, a suite file, an
environment that misbehaves).  The CLI prints its message as one line on stderr and exits
with code 2; anything else is a bug and exits with code 1.
"""


class UserError(Exception):
    """A mistake in the user's input. The message names the input and what is allowed.

    ``transient``: whether running the same thing again could succeed (an environment that
    raised may be flaky; an execution backend retries such units).  Errors that follow from the
    inputs alone (a diverging optimizer, an unsolvable problem) set it to False."""

    transient = True

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
