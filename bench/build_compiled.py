"""Build the compiled copy of the package (`make compiled`): stream/ copied into
build/compiled/stream, the hot core modules compiled there by mypyc, and the manifest that lets
the copy refuse to run once its sources change (stream/buildinfo.py).

    python bench/build_compiled.py [--out build/compiled]

Nothing is written in the source tree: a compiled module beside its `.py` would take precedence
over it, and an edit without a rebuild would run old code (tests/test_compiled_build.py fails
`make check` on one). The copy is built in `<out>.tmp` and renamed to `<out>` only once it
imports and checks, so a failed build leaves no half build behind; a previous build is replaced.

Compiled: every module of stream/core but `codec`, `decisions` and `ratemodel` (they subclass or
call into orjson's and river's C types), the replay file reader and one-pass driver, and the two
worker modules on the live worker's path per record that mypyc takes as they are: its state store
(`statestore`: a batch's changes written to the changelog and the local DB) and what it watches
(`watch`: called by the core for every record). The rest of the package (the worker's shell, its
Faust intake, settings, CLI) stays Python in the copy: the shell subclasses asyncio's lock (mypyc
fails on it) and tests replace its methods, the intake subclasses Faust's classes and is an async
generator (mypyc compiles none).

The C build: mypyc's one shared library for all the modules, one C file a module
(`--multi-file`, the default; `--single-file` puts them all in one C file, as `python -m mypyc`
does), the C files compiled `--jobs` at a time (default: the CPUs this process may use), at
`--opt-level` (gcc's -O, default 3). One C file cannot be split between CPUs, so the single file
builds on one CPU whatever `--jobs` says. One file a module loses some inlining across modules:
a replay runs about 0.6% more instructions a record (-O2: the same as -O3).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import resource
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
ALSO_COMPILED = [
    "stream/drivers/onepass.py",
    "stream/drivers/replayfile.py",
    "stream/worker/statestore.py",
    "stream/worker/watch.py",
]

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

# The setup script mypyc's extensions are built by (`python -m mypyc` writes a similar one).
#
# Type checking: mypyc keeps every module's syntax tree (mypy's `preserve_asts`), and so mypy
# checks the function bodies of the installed packages too (faust, aiohttp, numpy, river...),
# which it skips otherwise since their errors are ignored: about 8 of the build's 9.5 CPU
# minutes, for nothing the compiled modules use (their types come from signatures and class
# attributes, and a method that assigns attributes keeps its body). Here the trees are kept (the global option, which
# decides whether a checked tree is freed), but bodies are skipped in every module that the
# `*.*` pattern reaches and whose errors mypy ignores, i.e. the installed packages only: the
# package's own modules are checked in full. The C files are the same either way
# (`--check-installed` builds as mypyc does, to compare); mypyc generates them here and mypycify
# is handed them (`skip_cgen_input`). These are mypyc's internals as the pinned mypy has them
# (pyproject's dev list): after an upgrade, compare the C of both ways again.
#
# The C build: setuptools builds extensions in parallel (`build_ext -j`) but compiles the C
# files of one extension one after another, and the modules' shared library is one extension:
# its C files go through a pool here, at most JOBS compilers at a time in all.
SETUP = """\
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mypy.fscache import FileSystemCache
from mypyc.build import construct_groups, generate_c, get_mypy_config, mypycify
from mypyc.options import CompilerOptions
from setuptools import setup
from setuptools.command.build_ext import build_ext

MODULES = {modules!r}
JOBS = {jobs!r}
OPT_LEVEL = {opt_level!r}
MULTI_FILE = {multi_file!r}
STRIP_INSTALLED = {strip_installed!r}
COMPILERS = threading.BoundedSemaphore(JOBS)


class ParallelBuildExt(build_ext):
    def build_extension(self, ext):
        cc = self.compiler

        def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0,
                    extra_preargs=None, extra_postargs=None, depends=None):
            macros, objects, extra_postargs, pp_opts, build = cc._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs
            )
            cc_args = cc._get_cc_args(pp_opts, debug, extra_preargs)

            def one(obj):
                src, ext = build[obj]
                with COMPILERS:
                    cc._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

            with ThreadPoolExecutor(JOBS) as pool:
                list(pool.map(one, [obj for obj in objects if obj in build]))
            return objects

        cc.compile = compile
        super().build_extension(ext)


