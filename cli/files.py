"""Reading workflow and input files (JSON, or YAML for anything not named .json)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aob.cli.errors import EXIT_USAGE, CliError

# A workflow or inputs file larger than this is not sent (the API takes 2 MiB).
MAX_FILE_BYTES = 16 * 1024 * 1024
# JSON values a YAML file may stand for once its aliases are expanded: aliases are
# shared when loaded, but sending the document expands every one ("billion laughs").
MAX_EXPANDED_VALUES = 1_000_000


@contextmanager
def sending(*names: str | None) -> Iterator[None]:
    """A request carrying these files: the server's 413 (its limit is
    AOB_MAX_REQUEST_BYTES, 2 MiB by default, where this CLI reads files up to 16 MiB)
    names them and is invalid input, exit 2. Not checked before sending: the server's
    limit is its operator's to raise."""
    from aob.cli.client import ApiError

    try:
        yield
    except ApiError as error:
        files = ", ".join(name for name in names if name)
        if error.status != 413 or not files:
            raise
        detail = error.problem.get("detail") or f"HTTP {error.status}"
        message = (
            f"{files}: too large for the server: {detail} "
            "(its limit, AOB_MAX_REQUEST_BYTES; 2 MiB unless its operator changed it)"
        )
        too_large = ApiError(message, error.status, {**error.problem, "detail": message})
        too_large.code = EXIT_USAGE
        raise too_large from None


def load_file(name: str) -> Any:
    path = Path(name)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise CliError(f"{path}: larger than {MAX_FILE_BYTES} bytes", EXIT_USAGE)
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror or error}", EXIT_USAGE) from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {path}: it is not UTF-8 text", EXIT_USAGE) from None
    try:
        return _parse(path, text)
    except RecursionError:
        raise CliError(f"{path}: nests too deeply", EXIT_USAGE) from None


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise CliError(f"{path}: invalid JSON: {error}", EXIT_USAGE) from None
    import yaml  # only the commands that read YAML pay for it

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise CliError(f"{path}: invalid YAML{at}: {problem}", EXIT_USAGE) from None
    problem = _expansion_problem(document, MAX_EXPANDED_VALUES)
    if problem is not None:
        raise CliError(f"{path}: {problem}", EXIT_USAGE)
    return document


def _expansion_problem(document: Any, budget: int) -> str | None:
    """Why `document` cannot be sent as JSON once its shared (aliased) parts are
    expanded, or None. Counts each shared value once (memoised by identity), so the
    count itself costs time linear in the loaded document, not in its expansion."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # Iterative post-order walk: (value, children counted yet?).
    stack: list[tuple[Any, bool]] = [(document, False)]
    while stack:
        value, counted = stack.pop()
        if not isinstance(value, dict | list):
            continue
        key = id(value)
        children = list(value.values()) if isinstance(value, dict) else value
        if counted:
            on_path.discard(key)
            sizes[key] = 1 + sum(_size(child, sizes) for child in children)
            if sizes[key] > budget:
                return f"more than {budget} values once YAML aliases are expanded"
            continue
        if key in sizes:
            continue
        if key in on_path:
            return "a YAML alias refers to a value that contains it (an endless document)"
        on_path.add(key)
        stack.append((value, True))
        stack.extend((child, False) for child in children)
    return None


def _size(value: Any, sizes: dict[int, int]) -> int:
    return sizes[id(value)] if isinstance(value, dict | list) else 1


def load_definition(name: str) -> dict[str, Any]:
    definition = load_file(name)
    if not isinstance(definition, dict):
        raise CliError(f"{name}: a workflow must be a JSON/YAML object", EXIT_USAGE)
    return definition


def parse_inputs(pairs: list[str], inputs_file: str | None) -> dict[str, Any]:
    """Run inputs from a file and KEY=VALUE pairs (VALUE as JSON when it parses)."""
    inputs: dict[str, Any] = {}
    if inputs_file is not None:
        loaded = load_file(inputs_file)
        if not isinstance(loaded, dict):
            raise CliError(f"{inputs_file}: inputs must be an object", EXIT_USAGE)
        inputs.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--input {pair!r}: expected KEY=VALUE", EXIT_USAGE)
        try:
            inputs[key] = json.loads(raw)
        except json.JSONDecodeError:
            inputs[key] = raw
    return inputs
