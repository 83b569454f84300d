"""Secrets never leave the worker in clear text: not in outputs, errors or logs.

Values of secret headers (by name) and the worker's bound secrets are replaced by
`[redacted]` wherever they appear, including in response bodies that echo them. This
is defence in depth: templates cannot read secrets, but a server may echo a header.
Encoded forms are caught too (precomputed once per value): base64 (standard and
URL-safe, at each of the three alignments it can have inside a longer encoded text),
hex (both cases), reversed and percent-encoded.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
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
# Encoded forms shorter than this are not scrubbed (too likely to be ordinary text).
_MIN_FORM = 6


def encoded_forms(value: str) -> set[str]:
    """`value` and the forms it may take when a server or program encodes it."""
    data = value.encode()
    forms = {value, value[::-1], data.hex(), data.hex().upper()}
    forms.update(urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value))
    for offset in range(3):
        # Inside a longer base64 text the value starts at one of three bit offsets; only
        # the characters made of its own bits alone are the same in every such text.
        encoded = base64.b64encode(bytes(offset) + data).decode()
        start = -(-offset * 8 // 6)
        end = (offset + len(data)) * 8 // 6
        middle = encoded[start:end]
        forms.update({middle, middle.replace("+", "-").replace("/", "_")})
    return {form for form in forms if form == value or len(form) >= _MIN_FORM}


class Redactor:
    """Knows the secret header names and the secret values of one request."""

    def __init__(self, secret_headers: Iterable[str] = (), secrets: Iterable[str] = ()) -> None:
        self._names = SECRET_HEADERS | {name.lower() for name in secret_headers}
        values = [s for s in secrets if len(s) >= _MIN_SECRET]
        self._values = frozenset(f for s in values for f in encoded_forms(s))
        self._known = frozenset(values)

    def is_secret_header(self, name: str) -> bool:
        return name.lower() in self._names

    def with_headers(self, headers: Iterable[tuple[str, str]]) -> Redactor:
        """This redactor, also knowing the values of the secret ones among `headers`
        (whole, and their credential parts: "Bearer abc..." also hides "abc...")."""
        found = set()
        for name, value in headers:
            if self.is_secret_header(name):
                found.add(value)
                found.update(p for p in _PARTS.split(value) if len(p) >= _MIN_PART)
        found -= self._known
        if not found:
            return self
        redactor = Redactor(self._names, found)
        redactor._values |= self._values
        redactor._known |= self._known
        return redactor

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
