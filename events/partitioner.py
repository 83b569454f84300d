"""Kafka's default partitioner: murmur2 of the key bytes, made positive, modulo partitions.

A port of the Java client's `org.apache.kafka.common.utils.Utils.murmur2` (seed
0x9747b28c, signed 32-bit arithmetic) and of `BuiltInPartitioner.partitionForKey`,
so a key lands in the same partition number here as with any Kafka producer.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["murmur2", "partition_for"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2(data)`: a signed 32-bit int, exactly as Java returns it.

    Computed on unsigned 32-bit words; Java's `>>>` is a logical shift of the same bits,
    and the signed view is only taken at the end.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length & 3
    # Java's switch falls through from case 3 to case 1; the bytes are sign-agnostic
    # here because `(data[i] & 0xff)` is what Java folds in.
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


# A run's id keys every event of the run, and the log, the consumers and the coordinator
# each place it: murmur2 in Python was ~5% of a submit's CPU, computed about three times
# per run. Bounded, as keys come from outside.
@lru_cache(maxsize=1 << 16)
def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` (UTF-8) among `partitions`."""
    if partitions <= 0:
        raise ValueError(f"partitions must be positive, got {partitions}")
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions
