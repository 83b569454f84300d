"""Finding a secret in evidence, in any of the forms an attacker may give it.

Independent of the redactor: every base64, hex and percent-encoded token found in the
text is decoded (at every alignment), the text is read backwards too, and the secret
is searched for in pieces (every 8-character window), so a split, encoded or reversed
copy is found as well as a whole one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import urllib.parse

_WINDOW = 8
_B64 = re.compile(r"[A-Za-z0-9+/_-]{8,}")
_HEX = re.compile(r"[0-9a-fA-F]{16,}")


def windows(secret: str) -> set[str]:
    return {secret[i : i + _WINDOW] for i in range(len(secret) - _WINDOW + 1)}


def readings(text: str) -> list[str]:
    """`text` as it is, reversed, percent-decoded, and every token decoded."""
    found = [text, text[::-1], urllib.parse.unquote_plus(text)]
    for token in _B64.findall(text):
        token = token.replace("-", "+").replace("_", "/")
        for start in range(4):
            part = token[start:]
            part = part[: len(part) // 4 * 4]
            with contextlib.suppress(binascii.Error, ValueError):
                found.append(base64.b64decode(part).decode("latin-1"))
    for token in _HEX.findall(text):
        for start in range(2):
            part = token[start:]
            found.append(bytes.fromhex(part[: len(part) // 2 * 2]).decode("latin-1"))
    return found


def leaks(text: str, secret: str) -> list[str]:
    """The pieces of `secret` that `text` gives away, in any form."""
    pieces = windows(secret)
    return sorted({p for reading in readings(text) for p in pieces if p in reading})
