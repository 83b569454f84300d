"""Reading workflow and input files (JSON, or YAML for anything not named .json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aob.cli.errors import EXIT_USAGE, CliError


def load_file(name: str) -> Any:
    path = Path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror or error}", EXIT_USAGE) from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {path}: it is not UTF-8 text", EXIT_USAGE) from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise CliError(f"{path}: invalid JSON: {error}", EXIT_USAGE) from None
    import yaml  # only the commands that read YAML pay for it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise CliError(f"{path}: invalid YAML{at}: {problem}", EXIT_USAGE) from None


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
