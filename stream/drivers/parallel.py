"""Partition-parallel offline replay of a replay file.

Partitions are independent by the contract (each has its own watermark and references), so
`jobs` processes each read the whole file, fully parse only the lines of their partitions
(found with a cheap byte search, confirmed by a full parse when a line is ambiguous) and
decide them with the same core. Each job writes its own output; the parent concatenates them
in job order. Decisions are identical to a single-process replay; only the interleaving of
lines from different partitions differs. Each job hands back its partitions' burst signals and
the parent runs the one burst detector over all of them. With refund holds on, that is a first
pass (signals only); the parent turns the detector's alerts into the incident timeline and a
second pass of the same jobs decides with it (see `replay`).
"""

from __future__ import annotations

import multiprocessing as mp
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from ..core import codec
from ..core.burst import BurstParams
from ..core.holds import IncidentEvent
from ..core.partition import NEG_INF, Params
from .replay import Replay, incident_timeline, reporting, run_detector, warn_out_of_order, with_holds
from .replayfile import TimeRange, decision_line, parse_line

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
    out: str | None,
    times: tuple[int | None, int | None],
    incidents: tuple[list[IncidentEvent], int] = ([], NEG_INF),
) -> tuple[int, list[Any], list[int]]:
    # `out` None: a first pass of a replay with holds, for the signals only.
    r = Replay(params, incidents=incidents[0], incidents_known_through_ms=incidents[1])
    seq: dict[tuple[str, int], int] = {}
    n = 0

    def write(fh: IO[bytes], partition: int, role: str, d: object) -> None:
        topic = topics[role]
        k = (topic, partition)
        seq[k] = seq.get(k, -1) + 1
        fh.write(decision_line(topic, partition, seq[k], d))  # type: ignore[arg-type]

    within = TimeRange(*times)
    with open(path, "rb") as fh, open(out or "/dev/null", "wb") as sink:
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
            got = r.feed(rec)
            if out is None:
                continue
            for d in got:
                write(sink, rec.partition, d.role, d)
                n += 1
        if drain:
            for p, d in r.drain():
                if out is not None:
                    write(sink, p, d.role, d)
                    n += 1
    if out is not None:
        warn_out_of_order(r, path)
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
        times = (from_ms, to_ms)
        with ctx.Pool(jobs) as pool:
            if params.holds:
                first = replace(params, max_hold_ms=0)
                results = pool.starmap(_job, [(path, jobs, i, first, drain, topics, None, times) for i in range(jobs)])
                signals = [value for _n, values, _p in results for value in values]
                bursts, closed_through = run_detector(signals, reporting(signals), burst)
                timeline = incident_timeline(bursts, closed_through, params, drain=drain)
                second = replace(params, burst_signals=False)
                pass2 = [(path, jobs, i, second, drain, topics, outs[i], times, timeline) for i in range(jobs)]
                results = pool.starmap(_job, pass2)
                reports = [value for _n, values, _p in results for value in values]
                bursts = with_holds(bursts, reports, reporting(signals), params)
            else:
                results = pool.starmap(
                    _job, [(path, jobs, i, params, drain, topics, outs[i], times) for i in range(jobs)]
                )
                signals = [value for _n, values, _p in results for value in values]
                partitions = {p for _n, _v, ps in results for p in ps}
                bursts, _closed = run_detector(signals, partitions, burst)
        for o in outs:
            with open(o, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    for seq, d in enumerate(bursts):
        out.write(decision_line(topics[d.role], -1, seq, d))
    return sum(n for n, _v, _p in results) + len(bursts)
