"""The embedded log under kill -9, reopening, and a second process."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from aob.events.log.port import Append, LogError, Record, TopicPartition
from aob.events.log.sqlite import SqliteEventLog

# Run by a child interpreter: 8 producers append one record at a time (so group commit
# batches them) and print each acknowledged position; a processor copies "in" to "out"
# with append_and_commit, printing each acknowledged commit. Runs until killed.
WRITER = """
import asyncio, sys
from aob.events.log.port import Append, TopicPartition
from aob.events.log.sqlite import SqliteEventLog

async def main(path):
    log = await SqliteEventLog.open(path)
    await log.create_topic("in", 4)
    await log.create_topic("out", 4)

    async def producer(w):
        j = 0
        while True:
            [rec] = await log.append([Append("in", f"k{w}-{j % 5}", f"{w}:{j}".encode())])
            print("ack", rec.partition, rec.offset, rec.value.decode(), flush=True)
            j += 1

    async def processor():
        pos = dict.fromkeys(range(4), 0)
        while True:
            for p in range(4):
                recs = await log.read("in", p, pos[p], 50)
                if recs:
                    pos[p] = recs[-1].offset + 1
                    out = [Append("out", r.key, r.value) for r in recs]
                    await log.append_and_commit(out, "proc", {TopicPartition("in", p): pos[p]})
                    print("commit", p, pos[p], flush=True)
            await log.wait_for_append(0.05)

    await asyncio.gather(*(producer(w) for w in range(8)), processor())

asyncio.run(main(sys.argv[1]))
"""

OPENER = """
import asyncio, sys
from aob.events.log.port import LogError
from aob.events.log.sqlite import SqliteEventLog

async def main(path):
    try:
        log = await SqliteEventLog.open(path)
    except LogError as exc:
        print("LogError:", exc)
        return
    await log.close()
    print("opened")

asyncio.run(main(sys.argv[1]))
"""


async def read_all(log: SqliteEventLog, topic: str, partition: int) -> list[Record]:
    out: list[Record] = []
    while batch := await log.read(topic, partition, len(out), max_records=1000):
        out.extend(batch)
    return out


def try_to_open(db: Path) -> str:
    """Run OPENER on `db` in another process; return what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", OPENER, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def run_writer_until_killed(db: Path, acks_wanted: int) -> list[str]:
    """Start WRITER, SIGKILL it once it acknowledged enough; return everything it printed."""
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        lines: list[str] = []
        acks = commits = 0
        while acks < acks_wanted or commits < 5:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"writer exited early ({proc.wait()}): {proc.stderr.read()}")
            lines.append(line)
            acks += line.startswith("ack ")
            commits += line.startswith("commit ")
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)  # what it printed before dying
        assert proc.returncode == -signal.SIGKILL
    return [line for line in lines + rest.splitlines(keepends=True) if line.endswith("\n")]


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    printed = run_writer_until_killed(db, acks_wanted=3000)

    acked: dict[tuple[int, int], bytes] = {}
    last_commit: dict[int, int] = defaultdict(int)
    for line in printed:
        kind, p, o, *rest = line.split()
        if kind == "ack":
            acked[int(p), int(o)] = rest[0].encode()
        else:
            last_commit[int(p)] = max(last_commit[int(p)], int(o))
    assert len(acked) >= 3000

    async with await SqliteEventLog.open(db) as log:
        stored = {p: await read_all(log, "in", p) for p in range(4)}
        # Dense, complete, no duplicates.
        assert await log.end_offsets("in") == {p: len(rs) for p, rs in stored.items()}
        for records in stored.values():
            assert [r.offset for r in records] == list(range(len(records)))
        values = [r.value for records in stored.values() for r in records]
        assert len(values) == len(set(values))
        # Every acknowledged record is there, where it was acknowledged.
        lost = [pos for pos in acked if pos[1] >= len(stored[pos[0]])]
        assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}"
        for (partition, offset), value in acked.items():
            assert stored[partition][offset].value == value

        # Every acknowledged commit is there (the processor's commits only move forward),
        # and "out" holds exactly the "in" records below the committed offsets: the
        # appends and the commit of each append_and_commit survived together.
        committed = await log.committed("proc", "in")
        expected_out: Counter[bytes] = Counter()
        for partition, records in stored.items():
            assert last_commit[partition] <= committed[partition] <= len(records)
            expected_out.update(r.value for r in records[: committed[partition]])
        out: Counter[bytes] = Counter()
        for partition in range(4):
            out.update(r.value for r in await read_all(log, "out", partition))
        assert out == expected_out
        assert sum(committed.values()) > 0

        # The reopened log carries on from the recovered end.
        ends = await log.end_offsets("in")
        [record] = await log.append([Append("in", "after", b"restart")])
        assert record.offset == ends[record.partition]


