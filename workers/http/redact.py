"""Secrets never leave the worker in clear text: not in outputs, errors or logs.

Values of secret headers (by name) and the worker's configured secrets are replaced by
`[redacted]` wherever they appear, including in response bodies that echo them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import httpx

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-access-token",
        "x-amz-security-token",
    }
)
# Shorter values are too likely to be ordinary text to be scrubbed everywhere.
_MIN_SECRET = 4
_MIN_PART = 8
_PARTS = re.compile(r"[\s;,=]+")


class Redactor:
    """Knows the secret header names and the secret values of one request."""

    def __init__(self, secret_headers: Iterable[str] = (), secrets: Iterable[str] = ()) -> None:
        self._names = SECRET_HEADERS | {name.lower() for name in secret_headers}
        self._values = frozenset(s for s in secrets if len(s) >= _MIN_SECRET)

    def is_secret_header(self, name: str) -> bool:
        return name.lower() in self._names

    def with_headers(self, headers: Iterable[tuple[str, str]]) -> Redactor:
        """This redactor, also knowing the values of the secret ones among `headers`
        (whole, and their credential parts: "Bearer abc..." also hides "abc...")."""
        found = set(self._values)
        for name, value in headers:
            if self.is_secret_header(name):
                found.add(value)
                found.update(p for p in _PARTS.split(value) if len(p) >= _MIN_PART)
        return Redactor(self._names, found)

    def text(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text

    def json(self, value: Any) -> Any:
        """`value` with every string (keys too) scrubbed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, dict):
            return {self.text(k): self.json(v) for k, v in value.items()}
        return value

    def headers(self, headers: httpx.Headers) -> dict[str, str]:
        """Response headers as {lowercase name: values joined by ", "}, secrets hidden."""
        shown = {}
        for name in headers:
            value = ", ".join(headers.get_list(name))
            shown[name] = REDACTED if self.is_secret_header(name) else self.text(value)
        return shown
