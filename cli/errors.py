"""Errors the CLI reports as one line, and its exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # a followed run failed or was cancelled
EXIT_USAGE = 2  # bad arguments, unreadable or invalid input files, bad config
EXIT_API = 3  # the server refused the request (4xx/5xx problem)
EXIT_UNREACHABLE = 4  # the server could not be reached, or the connection was lost for good
EXIT_INTERNAL = 70  # a bug in aob (EX_SOFTWARE); AOB_DEBUG=1 shows the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BROKEN_PIPE = 141  # output piped into a reader that went away

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK}    success (a followed run completed)
  {EXIT_RUN_FAILED}    a followed run failed or was cancelled
  {EXIT_USAGE}    bad usage, unreadable or invalid input, bad config file
  {EXIT_API}    the server refused the request
  {EXIT_UNREACHABLE}    the server could not be reached
  {EXIT_INTERNAL}   an internal error (a bug; AOB_DEBUG=1 shows the traceback)
  {EXIT_INTERRUPTED}  interrupted"""


class CliError(Exception):
    """A failure to report as `aob: <message>` with exit code `code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
