"""One exception hierarchy for everything a user can get wrong.

Every message names the offending value, what was expected and how to fix it, in
one line. The CLI prints the message alone (the traceback only with ``-v``) and
exits with :attr:`GenepanelError.exit_code`.
"""

from __future__ import annotations


class GenepanelError(Exception):
    """Base class: a problem the user can fix; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UsageError(GenepanelError):
    """Bad options or configuration (exit code 2)."""

    exit_code = 2


class DataError(GenepanelError):
    """Unreadable, malformed or unsuitable input data, or an I/O failure (exit code 1)."""

    exit_code = 1


class ModelError(DataError):
    """A saved model folder that is missing, incomplete or written by an incompatible version."""
