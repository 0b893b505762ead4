"""docker-compose.yml, which cannot run here (no Docker engine): what it gives qris-guard is
checked against the settings the code knows, so a renamed or mistyped variable fails here
rather than in a user's container, where the worker would refuse to start."""

from __future__ import annotations

import re
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
