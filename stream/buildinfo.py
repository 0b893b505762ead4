"""Which build of the package runs, `BUILD`: "source" (the `.py` files of the repository) or
"compiled" (`make compiled`: a copy of the package under build/compiled with the hot core
modules compiled by mypyc), and the check that a compiled copy still matches its sources.

A compiled module takes precedence over a `.py` file of the same name, and the copy runs
whatever it was built from: after an edit of the sources it would run the old code without a
word, in tests, in a replay or live. So the copy carries a manifest (`MANIFEST`, written by
bench/build_compiled.py): the sources' root and the SHA-256 of every source file it was built
from. Importing the copy checks the sources against it and refuses (`StaleBuild`, naming the
files and `REBUILD`) if any changed, went or came, or if a compiled module was not built for
this Python (it would fall back to its `.py` copy unseen). The sources' root is recorded
relative to the copy's package directory (`../../../stream` for build/compiled/stream), so a
copy moved together with its repository still finds, and checks, the sources beside it. A
source tree has no manifest: one stat. Imports nothing of the package; reads files, never the
environment.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
from pathlib import Path
from typing import Any, Literal

# In the compiled copy's package directory, beside this module.
MANIFEST = "compiled-manifest.json"
MANIFEST_VERSION = 2
REBUILD = "make compiled"

Build = Literal["source", "compiled"]


class StaleBuild(ImportError):
    """The compiled copy does not match the sources it was built from: it is not run."""


def source_hashes(root: Path) -> dict[str, str]:
    """SHA-256 (hex) of every `.py` file under `root` (the package's source directory), by path
    relative to it (`core/partition.py`)."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def source_root_entry(source: Path, package_dir: Path) -> str:
    """The manifest's `source_root` for a copy at `package_dir` built from `source`: the path of
    `source` relative to `package_dir`, POSIX. Relative, a repository moved with its build
    (renamed, copied, mounted elsewhere) keeps them as they were to each other."""
    return Path(os.path.relpath(source.resolve(), package_dir.resolve())).as_posix()


def source_dir(manifest: dict[str, Any], package_dir: Path) -> Path:
    """The source directory the copy at `package_dir` is checked against: the manifest's
    `source_root` taken from `package_dir`."""
    return Path(os.path.normpath(package_dir / manifest["source_root"]))


def stale_files(manifest: dict[str, Any], package_dir: Path) -> list[str]:
    """What makes the compiled copy at `package_dir` stale, one entry a problem (none: it
    matches its sources): source files changed, removed or added since the build, and compiled
    modules with no extension module this Python can load."""
    root = source_dir(manifest, package_dir)
    if not root.is_dir():
        return [f"{root}: the source directory it was built from is gone"]
    built: dict[str, str] = manifest["files"]
    now = source_hashes(root)
    changed = sorted(name for name in built.keys() & now.keys() if built[name] != now[name])
    problems = [f"{root / name}: changed since the build" for name in changed]
    problems += [f"{root / name}: removed since the build" for name in sorted(built.keys() - now.keys())]
    problems += [f"{root / name}: added since the build" for name in sorted(now.keys() - built.keys())]
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    for module in manifest["compiled"]:
        stem = package_dir.joinpath(*module.split(".")[1:])
        if not any(stem.with_name(stem.name + suffix).is_file() for suffix in suffixes):
            problems.append(f"{module}: no compiled module for this Python ({suffixes[0]})")
    return problems


def check(package_dir: Path) -> tuple[Build, dict[str, Any] | None]:
    """The build the package at `package_dir` is, and its manifest (None: a source tree).
    Raises `StaleBuild` for a compiled copy that does not match its sources."""
    path = package_dir / MANIFEST
    if not path.is_file():
        return "source", None
    import json  # (only a compiled copy reads it)

    manifest: dict[str, Any] = json.loads(path.read_bytes())
    if manifest.get("version") != MANIFEST_VERSION:
        version = manifest.get("version")
        raise StaleBuild(f"{path}: manifest version {version!r}, not {MANIFEST_VERSION}; run `{REBUILD}`")
    problems = stale_files(manifest, package_dir)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise StaleBuild(
            f"the compiled build at {package_dir.parent} does not match its sources ({shown}): "
            f"refused rather than run old code; run `{REBUILD}` in {source_dir(manifest, package_dir).parent}, "
            f"or run the sources (without it on PYTHONPATH)"
        )
    return "compiled", manifest


BUILD, _manifest = check(Path(__file__).resolve().parent)


def describe() -> str:
    """One line for the start of the worker and replay: which build runs, and from where."""
    if _manifest is None:
        return f"build: source ({Path(__file__).resolve().parent})"
    return (
        f"build: compiled by mypyc {_manifest['mypy']} at {_manifest['built_at']} "
        f"({len(_manifest['compiled'])} modules; {Path(__file__).resolve().parent}, "
        f"checked against {source_dir(_manifest, Path(__file__).resolve().parent)})"
    )
