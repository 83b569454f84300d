"""Blobs in a cluster: every process reads a blob any other process stored, whatever
its own data dir holds."""

from __future__ import annotations

import uuid
from pathlib import Path

from pydantic import SecretStr

from aob.events.blobs import BlobStore, FileBlobStore
from aob.platform.engine import Engine
from aob.platform.settings import Settings


def cluster_settings(bootstrap: str, dsn: str, data_dir: Path, prefix: str) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        database_url=SecretStr(dsn),
        data_dir=data_dir,
        topic_prefix=prefix,
        workers=["agent"],
        llm_base_url="http://127.0.0.1:9/v1",  # never called: the agent only stores here
    )


async def test_an_agent_blob_stored_by_one_process_is_read_by_another(
    kafka_bootstrap: str, postgres_schema: str, tmp_path: Path
) -> None:
    prefix = f"blobs.{uuid.uuid4().hex[:12]}."
    worker = await Engine.open(
        cluster_settings(kafka_bootstrap, postgres_schema, tmp_path / "worker", prefix), "workers"
    )
    api = await Engine.open(
        cluster_settings(kafka_bootstrap, postgres_schema, tmp_path / "api", prefix), "api"
    )
    try:
        assert worker.agent is not None
        agent_blobs: BlobStore | None = worker.agent.blobs
        assert agent_blobs is not None
        answer = ('"' + "large answer " * 8000 + '"').encode()
        ref = await agent_blobs.put(answer)
        assert await api.blobs.get(ref) == answer
        # Nothing went to the worker's own directory: the API has no access to that.
        assert not (tmp_path / "worker" / "blobs").exists()
    finally:
        await worker.stop()
        await api.stop()


async def test_the_embedded_default_keeps_blobs_in_files(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, workers=["agent"])
    engine = await Engine.open(settings, "dev")
    try:
        assert isinstance(engine.blobs, FileBlobStore)
        assert engine.agent is not None
        assert engine.agent.blobs is engine.blobs
        ref = await engine.blobs.put(b"kept in a file")
        assert (tmp_path / "blobs" / ref[7:9] / ref[9:]).read_bytes() == b"kept in a file"
    finally:
        await engine.stop()
