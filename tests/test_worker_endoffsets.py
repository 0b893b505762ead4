"""The end offsets the idle rule and the feed-stall watchdog ask the broker for: a broker that
does not answer is `EndOffsetsUnknown` within the timeout, never an old value (the Kafka tier,
tests/test_kafka_silence.py, asks a real one)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from stream.worker.endoffsets import BrokerEndOffsets, EndOffsetsUnknown


def test_nothing_asked_is_answered_without_the_broker() -> None:
    ends = BrokerEndOffsets({"bootstrap_servers": "127.0.0.1:1"}, "qris-x-end-offsets", timeout_s=1.0)
    assert asyncio.run(ends.ask([])) == {}


def test_a_broker_that_refuses_or_never_answers_is_unknown_within_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections, never answers a request
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for address in ("127.0.0.1:1", f"127.0.0.1:{silent.getsockname()[1]}"):
            ends = BrokerEndOffsets({"bootstrap_servers": address}, "qris-x-end-offsets", timeout_s=1.0)

            async def ask(ends: BrokerEndOffsets = ends) -> None:
                try:
                    await ends.ask([("qris.payment-requests", 0)])
                finally:
                    await asyncio.sleep(0.1)  # let the failed client's stop run
                    await ends.close()

            started = time.monotonic()
            with pytest.raises(EndOffsetsUnknown):
                asyncio.run(ask())
            assert time.monotonic() - started < 4.0
            assert ends.latest == {}
