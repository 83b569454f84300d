"""The Kafka event log: the `EventLog` port over an Apache Kafka cluster (aiokafka).

Design:

* Appends go through one idempotent producer (`acks=all`, `enable_idempotence`): a
  retried batch is never written twice, and one partition's records keep their order.
  The producer's default partitioner hashes the UTF-8 key with murmur2, as Kafka's
  Java client does, so a record lands where `aob.events.partitioner.partition_for`
  says (a test holds the two together).
* Topics are created with the admin client, keeping every record
  (`retention.ms=-1`): the log is the source of truth. Replication defaults to
  min(3, brokers in the cluster).
* Reads use one consumer without a group: the partition is assigned, placed with
  `seek`, fetched with `getmany`, and paused again, so no partition is fetched in
  the background while nobody reads it.
* Offsets are committed to Kafka's `__consumer_offsets` by a consumer carrying the
  group's id that never joins the group (manual assignment, generation -1): Kafka's
  "simple consumer group". They are read back stable (`kafka_offsets`: OffsetFetch
  v7 with KIP-447's `require_stable`), never from before a transaction that commits
  them is applied.
* Consumer groups (`join`) are Kafka's: each member is an aiokafka consumer that
  `subscribe`s with a rebalance listener (RoundRobin assignor, Kafka's classic eager
  protocol: aiokafka has no cooperative rebalancing). Revocation is awaited before
  the member rejoins, so what it commits in `on_revoked` is there when the new owner
  fetches the committed offsets. aiokafka runs the callbacks in its background while
  the host polls on: partitions in a callback are paused and skipped by `poll`, so
  nothing of a gained partition is read (nor its position moved) before its
  `on_assigned` has returned, nor of a lost one while `on_revoked` settles it.
  Heartbeats (`session_timeout`) run in aiokafka's
  background; a member that does not poll for `poll_timeout` leaves the group.
* Fencing uses Kafka transactions, one transactional producer per owned partition,
  its `transactional.id` derived from (group, topic, partition) (Kafka's KIP-98
  pattern; aiokafka 0.14 cannot send the consumer's generation with the offsets, as
  KIP-447 would). A member's commit for a partition is one transaction: its appends
  and its offset (`send_offsets_to_transaction`), the offset's metadata naming the
  records finished past it (`done_ahead`). A new owner starts that partition's
  producer before it reads the committed offset: `init_transactions` bumps the
  producer epoch, aborts the old owner's open transaction and fences its producer,
  whose later commits fail (`Fenced`). Every reader of this log (the group members,
  the reader, the watcher) reads at `isolation_level=read_committed`, so an aborted
  append is never seen. Transactions cost a few round trips and a commit marker (an
  offset) each: commits of several partitions run concurrently, one transaction each.
  A member killed mid-transaction holds read_committed readers of what it wrote to
  until the next owner's init ends that transaction (about the session timeout).
  A member fenced while the group still counts it as the owner (the broker aborted
  a transaction past its timeout) rejoins, so that a rebalance settles the owner.
  A transaction failing otherwise may have broken its producer (aiokafka's sender
  ends when it loses the transaction coordinator, as in a broker restart): the
  producer is replaced and the transaction tried again, once a read_committed search
  from its timestamp does not find its first record (the failed one was aborted).
  Not told within the request timeout, the commit raises `CommitUnknown`: its host
  stops rather than write again what may be written already.
* `append_and_commit` appends, then commits: at-least-once, as the port allows. A
  crash between the two replays the input, which the idempotent folds absorb.
  Every topic, partition and offset is checked before anything is sent, so a call
  the log cannot take appends nothing; a broker failure midway can still leave part
  of a batch appended (Kafka has no atomic multi-partition write without
  transactions, which this adapter does not use).
* `wait_for_append` wakes at once on this process's appends (a wait for some topics,
  on appends to those only). Other processes' appends are noticed by a watcher: a
  second group-less consumer that follows every partition whose end this log was
  asked for (`end_offsets`, or a read at the end), with a long-poll fetch the broker
  answers as soon as records arrive. It fetches at most one batch per partition and
  then skips to the high watermark, so it costs little; `poll_interval` bounds how
  long the broker holds its fetch, hence how long a newly watched partition waits to
  be armed.
* aiokafka's exceptions stay in this module: they leave it as `LogError` (or
  `UnknownTopic`), with the cause chained.

Use it from one event loop. Topics are assumed never to be deleted or to shrink
(Kafka cannot shrink them); partition counts are cached once seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import aiokafka.producer.sender
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TopicAlreadyExistsError,
    TransactionCoordinatorFenced,
    UnknownTopicOrPartitionError,
)

from aob.events.log.done_ahead import DoneAhead, carried, read_past
from aob.events.log.done_ahead import decode as decode_done
from aob.events.log.kafka_offsets import UnstableOffsetCommit, fetch_stable_offsets
from aob.events.log.port import (
    POLL_TIMEOUT,
    SESSION_TIMEOUT,
    Append,
    CommitUnknown,
    Fenced,
    LogError,
    RebalanceListener,
    Record,
    TopicPartition,
    UnknownTopic,
)
from aob.events.partitioner import partition_for

__all__ = ["KafkaEventLog"]

log = logging.getLogger(__name__)

_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's rule
_KEEP_FOREVER: Final = {"retention.ms": "-1"}
_MAX_REPLICATION: Final = 3
_MAX_READ_ASSIGNMENT: Final = 512  # partitions the reader keeps positioned
_MAX_COMMITTERS: Final = 64  # groups with an open committer
_RETRY_PAUSE: Final = 0.05
_UNSTABLE_PAUSE: Final = 0.002  # between reads of offsets a transaction holds pending
_LOG_APPEND_TIME: Final = 1  # RecordMetadata.timestamp_type
_READ_COMMITTED: Final = "read_committed"  # aborted (fenced) appends are never read
_FENCED_ERRORS: Final = (ProducerFenced, InvalidProducerEpoch, TransactionCoordinatorFenced)
# A read that finds nothing (only transaction markers or aborted records, or records
# of a transaction still open) looks again this soon: aiokafka's getmany waits out its
# whole timeout when a fetch comes back empty, even if the next one would not.
_MARKER_WAIT_MS: Final = 20
# The broker holds a read_committed fetch that finds nothing below the last stable
# offset for fetch.max.wait, and a commit does not end the wait: with Kafka's 500 ms, a
# transactional write was read back 500 ms late.
_READ_WAIT_MS: Final = 10
_STOP_WAIT: Final = 5.0  # seconds a dropped producer may take to stop
_BROKEN_PAUSE: Final = 0.5  # between attempts to replace a broken producer
# How much earlier than this host's clock a broker may stamp a record (LogAppendTime
# topics): where the search for a failed transaction's records starts.
_CLOCK_SKEW_MS: Final = 10_000
# A transactional producer's next transaction starts while the broker still writes the
# previous one's commit markers (about 5 ms on one broker): the broker answers
# CONCURRENT_TRANSACTIONS and the client tries again after a pause. aiokafka waits 20
# ms before adding the first partition (its BACKOFF_OVERRIDE, KAFKA-5477) and
# `retry_backoff_ms` (100 ms by default) before adding the group's offsets, which
# made back-to-back transactions of one producer cost 17 ms each instead of 5.5 (one
# broker, 1 record and offsets each).
_TRANSACTION_RETRY: Final = 0.002  # s
_TRANSACTION_RETRY_MS: Final = 20
aiokafka.producer.sender.BACKOFF_OVERRIDE = _TRANSACTION_RETRY  # no setting exists for it


class KafkaEventLog:
    """The cluster `EventLog`: topics, partitions and group offsets kept by Kafka.

    Create it with `await KafkaEventLog.open("host:port,...")` and close it with
    `await log.close()` (or use it as an async context manager).
    """

    def __init__(
        self,
        bootstrap: str,
        admin: AIOKafkaAdminClient,
        producer: AIOKafkaProducer,
        reader: AIOKafkaConsumer,
        watcher: AIOKafkaConsumer,
        *,
        client_id: str,
        replication_factor: int,
        topic_config: Mapping[str, str],
        request_timeout: float,
    ) -> None:
        """Internal: use `KafkaEventLog.open`."""
        self._bootstrap = bootstrap
        self._admin = admin
        self._producer = producer
        self._reader = reader
        self._watcher = watcher
        self._client_id = client_id
        self._replication_factor = replication_factor
        self._topic_config = dict(topic_config)
        self._request_timeout = request_timeout
        self._closed = False
        self._partitions: dict[str, int] = {}
        self._read_lock = asyncio.Lock()
        self._read_assignment: set[KafkaPartition] = set()
        self._read_positions: dict[KafkaPartition, int] = {}
        self._watching: set[KafkaPartition] = set()  # followed by the watcher
        self._watch_task: asyncio.Task[None] | None = None
        # The highest end offset seen per partition (ends only grow): a read below it
        # fetches at once, with no end-offsets round trip first.
        self._known_ends: dict[KafkaPartition, int] = {}
        # Per partition, a (read offset, end) pair found to hold no record to read.
        self._skipped: dict[KafkaPartition, tuple[int, int]] = {}
        self._committers: OrderedDict[str, AIOKafkaConsumer] = OrderedDict()
        self._members: weakref.WeakSet[KafkaMember] = weakref.WeakSet()  # closed with the log
        self._committer_lock = asyncio.Lock()
        self._appended = asyncio.Event()
        # Wake-ups so far, and per task the count when it began reading since its last
        # wait: a wake-up in between (the watcher runs while a caller awaits its reads)
        # must not be lost, so such a wait returns at once.
        self._wakes = 0
        # Per topic, the wake-up that last concerned it (`_wakes` then), and that of the
        # last wake-up of every topic; and the waiters on some topics.
        self._last_wake: dict[str, int] = {}
        self._last_wake_all = 0
        self._topic_waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._read_since: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = (
            weakref.WeakKeyDictionary()
        )

    # --- lifecycle -------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        bootstrap: str,
        *,
        client_id: str = "aob",
        replication_factor: int | None = None,
        topic_config: Mapping[str, str] | None = None,
        poll_interval: float = 0.1,
        request_timeout: float = 30.0,
    ) -> KafkaEventLog:
        """Connect to the cluster at `bootstrap` ("host:port[,host:port...]").

        `replication_factor` applies to topics this log creates (default: min(3,
        brokers)); `topic_config` replaces their default settings (`retention.ms=-1`).
        `poll_interval` is the longest the broker holds the watcher's fetch (see above).
        Raises `LogError` if the cluster cannot be reached.
        """
        timeout_ms = int(request_timeout * 1000)
        common: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "request_timeout_ms": timeout_ms,
        }
        groupless: dict[str, Any] = {
            **common,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "none",
            "isolation_level": _READ_COMMITTED,
        }
        makers: list[Callable[[], Any]] = [
            lambda: AIOKafkaAdminClient(**common),
            lambda: AIOKafkaProducer(**common, acks="all", enable_idempotence=True),
            lambda: AIOKafkaConsumer(**groupless, fetch_max_wait_ms=_READ_WAIT_MS),
            lambda: AIOKafkaConsumer(
                **groupless,
                fetch_max_wait_ms=max(1, int(poll_interval * 1000)),
                max_partition_fetch_bytes=1,  # one batch per partition: it only looks
            ),
        ]
        clients: list[Any] = []
        try:
            with _translated(f"cannot connect to Kafka at {bootstrap}"):
                for make in makers:  # made one by one: one never started cannot be closed
                    clients.append(make())
                    await clients[-1].start()
                admin, producer, reader, watcher = clients
                if replication_factor is None:
                    brokers = (await admin.describe_cluster())["brokers"]
                    replication_factor = max(1, min(_MAX_REPLICATION, len(brokers)))
        except BaseException:
            for client in reversed(clients):
                with contextlib.suppress(Exception):
                    await _stop(client)
            raise
        return cls(
            bootstrap,
            admin,
            producer,
            reader,
            watcher,
            client_id=client_id,
            replication_factor=replication_factor,
            topic_config=_KEEP_FOREVER if topic_config is None else topic_config,
            request_timeout=request_timeout,
        )

    async def close(self) -> None:
        """Flush pending appends and disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake()  # wake waiters: their next call reports the closed log
        for member in list(self._members):
            await member._stop()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        clients: list[Any] = [
            self._producer,
            *self._committers.values(),
            self._watcher,
            self._reader,
            self._admin,
        ]
        self._committers.clear()
        errors: list[BaseException] = []
        for client in clients:
            try:
                await _stop(client)
            except Exception as e:  # keep closing the others
                errors.append(e)
        if errors:
            first = errors[0]
            raise LogError(f"closing the Kafka log at {self._bootstrap}: {first}") from first

    async def __aenter__(self) -> KafkaEventLog:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def bootstrap(self) -> str:
        return self._bootstrap

    # --- topics ------------------------------------------------------------------------

    async def create_topic(self, topic: str, partitions: int) -> None:
        self._check_open()
        if topic in self._partitions:
            return
        _check_topic_name(topic)
        if partitions <= 0:
            raise LogError(f"a topic needs at least one partition, got {partitions}")
        new = NewTopic(
            topic, partitions, self._replication_factor, topic_configs=self._topic_config
        )
        with _translated(f"cannot create topic {topic!r}"):
            response = await self._admin.create_topics([new])
        for name, code, message, *_ in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                raise LogError(f"cannot create topic {name!r}: {message} (error {code})")
        await self._await_leaders(topic)

    async def partitions(self, topic: str) -> int:
        self._check_open()
        return await self._partition_count(topic)

    # --- writes --------------------------------------------------------------------------

    async def append(self, records: Sequence[Append]) -> list[Record]:
        self._check_open()
        await self._check_topics(record.topic for record in records)
        return await self._produce(records)

    async def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        self._check_open()
        await self._commit(group, await self._commits(offsets))

    async def append_and_commit(
        self, records: Sequence[Append], group: str, offsets: Mapping[TopicPartition, int]
    ) -> list[Record]:
        self._check_open()
        # Check everything first: a call the log cannot take appends nothing.
        await self._check_topics(record.topic for record in records)
        commits = await self._commits(offsets)
        appended = await self._produce(records)
        await self._commit(group, commits)
        return appended

    # --- reads ---------------------------------------------------------------------------

    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 500
    ) -> list[Record]:
        self._check_open()
        await self._check_partition(topic, partition)
        if offset < 0:
            raise LogError(f"cannot read {topic}[{partition}] from negative offset {offset}")
        if max_records <= 0:
            return []
        self._note_reading()
        tp = KafkaPartition(topic, partition)
        async with self._read_lock:
            with _translated(f"cannot read {topic}[{partition}]"):
                return await self._fetch(tp, offset, max_records)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        self._check_open()
        self._note_reading()
        tps = [KafkaPartition(topic, p) for p in range(await self._partition_count(topic))]
        with _translated(f"cannot read the end offsets of {topic!r}"):
            ends = await self._reader.end_offsets(tps)
        for tp, end in ends.items():
            self._learn_end(tp, end)
        self._watch(ends)
        # The watcher may have seen more meanwhile: report that rather than lose it.
        return {tp.partition: self._known_ends.get(tp, 0) for tp in sorted(ends)}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        self._check_open()
        count = await self._partition_count(topic)
        tps = [KafkaPartition(topic, p) for p in range(count)]
        offsets = dict.fromkeys(range(count), 0)
        stored = await self._committed_offsets(group, tps)
        for tp, meta in stored.items():
            if tp.topic == topic and meta.offset >= 0:  # -1: nothing committed
                offsets[tp.partition] = meta.offset
        return offsets

    async def _committed_offsets(
        self, group: str, partitions: list[KafkaPartition]
    ) -> dict[KafkaPartition, Any]:
        """The group's committed offsets of `partitions`, with their metadata (which the
        consumer's own `committed` drops); stable: a transaction's offsets pending in
        the group coordinator are waited for, not read around (`kafka_offsets`)."""
        if not partitions:
            return {}
        with _translated(f"cannot read the offsets of group {group!r}"):
            stored: dict[KafkaPartition, Any] = await self._retrying(
                lambda: self._stable_offsets(group, partitions)
            )
        return stored

    async def _stable_offsets(
        self, group: str, partitions: list[KafkaPartition]
    ) -> dict[KafkaPartition, Any]:
        """A stable read; partitions a transaction holds pending are asked again at once,
        alone: a member committing back to back leaves gaps of a few milliseconds
        between its transactions, which reads of every partition together every
        `_RETRY_PAUSE` kept missing (under full load one took up to 0.8 s)."""
        deadline = asyncio.get_running_loop().time() + self._request_timeout
        found, pending = await fetch_stable_offsets(self._admin, group, partitions)
        while pending:
            if asyncio.get_running_loop().time() > deadline:
                raise UnstableOffsetCommit(
                    f"group {group!r}: a transaction's offsets of {sorted(pending)} stay pending"
                )
            await asyncio.sleep(_UNSTABLE_PAUSE)
            more, pending = await fetch_stable_offsets(self._admin, group, sorted(pending))
            found.update(more)
        return found

    async def wait_for_append(self, timeout: float, topics: Collection[str] | None = None) -> None:
        self._check_open()
        task = asyncio.current_task()
        began = self._read_since.pop(task, None) if task is not None else None
        if began is not None and self._woken_since(began, topics):
            return  # something was appended while this caller was reading
        if topics is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, timeout)):
                    await self._appended.wait()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for topic in topics:
            self._topic_waiters.setdefault(topic, set()).add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, timeout)):
                    await waiter
        finally:
            for topic in topics:
                waiters = self._topic_waiters.get(topic)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._topic_waiters[topic]

    def _woken_since(self, began: int, topics: Collection[str] | None) -> bool:
        if topics is None:
            return began < self._wakes
        return began < self._last_wake_all or any(
            began < self._last_wake.get(topic, 0) for topic in topics
        )

    async def join(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener,
        *,
        session_timeout: float = SESSION_TIMEOUT,
        poll_timeout: float = POLL_TIMEOUT,
    ) -> KafkaMember:
        self._check_open()
        await self._check_topics(topics)
        member = KafkaMember(
            self,
            group,
            tuple(topics),
            listener,
            session_timeout=session_timeout,
            poll_timeout=poll_timeout,
        )
        self._members.add(member)
        await member.start()
        return member

    def _group_consumer(
        self, group: str, session_timeout: float, poll_timeout: float
    ) -> AIOKafkaConsumer:
        session_ms = int(session_timeout * 1000)
        return AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=max(int(self._request_timeout * 1000), session_ms + 1000),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=_READ_COMMITTED,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 3),
            max_poll_interval_ms=int(poll_timeout * 1000),
            # As Java's client: on_revoked may take up to a poll interval.
            rebalance_timeout_ms=int(poll_timeout * 1000),
            partition_assignment_strategy=(RoundRobinPartitionAssignor,),
        )

    def _transactional_producer(self, transactional_id: str) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=int(self._request_timeout * 1000),
            acks="all",
            enable_idempotence=True,
            transactional_id=transactional_id,
            retry_backoff_ms=_TRANSACTION_RETRY_MS,
        )

    # --- internals: topics -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"the Kafka log at {self._bootstrap} is closed")

    async def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = await self._describe(topic)
            if count is None:
                raise UnknownTopic(topic)
            self._partitions[topic] = count
        return count

    async def _describe(self, topic: str) -> int | None:
        """The topic's partition count, None if the cluster has no such topic.

        Asks for every topic's metadata: asking for one by name would create it on
        clusters that auto-create topics (Metadata v4+ defaults to allowing that).
        """
        if not _TOPIC_NAME.fullmatch(topic):
            return None
        with _translated(f"cannot describe topic {topic!r}"):
            topics = await self._admin.describe_topics()
        for entry in topics:
            if entry["topic"] == topic:
                return len(entry["partitions"]) if entry["error_code"] == 0 else None
        return None

    async def _await_leaders(self, topic: str) -> None:
        """Wait until every partition of a new topic has a leader, so the next append
        or read does not race the cluster's metadata."""
        deadline = asyncio.get_running_loop().time() + self._request_timeout
        while True:
            with _translated(f"cannot describe topic {topic!r}"):
                topics = await self._admin.describe_topics()
            entry = next((t for t in topics if t["topic"] == topic), None)
            if entry is not None and entry["error_code"] == 0:
                leaders = [p["leader"] for p in entry["partitions"]]
                if leaders and all(leader >= 0 for leader in leaders):
                    self._partitions[topic] = len(leaders)
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise LogError(f"topic {topic!r} has no leader for every partition yet")
            await asyncio.sleep(_RETRY_PAUSE)

    async def _check_topics(self, topics: Iterable[str]) -> None:
        for topic in set(topics):
            await self._partition_count(topic)

    async def _check_partition(self, topic: str, partition: int) -> None:
        count = await self._partition_count(topic)
        if not 0 <= partition < count:
            raise LogError(f"topic {topic!r} has no partition {partition} (it has {count})")

    # --- internals: writes -------------------------------------------------------------

    async def _produce(self, records: Sequence[Append]) -> list[Record]:
        if not records:
            return []
        # Stamped here: aiokafka reports the first record's time for a whole batch.
        timestamp = time.time_ns() // 1_000_000
        with _translated("cannot append to Kafka"):
            # `send` queues in call order; one partition's batches are sent in order.
            futures = [
                await self._producer.send(
                    r.topic,
                    r.value or None,  # b"": a tombstone, null for compaction to delete the key
                    key=r.key.encode("utf-8"),
                    timestamp_ms=timestamp,
                )
                for r in records
            ]
            results = await asyncio.gather(*futures, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        metas: list[Any] = [r for r in results if not isinstance(r, BaseException)]
        if failures:
            error = failures[0]
            if isinstance(error, KafkaError):
                what = f"cannot append to Kafka ({len(failures)} of {len(records)} failed)"
                raise _log_error(what, error) from error
            raise error
        for r, meta in zip(records, metas, strict=True):
            self._learn_end(KafkaPartition(r.topic, meta.partition), meta.offset + 1)
        self._wake({r.topic for r in records})
        return [
            Record(
                r.topic,
                meta.partition,
                meta.offset,
                r.key,
                r.value,
                # A topic with LogAppendTime stamps whole batches at the broker.
                meta.timestamp if meta.timestamp_type == _LOG_APPEND_TIME else timestamp,
            )
            for r, meta in zip(records, metas, strict=True)
        ]

    async def _commits(self, offsets: Mapping[TopicPartition, int]) -> dict[KafkaPartition, int]:
        commits: dict[KafkaPartition, int] = {}
        for tp, offset in offsets.items():
            await self._check_partition(tp.topic, tp.partition)
            if offset < 0:
                raise LogError(f"cannot commit negative offset {offset} for {tp}")
            commits[KafkaPartition(tp.topic, tp.partition)] = offset
        return commits

    async def _commit(self, group: str, commits: dict[KafkaPartition, int]) -> None:
        if not commits:
            return
        with _translated(f"cannot commit offsets of group {group!r}"):
            committer = await self._committer(group)
            _cover(committer, commits)
            await committer.commit(commits)

    async def _committer(self, group: str) -> AIOKafkaConsumer:
        """The consumer that commits for `group`: it carries the group's id but never
        joins the group, so its commits go in as a simple consumer group's."""
        async with self._committer_lock:
            committer = self._committers.get(group)
            if committer is not None:
                self._committers.move_to_end(group)
                return committer
            committer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                request_timeout_ms=int(self._request_timeout * 1000),
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="none",
            )
            await committer.start()
            self._committers[group] = committer
            if len(self._committers) > _MAX_COMMITTERS:
                _, oldest = self._committers.popitem(last=False)
                await _stop(oldest)
            return committer

    # --- internals: reads --------------------------------------------------------------

    async def _fetch(self, tp: KafkaPartition, offset: int, max_records: int) -> list[Record]:
        """Records of `tp` from `offset` on; empty only at its end. A stretch of only
        transaction markers and aborted records (a failed commit leaves one) is stepped
        over, and reading goes on after it: a caller reading to the end (`_holds`) must
        not take that stretch for the end while records follow it."""
        reader = self._reader
        while True:
            # Read committed: what lies below the last stable offset is decided.
            stable = reader.last_stable_offset(tp) if tp in self._read_assignment else None
            known = max(self._known_ends.get(tp, 0), stable or 0)
            if offset >= known:
                known = (await reader.end_offsets([tp]))[tp]
                self._learn_end(tp, known)
                if offset >= known:
                    self._watch({tp: known})
                    return []
            if self._skipped.get(tp) != (offset, known):  # else: nothing there, as last time
                self._position_reader(tp, offset)
                messages = await self._fetch_records(tp, offset, known, max_records)
                if messages:
                    self._read_positions[tp] = messages[-1].offset + 1
                    return [_record(tp, message) for message in messages]
            offset = known  # nothing committed below it: read on from there

    async def _fetch_records(
        self, tp: KafkaPartition, offset: int, end: int, max_records: int
    ) -> list[Any]:
        """Records from `offset` (where the reader is); none if only transaction
        markers or aborted records lie between it and `end`."""
        reader = self._reader
        deadline = asyncio.get_running_loop().time() + self._request_timeout
        reader.resume(tp)
        try:
            while True:
                batches = await reader.getmany(
                    tp, timeout_ms=_MARKER_WAIT_MS, max_records=max_records
                )
                messages: list[Any] = batches.get(tp, [])
                if messages:
                    return messages
                position = await reader.position(tp)
                if position >= end:
                    self._read_positions[tp] = position
                    self._skipped[tp] = (offset, end)
                    return []
                if asyncio.get_running_loop().time() > deadline:
                    raise LogError(
                        f"no records came from {tp.topic}[{tp.partition}] at offset "
                        f"{offset} within {self._request_timeout:.0f}s"
                    )
        finally:
            reader.pause(tp)

    def _position_reader(self, tp: KafkaPartition, offset: int) -> None:
        """Assign `tp` to the reader (paused, as every partition it holds) at `offset`."""
        reader = self._reader
        if tp not in self._read_assignment:
            kept = (
                self._read_assignment
                if len(self._read_assignment) < _MAX_READ_ASSIGNMENT
                else set()
            )
            assignment = {*kept, tp}
            reader.assign(list(assignment))
            # A new assignment forgets positions: give every partition one again, so
            # the reader never looks for committed offsets it has no group for.
            for held in assignment:
                reader.seek(held, self._read_positions.get(held, 0))
            reader.pause(*assignment)
            self._read_assignment = assignment
            self._read_positions = {p: self._read_positions.get(p, 0) for p in assignment}
        if self._read_positions[tp] != offset:
            reader.seek(tp, offset)
            self._read_positions[tp] = offset

    def _learn_end(self, tp: KafkaPartition, end: int) -> None:
        if end > self._known_ends.get(tp, 0):
            self._known_ends[tp] = int(end)

    def _note_reading(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._read_since.setdefault(task, self._wakes)

    def _wake(self, topics: Iterable[str] | None = None) -> None:
        """Wake the waiters on any append, and those on `topics` (None: on every topic)."""
        self._wakes += 1
        self._appended.set()
        self._appended = asyncio.Event()
        if topics is None:
            self._last_wake_all = self._wakes
            woken = list(self._topic_waiters.values())
        else:
            topics = set(topics)
            for topic in topics:
                self._last_wake[topic] = self._wakes
            woken = [self._topic_waiters[t] for t in topics if t in self._topic_waiters]
        for waiters in woken:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _watch(self, ends: Mapping[KafkaPartition, int]) -> None:
        """Have the watcher follow these partitions from their known ends."""
        new = ends.keys() - self._watching
        if not new:
            return
        kept = self._watching if len(self._watching) + len(new) <= _MAX_READ_ASSIGNMENT else ()
        self._watching = {*kept, *new}
        self._watcher.assign(list(self._watching))
        for tp in self._watching:
            self._watcher.seek(tp, self._known_ends.get(tp, 0))
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._follow_watched())

    async def _follow_watched(self) -> None:
        """Wake waiters when a watched partition grows past the end known here (this
        process's own appends have woken them already)."""
        watcher = self._watcher
        while True:
            try:
                batches = await watcher.getmany(timeout_ms=1000)
            except KafkaError:
                self._wake()  # the callers' next reads report any lasting trouble
                for tp in self._watching:
                    watcher.seek(tp, self._known_ends.get(tp, 0))
                await asyncio.sleep(_RETRY_PAUSE)
                continue
            grew: set[str] = set()
            for tp, messages in batches.items():
                # The last stable offset, not the high watermark: records of a
                # transaction still open are not readable yet, and skipping past them
                # would leave their commit (a marker, no record) unnoticed here.
                end = max(watcher.last_stable_offset(tp) or 0, messages[-1].offset + 1)
                if end > self._known_ends.get(tp, 0):
                    grew.add(tp.topic)
                self._learn_end(tp, end)
                watcher.seek(tp, end)  # skip what is already known to exist
            if grew:
                self._wake(grew)

    async def _holds(self, record: Append, since_ms: int) -> bool:
        """Whether `record` (its key and value) is in its partition, stamped at or after
        `since_ms` (less the clock skew a broker's LogAppendTime may add). After a
        failed transaction the log itself tells whether it was committed: what a
        read at read_committed finds was; records differ in their event ids."""
        count = await self._partition_count(record.topic)
        ktp = KafkaPartition(record.topic, partition_for(record.key, count))
        with _translated(f"cannot find offsets by time in {record.topic}[{ktp.partition}]"):
            found = await self._reader.offsets_for_times({ktp: since_ms - _CLOCK_SKEW_MS})
        start = found.get(ktp)
        offset = None if start is None else start.offset
        while offset is not None:
            records = await self.read(record.topic, ktp.partition, offset)
            if any(r.key == record.key and r.value == record.value for r in records):
                return True
            offset = records[-1].offset + 1 if records else None
        return False

    async def _retrying(self, call: Any) -> Any:
        """Retry `call` while Kafka says the failure is passing (a coordinator that is
        still loading after a restart, say), up to the request timeout."""
        deadline = asyncio.get_running_loop().time() + self._request_timeout
        while True:
            try:
                return await call()
            except KafkaError as e:
                if not e.retriable or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(_RETRY_PAUSE)


