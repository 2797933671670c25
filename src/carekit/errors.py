"""The one exception type users see, and the one warning type."""

import warnings


class CarekitError(ValueError):
    """Bad input or a failed precondition, explained in one line.

    The message names the file or argument at fault and how to fix it. The command
    line prints it as ``carekit: error: <message>`` and exits with status 2.
    """


class CarekitWarning(UserWarning):
    """Something the user should know but that does not stop the work (degenerate data, a diverging
    run). The command line prints it as one line, ``carekit: warning: <message>``."""


def warn(message: str) -> None:
    """Emit ``message`` as a :class:`CarekitWarning` (from Python: a ``warnings`` warning)."""
    warnings.warn(message, CarekitWarning, stacklevel=3)
