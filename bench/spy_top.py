"""A readable top-N of py-spy's collapsed stacks (`py-spy record --format raw`): own and
cumulative time per function and per package (not a test; used by `bench/live_throughput.py`).

    python bench/spy_top.py STACKS.txt [--top 30]

py-spy samples the process from outside (no tracing hook, no thread of its own in it), and by
default drops samples where a thread waits in a system call (idle): a sample is a thread running
or ready to run. On a loaded machine "ready" includes waiting for a CPU, so samples / rate is
not CPU time (the benchmark reads that from /proc), but the shares are the shares of its work. Own time
is the innermost Python frame of a sample (a C call such as a RocksDB write or a socket send is
charged to the Python line that made it); cumulative time counts a function once per sample
wherever it is on the stack.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# Longest match first: stream/core before a generic `stream/`.
PACKAGES = (
    ("/stream/core/", "stream.core"),
    ("/stream/worker/", "stream.worker"),
    ("/stream/", "stream (other)"),
    ("/bench/", "bench"),
    ("bare_agent.py", "bench"),
    ("/faust/", "faust"),
    ("/mode/", "mode"),
    ("/aiokafka/", "aiokafka"),
    ("/kafka/", "kafka-python"),
    ("/asyncio/", "asyncio"),
    ("/aiohttp/", "aiohttp"),
    ("/yarl/", "aiohttp"),
    ("/multidict/", "aiohttp"),
    ("rocksdict", "rocksdict"),
    ("uvloop", "uvloop"),
    ("orjson", "orjson"),
    ("/river/", "river"),
    ("/logging/", "logging"),
    ("/prometheus_client/", "prometheus_client"),
    ("<string>", "generated code (dataclass and namedtuple __init__)"),
)

# A sample whose innermost Python frame is the call that runs an event loop is the loop's own C
# work (uvloop: polling, socket reads and writes, callbacks' scheduling): the main thread's loop
# and the thread Faust runs its aiokafka consumer in.
LOOP_FRAMES = {"Worker.execute_from_commandline", "ServiceThread._start_thread", "run_until_complete"}
LOOP = "event loops in C (uvloop: polling, sockets, scheduling)"

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def package_of(path: str) -> str:
    path = "/" + path.lstrip("/")  # py-spy writes paths relative to sys.path: `faust/streams.py`
    for needle, name in PACKAGES:
        if needle in path:
            return name
    return "other (stdlib, importlib, ...)"


def short_path(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/wt-live/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def parse(text: str) -> list[tuple[list[tuple[str, str, str]], int]]:
    """(frames root first as (function, file, line), samples) per collapsed line."""
    out = []
    for raw in text.splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = FRAME.match(part)
            if m is None:  # a thread name or a native frame without a file
                frames.append((part, "", ""))
            else:
                frames.append((m["func"], m["file"], m["line"] or ""))
        out.append((frames, int(count)))
    return out


def summarise(text: str, top: int = 30, title: str = "") -> str:
    samples = parse(text)
    total = sum(n for _, n in samples) or 1
    own_fn: Counter[str] = Counter()
    own_line: Counter[str] = Counter()
    cum_fn: Counter[str] = Counter()
    own_pkg: Counter[str] = Counter()
    cum_pkg: Counter[str] = Counter()
    for frames, n in samples:
        func, path, line = frames[-1]
        own_fn[f"{func} ({short_path(path)})"] += n
        own_line[f"{func} ({short_path(path)}:{line})"] += n
        own_pkg[LOOP if func in LOOP_FRAMES else package_of(path)] += n
        for name in {f"{f} ({short_path(p)})" for f, p, _ in frames}:
            cum_fn[name] += n
        # Below the event loop only: the frames that start the process and run the loop (runpy,
        # the CLI, mode's Worker, a thread's bootstrap) are on every stack and say nothing.
        loop_at = max((i for i, (f, _, _) in enumerate(frames) if f in LOOP_FRAMES), default=-1)
        for pkg in {package_of(p) for _, p, _ in frames[loop_at + 1 :] if p}:
            cum_pkg[pkg] += n

    def table(counter: Counter[str], heading: str, k: int) -> list[str]:
        rows = [heading, f"{'samples':>8} {'share':>6}  what"]
        rows += [f"{n:>8} {100 * n / total:>5.1f}%  {name}" for name, n in counter.most_common(k)]
        return [*rows, ""]

    lines = [f"py-spy, {total} samples of threads not idle" + (f": {title}" if title else ""), ""]
    lines += table(own_pkg, "own time by package (the innermost Python frame's file)", 20)
    lines += table(cum_pkg, "cumulative time by package (anywhere on the stack below the event loop)", 20)
    lines += table(own_fn, f"top {top} functions by own time", top)
    lines += table(own_line, f"top {top} lines by own time (a C call is charged to its line)", top)
    lines += table(cum_fn, f"top {top} functions by cumulative time", top)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stacks", type=Path, nargs="+", help="py-spy raw output; several are added up")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    text = "\n".join(p.read_text() for p in args.stacks)
    print(summarise(text, args.top, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
