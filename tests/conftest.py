"""Suite-wide fixtures: every module in tests/fixtures/ is loaded as a pytest plugin.

Service fixtures (Kafka broker, Postgres server, scripted LLM endpoint, ...) each live in
their own module there, so adding one never means editing a shared list.
"""

from __future__ import annotations

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
