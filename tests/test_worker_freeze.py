"""The freeze watch in a real process: stopped (SIGSTOP) past the session and let go on, the
worker restarts before anything else it would run; a process whose loop is only blocked goes on."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, subprocess, sys, time
    from stream.worker.freeze import LoopWatch, on_sigcont, watch_for_freezes

    watch = LoopWatch(session_timeout_s=0.5)
    said = []

    def restart():  # what `restart_self` does: nothing of this process runs after it
        print("restarted after", said, flush=True)
        os._exit(0)

    async def main(mode):
        signal.signal(signal.SIGCONT, on_sigcont(watch, restart))
        asyncio.ensure_future(watch_for_freezes(watch, restart, check_s=0.05))
        await asyncio.sleep(0.3)  # the ticker thread runs
        asyncio.get_running_loop().call_soon(lambda: said.append("a loop callback"))
        if mode == "stop":  # stopped for 1.5 s by another process, then continued
            subprocess.Popen(["sh", "-c", f"sleep 1.5; kill -CONT {os.getpid()}"])
            os.kill(os.getpid(), signal.SIGSTOP)
        else:  # the loop blocked 1.5 s, the process running
            time.sleep(1.5)
        await asyncio.sleep(0.5)
        print("went on after", said, flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def run(mode: str) -> str:
    got = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    return got.stdout.strip()


def test_a_process_stopped_past_the_session_restarts_before_any_loop_callback() -> None:
    assert run("stop") == "restarted after []"


def test_a_process_whose_loop_was_only_blocked_goes_on() -> None:
    assert run("block") == "went on after ['a loop callback']"