started = time.monotonic()
# mypycify's own steps up to the C files (mypyc.build.mypyc_build), with the option above.
options = CompilerOptions(multi_file=MULTI_FILE, separate=False)
fscache = FileSystemCache()
sources, all_sources, mypy_options = get_mypy_config(MODULES, None, options, fscache)
if STRIP_INSTALLED:
    mypy_options.per_module_options["*.*"] = {{"preserve_asts": False}}
groups = construct_groups(sources, False, True, None)
cfiles, _ops, deps = generate_c(all_sources, mypy_options, groups, fscache, compiler_options=options)
skip_cgen_input = (cfiles, [(dep.path, dep.include_dirs, dep.internal) for dep in deps])
extensions = mypycify(
    MODULES, opt_level=OPT_LEVEL, debug_level="1", multi_file=MULTI_FILE, skip_cgen_input=skip_cgen_input
)
mypyc_s, mypyc_cpu_s = time.monotonic() - started, time.process_time()
setup(name="qris_guard_compiled", ext_modules=extensions, cmdclass={{"build_ext": ParallelBuildExt}})
print(
    f"build_compiled: mypy and mypyc {{mypyc_s:.0f}} s ({{mypyc_cpu_s:.0f}} s CPU), "
    f"C {{time.monotonic() - started - mypyc_s:.0f}} s ({{JOBS}} at a time)"
)
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
    files_group = ap.add_mutually_exclusive_group()
    files_group.add_argument(
        "--multi-file", dest="multi_file", action="store_true", default=True, help="one C file a module (default)"
    )
    files_group.add_argument("--single-file", dest="multi_file", action="store_false", help="one C file for all")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ap.add_argument("--jobs", "-j", type=int, default=cpus, help="C compilers at a time (default: the CPUs)")
    ap.add_argument("--opt-level", choices="0123", default="3", help="gcc -O level (default 3)")
    ap.add_argument(
        "--check-installed",
        action="store_true",
        help="type-check the installed packages' function bodies too, as mypyc does (slower; same C)",
    )
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
    jobs = max(1, args.jobs)
    setup = SETUP.format(
        modules=compiled,
        jobs=jobs,
        opt_level=args.opt_level,
        multi_file=args.multi_file,
        strip_installed=not args.check_installed,
    )
    (tmp / "build").mkdir()
    (tmp / "build" / "setup.py").write_text(setup)
    build_ext = [sys.executable, "build/setup.py", "build_ext", "--inplace", "--parallel", str(jobs)]
    subprocess.run(build_ext, cwd=tmp, check=True)
    names = [m.removesuffix(".py").replace("/", ".") for m in compiled]
    manifest = {
        "version": MANIFEST_VERSION,
        # Relative to the copy's package: a build moved with its repository still checks.
        "source_root": source_root_entry(source, out / "stream"),
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mypy": importlib.metadata.version("mypy"),
        "python": sys.version.split()[0],
        "c_build": {"multi_file": args.multi_file, "opt_level": args.opt_level},
        "compiled": names,
        "files": files,
    }
    (package / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    # The copy keeps the package and the shared library: mypy's cache (17 MB, of a build that is
    # never incremental) goes with the C files.
    shutil.rmtree(tmp / "build")
    shutil.rmtree(tmp / ".mypy_cache", ignore_errors=True)
    (tmp / "mypy.ini").unlink()
    # The copy must import as what it is, from anywhere (-P: not the current directory's sources).
    env = {**os.environ, "PYTHONPATH": str(tmp)}
    modules = ", ".join(names)
    probe = f"import stream, {modules}; assert stream.BUILD == 'compiled', stream.BUILD"
    subprocess.run([sys.executable, "-P", "-c", probe], cwd="/", env=env, check=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"build_compiled: {len(compiled)} modules compiled into {out} in {time.monotonic() - started:.0f} s "
        f"({cpu.ru_utime + cpu.ru_stime:.0f} s CPU)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
