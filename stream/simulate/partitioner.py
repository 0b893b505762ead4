"""Kafka's default partitioner for keyed records, so that a replay file puts every record in
the partition a real producer would have chosen. Pure arithmetic: it imports no Kafka client
(the tests check it against the Java client's published vectors and against kafka-python).
"""

import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I")


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` of ``data``, as an unsigned 32-bit integer.

    Java returns the same 32 bits as a signed ``int``.

    >>> murmur2(b"21") - (1 << 32)  # Kafka's UtilsTest expects -973932308
    -973932308
    """
    length = len(data)
    h = _SEED ^ length
    body = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:body]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        if tail == 3:
            h ^= data[body + 2] << 16
        if tail >= 2:
            h ^= data[body + 1] << 8
        h ^= data[body]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record with this key.

    Java: ``Utils.toPositive(Utils.murmur2(key)) % numPartitions``.

    >>> partition_for(b"abc", 1000)  # kafka-python's Java-compatibility vector
    107
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
