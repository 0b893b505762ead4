"""A stopping worker that does not stop exits on its own (stream/worker/stopdeadline.py): the
deadline, the worker's stop paths that arm it, and a real process that hangs in its stop."""

from __future__ import annotations

import asyncio
import doctest
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faust
import pytest

from stream.settings import Settings, SettingsError, from_env
from stream.worker import stopdeadline
from stream.worker.app import _Worker, build_app
from stream.worker.stopdeadline import EXIT_CODE, StopDeadline

ROOT = Path(__file__).resolve().parents[1]


def test_doctests() -> None:
    failures, tried = doctest.testmod(stopdeadline, raise_on_error=False, verbose=False)
    assert tried and not failures


def test_a_stop_that_ends_in_time_exits_nothing() -> None:
    exits: list[int] = []
    d = StopDeadline(0.2, exit=exits.append)
    d.arm("signal SIGTERM")
    d.cancel()
    assert not d.wait(0.6)
    assert exits == []


def test_only_the_first_stop_request_sets_the_deadline() -> None:
    exits: list[int] = []
    d = StopDeadline(0.3, exit=exits.append)
    d.arm("signal SIGTERM")
    time.sleep(0.2)
    d.arm("the worker's end")  # later: must not push the deadline back
    assert d.wait(0.4), "the deadline counted from the second request"
    assert exits == [EXIT_CODE] and d.armed_for == "signal SIGTERM"


