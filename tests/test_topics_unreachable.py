"""An input-partitions check against a broker it cannot reach leaves no client running behind it
(kafka-python 3 starts the admin client's network thread before it bootstraps)."""

from __future__ import annotations

import socket
import threading

import pytest

from stream.settings import Settings
from stream.topics import input_partition_counts


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_broker_leaves_no_client_thread_behind() -> None:
    settings = Settings(bootstrap=f"127.0.0.1:{_closed_port()}")
    before = threading.active_count()
    for _ in range(3):
        with pytest.raises(Exception):  # noqa: B017 - kafka-python's timeout error
            input_partition_counts(settings, timeout_s=0.5)
    assert threading.active_count() == before  # was one more thread (and its sockets) per check