class KafkaMember:
    """A member of a Kafka consumer group, fenced by per-partition transactions (see
    the module's docstring). Made by `KafkaEventLog.join`."""

    def __init__(
        self,
        event_log: KafkaEventLog,
        group: str,
        topics: tuple[str, ...],
        listener: RebalanceListener,
        *,
        session_timeout: float,
        poll_timeout: float,
    ) -> None:
        self._log = event_log
        self.group = group
        self.topics = topics
        self._listener = listener
        self._consumer = event_log._group_consumer(group, session_timeout, poll_timeout)
        self._owned: frozenset[TopicPartition] = frozenset()
        # Gained, their on_assigned still running: nothing of them is read yet.
        self._settling: frozenset[TopicPartition] = frozenset()
        self._positions: dict[TopicPartition, int] = {}
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        # Per owned partition, records its last owner finished past the committed
        # offset (from the offset's metadata), not read yet: `poll` skips them.
        self._done: dict[TopicPartition, DoneAhead] = {}
        # Owned, but a commit found its producer fenced: lost until the rebalance.
        self._fenced: set[TopicPartition] = set()
        self._locks: dict[TopicPartition, asyncio.Lock] = {}
        self._assigned = asyncio.Event()
        self._failure: BaseException | None = None
        self._leaving = False

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        return self._owned

    @property
    def positions(self) -> dict[TopicPartition, int]:
        return dict(self._positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._owned:
            raise LogError(f"cannot seek {tp}: this member does not own it")
        if offset < 0:
            raise LogError(f"cannot seek {tp} to negative offset {offset}")
        self._consumer.seek(KafkaPartition(tp.topic, tp.partition), offset)
        self._positions[tp] = offset

    async def start(self) -> None:
        with _translated(f"cannot join group {self.group!r}"):
            await self._consumer.start()
        try:
            self._consumer.subscribe(list(self.topics), listener=_Rebalance(self))
            # The group is joined in aiokafka's background; the first fetch drives it.
            async with asyncio.timeout(max(60.0, self._log._request_timeout)):
                while not self._assigned.is_set():
                    with _translated(f"cannot join group {self.group!r}"):
                        await self._consumer.getmany(timeout_ms=100)
                    self._raise_failure()
            # Those fetches may have returned records of the assignment: read them
            # again, from the positions the assignment gave.
            for tp, offset in self._positions.items():
                self._consumer.seek(KafkaPartition(tp.topic, tp.partition), offset)
        except BaseException:
            await self._stop()
            raise

    async def poll(self, timeout: float, max_records: int) -> list[Record]:
        self._raise_failure()
        with _translated(f"cannot poll group {self.group!r}"):
            batches = await self._consumer.getmany(
                timeout_ms=max(0, int(timeout * 1000)), max_records=max_records
            )
        self._raise_failure()
        records: list[Record] = []
        for ktp, messages in batches.items():
            tp = TopicPartition(ktp.topic, ktp.partition)
            if tp in self._settling and tp in self._positions:
                self._consumer.seek(ktp, self._positions[tp])  # not read: read again later
            if tp not in self._owned or tp in self._settling or not messages:
                continue
            self._positions[tp] = messages[-1].offset + 1
            read = [_record(ktp, message) for message in messages]
            if done := self._done.get(tp):
                read, self._done[tp] = read_past(read, done, self._positions[tp])
            records += read
        if not records:
            await self._step_over_markers()
        return records

    async def _step_over_markers(self) -> None:
        """Positions past trailing transaction markers: each fenced commit leaves one,
        which takes an offset, so a partition read to its end sits one short of the
        end offset until the fetcher steps over it."""
        for tp, at in list(self._positions.items()):
            if tp not in self._owned or tp in self._settling:
                continue
            try:  # a partition in a rebalance has no position: it is read again later
                async with asyncio.timeout(_RETRY_PAUSE):
                    position = await self._consumer.position(KafkaPartition(tp.topic, tp.partition))
            except (KafkaError, TimeoutError):
                continue
            if position > at and tp in self._owned:
                self._positions[tp] = position

    async def commit(
        self,
        appends: Mapping[TopicPartition, Sequence[Append]],
        offsets: Mapping[TopicPartition, int],
        done: Mapping[TopicPartition, Sequence[range]] | None = None,
    ) -> list[Record]:
        partitions = set(appends) | set(offsets)
        lost = {tp for tp in partitions if tp not in self._owned or tp in self._fenced}
        if lost:
            raise Fenced(self._lost(lost))
        await self._log._check_topics(a.topic for records in appends.values() for a in records)
        for offset in offsets.values():
            if offset < 0:
                raise LogError(f"cannot commit negative offset {offset}")
        done = done or {}
        results = await asyncio.gather(
            *(
                self._transact(tp, appends.get(tp, ()), offsets.get(tp), self._metadata(tp, done))
                for tp in partitions
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if isinstance(e, Fenced)), errors[0])
        self._log._wake(a.topic for records in appends.values() for a in records)
        return [record for result in results if isinstance(result, list) for record in result]

    async def leave(self) -> None:
        if self._leaving:
            return
        try:
            await self._revoke(self._owned)  # may still commit
        finally:
            self._leaving = True
            await self._stop()

    # --- internals ---------------------------------------------------------------------

    def _metadata(self, tp: TopicPartition, done: Mapping[TopicPartition, Sequence[range]]) -> str:
        """The offset's metadata: the records finished past it, with those the last
        owner finished that this member has not read yet."""
        return carried(done.get(tp, ()), self._done.get(tp, ()))

    async def _transact(
        self, tp: TopicPartition, appends: Sequence[Append], offset: int | None, metadata: str = ""
    ) -> list[Record]:
        """One transaction: the partition's appends and its offset, or neither.

        A transaction that fails otherwise than fenced may have broken its producer
        (aiokafka's sender ends for good when it loses the transaction coordinator, as
        in a broker restart): the producer is replaced, and the transaction tried again
        for up to the request timeout after that first failure (a hung attempt may have
        spent one already), if it is known not to have been committed."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # of the retries, from the first failure on
        since_ms = time.time_ns() // 1_000_000  # what it appends is stamped no earlier
        unsure: LogError | None = None  # a failure after which the outcome is unknown
        async with self._locks.setdefault(tp, asyncio.Lock()):
            while True:
                if tp not in self._owned or tp in self._fenced:
                    raise Fenced(self._lost([tp]))
                try:
                    if unsure is not None:
                        if await self._committed_after_failure(
                            tp, appends, offset, unsure, since_ms
                        ):
                            return []  # its records are in the log; where is not known here
                        unsure = None
                    producer = self._producers.get(tp) or await self._replace_producer(tp)
                    records = await self._transaction(producer, tp, appends, offset, metadata)
                except Fenced:
                    raise
                except LogError as error:
                    # Fenced, or broken while the group may have moved on (a pending
                    # rebalance): a new producer could fence the partition's new owner.
                    if isinstance(error.__cause__, _FENCED_ERRORS) or not self._settled():
                        await self._drop_producer(tp)
                        self._fenced.add(tp)
                        self._rejoin()
                        raise Fenced(f"{self._lost([tp])}: {error.__cause__}") from error
                    if deadline is None:
                        deadline = loop.time() + self._log._request_timeout
                    elif loop.time() > deadline:  # the last attempt may have landed
                        raise CommitUnknown(f"{unsure or error}; then {error}") from error
                    log.warning("commit for %s failed, trying a new producer: %s", tp, error)
                    unsure = unsure or error
                    await asyncio.sleep(_BROKEN_PAUSE)
                    continue
                return records

    async def _transaction(
        self,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        appends: Sequence[Append],
        offset: int | None,
        metadata: str,
    ) -> list[Record]:
        """`_transaction_steps`, given up after the request timeout: a broker that does
        not answer (gone, or paused) holds the steps, and also the abort a cancellation
        starts, so they are left to end with their producer, which the retry replaces."""
        what = f"cannot commit for {tp.topic}[{tp.partition}]"
        attempt = asyncio.ensure_future(
            self._transaction_steps(producer, tp, appends, offset, metadata, what)
        )
        try:
            finished, _ = await asyncio.wait({attempt}, timeout=self._log._request_timeout)
        except BaseException:
            attempt.cancel()
            attempt.add_done_callback(_retrieved)
            raise
        if not finished:
            attempt.cancel()
            attempt.add_done_callback(_retrieved)
            raise LogError(f"{what}: no answer within the request timeout")
        return attempt.result()

    async def _transaction_steps(
        self,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        appends: Sequence[Append],
        offset: int | None,
        metadata: str,
        what: str,
    ) -> list[Record]:
        timestamp = time.time_ns() // 1_000_000
        futures: list[asyncio.Future[Any]] = []
        with _translated(what):
            try:
                async with producer.transaction():
                    for a in appends:
                        futures.append(
                            await producer.send(
                                a.topic,
                                a.value or None,  # b"": a tombstone (null)
                                key=a.key.encode("utf-8"),
                                timestamp_ms=timestamp,
                            )
                        )
                    if offset is not None:
                        await producer.send_offsets_to_transaction(
                            {KafkaPartition(tp.topic, tp.partition): (offset, metadata)},
                            self.group,
                        )
                    metas = await asyncio.gather(*futures)
            except IllegalOperation as error:  # its transaction was ended under it: fenced
                raise LogError(f"{what}: {error}") from ProducerFenced(str(error))
            finally:
                # A failed transaction's sends fail with it and say nothing more: their
                # errors are its error (else asyncio logs each as never retrieved).
                for future in futures:
                    future.add_done_callback(_retrieved)
        return [
            Record(
                a.topic,
                meta.partition,
                meta.offset,
                a.key,
                a.value,
                meta.timestamp if meta.timestamp_type == _LOG_APPEND_TIME else timestamp,
            )
            for a, meta in zip(appends, metas, strict=True)
        ]

    async def _committed_after_failure(
        self,
        tp: TopicPartition,
        appends: Sequence[Append],
        offset: int | None,
        error: LogError,
        since_ms: int,
    ) -> bool:
        """Whether the failed transaction was committed after all. A new producer's
        init ends what the broken one left open (committed if the broker had taken the
        commit, else aborted); then the log tells which: whether its first record is
        there, read at read_committed (records differ in their event ids). Not the
        group's offset: the coordinator applies a transaction's offsets a moment after
        it ends, so a fetch may still show the one before. A commit of offsets alone is
        tried again: committing the same offsets twice changes nothing. Trying appends
        again blindly could write them twice; giving up would stop a service at every
        broker restart."""
        await self._replace_producer(tp)
        if not appends:
            return False
        return await self._log._holds(appends[0], since_ms)

    async def _replace_producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        await self._drop_producer(tp)
        if not self._settled():  # its init could fence the partition's new owner
            self._fenced.add(tp)
            self._rejoin()
            raise Fenced(f"{self._lost([tp])}: a rebalance is pending")
        producer = await self._start_producer(tp)
        if tp in self._owned and tp not in self._fenced:
            self._producers[tp] = producer
            return producer
        await _stop(producer)  # lost meanwhile
        raise Fenced(self._lost([tp]))

    def _settled(self) -> bool:
        """Whether aiokafka counts this member in the group's current generation with
        no rebalance pending (no public call tells)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        subscription = getattr(self._consumer, "_subscription", None)
        current = getattr(subscription, "subscription", None)
        return (
            coordinator is not None and current is not None and not coordinator.need_rejoin(current)
        )

    def _rejoin(self) -> None:
        """A producer fenced while the group still counts this member as the owner: the
        broker aborted its transaction (past `transaction.timeout.ms`, as around a
        broker restart), or a new owner fenced it and the rebalance has not reached
        this member yet. Without a rebalance it would hold a partition it can never
        commit for (a host lets it go, and its runs or tasks wait forever), so it asks
        aiokafka to rejoin: the group then decides who owns the partition, and that
        member starts its producer anew in `on_assigned`."""
        coordinator = getattr(self._consumer, "_coordinator", None)  # no public call
        if coordinator is not None:
            coordinator.request_rejoin()

    def _lost(self, partitions: Iterable[TopicPartition]) -> str:
        names = ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        return f"this member of group {self.group!r} no longer owns {names}"

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise LogError(f"group {self.group!r}: {self._failure}") from self._failure

    async def _assign(self, assigned: Iterable[KafkaPartition]) -> None:
        kafka_partitions = list(assigned)
        gained = frozenset(TopicPartition(k.topic, k.partition) for k in kafka_partitions)
        # aiokafka has assigned them already, and the host's loop polls on while this
        # callback runs in aiokafka's background: paused (and skipped by `poll`) until
        # on_assigned has returned, so no record of them is read, nor a position moved,
        # before the listener has restored what it keeps of them (a coordinator folds
        # again up to the position it finds: a read ahead would skip records unfolded).
        self._settling |= gained
        self._consumer.pause(*kafka_partitions)
        try:
            await self._take(gained)
            await self._listener.on_assigned(gained)
        finally:
            self._settling -= gained
            still = self._consumer.assignment()
            self._consumer.resume(*(k for k in kafka_partitions if k in still))

    async def _take(self, gained: frozenset[TopicPartition]) -> None:
        """Own `gained`: their producers started, positions at the committed offsets."""
        # Producers first: their init fences the old owners and settles their open
        # transactions, so the committed offsets read next are the last ones.
        new = [tp for tp in gained if tp not in self._producers]
        producers = await asyncio.gather(*(self._start_producer(tp) for tp in new))
        self._producers.update(zip(new, producers, strict=True))
        stored = await self._log._committed_offsets(
            self.group, [KafkaPartition(tp.topic, tp.partition) for tp in gained]
        )
        for tp in gained:
            ktp = KafkaPartition(tp.topic, tp.partition)
            committed = stored.get(ktp)
            offset = 0 if committed is None or committed.offset < 0 else committed.offset
            self._consumer.seek(ktp, offset)
            self._positions[tp] = offset
            self._done[tp] = decode_done(committed.metadata if committed is not None else None)
        self._owned = gained
        self._fenced -= gained

    async def _start_producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        producer = self._log._transactional_producer(f"{self.group}.{tp.topic}.{tp.partition}")
        try:
            with _translated(f"cannot start the producer of {tp.topic}[{tp.partition}]"):
                await producer.start()
        except BaseException:  # e.g. the broker is restarting: release what it opened
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_STOP_WAIT):
                    await producer.stop()
            raise
        return producer

    async def _revoke(self, revoked: Iterable[TopicPartition]) -> None:
        lost = frozenset(revoked) & self._owned
        # Read no further while on_revoked settles and commits them: what it commits
        # is what the host has taken, and no new work of them starts meanwhile.
        self._settling |= lost
        held = self._consumer.assignment()
        self._consumer.pause(
            *(k for tp in lost if (k := KafkaPartition(tp.topic, tp.partition)) in held)
        )
        try:
            if lost:
                await self._listener.on_revoked(lost)
        finally:
            self._settling -= lost
            self._owned -= lost
            self._fenced -= lost
            for tp in lost:
                self._positions.pop(tp, None)
                self._done.pop(tp, None)
                await self._drop_producer(tp)

    async def _drop_producer(self, tp: TopicPartition) -> None:
        producer = self._producers.pop(tp, None)
        if producer is not None:
            # A broken one may never finish flushing: its transaction is ended by the
            # next producer of the same transactional id anyway.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_STOP_WAIT):
                    await producer.stop()

    async def _stop(self) -> None:
        for tp in list(self._producers):
            await self._drop_producer(tp)
        with contextlib.suppress(Exception):
            await self._consumer.stop()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's listener, around the member's. aiokafka logs and swallows what a
    listener raises: a failure is kept and raised by the member's next poll."""

    def __init__(self, member: KafkaMember) -> None:
        self.member = member

    async def on_partitions_revoked(self, revoked: Iterable[KafkaPartition]) -> None:
        await self._guarded(
            self.member._revoke(TopicPartition(k.topic, k.partition) for k in revoked)
        )

    async def on_partitions_assigned(self, assigned: Iterable[KafkaPartition]) -> None:
        member = self.member
        if member._leaving:
            return
        await self._guarded(member._assign(assigned))
        member._assigned.set()

    async def _guarded(self, step: Awaitable[None]) -> None:
        try:
            await step
        except Exception as error:
            logging.getLogger(__name__).exception("group %s: rebalance failed", self.member.group)
            self.member._failure = error


