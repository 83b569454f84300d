"""Suite-wide fixtures: every module in tests/fixtures/ is loaded as a pytest plugin.

Service fixtures (Kafka broker, Postgres server, scripted LLM endpoint, ...) each live in
their own module there, so adding one never means editing a shared list.
"""

from __future__ import annotations

import os
from pathlib import Path

# Servers the suite starts (in-process or as subprocesses, which inherit this) run
# without authentication and rate limits: most tests exercise other things. Tests of
# those (tests/auth, tests/ratelimit) turn them on in their own settings.
os.environ["AOB_AUTH"] = "off"
os.environ["AOB_RATE_LIMIT"] = "false"

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)
