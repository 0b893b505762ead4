"""Build the compiled copy of the package (`make compiled`): stream/ copied into
build/compiled/stream, the hot core modules compiled there by mypyc, and the manifest that lets
the copy refuse to run once its sources change (stream/buildinfo.py).

    python bench/build_compiled.py [--out build/compiled]

Nothing is written in the source tree: a compiled module beside its `.py` would take precedence
over it, and an edit without a rebuild would run old code (tests/test_compiled_build.py fails
`make check` on one). The copy is built in `<out>.tmp` and renamed to `<out>` only once it
imports and checks, so a failed build leaves no half build behind; a previous build is replaced.

Compiled: every module of stream/core but `codec`, `decisions` and `ratemodel` (they subclass or
call into orjson's and river's C types), and the replay file reader and one-pass driver. The
rest of the package (worker, settings, CLI) stays Python in the copy.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from stream.buildinfo import MANIFEST, MANIFEST_VERSION, source_root_entry  # noqa: E402  (the sources being built)

NOT_COMPILED = {"__init__", "codec", "decisions", "ratemodel"}
ALSO_COMPILED = ["stream/drivers/onepass.py", "stream/drivers/replayfile.py"]

# The repository's mypy settings (pyproject.toml) for the copy: mypyc type-checks the modules it
# compiles and everything they import. (pyproject.toml itself is not copied: setuptools, which
# mypyc runs, would read its project table.)
MYPY_INI = """\
[mypy]
strict = True
python_version = 3.11
namespace_packages = False

[mypy-aiokafka,aiokafka.*,kafka,kafka.*]
ignore_missing_imports = True
"""


def modules_to_compile(package: Path) -> list[str]:
    core = sorted(p for p in (package / "core").glob("*.py") if p.stem not in NOT_COMPILED)
    return [p.relative_to(package.parent).as_posix() for p in core] + ALSO_COMPILED


def copy_sources(source: Path, package: Path) -> dict[str, str]:
    """Copy every `.py` file of `source` into `package`; the SHA-256 of each, by relative path,
    of the bytes copied (an edit during the build makes the build stale, not wrong)."""
    files: dict[str, str] = {}
    for path in sorted(source.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        name = path.relative_to(source).as_posix()
        if path.suffix != ".py":
            raise SystemExit(f"build_compiled: {path}: not a .py file in the sources (a compiled module? `make clean`)")
        data = path.read_bytes()
        files[name] = hashlib.sha256(data).hexdigest()
        dest = package / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "compiled", help="the copy (replaced)")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    source = ROOT / "stream"
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    package = tmp / "stream"
    started = time.monotonic()
    files = copy_sources(source, package)
    compiled = modules_to_compile(package)
    (tmp / "mypy.ini").write_text(MYPY_INI)
    # The C sources and objects go to <tmp>/build (mypyc's own choice), the extension modules
    # beside the copies of their sources, and the modules' shared library at <tmp>.
    subprocess.run([sys.executable, "-m", "mypyc", *compiled], cwd=tmp, check=True)
    names = [m.removesuffix(".py").replace("/", ".") for m in compiled]
    manifest = {
        "version": MANIFEST_VERSION,
        # Relative to the copy's package: a build moved with its repository still checks.
        "source_root": source_root_entry(source, out / "stream"),
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mypy": importlib.metadata.version("mypy"),
        "python": sys.version.split()[0],
        "compiled": names,
        "files": files,
    }
    (package / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(tmp / "build")
    (tmp / "mypy.ini").unlink()
    # The copy must import as what it is, from anywhere (-P: not the current directory's sources).
    env = {**os.environ, "PYTHONPATH": str(tmp)}
    modules = ", ".join(names)
    probe = f"import stream, {modules}; assert stream.BUILD == 'compiled', stream.BUILD"
    subprocess.run([sys.executable, "-P", "-c", probe], cwd="/", env=env, check=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"build_compiled: {len(compiled)} modules compiled into {out} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
