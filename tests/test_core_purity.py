"""The core is I/O-free: it imports no Kafka or Faust code, reads no clock and no environment."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "stream" / "core"
FORBIDDEN_MODULES = {
    "faust",
    "aiokafka",
    "kafka",
    "mode",
    "time",
    "datetime",
    "os",
    "socket",
    "asyncio",
    "random",
    "subprocess",
    "threading",
    "pathlib",
    "io",
    "logging",
}
FORBIDDEN_NAMES = {"open", "print", "input"}


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_modules_import_nothing_with_io_or_a_clock() -> None:
    bad = []
    for path in _core_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN_MODULES:
                    bad.append(f"{path.name}: import {name}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_NAMES:
                bad.append(f"{path.name}:{node.lineno}: calls {node.func.id}()")
    assert not bad, bad


def test_importing_the_core_loads_no_kafka_or_faust_module() -> None:
    code = (
        "import sys, pkgutil, importlib, stream.core as c\n"
        "for m in pkgutil.walk_packages(c.__path__, 'stream.core.'): importlib.import_module(m.name)\n"
        "print(' '.join(sorted(n for n in sys.modules if n.split('.')[0] in {'faust','aiokafka','kafka','mode'})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=CORE.parent.parent
    )
    assert out.stdout.strip() == ""
