"""Kafka's default partitioner for keyed records, so that a replay file puts every record in
the partition a real producer would have chosen. Pure arithmetic: it imports no Kafka client
(the tests check it against the Java client's published vectors and against kafka-python).
"""

import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I")
_STATE_CACHE_LIMIT = 4096


def _mix_words(h: int, words: bytes) -> int:
    for (k,) in _WORDS.iter_unpack(words):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    return h


def _finish(h: int, data: bytes, body: int) -> int:
    tail = len(data) - body
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


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` of ``data``, as an unsigned 32-bit integer.

    Java returns the same 32 bits as a signed ``int``.

    >>> murmur2(b"21") - (1 << 32)  # Kafka's UtilsTest expects -973932308
    -973932308
    """
    body = len(data) & ~3
    return _finish(_mix_words(_SEED ^ len(data), data[:body]), data, body)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record with this key.

    Java: ``Utils.toPositive(Utils.murmur2(key)) % numPartitions``.

    >>> partition_for(b"abc", 1000)  # kafka-python's Java-compatibility vector
    107
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyPartitioner:
    """``partition_for`` for many keys that differ only near the end, like sequentially
    numbered references: the hash state before each key's last full 4-byte word is cached
    (it depends only on the bytes before it and the key's length), so about one word is
    hashed per key.

    >>> partitioner = KeyPartitioner(1000)
    >>> [partitioner(k) for k in (b"123456789", b"abc", b"")]  # kafka-python's vectors
    [566, 107, 681]
    """

    def __init__(self, partitions: int) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.partitions = partitions
        self._states: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes) -> int:
        length = len(key)
        body = length & ~3
        if body == 0:
            return partition_for(key, self.partitions)
        last = body - 4
        head = key[:last]
        h = self._states.get((head, length))
        if h is None:
            if len(self._states) >= _STATE_CACHE_LIMIT:
                self._states.clear()
            h = _mix_words(_SEED ^ length, head)
            self._states[(head, length)] = h
        (k,) = _WORDS.unpack_from(key, last)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
        if length != body:
            h = _finish(h, key, body)
        else:
            h ^= h >> 13
            h = (h * _M) & _MASK
            h ^= h >> 15
        return (h & 0x7FFFFFFF) % self.partitions
