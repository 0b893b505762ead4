"""docker-compose.yml, which cannot run here (no Docker engine): what it gives qris-guard is
checked against the settings the code knows, so a renamed or mistyped variable fails here
rather than in a user's container, where the worker would refuse to start."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from stream.settings import DOCS, from_env

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
_SETTING = re.compile(r"^\s+(QRIS_[A-Z0-9_]+):\s*(.*?)\s*(#.*)?$")


def _shared_env() -> tuple[dict[str, str], set[str]]:
    """`x-qris-env`'s variables (name -> value) and the names of its commented examples."""
    block = COMPOSE.read_text().split("x-qris-env: &qris-env\n", 1)[1].split("\n\n", 1)[0]
    given: dict[str, str] = {}
    examples: set[str] = set()
    for line in block.splitlines():
        if line.lstrip().startswith("#"):
            examples.update(re.findall(r"QRIS_[A-Z0-9_]+", line))
        elif m := _SETTING.match(line):
            given[m.group(1)] = m.group(2).strip('"')
    return given, examples


def test_the_shared_environment_is_settings_qris_guard_accepts() -> None:
    given, examples = _shared_env()
    assert {"QRIS_BOOTSTRAP", "QRIS_WEB_HOST", "QRIS_DATA_DIR"} <= set(given)
    s = from_env(given)
    assert s.bootstrap == "kafka:9092" and s.web_host == "0.0.0.0" and s.partitions == 4
    # The commented examples (a bank's SASL_SSL cluster) name settings that exist too.
    assert {"QRIS_SECURITY_PROTOCOL", "QRIS_SASL_PASSWORD_FILE", "QRIS_API_TOKEN_FILE"} <= examples
    assert examples <= {name for name, _doc in DOCS.values()}


def test_variables_only_compose_reads_do_not_stop_a_run_on_the_host() -> None:
    # Set in the shell for `docker compose`, they are in the environment of a qris-guard
    # command run from the same shell.
    compose_only = set(re.findall(r"\$\{(QRIS_[A-Z0-9_]+)", COMPOSE.read_text()))
    assert compose_only == {"QRIS_KAFKA_HOST_PORT", "QRIS_WEB_HOST_PORT", "QRIS_WORKER_PROCESSES"}
    from_env(dict.fromkeys(compose_only, "2"))


def _worker_healthcheck() -> str:
    """The worker service's healthcheck script (the `python -c` block of its `test`)."""
    service = COMPOSE.read_text().split("\n  worker:\n", 1)[1].split("\n  # Demo traffic", 1)[0]
    block = service.split("        - -c\n        - |\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line.strip() and not line.startswith(" " * 10):
            break
        lines.append(line[10:])
    return "\n".join(lines) + "\n"


def _healthcheck_seeing_only(script: str, proc_view: Path, pids: list[int]) -> str:
    """`script` reading a /proc that holds only `pids` (links to their real entries): the host
    running the tests may run workers of its own (the Kafka tier's `python -m stream worker`),
    which a container's /proc would not show."""
    proc_view.mkdir(exist_ok=True)
    for old in proc_view.iterdir():
        old.unlink()
    for pid in pids:
        (proc_view / str(pid)).symlink_to(f"/proc/{pid}")
    assert script.count('Path("/proc")') == 1
    return script.replace('Path("/proc")', f"Path({str(proc_view)!r})")


def test_the_worker_healthcheck_passes_with_the_web_endpoints_off_while_a_worker_runs(tmp_path: Path) -> None:
    # With QRIS_WEB_PORT=0 there is no /qris/ready to ask (asking port 0 fails at every check,
    # and the services waiting for a healthy worker would never start): healthy means a
    # `qris-guard worker` process runs, neither stopped nor a zombie.
    script = _worker_healthcheck()
    assert "/qris/ready" in script
    view = tmp_path / "proc"

    def check(port: str, pids: list[int]) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "QRIS_WEB_PORT": port}
        seen = _healthcheck_seeing_only(script, view, pids)
        return subprocess.run([sys.executable, "-c", seen], env=env, capture_output=True, text=True, timeout=30)

    # Stand-ins for the container's worker: argv as the entry point's (`qris-guard worker ...`),
    # and as the same worker's after a watchdog replaced the process (`recovery.restart_self`
    # runs `python -m stream worker ...`): still a worker, still healthy.
    started = [
        ["/bin/sh", "-c", "sleep 60; :", "/opt/venv/bin/qris-guard", "worker"],
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", "stream", "worker", "--processes", "1"],
    ]
    for argv in started:
        fake = subprocess.Popen(argv)
        try:
            time.sleep(0.2)
            ok = check("0", [fake.pid])
            assert ok.returncode == 0, (argv, ok.stderr)
            fake.send_signal(signal.SIGSTOP)  # a stopped worker is not healthy
            time.sleep(0.2)
            stopped = check("0", [fake.pid])
            assert stopped.returncode == 1 and "no qris-guard worker running" in stopped.stderr
        finally:
            fake.kill()
            fake.wait()
    assert check("0", []).returncode == 1
    # Another process is no worker (the check itself runs `python -c` in the container).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "stream", "worker"])
    try:
        time.sleep(0.2)
        assert check("0", [other.pid]).returncode == 1
    finally:
        other.kill()
        other.wait()
    # With the web endpoints on, the page is asked (nothing listens here: not healthy).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert check(str(closed), []).returncode == 1
