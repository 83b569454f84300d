"""A group's committed offsets read as KIP-447 asks: stable, never from before a
transaction the group coordinator has not finished applying.

A transaction's offset commit becomes the group's committed offset only once the
group coordinator has applied the transaction's commit marker, a moment after the
producer's `EndTxn` (or the next owner's `InitProducerId`) returned. aiokafka 0.14
reads offsets with OffsetFetch v3, which answers meanwhile with the offset from
before the transaction: a member taking over a partition right after its
predecessor's last commit then processes that commit's input again (the scaled chaos
test saw it beside a CPU hog). OffsetFetch v7 with `require_stable` makes the broker
answer UNSTABLE_OFFSET_COMMIT for that partition instead while such a commit is
pending; the caller asks again for those partitions until it is applied.

aiokafka has no struct for v7, so it is declared here with aiokafka's own protocol
types and sent through the admin client's connection to the group's coordinator.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar

from aiokafka import TopicPartition as KafkaPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import OffsetAndMetadata

UNSTABLE_OFFSET_COMMIT = 88  # Kafka's error code; aiokafka 0.14 does not know it


class UnstableOffsetCommit(KafkaError):  # type: ignore[misc]
    """A transaction committing offsets of the partition is not applied yet."""

    errno = UNSTABLE_OFFSET_COMMIT
    retriable = True


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION: ClassVar[bool] = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetch(Request[OffsetFetchRequest_v7]):  # type: ignore[misc]
    """OffsetFetch of some partitions of one group, `require_stable` set (brokers 2.5+)."""

    API_KEY = 9

    def __init__(self, group: str, topics: Sequence[tuple[str, list[int]]]) -> None:
        self._group = group
        self._topics = topics

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        topics: list[tuple[str, list[int], dict[int, bytes]]] = [
            (name, partitions, {}) for name, partitions in self._topics
        ]
        return request_struct_class(self._group, topics, True, {})


async def fetch_stable_offsets(
    admin: AIOKafkaAdminClient, group: str, partitions: Sequence[KafkaPartition]
) -> tuple[dict[KafkaPartition, OffsetAndMetadata], set[KafkaPartition]]:
    """One stable read of `group`'s committed offsets of `partitions` (offset -1:
    nothing committed), and the partitions it could not answer yet: a transaction's
    offsets for them are pending (ask again for those). The coordinator's errors raise
    as aiokafka's (a moved or loading coordinator's are retriable)."""
    by_topic: defaultdict[str, list[int]] = defaultdict(list)
    for tp in partitions:
        by_topic[tp.topic].append(tp.partition)
    coordinator = await admin.find_coordinator(group)
    # aiokafka's admin client has no public way to send a request it lacks.
    response: Any = await admin._send_request(
        StableOffsetFetch(group, sorted(by_topic.items())), coordinator
    )
    _raise_for(response.error_code, group)
    found: dict[KafkaPartition, OffsetAndMetadata] = {}
    pending: set[KafkaPartition] = set()
    for topic, answers, _tags in response.topics:
        for partition, offset, _epoch, metadata, error_code, _ in answers:
            tp = KafkaPartition(topic, partition)
            if error_code == UNSTABLE_OFFSET_COMMIT:
                pending.add(tp)
                continue
            _raise_for(error_code, group)
            found[tp] = OffsetAndMetadata(offset, metadata or "")
    return found, pending


def _raise_for(error_code: int, group: str) -> None:
    if error_code == UNSTABLE_OFFSET_COMMIT:
        raise UnstableOffsetCommit(f"group {group!r} has a transaction's offsets pending")
    if error_code:
        raise for_code(error_code)(f"cannot read the offsets of group {group!r}")
