"""Live agent output in a cluster: a delta the workers process produces reaches the
subscribers of the api and fanout processes through the Kafka topic aob.deltas (short
retention.ms, Kafka's own), and a cursor from one API process resumes on another."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.cluster_services.conftest import Cluster, cluster_env
from tests.console.live import ScriptedLlmProcess, start_scripted_llm
from tests.fixtures.postgres import PostgresSchemas

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

GATE = "cluster"
PIECES = ["one ", "two ", "three ", "four ", "five."]
SCRIPT = {
    "conversations": [{"match": "count to five", "turns": [{"chunks": PIECES, "gate": GATE}]}]
}
FLOW = {
    "name": "live",
    "nodes": [{"id": "count", "type": "agent", "config": {"prompt": "count to five"}}],
}


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedLlmProcess]:
    process = start_scripted_llm(SCRIPT, tmp_path_factory.mktemp("llm") / "script.json")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def agents_cluster(
    kafka_bootstrap: str,
    postgres_dsn: str,
    tmp_path_factory: pytest.TempPathFactory,
    llm: ScriptedLlmProcess,
) -> Iterator[Cluster]:
    schemas = PostgresSchemas(postgres_dsn)
    directory = tmp_path_factory.mktemp("live-services")
    env = cluster_env(kafka_bootstrap, schemas.create(), directory / "data")
    env.update(AOB_LLM_BASE_URL=llm.base_url, AOB_DELTA_RETENTION_MS="600000")
    running = Cluster(directory, env)
    try:
        running.start("api", "coordinator", "projector", "workers", "fanout")
        yield running
    finally:
        running.stop()
        schemas.drop_all()


def _release(llm: ScriptedLlmProcess, chunks: int | None = None) -> None:
    body = {} if chunks is None else {"chunks": chunks}
    httpx.post(f"{llm.base_url}/_gates/{GATE}", json=body, timeout=10).raise_for_status()


def _read(
    base_url: str, run_id: str, *, stop_at_text: str | None = None, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """The stream's messages (with deltas) until `end` or until their text is
    `stop_at_text` (pieces that arrive together are merged into one delta, so the text,
    not the number of deltas); and the last id."""
    messages: list[dict[str, Any]] = []
    last: str | None = None
    params: dict[str, str] = {"deltas": "true", "from": "start"}
    headers = {"Last-Event-ID": cursor} if cursor else {}
    with httpx.stream(
        "GET", f"{base_url}/api/v1/runs/{run_id}/stream", params=params, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "data" in fields:
                messages.append(json.loads(fields["data"]))
                last = fields.get("id", last)
                if messages[-1].get("event") == "end" or (
                    stop_at_text is not None and _text(messages) == stop_at_text
                ):
                    return messages, last
            fields = {}
    return messages, last


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["data"]["text"] for m in messages if m.get("kind") == "text")


def test_deltas_cross_processes_and_resume_on_another_api_process(
    agents_cluster: Cluster, llm: ScriptedLlmProcess
) -> None:
    api, fanout = agents_cluster.url("api"), agents_cluster.url("fanout")
    with httpx.Client(base_url=api, timeout=30) as client:
        response = client.post("/api/v1/runs", json={"definition": FLOW})
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]
        _release(llm, 2)
        first, cursor = _read(api, run_id, stop_at_text="one two ")
        assert _text(first) == "one two "
        held = client.get(f"/api/v1/runs/{run_id}").json()
        assert held["status"] == "running", (held.get("error"), held["nodes"])
        assert cursor is not None
        assert cursor.split(":")[1] == "k"  # Kafka offsets
        _release(llm)
        second, _ = _read(fanout, run_id, cursor=cursor)  # another process resumes
        run = client.get(f"/api/v1/runs/{run_id}").json()
        assert _text(first) + _text(second) == "".join(PIECES), (run.get("error"), run["nodes"])
        positions = [m["position"] for m in first + second if m.get("event") == "llm_delta"]
        assert positions == sorted(set(positions))
        assert second[-1]["event"] == "end"
        assert second[-1]["status"] == "completed"
        # The durable log has the outcome and the usage, no delta.
        events = client.get(f"/api/v1/runs/{run_id}/events", params={"source": "log"}).json()
        types = [e["type"] for e in events["items"]]
        assert "AgentUsageRecorded" in types
        assert not [t for t in types if "delta" in t.lower()]
    prefix = agents_cluster.env["AOB_TOPIC_PREFIX"]
    config = asyncio.run(
        _topic_config(agents_cluster.env["AOB_KAFKA_BOOTSTRAP"], f"{prefix}aob.deltas")
    )
    assert config["retention.ms"] == "600000"
    assert config["segment.ms"] == "600000"


async def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)]
        )
    finally:
        await admin.close()
    (resource,) = response.resources
    return {entry[0]: entry[1] for entry in resource[4]}
