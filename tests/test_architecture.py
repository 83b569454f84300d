"""Imports flow one way (DESIGN.md), checked on the source.

import-linter cannot see our packages: the card's folders are namespace packages
(no top-level __init__.py, so ./platform never shadows the standard library) and
grimp skips those. So the rules are checked here, on every module's import statements.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.source import parse_source

ROOT = Path(__file__).parents[1]
FOLDERS = ("events", "projections", "workers", "platform", "cli", "infra")
# Lower layers first: a module may import its own layer and the ones before it.
LAYERS = ("events", "projections", "workers", "platform")
DOMAIN = ("aob.projections.workflow", "aob.projections.coordinator")
DOMAIN_MAY_NOT = (
    "sqlite3",
    "aiokafka",
    "faust",
    "asyncpg",
    "httpx",
    "fastapi",
    "random",
    "time",
    "datetime",
    "asyncio",
    "socket",
    "os",
    "aob.events.log",
)
CLI_MAY_NOT = (
    "aob.platform",
    "aob.workers",
    "aob.projections",
    "aob.events",
    "fastapi",
    "uvicorn",
    "fastavro",
    "sqlite3",
)


def modules() -> Iterator[tuple[str, Path]]:
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("aob", *parts)).removesuffix(".__init__")
            yield name, path


def imports_of(module: str, path: Path) -> set[str]:
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(parse_source(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


ALL = list(modules())


def test_the_rules_see_every_folder() -> None:
    seen = {name.split(".")[1] for name, _ in ALL}
    assert seen >= {"events", "projections", "workers", "platform", "cli"}


@pytest.mark.parametrize(("module", "path"), ALL, ids=[m for m, _ in ALL])
def test_imports_flow_one_way(module: str, path: Path) -> None:
    imported = imports_of(module, path)
    layer = module.split(".")[1]
    if layer in LAYERS:
        higher = tuple(f"aob.{name}" for name in LAYERS[LAYERS.index(layer) + 1 :])
        assert not {i for i in imported if within(i, higher)}, "imports a higher layer"
    if within(module, DOMAIN):
        assert not {i for i in imported if within(i, DOMAIN_MAY_NOT)}, "domain code does I/O"
    if within(module, ("aob.projections.workflow",)):
        assert not {i for i in imported if within(i, ("aob.projections.coordinator",))}
    if within(module, ("aob.cli",)):
        assert not {i for i in imported if within(i, CLI_MAY_NOT)}, "the CLI imports server code"
    if within(module, ("aob.infra",)):
        assert not {i for i in imported if within(i, ("aob.platform", "aob.workers"))}


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "fold.py"
    bad.write_text("import time\nfrom aob.events.log.sqlite import SqliteEventLog\n")
    imported = imports_of("aob.projections.coordinator.fold", bad)
    assert {i for i in imported if within(i, DOMAIN_MAY_NOT)} == {
        "time",
        "aob.events.log.sqlite",
        "aob.events.log.sqlite.SqliteEventLog",
    }
