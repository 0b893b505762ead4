"""`qris-guard worker --processes N` (stream/worker/processes.py): each child gets its own data
directory and web port; a child that fails stops the others and its exit code is the parent's;
a stop signal reaches every child. Children here are small Python scripts, not workers."""

from __future__ import annotations

import doctest
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.cli import main
from stream.settings import Settings
from stream.worker import processes
from stream.worker.processes import run_processes


def test_doctests() -> None:
    failures, tried = doctest.testmod(processes, raise_on_error=False, verbose=False)
    assert tried and not failures


def test_each_child_has_its_own_data_dir_and_web_port(tmp_path: Path) -> None:
    # Each child writes its port and app id, then runs until stopped: a child that exits on its
    # own stops the set (and makes the exit code 1), so the test stops them once all have written.
    # The file is written aside and renamed: `port` appears whole, never created and still empty
    # when the test reads it.
    script = (
        "import os, pathlib, time; d = pathlib.Path(os.environ['QRIS_DATA_DIR']); d.mkdir(parents=True); "
        "(d / 'port.part').write_text(os.environ['QRIS_WEB_PORT'] + ' ' + os.environ['QRIS_APP_ID']); "
        "(d / 'port.part').rename(d / 'port'); time.sleep(60)"
    )
    settings = Settings(data_dir=str(tmp_path), web_port=7000, app_id="qris-x")
    code = _run_until(settings, 3, script, lambda: len(list(tmp_path.glob("w*/port"))) == 3)
    assert code == 0
    got = {p.parent.name: p.read_text() for p in tmp_path.glob("w*/port")}
    assert got == {"w0": "7000 qris-x", "w1": "7001 qris-x", "w2": "7002 qris-x"}


def _run_until(settings: Settings, n: int, script: str, ready: Callable[[], bool]) -> int:
    """`run_processes` with `n` children running `script`; SIGTERM to this process once `ready()`."""

    def stop_when_ready() -> None:
        deadline = time.monotonic() + 30
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    threading.Thread(target=stop_when_ready, daemon=True).start()
    try:
        return run_processes(settings, n, poll_s=0.05, command=[sys.executable, "-c", script])
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def test_a_failing_child_stops_the_others_and_gives_its_exit_code(tmp_path: Path) -> None:
    # Child w1 fails at once; the others would run for a minute unless stopped.
    script = "import os, sys, time; sys.exit(70) if os.environ['QRIS_DATA_DIR'].endswith('w1') else time.sleep(60)"
    settings = Settings(data_dir=str(tmp_path), web_port=0)
    started = time.monotonic()
    code = run_processes(settings, 3, poll_s=0.05, command=[sys.executable, "-c", script])
    assert code == 70
    assert time.monotonic() - started < 30


def test_sigterm_reaches_every_child(tmp_path: Path) -> None:
    # Each child writes a file when SIGTERM arrives and exits 0: the parent then exits 0.
    script = (
        "import os, pathlib, signal, sys, time\n"
        "d = pathlib.Path(os.environ['QRIS_DATA_DIR'])\n"
        "def bye(*_):\n    d.mkdir(parents=True, exist_ok=True); (d / 'stopped').write_text('1'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n(d.parent / ('ready-' + d.name)).write_text('1')\ntime.sleep(60)\n"
    )
    settings = Settings(data_dir=str(tmp_path), web_port=0)

    code = _run_until(settings, 2, script, lambda: len(list(tmp_path.glob("ready-*"))) == 2)
    assert code == 0
    assert sorted(p.parent.name for p in tmp_path.glob("w*/stopped")) == ["w0", "w1"]


def test_processes_below_one_is_a_mistake(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("stream.cli._connect", lambda s: s)
    monkeypatch.setattr("stream.topics.check_copartitioned", lambda s: s.partitions)
    assert main(["worker", "--processes", "0"]) == 2
    assert "--processes 0: expected 1 or more" in capsys.readouterr().err


def test_a_child_that_does_not_stop_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    # Child w1 ignores SIGTERM (as a worker hung in its stop whose own deadline cannot fire);
    # the parent kills it QRIS_STOP_TIMEOUT_S + max(2, a sixth) after the stop and exits 70.
    script = (
        "import os, pathlib, signal, sys, time\n"
        "d = pathlib.Path(os.environ['QRIS_DATA_DIR'])\n"
        "if d.name == 'w1': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "(d.parent / ('ready-' + d.name)).write_text(str(os.getpid()))\ntime.sleep(120)\n"
    )
    settings = Settings(data_dir=str(tmp_path), web_port=0, stop_timeout_s=0.5)
    started = time.monotonic()
    code = _run_until(settings, 2, script, lambda: len(list(tmp_path.glob("ready-*"))) == 2)
    assert code == 70
    assert 2.5 <= time.monotonic() - started < 30
    stuck = int((tmp_path / "ready-w1").read_text())
    with pytest.raises(ProcessLookupError):  # gone, not orphaned
        os.kill(stuck, 0)
