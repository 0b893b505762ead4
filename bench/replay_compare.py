"""Do two checkouts of qris-guard decide the same? Replays the same files with both, byte for byte
(not a test; the guard run before committing a speed change).

    git archive main | tar -x -C /tmp/base          # the reference code
    python bench/replay_compare.py --base /tmp/base --in outage.jsonl mixed.jsonl lebaran.jsonl

Each file is replayed with `--drain` (or `--args`: other replay arguments), with refund holds
on (the default) and off (`--max-hold-s 0`), by `python -m stream replay` run from each tree
(its own `stream` package first on the path). `--jobs 1` outputs are compared with `cmp` as
they are (one process writes in decision order); with `--jobs 2` also, the parallel replay's
lines are compared sorted, since only the interleaving of different partitions' lines may
differ. Outputs of the base tree are kept in
`--cache` and reused while the base tree and the input are unchanged (their paths, sizes and
modification times name the cached file).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def replay(tree: Path, src: Path, out: Path, holds: bool, jobs: int, extra: list[str] | None = None) -> float:
    cmd = [sys.executable, "-m", "stream", "replay", "--in", str(src), "--out", str(out)]
    cmd += ["--drain"] if extra is None else extra
    cmd += ["--jobs", str(jobs)] + ([] if holds else ["--max-hold-s", "0"])
    env = dict(os.environ, PYTHONPATH=str(tree))
    started = time.perf_counter()
    subprocess.run(cmd, cwd=tree, env=env, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def tree_stamp(tree: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((tree / "stream").rglob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def same(a: Path, b: Path, *, sort: bool) -> bool:
    if not sort:
        return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0
    return sorted(a.read_bytes().splitlines()) == sorted(b.read_bytes().splitlines())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, type=Path, help="the reference tree (e.g. main, from git archive)")
    ap.add_argument("--in", dest="inputs", required=True, nargs="+", type=Path, help="replay files")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1], help="replay --jobs values (default 1)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qris-replay-compare"), help="base outputs kept here")
    ap.add_argument("--work", type=Path, default=None, help="where this tree's outputs go (default: --cache)")
    ap.add_argument(
        "--args",
        default=None,
        help='replay arguments instead of "--drain", e.g. "" (no drain) or "--drain --from T --to T"',
    )
    args = ap.parse_args()
    extra = None if args.args is None else args.args.split()
    variant = "" if extra is None else "-" + hashlib.sha256(args.args.encode()).hexdigest()[:8]
    args.cache.mkdir(parents=True, exist_ok=True)
    work = args.work or args.cache
    work.mkdir(parents=True, exist_ok=True)
    stamp = tree_stamp(args.base)
    failed = 0
    for src in args.inputs:
        st = src.stat()
        source = f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}:{stamp}{variant}"
        tag = hashlib.sha256(source.encode()).hexdigest()[:12]
        for holds in (True, False):
            for jobs in args.jobs:
                name = f"{src.stem}-holds-{'on' if holds else 'off'}-jobs{jobs}{variant}"
                base_out = args.cache / f"{name}-base-{tag}.jsonl"
                if not base_out.exists():
                    tmp = base_out.with_suffix(".part")
                    replay(args.base, src, tmp, holds, jobs, extra)
                    tmp.rename(base_out)
                ours = work / f"{name}-ours.jsonl"
                took = replay(ROOT, src, ours, holds, jobs, extra)
                ok = same(base_out, ours, sort=jobs > 1)
                failed += not ok
                lines = ours.read_bytes().count(b"\n")
                how = "sorted lines" if jobs > 1 else "cmp"
                print(f"{name}: {lines} lines, {'identical' if ok else 'DIFFERENT'} ({how}), ours {took:.1f} s")
    print("all identical" if not failed else f"{failed} DIFFERENT")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
