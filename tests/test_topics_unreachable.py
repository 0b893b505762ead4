"""An admin client (the start-up checks, `qris-guard topics`) that cannot reach its broker leaves no
client running behind it (kafka-python 3 starts the admin client's network thread before it
bootstraps); the running worker's check has no thread at all (`test_worker_partitioncounts.py`)."""

from __future__ import annotations

import socket
import threading
import time

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


def test_a_refusal_alert_to_an_unreachable_broker_gives_up_within_its_budget() -> None:
    # kafka-python's own waits are 30 s to bootstrap (60 s for a topic's metadata): the refusal
    # said on the alerts topic must not hold the worker's exit past `timeout_s` in all.
    from stream.topics import PartitionsRefused, send_refusal_alert

    settings = Settings(bootstrap=f"127.0.0.1:{_closed_port()}")
    before, t0 = threading.active_count(), time.monotonic()
    send_refusal_alert(settings, PartitionsRefused("refused", "qris.ledger-debits", 8, 4), timeout_s=1.0)
    assert time.monotonic() - t0 < 3.0
    assert threading.active_count() == before
