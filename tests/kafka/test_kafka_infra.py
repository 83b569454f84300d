"""`python -m aob.infra.kafka`: a broker that starts, stops cleanly and keeps its data."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from aob.events.log.kafka import KafkaEventLog
from aob.events.log.port import Append, Record, TopicPartition
from aob.infra.kafka import DEFAULT_VERSION, KafkaBroker, fetch_jars, find_java, free_port

TOPIC, GROUP = "infra.restart", "infra.group"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aob.infra.kafka", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def write(bootstrap: str) -> list[Record]:
    async with await KafkaEventLog.open(bootstrap) as log:
        await log.create_topic(TOPIC, 2)
        records = await log.append([Append(TOPIC, f"run-{i}", b"%d" % i) for i in range(6)])
        await log.commit(GROUP, {TopicPartition(TOPIC, 0): 2})
        return records


async def read_back(bootstrap: str) -> tuple[list[Record], dict[int, int]]:
    async with await KafkaEventLog.open(bootstrap) as log:
        records = [r for p in range(2) for r in await log.read(TOPIC, p, 0)]
        return records, await log.committed(GROUP, TOPIC)


@pytest.mark.slow
def test_the_broker_stops_cleanly_and_restarts_with_its_data(tmp_path: Path) -> None:
    home = str(tmp_path / "broker")
    started = cli("start", "--dir", home)
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    assert bootstrap.startswith("127.0.0.1:")
    try:
        status = cli("status", "--dir", home)
        assert (status.returncode, status.stdout.strip()) == (0, bootstrap)
        written = asyncio.run(write(bootstrap))

        stopped = cli("stop", "--dir", home)
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped" in stopped.stderr
        assert cli("status", "--dir", home).returncode == 1
        assert "Shutdown complete" in (tmp_path / "broker" / "broker.log").read_text()

        restarted = cli("start", "--dir", home)
        assert restarted.returncode == 0, restarted.stderr
        assert restarted.stdout.strip() == bootstrap  # its port again: clients keep working
        records, committed = asyncio.run(read_back(bootstrap))
        key = lambda r: (r.partition, r.offset)  # noqa: E731
        assert sorted(records, key=key) == sorted(written, key=key)
        assert committed == {0: 2, 1: 0}
    finally:
        cli("stop", "--dir", home, "--remove")
    assert not (tmp_path / "broker").exists()


def test_stopping_a_broker_that_never_started_says_so(tmp_path: Path) -> None:
    result = cli("stop", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert "no Kafka broker was started in" in result.stderr


def test_storage_formats_with_any_cluster_id(tmp_path: Path) -> None:
    """Cluster ids are random base64: one in 64 starts with "-", which the storage
    tool must not take for an option."""
    broker = KafkaBroker(tmp_path, DEFAULT_VERSION, free_port(), free_port(), 0, "-" + "A" * 21)
    libs = fetch_jars()
    broker._write_config(libs)
    broker._format(find_java(), libs)
    meta = (broker.data_dir / "meta.properties").read_text()
    assert "cluster.id=-AAAAAAAAAAAAAAAAAAAAA" in meta