def _record(tp: KafkaPartition, message: Any) -> Record:
    return Record(
        tp.topic,
        tp.partition,
        message.offset,
        # Keys come from other producers too; a key that is not UTF-8 must not stop a
        # reader, so it is decoded with replacement characters.
        "" if message.key is None else message.key.decode("utf-8", "replace"),
        b"" if message.value is None else message.value,
        message.timestamp,
    )


def _check_topic_name(topic: str) -> None:
    if not _TOPIC_NAME.fullmatch(topic) or topic in {".", ".."}:
        raise LogError(f"invalid topic name {topic!r} (Kafka allows [A-Za-z0-9._-]{{1,249}})")


def _cover(consumer: AIOKafkaConsumer, commits: Mapping[KafkaPartition, int]) -> None:
    """Assign the committed partitions to a committer (aiokafka commits only assigned
    ones), positioned and paused so that it never fetches."""
    assigned: set[KafkaPartition] = set(consumer.assignment())
    if set(commits) <= assigned:
        return
    assignment = {*(assigned if len(assigned) < _MAX_READ_ASSIGNMENT else ()), *commits}
    consumer.assign(list(assignment))
    for tp in assignment:
        consumer.seek(tp, 0)
    consumer.pause(*assignment)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _stop(client: Any) -> None:
    """Stop a producer or consumer, close an admin client."""
    await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn aiokafka's exceptions into the port's."""
    try:
        yield
    except KafkaError as e:
        raise _log_error(what, e) from e


def _log_error(what: str, error: KafkaError) -> LogError:
    if isinstance(error, UnknownTopicOrPartitionError):
        return UnknownTopic(f"{what}: {error}")
    return LogError(f"{what}: {error}")
