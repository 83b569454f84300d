"""The embedded engine behind the real API, with what the poison tests need: raw
records appended to a topic, the dead letters listed through the admin API, and a
group's committed offsets."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from aob.events.codec import MARKER
from aob.events.log.port import Append, Record
from aob.events.types import RUNS_TOPIC
from aob.platform.settings import Settings
from tests.support.api import Aob, running

# Garbage, and a record in the envelope's framing under a fingerprint nobody knows (a
# newer writer during a rolling upgrade).
GARBAGE = b"\x00not an aob event\xff"
UNKNOWN_FINGERPRINT = MARKER + bytes.fromhex("0123456789abcdef") + b"\x02\x04future"

NORMAL = {
    "name": "normal",
    "nodes": [{"id": "a", "type": "transform", "config": {"expr": ".inputs.x + 1"}}],
    "output": ".nodes.a",
}
# A run that stays live: its gate waits for a human.
WAITING = {
    "name": "waiting",
    "nodes": [{"id": "gate", "type": "hitl", "config": {"message": "go?"}}],
}


class PoisonAob(Aob):
    async def append(self, topic: str, key: str, value: bytes) -> Record:
        [record] = await self.engine.log.append([Append(topic, key, value)])
        return record

    async def dead_letters(self) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/admin/deadletters", params={"limit": 500})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def letters_of(self, record: Record) -> list[dict[str, Any]]:
        return [
            item
            for item in await self.dead_letters()
            if item["source"]
            == {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "key": record.key,
            }
        ]

    async def committed(self, group: str, record: Record) -> int:
        return (await self.engine.log.committed(group, record.topic)).get(record.partition, 0)

    async def waiting_run(self) -> str:
        run_id = await self.submit(WAITING)
        await self.until(run_id, lambda run: run["status"] == "waiting")
        return run_id

    async def normal_run_completes(self) -> None:
        run = await self.finished(await self.submit(NORMAL, {"x": 41}))
        assert (run["status"], run["output"]) == ("completed", 42), run

    async def healthy(self) -> bool:
        return (await self.client.get("/health")).status_code == 200


def engine(data_dir: Path, **settings: Any) -> AbstractAsyncContextManager[PoisonAob]:
    return running(Settings(data_dir=data_dir, **settings), PoisonAob)


__all__ = ["GARBAGE", "RUNS_TOPIC", "UNKNOWN_FINGERPRINT", "PoisonAob", "engine"]
