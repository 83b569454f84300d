"""The docs stay true to the code: every setting they name exists, with the default
they state, and their configuration examples are accepted by the settings classes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from aob.platform.settings import Settings
from aob.workers.http.settings import HttpWorkerSettings
from aob.workers.sandbox import SandboxSettings

DOCS = Path(__file__).parent.parent / "docs"
ISOLATION = (DOCS / "isolation.md").read_text(encoding="utf-8")
# Each settings class with the environment prefix of its fields.
CLASSES: list[tuple[str, type[BaseSettings]]] = [
    ("AOB_JQ_", SandboxSettings),
    ("AOB_HTTP_", HttpWorkerSettings),
    ("AOB_", Settings),
]


def _field(variable: str) -> tuple[type[BaseSettings], str]:
    for prefix, cls in CLASSES:
        name = variable.removeprefix(prefix).lower()
        if variable.startswith(prefix) and name in cls.model_fields:
            return cls, name
    raise AssertionError(f"{variable} is documented but no setting reads it")


@pytest.mark.parametrize(
    ("variable", "default"),
    re.findall(r"^\| `(AOB_[A-Z0-9_]+)` \| (\d+) \|", ISOLATION, re.MULTILINE),
)
def test_a_documented_default_is_the_setting_default(variable: str, default: str) -> None:
    cls, name = _field(variable)
    assert cls.model_fields[name].default == int(default)


def test_every_setting_the_page_names_exists() -> None:
    for variable in set(re.findall(r"`(AOB_[A-Z0-9_]+)`", ISOLATION)):
        _field(variable)


def _example(variable: str) -> Any:
    match = re.search(rf"{variable}='(.*?)'", ISOLATION, re.DOTALL)
    assert match is not None, f"no {variable} example"
    return json.loads(match.group(1))


def test_the_secret_binding_example_is_a_valid_setting() -> None:
    settings = HttpWorkerSettings(secrets=_example("AOB_HTTP_SECRETS"))
    binding = settings.secrets["github"]
    assert binding.hosts == ["api.github.com"]
    assert binding.tenants == ["acme"]


def test_the_llm_endpoints_example_is_a_valid_setting() -> None:
    settings = Settings(llm_endpoints=_example("AOB_LLM_ENDPOINTS"))
    assert settings.llm_endpoints["local"].tenants == ["acme"]


def test_the_tracing_page_names_real_settings_with_their_defaults() -> None:
    tracing = (DOCS / "tracing.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(AOB_[A-Z0-9_]+)`", tracing))
    assert named == {"AOB_OTLP_ENDPOINT"}
    for variable in named:
        cls, name = _field(variable)
        assert cls.model_fields[name].default is None  # "unset (off)", as the page says
