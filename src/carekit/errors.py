"""The one exception type users see."""


class CarekitError(ValueError):
    """Bad input or a failed precondition, explained in one line.

    The message names the file or argument at fault and how to fix it. The command
    line prints it as ``carekit: error: <message>`` and exits with status 2.
    """
