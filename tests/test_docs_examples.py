"""The workflows the docs show are run, so they cannot rot.

Every ```yaml block of docs/*.md that holds a workflow is marked `# example: NAME` and
says what it does with comment lines the test reads:

    # expect: completed | failed | cancelled     the run's outcome (required)
    # inputs: {"x": 1}                            the run's inputs (JSON)
    # decide: NODE approve|reject                 decide the node's approval once asked
    # cancel: when waiting                        cancel the run once it waits
    # output: JSON                                the run's output
    # skipped: NODE NODE                          nodes that were skipped
    # ran: NODE NODE                              nodes that completed
    # events: TYPE TYPE                           event types in the run's timeline
    # error: TEXT | TEXT                          text in the run's error (one of them)
    # requests: PATH N                            requests the local site got for PATH

Each is validated (no warning), then run on a live dev server (`aob server dev` in a
subprocess). `{{ .inputs.base_url }}` is a local HTTP site the test starts (`Site`),
allowed through the SSRF guard with AOB_HTTP_ALLOW=127.0.0.1:<port>.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.fanout.live import LiveServer, eventually

DOCS = Path(__file__).parent.parent / "docs"
BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)
DIRECTIVE = re.compile(r"^# (\w+): (.*)$", re.M)
FINISHED = ("completed", "failed", "cancelled")


class Site:
    """A local HTTP site for http nodes; it counts the requests of each path.

    GET /orders/ID           200 {"id": ID, "amount": 120, "country": "de"}
    GET /flaky/NAME?fail=N   503 for the first N requests of NAME, then 200 {"ok": true}
    GET /status/CODE         that status, body {"status": CODE}
    GET /slow?ms=N           200 after N ms: the delay is the behaviour shown (timeouts)
    """

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        handler = type("Handler", (_SiteHandler,), {"site": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path: str) -> int:
        with self._lock:
            self.requests[path] += 1
            return self.requests[path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class _SiteHandler(BaseHTTPRequestHandler):
    site: Site

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        seen = self.site.count(url.path)
        parts = url.path.strip("/").split("/")
        if parts[0] == "orders" and len(parts) == 2:
            self._answer(200, {"id": parts[1], "amount": 120, "country": "de"})
        elif parts[0] == "flaky":
            failing = seen <= int(query.get("fail", "1"))
            self._answer(503, {"error": "try again"}) if failing else self._answer(
                200, {"ok": True}
            )
        elif parts[0] == "status" and len(parts) == 2:
            self._answer(int(parts[1]), {"status": int(parts[1])})
        elif parts[0] == "slow":
            time.sleep(int(query.get("ms", "1000")) / 1000)  # the slowness under test
            self._answer(200, {"slow": True})
        else:
            self._answer(404, {"error": "no such page"})

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Example:
    name: str
    page: str
    definition: dict[str, Any]
    says: dict[str, str] = field(default_factory=dict)

    def words(self, directive: str) -> list[str]:
        return self.says.get(directive, "").split()


def examples() -> list[Example]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for block in BLOCK.findall(page.read_text(encoding="utf-8")):
            says = dict(DIRECTIVE.findall(block))
            if "example" in says:
                found.append(Example(says["example"], page.name, yaml.safe_load(block), says))
    return found


EXAMPLES = examples()


def test_every_workflow_block_of_the_docs_is_a_run_example() -> None:
    unmarked = [
        (page.name, block[:60])
        for page in sorted(DOCS.glob("*.md"))
        for block in BLOCK.findall(page.read_text(encoding="utf-8"))
        if re.search(r"^nodes:", block, re.M) and "# example:" not in block
    ]
    assert unmarked == []
    assert len(EXAMPLES) >= 12
    assert len({e.name for e in EXAMPLES}) == len(EXAMPLES)
    for example in EXAMPLES:
        assert example.says.get("expect") in FINISHED, example.name


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    site = Site()
    yield site
    site.close()


@pytest.fixture(scope="module")
def server(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"AOB_HTTP_ALLOW": f"127.0.0.1:{site.port}"}
    live = LiveServer(tmp_path_factory.mktemp("docs") / "data", env=env).start()
    yield live
    live.stop()


def run_example(server: LiveServer, site: Site, example: Example) -> dict[str, Any]:
    """Validate and run the example as it says; the finished run."""
    with server.client() as client:
        checked = client.post("/api/v1/workflows/validate", json={"definition": example.definition})
        assert checked.json() == {"valid": True}, checked.text
    inputs = json.loads(example.says.get("inputs", "{}"))
    if ".inputs.base_url" in json.dumps(example.definition):
        inputs["base_url"] = site.url
    run_id = server.submit(example.definition, inputs)
    if "decide" in example.says:
        node_id, decision = example.words("decide")
        decide(server, run_id, node_id, decision)
    if example.says.get("cancel") == "when waiting":
        server.wait_status(run_id, ("waiting",))
        server.cancel(run_id)
    return server.wait_finished(run_id, timeout=30)


def decide(server: LiveServer, run_id: str, node_id: str, decision: str) -> None:
    with server.client() as client:

        def asked() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = client.get(
                "/api/v1/approvals", params={"run_id": run_id}
            ).json()["items"]
            return [a for a in items if a["node_id"] == node_id]

        [approval] = eventually(asked, f"an approval for {node_id}")
        response = client.post(
            f"/api/v1/approvals/{approval['approval_id']}/decide",
            json={"decision": decision, "comments": "from the docs"},
            headers={"X-Aob-Actor": "docs"},
        )
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: f"{e.page}:{e.name}")
def test_the_example_does_what_its_page_says(
    server: LiveServer, site: Site, example: Example
) -> None:
    run = run_example(server, site, example)
    says = example.says
    assert run["status"] == says["expect"], run.get("error")
    nodes = {n["node_id"]: n["status"] for n in run["nodes"]}
    for node_id in example.words("skipped"):
        assert nodes.get(node_id) == "skipped", (node_id, nodes)
    for node_id in example.words("ran"):
        assert nodes.get(node_id) == "completed", (node_id, nodes)
    if "output" in says:
        assert run["output"] == json.loads(says["output"])
    if "error" in says:
        texts = [text.strip() for text in says["error"].split(" | ")]
        assert any(text in (run.get("error") or "") for text in texts), run.get("error")
    types = {e["type"] for e in server.events(run["run_id"])}
    for event_type in example.words("events"):
        assert event_type in types, (event_type, sorted(types))
    if "requests" in says:
        path, count = example.words("requests")
        assert site.requests[path] == int(count)


# --- the pages themselves ---------------------------------------------------------------

REPO = DOCS.parent
PAGES = ["concepts.md", "semantics.md", "security.md", "operations.md", "architecture.md"]
# Variables the CLI reads (not server settings).
CLI_VARIABLES = {"AOB_SERVER", "AOB_TOKEN", "AOB_ACTOR", "AOB_CONFIG", "AOB_DEBUG"}


def test_the_readme_lists_every_page_and_points_nowhere_outside() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for page in [*PAGES, "reference/nodes.md", "isolation.md", "deployment.md"]:
        assert f"(docs/{page})" in readme, page
    assert "../" not in "".join(re.findall(r"\]\(([^)]+)\)", readme))
    assert "DESIGN.md" not in readme


@pytest.mark.parametrize("page", PAGES)
def test_every_link_of_a_page_leads_to_a_file_in_the_repository(page: str) -> None:
    path = DOCS / page
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    assert links
    for link in links:
        target = (path.parent / link).resolve()
        assert target.exists(), link
        assert target.is_relative_to(REPO.resolve()), link


@pytest.mark.parametrize("page", PAGES)
def test_every_setting_a_page_names_exists(page: str) -> None:
    from tests.test_docs import CLASSES

    named = set(re.findall(r"\b(AOB_[A-Z0-9_]*[A-Z0-9])\b", (DOCS / page).read_text()))
    unknown = {
        variable
        for variable in named - CLI_VARIABLES
        if not any(
            variable.startswith(prefix)
            and variable.removeprefix(prefix).lower() in cls.model_fields
            for prefix, cls in CLASSES
        )
    }
    assert unknown == set()
