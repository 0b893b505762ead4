"""The compiled build (`make compiled`, stream/buildinfo.py): the source tree holds no compiled
module, and a compiled copy refuses to import once a source it was built from changed, went or
came, and imports when moved together with its sources. One test needs a compiled build
(build/compiled) and works on a copy of it."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stream.buildinfo import (
    MANIFEST,
    MANIFEST_VERSION,
    StaleBuild,
    check,
    source_hashes,
    source_root_entry,
    stale_files,
)

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "build" / "compiled"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_the_source_tree_holds_no_compiled_module() -> None:
    # A compiled module beside its `.py` takes precedence over it: an edit without a rebuild
    # would run old code. `make compiled` builds in build/compiled, never here.
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES) + (".so", ".pyd")
    found = [p for p in (ROOT / "stream").rglob("*") if p.name.endswith(suffixes) or p.name == MANIFEST]
    found += [p for p in ROOT.glob("*__mypyc*")]  # mypyc's shared library of an in-place build
    assert not found, f"compiled modules in the source tree (delete them; `make compiled` builds outside): {found}"


def test_the_setup_script_of_the_compiled_build_is_python() -> None:
    # bench/build_compiled.py writes it from a template: a brace or a quote wrong there would
    # show only in a build of minutes, with a C compiler.
    from bench.build_compiled import SETUP

    for multi_file, strip_installed in ((True, True), (False, False)):
        text = SETUP.format(
            modules=["stream/core/ids.py"],
            jobs=2,
            opt_level="3",
            multi_file=multi_file,
            strip_installed=strip_installed,
        )
        compile(text, "setup.py", "exec")
        assert f"MULTI_FILE = {multi_file!r}\n" in text and f"STRIP_INSTALLED = {strip_installed!r}\n" in text


def _tree(root: Path) -> Path:
    package = root / "stream"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "partition.py").write_text("X = 1\n")
    (package / "core" / "__pycache__").mkdir()
    (package / "core" / "__pycache__" / "partition.cpython-311.pyc").write_bytes(b"not hashed")
    return package


def _manifest(source: Path, built: Path, compiled: list[str]) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "source_root": source_root_entry(source, built),
        "built_at": "2026-12-07T09:00:00Z",
        "mypy": "2.4.1",
        "python": "3.11",
        "compiled": compiled,
        "files": source_hashes(source),
    }


def test_a_copy_is_stale_when_a_source_changed_went_or_came(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    built = tmp_path / "build" / "stream"
    (built / "core").mkdir(parents=True)
    (built / "core" / f"partition{SUFFIX}").write_bytes(b"")
    manifest = _manifest(source, built, ["stream.core.partition"])
    assert manifest["source_root"] == "../../src/stream"
    assert sorted(manifest["files"]) == ["__init__.py", "core/partition.py"]
    assert stale_files(manifest, built) == []
    (source / "core" / "partition.py").write_text("X = 2\n")
    (source / "__init__.py").unlink()
    (source / "core" / "new.py").write_text("")
    assert stale_files(manifest, built) == [
        f"{source / 'core/partition.py'}: changed since the build",
        f"{source / '__init__.py'}: removed since the build",
        f"{source / 'core/new.py'}: added since the build",
    ]


def test_a_compiled_module_missing_for_this_python_is_stale(tmp_path: Path) -> None:
    # Built for another Python, the `.so` is not loaded and its `.py` copy runs instead, unseen.
    source = _tree(tmp_path / "src")
    built = tmp_path / "build" / "stream"
    (built / "core").mkdir(parents=True)
    (built / "core" / "partition.cpython-399-x86_64-linux-gnu.so").write_bytes(b"")
    problems = stale_files(_manifest(source, built, ["stream.core.partition"]), built)
    assert problems == [f"stream.core.partition: no compiled module for this Python ({SUFFIX})"]


def test_check_refuses_a_stale_copy_and_says_how_to_rebuild(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    built = tmp_path / "build" / "stream"
    built.mkdir(parents=True)
    assert check(built) == ("source", None)  # no manifest: a source tree
    manifest = _manifest(source, built, [])
    (built / MANIFEST).write_text(json.dumps(manifest))
    assert check(built) == ("compiled", manifest)
    (source / "core" / "partition.py").write_text("X = 2\n")
    with pytest.raises(StaleBuild, match=r"core/partition\.py: changed since the build.*run `make compiled`"):
        check(built)
    shutil.rmtree(source)
    with pytest.raises(StaleBuild, match="the source directory it was built from is gone"):
        check(built)
    (built / MANIFEST).write_text(json.dumps({**manifest, "version": MANIFEST_VERSION + 1}))
    with pytest.raises(StaleBuild, match="manifest version"):
        check(built)


def test_a_copy_moved_with_its_sources_still_checks_them(tmp_path: Path) -> None:
    # The repository renamed (or copied, or mounted elsewhere) with its build in it: the copy
    # finds the sources where they stand to it, still refuses an edit, and refuses when moved
    # without them.
    repo = tmp_path / "repo"
    source = _tree(repo)
    built = repo / "build" / "compiled" / "stream"
    built.mkdir(parents=True)
    manifest = _manifest(source, built, [])
    assert manifest["source_root"] == "../../../stream"
    (built / MANIFEST).write_text(json.dumps(manifest))
    moved = tmp_path / "elsewhere" / "repo2"
    moved.parent.mkdir()
    repo.rename(moved)
    built = moved / "build" / "compiled" / "stream"
    assert check(built) == ("compiled", manifest)
    (moved / "stream" / "core" / "partition.py").write_text("X = 2\n")
    with pytest.raises(StaleBuild, match=rf"{moved / 'stream/core/partition.py'}: changed since the build"):
        check(built)
    (moved / "stream" / "core" / "partition.py").write_text("X = 1\n")
    alone = tmp_path / "alone"
    shutil.copytree(moved / "build", alone)
    with pytest.raises(StaleBuild, match="the source directory it was built from is gone"):
        check(alone / "compiled" / "stream")


def test_a_copy_of_this_package_moved_with_its_repository_imports(tmp_path: Path) -> None:
    # End to end with this tree's buildinfo and no compiler: a copy of the package laid out as
    # bench/build_compiled.py lays it (no module compiled), its manifest written as it writes it,
    # the repository then renamed.
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "stream", repo / "stream", ignore=ignore)
    built = repo / "build" / "compiled" / "stream"
    shutil.copytree(ROOT / "stream", built, ignore=ignore)
    manifest = {**_manifest(repo / "stream", built, []), "compiled": []}
    (built / MANIFEST).write_text(json.dumps(manifest))
    moved = tmp_path / "moved"
    repo.rename(moved)
    code = "import stream; print(stream.BUILD); print(stream.buildinfo.describe())"
    env = {**os.environ, "PYTHONPATH": str(moved / "build" / "compiled")}
    run = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "compiled"
    assert f"checked against {moved / 'stream'})" in run.stdout
    (moved / "stream" / "settings.py").write_text("# an edit after the build\n")
    stale = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert stale.returncode != 0
    assert f"{moved / 'stream' / 'settings.py'}: changed since the build" in stale.stderr
    assert f"run `make compiled` in {moved}," in stale.stderr


def _import_stream(build: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # -P: the current directory is not put first on the path (`python -m` would put it there).
    env = {**os.environ, "PYTHONPATH": str(build)}
    code = "import stream, stream.core.partition as p; print(stream.BUILD, p.__file__)"
    return subprocess.run([sys.executable, "-P", "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def _built_manifest_version() -> object:
    path = BUILT / "stream" / MANIFEST
    return json.loads(path.read_bytes()).get("version") if path.is_file() else None


@pytest.mark.skipif(
    _built_manifest_version() != MANIFEST_VERSION,
    reason="no compiled build of this manifest version in build/compiled (`make compiled`)",
)
def test_the_compiled_build_refuses_to_import_after_a_source_edit(tmp_path: Path) -> None:
    # A copy of the build, checked against a copy of the sources it was built from (its own
    # `.py` copies) laid out as in the repository, so that editing them touches neither the
    # repository nor its build; the two moved together before the import.
    build = tmp_path / "repo" / "build" / "compiled"
    shutil.copytree(BUILT, build, ignore=shutil.ignore_patterns("__pycache__"))
    source = tmp_path / "repo" / "stream"
    shutil.copytree(build / "stream", source, ignore=shutil.ignore_patterns("__pycache__", "*.so", MANIFEST))
    manifest = json.loads((build / "stream" / MANIFEST).read_text())
    assert source_hashes(source) == manifest["files"]
    assert manifest["source_root"] == "../../../stream"
    (tmp_path / "repo").rename(tmp_path / "moved")
    build = tmp_path / "moved" / "build" / "compiled"
    source = tmp_path / "moved" / "stream"

    fresh = _import_stream(build, tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    build_name, partition_file = fresh.stdout.split()
    assert build_name == "compiled" and partition_file.endswith(SUFFIX)

    with open(source / "core" / "partition.py", "a") as fh:
        fh.write("# an edit after the build\n")
    stale = _import_stream(build, tmp_path)
    assert stale.returncode != 0
    last = stale.stderr.strip().splitlines()[-1]
    assert last.startswith("stream.buildinfo.StaleBuild: ")
    assert f"{source / 'core' / 'partition.py'}: changed since the build" in last
    assert "run `make compiled`" in last


def test_the_frozen_dataclasses_of_the_compiled_modules_pickle_by_their_constructor() -> None:
    # `replay --jobs` pickles parameters and incidents between processes. Compiled, a frozen
    # dataclass is a native class whose default unpickling sets fields one by one (refused), and
    # a pool whose job failed so waited for ever: each defines `__reduce__`. Checked in both
    # builds; `make test-compiled` runs the round trips on the compiled classes.
    import dataclasses
    import importlib
    import pickle

    from stream.core.burst import BurstParams
    from stream.core.holds import IncidentEvent, IncidentTimeline
    from stream.core.partition import Params
    from stream.core.signals import Outcome
    from stream.core.validation import Rejection

    # The modules bench/build_compiled.py compiles (without a build: the same rule).
    core = [f"stream.core.{p.stem}" for p in sorted((ROOT / "stream" / "core").glob("*.py"))]
    compiled = [m for m in core if m.rsplit(".", 1)[1] not in {"__init__", "codec", "decisions", "ratemodel"}]
    compiled += [
        "stream.drivers.onepass",
        "stream.drivers.replayfile",
        "stream.worker.statestore",
        "stream.worker.watch",
    ]
    missing = [
        f"{name}.{cls.__name__}"
        for name in compiled
        for cls in vars(importlib.import_module(name)).values()
        if isinstance(cls, type)
        and cls.__module__ == name
        and dataclasses.is_dataclass(cls)
        and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        and "__reduce__" not in vars(cls)
    ]
    assert not missing
    timeline = IncidentTimeline()
    timeline.add([IncidentEvent(60_000, "opened", "inc-1", "switch", "SW1")], 120_000)
    for value in (
        Params(max_hold_ms=7_200_000),
        BurstParams(threshold=6.5),
        Outcome("failed", 25_000, "05"),
        Rejection("bad_value", "why", "amount"),
        IncidentEvent(60_000, "opened", "inc-1", "switch", "SW1"),
        timeline,
    ):
        assert pickle.loads(pickle.dumps(value)) == value
