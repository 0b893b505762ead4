"""An admin client (the start-up checks, `qris-guard topics`) that cannot reach its broker leaves no
client running behind it (kafka-python 3 starts the admin client's network thread before it
bootstraps); the running worker's check has no thread at all (`test_worker_partitioncounts.py`)."""

from __future__ import annotations

import socket
import threading

import pytest

from stream.settings import Settings
from stream.topics import admin_client


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_broker_leaves_no_client_thread_behind() -> None:
    settings = Settings(bootstrap=f"127.0.0.1:{_closed_port()}")
    before = threading.active_count()
    for _ in range(3):
        with pytest.raises(Exception):  # noqa: B017 - kafka-python's timeout error
            admin_client(settings, bootstrap_timeout_ms=500, request_timeout_ms=500)
    assert threading.active_count() == before  # kafka-python alone leaves one more per call
