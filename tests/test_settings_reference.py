"""docs/reference/settings.md stays true to the code: one row per field of the three
settings classes, showing the field's default; every other variable it lists is read
from the environment where the test says, with the default the code gives it; every
`AOB_*` variable the code reads from the environment is listed; every link leads to a
file of the repository (and to a heading of it, when it names one)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from aob.platform.settings import Settings
from aob.workers.http.settings import HttpWorkerSettings
from aob.workers.sandbox import SandboxSettings

REPO = Path(__file__).parent.parent
PAGE = REPO / "docs" / "reference" / "settings.md"
TEXT = PAGE.read_text(encoding="utf-8")
CLASSES: list[tuple[str, type[BaseSettings]]] = [
    ("AOB_", Settings),
    ("AOB_HTTP_", HttpWorkerSettings),
    ("AOB_JQ_", SandboxSettings),
]
# Variables read with os.environ (or by a shell script), not by a settings class, and
# the file that reads each.
READ_ELSEWHERE = {
    "AOB_SERVER": "cli/config.py",
    "AOB_TOKEN": "cli/config.py",
    "AOB_ACTOR": "cli/config.py",
    "AOB_CONFIG": "cli/config.py",
    "AOB_DEBUG": "cli/main.py",
    "AOB_KAFKA_HOME": "infra/kafka/__main__.py",
    "AOB_KAFKA_VERSION": "infra/kafka/jars.py",
    "AOB_KAFKA_CACHE": "infra/kafka/jars.py",
    "AOB_KAFKA_HEAP": "infra/kafka/broker.py",
    "AOB_PYTHON": "infra/kafka/kafka.sh",
    "AOB_PG_BIN": "infra/postgres/__init__.py",
    "AOB_TEST_WORKERS": "infra/test",
    "AOB_CONSOLE_SCREENSHOTS": "tests/console/conftest.py",
}
# Where aob's code lives: its environment reads must all be on the page.
SOURCE_DIRS = ("platform", "cli", "workers", "projections", "events", "infra")
PY_READ = r"""(?:environ\.get\(|environ\[|getenv\()\s*["']({name})["']\s*(?:,\s*"([^"]*)"\s*)?"""
SH_READ = r"\$\{{?({name})(?::-([^}}]*))?"


def _fields() -> dict[str, Any]:
    """Each field's variable and default."""
    found: dict[str, Any] = {}
    for prefix, cls in CLASSES:
        for name, field in cls.model_fields.items():
            variable = prefix + name.upper()
            assert variable not in found, f"{variable} names two settings"
            found[variable] = field.get_default(call_default_factory=True)
    return found


FIELDS = _fields()


def _rows() -> dict[str, list[str]]:
    """The default cells of each table row, by the variable of its first cell."""
    rows: dict[str, list[str]] = {}
    for line in TEXT.splitlines():
        if not line.startswith("|") or line.startswith(("| variable |", "|---")):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3, f"not a row of three cells: {line}"
        match = re.fullmatch(r"`(AOB_[A-Z0-9_]+)`", cells[0])
        assert match is not None, f"the first cell is not one `AOB_...` variable: {line}"
        rows.setdefault(match.group(1), []).append(cells[1])
    return rows


ROWS = _rows()


def render(default: Any) -> str:
    """A default as the page shows it."""
    if default is None:
        return "unset"
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if isinstance(default, Path):
        default = str(default)
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if isinstance(default, str):
        return f'`"{default}"`'
    if isinstance(default, int | float):
        return f"`{default!r}`"
    return f"`{json.dumps(default)}`"


def _reads(path: Path, name: str = "AOB_[A-Z0-9_]+") -> list[tuple[str, str | None]]:
    """The variables `path` reads from the environment, each with the default it gives
    them: a literal, else None (none, or a shell default computed from other values)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return [(m[1], m[2]) for m in re.finditer(PY_READ.format(name=name), text)]
    return [
        (m[1], None if m[2] is None or "$" in m[2] else m[2])
        for m in re.finditer(SH_READ.format(name=name), text)
    ]


def _shell_default(value: str | None) -> str:
    if value is None:
        return "unset"
    return f"`{value}`" if value.isdigit() else f'`"{value}"`'


@pytest.mark.parametrize("variable", sorted(FIELDS))
def test_every_setting_has_one_row_with_its_default(variable: str) -> None:
    assert variable in ROWS, f"{variable} has no row"
    assert len(ROWS[variable]) == 1, f"{variable} has {len(ROWS[variable])} rows"
    assert ROWS[variable][0] == render(FIELDS[variable])


def test_every_row_is_a_setting_or_a_variable_read_elsewhere() -> None:
    assert set(ROWS) - set(FIELDS) == set(READ_ELSEWHERE)


@pytest.mark.parametrize("variable", sorted(READ_ELSEWHERE))
def test_a_variable_read_elsewhere_is_read_there_with_the_default_shown(variable: str) -> None:
    path = REPO / READ_ELSEWHERE[variable]
    assert path.is_file(), path
    reads = _reads(path, re.escape(variable))
    assert reads, f"{path.relative_to(REPO)} does not read {variable} from the environment"
    shown = {
        render(default) if path.suffix == ".py" else _shell_default(default) for _, default in reads
    }
    assert ROWS.get(variable) == [*shown], f"{variable}: the code's default is {shown}"


def test_every_variable_the_code_reads_from_the_environment_has_a_row() -> None:
    files = [path for folder in SOURCE_DIRS for path in sorted((REPO / folder).rglob("*.py"))]
    files += [REPO / "infra" / "test", *sorted((REPO / "infra").rglob("*.sh"))]
    read = {variable for path in files for variable, _ in _reads(path)}
    assert read, "the scan found no environment read at all"
    assert read - set(FIELDS) - set(READ_ELSEWHERE) == set()


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of the headings of a markdown file."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_link_leads_to_a_file_and_heading_of_the_repository() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#([^)]*))?\)", TEXT)
    assert links
    for link, anchor in links:
        target = (PAGE.parent / link).resolve()
        assert target.is_file(), link
        assert target.is_relative_to(REPO.resolve()), link
        if anchor:
            assert anchor in _anchors(target), f"{link}#{anchor}"
