"""Partition-parallel offline replay of a replay file.

Partitions are independent by the contract (each has its own watermark and references), so
`jobs` processes each read the whole file, fully parse only the lines of their partitions
(found with a cheap byte search, confirmed by a full parse when a line is ambiguous) and
decide them with the same core. Each job writes its own output; the parent concatenates them
in job order. Decisions are identical to a single-process replay; only the interleaving of
lines from different partitions differs. Each job hands back its partitions' burst signals and
the parent runs the one burst detector over all of them.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from ..core import codec
from ..core.burst import BurstParams
from ..core.partition import OffsetOrderError, Params
from .replay import Replay, detect_bursts
from .replayfile import TimeRange, decision_line, parse_line


class ReplayRefused(ValueError):
    """The replay file breaks an input rule (offsets out of order), named by file and line."""


_PARTITION = re.compile(rb'"partition"\s*:\s*(\d+)')


def _line_partition(raw: bytes) -> int | None:
    found = _PARTITION.findall(raw)
    if len(found) == 1:
        return int(found[0])
    if not raw.strip():
        return None
    return int(codec.loads(raw)["partition"])


def _job(
    path: str,
    jobs: int,
    index: int,
    params: Params,
    drain: bool,
    topics: dict[str, str],
    out: str,
    times: tuple[int | None, int | None],
) -> tuple[int, list[Any], list[int]]:
    r = Replay(params)
    seq: dict[tuple[str, int], int] = {}
    n = 0

    def write(fh: IO[bytes], partition: int, role: str, d: object) -> None:
        topic = topics[role]
        k = (topic, partition)
        seq[k] = seq.get(k, -1) + 1
        fh.write(decision_line(topic, partition, seq[k], d))  # type: ignore[arg-type]

    within = TimeRange(*times)
    with open(path, "rb") as fh, open(out, "wb") as sink:
        for line_no, raw in enumerate(fh, 1):
            try:
                p = _line_partition(raw)
            except (ValueError, KeyError, TypeError):
                p = 0  # not a record: the job of partition 0 reports it, naming the line
            if p is None or p % jobs != index:
                continue
            rec = parse_line(raw, path, line_no)
            if not within.keep(rec):
                continue
            try:
                got = r.feed(rec)
            except OffsetOrderError as exc:
                raise ReplayRefused(f"{path} line {line_no}: {exc}") from None
            for d in got:
                write(sink, rec.partition, d.role, d)
                n += 1
        if drain:
            for p, d in r.drain():
                write(sink, p, d.role, d)
                n += 1
    return n, r.signals, sorted(r.engines)


def replay_file_parallel(
    path: str,
    params: Params,
    *,
    drain: bool,
    jobs: int,
    topics: dict[str, str],
    out: IO[bytes],
    burst: BurstParams | None = None,
    from_ms: int | None = None,
    to_ms: int | None = None,
) -> int:
    """Replay `path` with `jobs` processes; write decision lines to `out`; return their count.
    `from_ms`/`to_ms` select records by Kafka timestamp as `TimeRange` does."""
    burst = burst or BurstParams()
    with tempfile.TemporaryDirectory(prefix="qris-replay-") as tmp:
        outs = [str(Path(tmp) / f"job-{i}.jsonl") for i in range(jobs)]
        ctx = mp.get_context("fork")
        with ctx.Pool(jobs) as pool:
            results = pool.starmap(
                _job, [(path, jobs, i, params, drain, topics, outs[i], (from_ms, to_ms)) for i in range(jobs)]
            )
        for o in outs:
            with open(o, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    signals = [value for _n, values, _p in results for value in values]
    partitions = {p for _n, _v, ps in results for p in ps}
    bursts = detect_bursts(signals, partitions, burst)
    for seq, d in enumerate(bursts):
        out.write(decision_line(topics[d.role], -1, seq, d))
    return sum(n for n, _v, _p in results) + len(bursts)
