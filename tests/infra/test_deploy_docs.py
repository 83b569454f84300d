"""docs/deployment.md and the deployment files stay true to the code: every setting they
name exists, every file they link to is there, the README links the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_docs import CLASSES

ROOT = Path(__file__).parents[2]
PAGE = ROOT / "docs" / "deployment.md"
DEPLOYMENT_FILES = [
    PAGE,
    ROOT / "Dockerfile",
    *sorted((ROOT / "infra" / "deploy").rglob("*.*")),
]


def is_setting(variable: str) -> bool:
    return any(
        variable.startswith(prefix) and variable.removeprefix(prefix).lower() in cls.model_fields
        for prefix, cls in CLASSES
    )


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda path: path.name)
def test_every_setting_named_exists(path: Path) -> None:
    named = set(re.findall(r"\b(AOB_[A-Z0-9_]*[A-Z0-9])\b", path.read_text()))
    assert {variable for variable in named if not is_setting(variable)} == set()


def test_every_link_of_the_page_leads_to_a_file() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", PAGE.read_text())
    assert links
    for link in links:
        assert (PAGE.parent / link).exists(), link


def test_the_readme_links_the_page() -> None:
    assert "(docs/deployment.md)" in (ROOT / "README.md").read_text()
