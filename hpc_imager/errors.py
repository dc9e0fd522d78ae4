"""One error type for "the user can fix this", carrying the exit status the CLI ends with.

The CLI prints any :class:`UserError` as one line, ``hpc_imager: error: <message>``, and exits with
its ``exit_status``; everything else is a bug and keeps its traceback. Modules raise their own
subclasses so the message's vocabulary stays theirs, but nothing outside this file keeps a list.
"""

from __future__ import annotations

EXIT_FAILED = 1  # the run did not finish; what was done is kept
EXIT_USAGE = 2  # the input or the request is wrong; nothing ran
EXIT_INTERRUPTED = 130  # Ctrl-C or the batch system's SIGTERM


class UserError(Exception):
    """Something the user can fix; the message is fit to print as it is (its first line is shown)."""

    exit_status = EXIT_USAGE


class RunFailed(UserError):
    """The run started but did not finish; the message says what is kept and how to go on."""

    exit_status = EXIT_FAILED
