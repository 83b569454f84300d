"""Kafka's default partitioner, checked against the Java client's own numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aob.events.partitioner import murmur2, partition_for

# From Apache Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java
# (testMurmur2): input bytes -> Utils.murmur2 as a signed Java int. The 6-byte binary
# case is the one other clients (e.g. sarama's kafkautil) generated with the JVM client.
KAFKA_UTILS_TEST = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
    (bytes([12, 42, 56, 24, 109, 111]), 274204207),
]

# Printed by a small Java 17 program against org.apache.kafka:kafka-clients:3.9.0:
# Utils.murmur2(key.getBytes(UTF_8)) and BuiltInPartitioner.partitionForKey(bytes, n)
# for n = 1, 3, 12, 16, 100. Covers every tail length (0-3 leftover bytes) and
# multi-byte UTF-8 (2, 3 and 4 bytes per character).
PARTITION_COUNTS = (1, 3, 12, 16, 100)
JAVA_KAFKA_CLIENTS_3_9_0 = [
    ("", 275646681, (0, 0, 9, 9, 81)),
    ("a", -1563381124, (0, 1, 4, 12, 24)),
    ("ab", 316155434, (0, 2, 2, 10, 34)),
    ("abc", 479470107, (0, 0, 3, 11, 7)),
    ("abcd", -1323649548, (0, 2, 8, 4, 0)),
    ("abcde", 461995741, (0, 1, 1, 13, 41)),
    ("abcdef", 1870650108, (0, 0, 0, 12, 8)),
    ("abcdefg", -346467175, (0, 1, 1, 9, 73)),
    ("abcdefgh", -955427363, (0, 0, 9, 13, 85)),
    ("21", -973932308, (0, 0, 0, 12, 40)),
    ("foobar", -790332482, (0, 0, 6, 14, 66)),
    ("run-1", 637533037, (0, 1, 1, 13, 37)),
    ("run-42", 1115905536, (0, 0, 0, 0, 36)),
    ("wf:order-processing", 1200071586, (0, 0, 6, 2, 86)),
    ("3f2c9a52-6d6b-4a39-8f0e-1d3f6f0b9a11", 842056679, (0, 2, 11, 7, 79)),
    ("h\u00e9llo", 614509002, (0, 0, 6, 10, 2)),
    ("\u65e5\u672c\u8a9e", 1431860170, (0, 1, 10, 10, 70)),
    ("\U0001f642", 925250799, (0, 0, 3, 15, 99)),
    ("k\u00fcrz-\u00df", -1248604997, (0, 0, 3, 11, 51)),
    ("\u0000", 375494588, (0, 2, 8, 12, 88)),
    ("\u007f\u0080\u00ff", -1995144424, (0, 1, 4, 8, 24)),
]


@pytest.mark.parametrize(("data", "expected"), KAFKA_UTILS_TEST)
def test_murmur2_matches_kafka_utils_test(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


@pytest.mark.parametrize(("key", "expected_hash", "expected_partitions"), JAVA_KAFKA_CLIENTS_3_9_0)
def test_matches_the_java_client(
    key: str, expected_hash: int, expected_partitions: tuple[int, ...]
) -> None:
    assert murmur2(key.encode("utf-8")) == expected_hash
    got = tuple(partition_for(key, n) for n in PARTITION_COUNTS)
    assert got == expected_partitions


@given(st.binary(max_size=64))
def test_murmur2_is_a_signed_32_bit_int(data: bytes) -> None:
    assert -(2**31) <= murmur2(data) < 2**31


@given(st.text(max_size=32), st.integers(min_value=1, max_value=1000))
def test_partition_is_in_range_and_stable(key: str, partitions: int) -> None:
    partition = partition_for(key, partitions)
    assert 0 <= partition < partitions
    assert partition_for(key, partitions) == partition
    assert partition == (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


@pytest.mark.parametrize("partitions", [0, -1])
def test_partitions_must_be_positive(partitions: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        partition_for("k", partitions)


def test_placements_are_remembered_within_a_bound() -> None:
    """Keys come from outside: the cache of placements must not grow without bound."""
    maxsize = partition_for.cache_info().maxsize
    assert maxsize is not None
    for i in range(maxsize + 100):
        partition_for(f"run_{i}", 12)
    assert partition_for.cache_info().currsize <= maxsize
    hits = partition_for.cache_info().hits
    partition_for(f"run_{maxsize + 99}", 12)
    assert partition_for.cache_info().hits == hits + 1
