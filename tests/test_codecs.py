"""Every compression codec a Kafka producer may use can be read by both clients (the worker's
aiokafka, and kafka-python for dump, replay and trace): a batch the consumer cannot decompress
raises in the fetch, and the worker exits at every start."""

from __future__ import annotations

import aiokafka.codec
import kafka.codec
import pytest


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_both_kafka_clients_can_decompress_every_codec(codec: str) -> None:
    assert getattr(aiokafka.codec, f"has_{codec}")(), f"aiokafka cannot read {codec} batches"
    assert getattr(kafka.codec, f"has_{codec}")(), f"kafka-python cannot read {codec} batches"


def test_round_trip_of_every_codec() -> None:
    data = b'{"event_id":"e1","type":"debited"}' * 50
    assert aiokafka.codec.snappy_decode(aiokafka.codec.snappy_encode(data)) == data
    assert aiokafka.codec.lz4_decode(aiokafka.codec.lz4_encode(data)) == data
    assert aiokafka.codec.zstd_decode(aiokafka.codec.zstd_encode(data)) == data
    assert kafka.codec.snappy_decode(kafka.codec.snappy_encode(data)) == data
    assert kafka.codec.lz4_decode(kafka.codec.lz4_encode(data)) == data
    assert kafka.codec.zstd_decode(kafka.codec.zstd_encode(data)) == data