async def test_reopening_keeps_everything(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    async with await SqliteEventLog.open(db) as log:
        await log.create_topic("t", 3)
        appended = await log.append([Append("t", f"k{i}", str(i).encode()) for i in range(30)])
        await log.commit("g", {TopicPartition("t", 1): 4})
        ends = await log.end_offsets("t")

    async with await SqliteEventLog.open(db, synchronous="FULL") as log:
        assert log.synchronous == "FULL"
        assert await log.partitions("t") == 3
        assert await log.end_offsets("t") == ends
        assert await log.committed("g", "t") == {0: 0, 1: 4, 2: 0}
        stored = [r for p in range(3) for r in await read_all(log, "t", p)]
        assert sorted(stored, key=lambda r: int(r.value)) == appended


async def test_a_second_process_gets_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    async with await SqliteEventLog.open(db):
        printed = await asyncio.to_thread(try_to_open, db)
        assert printed.startswith("LogError:")
        assert "already open" in printed
        assert "single-process" in printed
        # A second open in this process is refused too.
        with pytest.raises(LogError, match="already open"):
            await SqliteEventLog.open(db)

    # Once closed, another process may open it.
    assert (await asyncio.to_thread(try_to_open, db)).strip() == "opened"


async def test_a_closed_log_refuses_work(tmp_path: Path) -> None:
    log = await SqliteEventLog.open(tmp_path / "events.db")
    await log.create_topic("t", 1)
    await log.close()
    await log.close()  # idempotent
    with pytest.raises(LogError, match="closed"):
        await log.append([Append("t", "k", b"v")])
    with pytest.raises(LogError, match="closed"):
        await log.read("t", 0, 0)


async def test_synchronous_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await SqliteEventLog.open(tmp_path / "events.db", synchronous="SOMETIMES")


async def test_an_unreadable_file_is_a_log_error(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LogError, match="cannot open"):
        await SqliteEventLog.open(db)


async def test_a_failed_transaction_leaves_no_trace(tmp_path: Path) -> None:
    async with await SqliteEventLog.open(tmp_path / "events.db") as log:
        await log.create_topic("in", 1)
        await log.create_topic("out", 2)
        # Make the offset write fail inside the transaction, after the records' inserts.
        conn = log._conn
        assert conn is not None
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON group_offsets WHEN NEW.\"group\" = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
        with pytest.raises(LogError, match="boom"):
            await log.append_and_commit(
                [Append("out", "k", b"lost")], "boom", {TopicPartition("in", 0): 1}
            )
        assert await log.end_offsets("out") == {0: 0, 1: 0}
        assert await log.committed("boom", "in") == {0: 0}
        assert await log.read("out", 0, 0) == await log.read("out", 1, 0) == []

        # The log carries on, offsets still dense.
        [record] = await log.append([Append("out", "k", b"kept")])
        assert record.offset == 0
        assert await log.read("out", record.partition, 0) == [record]


async def test_a_log_of_schema_1_opens_with_its_offsets(tmp_path: Path) -> None:
    """Schema 2 added the records a commit names as finished past its offset; a file
    written by schema 1 keeps its offsets, and its commits name nothing finished."""
    path = tmp_path / "events.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL)
            WITHOUT ROWID;
        CREATE TABLE records (topic TEXT NOT NULL, "partition" INTEGER NOT NULL,
            "offset" INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
            timestamp INTEGER NOT NULL, PRIMARY KEY (topic, "partition", "offset"));
        CREATE TABLE group_offsets ("group" TEXT NOT NULL, topic TEXT NOT NULL,
            "partition" INTEGER NOT NULL, "offset" INTEGER NOT NULL,
            PRIMARY KEY ("group", topic, "partition")) WITHOUT ROWID;
        INSERT INTO topics VALUES ('t', 1);
        INSERT INTO group_offsets VALUES ('g', 't', 0, 7);
        PRAGMA user_version = 1;
        """
    )
    conn.close()
    log = await SqliteEventLog.open(path)
    try:
        assert await log.committed("g", "t") == {0: 7}
        assert await log.committed_done("g", "t") == {0: ""}
        await log.fenced_commit([], "g", {TopicPartition("t", 0): 9}, lambda: True, {})
        assert await log.committed("g", "t") == {0: 9}
    finally:
        await log.close()
