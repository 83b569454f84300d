"""Errors the CLI reports as one line, and its exit codes."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_RUN_FAILED = 1  # a followed run failed or was cancelled
EXIT_USAGE = 2  # bad arguments, unreadable or invalid input (files, workflows), bad config
EXIT_API = 3  # the server refused the request (4xx/5xx problem)
EXIT_UNREACHABLE = 4  # the server could not be reached, or is not an aob server
EXIT_INTERNAL = 70  # a bug in aob (EX_SOFTWARE); AOB_DEBUG=1 shows the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BROKEN_PIPE = 141  # output piped into a reader that went away

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK}    success (a followed run completed)
  {EXIT_RUN_FAILED}    a followed run failed or was cancelled
  {EXIT_USAGE}    bad usage, unreadable or invalid input (an invalid workflow too), bad config
  {EXIT_API}    the server refused the request
  {EXIT_UNREACHABLE}    the server could not be reached, or is not an aob server
  {EXIT_INTERNAL}   an internal error (a bug; AOB_DEBUG=1 shows the traceback)
  {EXIT_INTERRUPTED}  interrupted
with --output json, an error is also printed on stdout as {{"error": {{...}}}}"""

# The `type` of an error that did not come from the server as a problem.
ERROR_TYPES = {
    EXIT_USAGE: "invalid-input",
    EXIT_API: "refused",
    EXIT_UNREACHABLE: "unreachable",
    EXIT_INTERNAL: "internal-error",
    EXIT_INTERRUPTED: "interrupted",
}
ERROR_TITLES = {
    EXIT_USAGE: "Invalid input",
    EXIT_API: "Refused by the server",
    EXIT_UNREACHABLE: "Server unreachable",
    EXIT_INTERNAL: "Internal error",
    EXIT_INTERRUPTED: "Interrupted",
}


class CliError(Exception):
    """A failure to report as `aob: <message>` with exit code `code`."""

    def __init__(self, message: str, code: int, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.error_type = error_type

    def as_json(self) -> dict[str, Any]:
        """The error as `--output json` prints it on stdout."""
        return error_json(
            self.error_type or ERROR_TYPES.get(self.code, "error"),
            ERROR_TITLES.get(self.code, "Error"),
            str(self),
            self.code,
        )


def error_json(error_type: str, title: str, detail: str, code: int, **more: Any) -> dict[str, Any]:
    return {
        "error": {"type": error_type, "title": title, "detail": detail, **more, "exit_code": code}
    }