def test_a_process_hung_in_its_stop_exits_70_and_says_why() -> None:
    # The main thread never returns (as a consumer whose coordinator is gone); the deadline's
    # own thread ends the process, with the default exit (os._exit) and a logged reason.
    script = (
        "import logging, time\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from stream.worker.stopdeadline import StopDeadline\n"
        "StopDeadline(0.5).arm('signal SIGTERM')\n"
        "while True: time.sleep(1)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_CODE
    assert time.monotonic() - started < 30
    assert "worker still stopping 0 s after signal SIGTERM (QRIS_STOP_TIMEOUT_S)" in done.stderr
    assert "the next start goes on from the last committed offsets" in done.stderr


def test_the_setting_is_read_and_checked() -> None:
    assert Settings().stop_timeout_s == 90.0
    assert from_env({"QRIS_STOP_TIMEOUT_S": "12.5"}).stop_timeout_s == 12.5
    with pytest.raises(SettingsError, match="QRIS_STOP_TIMEOUT_S=0.0: expected a number of seconds above 0"):
        from_env({"QRIS_STOP_TIMEOUT_S": "0"})


def test_the_workers_stop_signal_and_its_end_arm_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # mode's Worker schedules its stop in `_schedule_shutdown` (SIGTERM, SIGINT) and calls
    # `on_worker_shutdown` when its start ends; Faust's own scheduling is left out here.
    scheduled: list[signal.Signals] = []
    monkeypatch.setattr(faust.Worker, "_schedule_shutdown", lambda self, sig: scheduled.append(sig))
    app, _shell = build_app(Settings(store="memory://"))
    for stop in ("signal", "end"):
        worker = _Worker(app, loglevel="INFO")
        exits: list[int] = []
        worker.stop_deadline = StopDeadline(0.2, exit=exits.append)
        if stop == "signal":
            worker._schedule_shutdown(signal.SIGTERM)
            assert scheduled == [signal.SIGTERM], "Faust's stop was not scheduled"
            assert worker.stop_deadline.armed_for == "signal SIGTERM"
        else:
            worker.on_worker_shutdown()
            assert worker.stop_deadline.armed_for == "the worker's end"
        assert worker.stop_deadline.wait(5.0) and exits == [EXIT_CODE]


def _side_client_closes(monkeypatch: pytest.MonkeyPatch, hang: str | None = None, fail: str | None = None) -> list[str]:
    # Each side client's `close` recorded by its class; one of them hanging or failing.
    from stream.worker import app as app_module

    closed: list[str] = []
    for cls in (app_module.BrokerGapFetcher, app_module.BrokerEndOffsets, app_module.BrokerPartitionCounts):

        async def close(self: object, name: str = cls.__name__) -> None:
            if name == hang:
                await asyncio.sleep(3600)
            if name == fail:
                raise ConnectionError("the broker went away")
            closed.append(name)

        monkeypatch.setattr(cls, "close", close)
    return closed


def test_the_broker_clients_beside_fausts_are_closed_when_the_worker_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = _side_client_closes(monkeypatch)
    app, _shell = build_app(Settings(store="memory://", max_hold_s=0))
    asyncio.run(app.on_before_shutdown.send())
    # The input's and the detector's gap readers, the idle rule's lag reader, the feed-stall
    # probe; the end offsets; the partition counts.
    assert sorted(closed) == ["BrokerEndOffsets"] + ["BrokerGapFetcher"] * 4 + ["BrokerPartitionCounts"]


def test_a_side_client_that_does_not_close_does_not_hold_the_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from stream.worker import app as app_module

    monkeypatch.setattr(app_module, "SIDE_CLIENTS_CLOSE_S", 0.2)
    closed = _side_client_closes(monkeypatch, hang="BrokerPartitionCounts")
    app, _shell = build_app(Settings(store="memory://", max_hold_s=0))
    started = time.monotonic()
    asyncio.run(app.on_before_shutdown.send())
    assert time.monotonic() - started < 30  # (not the hour the close would take)
    assert sorted(closed) == ["BrokerEndOffsets"] + ["BrokerGapFetcher"] * 4
    assert "the side broker clients were not closed within 0.2 s at shutdown" in caplog.text


def test_a_side_client_that_fails_to_close_leaves_the_others_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = _side_client_closes(monkeypatch, fail="BrokerEndOffsets")
    app, _shell = build_app(Settings(store="memory://", max_hold_s=0))
    asyncio.run(app.on_before_shutdown.send())
    assert sorted(closed) == ["BrokerGapFetcher"] * 4 + ["BrokerPartitionCounts"]


def _changelog_closes(monkeypatch: pytest.MonkeyPatch, hang: bool = False, fail: bool = False) -> list[str]:
    # The store's close and the changelog's, in the order the app's stop calls them: the app
    # builds stand-ins around the real ones (the compiled build's classes take no patched methods).
    from stream.worker import app as app_module
    from stream.worker.statestore import KafkaChangelog, PartitionStore

    closed: list[str] = []

    class SeenStore:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            object.__setattr__(self, "store", PartitionStore(*args, **kwargs))

        def close(self) -> None:
            closed.append("store")
            self.store.close()

        def __getattr__(self, name: str) -> Any:
            return getattr(self.store, name)

        def __setattr__(self, name: str, value: Any) -> None:
            setattr(self.store, name, value)

    class SeenChangelog:
        def __init__(self, *args: Any) -> None:
            self.changelog = KafkaChangelog(*args)

        async def close(self) -> None:
            if hang:
                await asyncio.sleep(3600)
            if fail:
                raise ConnectionError("the broker went away")
            closed.append("changelog")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.changelog, name)

    monkeypatch.setattr(app_module, "PartitionStore", SeenStore)
    monkeypatch.setattr(app_module, "KafkaChangelog", SeenChangelog)
    return closed


def test_the_state_changelog_is_closed_after_the_store_when_the_app_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    # After the store: its local DBs are flushed first, and the agents' last commits (which
    # write to the changelog) came before both.
    closed = _changelog_closes(monkeypatch)
    app, _shell = build_app(Settings(store="memory://", max_hold_s=0))
    asyncio.run(app.stop())
    assert closed == ["store", "changelog"]


def test_a_changelog_that_does_not_close_or_fails_to_does_not_hold_or_fail_the_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from stream.worker import app as app_module

    monkeypatch.setattr(app_module, "SIDE_CLIENTS_CLOSE_S", 0.2)
    closed = _changelog_closes(monkeypatch, hang=True)
    app, _shell = build_app(Settings(store="memory://", max_hold_s=0))
    started = time.monotonic()
    asyncio.run(app.stop())
    assert time.monotonic() - started < 30  # (not the hour the close would take)
    assert closed == ["store"]
    assert "the state changelog's broker clients were not closed within 0.2 s at shutdown" in caplog.text
    monkeypatch.undo()
    closed = _changelog_closes(monkeypatch, fail=True)
    app, _shell = build_app(Settings(store="memory://", max_hold_s=0))
    asyncio.run(app.stop())
    assert closed == ["store"]
    assert "closing the state changelog's broker clients at shutdown: ConnectionError" in caplog.text
